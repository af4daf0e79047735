//! `bootc install ...` (arguments and flow glue; the work is in `bootc-install`).

use std::path::{Path, PathBuf};

use anyhow::Result;
use bootc_install::{CommonOptions, Filesystem, InstallOutcome, Replace};
use bootc_oci::imgref::ImageRef;
use bootc_sysroot::Bootloader;
use clap::ValueEnum;

/// `bootc install` verbs.
#[derive(Debug, clap::Subcommand)]
pub enum InstallCommand {
    /// Install to the target block device (or, with --via-loopback, a disk image file).
    ToDisk(ToDiskArgs),
    /// Install to an externally created, mounted filesystem structure.
    ToFilesystem(ToFilesystemArgs),
    /// Install alongside the existing root filesystem (mounted at ROOT_PATH).
    ToExistingRoot(ToExistingRootArgs),
    /// Print the merged install configuration of the image as JSON.
    PrintConfiguration(PrintConfigurationArgs),
}

/// Root filesystem types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FilesystemArg {
    /// ext4 with fs-verity support.
    Ext4,
    /// XFS.
    Xfs,
    /// Btrfs.
    Btrfs,
}

impl From<FilesystemArg> for Filesystem {
    fn from(f: FilesystemArg) -> Self {
        match f {
            FilesystemArg::Ext4 => Filesystem::Ext4,
            FilesystemArg::Xfs => Filesystem::Xfs,
            FilesystemArg::Btrfs => Filesystem::Btrfs,
        }
    }
}

/// Bootloaders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BootloaderArg {
    /// systemd-boot on the ESP (UEFI), from the image.
    Systemd,
    /// GRUB for BIOS, installed with the host's grub-install.
    Grub,
    /// Install no bootloader.
    None,
}

impl From<BootloaderArg> for Bootloader {
    fn from(b: BootloaderArg) -> Self {
        match b {
            BootloaderArg::Systemd => Bootloader::Systemd,
            BootloaderArg::Grub => Bootloader::Grub,
            BootloaderArg::None => Bootloader::None,
        }
    }
}

/// `--replace` modes of `to-filesystem`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReplaceArg {
    /// Delete the filesystem's contents first.
    Wipe,
    /// Keep its contents and install beside them.
    Alongside,
}

/// Options shared by all install verbs (upstream's names).
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// The image to install, `[TRANSPORT:]NAME` (registry, oci, oci-archive,
    /// containers-storage). Required unless bootc runs in a podman container
    /// of the image itself.
    #[arg(long, value_name = "IMGREF")]
    pub source_imgref: Option<String>,

    /// The transport of --target-imgref when it carries no prefix.
    #[arg(long, value_name = "TRANSPORT")]
    pub target_transport: Option<String>,

    /// The image the installed host follows for updates (default: the source).
    #[arg(long, value_name = "IMGREF")]
    pub target_imgref: Option<String>,

    /// Refuse to pull when the signature policy accepts anything for the image.
    #[arg(long)]
    pub enforce_container_sigpolicy: bool,

    /// Accepted for compatibility; the image is always fetched.
    #[arg(long, hide = true)]
    pub skip_fetch_check: bool,

    /// Accepted for compatibility; SELinux labels are not handled.
    #[arg(long, hide = true)]
    pub disable_selinux: bool,

    /// Add a kernel argument (repeatable).
    #[arg(long = "karg", value_name = "KARG")]
    pub karg: Vec<String>,

    /// Give root these SSH authorized keys on first boot (via tmpfiles.d).
    #[arg(long, value_name = "FILE")]
    pub root_ssh_authorized_keys: Option<PathBuf>,

    /// Make a generic disk image: install every bootloader that can work
    /// (systemd-boot and GRUB) and change no firmware settings.
    #[arg(long)]
    pub generic_image: bool,

    /// The stateroot name (default: "default").
    #[arg(long, value_name = "NAME")]
    pub stateroot: Option<String>,

    /// The bootloader (default: systemd-boot when the image ships it, else GRUB).
    #[arg(long, value_enum)]
    pub bootloader: Option<BootloaderArg>,
}

impl From<&CommonArgs> for CommonOptions {
    fn from(a: &CommonArgs) -> Self {
        CommonOptions {
            source_imgref: a.source_imgref.clone(),
            target_imgref: a.target_imgref.clone(),
            target_transport: a.target_transport.clone(),
            enforce_container_sigpolicy: a.enforce_container_sigpolicy,
            kargs: a.karg.clone(),
            root_ssh_authorized_keys: a.root_ssh_authorized_keys.clone(),
            generic_image: a.generic_image,
            stateroot: a.stateroot.clone(),
            bootloader: a.bootloader.map(Into::into),
        }
    }
}

