//! Power loss at every flush (issue 10, part 2).
//!
//! A disk installed with systemd-boot (ESP + root) is put behind
//! qemu-storage-daemon's `blklogwrites` driver (every write and flush the
//! kernel sends is logged, dm-log-writes format) exported through FUSE and
//! attached to a loop device; offline `switch` to v2 (stage + finalize),
//! `rollback`, `switch` to v3 (stage + finalize + prune of v2) and
//! `image gc` run on it. Then, with our replayer (`bootc-logreplay`), the
//! disk is rebuilt as it was at each recorded flush, and after some of
//! them with a random subset of the writes that followed (what a drive's
//! cache may have kept). Every state is checked twice, each time on a
//! copy-on-write view (qcow2 overlay) of the rebuilt disk:
//!
//! - the boot loader view, without journal replay: systemd-boot's default
//!   entry on the ESP (read with mtools) names a kernel and initramfs whose
//!   sha256 is the entry's boot digest, `fsck.vfat -n` is clean (at flush
//!   states); `e2fsck -fn` / `xfs_repair -n` of the un-replayed root is
//!   recorded (the firmware never reads it; the kernel replays the journal);
//! - the OS view: the root mounts (journal replay), offline `status` works,
//!   the default deployment by `/boot/loader/entries` and by the ESP is the
//!   one before or after the step in progress and whole (record, directory,
//!   composefs image), `image fsck` is clean, and after unmounting
//!   `e2fsck -fn` / `xfs_repair -n` is clean.
//!
//! `powercut_ext4_sampled` (the README test command) checks a sample of
//! flush states; the `powercut_all_flushes_*` tests (scripts/reliability.sh)
//! check every one on ext4 and xfs (systemd-boot) and ext4 (GRUB).
//! `BOOTC_POWERCUT_SEED` picks the subsets (default 1),
//! `BOOTC_POWERCUT_STRIDE=K` checks every K-th flush only.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use bootc_boot::esp::Esp;
use bootc_logreplay::{Log, SplitMix, qsd::Export};
use bootc_tests_integration::run;
use sha2::Digest;

use crate::{Ctx, TestFn};

pub const TESTS: &[(&str, TestFn)] = &[("powercut_ext4_sampled", powercut_ext4_sampled)];
/// Long: run by scripts/reliability.sh (`--ignored`).
pub const LONG: &[(&str, TestFn)] = &[
    ("powercut_all_flushes_ext4", powercut_all_flushes_ext4),
    ("powercut_all_flushes_xfs", powercut_all_flushes_xfs),
    ("powercut_all_flushes_ext4_grub", powercut_all_flushes_ext4_grub),
];

const REPO: &str = "localhost/bootc-powercut";
const ESP_GUID: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const ROOT_GUID: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

fn powercut_ext4_sampled(ctx: &Ctx) -> Result<()> {
    sweep(ctx, "ext4", "systemd", Some(10), 4)
}

fn powercut_all_flushes_ext4(ctx: &Ctx) -> Result<()> {
    sweep(ctx, "ext4", "systemd", None, 3)
}

fn powercut_all_flushes_xfs(ctx: &Ctx) -> Result<()> {
    sweep(ctx, "xfs", "systemd", None, 3)
}

/// GRUB reads /boot on the root filesystem without replaying its journal.
fn powercut_all_flushes_ext4_grub(ctx: &Ctx) -> Result<()> {
    sweep(ctx, "ext4", "grub", None, 3)
}

/// The recorded steps, each a command line after `bootc --sysroot MNT`.
fn steps() -> Vec<Vec<String>> {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        v(&["switch", "--transport", "containers-storage", &format!("{REPO}:v2")]),
        v(&["rollback"]),
        v(&["switch", "--transport", "containers-storage", &format!("{REPO}:v3")]),
        v(&["image", "gc"]),
    ]
}

/// The three images: v1 is the example image, v2 and v3 add a file each.
fn build_images(work: &Path) -> Result<()> {
    run(Command::new("podman").args(["tag", "localhost/bootc-example:latest", &format!("{REPO}:v1")]))?;
    for v in ["v2", "v3"] {
        let cf = work.join(format!("Containerfile.{v}"));
        fs::write(
            &cf,
            format!("FROM {REPO}:v1\nRUN echo {v} > /usr/share/powercut-{v}\nLABEL org.opencontainers.image.version=powercut-{v}\n"),
        )?;
        run(Command::new("podman")
            .args(["build", "--isolation=chroot", "-q", "-t", &format!("{REPO}:{v}"), "-f"])
            .arg(&cf)
            .arg(work))?;
    }
    Ok(())
}

