//! Automatic rollback: a newly finalized deployment boots on trial.
//!
//! 1. Finalization ([`start_trial`]) gives the new default deployment a
//!    number of tries (`bootc/boot.toml`, default 3) when its image can
//!    bless itself: it ships [`CHECK_UNIT`], enabled. The counter lives
//!    where the bootloader counts: GRUB's `grubenv` or the `+N` suffix of
//!    the entry's name on the ESP (see `bootc_boot::counting`).
//! 2. Every boot, [`CHECK_UNIT`] runs `bootc internals boot-check`
//!    ([`boot_check`]) after `boot-complete.target`:
//!    - booted on trial and the target was reached: the deployment is
//!      blessed (counter removed);
//!    - booted on trial and the target failed (a health check ordered before
//!      it failed): the failed units are recorded in the deployment's
//!      `boot-failure.json` and the host reboots; once no try is left the
//!      bootloader boots the previous entry;
//!    - booted another deployment while the trial has no try left: the
//!      failed deployment is moved behind the booted one (it becomes the
//!      rollback), the trial ends, and `status` shows why it was left.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use bootc_boot::BlsEntry;
use bootc_boot::counting::{
    GRUB_TRIAL_VAR, GRUB_TRIES_VAR, MAX_TRIES, counted_name, grub_trial, parse_counted_name,
    parse_grubenv, render_grubenv,
};
use bootc_boot::entries::renumber;
use bootc_spec::{AssessmentState, BootAssessment};
use bootc_sysroot::trial::{self, BootFailure, Trial};
use bootc_sysroot::{Bootloader, deployment};

use crate::steps::trial as steps;
use crate::target::{Target, current_order, find_esp, publish_entries};

/// The unit that runs [`boot_check`] every boot (contrib/systemd).
pub const CHECK_UNIT: &str = "bootc-boot-check.service";

/// The target a good boot reaches; health checks are ordered before it.
pub const BOOT_COMPLETE: &str = "boot-complete.target";

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Whether `p` exists, without following a final symlink.
fn lexists(p: &Path) -> bool {
    p.symlink_metadata().is_ok()
}

/// A regular file's text, `None` when absent or not a regular file.
fn read_regular(p: &Path) -> Result<Option<String>> {
    match p.symlink_metadata() {
        Ok(m) if m.is_file() => std::fs::read_to_string(p)
            .map(Some)
            .with_context(|| format!("Reading {}", p.display())),
        _ => Ok(None),
    }
}

/// The tries a new deployment gets: 0 unless its image (mounted at
/// `image_root`, with its merged /etc at `etc`) ships [`CHECK_UNIT`] enabled
/// for multi-user.target and not masked; then what `bootc/boot.toml` says.
pub fn tries_for(image_root: &Path, etc: &Path) -> Result<u32> {
    let unit = image_root.join("usr/lib/systemd/system").join(CHECK_UNIT);
    let wants = format!("multi-user.target.wants/{CHECK_UNIT}");
    let enabled = lexists(&image_root.join("usr/lib/systemd/system").join(&wants))
        || lexists(&etc.join("systemd/system").join(&wants));
    let masked = lexists(&etc.join("systemd/system").join(CHECK_UNIT));
    if !lexists(&unit) || !enabled || masked {
        return Ok(0);
    }
    trial::configured_tries(
        read_regular(&etc.join(trial::BOOT_TOML))?.as_deref(),
        read_regular(&image_root.join("usr/lib").join(trial::BOOT_TOML))?.as_deref(),
        MAX_TRIES,
    )
}

/// Where GRUB's environment block lives in `sysroot`.
fn grubenv_dir(sysroot: &Path) -> std::path::PathBuf {
    sysroot.join("boot/grub")
}

