//! `bootc upgrade|switch|rollback` and `bootc internals finalize-staged`.
//!
//! 1. **Stage**: pull the tracked (or new) image; unless its digest is the
//!    booted or staged one, create its deployment (/etc copied from the new
//!    image, kernel arguments updated for kargs.d changes), copy its kernel
//!    to the boot filesystem, and write `state/staged.json`. Nothing that
//!    decides what boots changes.
//! 2. **Finalize** (at shutdown on a booted host, at once with `--sysroot`):
//!    three-way merge of /etc into a fresh directory swapped in as the new
//!    deployment's /etc, then the boot entries (new default, booted as
//!    rollback) in one atomic step, then `staged.json` removed, then pruning
//!    and store GC.
//! 3. **Rollback**: swap the first two boot entries; a staged deployment is
//!    discarded.

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use bootc_boot::BlsEntry;
use bootc_boot::entries::{boot_order, read_entries, renumber};
use bootc_boot::esp::Esp;
use bootc_boot::grub::{parse_grub_target, render_grub_cfg, write_grub_cfg};
use bootc_oci::imgref::ImageRef;
use bootc_spec::{ImageReference, ImageSignature};
use bootc_store::{OciDigest, Store, StoredImage};
use bootc_sysroot::lifecycle::{self, Staged};
use bootc_sysroot::{Bootloader, Deployment, ImageMount, NewDeployment, deployment};
use cap_std_ext::cap_std::{ambient_authority, fs::Dir};

/// The systemd unit that finalizes a staged deployment at shutdown.
pub const FINALIZE_UNIT: &str = "bootc-finalize-staged.service";

/// Arguments of `bootc upgrade`.
#[derive(Debug, clap::Args)]
pub struct UpgradeArgs {
    /// Only check for an update: fetch the manifest and config and print
    /// the version, digest and timestamp that would be staged, and the
    /// layers and bytes still to download.
    #[arg(long, conflicts_with_all = ["apply", "download_only", "from_downloaded"])]
    pub check: bool,
    /// Reboot when an update was staged.
    #[arg(long)]
    pub apply: bool,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
    /// Move to another tag of the tracked image.
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// Fetch and stage the update, but do not apply it at shutdown until
    /// `bootc upgrade --from-downloaded` (or a plain `bootc upgrade`) unlocks it.
    #[arg(long, conflicts_with_all = ["apply", "from_downloaded"])]
    pub download_only: bool,
    /// Apply the download-only staged deployment without fetching anything.
    #[arg(long, conflicts_with = "tag")]
    pub from_downloaded: bool,
}

/// Arguments of `bootc switch`.
#[derive(Debug, clap::Args)]
pub struct SwitchArgs {
    /// The image to track from now on.
    pub target: String,
    /// The transport of the image (registry, oci, oci-archive, containers-storage).
    #[arg(long, default_value = "registry")]
    pub transport: String,
    /// Keep the previous image's name in the store.
    #[arg(long)]
    pub retain: bool,
    /// Reboot when the image was staged.
    #[arg(long)]
    pub apply: bool,
    /// Refuse images that the signature policy accepts without checking.
    #[arg(long, conflicts_with = "no_signature_verification")]
    pub enforce_container_sigpolicy: bool,
    /// Do not verify signatures of the image (record it as unverified).
    #[arg(long)]
    pub no_signature_verification: bool,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
    /// Fetch and stage the image, but do not apply it at shutdown until
    /// `bootc upgrade --from-downloaded` unlocks it.
    #[arg(long, conflicts_with = "apply")]
    pub download_only: bool,
}

/// Arguments of `bootc rollback`.
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// Reboot after changing the boot order.
    #[arg(long)]
    pub apply: bool,
}

/// The host being changed: its physical root and, when it is running, the
/// booted deployment.
#[derive(Debug, Clone)]
pub struct Target {
    /// The physical root filesystem.
    pub sysroot: PathBuf,
    /// The booted deployment; `None` offline (`--sysroot`).
    pub booted: Option<String>,
}

impl Target {
    /// `--sysroot PATH` (other than `/`) is an unbooted disk; else the
    /// running host, which must be booted from a deployment.
    pub fn find(sysroot: &Path) -> Result<Self> {
        if sysroot != Path::new("/") {
            anyhow::ensure!(
                sysroot.join(bootc_sysroot::DEPLOY_DIR).is_dir(),
                "{} has no deployments ({} missing); is it the root partition of an installed disk?",
                sysroot.display(),
                sysroot.join(bootc_sysroot::DEPLOY_DIR).display()
            );
            return Ok(Self {
                sysroot: sysroot.to_owned(),
                booted: None,
            });
        }
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        match bootc_sysroot::booted_deployment_id(&cmdline) {
            Some(id) if Path::new("/sysroot/state/deploy").join(&id).is_dir() => Ok(Self {
                sysroot: "/sysroot".into(),
                booted: Some(id),
            }),
            _ => bail!(
                "This system was not booted from a bootc deployment (no composefs= on the kernel command line); use --sysroot for a disk"
            ),
        }
    }

    fn boot_dir(&self) -> PathBuf {
        self.sysroot.join("boot")
    }

    fn say(&self, quiet: bool, msg: impl std::fmt::Display) {
        if !quiet {
            println!("{msg}");
        }
    }
}

/// The deployments in boot order (default first), with their entries.
pub(crate) fn current_order(t: &Target) -> Result<Vec<(String, BlsEntry)>> {
    Ok(boot_order(read_entries(&t.boot_dir())?)
        .into_iter()
        .filter_map(|(_, e)| Some((e.deployment_id()?, e)))
        .collect())
}

/// The deployment updates start from: the booted one, or offline the default.
pub(crate) fn base_deployment(t: &Target, order: &[(String, BlsEntry)]) -> Result<Deployment> {
    let id = match &t.booted {
        Some(id) => id.clone(),
        None => order
            .first()
            .map(|(id, _)| id.clone())
            .with_context(|| format!("No boot entries in {}", t.boot_dir().display()))?,
    };
    deployment::load_deployment(&t.sysroot, &id)?
        .with_context(|| format!("Deployment {id} named by the boot entries is missing"))
}

/// The image reference a deployment tracks, as we name it in the store.
fn imgref_of(r: &ImageReference) -> Result<ImageRef> {
    ImageRef::parse_with_transport(&r.image, &r.transport)
        .with_context(|| format!("Parsing tracked image {}:{}", r.transport, r.image))
}

/// Give every deployment its own store tag (deployments made before tags
/// existed are pinned by their image name while it still matches).
fn pin_deployment_images(store: &Store, deps: &[Deployment]) -> Result<()> {
    for d in deps {
        let tag = lifecycle::deployment_tag(d.id());
        if store.get(&tag)?.is_some() {
            continue;
        }
        let name = imgref_of(&d.image)?.to_string();
        match store.get(&name)? {
            Some(img) if img.manifest_digest == d.manifest_digest => {
                store.tag(&parse_digest(&d.manifest_digest)?, &tag)?
            }
            _ => tracing::warn!(
                "image of deployment {} ({}) is not in the store under {name}",
                d.id(),
                d.manifest_digest
            ),
        }
    }
    Ok(())
}

fn parse_digest(d: &str) -> Result<OciDigest> {
    OciDigest::from_str(d).with_context(|| format!("Parsing digest {d}"))
}

