//! Disk full during a pull and during a stage (issue 10, part 4).
//!
//! A disk installed with systemd-boot (v1) has its root filesystem filled
//! with a preallocated file so that only N bytes are free; N is a chosen
//! fraction (1/4, 1/2, 3/4) of the space the operation takes when it
//! succeeds (measured first), so the filesystem fills at that point of it.
//! The operations: `image pull` of v2 (v1 plus a 32 MiB incompressible
//! layer) and an offline `switch` to v2 (pulled beforehand: stage and
//! finalize). After each:
//!
//! - bootc fails and its error says the disk is full and names a path;
//! - nothing partial is left: no `.tmp*` entries under `state/` and
//!   `composefs/`, no staged record, and after `image gc` the store's
//!   objects are exactly those from before;
//! - offline `status` works, the default deployment (by
//!   `/boot/loader/entries` and by the ESP) is still v1 and whole, and
//!   `image fsck` is clean;
//! - with the filler removed, the same operation succeeds.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use bootc_tests_integration::run;

use crate::powercut::{Lo, Mnt, assert_whole, default_deployment, esp_default, layout};
use crate::{Ctx, TestFn};

pub const TESTS: &[(&str, TestFn)] = &[("diskfull_pull_and_stage", diskfull_pull_and_stage)];

pub(crate) const REPO: &str = "localhost/bootc-diskfull";

/// Every path under `dir`, relative to it.
pub(crate) fn tree(dir: &Path) -> Result<BTreeSet<String>> {
    let out = run(Command::new("find").arg(".").arg("-mindepth").arg("1").current_dir(dir))?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect())
}

/// Free bytes of the filesystem at `p` (its root-reserved blocks are set to 0).
pub(crate) fn free_bytes(p: &Path) -> Result<u64> {
    let s = rustix::fs::statvfs(p)?;
    Ok(s.f_bavail * s.f_frsize)
}

/// Leave about `keep` bytes free on the filesystem at `mnt` (within 256 KiB):
/// preallocated files `filler-N`, halving a request the filesystem refuses
/// (it keeps some space back for its metadata).
pub(crate) fn fill(mnt: &Path, keep: u64) -> Result<()> {
    let mut n = 0;
    let mut len = free_bytes(mnt)?.saturating_sub(keep);
    while len >= 64 << 10 {
        let ok = Command::new("fallocate")
            .args(["-l", &len.to_string()])
            .arg(mnt.join(format!("filler-{n}")))
            .stderr(std::process::Stdio::null())
            .status()?
            .success();
        n += 1;
        run(Command::new("sync").arg("-f").arg(mnt))?;
        let over = free_bytes(mnt)?.saturating_sub(keep);
        len = if ok { over } else { (len / 2).min(over) };
    }
    Ok(())
}

