//! Reading a sysroot's deployments by role (`status`): their boot order
//! from the BLS entries, the staged one from `state/staged.json`, pins, and
//! the [`Host`] they make; pinning (`bootc pin`).

use std::path::Path;

use anyhow::{Context, Result};
use bootc_spec::{
    BootEntry, BootEntryComposefs, BootOrder, BootType, Bootloader, Host, HostSpec, HostType,
    ImageReference, ImageStatus,
};
use bootc_sysroot::deployment::{self, Deployment, Verity};
use bootc_sysroot::lifecycle;

use crate::steps::pin as steps;
use crate::target::Target;

/// One deployment, as status needs it (decoupled from the on-disk record).
#[derive(Debug, Clone)]
pub struct DeploymentView {
    /// The deployment id (the EROFS image's fs-verity digest).
    pub id: String,
    /// The image reference it tracks.
    pub image: ImageReference,
    /// Manifest digest.
    pub digest: String,
    /// Version label.
    pub version: Option<String>,
    /// Build time.
    pub timestamp: Option<chrono::DateTime<chrono::Utc>>,
    /// Architecture.
    pub architecture: String,
    /// The bootloader that boots it.
    pub bootloader: Bootloader,
    /// Whether the store lacks fs-verity.
    pub insecure: bool,
    /// Whether pinned.
    pub pinned: bool,
    /// Whether staged with `--download-only`.
    pub download_only: bool,
    /// On trial, or failed its trial (automatic rollback).
    pub boot_assessment: Option<bootc_spec::BootAssessment>,
    /// The sha256 of its kernel followed by its initramfs, when recorded.
    pub boot_digest: Option<String>,
}

impl DeploymentView {
    /// The deployment as a boot entry of the host's status.
    pub fn entry(&self) -> BootEntry {
        let mut image = ImageStatus::new(
            self.image.clone(),
            self.digest.clone(),
            self.architecture.clone(),
        );
        image.version = self.version.clone();
        image.timestamp = self.timestamp;
        BootEntry {
            image: Some(image),
            pinned: self.pinned,
            download_only: self.download_only,
            composefs: Some(BootEntryComposefs {
                verity: self.id.clone(),
                boot_type: BootType::Bls,
                bootloader: self.bootloader,
                boot_digest: self.boot_digest.clone(),
                missing_verity_allowed: self.insecure,
            }),
            boot_assessment: self.boot_assessment.clone(),
            ..Default::default()
        }
    }
}

/// Build the host from its deployments by role and the booted deployment's
/// id, if the host is booted (offline, the default entry plays "booted").
///
/// - staged: `state/staged.json`;
/// - booted: named by the command line, else the default entry;
/// - rollback: the first entry in boot order that is not the booted one;
/// - rollbackQueued: booted, and the default entry is not the booted one;
/// - otherDeployments: pinned deployments in no other role.
pub fn build_host(state: &HostState, booted: Option<&str>) -> Host {
    let mut host = Host::default();
    let booted_view = match booted {
        Some(id) => state.order.iter().chain(&state.others).find(|d| d.id == id),
        None => state.order.first(),
    };
    if let Some(s) = &state.staged {
        host.status.staged = Some(s.entry());
    }
    let Some(b) = booted_view else {
        if let Some(s) = &state.staged {
            host.spec.image = Some(s.image.clone());
        }
        return host;
    };
    let queued = booted.is_some() && state.order.first().is_some_and(|d| d.id != b.id);
    host.spec = HostSpec {
        image: Some(
            state
                .staged
                .as_ref()
                .map(|s| s.image.clone())
                .unwrap_or_else(|| b.image.clone()),
        ),
        boot_order: if queued {
            BootOrder::Rollback
        } else {
            BootOrder::Default
        },
    };
    host.status.booted = Some(b.entry());
    host.status.ty = Some(HostType::BootcHost);
    host.status.rollback_queued = queued;
    let rollback = state.order.iter().find(|d| d.id != b.id);
    if let Some(r) = rollback {
        host.status.rollback = Some(r.entry());
    }
    let staged_id = state.staged.as_ref().map(|s| s.id.as_str());
    host.status.other_deployments = state
        .order
        .iter()
        .chain(&state.others)
        .filter(|d| {
            d.pinned
                && d.id != b.id
                && Some(d.id.as_str()) != rollback.map(|r| r.id.as_str())
                && Some(d.id.as_str()) != staged_id
        })
        .map(|d| d.entry())
        .collect();
    host
}

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
        boot_assessment: crate::trial::assessment(root, d.id()),
        boot_digest: d.boot_digest.clone(),
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

