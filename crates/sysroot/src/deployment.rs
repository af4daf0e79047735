//! Deployment records (`state/deploy/<ID>/deployment.json`) and creating
//! a deployment's state directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bootc_spec::ImageReference;
use bootc_store::{Store, StoredImage, VerityMode};
use cap_std_ext::cap_std::{ambient_authority, fs::Dir};
use cap_std_ext::dirext::CapStdExtDirExt;
use fn_error_context::context;
use serde::{Deserialize, Serialize};

use crate::image::{ImageTree, KernelInfo};

/// Kernel arguments by the name of the source that owns them.
pub type KargsSources = std::collections::BTreeMap<String, Vec<String>>;

/// The version of the deployment.json format this code writes and reads.
///
/// Readers refuse a higher version: a newer bootc may have added meaning
/// that an older one would silently drop when rewriting the record.
pub const FORMAT_VERSION: u32 = 1;

/// The record's file name inside a deployment directory.
pub const DEPLOYMENT_JSON: &str = "deployment.json";

/// Errors callers branch on.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    /// The record was written by a newer bootc.
    #[error(
        "deployment {id} has format version {found}, newer than the supported {FORMAT_VERSION}; upgrade bootc"
    )]
    UnsupportedFormat {
        /// The deployment id.
        id: String,
        /// The version in the file.
        found: u64,
    },
    /// A deployment of this image already exists.
    #[error("deployment {id} already exists in {}", path.display())]
    Exists {
        /// The deployment id.
        id: String,
        /// Its directory.
        path: PathBuf,
    },
}

/// Which bootloader boots a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bootloader {
    /// systemd-boot on the ESP (UEFI).
    Systemd,
    /// GRUB in `/boot` of the root filesystem (BIOS).
    Grub,
    /// No bootloader was installed by bootc.
    None,
}

impl std::fmt::Display for Bootloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Bootloader::Systemd => "systemd",
            Bootloader::Grub => "grub",
            Bootloader::None => "none",
        })
    }
}

/// Whether a deployment's objects are verified by fs-verity on read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verity {
    /// The store requires fs-verity; the kernel checks every object.
    Verified,
    /// The store was written without fs-verity.
    Insecure,
}

impl From<VerityMode> for Verity {
    fn from(m: VerityMode) -> Self {
        match m {
            VerityMode::Verified => Verity::Verified,
            VerityMode::Insecure => Verity::Insecure,
        }
    }
}

impl std::fmt::Display for Verity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verity::Verified => "verified",
            Verity::Insecure => "insecure",
        })
    }
}

/// One deployment: an image made bootable, with its own /etc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    /// Always [`FORMAT_VERSION`] when written by this code.
    pub format_version: u32,
    /// The image reference the host tracks for updates (the target imgref).
    pub image: ImageReference,
    /// The manifest digest of the deployed image.
    pub manifest_digest: String,
    /// The config digest of the deployed image.
    pub config_digest: String,
    /// `org.opencontainers.image.version`, when labelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The image's creation time from its config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// The image architecture (OCI naming: `amd64`, `arm64`).
    pub architecture: String,
    /// The fs-verity id of the composefs EROFS image; also the deployment id
    /// and the name of its directory.
    pub composefs_image: String,
    /// The stateroot whose /var the deployment shares.
    pub stateroot: String,
    /// The version of the kernel in the image.
    pub kernel_version: String,
    /// The hex sha256 of the kernel followed by the initramfs, which names
    /// the boot directory `bootc/<bootDigest>/` that deployments with the
    /// same kernel share. Absent in records written before boot files were
    /// shared: those use `bootc/<ID>/` (see [`Deployment::boot_dir_name`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_digest: Option<String>,
    /// The complete kernel command line of the deployment's boot entry, as
    /// arguments (`root=`, `rw`, `composefs=<ID>`, `bootc.stateroot=`, then
    /// the kargs of kargs.d, the install config and `--karg`).
    pub kargs: Vec<String>,
    /// The arguments among `kargs` that named sources own
    /// (`bootc loader-entries set-options-for-source`), by source name; they
    /// are the last arguments of `kargs`, in source-name order (see
    /// [`crate::lifecycle::set_source_kargs`]). Absent when empty, so records
    /// without sources read the same by older bootc.
    #[serde(default, skip_serializing_if = "KargsSources::is_empty")]
    pub kargs_sources: KargsSources,
    /// The bootloader that boots it.
    pub bootloader: Bootloader,
    /// Whether the store held it with fs-verity.
    pub verity: Verity,
    /// When the deployment was created (RFC 3339, UTC).
    pub created: String,
}