pub(crate) fn unfill(mnt: &Path) -> Result<()> {
    for e in fs::read_dir(mnt)? {
        let e = e?;
        if e.file_name().to_string_lossy().starts_with("filler-") {
            fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Op {
    Pull,
    Stage,
}

pub(crate) fn op_args(op: Op) -> Vec<String> {
    let r = format!("{REPO}:v2");
    match op {
        Op::Pull => vec!["image".into(), "pull".into(), format!("containers-storage:{r}")],
        Op::Stage => vec!["switch".into(), "--transport".into(), "containers-storage".into(), r],
    }
}

/// v1 (the example image) installed with systemd-boot on `work/base.img`,
/// with no root-reserved blocks (bootc, as root, sees exactly what statvfs
/// says is available); v2 adds a 32 MiB incompressible layer. Returns the
/// disk and its ESP and root partition numbers.
pub(crate) fn fixture(ctx: &Ctx, work: &Path) -> Result<(std::path::PathBuf, u32, u32)> {
    run(Command::new("podman").args(["tag", "localhost/bootc-example:latest", &format!("{REPO}:v1")]))?;
    let cf = work.join("Containerfile");
    fs::write(
        &cf,
        format!("FROM {REPO}:v1\nRUN head -c 33554432 /dev/urandom > /usr/share/diskfull-blob\n"),
    )?;
    // Rebuilt only when missing: the random layer would change every time.
    if !Command::new("podman").args(["image", "exists", &format!("{REPO}:v2")]).status()?.success() {
        run(Command::new("podman")
            .args(["build", "--isolation=chroot", "-q", "-t", &format!("{REPO}:v2"), "-f"])
            .arg(&cf)
            .arg(work))?;
    }
    let base = work.join("base.img");
    fs::File::create(&base)?.set_len(4 << 30)?;
    crate::guest::install_to_disk(&ctx.bootc, &format!("{REPO}:v1"), "systemd", &[], &base)?;
    let (esp_n, root_n) = layout(&base)?;
    let lo = Lo::attach(&base, false)?;
    run(Command::new("tune2fs").args(["-m", "0"]).arg(lo.part(root_n)?))?;
    Ok((base, esp_n, root_n))
}

/// After a failed `op` (space or the disk back): nothing partial, still
/// bootable, store clean; then the same operation succeeds.
pub(crate) fn check_after_failure(
    ctx: &Ctx,
    mnt: &Path,
    esp: &Path,
    op: Op,
    v1: &str,
    objects_before: &BTreeSet<String>,
    what: &str,
) -> Result<()> {
    for d in ["state", "composefs"] {
        let left: Vec<String> = tree(&mnt.join(d))?
            .into_iter()
            .filter(|p| p.rsplit('/').next().is_some_and(|n| n.starts_with(".tmp") || n.ends_with(".tmp")))
            .collect();
        ensure!(left.is_empty(), "{what}: partial files left in {d}: {left:?}");
    }
    ensure!(!mnt.join("state/staged.json").exists(), "{what}: a staged record is left");
    ctx.bootc.ok(mnt, &["status", "--format", "json"]).with_context(|| format!("{what}: status"))?;
    ensure!(default_deployment(mnt)?.as_deref() == Some(v1), "{what}: default changed");
    assert_whole(mnt, v1).with_context(|| what.to_owned())?;
    ensure!(esp_default(esp)? == v1, "{what}: ESP default changed");
    ctx.bootc.ok(mnt, &["image", "fsck"]).with_context(|| format!("{what}: image fsck"))?;
    if op == Op::Pull {
        ctx.bootc.ok(mnt, &["image", "gc"])?;
        let after = tree(&mnt.join("composefs/objects"))?;
        let extra: Vec<&String> = after.difference(objects_before).collect();
        ensure!(extra.is_empty(), "{what}: objects left after gc: {extra:?}");
    }
    ctx.bootc
        .ok(mnt, &op_args(op).iter().map(String::as_str).collect::<Vec<_>>())
        .with_context(|| format!("{what}: retry"))?;
    if op == Op::Stage {
        ensure!(default_deployment(mnt)?.as_deref() != Some(v1), "{what}: retry did not switch");
    }
    ctx.bootc.ok(mnt, &["image", "fsck"])?;
    Ok(())
}

/// The space `op` takes on a copy of `base` when it succeeds, and the v1 deployment.
pub(crate) fn measure(ctx: &Ctx, base: &Path, case: &Path, mnt: &Path, root_n: u32, op: Op) -> Result<(u64, String)> {
    run(Command::new("cp").arg("--sparse=always").arg(base).arg(case))?;
    let lo = Lo::attach(case, false)?;
    let m = Mnt::mount(&lo.part(root_n)?, mnt)?;
    if op == Op::Stage {
        ctx.bootc.ok(mnt, &op_args(Op::Pull).iter().map(String::as_str).collect::<Vec<_>>())?;
    }
    let v1 = default_deployment(mnt)?.context("no default deployment")?;
    run(Command::new("sync").arg("-f").arg(mnt))?;
    let before = free_bytes(mnt)?;
    ctx.bootc.ok(mnt, &op_args(op).iter().map(String::as_str).collect::<Vec<_>>())?;
    run(Command::new("sync").arg("-f").arg(mnt))?;
    let need = before.saturating_sub(free_bytes(mnt)?);
    m.unmount()?;
    ensure!(need > 0, "{op:?} took no space");
    Ok((need, v1))
}

fn diskfull_pull_and_stage(ctx: &Ctx) -> Result<()> {
    let started = std::time::Instant::now();
    let td = tempfile::Builder::new().prefix("bootc-diskfull.").tempdir_in("/var/tmp")?;
    let work = td.path();
    let (base, esp_n, root_n) = fixture(ctx, work)?;
    let case = work.join("case.img");
    let mnt = work.join("mnt");
    let mut cases = 0;
    let mut figures = Vec::new();
    for op in [Op::Pull, Op::Stage] {
        let (need, v1) = measure(ctx, &base, &case, &mnt, root_n, op)?;
        for quarter in 1..=3u64 {
            let keep = need * quarter / 4;
            run(Command::new("cp").arg("--sparse=always").arg(&base).arg(&case))?;
            let lo = Lo::attach(&case, false)?;
            let m = Mnt::mount(&lo.part(root_n)?, &mnt)?;
            if op == Op::Stage {
                ctx.bootc.ok(&mnt, &op_args(Op::Pull).iter().map(String::as_str).collect::<Vec<_>>())?;
            }
            let objects_before = tree(&mnt.join("composefs/objects"))?;
            fill(&mnt, keep)?;
            let what = format!("{op:?} needing {need} bytes with {} free", free_bytes(&mnt)?);
            let out = ctx
                .bootc
                .cmd(&mnt)
                .args(op_args(op))
                .output()?;
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            ensure!(!out.status.success(), "{what}: succeeded");
            ensure!(err.contains("No space left on device"), "{what}: error does not say the disk is full: {err}");
            let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_default().to_owned();
            ensure!(line.contains('/'), "{what}: error names no path: {line}");
            figures.push(format!("{what}: {line}"));
            unfill(&mnt)?;
            check_after_failure(ctx, &mnt, &lo.part(esp_n)?, op, &v1, &objects_before, &what)?;
            m.unmount()?;
            drop(lo);
            cases += 1;
        }
    }
    for f in &figures {
        println!("  {f}");
    }
    println!("diskfull: {cases} disk-full cases (pull and stage), {:?}", started.elapsed());
    Ok(())
}
