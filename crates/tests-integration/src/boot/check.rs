//! Booting an installed disk and checking from the serial console that the
//! deployment install recorded is what booted.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use bootc_tests_integration::vm::{self, Firmware, Run, STATUS_END, Vm};
use serde_json::Value;

use super::{BOOT_FAILURES, BOOT_TIMEOUT, POWEROFF_GRACE, STEP_TIMEOUT, image};
use crate::guest::{self, diagnose, disk::Deployment, with_report};

/// The deployment's manifest digest is the one podman reports for the
/// source image (nothing re-encoded the manifest on the way).
pub(super) fn check_podman_digest(dep: &Deployment) -> Result<()> {
    let podman = guest::podman_digest(&image())?;
    ensure!(
        podman == dep.manifest_digest,
        "install recorded manifest digest {}, podman has {podman} for {} (install side)",
        dep.manifest_digest,
        image()
    );
    Ok(())
}

/// Boot `disk` and check the guest booted `dep`. Returns the run.
pub(super) fn boot_and_check(disk: &Path, firmware: Firmware, dep: &Deployment) -> Result<Run> {
    boot_and_check_with(disk, firmware, dep, None)
}

/// [`boot_and_check`], with `step` (a directory holding `step.sh`) attached
/// as the BOOTCTEST disk when given; the boot then runs until the test
/// runner and the power-off unit are done.
pub(super) fn boot_and_check_with(
    disk: &Path,
    firmware: Firmware,
    dep: &Deployment,
    step: Option<&Path>,
) -> Result<Run> {
    let mut b = Vm::builder()
        .firmware(firmware)
        .disk(disk)
        .fail_on(BOOT_FAILURES);
    let (until, timeout) = match step {
        Some(dir) => {
            b = b.disk_from_dir(dir, "BOOTCTEST");
            ("BOOTC-POWEROFF", BOOT_TIMEOUT + STEP_TIMEOUT)
        }
        None => (STATUS_END, BOOT_TIMEOUT),
    };
    let mut vm = b.build()?;
    let r = vm.run_until_then_exit(until, POWEROFF_GRACE, timeout)?;
    println!(
        "{firmware:?} boot: status block after {:.1?}, qemu ended after {:.1?} ({:?})",
        r.matched_after.unwrap_or_default(),
        r.elapsed,
        r.end
    );
    check_boot(&r, dep).map_err(|e| with_report(e, &r))?;
    Ok(r)
}

fn check_boot(r: &Run, dep: &Deployment) -> Result<()> {
    ensure!(
        r.matched() && r.log.contains(STATUS_END),
        "no status block on the console: {}",
        diagnose(r)
    );
    let log = &r.log;
    let marker = |m: &str| vm::marker_value(log, m);
    let cmdline =
        marker("BOOTC-CMDLINE").context("no BOOTC-CMDLINE line on the console (status unit)")?;
    ensure!(
        cmdline
            .split_whitespace()
            .any(|a| a == format!("composefs={}", dep.id)),
        "the guest's kernel command line does not select composefs={} (bootloader entry): {cmdline}",
        dep.id
    );
    ensure!(
        log.contains("Reached target multi-user.target") || log.contains("Multi-User System"),
        "systemd did not report reaching multi-user.target on the console"
    );
    let (root_line, root) = mount_marker(r, "BOOTC-FINDMNT-ROOT", false)?;
    ensure!(
        root.fstype == "overlay" || root.fstype == "composefs",
        "/ is {} from {}, not the composefs overlay (initramfs): {root_line}",
        root.fstype,
        root.source
    );
    ensure!(
        root.is_readonly(),
        "/ is mounted read-write (initramfs): {root_line}"
    );
    let (usr_line, usr) = mount_marker(r, "BOOTC-FINDMNT-USR", true)?;
    ensure!(
        usr.is_readonly(),
        "/usr is on a read-write mount (initramfs): {usr_line}"
    );
    ensure!(
        marker("BOOTC-USR-READONLY").is_some() && marker("BOOTC-USR-WRITABLE").is_none(),
        "writing to /usr in the guest did not fail (initramfs)"
    );
    if let Some(sysroot) = marker("BOOTC-FINDMNT-SYSROOT") {
        println!("guest /sysroot: {sysroot}");
    }
    if let Some(rc) = marker("BOOTC-STATUS-FAILED") {
        let block = vm::parse_block(log, vm::STATUS_BEGIN, vm::STATUS_END).unwrap_or_default();
        bail!("`bootc status --format json` failed in the guest ({rc}) (status side):\n{block}");
    }
    let status = r.status_json().context("status JSON (status side)")?;
    check_status(&status, dep)?;
    if !r.exited_cleanly() {
        bail!(
            "the guest did not power off within {POWEROFF_GRACE:?} of the status block ({:?})",
            r.end
        );
    }
    Ok(())
}

/// The status printed in the guest names the installed image and digest.
fn check_status(status: &Value, dep: &Deployment) -> Result<()> {
    let booted = &status["status"]["booted"];
    ensure!(
        !booted.is_null(),
        "status.booted is null (status side): {status}"
    );
    let img = &booted["image"];
    ensure!(
        img["image"]["image"] == dep.image.as_str()
            && img["image"]["transport"] == dep.transport.as_str(),
        "status.booted.image.image is {}, install recorded {}:{} (status side)",
        img["image"],
        dep.transport,
        dep.image
    );
    ensure!(
        dep.image.ends_with(&image()),
        "install recorded image {} for source {} (install side)",
        dep.image,
        image()
    );
    ensure!(
        img["imageDigest"] == dep.manifest_digest.as_str(),
        "status.booted.image.imageDigest is {}, install recorded {} (status side)",
        img["imageDigest"],
        dep.manifest_digest
    );
    Ok(())
}

/// Whether the booted deployment runs with fs-verity enforced, as the
/// console shows it: (`/` mounted with `verity=require`, the status's
/// `composefs.missingVerityAllowed` of the booted deployment).
pub(super) fn booted_verity(r: &Run) -> Result<(bool, bool)> {
    let (_, root) = mount_marker(r, "BOOTC-FINDMNT-ROOT", false)?;
    let status = r.status_json().context("status JSON (status side)")?;
    let allowed = status["status"]["booted"]["composefs"]["missingVerityAllowed"]
        .as_bool()
        .with_context(|| format!("no booted composefs.missingVerityAllowed: {status}"))?;
    Ok((
        root.options.split(',').any(|o| o == "verity=require"),
        allowed,
    ))
}

/// The `findmnt` row the status unit printed after `marker` (with a TARGET
/// column when `with_target`), and the line as printed.
fn mount_marker(r: &Run, marker: &str, with_target: bool) -> Result<(String, vm::MountRow)> {
    let line = vm::marker_value(&r.log, marker)
        .with_context(|| format!("no {marker} line on the console (status unit)"))?;
    let row = vm::parse_findmnt_row(&line, with_target)
        .with_context(|| format!("unexpected findmnt output after {marker}: {line:?}"))?;
    Ok((line, row))
}