impl Deployment {
    /// The deployment id.
    pub fn id(&self) -> &str {
        &self.composefs_image
    }

    /// The name of the directory under `bootc/` on the boot filesystem that
    /// holds this deployment's kernel and initramfs: its boot digest, or
    /// its id for records that have none.
    pub fn boot_dir_name(&self) -> &str {
        self.boot_digest.as_deref().unwrap_or(self.id())
    }

    /// The kernel command line as one string.
    pub fn cmdline(&self) -> String {
        self.kargs.join(" ")
    }

    /// Parse a record; `id` names it in errors.
    pub fn parse(id: &str, json: &str) -> Result<Self> {
        let v: serde_json::Value =
            serde_json::from_str(json).with_context(|| format!("Parsing deployment {id}"))?;
        let found = v
            .get("formatVersion")
            .and_then(serde_json::Value::as_u64)
            .with_context(|| format!("Deployment {id} has no formatVersion"))?;
        if found > u64::from(FORMAT_VERSION) {
            return Err(DeploymentError::UnsupportedFormat {
                id: id.to_owned(),
                found,
            }
            .into());
        }
        let dep: Self =
            serde_json::from_value(v).with_context(|| format!("Parsing deployment {id}"))?;
        if let Some(d) = &dep.boot_digest {
            anyhow::ensure!(
                d.len() == 64 && d.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                "Deployment {id} has an invalid bootDigest {d:?}"
            );
        }
        Ok(dep)
    }

    /// The record as written to disk.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("plain struct serialises");
        s.push('\n');
        s
    }
}

/// The directory of all deployments in `sysroot`.
pub fn deploy_dir(sysroot: &Path) -> PathBuf {
    sysroot.join(crate::DEPLOY_DIR)
}

/// The directory of deployment `id` in `sysroot`.
pub fn deployment_dir(sysroot: &Path, id: &str) -> PathBuf {
    deploy_dir(sysroot).join(id)
}

/// What a new deployment is made of, besides its image tree.
#[derive(Debug, Clone)]
pub struct NewDeployment {
    /// The reference the host will track (the target imgref).
    pub imgref: ImageReference,
    /// The stateroot.
    pub stateroot: String,
    /// The complete kernel command line, as arguments.
    pub kargs: Vec<String>,
    /// The arguments of `kargs` owned by named sources.
    pub kargs_sources: KargsSources,
    /// The bootloader.
    pub bootloader: Bootloader,
    /// The image's kernel.
    pub kernel: KernelInfo,
    /// The boot digest of that kernel ([`boot_digest`]).
    pub boot_digest: String,
}

/// The boot digest of `kernel` in `tree`: the hex sha256 of the vmlinuz
/// followed by the initramfs (the status schema's `bootDigest`). Equal
/// digests mean identical boot files, which deployments then share.
#[context("Hashing the kernel and initramfs of image {}", tree.name())]
pub fn boot_digest(tree: &ImageTree, kernel: &KernelInfo) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in [&kernel.vmlinuz, &kernel.initramfs] {
        let mut f = tree.open_file(p)?;
        std::io::copy(&mut f, &mut h).with_context(|| format!("Reading /{p}"))?;
    }
    Ok(hex::encode(h.finalize()))
}

