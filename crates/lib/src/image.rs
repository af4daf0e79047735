//! `bootc image pull|list|remove|gc|fsck`.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use bootc_oci::imgref::ImageRef;
use bootc_store::{LockWait, Store, WriteLock, lock::LockBusy};

use crate::cli::{FsckArgs, ImageCommand, ListArgs, ListFormat, PullArgs};

/// Run one `bootc image` verb against the store of `sysroot`.
pub async fn run(sysroot: &Path, cmd: ImageCommand) -> Result<()> {
    match cmd {
        ImageCommand::Pull(args) => pull(sysroot, args).await,
        ImageCommand::List(args) => list(sysroot, args),
        ImageCommand::Remove { image } => remove(sysroot, &image),
        ImageCommand::Mount { image, target } => mount(sysroot, &image, &target),
        ImageCommand::Gc => gc(sysroot),
        ImageCommand::Fsck(args) => fsck(sysroot, args).await,
    }
}

/// Take the writer lock, telling the user when another process holds it.
pub(crate) fn lock(store: &Store) -> Result<WriteLock> {
    match store.lock(LockWait::NoWait) {
        Ok(l) => Ok(l),
        Err(e) => {
            let Some(busy) = e.downcast_ref::<LockBusy>() else {
                return Err(e);
            };
            eprintln!("Waiting: {busy}");
            store.lock(LockWait::Block)
        }
    }
}

fn parse_imgref(imgref: &str, transport: Option<&str>) -> Result<ImageRef> {
    Ok(match transport {
        Some(t) => ImageRef::parse_with_transport(imgref, t)?,
        None => ImageRef::parse(imgref)?,
    })
}

async fn pull(sysroot: &Path, args: PullArgs) -> Result<()> {
    let imgref = parse_imgref(&args.imgref, args.transport.as_deref())?;
    let store = Store::ensure(sysroot)?;
    let _lock = lock(&store)?;
    let progress = crate::progress::reporter(&imgref, args.quiet, args.progress_fd)?;
    let opts = bootc_oci::pull::PullOptions {
        enforce_sigpolicy: args.enforce_container_sigpolicy,
        authfile: bootc_oci::auth::find_authfile(Path::new("/"))?,
        progress: progress.clone(),
        // No policy file at all is handled (and explained) by the pull.
        policy_path: bootc_oci::policy::find_policy_path()
            .unwrap_or_else(|_| bootc_oci::policy::DEFAULT_POLICY_PATH.into()),
        registries_conf: std::env::var_os("CONTAINERS_REGISTRIES_CONF").map(Into::into),
    };
    let outcome = bootc_oci::pull::pull(&store, &imgref, &opts).await;
    progress.finish();
    let outcome = outcome?;
    match args.format {
        ListFormat::Json => print_json(&outcome)?,
        ListFormat::Table if args.quiet => {}
        ListFormat::Table => {
            let fetched = outcome.layers - outcome.layers_already_present;
            let verb = if outcome.changed() {
                "Pulled"
            } else {
                "Unchanged"
            };
            println!(
                "{verb} {}: {}\n  layers: {} ({} fetched, {} already present); files: {} new ({} bytes), {} already present; store: {}",
                outcome.image.image,
                outcome.image.manifest_digest,
                outcome.layers,
                fetched,
                outcome.layers_already_present,
                outcome.objects_new,
                outcome.bytes_new,
                outcome.objects_already_present,
                store.verity_mode(),
            );
        }
    }
    Ok(())
}

fn open_existing(sysroot: &Path) -> Result<Option<Store>> {
    Store::open(sysroot)
}

fn list(sysroot: &Path, args: ListArgs) -> Result<()> {
    let store = open_existing(sysroot)?;
    let (images, verity) = match &store {
        Some(s) => (s.list()?, Some(s.verity_mode())),
        None => (Vec::new(), None),
    };
    match args.format {
        ListFormat::Json => {
            let rows: Vec<_> = images
                .iter()
                .map(|i| {
                    let mut v = serde_json::to_value(i).expect("plain struct");
                    v["type"] = "host".into();
                    v["verity"] = serde_json::to_value(verity).expect("plain enum");
                    v
                })
                .collect();
            print_json(&rows)
        }
        ListFormat::Table => {
            let mut out = std::io::stdout().lock();
            match (&store, verity) {
                (Some(s), Some(v)) => writeln!(
                    out,
                    "Store: {} (fs-verity: {v})",
                    Store::repo_path(s.sysroot()).display()
                )?,
                _ => writeln!(out, "Store: none in {}", sysroot.display())?,
            }
            writeln!(
                out,
                "{:<60} {:<19} {:<12} {:<8} CREATED",
                "IMAGE", "DIGEST", "VERSION", "ARCH"
            )?;
            for i in &images {
                let short = i
                    .manifest_digest
                    .strip_prefix("sha256:")
                    .unwrap_or(&i.manifest_digest);
                writeln!(
                    out,
                    "{:<60} {:<19} {:<12} {:<8} {}",
                    i.image,
                    format!("sha256:{}", &short[..short.len().min(12)]),
                    i.version.as_deref().unwrap_or("-"),
                    i.architecture,
                    i.created.as_deref().unwrap_or("-"),
                )?;
            }
            Ok(())
        }
    }
}

fn remove(sysroot: &Path, image: &str) -> Result<()> {
    let Some(store) = open_existing(sysroot)? else {
        bail!("No image store in {}", sysroot.display());
    };
    let _lock = lock(&store)?;
    if store.get(image)?.is_none() {
        bail!("No image named {image} in the store (see `bootc image list`)");
    }
    store.untag(image)
}

fn mount(sysroot: &Path, image: &str, target: &Path) -> Result<()> {
    let Some(store) = open_existing(sysroot)? else {
        bail!("No image store in {}", sysroot.display());
    };
    let Some(img) = store.get(image)? else {
        bail!("No image named {image} in the store (see `bootc image list`)");
    };
    let digest = img
        .manifest_digest
        .parse()
        .with_context(|| format!("Parsing digest {}", img.manifest_digest))?;
    store.mount_image(&digest, target)
}

fn gc(sysroot: &Path) -> Result<()> {
    let Some(store) = open_existing(sysroot)? else {
        println!("No image store in {}", sysroot.display());
        return Ok(());
    };
    let _lock = lock(&store)?;
    let r = store.gc(&[])?;
    println!(
        "Removed {} objects ({} bytes)",
        r.objects_removed, r.bytes_removed
    );
    Ok(())
}

async fn fsck(sysroot: &Path, args: FsckArgs) -> Result<()> {
    let Some(store) = open_existing(sysroot)? else {
        bail!("No image store in {}", sysroot.display());
    };
    let report = store.fsck().await?;
    match args.format {
        ListFormat::Json => print_json(&report)?,
        ListFormat::Table => {
            let r = &report.repository;
            println!(
                "objects checked: {}, corrupted: {}; streams checked: {}, corrupted: {}; images checked: {}, corrupted: {}; broken links: {}; missing objects: {}",
                r.objects_checked(),
                r.objects_corrupted(),
                r.streams_checked(),
                r.streams_corrupted(),
                r.images_checked(),
                r.images_corrupted(),
                r.broken_links(),
                r.missing_objects()
            );
            for e in r.errors() {
                println!("error: {e}");
            }
            for (tag, e) in &report.broken_tags {
                println!("broken image {tag}: {e}");
            }
        }
    }
    if !report.ok {
        bail!(
            "Store {} failed its check",
            Store::repo_path(sysroot).display()
        );
    }
    Ok(())
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v).context("Writing JSON")?;
    writeln!(out)?;
    Ok(())
}
