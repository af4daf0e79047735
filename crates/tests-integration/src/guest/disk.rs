//! Disks on the host side: sparse disk files, loop devices and mounts that
//! clean up on drop, and what is on an installed disk while its guest is
//! powered off.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bootc_tests_integration::vm::partitions;
use bootc_tests_integration::{Bootc, run};
use serde_json::Value;

use super::ROOT_X86_64;

/// A sparse disk image file in its own directory under /var/tmp.
pub(crate) struct DiskFile {
    /// The directory (removed on drop): room for other files of the test.
    pub(crate) dir: tempfile::TempDir,
    /// `DIR/disk.raw`.
    pub(crate) path: PathBuf,
}

impl DiskFile {
    /// A new sparse file of `size` bytes.
    pub(crate) fn new(size: u64) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("bootc-disk.")
            .tempdir_in("/var/tmp")?;
        let path = dir.path().join("disk.raw");
        let f = fs::File::create(&path).with_context(|| format!("Creating {}", path.display()))?;
        f.set_len(size)
            .with_context(|| format!("Sizing {} to {size} bytes", path.display()))?;
        Ok(Self { dir, path })
    }
}

/// A loop device, detached on drop.
pub(crate) struct LoopDev {
    /// `/dev/loopN`.
    pub(crate) dev: String,
}

impl LoopDev {
    /// Attach `file` (read-only if `ro`), optionally a byte range of it, with
    /// partitions scanned by `partx -a` when `partitions` (the host kernel
    /// does not scan them itself).
    pub(crate) fn attach(
        file: &Path,
        ro: bool,
        range: Option<(u64, u64)>,
        partitions: bool,
    ) -> Result<Self> {
        let mut c = Command::new("losetup");
        c.args(["-f", "--show"]);
        if ro {
            c.arg("-r");
        }
        if let Some((off, size)) = range {
            c.arg(format!("--offset={off}"))
                .arg(format!("--sizelimit={size}"));
        }
        c.arg(file);
        let out = run(&mut c)?;
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        ensure!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
        let l = Self { dev };
        if partitions {
            run(Command::new("partx").args(["-a", &l.dev]))?;
        }
        Ok(l)
    }

    /// The device node of partition `n`, waiting briefly for devtmpfs.
    pub(crate) fn partition(&self, n: u32) -> Result<String> {
        let p = format!("{}p{n}", self.dev);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !Path::new(&p).exists() {
            ensure!(
                Instant::now() < deadline,
                "{p} did not appear after partx -a"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(p)
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        // Partitions first (harmless if there are none), then the device.
        let _ = Command::new("partx")
            .args(["-d", &self.dev])
            .stderr(Stdio::null())
            .status();
        if let Err(e) = run(Command::new("losetup").args(["-d", &self.dev])) {
            eprintln!("warning: detaching {}: {e:#}", self.dev);
        }
    }
}

/// A mount on a new directory under /var/tmp, unmounted on drop.
pub(crate) struct Mounted {
    dir: tempfile::TempDir,
}

impl Mounted {
    /// `mount -o OPTS SOURCE DIR` (`opts` `loop` mounts an image file).
    pub(crate) fn new(source: impl AsRef<Path>, opts: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("bootc-mnt.")
            .tempdir_in("/var/tmp")?;
        run(Command::new("mount")
            .args(["-o", opts])
            .arg(source.as_ref())
            .arg(dir.path()))?;
        Ok(Self { dir })
    }

    /// The mount point.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("umount").arg(self.dir.path())) {
            eprintln!("warning: unmounting {}: {e:#}", self.dir.path().display());
        }
    }
}

/// Run `f` on the root filesystem of the installed `disk`, mounted
/// (read-only unless `writable`) from the root partition of a loop device
/// over the whole disk (bootc finds the ESP through the disk of the
/// mounted root, so a loop device over the partition alone will not do);
/// unmounted and detached afterwards, whatever `f` returned.
pub(crate) fn with_root_fs<T>(
    disk: &Path,
    writable: bool,
    f: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    let parts = partitions(disk)?;
    let root = parts
        .iter()
        .find(|p| p.type_guid == ROOT_X86_64)
        .with_context(|| {
            format!(
                "no x86-64 root partition ({ROOT_X86_64}) on {}: {parts:?}",
                disk.display()
            )
        })?;
    let lo = LoopDev::attach(disk, !writable, None, true)?;
    let m = Mounted::new(
        lo.partition(root.number)?,
        if writable { "rw" } else { "ro" },
    )?;
    let r = f(m.path());
    drop(m);
    drop(lo);
    r.with_context(|| format!("On partition {} of {}", root.number, disk.display()))
}

/// What install recorded about the deployment.
#[derive(Debug)]
pub(crate) struct Deployment {
    /// `state/deploy/<ID>`.
    pub(crate) id: String,
    /// `image.image` of deployment.json.
    pub(crate) image: String,
    /// `image.transport`.
    pub(crate) transport: String,
    /// `manifestDigest`.
    pub(crate) manifest_digest: String,
    /// Whole record, for messages.
    pub(crate) json: Value,
}

/// Mount the root partition of `disk` read-only and read its one deployment.
pub(crate) fn read_deployment(disk: &Path) -> Result<Deployment> {
    with_root_fs(disk, false, read_deployment_in)
        .context("Reading the installed deployment (install layout)")
}

/// The names in `state/deploy` of a mounted root filesystem, sorted.
pub(crate) fn deployment_ids(sysroot: &Path) -> Result<Vec<String>> {
    let deploy = sysroot.join("state/deploy");
    let mut ids = Vec::new();
    for e in fs::read_dir(&deploy).with_context(|| format!("Reading {}", deploy.display()))? {
        let e = e?;
        if e.file_type()?.is_dir() {
            ids.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    ids.sort();
    Ok(ids)
}

/// The one deployment of a mounted root filesystem.
pub(crate) fn read_deployment_in(sysroot: &Path) -> Result<Deployment> {
    let mut ids = deployment_ids(sysroot)?;
    ensure!(
        ids.len() == 1,
        "expected one deployment in state/deploy, found {ids:?}"
    );
    let id = ids.remove(0);
    let path = sysroot
        .join("state/deploy")
        .join(&id)
        .join("deployment.json");
    let json: Value = serde_json::from_str(
        &fs::read_to_string(&path).with_context(|| format!("Reading {}", path.display()))?,
    )
    .with_context(|| format!("Parsing {}", path.display()))?;
    let s = |v: &Value| {
        v.as_str()
            .map(str::to_owned)
            .with_context(|| format!("{}: {json}", path.display()))
    };
    Ok(Deployment {
        image: s(&json["image"]["image"])?,
        transport: s(&json["image"]["transport"])?,
        manifest_digest: s(&json["manifestDigest"])?,
        id,
        json: json.clone(),
    })
}

/// `bootc --sysroot ROOT status --format json` of a mounted, powered-off
/// root filesystem.
pub(crate) fn offline_status(bootc: &Bootc, root: &Path) -> Result<Value> {
    let out = bootc.ok(root, &["status", "--format", "json"])?;
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("Parsing bootc --sysroot {} status", root.display()))
}
