//! `bootc install`: partitions, filesystems, the first deployment and its bootloader.
//!
//! - [`to_disk`]: the whole disk (or a disk image file through a loop device).
//! - [`to_filesystem`]: an already partitioned, formatted and mounted root.
//! - [`to_existing_root`]: alongside the running system's root filesystem.
//! - [`print_configuration`]: the image's merged install configuration.
//! - [`config`]: install configuration and kargs.d drop-ins (pure parse and merge).
//! - [`blockdev`]: loop devices, in-use checks, sfdisk, partitions.
//! - [`filesystem`]: mkfs, UUIDs, mounts, finalisation.
//! - [`deploy`]: the part shared by all verbs, on a mounted root.
//! - [`fstab`]: the deployment's fstab line for a separate `/boot`.
//!
//! # Installation flow of `to-disk`
//!
//! 1. Resolve the source and target references ([`resolve_images`]).
//! 2. Attach a loop device for `--via-loopback` ([`blockdev::LoopDevice`],
//!    detached on every exit path).
//! 3. Refuse a disk that is in use ([`blockdev::check_disk_unused`]), wipe it
//!    with `--wipe`.
//! 4. GPT with sfdisk, partitions made known with `partx -a`
//!    ([`blockdev::partition`]): BIOS boot (unless only systemd-boot or no
//!    bootloader is wanted), ESP, root.
//! 5. mkfs: FAT32 ESP, root ext4 `-O verity` (or `--filesystem`).
//! 6. Mount the root, pull the image into its store, read the image's
//!    install configuration ([`deploy::fetch`]). When that configuration
//!    asks for another root filesystem type and `--filesystem` was not given,
//!    re-create the root filesystem and fetch again.
//! 7. Deployment, /var, boot files, entries and bootloaders ([`deploy::deploy`]).
//! 8. fstrim, read-only remount, unmount, detach.

pub mod blockdev;
pub mod config;
pub mod deploy;
pub mod filesystem;
pub mod fstab;
mod run;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bootc_boot::grub::{GrubTarget, grub_fs_module};
use bootc_oci::imgref::ImageRef;
use bootc_oci::pull::PullOptions;
use bootc_sysroot::{Bootloader, ImageTree};
use fn_error_context::context;

pub use config::{Filesystem, InstallConfig};
pub use deploy::{BootTarget, CommonOptions, Images, InstallOutcome};

/// Where podman describes the container we run in.
pub const CONTAINERENV: &str = "/run/.containerenv";

/// Options of `bootc install to-disk`.
#[derive(Debug, Clone, Default)]
pub struct ToDiskOptions {
    /// The disk, or with `via_loopback` a disk image file.
    pub device: PathBuf,
    /// `--via-loopback`.
    pub via_loopback: bool,
    /// `--wipe`.
    pub wipe: bool,
    /// `--filesystem`.
    pub filesystem: Option<Filesystem>,
    /// `--root-size`, in bytes.
    pub root_size: Option<u64>,
    /// The options shared by all verbs.
    pub common: CommonOptions,
}

/// What `--replace` does to an existing root filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Delete its contents first.
    Wipe,
    /// Keep its contents and install beside them.
    Alongside,
}

/// Options of `bootc install to-filesystem`.
#[derive(Debug, Clone, Default)]
pub struct ToFilesystemOptions {
    /// The mounted root filesystem.
    pub root_path: PathBuf,
    /// `--root-mount-spec` (`root=` value); default `UUID=<uuid of the root>`.
    pub root_mount_spec: Option<String>,
    /// `--boot-mount-spec`: how the installed host mounts the separate
    /// filesystem mounted at `ROOT/boot` (default `UUID=<its uuid>`); written
    /// to the deployment's `/etc/fstab` (see [`fstab`]).
    pub boot_mount_spec: Option<String>,
    /// `--replace`.
    pub replace: Option<Replace>,
    /// `--skip-finalize`: no fstrim and no read-only remount at the end.
    pub skip_finalize: bool,
    /// The options shared by all verbs.
    pub common: CommonOptions,
}

/// The `image=` and `imageid=` of a podman `.containerenv`.
pub fn parse_containerenv(text: &str) -> (Option<String>, Option<String>) {
    let get = |key: &str| {
        text.lines().find_map(|l| {
            let v = l.trim().strip_prefix(key)?.strip_prefix('=')?;
            let v = v.trim().trim_matches('"');
            (!v.is_empty()).then(|| v.to_owned())
        })
    };
    (get("image"), get("imageid"))
}

