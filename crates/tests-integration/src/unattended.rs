//! Operating a host unattended (issue #5), across real reboots: download
//! now and apply later, automatic rollback of a deployment whose health
//! check fails, and blessing of a good one.
//!
//! Images, all from `localhost/bootc-example:v2` (built by scripts/test.sh)
//! with one small layer each, built here and cached by the v2 image id:
//! - [`UNHEALTHY`]: v2 without `/usr/share/bootc-example/healthy`, so the
//!   example image's `bootc-example-health.service` (ordered before
//!   `boot-complete.target`) fails;
//! - [`V4`]: v2 with a new `/usr/share/bootc-example/variant` (`v4`).
//!
//! Boots (SeaBIOS/GRUB, each a fresh qemu with `-no-reboot`, the installed
//! disk plus a `BOOTCTEST` disk holding OCI layouts and the step script; see
//! lifecycle.rs for the step protocol):
//! 1. v2 installed: `usr-overlay` makes /usr writable (a second one is
//!    refused, status shows it), a tool's kernel arguments are set with
//!    `loader-entries set-options-for-source`, one boot try is configured
//!    (`/etc/bootc/boot.toml`), the unhealthy image is staged
//!    `--download-only`; power off.
//! 2. v2 still booted (not applied at shutdown), the download-only
//!    deployment still staged, the overlay gone, the tool's argument on the
//!    command line; `upgrade --from-downloaded --apply` reboots.
//! 3. the unhealthy deployment boots on trial: its health check fails,
//!    `bootc-boot-check.service` records why and reboots.
//! 4. GRUB's counter is spent: v2 boots by itself; status shows v2 booted and
//!    the unhealthy deployment as rollback, failed, with the failed unit;
//!    `switch --apply` to v4.
//! 5. v4 boots on trial, its health check passes, it is blessed; the tool's
//!    argument carried over; `usr-overlay --read-only`.
//! 6. v4 boots again (it stays).
//!
//! `BOOTC_UNATTENDED_FIRMWARE=uefi` runs the same scenario on OVMF with
//! systemd-boot, whose own boot counting (`+N` entry names on the ESP) then
//! does the counting; the default (BIOS/GRUB) is what the test command runs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bootc_tests_integration::run;
use bootc_tests_integration::vm::{self, Firmware, Run, Vm};

use crate::lifecycle::{
    Step, built_from, expect_booted, expect_entry, expect_karg, install_to_disk, make_test_disk,
    podman_digest, podman_image_id, report, write_step,
};
use crate::{Ctx, TestFn};

/// The tests of this module.
pub const TESTS: &[(&str, TestFn)] =
    &[("vm_unattended_auto_rollback", vm_unattended_auto_rollback)];

/// The installed image.
const V2: &str = "localhost/bootc-example:v2";
/// v2 whose health check fails.
const UNHEALTHY: &str = "localhost/bootc-example:unhealthy";
/// v2 with another variant file; healthy.
const V4: &str = "localhost/bootc-example:v4";

/// Label naming the v2 image id an image was derived from.
const FROM_LABEL: &str = "org.bootc-test.v2-id";

/// Size of the sparse disk image.
const DISK_SIZE: u64 = 8 << 30;

/// Bound of one boot (with its step and shutdown) under TCG.
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);

/// After `BOOTC-POWEROFF`, time for the shutdown to end with qemu exiting.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(300);

/// One run of this test at a time.
static LOCK: Mutex<()> = Mutex::new(());

fn vm_unattended_auto_rollback(ctx: &Ctx) -> Result<()> {
    if let Some(reason) = vm::qemu_missing() {
        println!("SKIP: {reason}");
        return Ok(());
    }
    let _l = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let v2_id = podman_image_id(V2)?.with_context(|| {
        format!(
            "{V2} is not in podman's storage: run `examples/build.sh v2 --build-arg VARIANT=v2`"
        )
    })?;
    derive(
        &v2_id,
        UNHEALTHY,
        "RUN rm /usr/share/bootc-example/healthy\n",
    )?;
    derive(
        &v2_id,
        V4,
        "RUN echo v4 > /usr/share/bootc-example/variant\nLABEL org.opencontainers.image.version=v4\n",
    )?;
    let work = tempfile::Builder::new()
        .prefix("bootc-unattended.")
        .tempdir_in("/var/tmp")?;
    let mut h = Host::prepare(ctx, work.path())?;
    println!("prepared in {:.1?}", t0.elapsed());
    h.run_all()?;
    println!("unattended scenario passed in {:.1?}", t0.elapsed());
    Ok(())
}

