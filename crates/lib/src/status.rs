//! `bootc status`.

use std::path::Path;

use anyhow::Result;

/// Arguments of `bootc status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {}

/// Print the host's status.
pub fn run(_sysroot: &Path, _args: StatusArgs) -> Result<()> {
    anyhow::bail!("status is not implemented yet")
}
