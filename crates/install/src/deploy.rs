//! The part of every install that works on a mounted root filesystem:
//! fetch the image into its store, create the deployment, its /var, its boot
//! files and entries, and the bootloader.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result};
use bootc_boot::bls::{BlsEntry, entry_file_name};
use bootc_boot::esp::{Esp, SYSTEMD_BOOT_EFI};
use bootc_boot::grub::{GrubTarget, grub_install_bios, render_grub_cfg, write_grub_cfg};
use bootc_oci::imgref::ImageRef;
use bootc_oci::pull::PullOptions;
use bootc_spec::{ImageReference, ImageSignature};
use bootc_store::{LockWait, OciDigest, Store, StoredImage, WriteLock};
use bootc_sysroot::{Bootloader, Deployment, ImageMount, NewDeployment};
use fn_error_context::context;

use crate::config::InstallConfig;

/// The image to install and the reference the host will track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    /// Where the image is fetched from now.
    pub source: ImageRef,
    /// What the installed host follows for updates.
    pub target: ImageRef,
}

/// An image fetched into the target's store and mounted, with its install
/// configuration. Holds the store's writer lock.
pub struct Fetched {
    /// The target's store.
    pub store: Store,
    _lock: WriteLock,
    /// The image, under the target name.
    pub image: StoredImage,
    /// Its tree.
    pub mount: ImageMount,
    /// Its merged install configuration (empty when it has none).
    pub config: InstallConfig,
    /// Its kargs.d arguments for this architecture.
    pub kargs_d: Vec<String>,
}

impl std::fmt::Debug for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetched")
            .field("image", &self.image)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Pull `images.source` into the store of `sysroot`, name it
/// `images.target`, mount it and read its install configuration.
#[context("Fetching {} into {}", images.source, sysroot.display())]
pub async fn fetch(
    sysroot: &Path,
    images: &Images,
    pull: &PullOptions,
    pull_done: &(dyn Fn() + Sync),
) -> Result<Fetched> {
    let store = Store::ensure(sysroot)?;
    let lock = store.lock(LockWait::Block)?;
    let outcome = bootc_oci::pull::pull(&store, &images.source, pull).await;
    pull_done();
    let outcome = outcome?;
    let source_name = images.source.to_string();
    let target_name = images.target.to_string();
    if source_name != target_name {
        let digest = OciDigest::from_str(&outcome.image.manifest_digest)
            .with_context(|| format!("Parsing digest {}", outcome.image.manifest_digest))?;
        // The target name is the image's GC root from now on.
        store.tag(&digest, &target_name)?;
        store.untag(&source_name)?;
    }
    let image = store
        .get(&target_name)?
        .with_context(|| format!("Image {target_name} missing after tagging"))?;
    let mount = ImageMount::new(&store, &image)?;
    let config = crate::config::load_install_config(&mount)?.unwrap_or_default();
    let kargs_d = crate::config::load_kargs(&mount)?;
    Ok(Fetched {
        store,
        _lock: lock,
        image,
        mount,
        config,
        kargs_d,
    })
}

/// Where and how the installed system boots.
#[derive(Debug, Clone)]
pub struct BootTarget {
    /// The `root=` value; `None` omits `root=`.
    pub root_spec: Option<String>,
    /// The filesystem holding `/boot` (for GRUB's `search`).
    pub boot_fs: GrubTarget,
    /// The disk for `grub-install`, when GRUB can be installed.
    pub disk: Option<PathBuf>,
    /// The ESP device, when there is one.
    pub esp: Option<PathBuf>,
}

/// Settings common to every install verb.
#[derive(Debug, Clone, Default)]
pub struct CommonOptions {
    /// `--source-imgref`.
    pub source_imgref: Option<String>,
    /// `--target-imgref`.
    pub target_imgref: Option<String>,
    /// `--target-transport`.
    pub target_transport: Option<String>,
    /// `--enforce-container-sigpolicy`.
    pub enforce_container_sigpolicy: bool,
    /// `--karg`, in order.
    pub kargs: Vec<String>,
    /// `--root-ssh-authorized-keys`.
    pub root_ssh_authorized_keys: Option<PathBuf>,
    /// `--generic-image`.
    pub generic_image: bool,
    /// `--stateroot`.
    pub stateroot: Option<String>,
    /// `--bootloader`.
    pub bootloader: Option<Bootloader>,
}

