//! `bootc rollback`: boot the rollback deployment next.

use std::path::Path;

use anyhow::Result;

/// Arguments of `bootc rollback`.
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// Reboot after changing the boot order.
    #[arg(long)]
    pub apply: bool,
}

/// `bootc rollback`.
pub fn run(sysroot: &Path, args: RollbackArgs) -> Result<()> {
    let t = crate::output::target(sysroot, false)?;
    let r = bootc_deploy::rollback::rollback(&t)?;
    crate::output::rolled_back(&r);
    if args.apply {
        if t.booted.is_some() {
            bootc_deploy::apply::reboot()?;
        } else {
            eprintln!("Not rebooting: --apply has no meaning with --sysroot");
        }
    }
    Ok(())
}
