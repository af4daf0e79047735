//! Reading a sysroot's deployments for `status`: their boot order from the
//! BLS entries, the staged one from `state/staged.json`, pins.

use std::path::Path;

use anyhow::{Context, Result};
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
        boot_assessment: crate::bootcount::assessment(root, d.id()),
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

/// Arguments of `bootc pin`.
#[derive(Debug, clap::Args)]
pub struct PinArgs {
    /// The deployment: `booted`, `staged` (or `pending`), `rollback`, or a
    /// deployment id (or a unique prefix of it, at least 8 characters).
    pub deployment: String,
    /// Remove the pin instead.
    #[arg(long, short)]
    pub unpin: bool,
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

/// `bootc pin [--unpin] DEPLOYMENT`: keep (or stop keeping) a deployment
/// through pruning.
pub fn pin(sysroot: &Path, args: PinArgs) -> Result<()> {
    let t = crate::upgrade::Target::find(sysroot)?;
    let store = bootc_store::Store::open(&t.sysroot)?
        .with_context(|| format!("No image store in {}", t.sysroot.display()))?;
    let _lock = crate::image::lock(&store)?;
    let state = load_state(&t.sysroot)?;
    let host = crate::status::build_host(&state, t.booted.as_deref());
    let id = resolve_deployment(&host, &state, &args.deployment)?;
    let changed = lifecycle::set_pinned(&t.sysroot, &id, !args.unpin)?;
    let what = if args.unpin { "unpinned" } else { "pinned" };
    if changed {
        println!("Deployment {id} is now {what}");
    } else {
        println!("Deployment {id} was already {what}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bootc_spec::ImageReference;

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
        let host = crate::status::build_host(&state, Some(&v("a").id));
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
        let offline = crate::status::build_host(&HostState::default(), None);
        assert!(resolve_deployment(&offline, &HostState::default(), "staged").is_err());
    }
}
