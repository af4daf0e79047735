//! `bootc container lint` inside real image builds (issue 16): for each
//! check, an image derived from the example image (`localhost/bootc-example:latest`,
//! built by `examples/build.sh latest`) with the bootc under test and one
//! breakage, built with `podman build --isolation=chroot` and ending in
//! `RUN bootc container lint`. The build must fail and its output must name
//! the check and the broken path, with a fix line. The unbroken image must
//! build (no errors).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use bootc_tests_integration::run;

use crate::Ctx;

/// The tests of this module.
pub const TESTS: &[(&str, crate::TestFn)] = &[
    ("lint_example_image_passes", lint_example_image_passes),
    ("lint_broken_image_per_check", lint_broken_image_per_check),
];

const BASE: &str = "localhost/bootc-example:latest";
const LINT: &str = "bootc container lint";
const LINT_FATAL: &str = "bootc container lint --fatal-warnings";

/// One broken image: the RUN that breaks it, the lint command, the check
/// and the path its message must name.
struct Case {
    check: &'static str,
    breakage: &'static str,
    lint: &'static str,
    path: &'static str,
}

const CASES: &[Case] = &[
    Case {
        check: "kernel",
        breakage: "k=$(ls /usr/lib/modules); mkdir /usr/lib/modules/9.9.9-packaging; cp /usr/lib/modules/$k/vmlinuz /usr/lib/modules/9.9.9-packaging/",
        lint: LINT,
        path: "/usr/lib/modules: 2 kernels",
    },
    Case {
        check: "kernel",
        breakage: "rm /usr/lib/modules/*/initramfs.img",
        lint: LINT,
        path: "/initramfs.img: missing",
    },
    Case {
        check: "initramfs-root-setup",
        breakage: "mkdir -p /tmp/i/usr/bin; touch /tmp/i/usr/bin/sh; for f in /usr/lib/modules/*/initramfs.img; do (cd /tmp/i && find . | cpio --quiet -o -H newc | zstd -q -c) > $f; done; rm -rf /tmp/i",
        lint: LINT,
        path: "/initramfs.img: no bootc root set-up",
    },
    Case {
        check: "bootc-kargs",
        breakage: "echo 'kargs = \"quiet\"' > /usr/lib/bootc/kargs.d/99-packaging.toml",
        lint: LINT,
        path: "/usr/lib/bootc/kargs.d/99-packaging.toml",
    },
    Case {
        check: "install-config",
        breakage: "mkdir -p /usr/lib/bootc/install; printf '[install]\\nroot-fs-type = \"zfs\"\\n' > /usr/lib/bootc/install/50-packaging.toml",
        lint: LINT,
        path: "/usr/lib/bootc/install/50-packaging.toml",
    },
    Case {
        check: "etc-usretc",
        breakage: "mkdir -p /usr/etc; touch /usr/etc/packaging",
        lint: LINT,
        path: "/usr/etc",
    },
    Case {
        check: "utf8",
        breakage: "touch \"/usr/share/packaging-$(printf '\\377')\"",
        lint: LINT,
        path: "/usr/share/packaging-\\xff",
    },
    Case {
        check: "api-base-directories",
        breakage: "rmdir /sysroot",
        lint: LINT,
        path: "/sysroot: missing",
    },
    Case {
        check: "nonempty-boot",
        breakage: "touch /boot/vmlinuz-packaging",
        lint: LINT_FATAL,
        path: "/boot/vmlinuz-packaging",
    },
    Case {
        check: "var-run",
        breakage: "rm /var/run; mkdir /var/run",
        lint: LINT,
        path: "/var/run",
    },
    Case {
        check: "var-tmpfiles",
        breakage: "mkdir -p /var/lib/packaging-state",
        lint: LINT_FATAL,
        path: "/var/lib/packaging-state",
    },
    Case {
        check: "run-content",
        breakage: "touch /run/packaging-runtime",
        lint: LINT_FATAL,
        path: "/run/packaging-runtime",
    },
    Case {
        check: "sysusers",
        breakage: "echo 'd /var/lib/packaging-owned 0755 - - -' > /usr/lib/tmpfiles.d/packaging.conf; mkdir /var/lib/packaging-owned; chown 4242:4243 /var/lib/packaging-owned",
        lint: LINT_FATAL,
        path: "/var/lib/packaging-owned: owned by user id 4242",
    },
    Case {
        check: "finalize-staged-unit",
        breakage: "systemctl mask bootc-finalize-staged.service",
        lint: LINT,
        path: "/etc/systemd/system/bootc-finalize-staged.service: masked",
    },
    Case {
        check: "store-format",
        breakage: "cp /usr/bin/bootc /usr/local/bin/bootc-new; printf '#!/bin/sh\\necho old bootc\\n' > /usr/bin/bootc",
        lint: "/usr/local/bin/bootc-new container lint",
        path: "/usr/bin/bootc: does not state",
    },
];

