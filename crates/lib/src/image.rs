//! `bootc image pull|list|remove|gc|fsck`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bootc_oci::imgref::ImageRef;
use bootc_store::{Store, WriteLock};
use clap::{Subcommand, ValueEnum};

/// `bootc image ...`
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Fetch an image into the store without deploying it (pre-seeding).
    Pull(PullArgs),
    /// List the images in the store.
    List(ListArgs),
    /// Remove an image's name from the store; its content is freed by `gc`.
    #[command(alias = "rm")]
    Remove {
        /// The image reference, as shown by `bootc image list`.
        image: String,
    },
    /// Mount an image's composefs filesystem read-only at a directory (for inspection).
    Mount {
        /// The image reference, as shown by `bootc image list`.
        image: String,
        /// An existing directory.
        target: PathBuf,
    },
    /// Delete store content no longer referenced by any image name.
    Gc,
    /// Check the integrity of every object, stream and image in the store.
    Fsck(FsckArgs),
}

/// Output formats of listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    /// A table for people.
    Table,
    /// JSON for tools.
    Json,
}

/// Arguments of `bootc image pull`.
#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// The image reference: `[TRANSPORT:]NAME`, where TRANSPORT is one of
    /// registry (default; also `docker://`), oci, oci-archive, containers-storage.
    pub imgref: String,

    /// The transport of IMGREF when it carries no prefix.
    #[arg(long, value_name = "TRANSPORT")]
    pub transport: Option<String>,

    /// Refuse to pull when the signature policy (policy.json) accepts
    /// anything for this image.
    #[arg(long)]
    pub enforce_container_sigpolicy: bool,

    /// Write progress as JSON lines (progress-v0) to this file descriptor.
    #[arg(long, value_name = "FD")]
    pub progress_fd: Option<u32>,

    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,

    /// How to print the result.
    #[arg(long, value_enum, default_value = "table")]
    pub format: ListFormat,
}

/// Arguments of `bootc image list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: ListFormat,
}

/// Arguments of `bootc image fsck`.
#[derive(Debug, clap::Args)]
pub struct FsckArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: ListFormat,
}

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
fn lock(store: &Store) -> Result<WriteLock> {
    bootc_deploy::target::lock(store, &crate::output::Terminal::default())
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
    let Some(r) = bootc_deploy::prune::gc(sysroot, crate::output::reporter(false))? else {
        println!("No image store in {}", sysroot.display());
        return Ok(());
    };
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
