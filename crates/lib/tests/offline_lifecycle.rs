//! Offline lifecycle on a loop disk: install v1 (GRUB), edit /etc, upgrade
//! to v2 with `--sysroot`, check entries, grub.cfg, kargs and the /etc
//! merge, then roll back. Then the sharing of boot files: v1 and v2 have the
//! same kernel and share `boot/bootc/<bootDigest>/`; v3 (another initramfs)
//! and v4 (v3's kernel) are deployed in turn, and the shared directory is
//! kept while a deployment uses it and removed with the last one.
//!
//! Needs root, podman and the example image `localhost/bootc-example:latest`
//! (built by examples/build.sh); skipped otherwise.

use std::path::Path;
use std::process::Command;

const REPO: &str = "localhost/bootc-lifecycle-test";

mod common;
mod offline_disk;
use common::sh;
use offline_disk::{InstalledDisk, bootc};

/// The boot directories in `boot/bootc` (temporary ones left out).
fn boot_dirs(mnt: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(mnt.join("boot/bootc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

/// Deployment id -> boot directory name, from the deployment records.
fn boot_dir_names(mnt: &Path) -> std::collections::BTreeMap<String, String> {
    bootc_sysroot::deployment::list_deployments(mnt)
        .unwrap()
        .iter()
        .map(|d| (d.id().to_owned(), d.boot_dir_name().to_owned()))
        .collect()
}

fn entries(mnt: &Path) -> Vec<String> {
    let mut v: Vec<_> = std::fs::read_dir(mnt.join("boot/loader/entries"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    v.sort();
    v
}

/// The `options` of the entry with the highest version.
fn default_options(mnt: &Path) -> String {
    let mut best = (0u64, String::new());
    for e in entries(mnt) {
        let v: u64 = e
            .lines()
            .find_map(|l| l.strip_prefix("version "))
            .unwrap()
            .parse()
            .unwrap();
        let o = e.lines().find_map(|l| l.strip_prefix("options ")).unwrap();
        if v > best.0 {
            best = (v, o.to_owned());
        }
    }
    best.1
}

#[test]
fn offline_upgrade_and_rollback() {
    if !offline_disk::can_run() {
        return;
    }
    let td = tempfile::tempdir().unwrap();
    sh(Command::new("podman").args([
        "tag",
        "localhost/bootc-example:latest",
        &format!("{REPO}:v1"),
    ]));
    offline_disk::build(
        td.path(),
        &format!("{REPO}:v2"),
        &format!(
            "FROM {REPO}:v1\nRUN echo v2 > /usr/share/lifecycle-v2 && echo new > /etc/lifecycle.conf && mkdir -p /usr/lib/bootc/kargs.d && printf 'kargs = [\"lifecycle=1\"]\\n' > /usr/lib/bootc/kargs.d/50-lifecycle.toml\nLABEL org.opencontainers.image.version=v2\n"
        ),
    );
    sh(Command::new("podman").args(["tag", &format!("{REPO}:v1"), &format!("{REPO}:cur")]));

    let src = format!("containers-storage:{REPO}:cur");
    let disk = InstalledDisk::install(td.path(), &src, &["--karg", "localarg=1"]);
    let mnt = disk.mnt.clone();
    let sysroot = disk.sysroot();

    let v1 = std::fs::read_dir(mnt.join("state/deploy"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| !n.starts_with('.'))
        .unwrap();
    let etc = mnt.join("state/deploy").join(&v1).join("etc");
    std::fs::write(etc.join("hostname"), "edited\n").unwrap();
    std::fs::write(etc.join("local-added"), "x\n").unwrap();
    assert_eq!(entries(&mnt).len(), 1);

    // Nothing new yet.
    bootc(&["upgrade", "--quiet", "--sysroot", sysroot]);
    assert_eq!(entries(&mnt).len(), 1);

    sh(Command::new("podman").args(["tag", &format!("{REPO}:v2"), &format!("{REPO}:cur")]));
    bootc(&["upgrade", "--quiet", "--sysroot", sysroot]);
    assert!(!mnt.join("state/staged.json").exists());
    assert_eq!(entries(&mnt).len(), 2);
    let opts = default_options(&mnt);
    assert!(
        opts.contains("lifecycle=1") && opts.contains("localarg=1"),
        "{opts}"
    );
    assert!(!opts.contains(&v1), "{opts}");
    let v2 = opts
        .split_whitespace()
        .find_map(|a| a.strip_prefix("composefs="))
        .unwrap()
        .to_owned();
    let etc2 = mnt.join("state/deploy").join(&v2).join("etc");
    assert_eq!(
        std::fs::read_to_string(etc2.join("hostname")).unwrap(),
        "edited\n"
    );
    assert!(etc2.join("local-added").exists());
    assert_eq!(
        std::fs::read_to_string(etc2.join("lifecycle.conf")).unwrap(),
        "new\n"
    );
    let grub = std::fs::read_to_string(mnt.join("boot/grub/grub.cfg")).unwrap();
    let first = grub.find("menuentry").unwrap();
    assert!(grub[first..].find(&v2) < grub[first..].find(&v1), "{grub}");
    // One kernel, one boot directory: named by the boot digest of both
    // records, which both entries point at.
    let names = boot_dir_names(&mnt);
    let shared = names[&v1].clone();
    assert_eq!(names[&v2], shared);
    assert_eq!(shared.len(), 64, "{names:?}");
    assert_ne!(shared, v1);
    assert_eq!(boot_dirs(&mnt), std::slice::from_ref(&shared));
    for e in entries(&mnt) {
        assert!(
            e.contains(&format!("linux /bootc/{shared}/vmlinuz\n")),
            "{e}"
        );
    }
    assert!(grub.contains(&format!("/bootc/{shared}/vmlinuz")), "{grub}");
    assert!(
        mnt.join("boot/bootc")
            .join(&shared)
            .join("vmlinuz")
            .exists()
    );

    bootc(&["rollback", "--sysroot", sysroot]);
    assert!(default_options(&mnt).contains(&v1));
    assert!(!default_options(&mnt).contains("lifecycle=1"));

    // v3: another initramfs. v1 (default) stays as rollback, v2 is pruned;
    // v1 still uses the shared directory.
    offline_disk::build(
        td.path(),
        &format!("{REPO}:v3"),
        &format!(
            "FROM {REPO}:v1\nRUN for f in /usr/lib/modules/*/initramfs.img; do echo v3 >> $f; done\n"
        ),
    );
    sh(Command::new("podman").args(["tag", &format!("{REPO}:v3"), &format!("{REPO}:cur")]));
    bootc(&["upgrade", "--quiet", "--sysroot", sysroot]);
    let names = boot_dir_names(&mnt);
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(!names.contains_key(&v2), "v2 not pruned: {names:?}");
    assert_eq!(names[&v1], shared);
    let v3 = names.keys().find(|id| **id != v1).unwrap().clone();
    let own = names[&v3].clone();
    assert_ne!(own, shared);
    let mut expect = vec![shared.clone(), own.clone()];
    expect.sort();
    assert_eq!(boot_dirs(&mnt), expect);

    // v4: v3's kernel. v1 is pruned, and with it the last use of the
    // shared directory; v3 and v4 share theirs.
    offline_disk::build(
        td.path(),
        &format!("{REPO}:v4"),
        &format!("FROM {REPO}:v3\nRUN echo v4 > /usr/share/lifecycle-v4\n"),
    );
    sh(Command::new("podman").args(["tag", &format!("{REPO}:v4"), &format!("{REPO}:cur")]));
    bootc(&["upgrade", "--quiet", "--sysroot", sysroot]);
    let names = boot_dir_names(&mnt);
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(!names.contains_key(&v1), "v1 not pruned: {names:?}");
    assert!(names.values().all(|n| *n == own), "{names:?}");
    assert_eq!(boot_dirs(&mnt), [own]);
    drop(disk);
}