/// The boot directories (see [`Deployment::boot_dir_name`]) of `gone` that
/// no deployment of `remaining` uses: those that can be deleted once the
/// deployments `gone` are. Sorted, without duplicates.
pub fn unreferenced_boot_dirs(gone: &[&Deployment], remaining: &[&Deployment]) -> Vec<String> {
    let used: std::collections::BTreeSet<&str> =
        remaining.iter().map(|d| d.boot_dir_name()).collect();
    let out: std::collections::BTreeSet<String> = gone
        .iter()
        .filter(|d| d.bootloader != Bootloader::None)
        .map(|d| d.boot_dir_name())
        .filter(|n| !used.contains(n))
        .map(str::to_owned)
        .collect();
    out.into_iter().collect()
}

/// Create the state directory of a deployment of `image` (whose tree is
/// mounted as `tree`) in the store's sysroot: a copy of the image's /etc and
/// the record. Returns the record.
///
/// Crash safety: everything is built in `state/deploy/.tmp-<ID>`, synced
/// with one `syncfs`, then renamed to `state/deploy/<ID>` and the parent
/// directory fsynced. A crash leaves either no deployment or a complete one
/// (plus a stale `.tmp-` directory that the next attempt removes).
#[context("Creating deployment of {}", image.image)]
pub fn create_deployment(
    store: &Store,
    tree: &ImageTree,
    image: &StoredImage,
    new: &NewDeployment,
) -> Result<Deployment> {
    let id = image
        .composefs_image
        .clone()
        .with_context(|| format!("Image {} has no composefs image in the store", image.image))?;
    let dep = Deployment {
        format_version: FORMAT_VERSION,
        image: new.imgref.clone(),
        manifest_digest: image.manifest_digest.clone(),
        config_digest: image.config_digest.clone(),
        version: image.version.clone(),
        timestamp: image.created.clone(),
        architecture: image.architecture.clone(),
        composefs_image: id,
        stateroot: new.stateroot.clone(),
        kernel_version: new.kernel.version.clone(),
        boot_digest: Some(new.boot_digest.clone()),
        kargs: new.kargs.clone(),
        kargs_sources: new.kargs_sources.clone(),
        bootloader: new.bootloader,
        verity: store.verity_mode().into(),
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    // Keep the image alive for as long as the deployment exists, even when
    // its name is moved to a newer image by an upgrade.
    let digest: bootc_store::OciDigest = std::str::FromStr::from_str(&image.manifest_digest)
        .with_context(|| format!("Parsing digest {}", image.manifest_digest))?;
    store.tag(&digest, &crate::lifecycle::deployment_tag(dep.id()))?;
    write_deployment(store.sysroot(), tree, &dep)?;
    Ok(dep)
}

/// Write `dep`'s directory (see [`create_deployment`]) with /etc from `tree`.
#[context("Writing deployment {}", dep.id())]
pub fn write_deployment(sysroot: &Path, tree: &ImageTree, dep: &Deployment) -> Result<()> {
    let id = dep.id();
    anyhow::ensure!(
        crate::cmdline::is_valid_id(id),
        "invalid deployment id {id:?}"
    );
    crate::ensure_valid_stateroot(&dep.stateroot)?;
    let parent = deploy_dir(sysroot);
    std::fs::create_dir_all(&parent).with_context(|| format!("Creating {}", parent.display()))?;
    let final_dir = parent.join(id);
    if final_dir.symlink_metadata().is_ok() {
        return Err(DeploymentError::Exists {
            id: id.to_owned(),
            path: final_dir,
        }
        .into());
    }
    let tmp = parent.join(format!(".tmp-{id}"));
    if tmp.symlink_metadata().is_ok() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("Removing stale {}", tmp.display()))?;
    }
    std::fs::create_dir(&tmp).with_context(|| format!("Creating {}", tmp.display()))?;
    if let Err(e) = fill_deployment_dir(&tmp, tree, dep) {
        // A failed attempt (disk full, I/O error) leaves nothing behind.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &final_dir)
        .with_context(|| format!("Renaming {} to {}", tmp.display(), final_dir.display()))?;
    crate::fsync_dir(&parent)?;
    Ok(())
}

