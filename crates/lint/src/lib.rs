//! Static checks of a bootable container image tree: `bootc container lint`.
//!
//! Run inside an image build (`RUN bootc container lint`) or on an extracted
//! tree (`--rootfs PATH`). Each check ([`Lint`]) looks at the tree through a
//! [`Dir`] handle, never follows a symlink out of it, and returns
//! [`Finding`]s that name a path, say what is wrong and how to fix it.
//!
//! - [`kernel`]: one kernel with its initramfs; our root set-up inside that
//!   initramfs (read with [`cpio`]).
//! - [`config`]: kargs.d and install configuration parse.
//! - [`tree`]: /usr/etc, non-UTF-8 names, base directories, /boot.
//! - [`var`]: /var and /run content, owners of /var content.
//! - [`units`]: bootc-finalize-staged.service.
//! - [`store_format`]: the image's bootc reads our deployment format.

pub mod config;
pub mod cpio;
pub mod kernel;
pub mod store_format;
pub mod tree;
pub mod units;
pub mod var;
mod walk;

use std::collections::BTreeSet;
use std::fmt::Write as _;

use anyhow::{Context, Result, bail};
use cap_std_ext::cap_std::fs::Dir;

/// How bad a failed check is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The image will not boot, install or update correctly.
    Error,
    /// Probably a mistake; fatal with `--fatal-warnings`.
    Warning,
}

impl Severity {
    /// `error` or `warning`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One problem found by a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The path in the image, absolute (`/usr/etc`).
    pub path: String,
    /// What is wrong.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

impl Finding {
    /// A finding at `path` (with or without a leading `/`).
    pub fn new(path: impl AsRef<str>, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        let p = path.as_ref().trim_start_matches('/');
        Self {
            path: format!("/{p}"),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// A check: its findings on a tree, or an error when it could not look.
pub type LintFn = fn(&Dir) -> Result<Vec<Finding>>;

/// A named check.
#[derive(Debug, Clone, Copy)]
pub struct Lint {
    /// The name used by `--skip` and printed with each finding.
    pub name: &'static str,
    /// How bad its findings are.
    pub severity: Severity,
    /// One line for `--list`.
    pub description: &'static str,
    /// The check.
    pub run: LintFn,
}

/// Every check, in the order they run.
pub const LINTS: &[Lint] = &[
    kernel::KERNEL,
    kernel::INITRAMFS_ROOT_SETUP,
    config::KARGS,
    config::INSTALL_CONFIG,
    tree::USR_ETC,
    tree::UTF8,
    tree::BASE_DIRECTORIES,
    tree::NONEMPTY_BOOT,
    var::VAR_RUN,
    var::VAR_CONTENT,
    var::RUN_CONTENT,
    var::VAR_OWNERS,
    units::FINALIZE_STAGED,
    store_format::STORE_FORMAT,
];

/// Look up a check by name.
pub fn find(name: &str) -> Option<&'static Lint> {
    LINTS.iter().find(|l| l.name == name)
}

/// What to run and how to judge it.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Checks not to run, by name.
    pub skip: Vec<String>,
    /// Count warnings as failures.
    pub fatal_warnings: bool,
}

/// The outcome of a run.
#[derive(Debug, Default)]
pub struct Report {
    /// Findings by check, in check order.
    pub findings: Vec<(&'static Lint, Vec<Finding>)>,
    /// Checks that passed.
    pub passed: usize,
    /// Checks skipped.
    pub skipped: usize,
}

impl Report {
    /// Checks with error findings.
    pub fn errors(&self) -> usize {
        self.count(Severity::Error)
    }

    /// Checks with warning findings.
    pub fn warnings(&self) -> usize {
        self.count(Severity::Warning)
    }

    fn count(&self, s: Severity) -> usize {
        self.findings
            .iter()
            .filter(|(l, _)| l.severity == s)
            .count()
    }

    /// Whether the run fails under `opts`.
    pub fn failed(&self, opts: &Options) -> bool {
        self.errors() > 0 || (opts.fatal_warnings && self.warnings() > 0)
    }

