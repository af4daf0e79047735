//! `bootc install ...` (arguments and flow glue; the work is in `bootc-install`).

use std::path::Path;

use anyhow::Result;

/// `bootc install` verbs.
#[derive(Debug, clap::Subcommand)]
pub enum InstallCommand {
    /// Print the merged install configuration of the image.
    PrintConfiguration,
}

/// Run an install verb.
pub async fn run(_sysroot: &Path, cmd: InstallCommand) -> Result<()> {
    match cmd {
        InstallCommand::PrintConfiguration => anyhow::bail!("install is not implemented yet"),
    }
}