/// Which bootloaders to install, the first being the one recorded.
///
/// - `none` (asked or configured) installs nothing;
/// - `--generic-image` installs every one that can work: systemd-boot when
///   the image ships it and there is an ESP, and GRUB when there is a disk;
/// - an explicit choice must be possible, or it is an error;
/// - by default: systemd-boot when the image ships it and there is an ESP,
///   else GRUB.
pub fn choose_bootloaders(
    asked: Option<Bootloader>,
    configured: Option<&str>,
    generic: bool,
    has_systemd_boot: bool,
    has_esp: bool,
    has_disk: bool,
) -> Result<Vec<Bootloader>> {
    let configured = match configured {
        None => None,
        Some("systemd") => Some(Bootloader::Systemd),
        Some("grub") => Some(Bootloader::Grub),
        Some("none") => Some(Bootloader::None),
        Some(other) => anyhow::bail!(
            "install configuration names unknown bootloader {other:?} (systemd, grub or none)"
        ),
    };
    let pref = asked.or(configured);
    let sd_possible = has_systemd_boot && has_esp;
    if pref == Some(Bootloader::None) {
        return Ok(Vec::new());
    }
    if generic {
        let mut out = Vec::new();
        if sd_possible {
            out.push(Bootloader::Systemd);
        }
        if has_disk {
            out.push(Bootloader::Grub);
        }
        anyhow::ensure!(!out.is_empty(), "no bootloader can be installed here");
        return Ok(out);
    }
    match pref {
        Some(Bootloader::Systemd) => {
            anyhow::ensure!(
                has_systemd_boot,
                "the image has no /{SYSTEMD_BOOT_EFI}; install systemd-boot (Debian: systemd-boot-efi) in the image or choose --bootloader grub"
            );
            anyhow::ensure!(has_esp, "there is no EFI system partition for systemd-boot");
            Ok(vec![Bootloader::Systemd])
        }
        Some(Bootloader::Grub) => {
            anyhow::ensure!(has_disk, "no disk to install GRUB to");
            Ok(vec![Bootloader::Grub])
        }
        _ if sd_possible => Ok(vec![Bootloader::Systemd]),
        _ if has_disk => Ok(vec![Bootloader::Grub]),
        _ => anyhow::bail!("no bootloader can be installed here; use --bootloader none"),
    }
}

/// The kernel command line of a new deployment, in the order of the design:
/// `root= rw composefs=<ID> bootc.stateroot=<S>`, then kargs.d, the install
/// configuration and `--karg`.
pub fn compose_kargs(
    root_spec: Option<&str>,
    id: &str,
    stateroot: &str,
    kargs_d: &[String],
    config: &[String],
    cli: &[String],
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(r) = root_spec.filter(|r| !r.is_empty()) {
        out.push(format!("root={r}"));
    }
    out.push("rw".to_owned());
    out.push(format!("{}={id}", bootc_sysroot::cmdline::DEPLOYMENT_KARG));
    out.push(format!(
        "{}={stateroot}",
        bootc_sysroot::cmdline::STATEROOT_KARG
    ));
    out.extend(kargs_d.iter().cloned());
    out.extend(config.iter().cloned());
    out.extend(cli.iter().cloned());
    out
}

/// The menu title: `<PRETTY_NAME> (<version>)`, the version being the
/// image's version label or else the start of its manifest digest.
pub fn entry_title(pretty_name: &str, version: Option<&str>, manifest_digest: &str) -> String {
    let v = match version {
        Some(v) => v.to_owned(),
        None => {
            let hex = manifest_digest
                .strip_prefix("sha256:")
                .unwrap_or(manifest_digest);
            hex.chars().take(12).collect()
        }
    };
    format!("{pretty_name} ({v})")
}

/// What an install produced.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstallOutcome {
    /// The deployment created.
    pub deployment: Deployment,
    /// The bootloaders installed.
    pub bootloaders: Vec<Bootloader>,
}

/// The systemd tmpfiles.d entry that gives root the SSH keys `keys` on
/// first boot (when root has none yet), as upstream bootc does.
pub fn ssh_keys_tmpfiles(keys: &str) -> String {
    format!(
        "# Written by bootc install --root-ssh-authorized-keys\n\
         d /root/.ssh 0700 root root -\n\
         f~ /root/.ssh/authorized_keys 0600 root root - {}\n",
        bootc_utils::base64::encode(keys.as_bytes())
    )
}

