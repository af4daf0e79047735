//! Pruning: deployments no boot entry, pin, booted or staged role keeps
//! are removed with their boot files and GC roots (store tags), then the
//! image names no deployment uses, then unreferenced store content. The
//! steps are [`crate::steps::prune`] and [`crate::steps::gc`].

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use bootc_store::{GcReport, Store};
use bootc_sysroot::lifecycle;
use bootc_sysroot::{Deployment, deployment};

use crate::report::Reporter;
use crate::steps::{gc as gc_steps, prune as steps};
use crate::target::{Target, imgref_of, remove_kernels, sweep_boot_dirs};

/// Remove the deployments `remove`, then image names no deployment uses
/// (unless `retain`), then unreferenced store content.
pub(crate) fn prune(
    t: &Target,
    store: &Store,
    all: &[Deployment],
    remove: &[String],
    retain: bool,
) -> Result<()> {
    let (gone, kept): (Vec<&Deployment>, Vec<&Deployment>) =
        all.iter().partition(|d| remove.iter().any(|r| r == d.id()));
    remove_kernels(t, &gone, &kept)?;
    if !gone.is_empty() {
        t.step(steps::BOOT_FILES_REMOVED);
    }
    for d in &gone {
        lifecycle::remove_deployment_dir(&t.sysroot, d.id())?;
        t.step(steps::DEPLOYMENT_REMOVED);
        store.untag(&lifecycle::deployment_tag(d.id()))?;
        t.step(steps::ROOT_DROPPED);
    }
    let remaining = deployment::list_deployments(&t.sysroot)?;
    sweep_boot_dirs(t, &remaining)?;
    if !retain {
        let used: BTreeSet<&str> = remaining
            .iter()
            .map(|d| d.manifest_digest.as_str())
            .collect();
        let tracked: BTreeSet<String> = all
            .iter()
            .filter_map(|d| imgref_of(&d.image).ok().map(|r| r.to_string()))
            .collect();
        for img in store.list()? {
            if tracked.contains(&img.image) && !used.contains(img.manifest_digest.as_str()) {
                store.untag(&img.image)?;
                t.step(gc_steps::NAME_DROPPED);
            }
        }
    }
    let r = collect(t, store)?;
    tracing::info!(
        "gc removed {} objects ({} bytes)",
        r.objects_removed,
        r.bytes_removed
    );
    Ok(())
}

/// Remove the store content no image name (or deployment tag) reaches; the
/// caller holds the writer lock.
pub fn collect(t: &Target, store: &Store) -> Result<GcReport> {
    let r = store.gc(&[])?;
    t.step(gc_steps::COLLECTED);
    Ok(r)
}

/// `bootc image gc`: [`collect`] under the writer lock in the store of
/// `sysroot` (any root with a store, deployed or not); `None` without a store.
pub fn gc(sysroot: &Path, report: Arc<dyn Reporter>) -> Result<Option<GcReport>> {
    let Some(store) = Store::open(sysroot)? else {
        return Ok(None);
    };
    let t = Target {
        sysroot: sysroot.to_owned(),
        booted: None,
        report,
    };
    let _lock = crate::target::lock(&store, &*t.report)?;
    collect(&t, &store).map(Some)
}
