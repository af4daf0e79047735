//! `bootc internals ...`: what the systemd units run, and inspection
//! commands that are not a stable interface.

use std::path::Path;

use anyhow::Result;
use bootc_deploy::diff::Change;
use bootc_deploy::finalize::FinalizeOutcome;
use clap::Subcommand;

/// `bootc internals ...`
#[derive(Debug, Subcommand)]
pub enum InternalsCommand {
    /// Finalize the staged deployment: merge /etc and write the boot entries
    /// (run by bootc-finalize-staged.service at shutdown).
    FinalizeStaged,
    /// List the files added (A), removed (D) and changed (M) in /usr and in
    /// the image's /etc defaults between the booted and the staged deployment.
    DiffStaged,
    /// Bless the booted deployment when boot-complete.target was reached,
    /// or record the failure and reboot out of a failed trial boot (run by
    /// bootc-boot-check.service).
    BootCheck,
    /// Enable fs-verity on every object of an insecure store, then require
    /// it: deployments mount with fs-verity enforced from the next boot
    /// (needs a kernel and filesystem with fs-verity).
    SealStore,
}

/// Run one `bootc internals` command.
pub fn run(sysroot: &Path, cmd: InternalsCommand) -> Result<()> {
    match cmd {
        InternalsCommand::FinalizeStaged => finalize_staged(sysroot),
        InternalsCommand::DiffStaged => print_diff_staged(sysroot),
        InternalsCommand::BootCheck => {
            bootc_deploy::trial::boot_check(&crate::output::target(sysroot, false)?)
        }
        InternalsCommand::SealStore => {
            let msg = bootc_deploy::seal::seal_store(&crate::output::target(sysroot, false)?)?;
            println!("{msg}");
            Ok(())
        }
    }
}

/// `bootc internals finalize-staged` (the shutdown unit's ExecStop); see
/// [`bootc_deploy::finalize::finalize_staged`].
fn finalize_staged(sysroot: &Path) -> Result<()> {
    let t = match crate::output::target(sysroot, false) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("bootc: nothing to finalize: {e:#}");
            return Ok(());
        }
    };
    match bootc_deploy::finalize::finalize_staged(&t)? {
        FinalizeOutcome::NothingStaged => println!("bootc: no staged deployment"),
        FinalizeOutcome::DownloadOnly(id) => {
            println!("bootc: staged deployment {id} is download-only; not finalizing")
        }
        FinalizeOutcome::Finalized(d) => println!(
            "bootc: finalized deployment {} ({})",
            d.id(),
            d.manifest_digest
        ),
    }
    Ok(())
}

/// The files added, removed and changed in `/usr` and in the image's `/etc`
/// defaults between the booted deployment (offline: the default) and the
/// staged one (download-only or not).
pub fn diff_staged(sysroot: &Path) -> Result<Vec<(String, Change)>> {
    bootc_deploy::diff::diff_staged(&crate::output::target(sysroot, false)?)
}

/// `bootc internals diff-staged`: print [`diff_staged`], one `A|D|M PATH`
/// line each, then a count per top directory.
fn print_diff_staged(sysroot: &Path) -> Result<()> {
    let diff = diff_staged(sysroot)?;
    let mut out = String::new();
    for (p, c) in &diff {
        out.push_str(&format!("{} {p}\n", c.letter()));
    }
    for top in ["/usr", "/etc"] {
        let count = |k: Change| {
            diff.iter()
                .filter(|(p, c)| *c == k && (p == top || p.starts_with(&format!("{top}/"))))
                .count()
        };
        out.push_str(&format!(
            "{top}: {} added, {} removed, {} changed\n",
            count(Change::Added),
            count(Change::Removed),
            count(Change::Changed)
        ));
    }
    print!("{out}");
    Ok(())
}
