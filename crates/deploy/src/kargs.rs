//! Kernel arguments owned by a named source (`bootc loader-entries
//! set-options-for-source`): a tuning daemon, a provisioning tool or an
//! admin sets arguments that it replaces or removes later without touching anyone else's arguments
//! (root=, kargs.d, install-time `--karg`, another source's).
//!
//! The sets live in each deployment's record (`deployment.json`,
//! `kargsSources`, beside the complete `kargs`); the arithmetic is
//! [`bootc_sysroot::lifecycle::set_source_kargs`], and staging an update or
//! a switch carries them to the new deployment
//! ([`bootc_sysroot::lifecycle::carry_kargs`]).
//!
//! 1. Check the source name and the options.
//! 2. Under the sysroot lock, pick what to change, as upstream's composefs
//!    backend does: the booted deployment (offline, `--sysroot`: the one the
//!    default entry boots) and its entry, and the staged deployment, if any,
//!    whose entry finalization writes from its record.
//! 3. For each: write the record (temporary file, fsync, rename), then, for
//!    a deployment with an entry, publish the entries with its new options
//!    line (bootloader copy first, then `/boot/loader/entries`; each one
//!    atomic replacement). The change applies at the next boot.
//!
//! A crash between record and entries leaves the record ahead of the entry;
//! running the command again publishes the entry (the no-change check
//! compares the entry too). The steps are [`crate::steps::kargs`].

use std::path::Path;

use anyhow::{Context, Result};
use bootc_boot::entries::renumber;
use bootc_sysroot::lifecycle;
use bootc_sysroot::{Deployment, deployment};
use cap_std_ext::cap_std::{ambient_authority, fs::Dir};
use cap_std_ext::dirext::CapStdExtDirExt;

use crate::steps::kargs as steps;
use crate::target::{Target, base_deployment, current_order, publish_entries};

/// Set the kernel arguments of `source` to `options` (separated by spaces;
/// empty removes them) on the base and the staged deployment. Returns
/// whether anything changed, and the source's new arguments.
pub fn set_options_for_source(
    t: &Target,
    source: &str,
    options: &str,
) -> Result<(bool, Vec<String>)> {
    anyhow::ensure!(
        lifecycle::is_valid_source_name(source),
        "Invalid source name {source:?}: use ASCII letters, digits, '-' and '_'"
    );
    let new = lifecycle::parse_source_options(options)?;
    let store = t.open_store()?;
    let _lock = crate::target::lock(&store, &*t.report)?;

    let order = current_order(t)?;
    let base = base_deployment(t, &order)?;
    let mut changed = false;
    let (kargs, sources) =
        lifecycle::set_source_kargs(&base.kargs, &base.kargs_sources, source, &new);
    let entry_options = order
        .iter()
        .find(|(id, _)| id == base.id())
        .map(|(_, e)| bootc_sysroot::cmdline::split_cmdline(e.options.as_deref().unwrap_or("")))
        .with_context(|| format!("Deployment {} has no boot entry", base.id()))?;
    if kargs != base.kargs || sources != base.kargs_sources || entry_options != kargs {
        let dep = write_record(&t.sysroot, &base, kargs, sources)?;
        t.step(steps::RECORD_WRITTEN);
        let entries = order
            .iter()
            .map(|(id, e)| {
                let mut e = e.clone();
                if id == dep.id() {
                    e.options = Some(dep.cmdline());
                }
                e
            })
            .collect();
        publish_entries(t, dep.bootloader, &renumber(entries, &dep.stateroot))?;
        t.step(steps::ENTRIES_PUBLISHED);
        changed = true;
    }

    if let Some(staged) = lifecycle::read_staged(&t.sysroot)?
        && staged.id != base.id()
    {
        let sd = deployment::load_deployment(&t.sysroot, &staged.id)?
            .with_context(|| format!("The staged deployment {} is missing", staged.id))?;
        let (kargs, sources) =
            lifecycle::set_source_kargs(&sd.kargs, &sd.kargs_sources, source, &new);
        if kargs != sd.kargs || sources != sd.kargs_sources {
            write_record(&t.sysroot, &sd, kargs, sources)?;
            t.step(steps::STAGED_RECORD_WRITTEN);
            changed = true;
        }
    }
    Ok((changed, new))
}

/// Rewrite the record of `dep` with new `kargs` and `sources`, atomically.
fn write_record(
    sysroot: &Path,
    dep: &Deployment,
    kargs: Vec<String>,
    sources: bootc_sysroot::KargsSources,
) -> Result<Deployment> {
    let dep = Deployment {
        kargs,
        kargs_sources: sources,
        ..dep.clone()
    };
    let dir = deployment::deployment_dir(sysroot, dep.id());
    let d = Dir::open_ambient_dir(&dir, ambient_authority())
        .with_context(|| format!("Opening {}", dir.display()))?;
    d.atomic_write(deployment::DEPLOYMENT_JSON, dep.to_json())
        .with_context(|| format!("Writing {}/{}", dir.display(), deployment::DEPLOYMENT_JSON))?;
    bootc_sysroot::fsync_dir(&dir)?;
    Ok(dep)
}
