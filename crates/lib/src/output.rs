//! What every verb shares to talk to the user: the engine's
//! [`Reporter`] for the terminal, the host a verb acts on, and how the end
//! of an update or a rollback is told (and `--apply` honored).

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use bootc_deploy::apply::Applied;
use bootc_deploy::rollback::RolledBack;
use bootc_deploy::target::imgref_of;
use bootc_deploy::{Reporter, Target};
use bootc_oci::imgref::ImageRef;
use bootc_oci::progress::PullProgress;

/// The terminal: notes on stdout (none when quiet), warnings on stderr,
/// pull progress as [`crate::progress::reporter`] chooses.
#[derive(Debug, Clone, Copy, Default)]
pub struct Terminal {
    /// Print nothing but warnings and errors.
    pub quiet: bool,
}

impl Reporter for Terminal {
    fn info(&self, msg: &str) {
        if !self.quiet {
            println!("{msg}");
        }
    }
    fn notice(&self, msg: &str) {
        println!("{msg}");
    }
    fn warn(&self, msg: &str) {
        eprintln!("{msg}");
    }
    fn pull_progress(&self, imgref: &ImageRef) -> Result<Arc<PullProgress>> {
        crate::progress::reporter(imgref, self.quiet, None)
    }
}

/// The reporter of a verb.
pub fn reporter(quiet: bool) -> Arc<dyn Reporter> {
    Arc::new(Terminal { quiet })
}

/// The host at `sysroot` (see [`Target::find`]), reporting to the terminal.
pub fn target(sysroot: &Path, quiet: bool) -> Result<Target> {
    Target::find(sysroot, reporter(quiet))
}

/// Tell how an update ended, then reboot into it when asked.
pub fn applied(t: &Target, outcome: &Applied, quiet: bool, apply: bool) -> Result<()> {
    let say = |msg: String| {
        if !quiet {
            println!("{msg}");
        }
    };
    match outcome {
        Applied::Unchanged => return Ok(()),
        Applied::Downloaded(what) => {
            say(format!(
                "Downloaded {what}; it is not applied until `bootc upgrade --from-downloaded`"
            ));
            return Ok(());
        }
        Applied::Deployed(what) => {
            say(format!(
                "Deployed {what}; it boots next on {}",
                t.sysroot.display()
            ));
            if apply {
                eprintln!("Not rebooting: --apply has no meaning with --sysroot");
            }
        }
        Applied::Queued(what) => {
            say(format!("Queued for next boot: {what}"));
            if apply {
                bootc_deploy::apply::reboot()?;
            }
        }
    }
    Ok(())
}

/// Tell what a rollback did.
pub fn rolled_back(r: &RolledBack) {
    if let Some(id) = &r.discarded {
        println!("Discarded the staged deployment {id}");
    }
    let next = &r.next;
    println!(
        "Next boot: {} ({}), deployment {}",
        imgref_of(&next.image)
            .map(|r| r.to_string())
            .unwrap_or_else(|_| next.image.image.clone()),
        next.manifest_digest,
        next.id()
    );
}