/// A loop device with partitions, detached on drop.
pub(crate) struct Lo {
    pub(crate) dev: String,
}

impl Lo {
    pub(crate) fn attach(file: &Path, read_only: bool) -> Result<Self> {
        let mut c = Command::new("losetup");
        c.args(["-f", "--show", "-P"]);
        if read_only {
            c.arg("-r");
        }
        let out = run(c.arg(file))?;
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        ensure!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
        let l = Self { dev };
        let _ = Command::new("partx").args(["-a", &l.dev]).stderr(Stdio::null()).status();
        Ok(l)
    }

    pub(crate) fn part(&self, n: u32) -> Result<PathBuf> {
        let p = PathBuf::from(format!("{}p{n}", self.dev));
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while !p.exists() {
            ensure!(Instant::now() < deadline, "{} did not appear", p.display());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(p)
    }
}

impl Drop for Lo {
    fn drop(&mut self) {
        let _ = Command::new("partx").args(["-d", &self.dev]).stderr(Stdio::null()).status();
        if let Err(e) = run(Command::new("losetup").args(["-d", &self.dev])) {
            eprintln!("warning: {e:#}");
        }
    }
}

/// A mounted filesystem, unmounted on drop.
pub(crate) struct Mnt(pub(crate) PathBuf);

impl Mnt {
    pub(crate) fn mount(dev: &Path, at: &Path) -> Result<Self> {
        fs::create_dir_all(at)?;
        run(Command::new("mount").arg(dev).arg(at))?;
        Ok(Self(at.to_owned()))
    }
    pub(crate) fn unmount(self) -> Result<()> {
        let p = self.0.clone();
        std::mem::forget(self);
        run(Command::new("umount").arg(&p))?;
        Ok(())
    }
}

impl Drop for Mnt {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Partition numbers of the ESP and the root.
pub(crate) fn layout(disk: &Path) -> Result<(u32, u32)> {
    let parts = bootc_tests_integration::vm::partitions(disk)?;
    let find = |g: &str| parts.iter().find(|p| p.type_guid == g).map(|p| p.number);
    Ok((find(ESP_GUID).context("no ESP")?, find(ROOT_GUID).context("no root partition")?))
}

/// GRUB's view of an ext4 root, read with debugfs (no journal replay):
/// the first menu entry of `/boot/grub/grub.cfg` (the default) names a
/// kernel and initramfs whose sha256 is the boot digest they are stored
/// under; returns the entry's deployment (`composefs=`).
pub(crate) fn grub_default(root: &Path, work: &Path) -> Result<String> {
    let debugfs = |req: &str| -> Result<Vec<u8>> {
        let out = Command::new("debugfs").arg("-R").arg(req).arg(root).output()?;
        ensure!(out.status.success(), "debugfs {req}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(out.stdout)
    };
    let cfg = String::from_utf8(debugfs("cat /boot/grub/grub.cfg")?).context("grub.cfg is not text")?;
    let entry = cfg.split("\nmenuentry ").nth(1).context("grub.cfg has no menu entry")?;
    let unq = |w: &str| w.trim_matches('\'').to_owned();
    let line = |k: &str| {
        entry
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(k).map(|r| r.split_whitespace().map(unq).collect::<Vec<_>>()))
            .with_context(|| format!("first menu entry has no {k}line: {entry}"))
    };
    let linux = line("linux ")?;
    let initrd = line("initrd ")?;
    let digest = linux[0]
        .split("/bootc/")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .with_context(|| format!("kernel {} not under /bootc/<digest>/", linux[0]))?
        .to_owned();
    let mut h = sha2::Sha256::new();
    for f in std::iter::once(&linux[0]).chain(initrd.iter()) {
        let out = work.join("grub-file");
        let _ = fs::remove_file(&out);
        debugfs(&format!("dump {f} {}", out.display()))?;
        let data = fs::read(&out).with_context(|| format!("{f} does not exist for GRUB"))?;
        ensure!(!data.is_empty(), "{f} is empty for GRUB");
        h.update(data);
    }
    let got = hex::encode(h.finalize());
    ensure!(got == digest, "kernel + initramfs hash to {got} for GRUB, stored as {digest}");
    linux[1..]
        .iter()
        .find_map(|a| a.strip_prefix("composefs=").map(str::to_owned))
        .context("first menu entry has no composefs=")
}

/// The deployment `/boot/loader/entries` boots by default (what status reads).
pub(crate) fn default_deployment(mnt: &Path) -> Result<Option<String>> {
    let entries = bootc_boot::entries::read_entries(&mnt.join("boot"))?;
    Ok(bootc_boot::entries::boot_order(entries).first().and_then(|(_, e)| e.deployment_id()))
}

/// Record, directory and composefs image of deployment `id`.
pub(crate) fn assert_whole(mnt: &Path, id: &str) -> Result<()> {
    let dir = mnt.join("state/deploy").join(id);
    ensure!(dir.join("deployment.json").is_file(), "no record {}", dir.display());
    serde_json::from_slice::<serde_json::Value>(&fs::read(dir.join("deployment.json"))?)
        .with_context(|| format!("{}/deployment.json does not parse", dir.display()))?;
    let img = mnt.join("composefs/images").join(id);
    ensure!(img.exists(), "composefs image {} missing", img.display());
    Ok(())
}

/// The boot loader's view of the ESP: the default entry's deployment, its
/// kernel and initramfs checked against the boot digest they are stored under.
pub(crate) fn esp_default(esp: &Path) -> Result<String> {
    let esp = Esp::new(esp);
    let (name, e) = esp.resolve_default()?;
    let linux = e.linux.clone().context("no linux line")?;
    let digest = linux
        .strip_prefix("/bootc/")
        .and_then(|r| r.split('/').next())
        .with_context(|| format!("{name}: linux {linux} is not under /bootc/<digest>/"))?
        .to_owned();
    let mut h = sha2::Sha256::new();
    for f in std::iter::once(&linux).chain(e.initrd.iter()) {
        h.update(esp.read(f)?.with_context(|| format!("{name}: {f} missing"))?);
    }
    let got = hex::encode(h.finalize());
    ensure!(got == digest, "{name}: kernel + initramfs hash to {got}, stored as {digest}");
    e.deployment_id().with_context(|| format!("{name} names no deployment"))
}

/// `e2fsck -fn` / `xfs_repair -n` of `dev`: whether it found the filesystem clean.
fn fsck_clean(fs: &str, dev: &Path) -> Result<(bool, String)> {
    let out = match fs {
        "ext4" => Command::new("e2fsck").arg("-fn").arg(dev).output()?,
        "xfs" => Command::new("xfs_repair").arg("-n").arg(dev).output()?,
        _ => bail!("no fsck for {fs}"),
    };
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// Figures of one sweep.
#[derive(Default, Debug)]
struct Figures {
    flush_states: usize,
    subset_states: usize,
    unreplayed_root_clean: usize,
    unreplayed_root_dirty: usize,
}

/// Where a state is: the step in progress (`k` of `steps()`, the index into
/// `defaults` before it).
fn step_of(bounds: &[usize], entry: usize) -> usize {
    bounds.iter().take_while(|&&b| b <= entry).count().min(bounds.len() - 1)
}

fn sweep(ctx: &Ctx, fs: &str, bootloader: &str, sample: Option<usize>, subsets_every: usize) -> Result<()> {
    let started = Instant::now();
    if Command::new("qemu-storage-daemon").arg("--version").output().is_err() {
        bail!("qemu-storage-daemon missing (scripts/deps.sh installs qemu-system-x86)");
    }
    let td = tempfile::Builder::new().prefix("bootc-powercut.").tempdir_in("/var/tmp")?;
    let work = td.path();
    build_images(work)?;
    let base = work.join("base.img");
    fs::File::create(&base)?.set_len(4 << 30)?;
    crate::guest::install_to_disk(
        &ctx.bootc,
        &format!("{REPO}:v1"),
        bootloader,
        &["--filesystem", fs],
        &base,
    )?;
    let (esp_n, root_n) = layout(&base)?;
    let mnt = work.join("mnt");
    // Pull v2 and v3 before recording: the log covers the deployment steps.
    {
        let lo = Lo::attach(&base, false)?;
        let m = Mnt::mount(&lo.part(root_n)?, &mnt)?;
        for v in ["v2", "v3"] {
            ctx.bootc.ok(&mnt, &["image", "pull", &format!("containers-storage:{REPO}:{v}")])?;
        }
        m.unmount()?;
    }

    // Record.
    let rec = work.join("rec.img");
    run(Command::new("cp").arg("--sparse=always").arg(&base).arg(&rec))?;
    let logp = work.join("writes.log");
    let exp = Export::log_writes(&rec, &logp, &work.join("rec.export"))?;
    let mut bounds = Vec::new();
    let mut defaults = Vec::new();
    {
        let lo = Lo::attach(&exp.path, false)?;
        let m = Mnt::mount(&lo.part(root_n)?, &mnt)?;
        defaults.push(default_deployment(&mnt)?);
        for step in steps() {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            ctx.bootc.ok(&mnt, &args)?;
            // A flush ends the step, so that the log's super block counts it.
            run(Command::new("sync").arg("-f").arg(&mnt))?;
            run(Command::new("blockdev").arg("--flushbufs").arg(&lo.dev))?;
            bounds.push(Log::open(&logp)?.entries.len());
            defaults.push(default_deployment(&mnt)?);
        }
        m.unmount()?;
        run(Command::new("blockdev").arg("--flushbufs").arg(&lo.dev))?;
    }
    exp.stop()?;
    let log = Log::open(&logp)?;
    ensure!(defaults[0] != defaults[1], "switch did not change the default: {defaults:?}");
    let flushes = log.flushes();
    println!(
        "powercut {fs} {bootloader}: {} entries, {} flushes, step ends at {bounds:?}, defaults {defaults:?}",
        log.entries.len(),
        flushes.len()
    );
    let chosen: Vec<usize> = match sample {
        Some(n) if n < flushes.len() => (0..n).map(|i| flushes[i * (flushes.len() - 1) / (n - 1).max(1)]).collect(),
        _ => {
            // BOOTC_POWERCUT_STRIDE=K: every K-th flush (a shorter full sweep).
            let k: usize = std::env::var("BOOTC_POWERCUT_STRIDE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
            flushes.iter().copied().step_by(k.max(1)).collect()
        }
    };
    // A flush with no write since the previous chosen one is the same state.
    let mut distinct = Vec::new();
    for &f in &chosen {
        let from = distinct.last().map_or(0, |&p: &usize| p + 1);
        if distinct.is_empty() || log.entries[from..f].iter().any(|e| e.changes_disk()) {
            distinct.push(f);
        }
    }
    println!("powercut {fs} {bootloader}: {} flushes chosen, {} distinct states", chosen.len(), distinct.len());
    let chosen = distinct;
    let seed: u64 = std::env::var("BOOTC_POWERCUT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut rng = SplitMix(seed);

    // Replay: state.img advances from flush to flush.
    let state = work.join("state.img");
    run(Command::new("cp").arg("--sparse=always").arg(&base).arg(&state))?;
    let statef = fs::OpenOptions::new().write(true).open(&state)?;
    let mut applied = 0;
    let mut fig = Figures::default();
    // Every state is checked; the failures are listed at the end.
    let mut failures: Vec<String> = Vec::new();
    for (i, &f) in chosen.iter().enumerate() {
        log.apply_range(applied..f + 1, &statef)?;
        applied = f + 1;
        statef.sync_data()?;
        let k = step_of(&bounds, f);
        let allowed = [defaults[k].clone(), defaults[k + 1].clone()];
        let what = format!("{fs} flush {f} (step {k} {:?})", steps()[k]);
        if let Err(e) = check_state(ctx, fs, bootloader, work, &state, &log, &[], (esp_n, root_n), &allowed, &what, true, &mut fig) {
            eprintln!("FAILED: {what}: {e:#}");
            failures.push(format!("{what}: {e:#}"));
        }
        fig.flush_states += 1;
        if i % subsets_every == 0 {
            let s = log.subset(f, rng.next_u64());
            let k2 = step_of(&bounds, s.last().copied().unwrap_or(f));
            let mut allowed = allowed.to_vec();
            allowed.push(defaults[k2 + 1].clone());
            let what = format!("{what} + subset {s:?}");
            if let Err(e) = check_state(ctx, fs, bootloader, work, &state, &log, &s, (esp_n, root_n), &allowed, &what, false, &mut fig) {
                eprintln!("FAILED: {what}: {e:#}");
                failures.push(format!("{what}: {e:#}"));
            }
            fig.subset_states += 1;
        }
    }
    println!(
        "powercut {fs} {bootloader}: {} flushes recorded, {} flush states and {} reordered states checked, un-replayed root fsck clean {} / not clean {}, {:?}",
        flushes.len(),
        fig.flush_states,
        fig.subset_states,
        fig.unreplayed_root_clean,
        fig.unreplayed_root_dirty,
        started.elapsed()
    );
    println!("powercut {fs} {bootloader}: {} states failed", failures.len());
    ensure!(failures.is_empty(), "{} states failed:\n{}", failures.len(), failures.join("\n"));
    Ok(())
}

/// Check one state: `state` plus the `extra` entries, on an overlay.
#[allow(clippy::too_many_arguments)]
fn check_state(
    ctx: &Ctx,
    fs: &str,
    bootloader: &str,
    work: &Path,
    state: &Path,
    log: &Log,
    extra: &[usize],
    (esp_n, root_n): (u32, u32),
    allowed: &[Option<String>],
    what: &str,
    at_flush: bool,
    fig: &mut Figures,
) -> Result<()> {
    let ovl = work.join("check.qcow2");
    let _ = fs::remove_file(&ovl);
    let exp = Export::overlay(state, &ovl, &work.join("check.export"))?;
    if !extra.is_empty() {
        let f = fs::OpenOptions::new().write(true).open(&exp.path)?;
        log.apply(extra.iter().map(|&i| &log.entries[i]), &f)?;
        f.sync_all()?;
    }
    // The boot loader view: nothing replayed, nothing written.
    let esp_dep = {
        let lo = Lo::attach(&exp.path, true)?;
        let esp = lo.part(esp_n)?;
        let dep = if bootloader == "grub" {
            grub_default(&lo.part(root_n)?, work).context("GRUB's view of /boot (no journal replay)")?
        } else {
            esp_default(&esp).context("ESP (boot loader view)")?
        };
        let out = Command::new("fsck.vfat").arg("-n").arg(&esp).output()?;
        if at_flush {
            ensure!(
                out.status.success(),
                "fsck.vfat -n: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let (clean, _) = fsck_clean(fs, &lo.part(root_n)?)?;
        if clean {
            fig.unreplayed_root_clean += 1;
        } else {
            fig.unreplayed_root_dirty += 1;
        }
        dep
    };
    ensure!(
        allowed.contains(&Some(esp_dep.clone())),
        "ESP default {esp_dep} is none of {allowed:?}"
    );
    // The OS view.
    let lo = Lo::attach(&exp.path, false)?;
    let root = lo.part(root_n)?;
    let mnt = work.join("check.mnt");
    let m = Mnt::mount(&root, &mnt)?;
    ctx.bootc.ok(&mnt, &["status", "--format", "json"]).context("offline status")?;
    let def = default_deployment(&mnt)?;
    ensure!(allowed.contains(&def), "default {def:?} is none of {allowed:?}");
    assert_whole(&mnt, def.as_deref().context("no default deployment")?).context("default deployment")?;
    assert_whole(&mnt, &esp_dep).context("ESP default deployment")?;
    if let Ok(s) = fs::read(mnt.join("state/staged.json")) {
        let v: serde_json::Value = serde_json::from_slice(&s).context("staged.json does not parse")?;
        if let Some(id) = v["id"].as_str() {
            assert_whole(&mnt, id).context("staged deployment")?;
        }
    }
    ctx.bootc.ok(&mnt, &["image", "fsck"]).context("image fsck")?;
    m.unmount()?;
    let (clean, text) = fsck_clean(fs, &root)?;
    drop(lo);
    // First: a daemon that died makes every later check fail with EIO.
    exp.stop()?;
    ensure!(clean, "{fs} fsck after journal replay: {text}");
    fs::remove_file(&ovl)?;
    eprintln!("ok: {what}");
    Ok(())
}