/// Arguments of `bootc install to-disk`.
#[derive(Debug, clap::Args)]
pub struct ToDiskArgs {
    /// The target block device (a disk image file with --via-loopback).
    pub device: PathBuf,

    /// Erase the disk's partitions and signatures first.
    #[arg(long)]
    pub wipe: bool,

    /// DEVICE is a disk image file: attach it to a loop device.
    #[arg(long)]
    pub via_loopback: bool,

    /// The root filesystem type (default: the image's install configuration, else ext4).
    #[arg(long, value_enum)]
    pub filesystem: Option<FilesystemArg>,

    /// The size of the root partition, e.g. 10G (default: the rest of the disk).
    #[arg(long, value_name = "SIZE")]
    pub root_size: Option<String>,

    #[command(flatten)]
    #[expect(missing_docs)]
    pub common: CommonArgs,
}

/// Arguments of `bootc install to-filesystem`.
#[derive(Debug, clap::Args)]
pub struct ToFilesystemArgs {
    /// The mounted root filesystem.
    pub root_path: PathBuf,

    /// The `root=` kernel argument value (default: UUID=<uuid of the root filesystem>).
    #[arg(long, value_name = "SPEC")]
    pub root_mount_spec: Option<String>,

    /// How the installed host mounts the separate /boot filesystem mounted
    /// at ROOT/boot (default: UUID=<its uuid>); written to the deployment's
    /// /etc/fstab. Requires a filesystem mounted at ROOT/boot.
    #[arg(long, value_name = "SPEC")]
    pub boot_mount_spec: Option<String>,

    /// Install into a non-empty filesystem: wipe it, or install alongside its contents.
    #[arg(long, value_enum)]
    pub replace: Option<ReplaceArg>,

    /// Accepted for compatibility (to-existing-root's confirmation).
    #[arg(long)]
    pub acknowledge_destructive: bool,

    /// Leave the filesystem writable: no fstrim and no read-only remount.
    #[arg(long)]
    pub skip_finalize: bool,

    #[command(flatten)]
    #[expect(missing_docs)]
    pub common: CommonArgs,
}

/// Arguments of `bootc install to-existing-root`.
#[derive(Debug, clap::Args)]
pub struct ToExistingRootArgs {
    /// Where the existing root filesystem is mounted.
    #[arg(default_value = "/target")]
    pub root_path: PathBuf,

    /// Do not wait: accept that the bootloader of the existing system is replaced.
    #[arg(long)]
    pub acknowledge_destructive: bool,

    #[command(flatten)]
    #[expect(missing_docs)]
    pub common: CommonArgs,
}

/// Arguments of `bootc install print-configuration`.
#[derive(Debug, clap::Args)]
pub struct PrintConfigurationArgs {
    /// Read the configuration of the image tree at DIR instead of the
    /// running system (for example a `podman image mount` directory).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
}

/// How long to-existing-root waits without --acknowledge-destructive (as upstream).
const DESTRUCTIVE_WAIT_SECS: u64 = 20;

/// Run an install verb.
pub async fn run(_sysroot: &Path, cmd: InstallCommand) -> Result<()> {
    match cmd {
        InstallCommand::ToDisk(a) => {
            let root_size = a
                .root_size
                .as_deref()
                .map(bootc_install::blockdev::parse_size)
                .transpose()?;
            let opts = bootc_install::ToDiskOptions {
                device: a.device.clone(),
                via_loopback: a.via_loopback,
                wipe: a.wipe,
                filesystem: a.filesystem.map(Into::into),
                root_size,
                common: (&a.common).into(),
            };
            let (pull, progress) = pull_options(&a.common)?;
            let outcome = bootc_install::to_disk(&opts, &pull, &|| progress.finish()).await?;
            report(&outcome, &a.device.display().to_string());
        }
        InstallCommand::ToFilesystem(a) => {
            let opts = bootc_install::ToFilesystemOptions {
                root_path: a.root_path.clone(),
                root_mount_spec: a.root_mount_spec.clone(),
                boot_mount_spec: a.boot_mount_spec.clone(),
                replace: a.replace.map(|r| match r {
                    ReplaceArg::Wipe => Replace::Wipe,
                    ReplaceArg::Alongside => Replace::Alongside,
                }),
                skip_finalize: a.skip_finalize,
                common: (&a.common).into(),
            };
            let (pull, progress) = pull_options(&a.common)?;
            let outcome = bootc_install::to_filesystem(&opts, &pull, &|| progress.finish()).await?;
            report(&outcome, &a.root_path.display().to_string());
        }
        InstallCommand::ToExistingRoot(a) => {
            if !a.acknowledge_destructive {
                eprintln!(
                    "Installing alongside the system at {}: its bootloader will be replaced. \
                     Waiting {DESTRUCTIVE_WAIT_SECS} s; press Ctrl-C to cancel (--acknowledge-destructive skips this).",
                    a.root_path.display()
                );
                tokio::time::sleep(std::time::Duration::from_secs(DESTRUCTIVE_WAIT_SECS)).await;
            }
            let (pull, progress) = pull_options(&a.common)?;
            let common: CommonOptions = (&a.common).into();
            let outcome = bootc_install::to_existing_root(&a.root_path, &common, &pull, &|| {
                progress.finish()
            })
            .await?;
            report(&outcome, &a.root_path.display().to_string());
        }
        InstallCommand::PrintConfiguration(a) => {
            println!("{}", bootc_install::print_configuration(&a.root)?);
        }
    }
    Ok(())
}