/// The stored image of deployment `id`.
fn deployment_image(store: &Store, id: &str) -> Result<StoredImage> {
    store
        .get(&lifecycle::deployment_tag(id))?
        .with_context(|| format!("The image of deployment {id} is not in the store"))
}

fn pull_options(
    enforce: bool,
    quiet: bool,
    imgref: &ImageRef,
) -> Result<(
    bootc_oci::pull::PullOptions,
    std::sync::Arc<bootc_oci::progress::PullProgress>,
)> {
    let progress = crate::progress::reporter(imgref, quiet, None)?;
    Ok((
        bootc_oci::pull::PullOptions {
            enforce_sigpolicy: enforce,
            authfile: bootc_oci::auth::find_authfile(Path::new("/"))?,
            progress: progress.clone(),
            policy_path: bootc_oci::policy::find_policy_path()
                .unwrap_or_else(|_| bootc_oci::policy::DEFAULT_POLICY_PATH.into()),
            registries_conf: std::env::var_os("CONTAINERS_REGISTRIES_CONF").map(Into::into),
        },
        progress,
    ))
}

/// The ESP of the disk holding `sysroot`: the partition of type ESP beside
/// the root partition.
pub(crate) fn find_esp(sysroot: &Path) -> Result<Esp> {
    let out = Command::new("findmnt")
        .args(["-n", "-o", "SOURCE", "-T"])
        .arg(sysroot)
        .output()
        .context("Running findmnt")?;
    anyhow::ensure!(
        out.status.success(),
        "findmnt found no filesystem at {}",
        sysroot.display()
    );
    let source = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let dev = bootc_install::filesystem::source_device(&source);
    let disk = bootc_install::blockdev::parent_disk(&dev)?;
    let esp =
        bootc_install::blockdev::find_partition_by_type(&disk, bootc_install::blockdev::ESP_GUID)?
            .with_context(|| {
                format!(
                    "No EFI system partition on {} (the disk of {})",
                    disk.display(),
                    sysroot.display()
                )
            })?;
    Ok(Esp::new(&esp))
}

fn fd_path(f: &std::fs::File) -> PathBuf {
    PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), f.as_raw_fd()))
}

/// Make `entries` what boots: the bootloader's copy first (grub.cfg or the
/// ESP), then `/boot/loader/entries` that status and rollback read; each is
/// one atomic replacement.
pub(crate) fn publish_entries(
    t: &Target,
    bootloader: Bootloader,
    entries: &[(String, BlsEntry)],
) -> Result<()> {
    publish_entries_on_trial(t, bootloader, entries, None)
}

/// [`publish_entries`], with the entry of `trial`'s deployment (id, tries)
/// named with its boot counter on the ESP (systemd-boot counts by name;
/// GRUB's counter is in grubenv, see [`crate::bootcount::start_trial`]).
fn publish_entries_on_trial(
    t: &Target,
    bootloader: Bootloader,
    entries: &[(String, BlsEntry)],
    trial: Option<(&str, u32)>,
) -> Result<()> {
    let boot = t.boot_dir();
    match bootloader {
        Bootloader::Grub => {
            let cfg_path = boot.join("grub/grub.cfg");
            let cfg = std::fs::read_to_string(&cfg_path)
                .with_context(|| format!("Reading {}", cfg_path.display()))?;
            let target = parse_grub_target(&cfg)
                .with_context(|| format!("{} names no boot filesystem", cfg_path.display()))?;
            write_grub_cfg(&boot, &render_grub_cfg(entries, &target))?;
        }
        Bootloader::Systemd => {
            let named: Vec<(String, BlsEntry)> = entries
                .iter()
                .map(|(n, e)| (crate::bootcount::esp_name(n, e, trial), e.clone()))
                .collect();
            find_esp(&t.sysroot)?.write_entries(&named)?
        }
        Bootloader::None => {}
    }
    bootc_boot::entries::write_entries(&boot, entries)
}

/// Copy the kernel of `dep` (image mounted as `tree`) where its bootloader
/// reads it, `bootc/<bootDigest>/`: kept as is when a deployment with the
/// same kernel and initramfs put it there already.
fn install_kernel(t: &Target, dep: &Deployment, tree: &bootc_sysroot::ImageTree) -> Result<()> {
    let kernel = tree.find_kernel()?;
    let name = dep.boot_dir_name();
    match dep.bootloader {
        Bootloader::Grub => {
            let mut k = tree.open_file(&kernel.vmlinuz)?;
            let mut i = tree.open_file(&kernel.initramfs)?;
            bootc_boot::entries::install_boot_files(&t.boot_dir(), name, &mut k, &mut i)
        }
        Bootloader::Systemd => {
            let k = tree.open_file(&kernel.vmlinuz)?;
            let i = tree.open_file(&kernel.initramfs)?;
            find_esp(&t.sysroot)?.install_boot_files(name, &fd_path(&k), &fd_path(&i))
        }
        Bootloader::None => Ok(()),
    }
}

/// Remove the boot directories of `gone` (deployments being removed) that
/// no deployment of `remaining` uses; a shared kernel stays while any
/// deployment references it. Called before the deployments' directories
/// are removed, so a crash leaves at worst a deployment without boot files
/// and no boot entry, which the next prune removes.
fn remove_kernels(t: &Target, gone: &[&Deployment], remaining: &[&Deployment]) -> Result<()> {
    let names = deployment::unreferenced_boot_dirs(gone, remaining);
    if names.is_empty() {
        return Ok(());
    }
    // Every deployment of a host has the same bootloader.
    let esp = if gone.iter().any(|d| d.bootloader == Bootloader::Systemd) {
        Some(find_esp(&t.sysroot)?)
    } else {
        None
    };
    for name in &names {
        match &esp {
            Some(esp) => esp.remove_boot_files(name)?,
            None => bootc_boot::entries::remove_boot_files(&t.boot_dir(), name)?,
        }
    }
    Ok(())
}

/// Remove boot directories that no deployment of `all` uses (left by an
/// interrupted prune or a deployment removed by hand). Deployments made
/// before boot files were shared own `bootc/<ID>/`, which counts as used.
fn sweep_boot_dirs(t: &Target, all: &[Deployment]) -> Result<()> {
    let used: BTreeSet<&str> = all.iter().map(|d| d.boot_dir_name()).collect();
    let bootloader = all.first().map(|d| d.bootloader);
    match bootloader {
        Some(Bootloader::Grub) => {
            for name in bootc_boot::entries::list_boot_dirs(&t.boot_dir())? {
                if !used.contains(name.as_str()) {
                    tracing::info!("removing unused boot directory bootc/{name}");
                    bootc_boot::entries::remove_boot_files(&t.boot_dir(), &name)?;
                }
            }
        }
        Some(Bootloader::Systemd) => {
            let esp = find_esp(&t.sysroot)?;
            for name in esp.list_boot_dirs()? {
                if !used.contains(name.as_str()) {
                    tracing::info!("removing unused boot directory ::/bootc/{name}");
                    esp.remove_boot_files(&name)?;
                }
            }
        }
        Some(Bootloader::None) | None => {}
    }
    Ok(())
}

/// What to stage.
pub(crate) struct StageRequest {
    pub(crate) imgref: ImageRef,
    pub(crate) signature: Option<ImageSignature>,
    pub(crate) enforce: bool,
    pub(crate) retain: bool,
    pub(crate) quiet: bool,
    /// Stage it locked: not applied until `--from-downloaded`.
    pub(crate) download_only: bool,
}