/// Create the deployment of `fetched` in its sysroot and make it boot.
#[context("Deploying {}", fetched.image.image)]
pub fn deploy(
    fetched: &Fetched,
    target: &BootTarget,
    images: &Images,
    opts: &CommonOptions,
) -> Result<InstallOutcome> {
    let sysroot = fetched.store.sysroot().to_owned();
    let tree = &*fetched.mount;
    let image = &fetched.image;
    let config = &fetched.config;
    let id = image
        .composefs_image
        .clone()
        .with_context(|| format!("Image {} has no composefs image", image.image))?;

    let stateroot = opts
        .stateroot
        .clone()
        .or_else(|| config.stateroot.clone())
        .unwrap_or_else(|| bootc_sysroot::DEFAULT_STATEROOT.to_owned());
    bootc_sysroot::ensure_valid_stateroot(&stateroot)?;

    let has_sd = tree.is_file(SYSTEMD_BOOT_EFI)?;
    let bootloaders = choose_bootloaders(
        opts.bootloader,
        config.bootloader.as_deref(),
        opts.generic_image,
        has_sd,
        target.esp.is_some(),
        target.disk.is_some(),
    )?;
    let kernel = tree.find_kernel()?;
    let root_spec = config
        .root_mount_spec
        .clone()
        .map(Some)
        .unwrap_or_else(|| target.root_spec.clone());
    let kargs = compose_kargs(
        root_spec.as_deref(),
        &id,
        &stateroot,
        &fetched.kargs_d,
        config.kargs.as_deref().unwrap_or_default(),
        &opts.kargs,
    );
    let imgref = ImageReference {
        image: images.target.name.clone(),
        transport: images.target.transport.as_str().to_owned(),
        signature: opts
            .enforce_container_sigpolicy
            .then_some(ImageSignature::ContainerPolicy),
    };
    let new = NewDeployment {
        imgref,
        stateroot: stateroot.clone(),
        kargs: kargs.clone(),
        kargs_sources: Default::default(),
        bootloader: bootloaders.first().copied().unwrap_or(Bootloader::None),
        boot_digest: bootc_sysroot::deployment::boot_digest(tree, &kernel)?,
        kernel: kernel.clone(),
    };
    let dep = bootc_sysroot::create_deployment(&fetched.store, tree, image, &new)?;
    bootc_sysroot::init_stateroot_var(&sysroot, &stateroot, tree)?;
    if let Some(keys) = &opts.root_ssh_authorized_keys {
        write_ssh_keys(&sysroot, &id, keys)?;
    }

    let title = entry_title(
        tree.os_release()?.pretty_name(),
        image.version.as_deref(),
        &image.manifest_digest,
    );
    let n = 1;
    let entries = vec![(
        entry_file_name(&stateroot, n),
        BlsEntry::for_deployment(&title, n, dep.boot_dir_name(), &kargs.join(" "), &stateroot),
    )];
    let boot_dir = sysroot.join("boot");
    for bl in &bootloaders {
        match bl {
            Bootloader::Grub => {
                let disk = target
                    .disk
                    .as_deref()
                    .expect("checked by choose_bootloaders");
                let mut k = tree.open_file(&kernel.vmlinuz)?;
                let mut i = tree.open_file(&kernel.initramfs)?;
                bootc_boot::entries::install_boot_files(
                    &boot_dir,
                    dep.boot_dir_name(),
                    &mut k,
                    &mut i,
                )?;
                grub_install_bios(disk, &boot_dir)?;
                write_grub_cfg(&boot_dir, &render_grub_cfg(&entries, &target.boot_fs))?;
            }
            Bootloader::Systemd => {
                let dev = target
                    .esp
                    .as_deref()
                    .expect("checked by choose_bootloaders");
                let esp = Esp::new(dev);
                let efi = tree.open_file(SYSTEMD_BOOT_EFI)?;
                esp.install_systemd_boot(&fd_path(&efi))?;
                let k = tree.open_file(&kernel.vmlinuz)?;
                let i = tree.open_file(&kernel.initramfs)?;
                esp.install_boot_files(dep.boot_dir_name(), &fd_path(&k), &fd_path(&i))?;
                esp.write_entries(&entries)?;
            }
            Bootloader::None => {}
        }
    }
    // The same entries in /boot of the root filesystem, whatever the
    // bootloader: `bootc status` and rollback read this one place.
    bootc_boot::entries::write_entries(&boot_dir, &entries)?;
    Ok(InstallOutcome {
        deployment: dep,
        bootloaders,
    })
}

