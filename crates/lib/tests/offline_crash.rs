//! Crash at every point, offline: a fixture disk (systemd-boot on an ESP,
//! installed from the example image) goes through `switch` to v2,
//! `rollback` and `image gc` with `--sysroot`, once to list the crash points
//! it passes (`BOOTC_CRASH_LOG`), then once per point N from a fresh copy
//! of the fixture, stopped there with SIGKILL (`BOOTC_CRASH_AT=N`). After
//! each crash:
//!
//! - no mount is left behind (`/proc/self/mountinfo` is as before, and the
//!   root filesystem unmounts);
//! - offline `status` works; the default deployment (by `/boot/loader/entries`,
//!   what status reads) is the one before the step or the one after it, and
//!   is whole (record, directory, composefs image in the store); a staged
//!   deployment record parses or is absent;
//! - `image fsck` is clean;
//! - the boot loader's view of the ESP (mtools, no mount) resolves a
//!   default entry whose kernel and initramfs exist, for a whole deployment;
//! - rerunning the interrupted step (unless it took effect) and the rest
//!   reaches the state of the uncrashed run.
//!
//! The point list is whatever the code has: new crash points are covered
//! without a change here. Needs root, podman, mtools and the example image
//! `localhost/bootc-example:latest`; skipped otherwise.
//! `BOOTC_CRASH_TEST_STRIDE=K` crashes at every K-th point only (a quicker run).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bootc_boot::esp::Esp;

const REPO: &str = "localhost/bootc-crash-test";
const CHILD_ENV: &str = "BOOTC_TEST_CRASH_CHILD_SYSROOT";
const LOG_ENV: &str = "BOOTC_TEST_CRASH_CHILD_LOG";

/// The operation sequence, each step a command line after `bootc --sysroot MNT`.
fn steps() -> Vec<Vec<String>> {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        v(&["switch", "--transport", "containers-storage", &format!("{REPO}:v2")]),
        v(&["rollback"]),
        v(&["image", "gc"]),
    ]
}

mod common;
use common::sh;

fn bootc(args: &[String]) -> anyhow::Result<()> {
    let mut v = vec!["bootc".to_owned()];
    v.extend(args.iter().cloned());
    bootc_lib::cli::run_from_args(v.into_iter().map(Into::into))
}

fn run_step(mnt: &Path, step: &[String]) -> anyhow::Result<()> {
    let mut args = vec!["--sysroot".to_owned(), mnt.to_str().unwrap().to_owned()];
    args.extend(step.iter().cloned());
    bootc(&args)
}

/// Not a test by itself: the crashing child runs the steps, marking each
/// step's start in the crash log.
#[test]
fn crash_child() {
    let Some(mnt) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let log = std::env::var_os(LOG_ENV).map(PathBuf::from);
    for (k, step) in steps().iter().enumerate() {
        if let Some(log) = &log {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).create(true).open(log).unwrap();
            writeln!(f, "- step:{k}").unwrap();
        }
        run_step(Path::new(&mnt), step).unwrap_or_else(|e| panic!("{step:?}: {e:#}"));
    }
}

/// A disk image attached to a loop device with its root filesystem
/// mounted; unmounted and detached on drop.
struct Disk {
    loopdev: String,
    mnt: PathBuf,
    esp: PathBuf,
    mounted: bool,
}

impl Disk {
    fn attach(img: &Path, mnt: &Path) -> Self {
        let loopdev = sh(Command::new("losetup").args(["-f", "--show", "-P"]).arg(img))
            .trim()
            .to_owned();
        // Partition nodes without udev (losetup -P does not always add them).
        let _ = Command::new("partx").args(["-a", &loopdev]).output();
        let mut esp = None;
        let mut root = None;
        for p in sh(Command::new("lsblk").args(["-rno", "PATH", &loopdev])).lines().skip(1) {
            let out = Command::new("blkid").args(["-p", "-o", "value", "-s", "TYPE", p]).output().unwrap();
            match String::from_utf8_lossy(&out.stdout).trim() {
                "vfat" => esp = Some(PathBuf::from(p)),
                "ext4" | "xfs" | "btrfs" => root = Some(p.to_owned()),
                _ => {}
            }
        }
        let mut d = Disk {
            loopdev,
            mnt: mnt.to_owned(),
            esp: esp.expect("an ESP"),
            mounted: false,
        };
        std::fs::create_dir_all(mnt).unwrap();
        sh(Command::new("mount").arg(root.expect("a root partition")).arg(mnt));
        d.mounted = true;
        d
    }

    /// Unmount, failing when the filesystem is busy (a leaked mount).
    fn unmount(&mut self) {
        if self.mounted {
            sh(Command::new("umount").arg(&self.mnt));
            self.mounted = false;
        }
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        let _ = Command::new("losetup").args(["-d", &self.loopdev]).status();
    }
}

