//! Mount the booted bootc deployment as the new root, from the initramfs.
//!
//! Runs as `bootc-initramfs-setup.service` in a systemd initramfs (dracut
//! module `contrib/dracut/50bootc`) or from initramfs-tools'
//! `local-bottom` (`contrib/initramfs-tools`), after the physical root
//! filesystem is mounted on `/sysroot` and before switch-root.
//!
//! - [`cmdline`]: which deployment the kernel command line names (pure).
//! - [`plan`]: the mounts that set it up, as data (pure).
//! - [`execute`]: carrying out a plan with the kernel's mount API.
//! - [`options`]: the binary's command line.
//! - [`run`]: the whole flow; [`Failure`] is what the binary reports.
//!
//! **Architecture invariant**: this crate never writes to the image store; it
//! opens the composefs repository read-only and only mounts.

pub mod cmdline;
pub mod execute;
pub mod options;
pub mod plan;

use std::fmt;
use std::io::Write;

use anyhow::Context;

use crate::options::Options;

/// A failed setup: the deployment (when the command line named one) and why.
#[derive(Debug)]
pub struct Failure {
    /// The deployment id from the kernel command line, if it was parsed.
    pub deployment: Option<String>,
    /// The error chain.
    pub error: anyhow::Error,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.deployment {
            Some(id) => write!(f, "bootc: cannot mount deployment {id}: {:#}", self.error),
            None => write!(f, "bootc: cannot mount deployment: {:#}", self.error),
        }
    }
}

impl Failure {
    /// Print the failure on stderr and, with `to_kmsg`, to the kernel log
    /// (`/dev/kmsg`, error level), so it reaches the console and the journal
    /// even when stderr goes nowhere.
    pub fn report(&self, to_kmsg: bool) {
        let line = self.to_string();
        eprintln!("{line}");
        if to_kmsg {
            // Best effort: stderr already carries the message.
            if let Ok(mut kmsg) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
                let _ = kmsg.write_all(format!("<3>{line}\n").as_bytes());
            }
        }
    }
}

/// Parse the kernel command line, plan the mounts and (unless `dry_run`)
/// load the kernel modules and execute the plan.
pub fn run(opts: &Options) -> Result<(), Failure> {
    let fail = |deployment: Option<&str>| {
        let deployment = deployment.map(str::to_owned);
        move |error| Failure { deployment, error }
    };
    let cmdline = match &opts.cmdline {
        Some(c) => c.clone(),
        None => std::fs::read_to_string("/proc/cmdline")
            .context("Reading /proc/cmdline")
            .map_err(fail(None))?,
    };
    let args = cmdline::parse_boot_args(&cmdline).map_err(fail(None))?;
    let target = opts.target.as_deref().unwrap_or(&opts.root);
    let plan = plan::plan_mounts(&args, &opts.root, target);
    if opts.dry_run {
        print!("{plan}");
        return Ok(());
    }
    if let Err(e) = execute::load_modules(execute::MODULES) {
        // Not fatal: the modules may be built in, and a missing one makes the
        // mount fail with a clearer error.
        eprintln!("bootc: warning: {e:#}");
    }
    execute::execute(&plan, opts.backing).map_err(fail(Some(&args.deployment)))?;
    println!(
        "bootc: mounted deployment {} on {}",
        args.deployment,
        target.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_message() {
        let cases = [
            (
                Some("ab12"),
                "bootc: cannot mount deployment ab12: Mounting x: No such file or directory (os error 2)",
            ),
            (
                None,
                "bootc: cannot mount deployment: Mounting x: No such file or directory (os error 2)",
            ),
        ];
        for (deployment, expect) in cases {
            let error =
                anyhow::Error::new(std::io::Error::from_raw_os_error(2)).context("Mounting x");
            let f = Failure {
                deployment: deployment.map(str::to_owned),
                error,
            };
            assert_eq!(f.to_string(), expect);
        }
    }

    #[test]
    fn dry_run_prints_plan_only() {
        let opts = Options {
            dry_run: true,
            root: "/nonexistent-root".into(),
            target: None,
            cmdline: Some("composefs=zz".into()),
            backing: execute::ErofsBacking::default(),
        };
        let f = run(&opts).unwrap_err();
        assert!(f.deployment.is_none());
        assert!(f.to_string().contains("invalid composefs=\"zz\""), "{f}");
    }
}
