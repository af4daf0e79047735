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
//! 1. [`install_to_disk`] (or partition + [`install_to_filesystem`]) onto a
//!    6 GiB sparse file under /var/tmp;
//! 2. [`read_deployment`]: mount the root partition read-only and read the
//!    one `state/deploy/*/deployment.json`: the image and manifest digest
//!    bootc recorded;
//! 3. [`boot_and_check`]: boot, wait for the status block and the power-off,
//!    then assert: the kernel booted the deployment, systemd reached
//!    multi-user, `/` is the composefs overlay, `/usr` is read-only, and the
//!    status names the installed image and digest. A failure says which
//!    stage broke ([`diagnose`]) with the relevant console lines.
//!
//! The UEFI test boots twice: the first boot seals the store (an install
//! from this host is insecure) from a BOOTCTEST step, the second checks the
//! deployment is mounted with fs-verity required ([`uefi_seal_test`]). The
//! to-filesystem test installs with a separate /boot and checks the booted
//! host mounts it at /sysroot/boot.
//!
//! Only a missing qemu skips these tests (with a "SKIP:" line); a failing
//! install fails the test. VM tests run one at a time ([`vm::exclusive`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bootc_tests_integration::run;
use bootc_tests_integration::vm::{self, Firmware, Run, RunEnd, STATUS_END, Vm, partitions};
use serde_json::Value;

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

/// Bound of one `bootc install`.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(900);

/// Discoverable Partitions Specification type of an x86-64 root partition.
const ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
/// GPT type of a BIOS boot partition (GRUB's core image).
const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
/// GPT type of a generic Linux filesystem (the separate /boot).
const LINUX_DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
/// Label of the separate /boot filesystem of the to-filesystem test.
const BOOT_LABEL: &str = "bootcboot";

/// Hold the process-wide VM lock ([`vm::exclusive`]).
fn vm_lock() -> std::sync::MutexGuard<'static, ()> {
    vm::exclusive()
}

/// `Some(reason)` when VM tests cannot run on this machine.
fn skip_reason() -> Option<String> {
    vm::qemu_missing()
}

macro_rules! skip_without_qemu {
    () => {
        if let Some(reason) = skip_reason() {
            println!("SKIP: {reason}");
            return Ok(());
        }
    };
}

// --- Harness self-test: busybox on the example image's kernel ----------------

/// The example image's kernel, copied out of podman's storage.
fn example_kernel(dest: &Path) -> Result<PathBuf> {
    ensure_example_image()?;
    let image = image();
    let out = run(Command::new("podman").args(["image", "mount", &image]))?;
    let mnt = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let result = (|| {
        let modules = mnt.join("usr/lib/modules");
        let mut kernels = Vec::new();
        for e in fs::read_dir(&modules).with_context(|| format!("Reading {}", modules.display()))? {
            let p = e?.path().join("vmlinuz");
            if p.exists() {
                kernels.push(p);
            }
        }
        ensure!(
            kernels.len() == 1,
            "expected one kernel in {image}, found {kernels:?}"
        );
        let k = dest.join("vmlinuz");
        fs::copy(&kernels[0], &k).with_context(|| format!("Copying {}", kernels[0].display()))?;
        Ok(k)
    })();
    run(Command::new("podman").args(["image", "unmount", &image]))?;
    result
}

fn ensure_example_image() -> Result<()> {
    let st = Command::new("podman")
        .args(["image", "exists", &image()])
        .status()
        .context("Running podman image exists")?;
    ensure!(
        st.success(),
        "{} is not in podman's storage: run `examples/build.sh latest` first",
        image()
    );
    Ok(())
}