    /// The findings for people, at most `per_lint` per check, then a summary.
    pub fn render(&self, per_lint: usize) -> String {
        let mut out = String::new();
        for (lint, findings) in &self.findings {
            let label = match lint.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            for f in findings.iter().take(per_lint) {
                let _ = writeln!(out, "{label}[{}]: {}: {}", lint.name, f.path, f.problem);
                let _ = writeln!(out, "  fix: {}", f.fix);
            }
            if findings.len() > per_lint {
                let _ = writeln!(
                    out,
                    "{label}[{}]: ... and {} more",
                    lint.name,
                    findings.len() - per_lint
                );
            }
        }
        let _ = writeln!(out, "Checks passed: {}", self.passed);
        if self.skipped > 0 {
            let _ = writeln!(out, "Checks skipped: {}", self.skipped);
        }
        if self.warnings() > 0 {
            let _ = writeln!(out, "Checks with warnings: {}", self.warnings());
        }
        if self.errors() > 0 {
            let _ = writeln!(out, "Checks with errors: {}", self.errors());
        }
        out
    }
}

/// Run the checks of `opts` on the tree at `root`.
pub fn run(root: &Dir, opts: &Options) -> Result<Report> {
    let known: BTreeSet<&str> = LINTS.iter().map(|l| l.name).collect();
    for s in &opts.skip {
        if !known.contains(s.as_str()) {
            bail!("unknown check {s:?} for --skip; `bootc container lint --list` shows them");
        }
    }
    let mut report = Report::default();
    for lint in LINTS {
        if opts.skip.iter().any(|s| s == lint.name) {
            report.skipped += 1;
            continue;
        }
        let findings = (lint.run)(root).with_context(|| format!("Running check {}", lint.name))?;
        tracing::debug!("check {}: {} findings", lint.name, findings.len());
        if findings.is_empty() {
            report.passed += 1;
        } else {
            report.findings.push((lint, findings));
        }
    }
    Ok(report)
}

/// The `--list` text: name, severity and description of each check.
pub fn list() -> String {
    let mut out = String::new();
    for l in LINTS {
        let _ = writeln!(
            out,
            "{:<24} {:<8} {}",
            l.name,
            l.severity.as_str(),
            l.description
        );
    }
    out
}

#[cfg(test)]
pub(crate) mod testutil {
    use cap_std_ext::cap_std::{self, fs::Dir};
    use cap_std_ext::dirext::CapStdExtDirExt;

    /// A temporary tree.
    pub fn tree() -> cap_tempfile::TempDir {
        cap_tempfile::tempdir(cap_std::ambient_authority()).unwrap()
    }

    /// Write `content` at `path`, creating parents.
    pub fn file(d: &Dir, path: &str, content: &[u8]) {
        if let Some(p) = std::path::Path::new(path).parent() {
            d.create_dir_all(p).unwrap();
        }
        d.atomic_write(path, content).unwrap();
    }

    /// A symlink at `path` to `target` (which may be absolute).
    pub fn symlink(d: &Dir, target: impl AsRef<std::path::Path>, path: &str) {
        rustix::fs::symlinkat(target.as_ref(), d, path).unwrap();
    }

    /// Create directories.
    pub fn dirs(d: &Dir, paths: &[&str]) {
        for p in paths {
            d.create_dir_all(p).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_findable() {
        let names: BTreeSet<_> = LINTS.iter().map(|l| l.name).collect();
        assert_eq!(names.len(), LINTS.len());
        assert!(find("kernel").is_some());
        assert!(list().contains("nonempty-boot"));
    }

    #[test]
    fn unknown_skip_is_refused() {
        let t = testutil::tree();
        let opts = Options {
            skip: vec!["no-such".into()],
            ..Default::default()
        };
        let e = run(&t, &opts).unwrap_err();
        assert!(format!("{e:#}").contains("--list"));
    }

    #[test]
    fn skip_and_fatal_warnings() {
        let t = testutil::tree();
        // An empty tree fails many checks; skip all but nonempty-boot (a warning).
        testutil::file(&t, "boot/vmlinuz", b"x");
        let skip = LINTS
            .iter()
            .map(|l| l.name)
            .filter(|n| *n != "nonempty-boot")
            .map(String::from)
            .collect::<Vec<_>>();
        let mut opts = Options {
            skip,
            fatal_warnings: false,
        };
        let r = run(&t, &opts).unwrap();
        assert_eq!(
            (r.errors(), r.warnings(), r.skipped),
            (0, 1, LINTS.len() - 1)
        );
        assert!(!r.failed(&opts));
        opts.fatal_warnings = true;
        assert!(r.failed(&opts));
        let text = r.render(10);
        assert!(
            text.contains("warning[nonempty-boot]: /boot/vmlinuz"),
            "{text}"
        );
        assert!(text.contains("  fix: "), "{text}");
    }
}