/// The id of the deployment `what` names on `host` (built from `state`):
/// a slot name, a full id, or a unique prefix of at least 8 characters.
pub fn resolve_deployment(
    host: &bootc_spec::Host,
    state: &HostState,
    what: &str,
) -> Result<String> {
    use bootc_spec::Slot;
    let slot = match what {
        "booted" => Some(Slot::Booted),
        "staged" | "pending" => Some(Slot::Staged),
        "rollback" => Some(Slot::Rollback),
        _ => None,
    };
    if let Some(slot) = slot {
        return host
            .status
            .slot(slot)
            .and_then(|e| e.composefs.as_ref())
            .map(|c| c.verity.clone())
            .with_context(|| format!("There is no {what} deployment"));
    }
    let ids: Vec<&str> = state
        .order
        .iter()
        .chain(&state.staged)
        .chain(&state.others)
        .map(|v| v.id.as_str())
        .collect();
    if ids.contains(&what) {
        return Ok(what.to_owned());
    }
    anyhow::ensure!(
        what.len() >= 8,
        "No deployment {what:?}: give booted, staged, rollback or a deployment id (at least 8 characters)"
    );
    let mut matches: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|i| i.starts_with(what))
        .collect();
    matches.dedup();
    match matches.as_slice() {
        [one] => Ok((*one).to_owned()),
        [] => anyhow::bail!("No deployment {what:?}"),
        _ => anyhow::bail!("{what:?} names several deployments: {}", matches.join(", ")),
    }
}

/// `bootc pin [--unpin] DEPLOYMENT`: keep (or stop keeping) the deployment
/// `what` names through pruning. Returns its id and whether that changed.
pub fn pin(t: &Target, what: &str, pinned: bool) -> Result<(String, bool)> {
    let store = t.open_store()?;
    let _lock = crate::target::lock(&store, &*t.report)?;
    let state = load_state(&t.sysroot)?;
    let host = build_host(&state, t.booted.as_deref());
    let id = resolve_deployment(&host, &state, what)?;
    let changed = lifecycle::set_pinned(&t.sysroot, &id, pinned)?;
    if changed {
        t.step(steps::CHANGED);
    }
    Ok((id, changed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(c: &str) -> DeploymentView {
        DeploymentView {
            id: c.repeat(64 / c.len()),
            image: ImageReference::registry("quay.io/example/os:latest"),
            digest: format!("sha256:{}", c.repeat(64 / c.len())),
            version: None,
            timestamp: None,
            architecture: "amd64".into(),
            bootloader: Bootloader::Grub,
            insecure: true,
            pinned: false,
            download_only: false,
            boot_assessment: None,
            boot_digest: None,
        }
    }

    #[test]
    fn resolve_table() {
        let mut ab = v("ab");
        ab.id = format!("abcdef12{}", "0".repeat(56));
        let mut ab2 = v("ab");
        ab2.id = format!("abcdef12{}", "1".repeat(56));
        let state = HostState {
            order: vec![v("b"), v("a"), ab.clone()],
            staged: Some(v("c")),
            others: vec![ab2.clone()],
        };
        let host = build_host(&state, Some(&v("a").id));
        // (what, Ok(id) or Err(fragment))
        let cases: &[(&str, Result<String, &str>)] = &[
            ("booted", Ok(v("a").id)),
            ("rollback", Ok(v("b").id)),
            ("staged", Ok(v("c").id)),
            ("pending", Ok(v("c").id)),
            (&v("b").id, Ok(v("b").id)),
            ("bbbbbbbb", Ok(v("b").id)),
            ("abcdef12", Err("several")),
            ("abcdef120", Ok(ab.id.clone())),
            ("abcdef121", Ok(ab2.id.clone())),
            ("bbb", Err("at least 8")),
            ("ffffffff", Err("No deployment")),
        ];
        for (what, expect) in cases {
            let got = resolve_deployment(&host, &state, what);
            match (expect, got) {
                (Ok(e), Ok(g)) => assert_eq!(&g, e, "{what}"),
                (Err(frag), Err(e)) => assert!(format!("{e:#}").contains(frag), "{what}: {e:#}"),
                (e, g) => panic!("{what}: expected {e:?}, got {g:?}"),
            }
        }
        let offline = build_host(&HostState::default(), None);
        assert!(resolve_deployment(&offline, &HostState::default(), "staged").is_err());
    }
}
