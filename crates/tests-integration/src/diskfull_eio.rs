//! A write that returns EIO during a pull and during a stage (issue 10, part 4).
//!
//! The fixture of [`crate::diskfull`]. The root filesystem is filled up
//! except one hole punched into the filler at a known place of the disk
//! (found with `filefrag`), so the operation's new data lands there; the
//! disk is then exported by qemu-storage-daemon through `blkdebug`, every
//! write touching one of a row of sectors from a chosen point of the hole
//! on (1/4 and 3/4 of a pull's size; the start of the hole and 1/8 of a
//! stage's size) failing with EIO, and attached
//! to a loop device. After bootc fails, the disk is attached again without
//! the bad sectors (as a drive that remapped them) and checked as after a
//! disk-full failure: nothing partial, still bootable, store clean, and
//! the retry succeeds.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use bootc_logreplay::qsd::Export;
use bootc_tests_integration::run;

use crate::diskfull::{Op, check_after_failure, fill, fixture, measure, op_args, tree, unfill};
use crate::powercut::{Lo, Mnt};
use crate::{Ctx, TestFn};

/// Ignored in the README test command while it fails (a pull hit by EIO
/// leaves a corrupt object in the store, see RELIABILITY.md); run by
/// `scripts/reliability.sh fast` with `--ignored`.
pub const KNOWN_BUG: &[(&str, TestFn)] = &[("diskfull_eio_pull_and_stage", diskfull_eio_pull_and_stage)];

/// The physical extents of `file` as (logical byte, physical byte, length).
fn extents(file: &Path) -> Result<Vec<(u64, u64, u64)>> {
    let out = run(Command::new("filefrag").args(["-e", "-v", "-b4096"]).arg(file))?;
    let mut v = Vec::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        // "   0:        0..   32767:      34816..     67583:  32768: ..."
        let f: Vec<&str> = l.split(':').map(str::trim).collect();
        if f.len() < 4 || f[0].parse::<u64>().is_err() {
            continue;
        }
        let lstart = f[1].split("..").next().and_then(|s| s.trim().parse::<u64>().ok());
        let pstart = f[2].split("..").next().and_then(|s| s.trim().parse::<u64>().ok());
        let len = f[3].parse::<u64>().ok();
        if let (Some(a), Some(b), Some(n)) = (lstart, pstart, len) {
            v.push((a * 4096, b * 4096, n * 4096));
        }
    }
    Ok(v)
}

fn diskfull_eio_pull_and_stage(ctx: &Ctx) -> Result<()> {
    let started = std::time::Instant::now();
    let td = tempfile::Builder::new().prefix("bootc-eio.").tempdir_in("/var/tmp")?;
    let work = td.path();
    let (base, esp_n, root_n) = fixture(ctx, work)?;
    let root_start = bootc_tests_integration::vm::partitions(&base)?
        .into_iter()
        .find(|p| p.number == root_n)
        .context("no root partition")?
        .start_bytes;
    let case = work.join("case.img");
    let mnt = work.join("mnt");
    let mut cases = 0;
    let mut figures = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for op in [Op::Pull, Op::Stage] {
        let (need, v1) = measure(ctx, &base, &case, &mnt, root_n, op)?;
        for quarter in [1u64, 3] {
            run(Command::new("cp").arg("--sparse=always").arg(&base).arg(&case))?;
            // Fill all but a hole at a known place.
            let hole = (2 * need + (16 << 20)).next_multiple_of(1 << 20);
            let (objects_before, at) = {
                let lo = Lo::attach(&case, false)?;
                let m = Mnt::mount(&lo.part(root_n)?, &mnt)?;
                if op == Op::Stage {
                    ctx.bootc.ok(&mnt, &op_args(Op::Pull).iter().map(String::as_str).collect::<Vec<_>>())?;
                }
                let objects_before = tree(&mnt.join("composefs/objects"))?;
                fill(&mnt, 0)?;
                let filler = mnt.join("filler-0");
                let (loff, poff, _) = extents(&filler)?
                    .into_iter()
                    .filter(|e| e.2 >= hole)
                    .max_by_key(|e| e.2)
                    .with_context(|| format!("no extent of {hole} bytes in the filler"))?;
                run(Command::new("fallocate")
                    .args(["-p", "-o", &loff.to_string(), "-l", &hole.to_string()])
                    .arg(&filler))?;
                m.unmount()?;
                (objects_before, root_start + poff)
            };
            // Bad sectors from the chosen point to the end of the hole, every
            // 16 KiB (at most 2048 of them): small files land anywhere in it.
            // A stage's measured need is mostly metadata outside the hole
            // (inodes, directories): its data is small, so its points are
            // the start of the hole and 1/8 of the need.
            let from = match op {
                Op::Pull => at + need * quarter / 4,
                Op::Stage => at + need * (quarter - 1) / 16,
            };
            let step = ((at + hole - from) / 2048).max(16 << 10).next_multiple_of(4096);
            let sectors: Vec<u64> = (from..at + hole).step_by(step as usize).map(|b| b / 512).collect();
            let what = format!("{op:?} needing {need} bytes, EIO from byte {} of a {hole}-byte hole", from - at);
            let (st, err) = {
                let exp = Export::bad_sectors(&case, &sectors, &work.join("eio.export"))?;
                let lo = Lo::attach(&exp.path, false)?;
                let m = Mnt::mount(&lo.part(root_n)?, &mnt)?;
                let out = ctx.bootc.cmd(&mnt).args(op_args(op)).output()?;
                let _ = m.unmount();
                drop(lo);
                exp.stop()?;
                (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
            };
            let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_default().to_owned();
            if st.success() {
                figures.push(format!("{what}: not hit (no write touched a bad sector), not counted"));
                continue;
            }
            ensure!(err.contains("Input/output error"), "{what}: error does not say EIO: {err}");
            figures.push(format!("{what}: {line}"));
            // The disk again, as a drive that remapped the sectors.
            let lo = Lo::attach(&case, false)?;
            let m = Mnt::mount(&lo.part(root_n)?, &mnt)?;
            unfill(&mnt)?;
            if let Err(e) = check_after_failure(ctx, &mnt, &lo.part(esp_n)?, op, &v1, &objects_before, &what) {
                // Does a retry with a good disk repair it?
                let retry = ctx
                    .bootc
                    .ok(&mnt, &op_args(op).iter().map(String::as_str).collect::<Vec<_>>())
                    .and_then(|_| ctx.bootc.ok(&mnt, &["image", "fsck"]));
                failures.push(format!(
                    "{e:#}\n  then a retry and image fsck: {}",
                    match retry {
                        Ok(_) => "pass".to_owned(),
                        Err(e) => format!("{e:#}"),
                    }
                ));
            }
            m.unmount()?;
            drop(lo);
            cases += 1;
        }
    }
    for f in &figures {
        println!("  {f}");
    }
    println!(
        "diskfull: {cases} EIO cases (pull and stage), {} failed, {:?}",
        failures.len(),
        started.elapsed()
    );
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