/// What staging did.
enum StageOutcome {
    /// Nothing new (already booted, or already staged as asked).
    Unchanged,
    /// A new deployment was staged.
    Staged(Deployment),
    /// The download-only staged deployment is the update: it is unlocked.
    Unlocked(Deployment),
}

/// Stage `req`.
async fn stage(t: &Target, store: &Store, req: &StageRequest) -> Result<StageOutcome> {
    let order = current_order(t)?;
    let base = base_deployment(t, &order)?;
    let all = deployment::list_deployments(&t.sysroot)?;
    pin_deployment_images(store, &all)?;
    ensure_space(t, store, &req.imgref, &base)?;
    let (opts, progress) = pull_options(req.enforce, req.quiet, &req.imgref)?;
    let outcome = bootc_oci::pull::pull(store, &req.imgref, &opts).await;
    progress.finish();
    let image = outcome?.image;
    let staged = lifecycle::read_staged(&t.sysroot)?;
    let staged_dep = match &staged {
        Some(s) => deployment::load_deployment(&t.sysroot, &s.id)?,
        None => None,
    };
    let new_ref = ImageReference {
        image: req.imgref.name.clone(),
        transport: req.imgref.transport.as_str().to_owned(),
        signature: req.signature.clone(),
    };
    if image.manifest_digest == base.manifest_digest && new_ref == base.image {
        t.say(req.quiet, format!("No changes in {}", req.imgref));
        return Ok(StageOutcome::Unchanged);
    }
    if let (Some(s), Some(sd)) = (&staged, &staged_dep)
        && sd.manifest_digest == image.manifest_digest
        && sd.image == new_ref
    {
        if s.download_only == req.download_only {
            t.say(
                req.quiet,
                format!("No changes in {} (already staged)", req.imgref),
            );
            return Ok(StageOutcome::Unchanged);
        }
        lifecycle::write_staged(
            &t.sysroot,
            &Staged {
                download_only: req.download_only,
                ..s.clone()
            },
        )?;
        if req.download_only {
            t.say(
                req.quiet,
                format!(
                    "The staged deployment of {} is now download-only: it is not applied until `bootc upgrade --from-downloaded`",
                    req.imgref
                ),
            );
            return Ok(StageOutcome::Unchanged);
        }
        return Ok(StageOutcome::Unlocked(sd.clone()));
    }
    let id = image
        .composefs_image
        .clone()
        .with_context(|| format!("Image {} has no composefs image", image.image))?;
    anyhow::ensure!(
        id != base.id(),
        "Image {} is the deployment {} already in use; nothing to stage",
        req.imgref,
        base.id()
    );
    // A different staged deployment is replaced.
    if let (Some(s), Some(sd)) = (&staged, &staged_dep)
        && s.id != id
    {
        discard_staged(t, store, sd, &order)?;
    }
    let new_mount = ImageMount::new(store, &image)?;
    let base_mount = ImageMount::new(store, &deployment_image(store, base.id())?)?;
    let old_kd = bootc_install::config::load_kargs(&base_mount)?;
    let new_kd = bootc_install::config::load_kargs(&new_mount)?;
    drop(base_mount);
    // kargs.d changes apply to the arguments no source owns; the sources'
    // (`bootc loader-entries set-options-for-source`) carry over as they are.
    let kargs = lifecycle::carry_kargs(&base.kargs, &base.kargs_sources, &old_kd, &new_kd, &id);
    let new_kernel = new_mount.find_kernel()?;
    let new = NewDeployment {
        imgref: new_ref,
        stateroot: base.stateroot.clone(),
        kargs,
        kargs_sources: base.kargs_sources.clone(),
        bootloader: base.bootloader,
        boot_digest: deployment::boot_digest(&new_mount, &new_kernel)?,
        kernel: new_kernel,
    };
    let dep = if deployment::deployment_dir(&t.sysroot, &id).exists() {
        if order.iter().any(|(o, _)| o == &id) {
            // An older deployment of the same image (e.g. the rollback) that
            // still has a boot entry: keep its directory, give it the new
            // record; finalization merges /etc into it afresh.
            reuse_deployment(store, &image, &new, &id)?
        } else {
            lifecycle::remove_deployment_dir(&t.sysroot, &id)?;
            bootc_sysroot::create_deployment(store, &new_mount, &image, &new)?
        }
    } else {
        bootc_sysroot::create_deployment(store, &new_mount, &image, &new)?
    };
    install_kernel(t, &dep, &new_mount)?;
    drop(new_mount);
    lifecycle::write_staged(
        &t.sysroot,
        &Staged {
            id: id.clone(),
            download_only: req.download_only,
            staged_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            retain: req.retain,
        },
    )?;
    Ok(StageOutcome::Staged(dep))
}

/// Rewrite the record of the existing deployment `id` for `new`.
fn reuse_deployment(
    store: &Store,
    image: &StoredImage,
    new: &NewDeployment,
    id: &str,
) -> Result<Deployment> {
    use cap_std_ext::dirext::CapStdExtDirExt;
    let old = deployment::load_deployment(store.sysroot(), id)?
        .with_context(|| format!("Deployment {id} vanished"))?;
    let dep = Deployment {
        image: new.imgref.clone(),
        kargs: new.kargs.clone(),
        boot_digest: Some(new.boot_digest.clone()),
        kargs_sources: new.kargs_sources.clone(),
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ..old
    };
    store.tag(
        &parse_digest(&image.manifest_digest)?,
        &lifecycle::deployment_tag(id),
    )?;
    let dir = deployment::deployment_dir(store.sysroot(), id);
    let d = Dir::open_ambient_dir(&dir, ambient_authority())
        .with_context(|| format!("Opening {}", dir.display()))?;
    d.atomic_write(deployment::DEPLOYMENT_JSON, dep.to_json())
        .with_context(|| format!("Writing {}/{}", dir.display(), deployment::DEPLOYMENT_JSON))?;
    Ok(dep)
}

/// Remove a staged deployment that is not (also) in the boot entries.
fn discard_staged(
    t: &Target,
    store: &Store,
    dep: &Deployment,
    order: &[(String, BlsEntry)],
) -> Result<()> {
    lifecycle::remove_staged(&t.sysroot)?;
    if order.iter().any(|(id, _)| id == dep.id()) || t.booted.as_deref() == Some(dep.id()) {
        return Ok(());
    }
    let all = deployment::list_deployments(&t.sysroot)?;
    let others: Vec<&Deployment> = all.iter().filter(|d| d.id() != dep.id()).collect();
    remove_kernels(t, &[dep], &others)?;
    lifecycle::remove_deployment_dir(&t.sysroot, dep.id())?;
    store.untag(&lifecycle::deployment_tag(dep.id()))?;
    Ok(())
}

