//! VM boot tests: install the example image to a disk image file, boot it in
//! qemu (TCG) with SeaBIOS/GRUB or OVMF/systemd-boot, and check from the
//! serial console that the installed deployment is what booted.
//!
//! The example image (`localhost/bootc-example:latest`, built by
//! `examples/build.sh latest`) carries `bootc-status-console.service`: once
//! multi-user is reached it prints `bootc status --format json` between
//! `BOOTC-STATUS-BEGIN` and `BOOTC-STATUS-END`, then marker lines
//! (`BOOTC-FINDMNT-ROOT`, `BOOTC-FINDMNT-USR`, `BOOTC-USR-READONLY`,
//! `BOOTC-CMDLINE`, ...) on the console, and powers off when the kernel
//! command line has `bootc.test.poweroff=1`.
//!
//! Flow of each disk test:
//! 1. [`install_example`] (or partition + [`install_to_filesystem`]) onto a
//!    6 GiB sparse file under /var/tmp;
//! 2. [`read_deployment`]: mount the root partition read-only and read the
//!    one `state/deploy/*/deployment.json`: the image and manifest digest
//!    bootc recorded;
//! 3. [`boot_and_check`]: boot, wait for the status block and the power-off,
//!    then assert: the kernel booted the deployment, systemd reached
//!    multi-user, `/` is the composefs overlay, `/usr` is read-only, and the
//!    status names the installed image and digest. A failure says which
//!    stage broke ([`guest::diagnose`]) with the relevant console lines.
//!
//! The UEFI test boots twice: the first boot seals the store (an install
//! from this host is insecure) from a BOOTCTEST step, the second checks the
//! deployment is mounted with fs-verity required ([`uefi_seal_test`]). The
//! to-filesystem test installs with a separate /boot and checks the booted
//! host mounts it at /sysroot/boot.
//!
//! Only a missing qemu skips these tests (with a "SKIP:" line); a failing
//! install fails the test. VM tests run one at a time ([`vm::exclusive`]).

mod busybox;
mod check;

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bootc_tests_integration::run;
use bootc_tests_integration::vm::{self, Firmware, RunEnd, Vm, partitions};

use busybox::{vm_harness_busybox_bios, vm_harness_busybox_uefi};
use check::{boot_and_check, boot_and_check_with, booted_verity, check_podman_digest};

use crate::guest::disk::{Deployment, read_deployment_in};
use crate::guest::{
    self, DiskFile, LoopDev, Mounted, ROOT_X86_64, Step, install_to_disk, install_to_filesystem,
    read_deployment, report, skip_without_qemu, with_report, with_root_fs,
};
use crate::{Ctx, TestFn};

/// The tests of this module.
pub const TESTS: &[(&str, TestFn)] = &[
    ("vm_harness_busybox_bios", vm_harness_busybox_bios),
    ("vm_harness_busybox_uefi", vm_harness_busybox_uefi),
    ("vm_boot_bios_grub", vm_boot_bios_grub),
    ("vm_boot_uefi_systemd_boot", vm_boot_uefi_systemd_boot),
    ("vm_boot_to_filesystem_bios", vm_boot_to_filesystem_bios),
    (
        "vm_boot_broken_deployment_stops_loudly",
        vm_boot_broken_deployment_stops_loudly,
    ),
];

/// The image every disk test installs.
/// (`BOOTC_TEST_IMAGE` overrides it, e.g. to try a freshly built tag.)
const IMAGE: &str = "localhost/bootc-example:latest";

/// The image under test: `$BOOTC_TEST_IMAGE`, else [`IMAGE`].
fn image() -> String {
    std::env::var("BOOTC_TEST_IMAGE").unwrap_or_else(|_| IMAGE.to_owned())
}

/// Size of the sparse disk image files.
const DISK_SIZE: u64 = 6 << 30;