/// A path that reads the open file `f` (for tools that take paths): our
/// fds are close-on-exec, so a child reads it through our `/proc/<pid>`.
fn fd_path(f: &std::fs::File) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), f.as_raw_fd()))
}

#[context("Adding root's SSH keys from {}", keys.display())]
fn write_ssh_keys(sysroot: &Path, id: &str, keys: &Path) -> Result<()> {
    use cap_std_ext::cap_std::{ambient_authority, fs::Dir};
    use cap_std_ext::dirext::CapStdExtDirExt;
    let text =
        std::fs::read_to_string(keys).with_context(|| format!("Reading {}", keys.display()))?;
    let etc = bootc_sysroot::deployment::deployment_dir(sysroot, id).join("etc");
    let dir = etc.join("tmpfiles.d");
    std::fs::create_dir_all(&dir).with_context(|| format!("Creating {}", dir.display()))?;
    let d = Dir::open_ambient_dir(&dir, ambient_authority())?;
    d.atomic_write("bootc-root-ssh.conf", ssh_keys_tmpfiles(&text))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    const SD: Bootloader = Bootloader::Systemd;
    const GRUB: Bootloader = Bootloader::Grub;
    const NO: Bootloader = Bootloader::None;

    #[test]
    fn bootloader_choice_table() {
        // (asked, configured, generic, has_sd, has_esp, has_disk) -> result
        type Case<'a> = (
            Option<Bootloader>,
            Option<&'a str>,
            bool,
            bool,
            bool,
            bool,
            Option<&'a [Bootloader]>,
        );
        let cases: &[Case] = &[
            (None, None, false, true, true, true, Some(&[SD])),
            (None, None, false, false, true, true, Some(&[GRUB])),
            (None, None, false, true, false, true, Some(&[GRUB])),
            (None, Some("grub"), false, true, true, true, Some(&[GRUB])),
            (Some(SD), Some("grub"), false, true, true, true, Some(&[SD])),
            (Some(SD), None, false, false, true, true, None),
            (Some(SD), None, false, true, false, true, None),
            (Some(GRUB), None, false, true, true, false, None),
            (Some(NO), None, true, true, true, true, Some(&[])),
            (None, Some("none"), false, true, true, true, Some(&[])),
            (None, None, true, true, true, true, Some(&[SD, GRUB])),
            (None, None, true, false, true, true, Some(&[GRUB])),
            (None, Some("lilo"), false, true, true, true, None),
            (None, None, false, false, false, false, None),
        ];
        for (asked, conf, generic, sd, esp, disk, expect) in cases {
            let got = choose_bootloaders(*asked, *conf, *generic, *sd, *esp, *disk).ok();
            assert_eq!(
                got.as_deref(),
                *expect,
                "{asked:?} {conf:?} generic={generic} sd={sd} esp={esp} disk={disk}"
            );
        }
        let e = choose_bootloaders(Some(SD), None, false, false, true, true).unwrap_err();
        assert!(
            e.to_string()
                .contains("usr/lib/systemd/boot/efi/systemd-bootx64.efi"),
            "{e}"
        );
    }

    #[test]
    fn kargs_order() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            compose_kargs(
                Some("UUID=u"),
                "ab",
                "default",
                &s(&["console=ttyS0,115200"]),
                &s(&["quiet"]),
                &s(&["x=1"])
            ),
            s(&[
                "root=UUID=u",
                "rw",
                "composefs=ab",
                "bootc.stateroot=default",
                "console=ttyS0,115200",
                "quiet",
                "x=1"
            ])
        );
        assert_eq!(
            compose_kargs(Some(""), "ab", "os", &[], &[], &[]),
            s(&["rw", "composefs=ab", "bootc.stateroot=os"])
        );
    }

    #[test]
    fn titles() {
        assert_eq!(
            entry_title("Debian", Some("1.0"), "sha256:abc"),
            "Debian (1.0)"
        );
        assert_eq!(
            entry_title("Debian", None, "sha256:0123456789abcdef"),
            "Debian (0123456789ab)"
        );
    }

    #[test]
    fn ssh_tmpfiles_snapshot() {
        assert_eq!(
            ssh_keys_tmpfiles("ssh-ed25519 AAAA a@b\n"),
            "# Written by bootc install --root-ssh-authorized-keys\n\
             d /root/.ssh 0700 root root -\n\
             f~ /root/.ssh/authorized_keys 0600 root root - c3NoLWVkMjU1MTkgQUFBQSBhQGIK\n"
        );
    }
}