/// Build `tag` as v2 (`v2_id`) plus `lines`, unless one built from that v2 exists.
fn derive(v2_id: &str, tag: &str, lines: &str) -> Result<()> {
    if built_from(tag, FROM_LABEL, v2_id)? {
        return Ok(());
    }
    let dir = tempfile::Builder::new()
        .prefix("bootc-unattended-img.")
        .tempdir_in("/var/tmp")?;
    fs::write(
        dir.path().join("Containerfile"),
        format!("FROM {v2_id}\n{lines}LABEL {FROM_LABEL}={v2_id}\n"),
    )?;
    run(Command::new("podman")
        .args([
            "build",
            "--isolation=chroot",
            "--layers=false",
            "-t",
            tag,
            "-f",
        ])
        .arg(dir.path().join("Containerfile"))
        .arg(dir.path()))
    .with_context(|| format!("Building {tag} from {V2}"))?;
    Ok(())
}

/// The firmware of the scenario: BIOS (GRUB) unless
/// `BOOTC_UNATTENDED_FIRMWARE=uefi` (systemd-boot).
fn firmware() -> Firmware {
    match std::env::var("BOOTC_UNATTENDED_FIRMWARE").as_deref() {
        Ok("uefi") => Firmware::Uefi,
        _ => Firmware::Bios,
    }
}

struct Host {
    disk: PathBuf,
    testdisk: PathBuf,
    v2_digest: String,
    unhealthy_oci: String,
    v4_oci: String,
    boots: u32,
}

impl Host {
    fn prepare(ctx: &Ctx, work: &Path) -> Result<Self> {
        let disk = work.join("disk.raw");
        fs::File::create(&disk)?.set_len(DISK_SIZE)?;
        let start = Instant::now();
        let bootloader = if firmware() == Firmware::Uefi {
            "systemd"
        } else {
            "grub"
        };
        install_to_disk(ctx, V2, bootloader, &[], &disk).context("Installing v2")?;
        println!("install v2 to-disk ({bootloader}): {:.1?}", start.elapsed());
        let v2_digest = podman_digest(V2)?;

        let (testdisk, layouts) = make_test_disk(work, &[(UNHEALTHY, "unhealthy"), (V4, "v4")])?;
        let [unhealthy_oci, v4_oci] = [&layouts[0], &layouts[1]].map(Clone::clone);
        Ok(Self {
            disk,
            testdisk,
            v2_digest,
            unhealthy_oci,
            v4_oci,
            boots: 0,
        })
    }

    fn set_step(&self, body: &str) -> Result<()> {
        write_step(&self.testdisk, body)
    }

