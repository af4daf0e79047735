//! qemu-storage-daemon exports through FUSE: a disk whose every write and
//! flush is logged (`blklogwrites`), and a copy-on-write view of a disk
//! image (a qcow2 overlay) for checks that must not change it, and a disk
//! with a bad sector (`blkdebug`: writes there fail with EIO).
//!
//! The export is a regular file (the mount point) that `losetup` can attach:
//! the loop driver sends a flush of the loop device as an fsync of that
//! file, which the export passes to the block layer as a flush, which
//! `blklogwrites` logs. The daemon is our child, stopped by its pid.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// A running qemu-storage-daemon with one FUSE export.
#[derive(Debug)]
pub struct Export {
    child: Option<Child>,
    /// The exported disk (a regular file while the daemon runs).
    pub path: PathBuf,
    stderr: PathBuf,
}

impl Export {
    /// Export `disk` (a raw image) at `path`, logging every request to `log`
    /// (created or truncated). Host flushes are skipped (`cache.no-flush`):
    /// the log, not the host's disk, is what is replayed.
    pub fn log_writes(disk: &Path, log: &Path, path: &Path) -> Result<Self> {
        std::fs::File::create(log).with_context(|| format!("Creating {}", log.display()))?;
        Self::start(
            &[
                format!("driver=file,node-name=disk,filename={},cache.no-flush=on", disk.display()),
                format!("driver=file,node-name=log,filename={},cache.no-flush=on", log.display()),
                "driver=blklogwrites,node-name=top,file=disk,log=log,log-sector-size=512".into(),
            ],
            path,
        )
    }

    /// Export a writable view of `base` at `path`, whose writes go to a
    /// new qcow2 overlay `overlay`: `base` is never changed.
    pub fn overlay(base: &Path, overlay: &Path, path: &Path) -> Result<Self> {
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(base)
            .arg(overlay)
            .output()
            .context("Running qemu-img (apt-get install qemu-utils)")?;
        ensure!(
            out.status.success(),
            "qemu-img create {}: {}",
            overlay.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Self::start(
            &[
                format!("driver=file,node-name=ovl,filename={},cache.no-flush=on", overlay.display()),
                "driver=qcow2,node-name=top,file=ovl".into(),
            ],
            path,
        )
    }

    /// Export `disk` (raw) at `path` through qemu's `blkdebug` driver, every
    /// write touching one of the 512-byte `sectors` failing with EIO (bad
    /// spots of a disk); the other requests pass through.
    pub fn bad_sectors(disk: &Path, sectors: &[u64], path: &Path) -> Result<Self> {
        let rules: Vec<String> = sectors
            .iter()
            .map(|s| format!(r#"{{"event":"pwritev","iotype":"write","sector":{s},"errno":5}}"#))
            .collect();
        Self::start(
            &[format!(
                r#"{{"driver":"blkdebug","node-name":"top","image":{{"driver":"file","filename":"{}"}},"inject-error":[{}]}}"#,
                disk.display(),
                rules.join(",")
            )],
            path,
        )
    }

    fn start(blockdevs: &[String], path: &Path) -> Result<Self> {
        if !path.exists() {
            std::fs::File::create(path).with_context(|| format!("Creating {}", path.display()))?;
        }
        let stderr = path.with_extension("qsd.log");
        let mut cmd = Command::new("qemu-storage-daemon");
        for b in blockdevs {
            cmd.arg("--blockdev").arg(b);
        }
        cmd.arg("--export").arg(format!(
            "type=fuse,id=exp,node-name=top,mountpoint={},writable=on",
            path.display()
        ));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr)?)
            .spawn()
            .context("Starting qemu-storage-daemon (apt-get install qemu-system-x86)")?;
        let mut e = Self { child: Some(child), path: path.to_owned(), stderr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(path)? {
            if let Some(st) = e.child.as_mut().unwrap().try_wait()? {
                e.child = None;
                bail!(
                    "qemu-storage-daemon exited ({st}) before exporting {}: {}",
                    path.display(),
                    std::fs::read_to_string(&e.stderr).unwrap_or_default().trim()
                );
            }
            ensure!(Instant::now() < deadline, "{} was not exported in 20 s", path.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(e)
    }

    /// Stop the daemon (SIGTERM to its pid; it flushes and unmounts the export).
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(st) = child.try_wait()? {
            // It died under its users: requests to the export failed with EIO.
            if is_mounted(&self.path)? {
                let _ = Command::new("umount").arg("-l").arg(&self.path).status();
            }
            bail!(
                "qemu-storage-daemon exporting {} exited by itself ({st}): {}",
                self.path.display(),
                std::fs::read_to_string(&self.stderr).unwrap_or_default().trim()
            );
        }
        let pid = rustix::process::Pid::from_child(&child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                child.wait()?;
                bail!("qemu-storage-daemon (pid {}) ignored SIGTERM for 20 s", child.id());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if is_mounted(&self.path)? {
            // A daemon that died without unmounting leaves a dead FUSE mount.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
        Ok(())
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            eprintln!("warning: {e:#}");
        }
    }
}

/// Whether `path` is a mount point (of this mount namespace).
pub fn is_mounted(path: &Path) -> Result<bool> {
    let want = std::fs::canonicalize(path.parent().unwrap_or(Path::new("/")))?
        .join(path.file_name().unwrap_or_default());
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(&bootc_utils::mountinfo::unescape(m)) == want))
}