/// /etc and the record of `dep` in the new directory `tmp`, synced.
fn fill_deployment_dir(tmp: &Path, tree: &ImageTree, dep: &Deployment) -> Result<()> {
    let etc = tmp.join("etc");
    match tree.open_dir("etc")? {
        Some(fd) => crate::copy::copy_dir_fd(&fd, &etc)
            .with_context(|| format!("Copying /etc of image {}", tree.name()))?,
        None => std::fs::create_dir(&etc).with_context(|| format!("Creating {}", etc.display()))?,
    }
    let d = Dir::open_ambient_dir(tmp, ambient_authority())
        .with_context(|| format!("Opening {}", tmp.display()))?;
    d.atomic_write(DEPLOYMENT_JSON, dep.to_json())
        .with_context(|| format!("Writing {}/{DEPLOYMENT_JSON}", tmp.display()))?;
    let fd = crate::copy::open_dir(rustix::fs::CWD, tmp)?;
    rustix::fs::syncfs(&fd).context("Syncing the sysroot")?;
    Ok(())
}

/// The deployment `id` of `sysroot`, or `None` when there is none.
#[context("Loading deployment {id}")]
pub fn load_deployment(sysroot: &Path, id: &str) -> Result<Option<Deployment>> {
    if !crate::cmdline::is_valid_id(id) {
        return Ok(None);
    }
    let p = deployment_dir(sysroot, id).join(DEPLOYMENT_JSON);
    let s = match std::fs::read_to_string(&p) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("Reading {}", p.display())),
    };
    let dep = Deployment::parse(id, &s)?;
    anyhow::ensure!(
        dep.id() == id,
        "{} names deployment {}, not {id}",
        p.display(),
        dep.id()
    );
    Ok(Some(dep))
}

