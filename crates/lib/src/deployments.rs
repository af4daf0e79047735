//! Reading a sysroot's deployments for `status`: their boot order from the
//! BLS entries, the staged one from `state/staged.json`, pins.

use std::path::Path;

use anyhow::Result;
use bootc_spec::Bootloader;
use bootc_sysroot::deployment::{self, Deployment, Verity};
use bootc_sysroot::lifecycle;

use crate::status::DeploymentView;

/// The deployments of a sysroot by role.
#[derive(Debug, Clone, Default)]
pub struct HostState {
    /// Deployments with a boot entry, in boot order (the default first).
    pub order: Vec<DeploymentView>,
    /// The staged deployment (not yet in the boot entries).
    pub staged: Option<DeploymentView>,
    /// Deployments neither in the entries nor staged (left by an
    /// interrupted operation), newest first.
    pub others: Vec<DeploymentView>,
}

fn view(root: &Path, d: &Deployment, download_only: bool) -> DeploymentView {
    DeploymentView {
        id: d.id().to_owned(),
        image: d.image.clone(),
        digest: d.manifest_digest.clone(),
        version: d.version.clone(),
        timestamp: d.timestamp.as_deref().and_then(|t| t.parse().ok()),
        architecture: d.architecture.clone(),
        bootloader: match d.bootloader {
            deployment::Bootloader::Systemd => Bootloader::Systemd,
            deployment::Bootloader::Grub => Bootloader::Grub,
            deployment::Bootloader::None => Bootloader::None,
        },
        insecure: d.verity == Verity::Insecure,
        pinned: lifecycle::is_pinned(root, d.id()),
        download_only,
    }
}

/// Load the deployments of the physical root `root` by role.
pub fn load_state(root: &Path) -> Result<HostState> {
    let mut deps = deployment::list_deployments(root)?;
    deps.sort_by(|a, b| b.created.cmp(&a.created));
    let entries =
        bootc_boot::entries::boot_order(bootc_boot::entries::read_entries(&root.join("boot"))?);
    let staged = lifecycle::read_staged(root)?;
    let mut state = HostState::default();
    for (_, e) in &entries {
        let Some(id) = e.deployment_id() else {
            continue;
        };
        if let Some(d) = deps.iter().find(|d| d.id() == id)
            && !state.order.iter().any(|v| v.id == id)
        {
            state.order.push(view(root, d, false));
        }
    }
    // A staged deployment that is already the default entry was finalized
    // (interrupted before staged.json was removed): not staged.
    if let Some(s) = &staged
        && state.order.first().is_none_or(|v| v.id != s.id)
        && let Some(d) = deps.iter().find(|d| d.id() == s.id)
    {
        state.staged = Some(view(root, d, s.download_only));
    }
    for d in &deps {
        let listed = state.order.iter().any(|v| v.id == d.id())
            || state.staged.as_ref().is_some_and(|v| v.id == d.id());
        if !listed {
            state.others.push(view(root, d, false));
        }
    }
    // A sysroot without entries (bootloader "none" and no entries written):
    // newest first, as before entries existed.
    if state.order.is_empty() && entries.is_empty() {
        state.order = std::mem::take(&mut state.others);
    }
    Ok(state)
}