/// The source and target references of an install.
///
/// Without `--source-imgref`, bootc must be running in a podman container of
/// the image (as upstream): the source is then that image in the host's
/// containers-storage, and the default target its registry name. Otherwise
/// the target defaults to the source.
pub fn resolve_images(opts: &CommonOptions, containerenv: Option<&str>) -> Result<Images> {
    let (env_image, env_id) = containerenv.map(parse_containerenv).unwrap_or_default();
    let source = match (&opts.source_imgref, &env_id) {
        (Some(s), _) => ImageRef::parse(s)?,
        (None, Some(id)) => ImageRef::parse_with_transport(id, "containers-storage")?,
        (None, None) => anyhow::bail!(
            "--source-imgref is required: bootc is not running in a container of the image to install"
        ),
    };
    let target = match (&opts.target_imgref, &opts.target_transport) {
        (Some(t), Some(tr)) => ImageRef::parse_with_transport(t, tr)?,
        (Some(t), None) => ImageRef::parse(t)?,
        (None, _) if opts.source_imgref.is_none() && env_image.is_some() => {
            ImageRef::parse(env_image.as_deref().expect("checked"))?
        }
        (None, _) => source.clone(),
    };
    Ok(Images { source, target })
}

fn read_containerenv() -> Option<String> {
    std::fs::read_to_string(CONTAINERENV).ok()
}

/// Checks that need no device, so that mistakes fail before any write:
/// among them the signature policy for the source image (a policy that
/// rejects it, or one that would accept it unverified under
/// `--enforce-container-sigpolicy`); the pull verifies the signature itself.
fn precheck(common: &CommonOptions, pull: &PullOptions) -> Result<Images> {
    if let Some(s) = &common.stateroot {
        bootc_sysroot::ensure_valid_stateroot(s)?;
    }
    if let Some(k) = &common.root_ssh_authorized_keys {
        std::fs::metadata(k).with_context(|| format!("Reading {}", k.display()))?;
    }
    let images = resolve_images(common, read_containerenv().as_deref())?;
    bootc_oci::signed::decide(&images.source, pull.enforce_sigpolicy, &pull.policy_path)?;
    Ok(images)
}

/// Install to a whole disk (see the module documentation for the steps).
/// `pull_done` is called when the pull ends (to close progress output).
#[context("Installing to {}", opts.device.display())]
pub async fn to_disk(
    opts: &ToDiskOptions,
    pull: &PullOptions,
    pull_done: &(dyn Fn() + Sync),
) -> Result<InstallOutcome> {
    let images = precheck(&opts.common, pull)?;
    let loopdev = if opts.via_loopback {
        Some(blockdev::LoopDevice::attach(&opts.device)?)
    } else {
        None
    };
    let disk = loopdev
        .as_ref()
        .map(|l| l.path().to_owned())
        .unwrap_or_else(|| opts.device.clone());
    blockdev::check_disk_unused(&disk, opts.wipe)?;
    if opts.wipe {
        blockdev::wipe_disk(&disk)?;
    }
    let c = &opts.common;
    let layout = blockdev::Layout {
        bios_boot: c.generic_image
            || !matches!(c.bootloader, Some(Bootloader::Systemd | Bootloader::None)),
        root_size: opts.root_size,
    };
    let parts = blockdev::partition(&disk, &layout)?;
    let nums = layout.numbers();
    let esp_dev = blockdev::partition_path(&parts, nums.esp)?.to_owned();
    let root_dev = blockdev::partition_path(&parts, nums.root)?.to_owned();
    bootc_boot::esp::Esp::mkfs(&esp_dev)?;
    let mut fs = opts.filesystem.unwrap_or(Filesystem::Ext4);
    filesystem::mkfs_root(&root_dev, fs)?;
    let mut root = filesystem::TempMount::mount(&root_dev, fs.as_str())?;
    let mut fetched = deploy::fetch(root.path(), &images, pull, pull_done).await?;
    if opts.filesystem.is_none()
        && let Some(want) = fetched.config.root_fs()
        && want != fs
    {
        eprintln!(
            "The image's install configuration asks for root filesystem type {want}; re-creating the root filesystem"
        );
        drop(fetched);
        root.unmount()?;
        fs = want;
        filesystem::mkfs_root(&root_dev, fs)?;
        root = filesystem::TempMount::mount(&root_dev, fs.as_str())?;
        fetched = deploy::fetch(root.path(), &images, pull, pull_done).await?;
    }
    let uuid = filesystem::fs_uuid(&root_dev)?;
    let target = BootTarget {
        root_spec: Some(format!("UUID={uuid}")),
        boot_fs: GrubTarget {
            fs_uuid: uuid,
            fs_module: grub_fs_module(fs.as_str()).to_owned(),
            prefix: "/boot".into(),
        },
        disk: layout.bios_boot.then(|| disk.clone()),
        esp: Some(esp_dev),
    };
    let outcome = deploy::deploy(&fetched, &target, &images, c)?;
    drop(fetched);
    filesystem::finalize(root.path())?;
    root.unmount()?;
    if let Some(l) = loopdev {
        l.detach()?;
    }
    Ok(outcome)
}