fn read_grubenv(sysroot: &Path) -> Result<BTreeMap<String, String>> {
    let p = grubenv_dir(sysroot).join("grubenv");
    match std::fs::read(&p) {
        Ok(b) => Ok(parse_grubenv(&b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("Reading {}", p.display())),
    }
}

fn write_grubenv(t: &Target, vars: &BTreeMap<String, String>) -> Result<()> {
    let dir = grubenv_dir(&t.sysroot);
    std::fs::create_dir_all(&dir).with_context(|| format!("Creating {}", dir.display()))?;
    bootc_boot::entries::atomic_write(&dir, "grubenv", &render_grubenv(vars)?)
}

/// Put deployment `id` on trial with `tries` tries, before the entries that
/// make it the default are published: the trial record, and for GRUB the
/// counter in `grubenv` (systemd-boot's counter is the entry name, written
/// with the entries: see [`esp_name`]).
pub fn start_trial(t: &Target, bootloader: Bootloader, id: &str, tries: u32) -> Result<()> {
    trial::write_trial(
        &t.sysroot,
        &Trial {
            id: id.to_owned(),
            tries,
            started: now(),
        },
    )?;
    if bootloader == Bootloader::Grub {
        let mut vars = read_grubenv(&t.sysroot)?;
        vars.insert(GRUB_TRIAL_VAR.into(), id.into());
        vars.insert(GRUB_TRIES_VAR.into(), tries.to_string());
        write_grubenv(t, &vars)?;
    }
    trial::remove_failure(&t.sysroot, id)?;
    t.step(steps::COUNTER_ARMED);
    Ok(())
}

/// End any trial (rollback, blessing, or a new deployment without one):
/// GRUB's counter and the record. The ESP's counted name goes when the
/// entries are next written without it (or by [`bless_esp_entry`]).
pub fn end_trial(t: &Target, bootloader: Bootloader) -> Result<()> {
    if bootloader == Bootloader::Grub {
        let mut vars = read_grubenv(&t.sysroot)?;
        let had = vars.remove(GRUB_TRIAL_VAR).is_some() | vars.remove(GRUB_TRIES_VAR).is_some();
        if had {
            write_grubenv(t, &vars)?;
        }
    }
    trial::remove_trial(&t.sysroot)?;
    t.step(steps::ENDED);
    Ok(())
}

/// The ESP file name for entry `name` of deployment `id`: with the counter
/// when `trial` puts that deployment on trial.
pub fn esp_name(name: &str, entry: &BlsEntry, trial: Option<(&str, u32)>) -> String {
    match trial {
        Some((tid, tries)) if entry.deployment_id().as_deref() == Some(tid) => {
            counted_name(name, tries)
        }
        _ => name.to_owned(),
    }
}

/// The counted ESP entry of deployment `id`: (file name, tries left).
fn esp_counted_entry(t: &Target, id: &str) -> Result<Option<(String, u32)>> {
    let esp = find_esp(&t.sysroot)?;
    for name in esp.list("/loader/entries")? {
        let Some((_, left, _)) = parse_counted_name(&name) else {
            continue;
        };
        let Some(text) = esp.read(&format!("/loader/entries/{name}"))? else {
            continue;
        };
        if bootc_boot::parse_bls(&String::from_utf8_lossy(&text))
            .ok()
            .and_then(|e| e.deployment_id())
            .as_deref()
            == Some(id)
        {
            return Ok(Some((name, left)));
        }
    }
    Ok(None)
}

/// Rename the counted ESP entry of `id` to its plain name.
fn bless_esp_entry(t: &Target, id: &str) -> Result<()> {
    if let Some((name, _)) = esp_counted_entry(t, id)? {
        let (plain, _, _) = parse_counted_name(&name).expect("counted");
        find_esp(&t.sysroot)?.rename(
            &format!("/loader/entries/{name}"),
            &format!("/loader/entries/{plain}"),
        )?;
    }
    Ok(())
}

/// The tries GRUB's environment block in `sysroot` leaves to the trial of `id`.
fn grub_tries_left(sysroot: &Path, id: &str) -> Result<Option<u32>> {
    Ok(grub_trial(&read_grubenv(sysroot)?)
        .filter(|(tid, _)| tid == id)
        .map(|(_, n)| n))
}

/// The tries left to the trial of `id`, as the bootloader counts them;
/// `None` when the bootloader has no counter for it.
pub fn tries_left(t: &Target, bootloader: Bootloader, id: &str) -> Result<Option<u32>> {
    match bootloader {
        Bootloader::Grub => grub_tries_left(&t.sysroot, id),
        Bootloader::Systemd => Ok(esp_counted_entry(t, id)?.map(|(_, n)| n)),
        Bootloader::None => Ok(None),
    }
}

/// The assessment `status` shows for deployment `id` of `sysroot`
/// (cheap: files only, no ESP access).
pub fn assessment(sysroot: &Path, id: &str) -> Option<BootAssessment> {
    if let Ok(Some(f)) = trial::read_failure(sysroot, id) {
        return Some(BootAssessment {
            state: AssessmentState::Failed,
            tries_left: None,
            reason: Some(f.reason),
            timestamp: f.time.parse().ok(),
        });
    }
    let tr = trial::read_trial(sysroot).ok().flatten()?;
    (tr.id == id).then(|| {
        let tries_left = grub_tries_left(sysroot, id).ok().flatten();
        BootAssessment {
            state: AssessmentState::Trial,
            tries_left,
            reason: None,
            timestamp: None,
        }
    })
}

/// Whether `unit` is active.
fn is_active(unit: &str) -> bool {
    Command::new("systemctl")
        .args(["is-active", "--quiet", unit])
        .status()
        .is_ok_and(|s| s.success())
}

/// The units systemd lists as failed.
fn failed_units() -> Vec<String> {
    Command::new("systemctl")
        .args(["list-units", "--state=failed", "--no-legend", "--plain"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `bootc internals boot-check` (run by [`CHECK_UNIT`] on every boot):
/// bless the booted deployment on trial, or record its failure and reboot,
/// or fall back from a trial that used up its tries.
pub fn boot_check(t: &Target) -> Result<()> {
    let booted = t
        .booted
        .clone()
        .context("boot-check runs on a booted host only")?;
    let store = t.open_store()?;
    let _lock = crate::target::lock(&store, &*t.report)?;
    let Some(tr) = trial::read_trial(&t.sysroot)? else {
        t.report.info(&format!(
            "bootc: deployment {booted} booted; no boot trial pending"
        ));
        return Ok(());
    };
    let dep = deployment::load_deployment(&t.sysroot, &tr.id)?;
    let Some(dep) = dep else {
        t.report.warn(&format!(
            "bootc: the deployment on trial {} is gone; ending the trial",
            tr.id
        ));
        let bl = deployment::load_deployment(&t.sysroot, &booted)?
            .map(|d| d.bootloader)
            .unwrap_or(Bootloader::None);
        return end_trial(&t, bl);
    };
    if tr.id == booted {
        if is_active(BOOT_COMPLETE) {
            if dep.bootloader == Bootloader::Systemd {
                bless_esp_entry(&t, &booted)?;
            }
            end_trial(&t, dep.bootloader)?;
            trial::remove_failure(&t.sysroot, &booted)?;
            t.step(steps::BLESSED);
            t.report.info(&format!(
                "bootc: {BOOT_COMPLETE} reached; deployment {booted} is blessed"
            ));
            return Ok(());
        }
        let failed = failed_units();
        let left = tries_left(&t, dep.bootloader, &booted)?;
        let reason = if failed.is_empty() {
            format!("{BOOT_COMPLETE} was not reached")
        } else {
            format!(
                "{BOOT_COMPLETE} was not reached; failed units: {}",
                failed.join(", ")
            )
        };
        trial::write_failure(
            &t.sysroot,
            &booted,
            &BootFailure {
                reason: reason.clone(),
                time: now(),
            },
        )?;
        t.step(steps::FAILURE_RECORDED);
        t.report.info(&format!(
            "bootc: boot of deployment {booted} failed ({reason}); {} tries left; rebooting",
            left.map(|n| n.to_string()).unwrap_or_else(|| "no".into())
        ));
        rustix::fs::sync();
        let s = Command::new("systemctl")
            .arg("reboot")
            .status()
            .context("Running systemctl reboot")?;
        anyhow::ensure!(s.success(), "systemctl reboot failed ({s})");
        return Ok(());
    }
    // Booted another deployment than the one on trial.
    let left = tries_left(&t, dep.bootloader, &tr.id)?;
    if left.is_some_and(|n| n > 0) {
        t.report.info(&format!(
            "bootc: deployment {} is on trial ({} tries left) but {booted} was booted; leaving the trial as it is",
            tr.id,
            left.unwrap_or(0)
        ));
        return Ok(());
    }
    fall_back(&t, &tr, &booted, dep.bootloader)
}

/// The trial of `tr.id` used up its tries and `booted` runs: make `booted`
/// the default, the failed deployment its rollback, and say why.
fn fall_back(t: &Target, tr: &Trial, booted: &str, bootloader: Bootloader) -> Result<()> {
    if trial::read_failure(&t.sysroot, &tr.id)?.is_none() {
        trial::write_failure(
            &t.sysroot,
            &tr.id,
            &BootFailure {
                reason: format!(
                    "did not reach {BOOT_COMPLETE} in {} boot tries (no boot of it recorded why)",
                    tr.tries
                ),
                time: now(),
            },
        )?;
    }
    let order = current_order(t)?;
    let mut ids: Vec<String> = order.iter().map(|(id, _)| id.clone()).collect();
    ids.retain(|id| id != booted && id != &tr.id);
    let mut new_order = vec![booted.to_owned()];
    if order.iter().any(|(id, _)| id == &tr.id) {
        new_order.push(tr.id.clone());
    }
    new_order.extend(ids);
    let booted_dep = deployment::load_deployment(&t.sysroot, booted)?
        .with_context(|| format!("The booted deployment {booted} is missing"))?;
    let entries: Vec<BlsEntry> = new_order
        .iter()
        .filter_map(|id| order.iter().find(|(o, _)| o == id).map(|(_, e)| e.clone()))
        .collect();
    end_trial(t, bootloader)?;
    publish_entries(
        t,
        booted_dep.bootloader,
        &renumber(entries, &booted_dep.stateroot),
    )?;
    t.step(steps::FELL_BACK);
    t.report.info(&format!(
        "bootc: deployment {} failed its {} boot tries; {booted} is the default again and {} is the rollback",
        tr.id, tr.tries, tr.id
    ));
    Ok(())
}
