//! The host a transaction changes ([`Target`]), and what every transaction
//! shares: the writer lock, the boot order, the stored image of a
//! deployment, and the boot files and entries on the boot filesystem or ESP.

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bootc_boot::BlsEntry;
use bootc_boot::entries::{boot_order, read_entries};
use bootc_boot::esp::Esp;
use bootc_boot::grub::{parse_grub_target, render_grub_cfg, write_grub_cfg};
use bootc_oci::imgref::ImageRef;
use bootc_spec::ImageReference;
use bootc_store::{LockWait, OciDigest, Store, StoredImage, WriteLock, lock::LockBusy};
use bootc_sysroot::lifecycle;
use bootc_sysroot::{Bootloader, Deployment, deployment};

use crate::report::Reporter;

/// The host being changed: its physical root and, when it is running, the
/// booted deployment; and where the transaction reports to.
#[derive(Clone)]
pub struct Target {
    /// The physical root filesystem.
    pub sysroot: PathBuf,
    /// The booted deployment; `None` offline (`--sysroot`).
    pub booted: Option<String>,
    /// Where notes and warnings go.
    pub report: Arc<dyn Reporter>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("sysroot", &self.sysroot)
            .field("booted", &self.booted)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// `--sysroot PATH` (other than `/`) is an unbooted disk; else the
    /// running host, which must be booted from a deployment.
    pub fn find(sysroot: &Path, report: Arc<dyn Reporter>) -> Result<Self> {
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
                report,
            });
        }
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        match bootc_sysroot::booted_deployment_id(&cmdline) {
            Some(id) if Path::new("/sysroot/state/deploy").join(&id).is_dir() => Ok(Self {
                sysroot: "/sysroot".into(),
                booted: Some(id),
                report,
            }),
            _ => bail!(
                "This system was not booted from a bootc deployment (no composefs= on the kernel command line); use --sysroot for a disk"
            ),
        }
    }

    /// The boot filesystem's directory (`/boot` of the sysroot).
    pub fn boot_dir(&self) -> PathBuf {
        self.sysroot.join("boot")
    }

    /// Mark the named step `name` durable: the crash point, then the reporter.
    pub(crate) fn step(&self, name: &str) {
        bootc_utils::crashpoint::point(name);
        self.report.step(name);
    }

    /// The store of the sysroot, which must exist.
    pub fn open_store(&self) -> Result<Store> {
        Store::open(&self.sysroot)?
            .with_context(|| format!("No image store in {}", self.sysroot.display()))
    }
}

/// Take the writer lock, telling the user when another process holds it.
pub fn lock(store: &Store, report: &dyn Reporter) -> Result<WriteLock> {
    match store.lock(LockWait::NoWait) {
        Ok(l) => Ok(l),
        Err(e) => {
            let Some(busy) = e.downcast_ref::<LockBusy>() else {
                return Err(e);
            };
            report.warn(&format!("Waiting: {busy}"));
            store.lock(LockWait::Block)
        }
    }
}

/// The deployments in boot order (default first), with their entries.
pub fn current_order(t: &Target) -> Result<Vec<(String, BlsEntry)>> {
    Ok(boot_order(read_entries(&t.boot_dir())?)
        .into_iter()
        .filter_map(|(_, e)| Some((e.deployment_id()?, e)))
        .collect())
}

/// The deployment updates start from: the booted one, or offline the default.
pub fn base_deployment(t: &Target, order: &[(String, BlsEntry)]) -> Result<Deployment> {
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
pub fn imgref_of(r: &ImageReference) -> Result<ImageRef> {
    ImageRef::parse_with_transport(&r.image, &r.transport)
        .with_context(|| format!("Parsing tracked image {}:{}", r.transport, r.image))
}

/// Give every deployment its own store tag (deployments made before tags
/// existed are pinned by their image name while it still matches).
pub(crate) fn pin_deployment_images(store: &Store, deps: &[Deployment]) -> Result<()> {
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

pub(crate) fn parse_digest(d: &str) -> Result<OciDigest> {
    OciDigest::from_str(d).with_context(|| format!("Parsing digest {d}"))
}

/// The stored image of deployment `id`.
pub fn deployment_image(store: &Store, id: &str) -> Result<StoredImage> {
    store
        .get(&lifecycle::deployment_tag(id))?
        .with_context(|| format!("The image of deployment {id} is not in the store"))
}

/// The ESP of the disk holding `sysroot`: the partition of type ESP beside
/// the root partition.
pub fn find_esp(sysroot: &Path) -> Result<Esp> {
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
pub fn publish_entries(
    t: &Target,
    bootloader: Bootloader,
    entries: &[(String, BlsEntry)],
) -> Result<()> {
    publish_entries_on_trial(t, bootloader, entries, None)
}

/// [`publish_entries`], with the entry of `trial`'s deployment (id, tries)
/// named with its boot counter on the ESP (systemd-boot counts by name;
/// GRUB's counter is in grubenv, see [`crate::trial::start_trial`]).
pub(crate) fn publish_entries_on_trial(
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
                .map(|(n, e)| (crate::trial::esp_name(n, e, trial), e.clone()))
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
pub(crate) fn install_kernel(
    t: &Target,
    dep: &Deployment,
    tree: &bootc_sysroot::ImageTree,
) -> Result<()> {
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
pub(crate) fn remove_kernels(
    t: &Target,
    gone: &[&Deployment],
    remaining: &[&Deployment],
) -> Result<()> {
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
pub(crate) fn sweep_boot_dirs(t: &Target, all: &[Deployment]) -> Result<()> {
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

/// `IMAGE (DIGEST, version V)` for messages.
pub fn describe(imgref: &str, dep: &Deployment) -> String {
    format!(
        "{imgref} ({}{})",
        dep.manifest_digest,
        dep.version
            .as_deref()
            .map(|v| format!(", version {v}"))
            .unwrap_or_default()
    )
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