/// Install into the filesystem mounted at `opts.root_path` (and its
/// `boot` mount, if any). GRUB goes to the disk holding the root partition;
/// systemd-boot to that disk's ESP, found by its partition type and written
/// with mtools.
#[context("Installing to filesystem {}", opts.root_path.display())]
pub async fn to_filesystem(
    opts: &ToFilesystemOptions,
    pull: &PullOptions,
    pull_done: &(dyn Fn() + Sync),
) -> Result<InstallOutcome> {
    let images = precheck(&opts.common, pull)?;
    let root = std::fs::canonicalize(&opts.root_path)
        .with_context(|| format!("Resolving {}", opts.root_path.display()))?;
    let mnt = filesystem::mount_at(&root)?.with_context(|| {
        format!(
            "{} is not a mount point; mount the target root filesystem there",
            root.display()
        )
    })?;
    prepare_root(&root, opts.replace)?;

    let root_dev = filesystem::source_device(&mnt.source);
    let is_blockdev = std::fs::metadata(&root_dev)
        .map(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
        .unwrap_or(false);
    anyhow::ensure!(
        is_blockdev || opts.root_mount_spec.is_some(),
        "{} is mounted from {}, not a block device; give --root-mount-spec",
        root.display(),
        mnt.source
    );
    let root_uuid = if is_blockdev {
        Some(filesystem::fs_uuid(&root_dev)?)
    } else {
        None
    };
    let root_spec = match (&opts.root_mount_spec, &root_uuid) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(u)) => Some(format!("UUID={u}")),
        (None, None) => None,
    };
    let boot_mnt = filesystem::mount_at(&root.join("boot"))?;
    let mut boot_fstab = None;
    let boot_fs = match &boot_mnt {
        Some(b) => {
            let fs_uuid = filesystem::fs_uuid(&filesystem::source_device(&b.source))?;
            let spec = opts
                .boot_mount_spec
                .clone()
                .unwrap_or_else(|| format!("UUID={fs_uuid}"));
            boot_fstab = Some(fstab::boot_line(&spec, Some(&b.fstype))?);
            GrubTarget {
                fs_uuid,
                fs_module: grub_fs_module(&b.fstype).to_owned(),
                prefix: String::new(),
            }
        }
        None if opts.boot_mount_spec.is_some() => anyhow::bail!(
            "--boot-mount-spec needs the boot filesystem mounted at {}: boot entries are written there",
            root.join("boot").display()
        ),
        None => GrubTarget {
            fs_uuid: root_uuid.clone().unwrap_or_default(),
            fs_module: grub_fs_module(&mnt.fstype).to_owned(),
            prefix: "/boot".into(),
        },
    };
    let disk = if is_blockdev {
        Some(blockdev::parent_disk(&root_dev)?)
    } else {
        None
    };
    let esp = match &disk {
        Some(d) if d != &root_dev => blockdev::find_partition_by_type(d, blockdev::ESP_GUID)?,
        _ => None,
    };
    let target = BootTarget {
        root_spec,
        boot_fs,
        disk: disk.filter(|d| d != &root_dev),
        esp,
    };
    let fetched = deploy::fetch(&root, &images, pull, pull_done).await?;
    let outcome = deploy::deploy(&fetched, &target, &images, &opts.common)?;
    drop(fetched);
    if let Some(line) = &boot_fstab {
        let dir = bootc_sysroot::deployment::deployment_dir(&root, outcome.deployment.id());
        fstab::write_boot_line(&dir.join("etc"), line)?;
        let fd = std::fs::File::open(&root)?;
        rustix::fs::syncfs(&fd).with_context(|| format!("Syncing {}", root.display()))?;
    }
    if !opts.skip_finalize {
        filesystem::finalize(&root)?;
    }
    Ok(outcome)
}

/// Install alongside the running system's root, mounted at `root_path`
/// (upstream runs in a container with the host's `/` at `/target`). Its
/// files are kept; its bootloader is replaced.
pub async fn to_existing_root(
    root_path: &Path,
    common: &CommonOptions,
    pull: &PullOptions,
    pull_done: &(dyn Fn() + Sync),
) -> Result<InstallOutcome> {
    let opts = ToFilesystemOptions {
        root_path: root_path.to_owned(),
        replace: Some(Replace::Alongside),
        skip_finalize: true,
        common: common.clone(),
        ..Default::default()
    };
    to_filesystem(&opts, pull, pull_done).await
}

/// Directory entries that may exist in an "empty" filesystem.
const IGNORED_ROOT_ENTRIES: &[&str] = &["lost+found"];