/// Bound of one systemd boot under TCG (measured 25–35 s on an idle
/// machine; the machine is shared with builds).
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// Console texts after which a boot cannot succeed: stop there rather than
/// at the timeout. (The example image's root has no password, so its
/// emergency shell would wait for a login forever.)
const BOOT_FAILURES: &[&str] = &[
    "Kernel panic - not syncing",
    "bootc: cannot mount deployment",
    "You are in emergency mode",
    "Entering emergency mode",
    "Press any key to continue",
];

/// After the status block, time for the guest to power off by itself.
const POWEROFF_GRACE: Duration = Duration::from_secs(60);

/// Extra bound of a boot that runs a test step (sealing the store reads
/// every object under TCG).
const STEP_TIMEOUT: Duration = Duration::from_secs(300);

/// GPT type of a BIOS boot partition (GRUB's core image).
const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
/// GPT type of a generic Linux filesystem (the separate /boot).
const LINUX_DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
/// Label of the separate /boot filesystem of the to-filesystem test.
const BOOT_LABEL: &str = "bootcboot";

/// Fail unless the image under test is in podman's storage.
fn ensure_example_image() -> Result<()> {
    guest::require_image(&image(), "`examples/build.sh latest` first")
}

/// Install the image under test on a new disk file with `bootloader`, and
/// read back the deployment install recorded (its manifest digest is
/// podman's).
fn install_example(ctx: &Ctx, bootloader: &str) -> Result<(DiskFile, Deployment)> {
    ensure_example_image()?;
    let disk = DiskFile::new(DISK_SIZE)?;
    install_to_disk(&ctx.bootc, &image(), bootloader, &[], &disk.path)?;
    let dep = read_deployment(&disk.path)?;
    println!("installed deployment {}: {}", dep.id, dep.json);
    check_podman_digest(&dep)?;
    Ok((disk, dep))
}

// --- The tests ----------------------------------------------------------------

fn disk_test(ctx: &Ctx, firmware: Firmware, bootloader: &str) -> Result<()> {
    let (disk, dep) = install_example(ctx, bootloader)?;
    let parts = partitions(&disk.path)?;
    if bootloader == "grub" {
        ensure!(
            parts.iter().any(|p| p.type_guid == BIOS_BOOT),
            "GRUB install without a BIOS boot partition (install layout): {parts:?}"
        );
    }
    boot_and_check(&disk.path, firmware, &dep)?;
    drop(disk.dir);
    Ok(())
}

/// The step of the first boot of [`vm_boot_uefi_systemd_boot`]: seal the
/// store (twice: the second run must find it sealed).
const SEAL_STEP: &str = "set -eux
bootc internals seal-store
bootc internals seal-store | grep 'already sealed'
";

/// UEFI/systemd-boot install on ext4 `-O verity` by this host (no fs-verity:
/// an insecure store), then the way to secure mode: the first boot shows
/// verity not enforced and seals the store (`bootc internals seal-store`
/// from the BOOTCTEST step); the second boot mounts the deployment with
/// fs-verity required and status says so. After the guest sealed it, the
/// host never reads the store (this kernel cannot open files with
/// fs-verity on ext4).
fn uefi_seal_test(ctx: &Ctx) -> Result<()> {
    let (disk, dep) = install_example(ctx, "systemd")?;
    ensure!(
        dep.json["verity"] == "insecure",
        "this host has no fs-verity, yet install recorded {} (install side)",
        dep.json["verity"]
    );

    let step = guest::step::step_dir(SEAL_STEP)?;
    let r = boot_and_check_with(&disk.path, Firmware::Uefi, &dep, Some(step.path()))?;
    let check_first = || -> Result<()> {
        ensure!(
            booted_verity(&r)? == (false, true),
            "first boot: expected verity not enforced on / and missingVerityAllowed=true, got {:?}",
            booted_verity(&r)?
        );
        let s = Step::parse(&r)?;
        ensure!(
            s.rc == Some(0),
            "seal-store failed in the guest (seal side):\n{}",
            s.text
        );
        Ok(())
    };
    check_first().map_err(|e| with_report(e, &r))?;

    let r = boot_and_check(&disk.path, Firmware::Uefi, &dep)?;
    let got = booted_verity(&r).map_err(|e| with_report(e, &r))?;
    ensure!(
        got == (true, false),
        "after sealing: expected / mounted with verity=require and missingVerityAllowed=false, got {got:?} (initramfs/status side)\n{}",
        report(&r, None)
    );
    drop(disk.dir);
    Ok(())
}

