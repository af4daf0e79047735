//! `bootc loader-entries set-options-for-source`: kernel arguments owned by
//! a named source (a tuning daemon, a provisioning tool, an admin) that it
//! replaces or removes later without touching anyone else's arguments
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
//! compares the entry too).

use std::path::Path;

use anyhow::{Context, Result};
use bootc_boot::entries::renumber;
use bootc_store::Store;
use bootc_sysroot::lifecycle;
use bootc_sysroot::{Deployment, deployment};
use cap_std_ext::cap_std::{ambient_authority, fs::Dir};
use cap_std_ext::dirext::CapStdExtDirExt;

use crate::upgrade::Target;

/// `bootc loader-entries ...`
#[derive(Debug, clap::Subcommand)]
pub enum LoaderEntriesCommand {
    /// Set the kernel arguments owned by a source, replacing the ones it set
    /// before; without --options (or with empty options) remove them. Takes
    /// effect at the next boot and carries over to new deployments.
    SetOptionsForSource(SetOptionsArgs),
}

/// Arguments of `bootc loader-entries set-options-for-source`.
#[derive(Debug, clap::Args)]
pub struct SetOptionsArgs {
    /// The name of the source that owns the arguments (ASCII letters,
    /// digits, '-' and '_'), e.g. "tuned".
    #[arg(long)]
    pub source: String,
    /// The source's kernel arguments, separated by spaces; absent or empty
    /// removes the source's arguments.
    #[arg(long)]
    pub options: Option<String>,
}

/// Run a `bootc loader-entries` command.
pub fn run(sysroot: &Path, cmd: LoaderEntriesCommand) -> Result<()> {
    match cmd {
        LoaderEntriesCommand::SetOptionsForSource(args) => set_options_for_source(sysroot, &args),
    }
}

/// `bootc loader-entries set-options-for-source`.
pub fn set_options_for_source(sysroot: &Path, args: &SetOptionsArgs) -> Result<()> {
    anyhow::ensure!(
        lifecycle::is_valid_source_name(&args.source),
        "Invalid source name {:?}: use ASCII letters, digits, '-' and '_'",
        args.source
    );
    let new = lifecycle::parse_source_options(args.options.as_deref().unwrap_or(""))?;
    let t = Target::find(sysroot)?;
    let store = Store::open(&t.sysroot)?
        .with_context(|| format!("No image store in {}", t.sysroot.display()))?;
    let _lock = crate::image::lock(&store)?;

    let order = crate::upgrade::current_order(&t)?;
    let base = crate::upgrade::base_deployment(&t, &order)?;
    let mut changed = false;
    let (kargs, sources) =
        lifecycle::set_source_kargs(&base.kargs, &base.kargs_sources, &args.source, &new);
    let entry_options = order
        .iter()
        .find(|(id, _)| id == base.id())
        .map(|(_, e)| bootc_sysroot::cmdline::split_cmdline(e.options.as_deref().unwrap_or("")))
        .with_context(|| format!("Deployment {} has no boot entry", base.id()))?;
    if kargs != base.kargs || sources != base.kargs_sources || entry_options != kargs {
        let dep = write_record(&t.sysroot, &base, kargs, sources)?;
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
        crate::upgrade::publish_entries(&t, dep.bootloader, &renumber(entries, &dep.stateroot))?;
        changed = true;
    }

    if let Some(staged) = lifecycle::read_staged(&t.sysroot)?
        && staged.id != base.id()
    {
        let sd = deployment::load_deployment(&t.sysroot, &staged.id)?
            .with_context(|| format!("The staged deployment {} is missing", staged.id))?;
        let (kargs, sources) =
            lifecycle::set_source_kargs(&sd.kargs, &sd.kargs_sources, &args.source, &new);
        if kargs != sd.kargs || sources != sd.kargs_sources {
            write_record(&t.sysroot, &sd, kargs, sources)?;
            changed = true;
        }
    }

    match (changed, new.is_empty()) {
        (false, _) => println!("No changes for source {}", args.source),
        (true, true) => println!(
            "Removed the kernel arguments of source {}; effective at the next boot",
            args.source
        ),
        (true, false) => println!(
            "Kernel arguments of source {}: {}; effective at the next boot",
            args.source,
            new.join(" ")
        ),
    }
    Ok(())
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