/// Finalize the staged deployment: merge /etc, write the entries, prune.
pub fn finalize(t: &Target, store: &Store, staged: &Staged) -> Result<Deployment> {
    let new = deployment::load_deployment(&t.sysroot, &staged.id)?
        .with_context(|| format!("The staged deployment {} is missing", staged.id))?;
    let order = current_order(t)?;
    if order.first().is_some_and(|(id, _)| id == new.id()) {
        // Finalized already (a crash before staged.json was removed).
        lifecycle::remove_staged(&t.sysroot)?;
        return Ok(new);
    }
    let booted = base_deployment(t, &order)?;

    // /etc: pristine = booted image, current = booted deployment's /etc.
    let report = {
        let pristine = ImageMount::new(store, &deployment_image(store, booted.id())?)?;
        let new_img = ImageMount::new(store, &deployment_image(store, new.id())?)?;
        let dep_dir = deployment::deployment_dir(&t.sysroot, new.id());
        let merged = dep_dir.join(".etc-merged");
        if merged.symlink_metadata().is_ok() {
            std::fs::remove_dir_all(&merged)
                .with_context(|| format!("Removing stale {}", merged.display()))?;
        }
        std::fs::create_dir(&merged).with_context(|| format!("Creating {}", merged.display()))?;
        let open = |p: &Path| {
            Dir::open_ambient_dir(p, ambient_authority())
                .with_context(|| format!("Opening {}", p.display()))
        };
        let empty = tempfile::tempdir()?;
        let etc_or_empty = |root: &Path| {
            let p = root.join("etc");
            if p.is_dir() {
                open(&p)
            } else {
                open(empty.path())
            }
        };
        let report = bootc_etc_merge::merge(
            &etc_or_empty(pristine.path())?,
            &open(&deployment::deployment_dir(&t.sysroot, booted.id()).join("etc"))?,
            &etc_or_empty(new_img.path())?,
            &open(&merged)?,
        )
        .with_context(|| format!("Merging /etc of {} into {}", booted.id(), new.id()))?;
        let fd = rustix::fs::open(
            &dep_dir,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .with_context(|| format!("Opening {}", dep_dir.display()))?;
        rustix::fs::syncfs(&fd).context("Syncing the sysroot")?;
        rustix::fs::renameat_with(
            &fd,
            ".etc-merged",
            &fd,
            "etc",
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .with_context(|| format!("Exchanging {} with its etc", merged.display()))?;
        rustix::fs::fsync(&fd).context("Syncing the deployment directory")?;
        std::fs::remove_dir_all(&merged)
            .with_context(|| format!("Removing the unmerged {}", merged.display()))?;
        let tries = crate::bootcount::tries_for(new_img.path(), &dep_dir.join("etc"))?;
        (report, tries)
    };
    let (report, tries) = report;
    for c in &report.conflicts {
        eprintln!(
            "bootc: /etc merge conflict at /etc/{}: {} (kept the local version)",
            c.path.display(),
            c.reason
        );
    }
    for s in &report.skipped {
        eprintln!(
            "bootc: /etc merge skipped /etc/{}: {}",
            s.path.display(),
            s.reason
        );
    }

    // Entries: new default, booted as rollback; prune the rest.
    let ids: Vec<String> = order.iter().map(|(id, _)| id.clone()).collect();
    let new_order = lifecycle::order_after_finalize(&ids, new.id(), booted.id());
    let all = deployment::list_deployments(&t.sysroot)?;
    let present: BTreeSet<String> = all.iter().map(|d| d.id().to_owned()).collect();
    let pinned: BTreeSet<String> = present
        .iter()
        .filter(|id| lifecycle::is_pinned(&t.sysroot, id))
        .cloned()
        .collect();
    let keep_booted = t.booted.as_deref().or(Some(booted.id()));
    let (keep, remove) = lifecycle::select_prune(&new_order, keep_booted, None, &pinned, &present);
    let title = {
        let img = ImageMount::new(store, &deployment_image(store, new.id())?)?;
        bootc_install::deploy::entry_title(
            img.os_release()?.pretty_name(),
            new.version.as_deref(),
            &new.manifest_digest,
        )
    };
    let new_entry = BlsEntry::for_deployment(
        &title,
        0,
        new.boot_dir_name(),
        &new.cmdline(),
        &new.stateroot,
    );
    let entries: Vec<BlsEntry> = keep
        .iter()
        .map(|id| {
            if id == new.id() {
                new_entry.clone()
            } else {
                order
                    .iter()
                    .find(|(o, _)| o == id)
                    .map(|(_, e)| e.clone())
                    .expect("kept ids come from the order")
            }
        })
        .collect();
    // Boot counting: the trial's counter is in place before the entries
    // that make the new deployment the default.
    if tries > 0 {
        crate::bootcount::start_trial(t, new.bootloader, new.id(), tries)?;
    } else {
        crate::bootcount::end_trial(t, new.bootloader)?;
    }
    publish_entries_on_trial(
        t,
        new.bootloader,
        &renumber(entries, &new.stateroot),
        (tries > 0).then_some((new.id(), tries)),
    )?;
    lifecycle::remove_staged(&t.sysroot)?;

    // The new default is in place: a failure from here on leaves old
    // deployments or store content behind (the next prune retries), not a
    // failed update.
    if let Err(e) = prune(t, store, &all, &remove, staged.retain) {
        eprintln!(
            "bootc: warning: deployment {} is the new default, but pruning old deployments failed (the next update retries): {e:#}",
            new.id()
        );
    }
    Ok(new)
}

/// Remove the deployments `remove`, then image names no deployment uses
/// (unless `retain`), then unreferenced store content.
fn prune(
    t: &Target,
    store: &Store,
    all: &[Deployment],
    remove: &[String],
    retain: bool,
) -> Result<()> {
    let (gone, kept): (Vec<&Deployment>, Vec<&Deployment>) =
        all.iter().partition(|d| remove.iter().any(|r| r == d.id()));
    remove_kernels(t, &gone, &kept)?;
    for d in &gone {
        lifecycle::remove_deployment_dir(&t.sysroot, d.id())?;
        store.untag(&lifecycle::deployment_tag(d.id()))?;
    }
    let remaining = deployment::list_deployments(&t.sysroot)?;
    sweep_boot_dirs(t, &remaining)?;
    if !retain {
        let used: BTreeSet<&str> = remaining
            .iter()
            .map(|d| d.manifest_digest.as_str())
            .collect();
        let tracked: BTreeSet<String> = all
            .iter()
            .filter_map(|d| imgref_of(&d.image).ok().map(|r| r.to_string()))
            .collect();
        for img in store.list()? {
            if tracked.contains(&img.image) && !used.contains(img.manifest_digest.as_str()) {
                store.untag(&img.image)?;
            }
        }
    }
    let r = store.gc(&[])?;
    tracing::info!(
        "gc removed {} objects ({} bytes)",
        r.objects_removed,
        r.bytes_removed
    );
    Ok(())
}

/// Stage, then finalize at once (offline) or leave it to the shutdown unit;
/// a download-only deployment is left staged and locked.
pub(crate) async fn stage_and_finish(t: &Target, req: StageRequest, apply: bool) -> Result<()> {
    let store = Store::ensure(&t.sysroot)?;
    let lock = crate::image::lock(&store)?;
    // A booted host whose kernel has fs-verity seals an insecure store first.
    let store = crate::seal::seal_if_possible(t, store)?;
    let dep = match stage(t, &store, &req).await? {
        StageOutcome::Unchanged => {
            let staged = lifecycle::read_staged(&t.sysroot)?.filter(|s| !s.download_only);
            // Staged offline by a run killed before finalizing: finalize now.
            if t.booted.is_none()
                && let Some(s) = &staged
                && let Some(dep) = deployment::load_deployment(&t.sysroot, &s.id)?
            {
                let what = describe(&req.imgref.to_string(), &dep);
                return finish(t, &store, lock, &what, req.quiet, apply);
            }
            // Already staged on a running host: make sure the shutdown unit
            // is armed (it is not after a reboot without finalization).
            if t.booted.is_some() && staged.is_some() {
                start_finalize_unit();
            }
            return Ok(());
        }
        StageOutcome::Staged(dep) if req.download_only => {
            t.say(
                req.quiet,
                format!(
                    "Downloaded {}; it is not applied until `bootc upgrade --from-downloaded`",
                    describe(&req.imgref.to_string(), &dep)
                ),
            );
            return Ok(());
        }
        StageOutcome::Staged(dep) => dep,
        StageOutcome::Unlocked(dep) => {
            t.say(
                req.quiet,
                format!(
                    "The download-only deployment {} is the update; unlocked",
                    dep.id()
                ),
            );
            dep
        }
    };
    finish(
        t,
        &store,
        lock,
        &describe(&req.imgref.to_string(), &dep),
        req.quiet,
        apply,
    )
}

/// `IMAGE (DIGEST, version V)` for messages.
fn describe(imgref: &str, dep: &Deployment) -> String {
    format!(
        "{imgref} ({}{})",
        dep.manifest_digest,
        dep.version
            .as_deref()
            .map(|v| format!(", version {v}"))
            .unwrap_or_default()
    )
}

/// The staged (unlocked) deployment `what` is ready: finalize it at once
/// offline, else arm the shutdown unit and reboot if `apply`.
fn finish(
    t: &Target,
    store: &Store,
    lock: bootc_store::WriteLock,
    what: &str,
    quiet: bool,
    apply: bool,
) -> Result<()> {
    if t.booted.is_none() {
        let staged = lifecycle::read_staged(&t.sysroot)?.context("staged.json vanished")?;
        finalize(t, store, &staged)?;
        t.say(
            quiet,
            format!("Deployed {what}; it boots next on {}", t.sysroot.display()),
        );
        if apply {
            eprintln!("Not rebooting: --apply has no meaning with --sysroot");
        }
        return Ok(());
    }
    drop(lock);
    start_finalize_unit();
    t.say(quiet, format!("Queued for next boot: {what}"));
    if apply {
        reboot()?;
    }
    Ok(())
}

/// `bootc upgrade --from-downloaded`: unlock the download-only staged
/// deployment without fetching, then finish as a normal update.
fn from_downloaded(t: &Target, quiet: bool, apply: bool) -> Result<()> {
    let store = Store::open(&t.sysroot)?
        .with_context(|| format!("No image store in {}", t.sysroot.display()))?;
    let lock = crate::image::lock(&store)?;
    let staged = lifecycle::read_staged(&t.sysroot)?
        .context("No downloaded update to apply; run `bootc upgrade --download-only` first")?;
    let dep = deployment::load_deployment(&t.sysroot, &staged.id)?
        .with_context(|| format!("The staged deployment {} is missing", staged.id))?;
    if staged.download_only {
        lifecycle::write_staged(
            &t.sysroot,
            &Staged {
                download_only: false,
                ..staged
            },
        )?;
    } else {
        t.say(
            quiet,
            format!(
                "The staged deployment {} is not download-only; it is already queued",
                dep.id()
            ),
        );
    }
    let name = imgref_of(&dep.image)
        .map(|r| r.to_string())
        .unwrap_or_else(|_| dep.image.image.clone());
    finish(t, &store, lock, &describe(&name, &dep), quiet, apply)
}

/// Arm the unit whose stop finalizes at shutdown. Without systemd (or the
/// unit) the staged deployment waits for `bootc internals finalize-staged`.
fn start_finalize_unit() {
    match Command::new("systemctl")
        .args(["start", FINALIZE_UNIT])
        .status()
    {
        Ok(s) if s.success() => {}
        Ok(s) => eprintln!(
            "warning: systemctl start {FINALIZE_UNIT} failed ({s}); the update is staged but will be applied only by `bootc internals finalize-staged`"
        ),
        Err(e) => eprintln!(
            "warning: cannot run systemctl ({e}); the update is staged but will be applied only by `bootc internals finalize-staged`"
        ),
    }
}

fn reboot() -> Result<()> {
    let s = Command::new("systemctl")
        .arg("reboot")
        .status()
        .context("Running systemctl reboot")?;
    anyhow::ensure!(s.success(), "systemctl reboot failed ({s})");
    Ok(())
}

/// `--tag TAG` on an image name: the name with its tag replaced.
pub fn with_tag(r: &ImageRef, tag: &str) -> Result<ImageRef> {
    use bootc_oci::imgref::Transport;
    anyhow::ensure!(
        !tag.is_empty() && !tag.contains(['/', ':', '@']),
        "invalid tag {tag:?}"
    );
    let name = &r.name;
    let new_name = match r.transport {
        Transport::OciDir | Transport::OciArchive => match name.rsplit_once(':') {
            Some((path, _)) if !path.is_empty() => format!("{path}:{tag}"),
            _ => format!("{name}:{tag}"),
        },
        _ => {
            let base = name.split('@').next().unwrap_or(name);
            let last_slash = base.rfind('/').map(|i| i + 1).unwrap_or(0);
            let repo = match base[last_slash..].rfind(':') {
                Some(c) => &base[..last_slash + c],
                None => base,
            };
            format!("{repo}:{tag}")
        }
    };
    Ok(ImageRef::parse_with_transport(
        &new_name,
        r.transport.as_str(),
    )?)
}

/// `bootc upgrade`.
pub async fn upgrade(sysroot: &Path, args: UpgradeArgs) -> Result<()> {
    let t = Target::find(sysroot)?;
    let order = current_order(&t)?;
    let base = base_deployment(&t, &order)?;
    let mut imgref = imgref_of(&base.image)?;
    if let Some(tag) = &args.tag {
        imgref = with_tag(&imgref, tag)?;
    }
    if args.from_downloaded {
        return from_downloaded(&t, args.quiet, args.apply);
    }
    if args.check {
        let info = check_update(&t, &base, &imgref)?;
        t.say(args.quiet, info.to_string().trim_end());
        return Ok(());
    }
    let req = StageRequest {
        imgref,
        signature: base.image.signature.clone(),
        enforce: base.image.signature == Some(ImageSignature::ContainerPolicy),
        retain: false,
        quiet: args.quiet,
        download_only: args.download_only,
    };
    stage_and_finish(&t, req, args.apply).await
}

/// `bootc switch`.
pub async fn switch(sysroot: &Path, args: SwitchArgs) -> Result<()> {
    let t = Target::find(sysroot)?;
    let imgref = if args.target.contains("://") || args.transport == "registry" {
        ImageRef::parse(&args.target)
            .or_else(|_| ImageRef::parse_with_transport(&args.target, &args.transport))?
    } else {
        ImageRef::parse_with_transport(&args.target, &args.transport)?
    };
    let signature = if args.enforce_container_sigpolicy {
        Some(ImageSignature::ContainerPolicy)
    } else if args.no_signature_verification {
        Some(ImageSignature::Insecure)
    } else {
        None
    };
    let req = StageRequest {
        imgref,
        signature,
        enforce: args.enforce_container_sigpolicy,
        retain: args.retain,
        quiet: args.quiet,
        download_only: args.download_only,
    };
    stage_and_finish(&t, req, args.apply).await
}

/// A `skopeo` command with `--registries-conf` when
/// `$CONTAINERS_REGISTRIES_CONF` is set (Debian's skopeo 1.9 does not read it).
fn skopeo() -> Command {
    let mut cmd = Command::new("skopeo");
    if let Some(conf) = std::env::var_os("CONTAINERS_REGISTRIES_CONF") {
        cmd.arg("--registries-conf").arg(conf);
    }
    cmd
}

/// Run `skopeo inspect ARGS IMAGE` (with the auth file a pull would use)
/// and parse its JSON.
fn skopeo_inspect(args: &[&str], image: &str) -> Result<serde_json::Value> {
    let mut cmd = skopeo();
    cmd.arg("inspect");
    if let Some(auth) = bootc_oci::auth::find_authfile(Path::new("/"))? {
        cmd.arg("--authfile").arg(auth);
    }
    let out = cmd
        .args(args)
        .arg(image)
        .output()
        .context("Running skopeo inspect")?;
    if !out.status.success() {
        bail!(
            "Inspecting {image}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "Parsing skopeo inspect {} output for {image}",
            args.join(" ")
        )
    })
}

/// The architecture name of this machine as OCI spells it.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        a => a,
    }
}