/// Boot the example kernel with a busybox initramfs that prints a fake
/// status block and powers off: proves qemu, the firmware, the serial log,
/// the status parsing and the power-off detection, in about 10 s.
fn busybox_boot(firmware: Firmware) -> Result<()> {
    let busybox = Path::new("/bin/busybox");
    ensure!(
        busybox.exists(),
        "{} missing: apt-get install busybox-static",
        busybox.display()
    );
    let work = tempfile::Builder::new()
        .prefix("bootc-busybox.")
        .tempdir_in("/var/tmp")?;
    let kernel = example_kernel(work.path())?;
    let initrd = work.path().join("initrd.cpio");
    vm::busybox_initramfs(
        busybox,
        r#"/bin/busybox mount -t proc proc /proc
echo BOOTC-STATUS-BEGIN
echo '{"kind": "BootcHost",'
echo ' "cmdline": "'"$(/bin/busybox cat /proc/cmdline)"'"}'
echo BOOTC-STATUS-END
/bin/busybox poweroff -f
"#,
        &initrd,
    )?;
    let mut vm = Vm::builder()
        .firmware(firmware)
        .memory_mb(512)
        .kernel(
            &kernel,
            Some(initrd),
            "console=ttyS0,115200 panic=-1 bootc.harness=1",
        )
        .build()?;
    if firmware == Firmware::Bios {
        // The timeout path: killed, reaped, nothing left behind.
        let r = vm.run_until("never printed", Duration::from_secs(2))?;
        ensure!(r.end == RunEnd::TimedOut && !r.matched(), "{:?}", r.end);
        ensure!(
            !Path::new(&format!("/proc/{}", r.pid)).exists(),
            "qemu {} still there",
            r.pid
        );
        // The pattern path: stops at the first match, qemu killed.
        let r = vm.run_until("Linux version", Duration::from_secs(60))?;
        ensure!(
            r.end == RunEnd::Matched,
            "{:?}: {}",
            r.end,
            failure_report(&r)
        );
        ensure!(
            !Path::new(&format!("/proc/{}", r.pid)).exists(),
            "qemu {} still there",
            r.pid
        );
    }
    let r = vm.run_until_then_exit(
        STATUS_END,
        Duration::from_secs(30),
        Duration::from_secs(120),
    )?;
    println!(
        "{firmware:?} busybox boot: status block after {:?}, qemu ended after {:?} ({:?})",
        r.matched_after, r.elapsed, r.end
    );
    ensure!(r.matched(), "no status block: {}", failure_report(&r));
    let status = r.status_json().map_err(|e| with_report(e, &r))?;
    ensure!(status["kind"] == "BootcHost", "{status}");
    ensure!(
        status["cmdline"]
            .as_str()
            .is_some_and(|c| c.contains("bootc.harness=1")),
        "{status}"
    );
    ensure!(
        r.exited_cleanly(),
        "guest did not power off: {}",
        failure_report(&r)
    );
    Ok(())
}

fn vm_harness_busybox_bios(_ctx: &Ctx) -> Result<()> {
    skip_without_qemu!();
    let _l = vm_lock();
    busybox_boot(Firmware::Bios)
}

fn vm_harness_busybox_uefi(_ctx: &Ctx) -> Result<()> {
    skip_without_qemu!();
    let _l = vm_lock();
    busybox_boot(Firmware::Uefi)
}

// --- Disk images, loop devices, mounts (cleaned up on drop) -------------------

/// A sparse disk image file in its own directory under /var/tmp.
struct DiskFile {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl DiskFile {
    fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("bootc-disk.")
            .tempdir_in("/var/tmp")?;
        let path = dir.path().join("disk.raw");
        let f = fs::File::create(&path).with_context(|| format!("Creating {}", path.display()))?;
        f.set_len(DISK_SIZE)?;
        Ok(Self { dir, path })
    }
}

/// A loop device, detached on drop.
struct LoopDev {
    dev: String,
}

impl LoopDev {
    /// Attach `file` (read-only if `ro`), optionally a byte range of it, with
    /// partitions scanned by `partx -a` when `partitions` (the host kernel
    /// does not scan them itself).
    fn attach(file: &Path, ro: bool, range: Option<(u64, u64)>, partitions: bool) -> Result<Self> {
        let mut c = Command::new("losetup");
        c.args(["-f", "--show"]);
        if ro {
            c.arg("-r");
        }
        if let Some((off, size)) = range {
            c.arg(format!("--offset={off}"))
                .arg(format!("--sizelimit={size}"));
        }
        c.arg(file);
        let out = run(&mut c)?;
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        ensure!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
        let l = Self { dev };
        if partitions {
            run(Command::new("partx").args(["-a", &l.dev]))?;
        }
        Ok(l)
    }

