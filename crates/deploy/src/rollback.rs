//! Rollback: the first two boot entries swapped (the rollback deployment
//! becomes the default); a staged deployment is discarded first, and any
//! boot trial ends. The steps are [`crate::steps::rollback`].

use anyhow::{Context, Result};
use bootc_boot::BlsEntry;
use bootc_boot::entries::renumber;
use bootc_sysroot::lifecycle;
use bootc_sysroot::{Deployment, deployment};

use crate::stage::discard_staged;
use crate::steps::rollback as steps;
use crate::target::{Target, current_order, publish_entries};

/// What a rollback did.
#[derive(Debug, Clone)]
pub struct RolledBack {
    /// The staged deployment that was discarded, if any.
    pub discarded: Option<String>,
    /// The deployment that boots next.
    pub next: Deployment,
}

/// Make the rollback deployment the default.
pub fn rollback(t: &Target) -> Result<RolledBack> {
    let store = t.open_store()?;
    let _lock = crate::target::lock(&store, &*t.report)?;
    let order = current_order(t)?;
    let ids: Vec<String> = order.iter().map(|(id, _)| id.clone()).collect();
    let new_order = crate::policy::order_after_rollback(&ids)
        .context("No rollback deployment to go back to")?;
    let mut discarded = None;
    if let Some(s) = lifecycle::read_staged(&t.sysroot)? {
        match deployment::load_deployment(&t.sysroot, &s.id)? {
            Some(d) => discard_staged(t, &store, &d, &order)?,
            None => lifecycle::remove_staged(&t.sysroot)?,
        }
        t.step(steps::STAGED_DISCARDED);
        discarded = Some(s.id);
    }
    let next = deployment::load_deployment(&t.sysroot, &new_order[0])?
        .with_context(|| format!("Deployment {} of the boot entries is missing", new_order[0]))?;
    let entries: Vec<BlsEntry> = new_order
        .iter()
        .map(|id| {
            order
                .iter()
                .find(|(o, _)| o == id)
                .map(|(_, e)| e.clone())
                .expect("same ids")
        })
        .collect();
    crate::trial::end_trial(t, next.bootloader)?;
    publish_entries(t, next.bootloader, &renumber(entries, &next.stateroot))?;
    t.step(steps::ENTRIES_PUBLISHED);
    Ok(RolledBack { discarded, next })
}
