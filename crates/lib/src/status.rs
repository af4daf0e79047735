//! `bootc status`: the host as a `BootcHost` object.
//!
//! 1. Find the physical root: `--sysroot PATH` when given; on a booted host
//!    (`composefs=<id>` on the kernel command line) `/sysroot`.
//! 2. Load its deployments and the order the boot entries give them.
//! 3. Build a [`Host`]: booted = the deployment named on the command line
//!    (or, on an unbooted disk, the one that boots next), rollback = the next
//!    one in boot order, pinned others in `otherDeployments`.
//! 4. Print it: human on a terminal, YAML otherwise, or as `--format` says.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bootc_deploy::deployments::build_host;
use bootc_spec::{BootEntry, BootEntryComposefs, Host, Slot};

/// Output formats of `bootc status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFormat {
    /// For people.
    Humanreadable,
    /// YAML.
    Yaml,
    /// JSON.
    Json,
}

/// Arguments of `bootc status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Output format; default: humanreadable on a terminal, YAML otherwise.
    #[arg(long, value_enum)]
    pub format: Option<StatusFormat>,
    /// The version of the output format (only 0 and 1 exist; both print v1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=1))]
    pub format_version: u32,
    /// Same as `--format json` (kept for compatibility).
    #[arg(long, hide = true, conflicts_with = "format")]
    pub json: bool,
    /// Only show the booted deployment.
    #[arg(long)]
    pub booted: bool,
    /// Show more detail in the human-readable output.
    #[arg(long, short)]
    pub verbose: bool,
}

/// The human-readable rendering.
pub fn render_human(host: &Host, verbose: bool) -> String {
    let mut out = String::new();
    let slots = [
        (Slot::Staged, "Staged image"),
        (Slot::Booted, "Booted image"),
        (Slot::Rollback, "Rollback image"),
    ];
    let mut first = true;
    for (slot, label) in slots {
        let Some(entry) = host.status.slot(slot) else {
            if slot == Slot::Rollback && host.status.booted.is_some() {
                out.push_str("\nNo rollback image is present\n");
            }
            continue;
        };
        if !first {
            out.push('\n');
        }
        first = false;
        render_entry(&mut out, slot == Slot::Booted, label, entry, verbose);
    }
    for entry in &host.status.other_deployments {
        out.push('\n');
        render_entry(&mut out, false, "Other image", entry, verbose);
    }
    if let Some(o) = &host.status.usr_overlay {
        out.push_str(&format!("\n/usr overlay: {o}\n"));
    }
    if host.status.booted.is_none() && host.status.staged.is_none() {
        out.push_str("System is not deployed via bootc.\n");
    }
    out
}

fn render_entry(out: &mut String, booted: bool, label: &str, entry: &BootEntry, verbose: bool) {
    use std::fmt::Write as _;
    let mark = if booted { "●" } else { " " };
    let w = label.len() + 2;
    match &entry.image {
        Some(img) => {
            let _ = writeln!(out, "{mark} {label}: {}", img.image);
            let _ = writeln!(
                out,
                "{:>w$}: {} ({})",
                "Digest", img.image_digest, img.architecture
            );
            if let Some(v) = &img.version {
                let ts = img
                    .timestamp
                    .map(|t| format!(" ({})", t.format("%Y-%m-%dT%H:%M:%SZ")))
                    .unwrap_or_default();
                let _ = writeln!(out, "{:>w$}: {v}{ts}", "Version");
            }
        }
        None => {
            let _ = writeln!(out, "{mark} {label}: (not from a container image)");
        }
    }
    if let Some(c) = &entry.composefs {
        let _ = writeln!(out, "{:>w$}: {}", "fs-verity", verity_text(c));
    }
    if entry.pinned && !verbose {
        let _ = writeln!(out, "{:>w$}: yes", "Pinned");
    }
    if entry.download_only && !verbose {
        let _ = writeln!(out, "{:>w$}: Download-only", "Staged state");
    }
    if let Some(a) = &entry.boot_assessment {
        let text = match a.state {
            bootc_spec::AssessmentState::Trial => format!(
                "on trial{}",
                a.tries_left
                    .map(|n| format!(" ({n} tries left)"))
                    .unwrap_or_default()
            ),
            bootc_spec::AssessmentState::Failed => format!(
                "failed{}: {}",
                a.timestamp
                    .map(|t| format!(" at {}", t.format("%Y-%m-%dT%H:%M:%SZ")))
                    .unwrap_or_default(),
                a.reason.as_deref().unwrap_or("no reason recorded")
            ),
        };
        let _ = writeln!(out, "{:>w$}: {text}", "Boot");
    }
    if verbose {
        if let Some(c) = &entry.composefs {
            let _ = writeln!(out, "{:>w$}: {}", "Deployment", c.verity);
            let _ = writeln!(out, "{:>w$}: {}", "Bootloader", c.bootloader);
        }
        let _ = writeln!(
            out,
            "{:>w$}: {}",
            "Pinned",
            if entry.pinned { "yes" } else { "no" }
        );
        if entry.download_only {
            let _ = writeln!(out, "{:>w$}: Download-only", "Staged state");
        }
    }
}

