//! `bootc loader-entries set-options-for-source`: kernel arguments owned by
//! a named source; see [`bootc_deploy::kargs`].

use std::path::Path;

use anyhow::Result;

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
    // The source name is checked before the host is looked at.
    anyhow::ensure!(
        bootc_sysroot::lifecycle::is_valid_source_name(&args.source),
        "Invalid source name {:?}: use ASCII letters, digits, '-' and '_'",
        args.source
    );
    bootc_sysroot::lifecycle::parse_source_options(args.options.as_deref().unwrap_or(""))?;
    let t = crate::output::target(sysroot, false)?;
    let (changed, new) = bootc_deploy::kargs::set_options_for_source(
        &t,
        &args.source,
        args.options.as_deref().unwrap_or(""),
    )?;
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