/// The mount points bootc could leave behind: under this test's `work`
/// directory (the sysroot and anything below it) and the image mounts of
/// older versions (`/tmp/bootc-*`). Other mounts on the machine (other tests,
/// podman) come and go and are not ours to count.
fn mount_points(work: &Path) -> BTreeSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|p| p.starts_with("/tmp/bootc-") || Path::new(p).starts_with(work))
        .collect()
}

/// The deployment that boots by default, as status reads it.
fn default_deployment(mnt: &Path) -> Option<String> {
    let entries = bootc_boot::entries::read_entries(&mnt.join("boot")).unwrap();
    bootc_boot::entries::boot_order(entries)
        .first()
        .and_then(|(_, e)| e.deployment_id())
}

/// What the uncrashed and the rerun states are compared on: deployments,
/// the default, the ESP entries, the staged record and the image names.
fn summary(d: &Disk) -> String {
    let mut deps: Vec<String> = bootc_sysroot::deployment::list_deployments(&d.mnt)
        .unwrap()
        .iter()
        .map(|x| format!("{} {}", x.id(), x.manifest_digest))
        .collect();
    deps.sort();
    let esp: Vec<String> = Esp::new(&d.esp)
        .read_entries()
        .unwrap()
        .into_iter()
        .map(|(n, e)| format!("{n} {}", e.deployment_id().unwrap_or_default()))
        .collect();
    let staged = bootc_sysroot::lifecycle::read_staged(&d.mnt).unwrap().map(|s| s.id);
    format!(
        "deployments {deps:?}\ndefault {:?}\nesp {esp:?}\nstaged {staged:?}",
        default_deployment(&d.mnt)
    )
}

/// A deployment that is whole: its record, its directory and its
/// composefs image in the store.
fn assert_whole(mnt: &Path, id: &str, what: &str) {
    let deps = bootc_sysroot::deployment::list_deployments(mnt).unwrap();
    assert!(deps.iter().any(|d| d.id() == id), "{what}: no record of {id}");
    assert!(mnt.join("state/deploy").join(id).is_dir(), "{what}: no directory for {id}");
    let img = bootc_store::Store::repo_path(mnt).join("images").join(id);
    assert!(img.exists(), "{what}: composefs image {} missing", img.display());
}

/// Run the crashing child on `d`; its exit status.
fn run_child(d: &Disk, env: &[(&str, &Path)], at: Option<usize>) -> std::process::ExitStatus {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &d.mnt)
        .env_remove("BOOTC_CRASH_AT")
        .env_remove("BOOTC_CRASH_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(n) = at {
        cmd.env("BOOTC_CRASH_AT", n.to_string());
    }
    let child = cmd.spawn().unwrap();
    let pgid = rustix::process::Pid::from_child(&child);
    let out = child.wait_with_output().unwrap();
    // Whatever the child started dies with it, as with `systemctl kill`.
    let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
    out.status
}

/// The crash log as (point name, step index) pairs.
fn parse_points(log: &str) -> Vec<(String, usize)> {
    let mut step = 0;
    let mut out = Vec::new();
    for l in log.lines() {
        if let Some(k) = l.strip_prefix("- step:") {
            step = k.parse().unwrap();
        } else if let Some((_, name)) = l.split_once(' ') {
            out.push((name.to_owned(), step));
        }
    }
    out
}

fn copy_image(from: &Path, to: &Path) {
    sh(Command::new("cp").arg("--sparse=always").arg(from).arg(to));
}