fn ensure_base() -> Result<()> {
    let st = Command::new("podman")
        .args(["image", "exists", BASE])
        .status()
        .context("Running podman image exists")?;
    ensure!(
        st.success(),
        "{BASE} is not in podman's storage: run `examples/build.sh latest` first"
    );
    Ok(())
}

/// A build context holding the bootc under test (debug info stripped).
fn context(ctx: &Ctx) -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("packaging-lint.")
        .tempdir_in("/var/tmp")?;
    let bin = dir.path().join("bootc");
    std::fs::copy(&ctx.bootc.bin, &bin)?;
    run(Command::new("strip").arg("--strip-debug").arg(&bin))?;
    Ok(dir)
}

/// Build `FROM BASE`, our bootc, `breakage`, then `lint`; the build's
/// output and whether it succeeded. Nothing is tagged.
fn build(dir: &Path, breakage: &str, lint: &str) -> Result<(bool, String)> {
    let containerfile =
        format!("FROM {BASE}\nCOPY bootc /usr/bin/bootc\nRUN set -eu; {breakage}\nRUN {lint}\n");
    std::fs::write(dir.join("Containerfile"), containerfile)?;
    let out = Command::new("podman")
        .args([
            "build",
            "--isolation=chroot",
            "--layers=false",
            "--rm",
            "-f",
        ])
        .arg(dir.join("Containerfile"))
        .arg(dir)
        .output()
        .context("Running podman build")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // An untagged image of a successful build is removed again.
    if out.status.success() {
        if let Some(id) = String::from_utf8_lossy(&out.stdout).lines().last() {
            let _ = Command::new("podman")
                .args(["rmi", "-f", id.trim()])
                .output();
        }
    }
    Ok((out.status.success(), text))
}

fn lint_example_image_passes(ctx: &Ctx) -> Result<()> {
    ensure_base()?;
    let dir = context(ctx)?;
    let (ok, text) = build(dir.path(), "true", LINT)?;
    ensure!(ok, "lint failed on the example image:\n{text}");
    ensure!(text.contains("Checks passed: "), "no summary:\n{text}");
    ensure!(
        !text.contains("error["),
        "errors on the example image:\n{text}"
    );
    // --list and --skip from the CLI: the known checks, and an unknown name refused.
    let list = run(Command::new(&ctx.bootc.bin).args(["container", "lint", "--list"]))?;
    let list = String::from_utf8_lossy(&list.stdout);
    for c in CASES {
        ensure!(list.contains(c.check), "--list lacks {}:\n{list}", c.check);
    }
    let (ok, text) = build(
        dir.path(),
        "rmdir /sysroot",
        "bootc container lint --skip api-base-directories",
    )?;
    ensure!(ok, "--skip did not skip:\n{text}");
    ensure!(text.contains("Checks skipped: 1"), "{text}");
    Ok(())
}

fn lint_broken_image_per_check(ctx: &Ctx) -> Result<()> {
    ensure_base()?;
    let dir = context(ctx)?;
    let mut failures = Vec::new();
    for c in CASES {
        let (ok, text) = build(dir.path(), c.breakage, c.lint)?;
        let label = if c.lint == LINT_FATAL {
            "warning"
        } else {
            "error"
        };
        let want = format!("{label}[{}]: ", c.check);
        let found = text
            .lines()
            .position(|l| l.starts_with(&want) && l.contains(c.path));
        let fix = found
            .and_then(|i| text.lines().nth(i + 1))
            .is_some_and(|l| l.starts_with("  fix: "));
        eprintln!(
            "lint case {}: build ok={ok} found={} fix={fix}",
            c.check,
            found.is_some()
        );
        if ok || found.is_none() || !fix {
            failures.push(format!(
                "{} (want a line `{want}...{}...` and a fix line, build must fail):\n{text}",
                c.check, c.path
            ));
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} cases wrong:\n{}",
            failures.len(),
            CASES.len(),
            failures.join("\n")
        );
    }
    Ok(())
}