/// Whether the kernel checks the deployment's files, for people.
fn verity_text(c: &BootEntryComposefs) -> &'static str {
    if c.missing_verity_allowed {
        "not enforced (missing verity allowed)"
    } else {
        "enforced"
    }
}

/// Where the physical root of this host is: `--sysroot` when given,
/// `/sysroot` on a booted bootc host, else `/`.
fn physical_root(sysroot: &Path, cmdline: &str) -> (PathBuf, Option<String>) {
    let booted = bootc_sysroot::booted_deployment_id(cmdline);
    if sysroot != Path::new("/") {
        return (sysroot.to_owned(), None);
    }
    match booted {
        Some(id) if Path::new("/sysroot/state/deploy").join(&id).exists() => {
            ("/sysroot".into(), Some(id))
        }
        _ => ("/".into(), None),
    }
}

/// Print the host's status.
pub fn run(sysroot: &Path, args: StatusArgs) -> Result<()> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (root, booted) = physical_root(sysroot, &cmdline);
    let mut state = bootc_deploy::deployments::load_state(&root)
        .with_context(|| format!("Loading deployments of {}", root.display()))?;
    bootc_deploy::seal::apply_verity_modes(&mut state, &root, booted.as_deref())?;
    if let Some(id) = &booted
        && !state.order.iter().chain(&state.others).any(|d| &d.id == id)
    {
        bail!("The booted deployment {id} is not in {}", root.display());
    }
    let mut host = build_host(&state, booted.as_deref());
    if booted.is_some() {
        // Only the running system has a /usr to overlay.
        host.status.usr_overlay = bootc_deploy::usr_overlay::current().unwrap_or_else(|e| {
            tracing::warn!("cannot tell whether /usr has an overlay: {e:#}");
            None
        });
    }
    if args.booted {
        host.filter_to_slot(Slot::Booted);
    }
    let format = match (args.json, args.format) {
        (true, _) => StatusFormat::Json,
        (false, Some(f)) => f,
        (false, None) if std::io::stdout().is_terminal() => StatusFormat::Humanreadable,
        (false, None) => StatusFormat::Yaml,
    };
    let mut out = std::io::stdout().lock();
    match format {
        StatusFormat::Humanreadable => {
            out.write_all(render_human(&host, args.verbose).as_bytes())?
        }
        StatusFormat::Yaml => serde_yaml_ng::to_writer(&mut out, &host).context("Writing YAML")?,
        StatusFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &host).context("Writing JSON")?;
            writeln!(out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bootc_deploy::deployments::{DeploymentView, HostState};
    use bootc_spec::{BootOrder, Bootloader, ImageReference};

    fn view(id: &str, tag: &str) -> DeploymentView {
        DeploymentView {
            id: id.repeat(64 / id.len()),
            image: ImageReference::registry(format!("quay.io/example/os:{tag}")),
            digest: format!("sha256:{}", id.repeat(64 / id.len())),
            version: Some(tag.into()),
            timestamp: Some("2026-11-25T10:00:00Z".parse().unwrap()),
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
    fn boot_digest_reaches_the_entry() {
        let mut v = view("a", "x");
        assert_eq!(v.entry().composefs.unwrap().boot_digest, None);
        v.boot_digest = Some("d".repeat(64));
        assert_eq!(
            v.entry().composefs.unwrap().boot_digest,
            Some("d".repeat(64))
        );
    }

    fn state(order: &[DeploymentView]) -> HostState {
        HostState {
            order: order.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn booted_and_rollback() {
        let v2 = view("b", "v2");
        let v1 = view("a", "v1");
        let host = build_host(&state(&[v2.clone(), v1.clone()]), Some(&v2.id));
        assert_eq!(
            host.spec.image.as_ref().unwrap().image,
            "quay.io/example/os:v2"
        );
        let booted = host.status.booted.as_ref().unwrap();
        assert_eq!(booted.composefs.as_ref().unwrap().verity, v2.id);
        let rb = host.status.rollback.as_ref().unwrap();
        assert_eq!(rb.image.as_ref().unwrap().version.as_deref(), Some("v1"));
        assert!(!host.status.rollback_queued);
        // Booted into the rollback entry: the roles follow the command line,
        // and the default entry is not the booted one: rollback queued.
        let host = build_host(&state(&[v2.clone(), v1.clone()]), Some(&v1.id));
        assert!(host.status.rollback_queued);
        assert_eq!(host.spec.boot_order, BootOrder::Rollback);
        assert_eq!(host.status.booted.unwrap().composefs.unwrap().verity, v1.id);
        assert_eq!(
            host.status.rollback.unwrap().composefs.unwrap().verity,
            v2.id
        );
        // Offline: the default plays booted, never queued.
        let host = build_host(&state(&[v1.clone(), v2.clone()]), None);
        assert!(!host.status.rollback_queued);
        assert_eq!(host.status.booted.unwrap().composefs.unwrap().verity, v1.id);
    }

    #[test]
    fn staged_and_pinned() {
        let (v1, v2, mut v0) = (view("a", "v1"), view("b", "v2"), view("c", "v0"));
        let mut staged = view("d", "v3");
        staged.download_only = true;
        v0.pinned = true;
        let st = HostState {
            order: vec![v2.clone(), v1.clone(), v0.clone()],
            staged: Some(staged.clone()),
            others: vec![],
        };
        let host = build_host(&st, Some(&v2.id));
        let s = host.status.staged.as_ref().unwrap();
        assert!(s.download_only);
        assert_eq!(s.composefs.as_ref().unwrap().verity, staged.id);
        assert_eq!(
            host.spec.image.as_ref().unwrap().image,
            "quay.io/example/os:v3"
        );
        assert_eq!(host.status.other_deployments.len(), 1);
        assert!(host.status.other_deployments[0].pinned);
        assert_eq!(
            host.status.rollback.unwrap().composefs.unwrap().verity,
            v1.id
        );
    }

    #[test]
    fn empty_host_is_not_deployed() {
        let host = build_host(&HostState::default(), None);
        assert!(host.status.booted.is_none());
        assert_eq!(
            render_human(&host, false),
            "System is not deployed via bootc.\n"
        );
    }

    #[test]
    fn human_rendering() {
        let host = build_host(&state(&[view("b", "v2")]), None);
        let expect = "\
● Booted image: quay.io/example/os:v2
        Digest: sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb (amd64)
       Version: v2 (2026-11-25T10:00:00Z)
     fs-verity: not enforced (missing verity allowed)

No rollback image is present
";
        assert_eq!(render_human(&host, false), expect);
        let verbose = render_human(&host, true);
        assert!(
            verbose.contains("fs-verity: not enforced (missing verity allowed)"),
            "{verbose}"
        );
        assert!(verbose.contains("Bootloader: grub"), "{verbose}");
        let mut host = host;
        host.status.usr_overlay = bootc_deploy::usr_overlay::parse_usr_overlay(include_str!(
            "../../deploy/src/fixtures/mountinfo-usr-overlay-rw.txt"
        ));
        let human = render_human(&host, false);
        assert!(
            human.ends_with("\n/usr overlay: transient, read/write\n"),
            "{human}"
        );
    }

    /// What `status --format json` prints validates against host-v1.
    #[test]
    fn status_json_validates_against_schema() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../spec/src/fixtures/host-v1.schema.json"))
                .unwrap();
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap();
        let mut pinned = view("c", "v0");
        pinned.pinned = true;
        for host in [
            build_host(&HostState::default(), None),
            build_host(&state(&[view("b", "v2")]), None),
            build_host(
                &state(&[view("b", "v2"), view("a", "v1"), pinned.clone()]),
                Some(&view("a", "v1").id),
            ),
            build_host(
                &HostState {
                    order: vec![view("b", "v2"), view("a", "v1"), pinned],
                    staged: Some(view("d", "v3")),
                    others: vec![],
                },
                Some(&view("b", "v2").id),
            ),
        ]
        .into_iter()
        .chain(
            [
                include_str!("../../deploy/src/fixtures/mountinfo-usr-overlay-rw.txt"),
                include_str!("../../deploy/src/fixtures/mountinfo-usr-overlay-ro.txt"),
            ]
            .map(|mountinfo| {
                let mut host = build_host(&state(&[view("b", "v2")]), Some(&view("b", "v2").id));
                host.status.usr_overlay = bootc_deploy::usr_overlay::parse_usr_overlay(mountinfo);
                assert!(host.status.usr_overlay.is_some());
                host
            }),
        ) {
            let json = serde_json::to_value(&host).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&json)
                .map(|e| format!("{e} at {}", e.instance_path))
                .collect();
            assert!(errors.is_empty(), "{json:#}: {errors:#?}");
        }
    }

    #[test]
    fn physical_root_choice() {
        assert_eq!(
            physical_root(Path::new("/mnt"), "composefs=abc"),
            (PathBuf::from("/mnt"), None)
        );
        assert_eq!(
            physical_root(Path::new("/"), "quiet"),
            (PathBuf::from("/"), None)
        );
    }
}
