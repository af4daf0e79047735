//! Updates end to end: stage, then finalize at once (offline) or arm the
//! shutdown unit (booted); download-only staging and its unlocking.

use std::process::Command;

use anyhow::{Context, Result};
use bootc_store::Store;
use bootc_sysroot::lifecycle::{self, Staged};
use bootc_sysroot::{Deployment, deployment};

use crate::stage::{StageOutcome, StageRequest, stage};
use crate::steps::download_only as dl_steps;
use crate::target::{Target, describe, imgref_of};

/// The systemd unit that finalizes a staged deployment at shutdown.
pub const FINALIZE_UNIT: &str = "bootc-finalize-staged.service";

/// Where an update ended. Each names the update as `IMAGE (DIGEST, version V)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Nothing new to stage (the reporter was told why).
    Unchanged,
    /// Staged download-only: not applied until `--from-downloaded`.
    Downloaded(String),
    /// Finalized at once (offline): it boots next.
    Deployed(String),
    /// Staged on a running host, the shutdown unit armed: it is finalized at
    /// the next shutdown.
    Queued(String),
}

/// Stage `req`, then finalize at once (offline) or leave it to the
/// shutdown unit; a download-only deployment is left staged and locked.
pub async fn stage_and_finish(t: &Target, req: StageRequest) -> Result<Applied> {
    let store = Store::ensure(&t.sysroot)?;
    let lock = crate::target::lock(&store, &*t.report)?;
    // A booted host whose kernel has fs-verity seals an insecure store first.
    let store = crate::seal::seal_if_possible(t, store)?;
    let dep = match stage(t, &store, &req).await? {
        StageOutcome::Unchanged(_) => {
            let staged = lifecycle::read_staged(&t.sysroot)?.filter(|s| !s.download_only);
            // Staged offline by a run killed before finalizing: finalize now.
            if t.booted.is_none()
                && let Some(s) = &staged
                && let Some(dep) = deployment::load_deployment(&t.sysroot, &s.id)?
            {
                let what = describe(&req.imgref.to_string(), &dep);
                return finish(t, &store, lock, what);
            }
            // Already staged on a running host: make sure the shutdown unit
            // is armed (it is not after a reboot without finalization).
            if t.booted.is_some() && staged.is_some() {
                start_finalize_unit(t);
            }
            return Ok(Applied::Unchanged);
        }
        StageOutcome::Staged(dep) if req.download_only => {
            return Ok(Applied::Downloaded(describe(&req.imgref.to_string(), &dep)));
        }
        StageOutcome::Staged(dep) => dep,
        StageOutcome::Unlocked(dep) => {
            t.report.info(&format!(
                "The download-only deployment {} is the update; unlocked",
                dep.id()
            ));
            dep
        }
    };
    finish(t, &store, lock, describe(&req.imgref.to_string(), &dep))
}

/// The staged (unlocked) deployment `what` is ready: finalize it at once
/// offline, else arm the shutdown unit.
fn finish(
    t: &Target,
    store: &Store,
    lock: bootc_store::WriteLock,
    what: String,
) -> Result<Applied> {
    if t.booted.is_none() {
        let staged = lifecycle::read_staged(&t.sysroot)?.context("staged.json vanished")?;
        crate::finalize::finalize(t, store, &staged)?;
        return Ok(Applied::Deployed(what));
    }
    drop(lock);
    start_finalize_unit(t);
    Ok(Applied::Queued(what))
}

/// `bootc upgrade --from-downloaded`: unlock the download-only staged
/// deployment without fetching, then finish as a normal update.
pub fn from_downloaded(t: &Target) -> Result<Applied> {
    let store = t.open_store()?;
    let lock = crate::target::lock(&store, &*t.report)?;
    let staged = lifecycle::read_staged(&t.sysroot)?
        .context("No downloaded update to apply; run `bootc upgrade --download-only` first")?;
    let dep: Deployment = deployment::load_deployment(&t.sysroot, &staged.id)?
        .with_context(|| format!("The staged deployment {} is missing", staged.id))?;
    if staged.download_only {
        lifecycle::write_staged(
            &t.sysroot,
            &Staged {
                download_only: false,
                ..staged
            },
        )?;
        t.step(dl_steps::UNLOCKED);
    } else {
        t.report.info(&format!(
            "The staged deployment {} is not download-only; it is already queued",
            dep.id()
        ));
    }
    let name = imgref_of(&dep.image)
        .map(|r| r.to_string())
        .unwrap_or_else(|_| dep.image.image.clone());
    finish(t, &store, lock, describe(&name, &dep))
}

/// Arm the unit whose stop finalizes at shutdown. Without systemd (or the
/// unit) the staged deployment waits for `bootc internals finalize-staged`.
fn start_finalize_unit(t: &Target) {
    match Command::new("systemctl")
        .args(["start", FINALIZE_UNIT])
        .status()
    {
        Ok(s) if s.success() => {}
        Ok(s) => t.report.warn(&format!(
            "warning: systemctl start {FINALIZE_UNIT} failed ({s}); the update is staged but will be applied only by `bootc internals finalize-staged`"
        )),
        Err(e) => t.report.warn(&format!(
            "warning: cannot run systemctl ({e}); the update is staged but will be applied only by `bootc internals finalize-staged`"
        )),
    }
}

/// Reboot the running host (`systemctl reboot`).
pub fn reboot() -> Result<()> {
    let s = Command::new("systemctl")
        .arg("reboot")
        .status()
        .context("Running systemctl reboot")?;
    anyhow::ensure!(s.success(), "systemctl reboot failed ({s})");
    Ok(())
}