/// A registry name with its tag replaced by `@digest`.
fn by_digest(name: &str, digest: &str) -> String {
    let base = name.split('@').next().unwrap_or(name);
    let last_slash = base.rfind('/').map(|i| i + 1).unwrap_or(0);
    let repo = match base[last_slash..].rfind(':') {
        Some(c) => &base[..last_slash + c],
        None => base,
    };
    format!("{repo}@{digest}")
}

/// Layers (digest, size) of a manifest and the diff_ids of its config.
type RemoteLayers = (Vec<(String, u64)>, Vec<String>);

/// The layers (digest, size) of `imgref`'s manifest for this machine and
/// the diff_ids of its config, from `skopeo inspect --raw [--config]`.
fn remote_layers(imgref: &ImageRef) -> Result<RemoteLayers> {
    let mut image = imgref.to_skopeo_string();
    let mut manifest = skopeo_inspect(&["--raw"], &image)?;
    if manifest.get("manifests").is_some() {
        // An index: the manifest of our platform, by digest.
        let digest = manifest["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["platform"]["architecture"] == oci_arch() && m["platform"]["os"] == "linux")
            .and_then(|m| m["digest"].as_str())
            .with_context(|| format!("{imgref} has no image for linux/{}", oci_arch()))?
            .to_owned();
        anyhow::ensure!(
            imgref.transport == bootc_oci::imgref::Transport::Registry,
            "{imgref} is a multi-platform index; only registry images are resolved by digest"
        );
        image = format!(
            "{}{}",
            imgref.transport.skopeo_prefix(),
            by_digest(&imgref.name, &digest)
        );
        manifest = skopeo_inspect(&["--raw"], &image)?;
    }
    let layers = manifest["layers"]
        .as_array()
        .with_context(|| format!("The manifest of {imgref} lists no layers"))?
        .iter()
        .map(|l| {
            Ok((
                l["digest"]
                    .as_str()
                    .context("A layer without a digest")?
                    .to_owned(),
                l["size"].as_u64().context("A layer without a size")?,
            ))
        })
        .collect::<Result<Vec<_>>>()
        .with_context(|| format!("Reading the manifest of {imgref}"))?;
    let config = skopeo_inspect(&["--raw", "--config"], &image)?;
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str().map(str::to_owned))
        .collect();
    Ok((layers, diff_ids))
}

