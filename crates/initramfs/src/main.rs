//! `bootc-initramfs-setup`: mount the deployment named on the kernel command
//! line as the new root, in the initramfs. See the `bootc_initramfs` crate.
//!
//! Exit codes: 0 success, 1 the deployment could not be set up (the message
//! `bootc: cannot mount deployment <ID>: <error>` went to stderr and
//! `/dev/kmsg`), 2 bad usage.

use bootc_initramfs::options::{Parsed, USAGE, parse_args};

/// Exit code for a failed setup.
const EXIT_FAILED: i32 = 1;
/// Exit code for unusable arguments.
const EXIT_USAGE: i32 = 2;

fn main() {
    let opts = match parse_args(std::env::args_os().skip(1)) {
        Ok(Parsed::Run(opts)) => opts,
        Ok(Parsed::Help) => {
            print!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("bootc-initramfs-setup: {e:#}\n\n{USAGE}");
            std::process::exit(EXIT_USAGE);
        }
    };
    if let Err(failure) = bootc_initramfs::run(&opts) {
        failure.report(!opts.dry_run);
        std::process::exit(EXIT_FAILED);
    }
}
