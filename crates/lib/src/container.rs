//! `bootc container lint`: static checks of an image tree, run inside an
//! image build (`RUN bootc container lint`). The checks live in `bootc-lint`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use cap_std_ext::cap_std::{self, fs::Dir};

/// `bootc container ...`
#[derive(Debug, clap::Subcommand)]
pub enum ContainerCommand {
    /// Check the image being built (or the tree at --rootfs) for mistakes
    /// that would keep it from booting or updating; exits non-zero on an
    /// error (or, with --fatal-warnings, on a warning).
    Lint(LintArgs),
}

/// Arguments of `bootc container lint`.
#[derive(Debug, clap::Args)]
pub struct LintArgs {
    /// The root of the image tree.
    #[arg(long, value_name = "PATH", default_value = "/")]
    pub rootfs: PathBuf,

    /// Fail on warnings too.
    #[arg(long)]
    pub fatal_warnings: bool,

    /// List the checks and exit.
    #[arg(long)]
    pub list: bool,

    /// Do not run the check NAME (repeatable).
    #[arg(long, value_name = "NAME")]
    pub skip: Vec<String>,
}

/// Run `bootc container ...`.
pub fn run(cmd: ContainerCommand) -> Result<()> {
    match cmd {
        ContainerCommand::Lint(args) => lint(args),
    }
}

fn lint(args: LintArgs) -> Result<()> {
    if args.list {
        print!("{}", bootc_lint::list());
        return Ok(());
    }
    let root = Dir::open_ambient_dir(&args.rootfs, cap_std::ambient_authority())
        .with_context(|| format!("Opening {}", args.rootfs.display()))?;
    let opts = bootc_lint::Options {
        skip: args.skip,
        fatal_warnings: args.fatal_warnings,
    };
    let report = bootc_lint::run(&root, &opts)?;
    print!("{}", report.render(10));
    if report.failed(&opts) {
        let what = if report.errors() > 0 {
            "errors"
        } else {
            "warnings (--fatal-warnings)"
        };
        bail!("image checks failed with {what}");
    }
    Ok(())
}