/// What fetching `imgref` into the store of `sysroot` costs.
pub fn download_cost(sysroot: &Path, imgref: &ImageRef) -> Result<lifecycle::DownloadCost> {
    let (layers, diff_ids) = remote_layers(imgref)?;
    let present = match Store::open(sysroot)? {
        Some(store) => store.present_layers()?,
        None => Default::default(),
    };
    Ok(lifecycle::download_cost(&layers, &diff_ids, &present))
}

/// Bytes as people read them.
fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The size of `base`'s kernel and initramfs on the sysroot (GRUB keeps
/// them in `/boot/bootc/<bootDigest>/`; systemd-boot on the ESP, another
/// filesystem): an upper bound, as a new image with the same kernel shares it.
fn kernel_bytes(t: &Target, base: &Deployment) -> u64 {
    if base.bootloader != Bootloader::Grub {
        return 0;
    }
    let dir = t.boot_dir().join("bootc").join(base.boot_dir_name());
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Refuse to stage `imgref` when the sysroot's filesystem cannot hold it
/// ([`lifecycle::space_needed`]). When the download size cannot be learnt,
/// warn and go on (the pull reports its own errors).
fn ensure_space(t: &Target, store: &Store, imgref: &ImageRef, base: &Deployment) -> Result<()> {
    let cost = match remote_layers(imgref) {
        Ok((layers, diff_ids)) => {
            lifecycle::download_cost(&layers, &diff_ids, &store.present_layers()?)
        }
        Err(e) => {
            eprintln!(
                "warning: cannot learn the download size of {imgref} ({e:#}); not checking free space"
            );
            return Ok(());
        }
    };
    let kernel = kernel_bytes(t, base);
    let needed = lifecycle::space_needed(cost.bytes, kernel);
    let st = rustix::fs::statvfs(&t.sysroot)
        .with_context(|| format!("Reading the free space of {}", t.sysroot.display()))?;
    let available = st.f_bavail.saturating_mul(st.f_frsize);
    if lifecycle::space_shortfall(needed, available).is_some() {
        let source = Command::new("findmnt")
            .args(["-n", "-o", "SOURCE", "-T"])
            .arg(&t.sysroot)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| format!(" ({})", String::from_utf8_lossy(&o.stdout).trim()))
            .unwrap_or_default();
        bail!(
            "Not enough free space to stage {imgref} on the filesystem of {}{source}: it needs about {needed} bytes ({}: {} layers with {} bytes to download, counted twice, plus {kernel} bytes of kernel and initramfs) and {available} bytes ({}) are available; free some space (for example `bootc image gc`) and retry",
            t.sysroot.display(),
            human_bytes(needed),
            cost.layers,
            cost.bytes,
            human_bytes(available),
        );
    }
    Ok(())
}

/// What `upgrade --check` found.
#[derive(Debug, Clone)]
pub struct UpdateInfo {
    /// The image checked.
    pub imgref: String,
    /// Whether it differs from the booted and staged deployments.
    pub available: bool,
    /// Its manifest digest.
    pub digest: String,
    /// Its version label.
    pub version: Option<String>,
    /// Its creation time.
    pub created: Option<String>,
    /// What fetching it costs; `None` if that could not be learnt.
    pub cost: Option<lifecycle::DownloadCost>,
}

impl std::fmt::Display for UpdateInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.available {
            return writeln!(f, "No changes in: {}", self.imgref);
        }
        writeln!(f, "Update available for: {}", self.imgref)?;
        writeln!(f, "  Version: {}", self.version.as_deref().unwrap_or("-"))?;
        writeln!(f, "  Digest: {}", self.digest)?;
        writeln!(f, "  Timestamp: {}", self.created.as_deref().unwrap_or("-"))?;
        match &self.cost {
            Some(c) => writeln!(
                f,
                "  To download: {} of {} layers, {} bytes ({}) of {} bytes",
                c.layers,
                c.layers_total,
                c.bytes,
                human_bytes(c.bytes),
                c.bytes_total
            ),
            None => writeln!(f, "  To download: unknown"),
        }
    }
}

