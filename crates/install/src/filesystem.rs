//! Filesystems: mkfs, UUIDs, temporary mounts, what is mounted where, and
//! the end-of-install finalisation.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use fn_error_context::context;
use serde::Deserialize;

use crate::config::Filesystem;
use crate::run::{run, run_output};

/// The label of the root filesystem `to-disk` creates.
pub const ROOT_LABEL: &str = "root";

/// Create a root filesystem of type `fs` on `dev`. ext4 gets fs-verity
/// support (`-O verity`), so a kernel with fs-verity can verify the store.
#[context("Creating a {fs} filesystem on {}", dev.display())]
pub fn mkfs_root(dev: &Path, fs: Filesystem) -> Result<()> {
    let mut cmd = Command::new(format!("mkfs.{}", fs.as_str()));
    match fs {
        Filesystem::Ext4 => cmd.args(["-F", "-q", "-O", "verity", "-L", ROOT_LABEL]),
        Filesystem::Xfs => cmd.args(["-f", "-q", "-L", ROOT_LABEL]),
        Filesystem::Btrfs => cmd.args(["-f", "-q", "-L", ROOT_LABEL]),
    };
    run(cmd.arg(dev))
}

/// The filesystem UUID of `dev`, probed directly (no udev database needed).
#[context("Reading the filesystem UUID of {}", dev.display())]
pub fn fs_uuid(dev: &Path) -> Result<String> {
    let out = run_output(
        Command::new("blkid")
            .args(["-p", "-s", "UUID", "-o", "value"])
            .arg(dev),
    )?;
    let uuid = out.trim().to_owned();
    anyhow::ensure!(!uuid.is_empty(), "{} has no filesystem UUID", dev.display());
    Ok(uuid)
}

/// A filesystem mounted on a temporary directory, unmounted when dropped.
#[derive(Debug)]
pub struct TempMount {
    dir: Option<tempfile::TempDir>,
}

impl TempMount {
    /// Mount `dev` (type `fstype`) on a new temporary directory.
    #[context("Mounting {}", dev.display())]
    pub fn mount(dev: &Path, fstype: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("bootc-install-root-")
            .tempdir()
            .context("Creating a mount point")?;
        rustix::mount::mount(
            dev,
            dir.path(),
            fstype,
            rustix::mount::MountFlags::empty(),
            None,
        )
        .with_context(|| {
            format!(
                "Mounting {} ({fstype}) on {}",
                dev.display(),
                dir.path().display()
            )
        })?;
        Ok(Self { dir: Some(dir) })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("mounted until dropped").path()
    }

    /// Unmount now, reporting errors.
    pub fn unmount(mut self) -> Result<()> {
        let dir = self.dir.take().expect("mounted until dropped");
        rustix::mount::unmount(dir.path(), rustix::mount::UnmountFlags::empty())
            .with_context(|| format!("Unmounting {}", dir.path().display()))?;
        dir.close().context("Removing the mount point")?;
        Ok(())
    }
}

impl Drop for TempMount {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take()
            && let Err(e) = rustix::mount::unmount(dir.path(), rustix::mount::UnmountFlags::DETACH)
        {
            tracing::warn!("unmounting {}: {e}", dir.path().display());
        }
    }
}

/// A mount as findmnt reports it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct MountInfo {
    /// Mount point.
    pub target: String,
    /// The mounted device (or other source).
    pub source: String,
    /// Filesystem type.
    pub fstype: String,
}

#[derive(Debug, Deserialize)]
struct Findmnt {
    filesystems: Vec<MountInfo>,
}

/// Parse `findmnt --json -o TARGET,SOURCE,FSTYPE` output (first filesystem).
pub fn parse_findmnt(json: &str) -> Result<Option<MountInfo>> {
    let f: Findmnt = serde_json::from_str(json).context("Parsing findmnt output")?;
    Ok(f.filesystems.into_iter().next())
}

/// The filesystem mounted exactly at `path`, if `path` is a mount point.
#[context("Inspecting the mount at {}", path.display())]
pub fn mount_at(path: &Path) -> Result<Option<MountInfo>> {
    let out = Command::new("findmnt")
        .args(["--json", "-o", "TARGET,SOURCE,FSTYPE", "--mountpoint"])
        .arg(path)
        .output()
        .context("Running findmnt")?;
    // findmnt exits 1 when nothing is mounted there.
    if !out.status.success() {
        return Ok(None);
    }
    parse_findmnt(&String::from_utf8_lossy(&out.stdout))
}

/// The block device behind `source` (strips a btrfs `[/subvol]` suffix).
pub fn source_device(source: &str) -> PathBuf {
    PathBuf::from(source.split('[').next().unwrap_or(source))
}

/// Finish a root filesystem like upstream: discard unused blocks and
/// remount it read-only so everything is on disk.
#[context("Finalising the filesystem at {}", root.display())]
pub fn finalize(root: &Path) -> Result<()> {
    if let Err(e) = run(Command::new("fstrim").arg(root)) {
        // Not every device supports discard; it is only an optimisation.
        tracing::debug!("fstrim {}: {e:#}", root.display());
    }
    rustix::fs::sync();
    rustix::mount::mount_remount(root, rustix::mount::MountFlags::RDONLY, "")
        .with_context(|| format!("Remounting {} read-only", root.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findmnt_parse() {
        let json =
            r#"{"filesystems": [{"target":"/mnt", "source":"/dev/loop0p3", "fstype":"ext4"}]}"#;
        assert_eq!(
            parse_findmnt(json).unwrap(),
            Some(MountInfo {
                target: "/mnt".into(),
                source: "/dev/loop0p3".into(),
                fstype: "ext4".into()
            })
        );
        assert_eq!(source_device("/dev/vda2[/root]"), Path::new("/dev/vda2"));
    }
}
