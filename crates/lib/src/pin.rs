//! `bootc pin [--unpin] DEPLOYMENT`: keep (or stop keeping) a deployment
//! through pruning.

use std::path::Path;

use anyhow::Result;

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

/// `bootc pin`.
pub fn run(sysroot: &Path, args: PinArgs) -> Result<()> {
    let t = crate::output::target(sysroot, false)?;
    let (id, changed) = bootc_deploy::deployments::pin(&t, &args.deployment, !args.unpin)?;
    let what = if args.unpin { "unpinned" } else { "pinned" };
    if changed {
        println!("Deployment {id} is now {what}");
    } else {
        println!("Deployment {id} was already {what}");
    }
    Ok(())
}
