//! `bootc usr-overlay [--read-only]` (alias `usroverlay`): a transient
//! writable overlay on `/usr`; see [`bootc_deploy::usr_overlay`].

use std::path::Path;

use anyhow::Result;
use bootc_spec::FilesystemOverlayAccessMode;

/// Arguments of `bootc usr-overlay`.
#[derive(Debug, clap::Args)]
pub struct UsrOverlayArgs {
    /// Mount the overlay read-only: it can be remounted read/write in a
    /// private mount namespace (e.g. `unshare -m`) and written there while
    /// /usr stays read-only for the rest of the system.
    #[arg(long)]
    pub read_only: bool,
}

/// `bootc usr-overlay`.
pub fn run(sysroot: &Path, args: &UsrOverlayArgs) -> Result<()> {
    anyhow::ensure!(
        sysroot == Path::new("/"),
        "bootc usr-overlay acts on the running system; --sysroot is not supported"
    );
    // Booted from a deployment (composefs= on the command line, and the
    // deployment in /sysroot).
    let t = crate::output::target(sysroot, false)?;
    let access = if args.read_only {
        FilesystemOverlayAccessMode::ReadOnly
    } else {
        FilesystemOverlayAccessMode::ReadWrite
    };
    bootc_deploy::usr_overlay::mount(&t, access)?;
    println!(
        "A transient {access} overlay is now mounted on /usr; all changes there are discarded at reboot"
    );
    Ok(())
}
