//! [`Guest`]: an installed disk and its BOOTCTEST disk, booted once per
//! step (a fresh qemu each time, `-no-reboot`), and the failure reports of
//! every VM scenario.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bootc_tests_integration::Bootc;
use bootc_tests_integration::vm::{self, Firmware, Run, RunEnd, Vm};

use super::step::{Step, make_test_disk, write_step};
use super::{BOOT_TIMEOUT, DiskFile, SHUTDOWN_GRACE, bootloader, install_to_disk};

/// What every step of a [`Guest`] runs first: the status document
/// (`J status`), the example image's variant and the kernel command line
/// (`V variant`, `V cmdline`).
const STEP_HEAD: &str = "J status bootc status --format json
V variant cat /usr/share/bootc-example/variant
V cmdline cat /proc/cmdline
";

/// An installed disk with its BOOTCTEST disk ([`super::make_test_disk`]),
/// booted once per step; each step runs after [`STEP_HEAD`].
pub(crate) struct Guest {
    /// The installed disk (the one the firmware boots); its directory
    /// holds the BOOTCTEST disk and whatever else the scenario keeps.
    pub(crate) disk: DiskFile,
    /// The BOOTCTEST disk.
    testdisk: PathBuf,
    firmware: Firmware,
    boots: u32,
}

impl Guest {
    /// Install `img` (containers-storage) on a new sparse disk of `size`
    /// bytes for `firmware` (`extra` install arguments), and make the
    /// BOOTCTEST disk with an OCI layout of each (image, name) of
    /// `layouts`; returns the guest and the layouts' manifest digests.
    pub(crate) fn install(
        bootc: &Bootc,
        img: &str,
        firmware: Firmware,
        extra: &[&str],
        size: u64,
        layouts: &[(&str, &str)],
    ) -> Result<(Self, Vec<String>)> {
        let disk = DiskFile::new(size)?;
        install_to_disk(bootc, img, bootloader(firmware), extra, &disk.path)?;
        let start = Instant::now();
        let (testdisk, digests) = make_test_disk(disk.dir.path(), layouts)?;
        println!("OCI layouts + BOOTCTEST disk: {:.1?}", start.elapsed());
        let guest = Self {
            disk,
            testdisk,
            firmware,
            boots: 0,
        };
        Ok((guest, digests))
    }

    /// The directory of the disk files, for other files of the scenario.
    pub(crate) fn workdir(&self) -> &Path {
        self.disk.dir.path()
    }

    fn start(&mut self, step: &str) -> Result<Vm> {
        write_step(&self.testdisk, &format!("{STEP_HEAD}{step}"))?;
        self.boots += 1;
        Vm::builder()
            .firmware(self.firmware)
            .disk(&self.disk.path)
            .disk(&self.testdisk)
            .build()
    }

    /// Boot once with `step`; wait for `until`, then up to `grace` for qemu
    /// to exit by itself (it is killed after that).
    pub(crate) fn boot_until(
        &mut self,
        name: &str,
        step: &str,
        until: &str,
        grace: Duration,
    ) -> Result<Run> {
        let mut vm = self.start(step)?;
        let r = vm.run_until_then_exit(until, grace, BOOT_TIMEOUT + grace)?;
        println!(
            "boot {} ({name}): {until} after {:.1?}, qemu ended after {:.1?} ({:?})",
            self.boots,
            r.matched_after.unwrap_or_default(),
            r.elapsed,
            r.end
        );
        Ok(r)
    }

    /// Boot once with `step` until qemu exits by itself (a power-off, or a
    /// reboot under `-no-reboot`), which it must.
    pub(crate) fn boot_to_exit(&mut self, name: &str, step: &str) -> Result<Run> {
        let mut vm = self.start(step)?;
        let r = vm.run_to_exit(BOOT_TIMEOUT + SHUTDOWN_GRACE)?;
        println!(
            "boot {} ({name}): qemu ended after {:.1?} ({:?})",
            self.boots, r.elapsed, r.end
        );
        ensure!(
            r.exited_cleanly(),
            "boot {} ({name}) did not end by itself ({:?})\n{}",
            self.boots,
            r.end,
            report(&r, None)
        );
        Ok(r)
    }

    /// Boot, run `step` to its end (exit status 0) and power off, finalizing
    /// anything staged.
    pub(crate) fn boot_step(&mut self, name: &str, step: &str) -> Result<(Run, Step)> {
        let r = self.boot_until(name, step, "BOOTC-POWEROFF", SHUTDOWN_GRACE)?;
        let s = Step::parse(&r).with_context(|| report(&r, None))?;
        check(&r, Some(&s), name, || {
            ensure!(s.rc == Some(0), "step.sh exited with {:?}", s.rc);
            ensure!(
                r.exited_cleanly(),
                "the guest did not power off ({:?}): shutdown/finalize hung?",
                r.end
            );
            Ok(())
        })?;
        Ok((r, s))
    }