fn vm_boot_bios_grub(ctx: &Ctx) -> Result<()> {
    skip_without_qemu!();
    let _l = vm::exclusive();
    disk_test(ctx, Firmware::Bios, "grub")
}

fn vm_boot_uefi_systemd_boot(ctx: &Ctx) -> Result<()> {
    skip_without_qemu!();
    let _l = vm::exclusive();
    uefi_seal_test(ctx)
}

/// Partition a loop device ourselves (GPT: BIOS boot, a separate ext4
/// /boot, ext4 root), mount the root and the boot filesystem at ROOT/boot,
/// `bootc install to-filesystem --boot-mount-spec LABEL=…` into it, unmount,
/// boot with SeaBIOS. GRUB loads the kernel from the boot filesystem, and a
/// BOOTCTEST step shows the booted host mounted it at /sysroot/boot from the
/// deployment's fstab line.
fn vm_boot_to_filesystem_bios(ctx: &Ctx) -> Result<()> {
    skip_without_qemu!();
    let _l = vm::exclusive();
    ensure_example_image()?;
    let disk = DiskFile::new(DISK_SIZE)?;
    let uuid;
    let dep = {
        let lo = LoopDev::attach(&disk.path, false, None, false)?;
        let mut sfdisk = Command::new("sfdisk")
            // This host's kernel does not scan partitions: partx -a below.
            .args([
                "--quiet",
                "--wipe",
                "always",
                "--no-reread",
                "--no-tell-kernel",
                &lo.dev,
            ])
            .stdin(Stdio::piped())
            .spawn()
            .context("Running sfdisk")?;
        {
            use std::io::Write;
            let script = format!(
                "label: gpt\nsize=1MiB, type={BIOS_BOOT}, name=\"BIOS-BOOT\"\nsize=512MiB, type={LINUX_DATA}, name=\"boot\"\ntype={ROOT_X86_64}, name=\"root\"\n"
            );
            sfdisk
                .stdin
                .take()
                .context("sfdisk stdin")?
                .write_all(script.as_bytes())?;
        }
        ensure!(sfdisk.wait()?.success(), "sfdisk on {} failed", lo.dev);
        run(Command::new("partx").args(["-a", &lo.dev]))?;
        let boot_dev = lo.partition(2)?;
        let root_dev = lo.partition(3)?;
        run(Command::new("mkfs.ext4").args(["-q", "-L", BOOT_LABEL, &boot_dev]))?;
        run(Command::new("mkfs.ext4").args(["-q", "-O", "verity", "-L", "root", &root_dev]))?;
        let out = run(Command::new("blkid").args(["-s", "UUID", "-o", "value", &root_dev]))?;
        uuid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let m = Mounted::new(&root_dev, "rw")?;
        let boot_dir = m.path().join("boot");
        fs::create_dir(&boot_dir)?;
        run(Command::new("mount").arg(&boot_dev).arg(&boot_dir))?;
        let spec = format!("LABEL={BOOT_LABEL}");
        let install = install_to_filesystem(
            &ctx.bootc,
            &image(),
            m.path(),
            &["--boot-mount-spec", &spec],
        );
        // Read before unmounting; errors are reported after.
        let fstab = read_deployment_in(m.path()).and_then(|d| {
            let p = m.path().join("state/deploy").join(&d.id).join("etc/fstab");
            fs::read_to_string(&p).with_context(|| format!("Reading {}", p.display()))
        });
        let entries_on_boot = boot_dir.join("loader/entries").is_dir();
        // Unmount (and detach) before reading or booting, whatever happened.
        if let Err(e) = run(Command::new("umount").arg(&boot_dir)) {
            eprintln!("warning: unmounting {}: {e:#}", boot_dir.display());
        }
        drop(m);
        drop(lo);
        install?;
        let fstab = fstab.context("Reading the deployment's etc/fstab (install side)")?;
        ensure!(
            fstab
                .lines()
                .any(|l| l == format!("{spec} /sysroot/boot ext4 defaults 0 0")),
            "the deployment's fstab does not mount {spec} at /sysroot/boot (install side):\n{fstab}"
        );
        ensure!(
            entries_on_boot,
            "no loader/entries on the separate boot filesystem (install side)"
        );
        read_deployment(&disk.path)?
    };
    println!("installed deployment {}: {}", dep.id, dep.json);
    check_podman_digest(&dep)?;
    let step = guest::step::step_dir(
        "echo \"BOOTC-BOOT-MOUNT $(findmnt -n -o SOURCE,FSTYPE /sysroot/boot)\"\nls /sysroot/boot/loader/entries\n",
    )?;
    let r = boot_and_check_with(&disk.path, Firmware::Bios, &dep, Some(step.path()))?;
    // The root= of the entry names the filesystem we made.
    let cmdline = vm::marker_value(&r.log, "BOOTC-CMDLINE").unwrap_or_default();
    ensure!(
        cmdline
            .split_whitespace()
            .any(|a| a == format!("root=UUID={uuid}")),
        "the entry's root= is not UUID={uuid} of the filesystem we made (install side): {cmdline}"
    );
    let boot_mount = vm::marker_value(&r.log, "BOOTC-BOOT-MOUNT").unwrap_or_default();
    ensure!(
        boot_mount.ends_with("ext4") && !boot_mount.starts_with("ext4"),
        "/sysroot/boot in the guest is not the separate ext4 boot filesystem (fstab side): {boot_mount:?}\n{}",
        report(&r, None)
    );
    drop(disk.dir);
    Ok(())
}