/// Pull options as `bootc image pull` builds them, with terminal progress.
fn pull_options(
    a: &CommonArgs,
) -> Result<(
    bootc_oci::pull::PullOptions,
    std::sync::Arc<bootc_oci::progress::PullProgress>,
)> {
    // The reference only labels the progress output; a bad one is reported
    // by the install's own checks.
    let label = a
        .source_imgref
        .as_deref()
        .and_then(|s| ImageRef::parse(s).ok())
        .unwrap_or_else(|| ImageRef::parse("localhost/image").expect("valid reference"));
    let progress = crate::progress::reporter(&label, false, None)?;
    let opts = bootc_oci::pull::PullOptions {
        enforce_sigpolicy: a.enforce_container_sigpolicy,
        authfile: bootc_oci::auth::find_authfile(Path::new("/"))?,
        progress: progress.clone(),
        policy_path: bootc_oci::policy::find_policy_path()
            .unwrap_or_else(|_| bootc_oci::policy::DEFAULT_POLICY_PATH.into()),
        registries_conf: std::env::var_os("CONTAINERS_REGISTRIES_CONF").map(Into::into),
    };
    Ok((opts, progress))
}

fn report(o: &InstallOutcome, target: &str) {
    let d = &o.deployment;
    let bls: Vec<_> = o.bootloaders.iter().map(ToString::to_string).collect();
    println!(
        "Installed {} ({}) to {target}\n  deployment: {}\n  stateroot: {}; kernel: {}; bootloader: {}; fs-verity: {}\n  kernel arguments: {}",
        d.image,
        d.manifest_digest,
        d.id(),
        d.stateroot,
        d.kernel_version,
        if bls.is_empty() {
            "none".to_owned()
        } else {
            bls.join(", ")
        },
        d.verity,
        d.cmdline(),
    );
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `bootc install ...` as the command line parses it, without `cli`.
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: InstallCommand,
    }

    #[test]
    fn parses_to_disk_like_upstream() {
        let cli = Cli::try_parse_from([
            "bootc-install",
            "to-disk",
            "--via-loopback",
            "--source-imgref",
            "containers-storage:localhost/x:latest",
            "--target-imgref",
            "quay.io/x/y:latest",
            "--karg",
            "a=1",
            "--karg",
            "b",
            "--bootloader",
            "grub",
            "--filesystem",
            "xfs",
            "--root-size",
            "3G",
            "--wipe",
            "--generic-image",
            "--stateroot",
            "os",
            "--root-ssh-authorized-keys",
            "/k",
            "--enforce-container-sigpolicy",
            "/var/tmp/d.raw",
        ])
        .unwrap();
        let InstallCommand::ToDisk(a) = cli.command else {
            panic!("not to-disk")
        };
        assert!(a.via_loopback && a.wipe && a.common.generic_image);
        assert_eq!(a.common.karg, ["a=1", "b"]);
        assert_eq!(a.common.bootloader, Some(BootloaderArg::Grub));
        assert_eq!(a.filesystem, Some(FilesystemArg::Xfs));
        assert_eq!(a.device, PathBuf::from("/var/tmp/d.raw"));
    }

    #[test]
    fn parses_to_filesystem() {
        let cli = Cli::try_parse_from([
            "bootc-install",
            "to-filesystem",
            "--replace",
            "alongside",
            "--root-mount-spec",
            "LABEL=root",
            "--skip-finalize",
            "--source-imgref",
            "oci:/l",
            "/mnt",
        ])
        .unwrap();
        let InstallCommand::ToFilesystem(a) = cli.command else {
            panic!("not to-filesystem")
        };
        assert_eq!(a.replace, Some(ReplaceArg::Alongside));
        assert!(a.skip_finalize);
        assert_eq!(a.root_path, PathBuf::from("/mnt"));
    }
}
