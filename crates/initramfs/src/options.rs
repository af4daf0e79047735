//! Command-line options of `bootc-initramfs-setup` (hand-parsed: the binary
//! stays small and only `bootc-lib` depends on clap).

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::execute::ErofsBacking;

/// The physical root in the initramfs, where the root filesystem is mounted.
pub const DEFAULT_ROOT: &str = "/sysroot";

/// Usage text for `--help` and errors.
pub const USAGE: &str = "\
Usage: bootc-initramfs-setup [OPTIONS]

Mount the deployment named by composefs=<ID> on the kernel command line as the
new root, on top of the physical root (run in the initramfs, after sysroot.mount).

Options:
  --dry-run         print the mount plan and exit
  --root DIR        the physical root (default: /sysroot)
  --target DIR      where to mount the new root (default: the physical root itself)
  --cmdline TEXT    use TEXT instead of /proc/cmdline
  --loop            mount the EROFS image through a loop device
  -h, --help        print this help
";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Print the plan instead of mounting.
    pub dry_run: bool,
    /// The physical root.
    pub root: PathBuf,
    /// Where the new root goes; `None` means on top of `root`.
    pub target: Option<PathBuf>,
    /// A kernel command line to use instead of `/proc/cmdline`.
    pub cmdline: Option<String>,
    /// How to mount the EROFS image.
    pub backing: ErofsBacking,
}

/// The result of parsing the arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Run with these options.
    Run(Options),
    /// Print [`USAGE`] and exit successfully.
    Help,
}

/// Parse the arguments (without the program name).
pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Parsed> {
    let mut opts = Options {
        dry_run: false,
        root: PathBuf::from(DEFAULT_ROOT),
        target: None,
        cmdline: None,
        backing: ErofsBacking::default(),
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let Some(arg_str) = arg.to_str() else {
            bail!("unexpected argument {arg:?}");
        };
        let (name, inline) = match arg_str.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(OsString::from(v))),
            _ => (arg_str, None),
        };
        let mut value = |what: &str| -> Result<OsString> {
            match inline.clone().or_else(|| args.next()) {
                Some(v) => Ok(v),
                None => bail!("{name} needs {what}"),
            }
        };
        match name {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--dry-run" => opts.dry_run = true,
            "--loop" => opts.backing = ErofsBacking::Loop,
            "--root" => opts.root = value("a directory")?.into(),
            "--target" => opts.target = Some(value("a directory")?.into()),
            "--cmdline" => match value("a kernel command line")?.into_string() {
                Ok(s) => opts.cmdline = Some(s),
                Err(s) => bail!("--cmdline is not UTF-8: {s:?}"),
            },
            _ => bail!("unexpected argument {arg_str:?}"),
        }
        if inline.is_some() && matches!(name, "--dry-run" | "--loop" | "-h" | "--help") {
            bail!("{name} takes no value");
        }
    }
    Ok(Parsed::Run(opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Parsed> {
        parse_args(args.iter().map(OsString::from))
    }

    #[test]
    fn defaults_and_values() {
        let Parsed::Run(o) = parse(&[]).unwrap() else {
            panic!("expected options")
        };
        assert_eq!(o.root, PathBuf::from("/sysroot"));
        assert_eq!((o.dry_run, o.target, o.cmdline), (false, None, None));
        assert_eq!(o.backing, ErofsBacking::FileThenLoop);

        let Parsed::Run(o) = parse(&[
            "--dry-run",
            "--root",
            "/tmp/s",
            "--target=/tmp/t",
            "--cmdline",
            "composefs=x a=b",
            "--loop",
        ])
        .unwrap() else {
            panic!("expected options")
        };
        assert!(o.dry_run);
        assert_eq!(o.root, PathBuf::from("/tmp/s"));
        assert_eq!(o.target, Some(PathBuf::from("/tmp/t")));
        assert_eq!(o.cmdline.as_deref(), Some("composefs=x a=b"));
        assert_eq!(o.backing, ErofsBacking::Loop);

        assert_eq!(parse(&["--dry-run", "--help"]).unwrap(), Parsed::Help);
    }

    #[test]
    fn errors() {
        let cases: &[(&[&str], &str)] = &[
            (&["--root"], "--root needs a directory"),
            (&["--frobnicate"], "unexpected argument \"--frobnicate\""),
            (&["sysroot"], "unexpected argument \"sysroot\""),
            (&["--dry-run=yes"], "--dry-run takes no value"),
        ];
        for (args, expect) in cases {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(expect), "{args:?}: {err}");
        }
    }
}
