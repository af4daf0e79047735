//! The Debian package (issue 16): `scripts/package.sh` builds it (lintian
//! without errors), and in a container of the Debian base image
//! (`localhost/bootc-example-base:*`, made by `examples/build.sh`) install,
//! upgrade to a bumped version and purge leave no unit enabled and no file
//! behind.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use bootc_tests_integration::run;

use crate::Ctx;

/// The tests of this module.
pub const TESTS: &[(&str, crate::TestFn)] = &[(
    "packaging_deb_install_upgrade_purge",
    packaging_deb_install_upgrade_purge,
)];

fn workspace() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Build the package at `version` into `out` with the binaries under test.
fn package(ctx: &Ctx, out: &Path, version: &str) -> Result<String> {
    let setup = ctx.bootc.bin.with_file_name("bootc-initramfs-setup");
    let o = run(Command::new("bash")
        .arg(workspace().join("scripts/package.sh"))
        .env("BOOTC_BIN", &ctx.bootc.bin)
        .env("BOOTC_INITRAMFS_SETUP_BIN", &setup)
        .env("BOOTC_DEB_VERSION", version)
        .env("BOOTC_DEB_OUTDIR", out))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    ensure!(
        !text.lines().any(|l| l.starts_with("E: ")),
        "lintian errors:\n{text}"
    );
    let deb = format!("bootc_{version}_amd64.deb");
    ensure!(out.join(&deb).exists(), "{deb} not built:\n{text}");
    Ok(deb)
}

fn base_image() -> Result<String> {
    let o = run(Command::new("podman").args([
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        "--filter",
        "reference=localhost/bootc-example-base",
    ]))?;
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .next()
        .map(str::to_owned)
        .context("no localhost/bootc-example-base image: run `examples/build.sh latest` first")
}

/// Runs in the container, with the packages in /deb.
const SCRIPT: &str = r#"
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
# What bootc depends on stays installed after a purge: install it first.
deps=$(dpkg-deb -f /deb/bootc_0.1.0_amd64.deb Depends | tr ',' '\n' | sed 's/(.*)//; s/|.*//' | tr -d ' ' | grep -v '^$')
apt-get install -y -q --no-install-recommends $deps >/dev/null
snapshot() {
    find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp \
        -o -path /deb -o -path /var/cache -o -path /var/lib/apt -o -path /var/log \) -prune -o -print | sort
}
units="bootc-finalize-staged.service bootc-boot-check.service bootc-fetch-apply-updates.service bootc-fetch-apply-updates.timer"
check_units() {
    for u in $units; do
        state=$(systemctl is-enabled "$u" 2>/dev/null || true)
        case $state in enabled|enabled-runtime|linked|alias) echo "UNIT-ENABLED $u $state"; exit 1 ;; esac
    done
    if find /etc/systemd -name 'bootc*' | grep -q .; then
        echo "UNIT-LINKS:"; find /etc/systemd -name 'bootc*'; exit 1
    fi
}
snapshot > /tmp/before
apt-get install -y -q --no-install-recommends /deb/bootc_0.1.0_amd64.deb >/dev/null
dpkg-query -W -f '${Version}\n' bootc | grep -qx 0.1.0
bootc --version
bootc container lint --list | grep -q '^kernel '
# The base image excludes /usr/share/man from unpacking (dpkg path-exclude): ask dpkg.
dpkg-deb -c /deb/bootc_0.1.0_amd64.deb | grep -q man8/bootc-upgrade.8.gz
test -f /usr/share/bash-completion/completions/bootc
test -x /usr/lib/bootc/bootc-initramfs-setup
test -f /usr/lib/dracut/modules.d/50bootc/module-setup.sh
test -f /usr/share/initramfs-tools/hooks/bootc
test -f /lib/systemd/system/bootc-finalize-staged.service
check_units
echo INSTALLED-OK
apt-get install -y -q --no-install-recommends /deb/bootc_0.1.1_amd64.deb >/dev/null
dpkg-query -W -f '${Version}\n' bootc | grep -qx 0.1.1
check_units
echo UPGRADED-OK
apt-get purge -y -q bootc >/dev/null
if dpkg-query -W bootc 2>/dev/null; then echo "STILL-KNOWN"; exit 1; fi
snapshot > /tmp/after
if ! diff /tmp/before /tmp/after; then echo LEFT-BEHIND; exit 1; fi
check_units
echo PURGED-OK
"#;

fn packaging_deb_install_upgrade_purge(ctx: &Ctx) -> Result<()> {
    let out = tempfile::Builder::new()
        .prefix("packaging-deb.")
        .tempdir_in("/var/tmp")?;
    package(ctx, out.path(), "0.1.0")?;
    package(ctx, out.path(), "0.1.1")?;
    let base = base_image()?;
    // `podman run` cannot set rlimits here (crun); a chroot build step can.
    std::fs::write(out.path().join("step.sh"), SCRIPT)?;
    std::fs::write(
        out.path().join("Containerfile"),
        format!("FROM {base}\nCOPY . /deb/\nRUN bash /deb/step.sh\n"),
    )?;
    let o = Command::new("podman")
        .args(["build", "--isolation=chroot", "--layers=false", "--rm", "-f"])
        .arg(out.path().join("Containerfile"))
        .arg(out.path())
        .output()
        .context("Running podman build")?;
    if o.status.success() {
        if let Some(id) = String::from_utf8_lossy(&o.stdout).lines().last() {
            let _ = Command::new("podman").args(["rmi", "-f", id.trim()]).output();
        }
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    ensure!(o.status.success(), "install/upgrade/purge failed:\n{text}");
    for step in ["INSTALLED-OK", "UPGRADED-OK", "PURGED-OK"] {
        ensure!(text.contains(step), "{step} missing:\n{text}");
    }
    Ok(())
}