    /// The device node of partition `n`, waiting briefly for devtmpfs.
    fn partition(&self, n: u32) -> Result<String> {
        let p = format!("{}p{n}", self.dev);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !Path::new(&p).exists() {
            ensure!(
                Instant::now() < deadline,
                "{p} did not appear after partx -a"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(p)
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        // Partitions first (harmless if there are none), then the device.
        let _ = Command::new("partx")
            .args(["-d", &self.dev])
            .stderr(Stdio::null())
            .status();
        if let Err(e) = run(Command::new("losetup").args(["-d", &self.dev])) {
            eprintln!("warning: detaching {}: {e:#}", self.dev);
        }
    }
}

/// A mount, unmounted on drop.
struct Mounted {
    dir: tempfile::TempDir,
}

impl Mounted {
    fn new(dev: &str, opts: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("bootc-mnt.")
            .tempdir_in("/var/tmp")?;
        run(Command::new("mount")
            .args(["-o", opts, dev])
            .arg(dir.path()))?;
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("umount").arg(self.dir.path())) {
            eprintln!("warning: unmounting {}: {e:#}", self.dir.path().display());
        }
    }
}

// --- Install ------------------------------------------------------------------

/// A `bootc install` command with the test's containers configuration, bounded
/// by `timeout(1)`.
fn bootc_install(ctx: &Ctx, args: &[&str]) -> Command {
    let mut c = Command::new("timeout");
    c.args(["--kill-after=30", &INSTALL_TIMEOUT.as_secs().to_string()])
        .arg(&ctx.bootc.bin)
        .arg("install")
        .args(args)
        .env("CONTAINERS_REGISTRIES_CONF", ctx.bootc.registries_conf())
        .env("CONTAINERS_POLICY_JSON", ctx.bootc.policy_json())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    c
}

fn run_install(ctx: &Ctx, args: &[&str]) -> Result<Duration> {
    let start = Instant::now();
    run(&mut bootc_install(ctx, args)).context("bootc install failed (install side)")?;
    let took = start.elapsed();
    println!("bootc install {}: {took:.1?}", args.first().unwrap_or(&""));
    Ok(took)
}

fn install_to_disk(ctx: &Ctx, disk: &Path, bootloader: &str) -> Result<Duration> {
    let disk = disk.to_str().context("disk path not UTF-8")?;
    run_install(
        ctx,
        &[
            "to-disk",
            "--via-loopback",
            "--source-imgref",
            &format!("containers-storage:{}", image()),
            "--bootloader",
            bootloader,
            "--karg",
            "bootc.test.poweroff=1",
            disk,
        ],
    )
}

fn install_to_filesystem(ctx: &Ctx, root: &Path, extra: &[&str]) -> Result<Duration> {
    let root = root.to_str().context("root path not UTF-8")?;
    let src = format!("containers-storage:{}", image());
    let mut args = vec![
        "to-filesystem",
        "--source-imgref",
        &src,
        "--bootloader",
        "grub",
        "--karg",
        "bootc.test.poweroff=1",
    ];
    args.extend_from_slice(extra);
    args.push(root);
    run_install(ctx, &args)
}

/// What install recorded about the deployment.
#[derive(Debug)]
struct Deployment {
    /// `state/deploy/<ID>`.
    id: String,
    /// `image.image` of deployment.json.
    image: String,
    /// `image.transport`.
    transport: String,
    /// `manifestDigest`.
    manifest_digest: String,
    /// Whole record, for messages.
    json: Value,
}

/// Mount the root partition of `disk` read-only and read its one deployment.
fn read_deployment(disk: &Path) -> Result<Deployment> {
    with_root_fs(disk, false, read_deployment_in)
        .context("Reading the installed deployment (install layout)")
}

/// Run `f` on the root filesystem of `disk`, mounted (read-only unless
/// `writable`) from a loop device over the root partition; unmounted and
/// detached afterwards, whatever `f` returned.
fn with_root_fs<T>(disk: &Path, writable: bool, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let parts = partitions(disk)?;
    let root = parts
        .iter()
        .find(|p| p.type_guid == ROOT_X86_64)
        .with_context(|| {
            format!(
                "no x86-64 root partition ({ROOT_X86_64}) on {}: {parts:?}",
                disk.display()
            )
        })?;
    let range = Some((root.start_bytes, root.size_bytes));
    let lo = LoopDev::attach(disk, !writable, range, false)?;
    let m = Mounted::new(&lo.dev, if writable { "rw" } else { "ro" })?;
    let r = f(m.path());
    drop(m);
    drop(lo);
    r.with_context(|| format!("On partition {} of {}", root.number, disk.display()))
}

fn read_deployment_in(sysroot: &Path) -> Result<Deployment> {
    let deploy = sysroot.join("state/deploy");
    let mut ids = Vec::new();
    for e in fs::read_dir(&deploy).with_context(|| format!("Reading {}", deploy.display()))? {
        let e = e?;
        if e.file_type()?.is_dir() {
            ids.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    ensure!(
        ids.len() == 1,
        "expected one deployment in state/deploy, found {ids:?}"
    );
    let id = ids.remove(0);
    let path = deploy.join(&id).join("deployment.json");
    let json: Value = serde_json::from_str(
        &fs::read_to_string(&path).with_context(|| format!("Reading {}", path.display()))?,
    )
    .with_context(|| format!("Parsing {}", path.display()))?;
    let s = |v: &Value| {
        v.as_str()
            .map(str::to_owned)
            .with_context(|| format!("{}: {json}", path.display()))
    };
    Ok(Deployment {
        image: s(&json["image"]["image"])?,
        transport: s(&json["image"]["transport"])?,
        manifest_digest: s(&json["manifestDigest"])?,
        id,
        json: json.clone(),
    })
}

/// The deployment's manifest digest is the one podman reports for the
/// source image (nothing re-encoded the manifest on the way).
fn check_podman_digest(dep: &Deployment) -> Result<()> {
    let out = run(Command::new("podman").args([
        "image",
        "inspect",
        "--format",
        "{{.Digest}}",
        &image(),
    ]))?;
    let podman = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ensure!(
        podman == dep.manifest_digest,
        "install recorded manifest digest {}, podman has {podman} for {} (install side)",
        dep.manifest_digest,
        image()
    );
    Ok(())
}

// --- Boot and check -----------------------------------------------------------

/// Boot `disk` and check the guest booted `dep`. Returns the run.
fn boot_and_check(disk: &Path, firmware: Firmware, dep: &Deployment) -> Result<Run> {
    boot_and_check_with(disk, firmware, dep, None)
}

/// [`boot_and_check`], with `step` (a directory holding `step.sh`) attached
/// as the BOOTCTEST disk when given; the boot then runs until the test
/// runner and the power-off unit are done.
fn boot_and_check_with(
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
    let root_line = marker("BOOTC-FINDMNT-ROOT")
        .context("no BOOTC-FINDMNT-ROOT line on the console (status unit)")?;
    let root = vm::parse_findmnt_row(&root_line, false)
        .with_context(|| format!("unexpected findmnt output for /: {root_line:?}"))?;
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
    let usr_line = marker("BOOTC-FINDMNT-USR")
        .context("no BOOTC-FINDMNT-USR line on the console (status unit)")?;
    let usr = vm::parse_findmnt_row(&usr_line, true)
        .with_context(|| format!("unexpected findmnt output for /usr: {usr_line:?}"))?;
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

/// Lines of a serial log that tell which stage failed.
const TELLTALES: &[&str] = &[
    "bootc",
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

/// Say which stage of the boot chain failed, from what the console shows.
fn diagnose(r: &Run) -> String {
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

/// `e` followed by the failure report of `r`.
fn with_report(e: anyhow::Error, r: &Run) -> anyhow::Error {
    anyhow::anyhow!("{e:#}\n{}", failure_report(r))
}

/// An error report: the stage, telltale lines, the console tail and qemu's stderr.
fn failure_report(r: &Run) -> String {
    let clean = vm::tail_lines(&r.log, usize::MAX);
    let tells: Vec<&str> = clean
        .lines()
        .filter(|l| TELLTALES.iter().any(|t| l.contains(t)))
        .collect();
    let tells = &tells[tells.len().saturating_sub(40)..];
    format!(
        "{}\n--- telltale console lines ---\n{}\n--- last console lines ---\n{}\n--- qemu stderr ---\n{}",
        diagnose(r),
        tells.join("\n"),
        r.tail(60),
        r.qemu_stderr.trim()
    )
}

// --- The tests ----------------------------------------------------------------

fn disk_test(ctx: &Ctx, firmware: Firmware, bootloader: &str) -> Result<()> {
    ensure_example_image()?;
    let disk = DiskFile::new()?;
    install_to_disk(ctx, &disk.path, bootloader)?;
    let dep = read_deployment(&disk.path)?;
    println!("installed deployment {}: {}", dep.id, dep.json);
    check_podman_digest(&dep)?;
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

/// Whether the booted deployment runs with fs-verity enforced, as the
/// console shows it: (`/` mounted with `verity=require`, the status's
/// `composefs.missingVerityAllowed` of the booted deployment).
fn booted_verity(r: &Run) -> Result<(bool, bool)> {
    let root_line = vm::marker_value(&r.log, "BOOTC-FINDMNT-ROOT")
        .context("no BOOTC-FINDMNT-ROOT line on the console (status unit)")?;
    let root = vm::parse_findmnt_row(&root_line, false)
        .with_context(|| format!("unexpected findmnt output for /: {root_line:?}"))?;
    let status = r.status_json().context("status JSON (status side)")?;
    let allowed = status["status"]["booted"]["composefs"]["missingVerityAllowed"]
        .as_bool()
        .with_context(|| format!("no booted composefs.missingVerityAllowed: {status}"))?;
    Ok((
        root.options.split(',').any(|o| o == "verity=require"),
        allowed,
    ))
}

/// UEFI/systemd-boot install on ext4 `-O verity` by this host (no fs-verity:
/// an insecure store), then the way to secure mode: the first boot shows
/// verity not enforced and seals the store (`bootc internals seal-store`
/// from the BOOTCTEST step); the second boot mounts the deployment with
/// fs-verity required and status says so. After the guest sealed it, the
/// host never reads the store (this kernel cannot open files with
/// fs-verity on ext4).
fn uefi_seal_test(ctx: &Ctx) -> Result<()> {
    ensure_example_image()?;
    let disk = DiskFile::new()?;
    install_to_disk(ctx, &disk.path, "systemd")?;
    let dep = read_deployment(&disk.path)?;
    println!("installed deployment {}: {}", dep.id, dep.json);
    check_podman_digest(&dep)?;
    ensure!(
        dep.json["verity"] == "insecure",
        "this host has no fs-verity, yet install recorded {} (install side)",
        dep.json["verity"]
    );

    let step = tempfile::Builder::new()
        .prefix("bootc-seal-step.")
        .tempdir_in("/var/tmp")?;
    fs::write(step.path().join("step.sh"), SEAL_STEP)?;
    let r = boot_and_check_with(&disk.path, Firmware::Uefi, &dep, Some(step.path()))?;
    let check_first = || -> Result<()> {
        ensure!(
            booted_verity(&r)? == (false, true),
            "first boot: expected verity not enforced on / and missingVerityAllowed=true, got {:?}",
            booted_verity(&r)?
        );
        let block = vm::parse_block(&r.log, "BOOTC-STEP-BEGIN", "BOOTC-STEP-END");
        ensure!(
            vm::marker_value(&r.log, "BOOTC-STEP-RC=0").is_some(),
            "seal-store failed in the guest (seal side):\n{}",
            block.unwrap_or_default()
        );
        Ok(())
    };
    check_first().map_err(|e| with_report(e, &r))?;

    let r = boot_and_check(&disk.path, Firmware::Uefi, &dep)?;
    let got = booted_verity(&r).map_err(|e| with_report(e, &r))?;
    ensure!(
        got == (true, false),
        "after sealing: expected / mounted with verity=require and missingVerityAllowed=false, got {got:?} (initramfs/status side)\n{}",
        failure_report(&r)
    );
    drop(disk.dir);
    Ok(())
}

fn vm_boot_bios_grub(ctx: &Ctx) -> Result<()> {
    skip_without_qemu!();
    let _l = vm_lock();
    disk_test(ctx, Firmware::Bios, "grub")
}

fn vm_boot_uefi_systemd_boot(ctx: &Ctx) -> Result<()> {
    skip_without_qemu!();
    let _l = vm_lock();
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
    let _l = vm_lock();
    ensure_example_image()?;
    let disk = DiskFile::new()?;
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
        let install = install_to_filesystem(ctx, m.path(), &["--boot-mount-spec", &spec]);
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
    let step = tempfile::Builder::new()
        .prefix("bootc-boot-step.")
        .tempdir_in("/var/tmp")?;
    fs::write(
        step.path().join("step.sh"),
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
        failure_report(&r)
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
    let _l = vm_lock();
    ensure_example_image()?;
    let disk = DiskFile::new()?;
    install_to_disk(ctx, &disk.path, "grub")?;
    let dep = read_deployment(&disk.path)?;
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