#[test]
fn crash_at_every_point_offline() {
    if !rustix::process::getuid().is_root()
        || !Command::new("podman")
            .args(["image", "exists", "localhost/bootc-example:latest"])
            .status()
            .is_ok_and(|s| s.success())
        || Command::new("mdir").arg("--version").output().is_err()
    {
        eprintln!("skipped: needs root, mtools and localhost/bootc-example:latest");
        return;
    }
    let started = std::time::Instant::now();
    let td = tempfile::Builder::new().prefix("bootc-crash-").tempdir_in("/var/tmp").unwrap();
    let work = td.path();
    sh(Command::new("podman").args(["tag", "localhost/bootc-example:latest", &format!("{REPO}:v1")]));
    let cf = work.join("Containerfile");
    std::fs::write(
        &cf,
        format!("FROM {REPO}:v1\nRUN echo v2 > /usr/share/crash-test-v2\nLABEL org.opencontainers.image.version=crash-v2\n"),
    )
    .unwrap();
    sh(Command::new("podman")
        .args(["build", "--isolation=chroot", "-q", "-t", &format!("{REPO}:v2"), "-f"])
        .arg(&cf)
        .arg(work));

    // The fixture: v1 installed with systemd-boot.
    let base = work.join("base.img");
    std::fs::File::create(&base).unwrap().set_len(4 << 30).unwrap();
    bootc(&[
        "install",
        "to-disk",
        "--via-loopback",
        "--bootloader",
        "systemd",
        "--source-imgref",
        &format!("containers-storage:{REPO}:v1"),
        base.to_str().unwrap(),
    ]
    .map(String::from))
    .unwrap_or_else(|e| panic!("install: {e:#}"));
    let case = work.join("case.img");
    let mnt = work.join("mnt");

    // The uncrashed run, step by step: the state after each step.
    copy_image(&base, &case);
    let mut d = Disk::attach(&case, &mnt);
    let mut states = vec![summary(&d)];
    let mut defaults = vec![default_deployment(&mnt)];
    for step in steps() {
        run_step(&mnt, &step).unwrap_or_else(|e| panic!("{step:?}: {e:#}"));
        states.push(summary(&d));
        defaults.push(default_deployment(&mnt));
    }
    d.unmount();
    drop(d);
    assert_ne!(defaults[0], defaults[1], "switch changed nothing: {states:?}");

    // The points, from the same run in a child.
    copy_image(&base, &case);
    let d = Disk::attach(&case, &mnt);
    let log = work.join("crash.log");
    let st = run_child(&d, &[("BOOTC_CRASH_LOG", &log), (LOG_ENV, &log)], None);
    assert!(st.success(), "uncrashed child failed: {st}");
    assert_eq!(&summary(&d), states.last().unwrap(), "child and in-process runs differ");
    drop(d);
    let points = parse_points(&std::fs::read_to_string(&log).unwrap());
    assert!(points.iter().any(|(n, _)| n == "image.mounted"), "{points:?}");
    assert!(points.iter().any(|(n, _)| n == "esp.old-removed"), "{points:?}");
    eprintln!("crash points: {points:?}");
    let stride: usize = std::env::var("BOOTC_CRASH_TEST_STRIDE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);

    let mut crashed = 0;
    for n in (1..=points.len()).step_by(stride.max(1)) {
        let (name, k) = &points[n - 1];
        let what = format!("crash at {n} ({name}, step {:?})", steps()[*k]);
        copy_image(&base, &case);
        let mut d = Disk::attach(&case, &mnt);
        let before = mount_points(&work);
        let st = run_child(&d, &[], Some(n));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&st),
            Some(9),
            "{what}: not killed: {st}"
        );
        crashed += 1;
        assert_eq!(mount_points(&work), before, "{what}: mounts left behind");

        // The OS view.
        bootc(&["--sysroot", mnt.to_str().unwrap(), "status", "--format", "json"].map(String::from))
            .unwrap_or_else(|e| panic!("{what}: status: {e:#}"));
        let def = default_deployment(&mnt);
        assert!(
            def == defaults[*k] || def == defaults[k + 1],
            "{what}: default {def:?}, expected {:?} or {:?}",
            defaults[*k],
            defaults[k + 1]
        );
        assert_whole(&mnt, def.as_deref().unwrap(), &what);
        if let Some(s) = bootc_sysroot::lifecycle::read_staged(&mnt)
            .unwrap_or_else(|e| panic!("{what}: staged record: {e:#}"))
        {
            assert_whole(&mnt, &s.id, &format!("{what} (staged)"));
        }
        bootc(&["--sysroot", mnt.to_str().unwrap(), "image", "fsck"].map(String::from))
            .unwrap_or_else(|e| panic!("{what}: fsck: {e:#}"));
        // The boot loader view.
        let (entry, e) = Esp::new(&d.esp)
            .resolve_default()
            .unwrap_or_else(|e| panic!("{what}: ESP: {e:#}"));
        let esp_def = e.deployment_id().unwrap_or_else(|| panic!("{what}: {entry} names no deployment"));
        assert_whole(&mnt, &esp_def, &format!("{what} (ESP default {entry})"));

        // A rerun: the interrupted step again unless it took effect, then the rest.
        let from = if def == defaults[k + 1] && defaults[*k] != defaults[k + 1] {
            k + 1
        } else {
            *k
        };
        for step in &steps()[from..] {
            run_step(&mnt, step).unwrap_or_else(|e| panic!("{what}: rerun {step:?}: {e:#}"));
        }
        assert_eq!(&summary(&d), states.last().unwrap(), "{what}: rerun");
        d.unmount();
    }
    eprintln!(
        "crash test: {} points, {crashed} crashed, {:?}",
        points.len(),
        started.elapsed()
    );
}