    /// Boot with a step that ends in `bootc switch --apply`: the step's
    /// `systemctl` wrapper prints `BOOTC-APPLY-REBOOT` when bootc asks for
    /// the reboot; qemu (`-no-reboot`) then exits by itself. Checks that it
    /// was that reboot, not the test's power-off.
    pub(crate) fn boot_step_apply(&mut self, name: &str, step: &str) -> Result<(Run, Step)> {
        let r = self.boot_until(name, step, "BOOTC-APPLY-REBOOT", SHUTDOWN_GRACE)?;
        let s = Step::parse(&r).with_context(|| report(&r, None))?;
        let log = vm::tail_lines(&r.log, usize::MAX);
        check(&r, Some(&s), name, || {
            ensure!(
                r.matched(),
                "bootc switch --apply did not ask systemctl to reboot"
            );
            ensure!(
                r.exited_cleanly(),
                "the guest did not reboot ({:?}): shutdown/finalize hung?",
                r.end
            );
            ensure!(
                log.contains("reboot: Restarting system") && !log.contains("reboot: Power down"),
                "the guest did not end with a reboot (kernel message)"
            );
            ensure!(
                !log.contains("BOOTC-POWEROFF"),
                "the test's power-off unit ran: the reboot did not come from --apply"
            );
            Ok(())
        })?;
        Ok((r, s))
    }
}

/// Console lines that tell which stage failed.
const TELLTALES: &[&str] = &[
    "bootc",
    "finalize",
    "composefs",
    "Kernel panic",
    "emergency",
    "Emergency",
    "FAILED",
    "Failed",
    "error",
    "Error",
    "not found",
    "Timed out",
    "Dependency failed",
    "BdsDxe",
    "grub",
    "GRUB",
    "systemd-boot",
    "Linux version",
    "Command line",
];

/// A failure report of a boot: the stage that broke ([`diagnose`]), the
/// step output if any, telltale console lines, the console tail and qemu's
/// stderr.
pub(crate) fn report(r: &Run, s: Option<&Step>) -> String {
    let clean = vm::tail_lines(&r.log, usize::MAX);
    let tells: Vec<&str> = clean
        .lines()
        .filter(|l| TELLTALES.iter().any(|t| l.contains(t)))
        .collect();
    let tells = &tells[tells.len().saturating_sub(50)..];
    let step = match s {
        Some(s) => format!("\n--- step output (rc {:?}) ---\n{}", s.rc, s.text),
        None => String::new(),
    };
    format!(
        "{}{step}\n--- telltale console lines ---\n{}\n--- last console lines ---\n{}\n--- qemu stderr ---\n{}",
        diagnose(r),
        tells.join("\n"),
        r.tail(60),
        r.qemu_stderr.trim()
    )
}

/// Run `check` on what a boot printed; a failure carries the boot's
/// [`report`] and then `what` (the step it checked).
pub(crate) fn check<T>(
    r: &Run,
    s: Option<&Step>,
    what: &str,
    check: impl FnOnce() -> Result<T>,
) -> Result<T> {
    check()
        .with_context(|| report(r, s))
        .with_context(|| what.to_owned())
}

/// `e` followed by the failure report of `r`.
pub(crate) fn with_report(e: anyhow::Error, r: &Run) -> anyhow::Error {
    anyhow::anyhow!("{e:#}\n{}", report(r, None))
}

/// Say which stage of the boot chain failed, from what the console shows.
pub(crate) fn diagnose(r: &Run) -> String {
    let log = vm::tail_lines(&r.log, usize::MAX);
    let has = |t: &str| log.contains(t);
    // The second "Welcome to" is the deployment's systemd; the first is the initrd's.
    let switched_root = log
        .lines()
        .any(|l| l.contains("Welcome to") && !l.contains("Initramfs"));
    let stage = if !r.qemu_stderr.trim().is_empty()
        && matches!(r.end, RunEnd::Exited(s) if !s.success())
    {
        "qemu itself failed (see its stderr)"
    } else if !has("Linux version") {
        if has("GNU GRUB") {
            "bootloader: GRUB ran but no kernel printed on the serial console (entry, kernel path, or no console=ttyS0 in its options)"
        } else if has("BdsDxe") {
            "firmware/bootloader: OVMF ran but no kernel printed on the serial console (ESP, systemd-boot, entry, or console=ttyS0)"
        } else {
            "firmware/bootloader: nothing booted (no bootloader output, no kernel)"
        }
    } else if has("cannot mount deployment") {
        "initramfs: bootc-initramfs-setup could not mount the deployment"
    } else if has("Kernel panic") {
        "kernel panic"
    } else if !has("bootc: mounted deployment") && !switched_root {
        "initramfs: bootc-initramfs-setup never reported mounting the deployment (not in the initramfs, not started, or the root filesystem was not found)"
    } else if !switched_root {
        "initramfs: the deployment was mounted but systemd never switched root into it"
    } else if has("emergency mode") || has("Emergency Mode") {
        "the deployment's systemd entered emergency mode"
    } else if !has("multi-user.target") && !has("Multi-User System") {
        "the deployment's systemd did not reach multi-user.target"
    } else if !has(vm::STATUS_BEGIN) {
        "multi-user reached but no status block: bootc-status-console.service did not print (status unit)"
    } else {
        "the boot chain worked and the status block was printed; the assertion says what is wrong"
    };
    let failure = r
        .failure
        .as_deref()
        .map(|f| format!(", stopped on {f:?}"))
        .unwrap_or_default();
    format!(
        "stage: {stage} ({:?} after {:.1?}{failure})",
        r.end, r.elapsed
    )
}