/// Every deployment of `sysroot`, oldest first (by creation time, then id).
#[context("Listing deployments in {}", sysroot.display())]
pub fn list_deployments(sysroot: &Path) -> Result<Vec<Deployment>> {
    let dir = deploy_dir(sysroot);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("Reading {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.with_context(|| format!("Reading {}", dir.display()))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !crate::cmdline::is_valid_id(&name) {
            continue;
        }
        if let Some(d) = load_deployment(sysroot, &name)? {
            out.push(d);
        }
    }
    out.sort_by(|a, b| (&a.created, a.id()).cmp(&(&b.created, b.id())));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const DIGEST: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    fn sample() -> Deployment {
        Deployment {
            format_version: FORMAT_VERSION,
            image: ImageReference::new("containers-storage", "localhost/bootc-example:latest"),
            manifest_digest: "sha256:aa".into(),
            config_digest: "sha256:bb".into(),
            version: Some("1.0".into()),
            timestamp: None,
            architecture: "amd64".into(),
            composefs_image: ID.into(),
            stateroot: "default".into(),
            kernel_version: "6.12.0-1-amd64".into(),
            boot_digest: Some(DIGEST.into()),
            kargs: vec!["root=UUID=u".into(), "rw".into(), format!("composefs={ID}")],
            kargs_sources: KargsSources::new(),
            bootloader: Bootloader::Grub,
            verity: Verity::Insecure,
            created: "2025-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn record_snapshot() {
        let expect = format!(
            r#"{{
  "formatVersion": 1,
  "image": {{
    "image": "localhost/bootc-example:latest",
    "transport": "containers-storage"
  }},
  "manifestDigest": "sha256:aa",
  "configDigest": "sha256:bb",
  "version": "1.0",
  "architecture": "amd64",
  "composefsImage": "{ID}",
  "stateroot": "default",
  "kernelVersion": "6.12.0-1-amd64",
  "bootDigest": "{DIGEST}",
  "kargs": [
    "root=UUID=u",
    "rw",
    "composefs={ID}"
  ],
  "bootloader": "grub",
  "verity": "insecure",
  "created": "2025-01-01T00:00:00Z"
}}
"#
        );
        assert_eq!(sample().to_json(), expect);
        assert_eq!(Deployment::parse(ID, &expect).unwrap(), sample());
        assert_eq!(sample().boot_dir_name(), DIGEST);
    }

    #[test]
    fn boot_digest_is_optional_and_checked() {
        // A record written before boot files were shared keeps `bootc/<ID>`.
        let old = sample()
            .to_json()
            .replace(&format!("  \"bootDigest\": \"{DIGEST}\",\n"), "");
        let dep = Deployment::parse(ID, &old).unwrap();
        assert_eq!(dep.boot_digest, None);
        assert_eq!(dep.boot_dir_name(), ID);
        assert_eq!(dep.to_json(), old);
        for bad in ["../../etc", "ABCDEF", "", &"a".repeat(63)] {
            let json = sample().to_json().replace(DIGEST, bad);
            assert!(Deployment::parse(ID, &json).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unreferenced_boot_dirs_table() {
        let dep = |id: char, digest: Option<char>, bl: Bootloader| Deployment {
            composefs_image: id.to_string().repeat(64),
            boot_digest: digest.map(|c| c.to_string().repeat(64)),
            bootloader: bl,
            ..sample()
        };
        let g = Bootloader::Grub;
        let (a, b, c) = (
            dep('a', Some('1'), g),
            dep('b', Some('1'), g),
            dep('c', Some('2'), g),
        );
        let old = dep('d', None, g);
        let none = dep('e', Some('3'), Bootloader::None);
        let n = |c: char| c.to_string().repeat(64);
        // (gone, remaining, removable)
        let cases: &[(&[&Deployment], &[&Deployment], Vec<String>)] = &[
            // Shared with a remaining deployment: kept.
            (&[&a], &[&b, &c], vec![]),
            // The last user goes: removed, once even if two users go.
            (&[&a, &b], &[&c], vec![n('1')]),
            (&[&a, &c], &[&b], vec![n('2')]),
            // A record without a digest owns `bootc/<ID>`.
            (&[&old], &[&a], vec![n('d')]),
            // No bootloader: no boot files.
            (&[&none], &[], vec![]),
            (&[], &[&a], vec![]),
        ];
        for (gone, remaining, expect) in cases {
            assert_eq!(
                &unreferenced_boot_dirs(gone, remaining),
                expect,
                "gone {:?}",
                gone.iter().map(|d| d.id()).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn refuses_newer_format() {
        let json = sample()
            .to_json()
            .replace("\"formatVersion\": 1", "\"formatVersion\": 2");
        let e = Deployment::parse(ID, &json).unwrap_err();
        assert!(matches!(
            e.downcast_ref::<DeploymentError>(),
            Some(DeploymentError::UnsupportedFormat { found: 2, .. })
        ));
        let json = sample().to_json().replace("\"formatVersion\": 1,", "");
        assert!(Deployment::parse(ID, &json).is_err());
    }

    #[test]
    fn writes_lists_and_loads() {
        let td = tempfile::tempdir().unwrap();
        let img = td.path().join("img");
        std::fs::create_dir_all(img.join("etc/sub")).unwrap();
        std::fs::write(img.join("etc/hostname"), "x\n").unwrap();
        let tree = ImageTree::open(&img, "example").unwrap();
        let sysroot = td.path().join("sysroot");
        let dep = sample();
        write_deployment(&sysroot, &tree, &dep).unwrap();
        assert_eq!(
            std::fs::read_to_string(sysroot.join("state/deploy").join(ID).join("etc/hostname"))
                .unwrap(),
            "x\n"
        );
        assert!(
            sysroot
                .join("state/deploy")
                .join(ID)
                .join("etc/sub")
                .is_dir()
        );
        assert_eq!(load_deployment(&sysroot, ID).unwrap(), Some(dep.clone()));
        assert_eq!(list_deployments(&sysroot).unwrap(), vec![dep.clone()]);
        let e = write_deployment(&sysroot, &tree, &dep).unwrap_err();
        assert!(matches!(
            e.downcast_ref::<DeploymentError>(),
            Some(DeploymentError::Exists { .. })
        ));
        assert_eq!(
            load_deployment(&sysroot, &ID.replace('0', "1")).unwrap(),
            None
        );
    }
}
