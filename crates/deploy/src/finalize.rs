//! Finalization: the staged deployment becomes the default (at shutdown on
//! a booted host, at once offline).
//!
//! A three-way merge of /etc into a fresh directory swapped in as the new
//! deployment's /etc, then the boot entries (new default, booted as
//! rollback) in one atomic step, then `staged.json` removed, then pruning
//! and store GC ([`crate::prune`]). The steps are [`crate::steps::finalize`].

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result};
use bootc_boot::BlsEntry;
use bootc_boot::entries::renumber;
use bootc_store::Store;
use bootc_sysroot::lifecycle::{self, Staged};
use bootc_sysroot::{Deployment, ImageMount, deployment};
use cap_std_ext::cap_std::{ambient_authority, fs::Dir};

use crate::steps::finalize as steps;
use crate::target::{
    Target, base_deployment, current_order, deployment_image, publish_entries_on_trial,
};

/// Finalize the staged deployment: merge /etc, write the entries, prune.
pub fn finalize(t: &Target, store: &Store, staged: &Staged) -> Result<Deployment> {
    let new = deployment::load_deployment(&t.sysroot, &staged.id)?
        .with_context(|| format!("The staged deployment {} is missing", staged.id))?;
    let order = current_order(t)?;
    if order.first().is_some_and(|(id, _)| id == new.id()) {
        // Finalized already (a crash before staged.json was removed).
        lifecycle::remove_staged(&t.sysroot)?;
        return Ok(new);
    }
    let booted = base_deployment(t, &order)?;

    // /etc: pristine = booted image, current = booted deployment's /etc.
    let report = {
        let pristine = ImageMount::new(store, &deployment_image(store, booted.id())?)?;
        let new_img = ImageMount::new(store, &deployment_image(store, new.id())?)?;
        let dep_dir = deployment::deployment_dir(&t.sysroot, new.id());
        let merged = dep_dir.join(".etc-merged");
        if merged.symlink_metadata().is_ok() {
            std::fs::remove_dir_all(&merged)
                .with_context(|| format!("Removing stale {}", merged.display()))?;
        }
        std::fs::create_dir(&merged).with_context(|| format!("Creating {}", merged.display()))?;
        let open = |p: &Path| {
            Dir::open_ambient_dir(p, ambient_authority())
                .with_context(|| format!("Opening {}", p.display()))
        };
        let empty = tempfile::tempdir()?;
        let etc_or_empty = |root: &Path| {
            let p = root.join("etc");
            if p.is_dir() {
                open(&p)
            } else {
                open(empty.path())
            }
        };
        let report = bootc_etc_merge::merge(
            &etc_or_empty(pristine.path())?,
            &open(&deployment::deployment_dir(&t.sysroot, booted.id()).join("etc"))?,
            &etc_or_empty(new_img.path())?,
            &open(&merged)?,
        )
        .with_context(|| format!("Merging /etc of {} into {}", booted.id(), new.id()))?;
        let fd = rustix::fs::open(
            &dep_dir,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .with_context(|| format!("Opening {}", dep_dir.display()))?;
        rustix::fs::syncfs(&fd).context("Syncing the sysroot")?;
        rustix::fs::renameat_with(
            &fd,
            ".etc-merged",
            &fd,
            "etc",
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .with_context(|| format!("Exchanging {} with its etc", merged.display()))?;
        rustix::fs::fsync(&fd).context("Syncing the deployment directory")?;
        t.step(steps::ETC_MERGED);
        std::fs::remove_dir_all(&merged)
            .with_context(|| format!("Removing the unmerged {}", merged.display()))?;
        let tries = crate::trial::tries_for(new_img.path(), &dep_dir.join("etc"))?;
        (report, tries)
    };
    let (report, tries) = report;
    for c in &report.conflicts {
        t.report.warn(&format!(
            "bootc: /etc merge conflict at /etc/{}: {} (kept the local version)",
            c.path.display(),
            c.reason
        ));
    }
    for s in &report.skipped {
        t.report.warn(&format!(
            "bootc: /etc merge skipped /etc/{}: {}",
            s.path.display(),
            s.reason
        ));
    }

    // Entries: new default, booted as rollback; prune the rest.
    let ids: Vec<String> = order.iter().map(|(id, _)| id.clone()).collect();
    let new_order = crate::policy::order_after_finalize(&ids, new.id(), booted.id());
    let all = deployment::list_deployments(&t.sysroot)?;
    let present: BTreeSet<String> = all.iter().map(|d| d.id().to_owned()).collect();
    let pinned: BTreeSet<String> = present
        .iter()
        .filter(|id| lifecycle::is_pinned(&t.sysroot, id))
        .cloned()
        .collect();
    let keep_booted = t.booted.as_deref().or(Some(booted.id()));
    let (keep, remove) =
        crate::policy::select_prune(&new_order, keep_booted, None, &pinned, &present);
    let title = {
        let img = ImageMount::new(store, &deployment_image(store, new.id())?)?;
        bootc_install::deploy::entry_title(
            img.os_release()?.pretty_name(),
            new.version.as_deref(),
            &new.manifest_digest,
        )
    };
    let new_entry = BlsEntry::for_deployment(
        &title,
        0,
        new.boot_dir_name(),
        &new.cmdline(),
        &new.stateroot,
    );
    let entries: Vec<BlsEntry> = keep
        .iter()
        .map(|id| {
            if id == new.id() {
                new_entry.clone()
            } else {
                order
                    .iter()
                    .find(|(o, _)| o == id)
                    .map(|(_, e)| e.clone())
                    .expect("kept ids come from the order")
            }
        })
        .collect();
    // Boot counting: the trial's counter is in place before the entries
    // that make the new deployment the default.
    if tries > 0 {
        crate::trial::start_trial(t, new.bootloader, new.id(), tries)?;
    } else {
        crate::trial::end_trial(t, new.bootloader)?;
    }
    publish_entries_on_trial(
        t,
        new.bootloader,
        &renumber(entries, &new.stateroot),
        (tries > 0).then_some((new.id(), tries)),
    )?;
    t.step(steps::ENTRIES_PUBLISHED);
    lifecycle::remove_staged(&t.sysroot)?;
    t.step(steps::STAGED_CLEARED);

    // The new default is in place: a failure from here on leaves old
    // deployments or store content behind (the next prune retries), not a
    // failed update.
    if let Err(e) = crate::prune::prune(t, store, &all, &remove, staged.retain) {
        t.report.warn(&format!(
            "bootc: warning: deployment {} is the new default, but pruning old deployments failed (the next update retries): {e:#}",
            new.id()
        ));
    }
    Ok(new)
}

/// What [`finalize_staged`] did.
#[derive(Debug, Clone)]
pub enum FinalizeOutcome {
    /// No staged deployment.
    NothingStaged,
    /// The staged deployment is download-only: left as it is.
    DownloadOnly(String),
    /// The staged deployment is the new default.
    Finalized(Deployment),
}

/// `bootc internals finalize-staged` (the shutdown unit's ExecStop).
///
/// When finalization fails, nothing that decides what boots has changed
/// ([`finalize`] publishes the entries last), so the previous default boots
/// next. The staged deployment is then dropped (`staged.json` removed, its
/// directory left for the next prune): like a staged deployment that was
/// never finalized, it is not applied by a later shutdown, and `bootc
/// upgrade`/`switch` stage it afresh. The failure is reported as a warning
/// (the unit sends stderr to the journal) and returned, so the unit fails.
pub fn finalize_staged(t: &Target) -> Result<FinalizeOutcome> {
    let Some(staged) = lifecycle::read_staged(&t.sysroot)? else {
        return Ok(FinalizeOutcome::NothingStaged);
    };
    if staged.download_only {
        return Ok(FinalizeOutcome::DownloadOnly(staged.id));
    }
    let store = t.open_store()?;
    let _lock = crate::target::lock(&store, &*t.report)?;
    match finalize(t, &store, &staged) {
        Ok(d) => Ok(FinalizeOutcome::Finalized(d)),
        Err(e) => {
            t.report.warn(&format!(
                "bootc: finalizing staged deployment {} failed; the previous default still boots: {e:#}",
                staged.id
            ));
            match lifecycle::remove_staged(&t.sysroot) {
                Ok(()) => {
                    t.step(steps::STAGED_DROPPED);
                    t.report.warn(&format!(
                        "bootc: dropped the staged deployment {}; stage it again with `bootc upgrade` or `bootc switch`",
                        staged.id
                    ))
                }
                Err(e2) => t.report.warn(&format!(
                    "bootc: could not drop the staged deployment {}: {e2:#}",
                    staged.id
                )),
            }
            Err(e)
        }
    }
}
