//! Set-up of the offline lifecycle tests on an installed loop disk: bootc
//! run in-process, images built with podman, and [`InstalledDisk`], an image
//! installed with `bootc install to-disk` (GRUB) whose root partition is
//! mounted; undone on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::sh;

/// Run bootc (the library's command line) with `args`.
pub fn run(args: &[&str]) -> anyhow::Result<()> {
    let mut v = vec!["bootc".to_owned()];
    v.extend(args.iter().map(|s| s.to_string()));
    bootc_lib::cli::run_from_args(v.into_iter().map(Into::into))
}

/// [`run`], panicking with the error chain when it fails.
pub fn bootc(args: &[&str]) {
    run(args).unwrap_or_else(|e| panic!("bootc {args:?}: {e:#}"));
}

/// Whether these tests can run here (root, and the example image in
/// podman's storage); says why not.
pub fn can_run() -> bool {
    let image = Command::new("podman")
        .args(["image", "exists", "localhost/bootc-example:latest"])
        .status()
        .is_ok_and(|s| s.success());
    let ok = rustix::process::getuid().is_root() && image;
    if !ok {
        eprintln!("skipped: needs root and localhost/bootc-example:latest");
    }
    ok
}

/// `podman build` of `containerfile` as `tag`, with `dir` as context.
pub fn build(dir: &Path, tag: &str, containerfile: &str) {
    let name = tag.rsplit(':').next().unwrap_or(tag);
    let cf = dir.join(format!("Containerfile.{name}"));
    std::fs::write(&cf, containerfile).unwrap();
    sh(Command::new("podman")
        .args(["build", "--isolation=chroot", "-q", "-t", tag, "-f"])
        .arg(&cf)
        .arg(dir));
}

/// `src` installed to `DIR/disk.img` (6 GiB, GRUB), its root partition
/// mounted at `DIR/mnt` from a loop device; unmounted and detached on drop.
pub struct InstalledDisk {
    loopdev: String,
    /// Where the root partition is mounted: the `--sysroot` of the tests.
    pub mnt: PathBuf,
}

impl InstalledDisk {
    /// `bootc install to-disk --via-loopback --bootloader grub
    /// --source-imgref SRC EXTRA... DIR/disk.img`, then attach and mount.
    pub fn install(dir: &Path, src: &str, extra: &[&str]) -> Self {
        let disk = dir.join("disk.img");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(6 << 30)
            .unwrap();
        let disk_s = disk.to_str().unwrap();
        let mut args = vec![
            "install",
            "to-disk",
            "--via-loopback",
            "--bootloader",
            "grub",
            "--source-imgref",
            src,
        ];
        args.extend_from_slice(extra);
        args.push(disk_s);
        bootc(&args);
        let loopdev = sh(Command::new("losetup").args(["-f", "--show", disk_s]))
            .trim()
            .to_owned();
        let mnt = dir.join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let d = Self { loopdev, mnt };
        sh(Command::new("partx").args(["-a", &d.loopdev]));
        sh(Command::new("mount")
            .arg(format!("{}p3", d.loopdev))
            .arg(&d.mnt));
        d
    }

    /// [`InstalledDisk::mnt`] as a string, for `--sysroot`.
    pub fn sysroot(&self) -> &str {
        self.mnt.to_str().unwrap()
    }
}

impl Drop for InstalledDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = Command::new("partx").args(["-d", &self.loopdev]).status();
        let _ = Command::new("losetup").args(["-d", &self.loopdev]).status();
    }
}