    /// Boot with `step` until qemu exits by itself (power-off, or a reboot
    /// under `-no-reboot`).
    fn boot(&mut self, name: &str, step: &str) -> Result<Run> {
        self.set_step(step)?;
        self.boots += 1;
        let mut vm = Vm::builder()
            .firmware(firmware())
            .disk(&self.disk)
            .disk(&self.testdisk)
            .build()?;
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

    /// Boot with `step`, which must run to its end with status 0.
    fn boot_step(&mut self, name: &str, step: &str) -> Result<(Run, Step)> {
        let r = self.boot(name, step)?;
        let s = Step::parse(&r).with_context(|| report(&r, None))?;
        ensure!(
            s.rc == Some(0),
            "step.sh of {name} exited with {:?}\n{}",
            s.rc,
            report(&r, Some(&s))
        );
        Ok((r, s))
    }

    fn run_all(&mut self) -> Result<()> {
        let (v2, unhealthy, v4) = (
            self.v2_digest.clone(),
            self.unhealthy_oci.clone(),
            self.v4_oci.clone(),
        );
        let unhealthy_ref = "/run/bootctest/unhealthy:unhealthy";
        let v4_ref = "/run/bootctest/v4:v4";

        // 1. Download now: stage the unhealthy image without applying it.
        let (r, s) = self.boot_step(
            "1: v2, download-only",
            &format!(
                r#"J before bootc status --format json
mkdir -p /etc/bootc && printf '[boot]\ntries = 1\n' > /etc/bootc/boot.toml
V ro_before sh -c 'touch /usr/.x 2>&1 && echo writable'
R overlay bootc usr-overlay
R overlay_again bootc usr-overlay
V usrfs findmnt -n -o FSTYPE /usr
V written sh -c 'echo hello > /usr/bootc-overlay-test && cat /usr/bootc-overlay-test'
J overlaid bootc status --format json
R tuned bootc loader-entries set-options-for-source --source tuned --options "bootc.tuned=1"
R download bootc switch --download-only --transport oci {unhealthy_ref}
J staged bootc status --format json
R human bootc status --format humanreadable --verbose
"#
            ),
        )?;
        let bad_id = (|| -> Result<String> {
            let before = s.json("before")?;
            expect_booted(&before, "containers-storage", Some(V2), &v2)?;
            ensure!(
                before["status"]["booted"]["bootAssessment"].is_null(),
                "the installed deployment is on trial: {}",
                before["status"]["booted"]
            );
            ensure!(
                s.val("ro_before")
                    .is_some_and(|v| v.contains("Read-only file system")),
                "/usr was writable before usr-overlay: {:?}",
                s.val("ro_before")
            );
            s.expect_rc("overlay", 0)?;
            ensure!(
                s.rc_of("overlay_again").is_some_and(|rc| rc != 0),
                "a second usr-overlay did not fail"
            );
            s.expect_val("usrfs", "overlay")?;
            s.expect_val("written", "hello")?;
            let o = s.json("overlaid")?;
            ensure!(
                o["status"]["usrOverlay"]["accessMode"] == "readWrite"
                    && o["status"]["usrOverlay"]["persistence"] == "transient",
                "status.usrOverlay after usr-overlay: {}",
                o["status"]["usrOverlay"]
            );
            s.expect_rc("tuned", 0)?;
            s.expect_rc("download", 0)?;
            let st = s.json("staged")?;
            expect_entry(&st, "staged", "oci", unhealthy_ref, &unhealthy)?;
            ensure!(
                st["status"]["staged"]["downloadOnly"] == true,
                "status.staged.downloadOnly after --download-only: {}",
                st["status"]["staged"]
            );
            s.expect_rc("human", 0)?;
            ensure!(
                s.text.contains("Download-only"),
                "`status --verbose` does not say Download-only"
            );
            st["status"]["staged"]["composefs"]["verity"]
                .as_str()
                .map(str::to_owned)
                .context("no deployment id of the staged deployment")
        })()
        .with_context(|| report(&r, Some(&s)))
        .context("step 1 (download-only)")?;

        // 2. Still v2 after a shutdown; apply later, with a reboot.
        let r = self.boot(
            "2: v2 still booted; apply the download",
            r#"J status bootc status --format json
V overlayfile sh -c 'test -e /usr/bootc-overlay-test && echo present || echo absent'
V cmdline cat /proc/cmdline
echo BOOTC-APPLYING
bootc upgrade --from-downloaded --apply
echo "BOOTC-APPLY-RETURNED rc=$?"
sleep 600
"#,
        )?;
        let s = Step::parse_partial(&r);
        (|| -> Result<()> {
            let st = s.json("status")?;
            expect_booted(&st, "containers-storage", Some(V2), &v2)?;
            expect_entry(&st, "staged", "oci", unhealthy_ref, &unhealthy)?;
            ensure!(
                st["status"]["staged"]["downloadOnly"] == true,
                "the download-only deployment is no longer download-only after a shutdown: {}",
                st["status"]["staged"]
            );
            ensure!(
                st["status"]["usrOverlay"].is_null(),
                "a /usr overlay survived the reboot: {}",
                st["status"]["usrOverlay"]
            );
            s.expect_val("overlayfile", "absent")?;
            expect_karg(&s, "bootc.tuned=1", true)?;
            ensure!(
                s.text.contains("BOOTC-APPLYING") && !r.log.contains("BOOTC-POWEROFF"),
                "the guest powered off instead of rebooting from --apply"
            );
            Ok(())
        })()
        .with_context(|| report(&r, Some(&s)))
        .context("step 2 (apply later)")?;

        // 3. The unhealthy deployment boots on trial and fails.
        let r = self.boot("3: unhealthy on trial", "echo step of the trial boot\n")?;
        (|| -> Result<()> {
            let log = vm::tail_lines(&r.log, usize::MAX);
            ensure!(
                log.contains(&format!("composefs={bad_id}")),
                "the trial boot did not boot the unhealthy deployment {bad_id}"
            );
            ensure!(
                log.contains("BOOTC-HEALTH-FAILED"),
                "the health check did not fail"
            );
            ensure!(
                log.contains(&format!("boot of deployment {bad_id} failed"))
                    && log.contains("bootc-example-health.service"),
                "bootc-boot-check did not report the failed boot"
            );
            ensure!(
                !log.contains("BOOTC-POWEROFF"),
                "the failed trial boot powered off instead of rebooting"
            );
            Ok(())
        })()
        .with_context(|| report(&r, None))
        .context("step 3 (the failed trial boot)")?;

        // 4. Back on v2 by itself; status says why; switch to v4 with --apply.
        let r = self.boot(
            "4: fell back to v2; switch to v4",
            &format!(
                r#"J status bootc status --format json
R human bootc status --format humanreadable
echo BOOTC-APPLYING
bootc switch --transport oci --apply {v4_ref}
echo "BOOTC-APPLY-RETURNED rc=$?"
sleep 600
"#
            ),
        )?;
        let s = Step::parse_partial(&r);
        (|| -> Result<()> {
            let log = vm::tail_lines(&r.log, usize::MAX);
            ensure!(
                log.contains(&format!("deployment {bad_id} failed its 1 boot tries")),
                "bootc-boot-check on v2 did not notice the spent trial"
            );
            let st = s.json("status")?;
            expect_booted(&st, "containers-storage", Some(V2), &v2)?;
            expect_entry(&st, "rollback", "oci", unhealthy_ref, &unhealthy)?;
            let a = &st["status"]["rollback"]["bootAssessment"];
            ensure!(
                a["state"] == "failed"
                    && a["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("bootc-example-health.service")),
                "status.rollback.bootAssessment does not say the health check failed: {a}"
            );
            ensure!(
                s.text.contains("bootc-example-health.service"),
                "human status does not show why the deployment failed"
            );
            Ok(())
        })()
        .with_context(|| report(&r, Some(&s)))
        .context("step 4 (automatic fallback)")?;

        // 5. v4 boots on trial and is blessed.
        let (r, s) = self.boot_step(
            "5: v4 blessed",
            r#"J status bootc status --format json
V variant cat /usr/share/bootc-example/variant
V grubenv sh -c 'grep -a "^bootc_" /sysroot/boot/grub/grubenv 2>/dev/null || echo none'
V counted sh -c 'test -e /dev/disk/by-label/EFI-SYSTEM || { echo none; exit 0; }; MTOOLS_SKIP_CHECK=1 mdir -b -i /dev/disk/by-label/EFI-SYSTEM ::/loader/entries 2>/dev/null | grep "+" || echo none'
V cmdline cat /proc/cmdline
R overlay_ro bootc usr-overlay --read-only
V ro_write sh -c 'touch /usr/.y 2>&1 && echo writable'
J overlaid bootc status --format json
"#,
        )?;
        (|| -> Result<()> {
            let log = vm::tail_lines(&r.log, usize::MAX);
            ensure!(
                log.contains("BOOTC-HEALTH-OK"),
                "v4's health check did not pass"
            );
            ensure!(log.contains("is blessed"), "v4 was not blessed");
            let st = s.json("status")?;
            expect_booted(&st, "oci", Some(v4_ref), &v4)?;
            ensure!(
                st["status"]["booted"]["bootAssessment"].is_null(),
                "v4 is still on trial after a good boot: {}",
                st["status"]["booted"]
            );
            s.expect_val("variant", "v4")?;
            s.expect_val("grubenv", "none")?;
            s.expect_val("counted", "none")?;
            expect_karg(&s, "bootc.tuned=1", true)?;
            s.expect_rc("overlay_ro", 0)?;
            ensure!(
                s.val("ro_write")
                    .is_some_and(|v| v.contains("Read-only file system")),
                "/usr was writable under a read-only usr-overlay: {:?}",
                s.val("ro_write")
            );
            let o = s.json("overlaid")?;
            ensure!(
                o["status"]["usrOverlay"]["accessMode"] == "readOnly",
                "status.usrOverlay after usr-overlay --read-only: {}",
                o["status"]["usrOverlay"]
            );
            Ok(())
        })()
        .with_context(|| report(&r, Some(&s)))
        .context("step 5 (v4 blessed)")?;

        // 6. v4 stays.
        let (r, s) = self.boot_step("6: v4 stays", "J status bootc status --format json\n")?;
        (|| -> Result<()> {
            let st = s.json("status")?;
            expect_booted(&st, "oci", Some(v4_ref), &v4)?;
            Ok(())
        })()
        .with_context(|| report(&r, Some(&s)))
        .context("step 6 (v4 stays)")?;
        Ok(())
    }
}