/// `bootc upgrade --check`: the manifest and config only, via skopeo.
pub fn check_update(t: &Target, base: &Deployment, imgref: &ImageRef) -> Result<UpdateInfo> {
    let v = skopeo_inspect(&[], &imgref.to_skopeo_string())?;
    let digest = v["Digest"].as_str().unwrap_or_default().to_owned();
    let staged = lifecycle::read_staged(&t.sysroot)?.and_then(|s| {
        deployment::load_deployment(&t.sysroot, &s.id)
            .ok()
            .flatten()
    });
    let available = digest != base.manifest_digest
        && staged.as_ref().is_none_or(|s| s.manifest_digest != digest);
    let cost = if available {
        match download_cost(&t.sysroot, imgref) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("warning: cannot learn the download size of {imgref}: {e:#}");
                None
            }
        }
    } else {
        None
    };
    Ok(UpdateInfo {
        imgref: imgref.to_string(),
        available,
        digest,
        version: v["Labels"]["org.opencontainers.image.version"]
            .as_str()
            .map(str::to_owned),
        created: v["Created"].as_str().map(str::to_owned),
        cost,
    })
}

/// `bootc upgrade --check` for the host at `sysroot` (optionally another
/// tag of its image), without printing.
pub fn check_for(sysroot: &Path, tag: Option<&str>) -> Result<UpdateInfo> {
    let t = Target::find(sysroot)?;
    let order = current_order(&t)?;
    let base = base_deployment(&t, &order)?;
    let mut imgref = imgref_of(&base.image)?;
    if let Some(tag) = tag {
        imgref = with_tag(&imgref, tag)?;
    }
    check_update(&t, &base, &imgref)
}

/// `bootc rollback`.
pub fn rollback(sysroot: &Path, args: RollbackArgs) -> Result<()> {
    let t = Target::find(sysroot)?;
    let store = Store::open(&t.sysroot)?
        .with_context(|| format!("No image store in {}", t.sysroot.display()))?;
    let _lock = crate::image::lock(&store)?;
    let order = current_order(&t)?;
    let ids: Vec<String> = order.iter().map(|(id, _)| id.clone()).collect();
    let new_order =
        lifecycle::order_after_rollback(&ids).context("No rollback deployment to go back to")?;
    if let Some(s) = lifecycle::read_staged(&t.sysroot)? {
        match deployment::load_deployment(&t.sysroot, &s.id)? {
            Some(d) => discard_staged(&t, &store, &d, &order)?,
            None => lifecycle::remove_staged(&t.sysroot)?,
        }
        println!("Discarded the staged deployment {}", s.id);
    }
    let next = deployment::load_deployment(&t.sysroot, &new_order[0])?
        .with_context(|| format!("Deployment {} of the boot entries is missing", new_order[0]))?;
    let entries: Vec<BlsEntry> = new_order
        .iter()
        .map(|id| {
            order
                .iter()
                .find(|(o, _)| o == id)
                .map(|(_, e)| e.clone())
                .expect("same ids")
        })
        .collect();
    crate::bootcount::end_trial(&t, next.bootloader)?;
    publish_entries(&t, next.bootloader, &renumber(entries, &next.stateroot))?;
    println!(
        "Next boot: {} ({}), deployment {}",
        imgref_of(&next.image)
            .map(|r| r.to_string())
            .unwrap_or_else(|_| next.image.image.clone()),
        next.manifest_digest,
        next.id()
    );
    if args.apply {
        if t.booted.is_some() {
            reboot()?;
        } else {
            eprintln!("Not rebooting: --apply has no meaning with --sysroot");
        }
    }
    Ok(())
}

/// `bootc internals finalize-staged` (the shutdown unit's ExecStop).
///
/// When finalization fails, nothing that decides what boots has changed
/// ([`finalize`] publishes the entries last), so the previous default boots
/// next. The staged deployment is then dropped (`staged.json` removed, its
/// directory left for the next prune): like a staged deployment that was
/// never finalized, it is not applied by a later shutdown, and `bootc
/// upgrade`/`switch` stage it afresh. The error goes to stderr, which the
/// unit sends to the journal, and the exit code makes the unit fail.
pub fn finalize_staged(sysroot: &Path) -> Result<()> {
    let t = match Target::find(sysroot) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("bootc: nothing to finalize: {e:#}");
            return Ok(());
        }
    };
    let Some(staged) = lifecycle::read_staged(&t.sysroot)? else {
        println!("bootc: no staged deployment");
        return Ok(());
    };
    if staged.download_only {
        println!(
            "bootc: staged deployment {} is download-only; not finalizing",
            staged.id
        );
        return Ok(());
    }
    let store = Store::open(&t.sysroot)?
        .with_context(|| format!("No image store in {}", t.sysroot.display()))?;
    let _lock = crate::image::lock(&store)?;
    match finalize(&t, &store, &staged) {
        Ok(d) => {
            println!(
                "bootc: finalized deployment {} ({})",
                d.id(),
                d.manifest_digest
            );
            Ok(())
        }
        Err(e) => {
            eprintln!(
                "bootc: finalizing staged deployment {} failed; the previous default still boots: {e:#}",
                staged.id
            );
            match lifecycle::remove_staged(&t.sysroot) {
                Ok(()) => eprintln!(
                    "bootc: dropped the staged deployment {}; stage it again with `bootc upgrade` or `bootc switch`",
                    staged.id
                ),
                Err(e2) => eprintln!(
                    "bootc: could not drop the staged deployment {}: {e2:#}",
                    staged.id
                ),
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_replacement() {
        let cases = [
            (
                "quay.io/example/os:v1",
                "registry",
                "v2",
                "quay.io/example/os:v2",
            ),
            (
                "quay.io/example/os",
                "registry",
                "v2",
                "quay.io/example/os:v2",
            ),
            (
                "localhost:5000/os:v1",
                "registry",
                "v2",
                "localhost:5000/os:v2",
            ),
            (
                "localhost:5000/os",
                "registry",
                "v2",
                "localhost:5000/os:v2",
            ),
            (
                "localhost/os:latest",
                "containers-storage",
                "v2",
                "localhost/os:v2",
            ),
            ("/srv/layout:v1", "oci", "v2", "/srv/layout:v2"),
            ("/srv/layout", "oci", "v2", "/srv/layout:v2"),
        ];
        for (name, transport, tag, expect) in cases {
            let r = ImageRef::parse_with_transport(name, transport).unwrap();
            assert_eq!(with_tag(&r, tag).unwrap().name, expect, "{name}");
        }
        let r = ImageRef::parse("quay.io/x:1").unwrap();
        assert!(with_tag(&r, "a/b").is_err());
    }
}

/// How a path differs between two deployments' images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// Only in the new image.
    Added,
    /// Only in the old image.
    Removed,
    /// In both, with a different type, mode, owner, size, link target or content.
    Changed,
}

impl Change {
    fn letter(self) -> char {
        match self {
            Change::Added => 'A',
            Change::Removed => 'D',
            Change::Changed => 'M',
        }
    }
}

/// The metadata of one path of an image tree that a diff compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// `st_mode` (type and permission bits).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size of a regular file (0 otherwise).
    pub size: u64,
    /// Target of a symlink.
    pub link: Option<PathBuf>,
}

impl TreeEntry {
    fn is_file(&self) -> bool {
        self.mode & 0o170000 == 0o100000
    }
}

