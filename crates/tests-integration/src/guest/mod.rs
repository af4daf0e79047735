//! What every VM scenario does with a guest, in one place: build the images
//! it needs, install a disk, boot it once with a step to run inside, read
//! what the step printed and the status it reported, and say what went
//! wrong when a boot fails.
//!
//! - [`image`]: podman images (does one exist, its id and digest, derive a
//!   cached variant from another), OCI layout digests.
//! - [`disk`]: sparse disk files, loop devices and mounts that clean up on
//!   drop, the root filesystem of an installed disk, the deployment install
//!   recorded there, `bootc --sysroot` status of a powered-off disk.
//! - [`install`]: `bootc install to-disk` / `to-filesystem` with the test's
//!   containers configuration and the `bootc.test.poweroff=1` karg.
//! - [`step`]: the step protocol: the `BOOTCTEST` disk with OCI layouts and
//!   `step.sh` (after the shell helpers of [`step::PRELUDE`]), and [`Step`], what
//!   one step printed, with checks on the status documents in it.
//! - [`host`]: [`Guest`], an installed disk and its BOOTCTEST disk booted
//!   once per step; [`report`] and [`diagnose`] for failure messages.
//!
//! The example image's `bootc-test-runner.service` runs `step.sh` from the
//! BOOTCTEST disk after the status unit, prints its output between
//! `BOOTC-STEP-BEGIN` and `BOOTC-STEP-END`, then `BOOTC-STEP-RC=<n>`;
//! `bootc-test-poweroff.service` then prints `BOOTC-POWEROFF` and powers off
//! (`bootc.test.poweroff=1` is an install-time karg).

pub(crate) mod disk;
pub(crate) mod host;
pub(crate) mod image;
pub(crate) mod install;
pub(crate) mod step;

use std::time::Duration;

use bootc_tests_integration::vm::Firmware;

pub(crate) use disk::{DiskFile, LoopDev, Mounted, offline_status, read_deployment, with_root_fs};
pub(crate) use host::{Guest, check, diagnose, report, with_report};
pub(crate) use image::{derive_image, oci_digest, podman_digest, require_image};
pub(crate) use install::{install_to_disk, install_to_filesystem};
pub(crate) use step::{Step, expect_booted, expect_entry, expect_karg, expect_kargs};

/// The tests of this module (pure: the step protocol's parsing).
pub const TESTS: &[(&str, crate::TestFn)] = &[(
    "guest_step_protocol_reads_back",
    step::guest_step_protocol_reads_back,
)];

/// Discoverable Partitions Specification type of an x86-64 root partition.
pub(crate) const ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

/// Bound of one `bootc install`.
pub(crate) const INSTALL_TIMEOUT: Duration = Duration::from_secs(900);

/// Bound of one boot with its step under TCG (a step may stage an image).
pub(crate) const BOOT_TIMEOUT: Duration = Duration::from_secs(900);

/// After `BOOTC-POWEROFF` (or another awaited marker), time for the
/// shutdown (and the finalization of a staged deployment) to end with qemu
/// exiting.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(300);

/// The bootloader `bootc install` sets up for a firmware: GRUB on SeaBIOS,
/// systemd-boot on OVMF.
pub(crate) fn bootloader(firmware: Firmware) -> &'static str {
    match firmware {
        Firmware::Bios => "grub",
        Firmware::Uefi => "systemd",
    }
}

/// Return from the test with a "SKIP:" line when qemu is missing (the only
/// reason a VM test does not run).
macro_rules! skip_without_qemu {
    () => {
        if let Some(reason) = bootc_tests_integration::vm::qemu_missing() {
            println!("SKIP: {reason}");
            return Ok(());
        }
    };
}
pub(crate) use skip_without_qemu;