/// Console texts of an emergency shell (the initrd's or the deployment's).
const EMERGENCY: &[&str] = &[
    "You are in emergency mode",
    "Entering emergency mode",
    "Kernel panic - not syncing",
];

/// A deployment that cannot be mounted (its /etc is gone) stops the boot in
/// the initramfs with a console message naming the deployment and the
/// error, and an emergency shell: never a silent hang, never a boot into
/// the wrong root.
fn vm_boot_broken_deployment_stops_loudly(ctx: &Ctx) -> Result<()> {
    skip_without_qemu!();
    let _l = vm::exclusive();
    let (disk, dep) = install_example(ctx, "grub")?;
    with_root_fs(&disk.path, true, |root| {
        let etc = root.join("state/deploy").join(&dep.id).join("etc");
        let hidden = etc.with_file_name("etc.hidden-by-test");
        fs::rename(&etc, &hidden)
            .with_context(|| format!("Renaming {} (install layout)", etc.display()))
    })?;
    let mut vm = Vm::builder()
        .firmware(Firmware::Bios)
        .disk(&disk.path)
        .fail_on(EMERGENCY)
        .build()?;
    let r = vm.run_until(vm::STATUS_END, BOOT_TIMEOUT)?;
    println!(
        "broken deployment boot: {:?} after {:.1?} ({:?})",
        r.end, r.elapsed, r.failure
    );
    let check = || -> Result<()> {
        ensure!(
            !r.matched(),
            "the boot reached the status unit with the deployment's /etc gone"
        );
        let message = format!("bootc: cannot mount deployment {}:", dep.id);
        ensure!(
            r.log.contains(&message),
            "no {message:?} line on the console (initramfs)"
        );
        ensure!(
            r.end == RunEnd::Failed,
            "the boot did not stop in an emergency shell ({:?}; initramfs unit's OnFailure=)",
            r.end
        );
        Ok(())
    };
    check().map_err(|e| with_report(e, &r))?;
    drop(disk.dir);
    Ok(())
}