/// The differences between two trees (path → entry): added, removed and
/// changed paths in path order. Regular files with equal metadata are
/// compared with `same_content(path)`.
pub fn diff_trees(
    old: &std::collections::BTreeMap<String, TreeEntry>,
    new: &std::collections::BTreeMap<String, TreeEntry>,
    mut same_content: impl FnMut(&str) -> bool,
) -> Vec<(String, Change)> {
    let mut out = Vec::new();
    for (p, o) in old {
        match new.get(p) {
            None => out.push((p.clone(), Change::Removed)),
            Some(n) if n != o => out.push((p.clone(), Change::Changed)),
            Some(n) if n.is_file() && !same_content(p) => out.push((p.clone(), Change::Changed)),
            Some(_) => {}
        }
    }
    for p in new.keys().filter(|p| !old.contains_key(*p)) {
        out.push((p.clone(), Change::Added));
    }
    out.sort();
    out
}

/// Every path under `root/top` (as `/top/...`) with its metadata.
fn tree_entries(root: &Path, top: &str) -> Result<std::collections::BTreeMap<String, TreeEntry>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![format!("/{top}")];
    while let Some(rel) = stack.pop() {
        let abs = root.join(rel.trim_start_matches('/'));
        let md = match abs.symlink_metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && rel == format!("/{top}") => {
                return Ok(out);
            }
            Err(e) => return Err(e).with_context(|| format!("Reading {}", abs.display())),
        };
        let link = if md.file_type().is_symlink() {
            Some(std::fs::read_link(&abs).with_context(|| format!("Reading {}", abs.display()))?)
        } else {
            None
        };
        if md.is_dir() {
            for e in
                std::fs::read_dir(&abs).with_context(|| format!("Listing {}", abs.display()))?
            {
                let name = e?.file_name();
                stack.push(format!("{rel}/{}", name.to_string_lossy()));
            }
        }
        out.insert(
            rel,
            TreeEntry {
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                size: if md.is_file() { md.len() } else { 0 },
                link,
            },
        );
    }
    Ok(out)
}

/// Whether two files have the same bytes.
fn same_bytes(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (Ok(mut fa), Ok(mut fb)) = (std::fs::File::open(a), std::fs::File::open(b)) else {
        return false;
    };
    let mut ba = vec![0u8; 1 << 16];
    let mut bb = vec![0u8; 1 << 16];
    loop {
        let Ok(na) = fa.read(&mut ba) else {
            return false;
        };
        if na == 0 {
            return fb.read(&mut bb).is_ok_and(|n| n == 0);
        }
        if fb.read_exact(&mut bb[..na]).is_err() || ba[..na] != bb[..na] {
            return false;
        }
    }
}

/// The files added, removed and changed in `/usr` and in the image's `/etc`
/// defaults between the booted deployment (offline: the default) and the
/// staged one (download-only or not).
pub fn diff_staged(sysroot: &Path) -> Result<Vec<(String, Change)>> {
    let t = Target::find(sysroot)?;
    let store = Store::open(&t.sysroot)?
        .with_context(|| format!("No image store in {}", t.sysroot.display()))?;
    let staged = lifecycle::read_staged(&t.sysroot)?
        .context("No staged deployment (stage one with `bootc upgrade --download-only`)")?;
    let order = current_order(&t)?;
    let base = base_deployment(&t, &order)?;
    let old = ImageMount::new(&store, &deployment_image(&store, base.id())?)?;
    let new = ImageMount::new(&store, &deployment_image(&store, &staged.id)?)?;
    let mut out = Vec::new();
    for top in ["usr", "etc"] {
        let a = tree_entries(old.path(), top)?;
        let b = tree_entries(new.path(), top)?;
        out.extend(diff_trees(&a, &b, |p| {
            let rel = p.trim_start_matches('/');
            same_bytes(&old.path().join(rel), &new.path().join(rel))
        }));
    }
    Ok(out)
}

/// `bootc internals diff-staged`: print [`diff_staged`], one `A|D|M PATH`
/// line each, then a count per top directory.
pub fn print_diff_staged(sysroot: &Path) -> Result<()> {
    let diff = diff_staged(sysroot)?;
    let mut out = String::new();
    for (p, c) in &diff {
        out.push_str(&format!("{} {p}\n", c.letter()));
    }
    for top in ["/usr", "/etc"] {
        let count = |k: Change| {
            diff.iter()
                .filter(|(p, c)| *c == k && (p == top || p.starts_with(&format!("{top}/"))))
                .count()
        };
        out.push_str(&format!(
            "{top}: {} added, {} removed, {} changed\n",
            count(Change::Added),
            count(Change::Removed),
            count(Change::Changed)
        ));
    }
    print!("{out}");
    Ok(())
}

#[cfg(test)]
mod diff_tests {
    use super::*;
    use std::collections::BTreeMap;

    fn f(mode: u32, size: u64) -> TreeEntry {
        TreeEntry {
            mode,
            uid: 0,
            gid: 0,
            size,
            link: None,
        }
    }

    #[test]
    fn diff_table() {
        const FILE: u32 = 0o100644;
        const DIR: u32 = 0o040755;
        let link = |t: &str| TreeEntry {
            mode: 0o120777,
            link: Some(t.into()),
            ..f(0, 0)
        };
        let tree = |v: &[(&str, TreeEntry)]| {
            v.iter()
                .map(|(p, e)| (p.to_string(), e.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        // (old, new, paths whose content differs, expected)
        type Case<'a> = (
            Vec<(&'a str, TreeEntry)>,
            Vec<(&'a str, TreeEntry)>,
            &'a [&'a str],
            Vec<(&'a str, Change)>,
        );
        let cases: Vec<Case> = vec![
            (
                vec![("/usr", f(DIR, 0))],
                vec![("/usr", f(DIR, 0))],
                &[],
                vec![],
            ),
            (
                vec![("/usr", f(DIR, 0)), ("/usr/a", f(FILE, 1))],
                vec![("/usr", f(DIR, 0)), ("/usr/b", f(FILE, 1))],
                &[],
                vec![("/usr/a", Change::Removed), ("/usr/b", Change::Added)],
            ),
            // same size, other bytes
            (
                vec![("/usr/a", f(FILE, 3))],
                vec![("/usr/a", f(FILE, 3))],
                &["/usr/a"],
                vec![("/usr/a", Change::Changed)],
            ),
            // mode change, size change, type change, link target change
            (
                vec![
                    ("/etc/m", f(FILE, 1)),
                    ("/etc/s", f(FILE, 1)),
                    ("/etc/t", f(FILE, 0)),
                    ("/etc/l", link("x")),
                ],
                vec![
                    ("/etc/m", f(0o100600, 1)),
                    ("/etc/s", f(FILE, 2)),
                    ("/etc/t", f(DIR, 0)),
                    ("/etc/l", link("y")),
                ],
                &[],
                vec![
                    ("/etc/l", Change::Changed),
                    ("/etc/m", Change::Changed),
                    ("/etc/s", Change::Changed),
                    ("/etc/t", Change::Changed),
                ],
            ),
            // a directory's content compare is never asked
            (
                vec![("/usr/d", f(DIR, 0))],
                vec![("/usr/d", f(DIR, 0))],
                &["/usr/d"],
                vec![],
            ),
        ];
        for (old, new, differ, expect) in cases {
            let got = diff_trees(&tree(&old), &tree(&new), |p| !differ.contains(&p));
            let expect: Vec<(String, Change)> =
                expect.into_iter().map(|(p, c)| (p.to_owned(), c)).collect();
            assert_eq!(got, expect, "{old:?} -> {new:?}");
        }
    }
}