/// Check that `root` is empty, or empty it (`Wipe`), or accept it (`Alongside`).
/// Mount points below it (such as `boot`) are kept, their contents treated alike.
#[context("Preparing {}", root.display())]
fn prepare_root(root: &Path, replace: Option<Replace>) -> Result<()> {
    if replace == Some(Replace::Alongside) {
        return Ok(());
    }
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let dev = std::fs::metadata(&dir)?.dev();
        for ent in std::fs::read_dir(&dir).with_context(|| format!("Reading {}", dir.display()))? {
            let ent = ent?;
            let name = ent.file_name();
            if IGNORED_ROOT_ENTRIES.iter().any(|i| name == *i) {
                continue;
            }
            let p = ent.path();
            let md = std::fs::symlink_metadata(&p)?;
            if md.is_dir() && md.dev() != dev {
                // Another filesystem mounted here (boot, boot/efi): look inside.
                stack.push(p);
                continue;
            }
            match replace {
                Some(Replace::Wipe) => {
                    if md.is_dir() {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    }
                    .with_context(|| format!("Removing {}", p.display()))?;
                }
                _ => anyhow::bail!(
                    "{} is not empty (found {}); use --replace wipe or --replace alongside",
                    root.display(),
                    p.display()
                ),
            }
        }
    }
    Ok(())
}

/// The merged install configuration of the image tree at `root` (`/` when
/// running inside the image) as JSON, `null` when it has none.
pub fn print_configuration(root: &Path) -> Result<String> {
    let tree = ImageTree::open(root, &root.display().to_string())?;
    let config = config::load_install_config(&tree)?;
    Ok(serde_json::to_string(&config).expect("plain struct serialises"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerenv() {
        let text = "engine=\"podman-4.3.1\"\nname=\"x\"\nimage=\"quay.io/example/os:latest\"\nimageid=\"abc123\"\nrootless=0\n";
        assert_eq!(
            parse_containerenv(text),
            (
                Some("quay.io/example/os:latest".into()),
                Some("abc123".into())
            )
        );
        assert_eq!(parse_containerenv(""), (None, None));
    }

    #[test]
    fn image_resolution_table() {
        let opts = |s: Option<&str>, t: Option<&str>, tr: Option<&str>| CommonOptions {
            source_imgref: s.map(Into::into),
            target_imgref: t.map(Into::into),
            target_transport: tr.map(Into::into),
            ..Default::default()
        };
        let env = "image=\"quay.io/example/os:latest\"\nimageid=\"abc123\"\n";
        type Case<'a> = (CommonOptions, Option<&'a str>, Option<(&'a str, &'a str)>);
        let cases: &[Case] = &[
            (opts(None, None, None), None, None),
            (
                opts(Some("containers-storage:localhost/x:1"), None, None),
                None,
                Some((
                    "containers-storage:localhost/x:1",
                    "containers-storage:localhost/x:1",
                )),
            ),
            (
                opts(Some("oci:/tmp/l"), Some("quay.io/a/b:c"), None),
                None,
                Some(("oci:/tmp/l", "quay.io/a/b:c")),
            ),
            (
                opts(Some("oci:/tmp/l"), Some("/srv/os"), Some("oci")),
                None,
                Some(("oci:/tmp/l", "oci:/srv/os")),
            ),
            (
                opts(None, None, None),
                Some(env),
                Some(("containers-storage:abc123", "quay.io/example/os:latest")),
            ),
            (
                opts(Some("docker://quay.io/a/b"), None, None),
                Some(env),
                Some(("quay.io/a/b", "quay.io/a/b")),
            ),
        ];
        for (o, env, expect) in cases {
            let got = resolve_images(o, *env)
                .ok()
                .map(|i| (i.source.to_string(), i.target.to_string()));
            let expect = expect.map(|(a, b)| (a.to_owned(), b.to_owned()));
            assert_eq!(got, expect, "{o:?} {env:?}");
        }
    }

    #[test]
    fn root_must_be_empty() {
        let td = tempfile::tempdir().unwrap();
        std::fs::create_dir(td.path().join("lost+found")).unwrap();
        prepare_root(td.path(), None).unwrap();
        std::fs::write(td.path().join("file"), "x").unwrap();
        std::fs::create_dir_all(td.path().join("dir/sub")).unwrap();
        let e = prepare_root(td.path(), None).unwrap_err();
        assert!(format!("{e:#}").contains("is not empty"), "{e:#}");
        prepare_root(td.path(), Some(Replace::Alongside)).unwrap();
        assert!(td.path().join("file").exists());
        prepare_root(td.path(), Some(Replace::Wipe)).unwrap();
        let left: Vec<_> = std::fs::read_dir(td.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["lost+found"]);
    }
}
