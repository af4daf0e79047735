//! The host lifecycle across real reboots (issue #4): install v1, switch to
//! v2 from an OCI layout with `--apply` (a real reboot), roll back, stage
//! from the host with `--sysroot`, kill the guest in the middle of staging,
//! and make a finalization at shutdown fail.
//!
//! Images: `localhost/bootc-example:v1` and `:v2` (`examples/build.sh v1`,
//! `examples/build.sh v2 --build-arg VARIANT=v2`; `BOOTC_LIFECYCLE_V1` and
//! `BOOTC_LIFECYCLE_V2` name others). They differ in a package
//! (`tree`, v2 only), `/usr/share/bootc-example/variant`, default files in
//! /etc (`bootc-example.conf` and `bootc-example-defaults.conf` change,
//! `bootc-example-v2-only.conf` is new in v2) and `kargs.d/10-variant.toml`
//! (`bootc.example=v1` / `bootc.example=v2`).
//!
//! Each boot is a fresh qemu (OVMF/systemd-boot, `-no-reboot`) with two
//! disks: the installed disk, and an ext4 disk labelled `BOOTCTEST` holding
//! OCI layouts of v1, v2 and v3 and the `step.sh` of that boot. UEFI makes
//! the booted guest write its ESP (with mtools) when it stages and
//! finalizes; all three images have the same kernel, so the ESP holds one
//! shared `bootc/<bootDigest>/` throughout. The example image's
//! `bootc-test-runner.service` runs `step.sh` after the status unit and
//! prints its output between `BOOTC-STEP-BEGIN` and `BOOTC-STEP-END`, then
//! `BOOTC-STEP-RC=<n>`; `bootc-test-poweroff.service` then powers off
//! (`bootc.test.poweroff=1` is an install-time karg), and
//! `bootc-finalize-staged.service` finalizes a staged deployment on the way.
//!
//! Inside a step, the helper functions of [`PRELUDE`] print what the host
//! asserts on: `@@BEGIN-<label>@@` / `@@END-<label>@@` around a
//! `bootc status --format json` document, `@@VAL <key>=<value>` lines and
//! `@@RC <label>=<exit code>` lines.
//!
//! Step 1 switches with `--apply`: a `systemctl` wrapper put first in PATH
//! sees bootc ask for the reboot, prints the staged status, edits /etc
//! (after staging, before the finalization) and then reboots for real; with
//! `-no-reboot` qemu exits, and the host checks the kernel said "Restarting
//! system" and the test's power-off unit never ran.
//!
//! Step 5 kills the guest while it stages v3 (`localhost/bootc-example:v3`,
//! or `<V2>-v3` for another v2), which
//! the test builds from v2 (cached while v2 keeps its image id): v2 plus
//! [`V3_BULK_MIB`] MiB of random files under `/usr/share/bootc-bulk` in one
//! layer, so that the import is still running when qemu is killed. After the
//! kill the old deployment boots, and staging v3 again succeeds and boots.
//!
//! Step 6 stages v1 on the booted v3, removes the staged deployment's
//! EROFS image from the store and powers off: the finalization at shutdown
//! fails, the next boot is v3 again, and the failure is in the (persistent,
//! since step 1) journal of the previous boot.
//!
//! Environment: `BOOTC_LIFECYCLE_FILESYSTEM=ext4` installs with that root
//! filesystem (default xfs: see the install step for why);
//! `BOOTC_LIFECYCLE_FIRMWARE=bios` uses SeaBIOS/GRUB instead of UEFI;
//! `BOOTC_LIFECYCLE_START=offline` skips steps 1-3;
//! `BOOTC_TEST_VM_LOGDIR=DIR` keeps the serial logs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bootc_tests_integration::run;
use bootc_tests_integration::vm::{self, Firmware, Run, Vm};
use serde_json::Value;

use crate::{Ctx, TestFn};

/// The tests of this module.
pub const TESTS: &[(&str, TestFn)] =
    &[("vm_lifecycle_switch_rollback", vm_lifecycle_switch_rollback)];

/// The installed image (`$BOOTC_LIFECYCLE_V1`, default
/// `localhost/bootc-example:v1`).
fn v1() -> &'static str {
    &images().0
}

/// The image switched to (`$BOOTC_LIFECYCLE_V2`, default
/// `localhost/bootc-example:v2`).
fn v2() -> &'static str {
    &images().1
}

/// v2 plus a large layer, staged while the guest is killed (built by
/// [`ensure_v3`]): `localhost/bootc-example:v3` for the default v2, else
/// `<V2>-v3`.
fn v3() -> &'static str {
    &images().2
}

fn images() -> &'static (String, String, String) {
    static IMAGES: std::sync::OnceLock<(String, String, String)> = std::sync::OnceLock::new();
    IMAGES.get_or_init(|| {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let v1 = env("BOOTC_LIFECYCLE_V1").unwrap_or_else(|| "localhost/bootc-example:v1".into());
        let v2 = env("BOOTC_LIFECYCLE_V2");
        let v3 = match &v2 {
            Some(v2) => format!("{v2}-v3"),
            None => "localhost/bootc-example:v3".into(),
        };
        let v2 = v2.unwrap_or_else(|| "localhost/bootc-example:v2".into());
        (v1, v2, v3)
    })
}

/// Firmware and bootloader: OVMF/systemd-boot, or SeaBIOS/GRUB with
/// `BOOTC_LIFECYCLE_FIRMWARE=bios`.
fn firmware() -> (Firmware, &'static str) {
    match std::env::var("BOOTC_LIFECYCLE_FIRMWARE").as_deref() {
        Ok("bios") => (Firmware::Bios, "grub"),
        _ => (Firmware::Uefi, "systemd"),
    }
}

/// Size of v3's layer of random (incompressible) files.
const V3_BULK_MIB: u32 = 192;

/// Size of each of v3's random files.
const V3_BULK_FILE_MIB: u32 = 16;

/// Label of v3 holding the image id of the v2 it was built from.
const V3_FROM_LABEL: &str = "org.bootc-test.v2-id";

/// Size of the sparse disk image (three deployments of ~300 MB images).
const DISK_SIZE: u64 = 8 << 30;

/// Bound of one `bootc install`.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(900);

/// Bound of one boot, step and shutdown (with finalization) under TCG.
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);

/// After `BOOTC-POWEROFF`, time for the shutdown (and the finalization of a
/// staged deployment) to end with qemu exiting.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(300);

/// After the guest says it started staging v3, how long it runs before qemu
/// is killed: well inside the import of v3's large layer under TCG.
const KILL_DELAY: Duration = Duration::from_secs(6);

/// Discoverable Partitions Specification type of an x86-64 root partition.
const ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

/// Lifecycle VM tests one at a time (boot.rs has its own lock; run VM tests
/// with `--test-threads=1` to keep them from overlapping).
static LOCK: Mutex<()> = Mutex::new(());

/// Shell helpers put in front of every step script.
pub(crate) const PRELUDE: &str = r#"set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# J LABEL CMD...: a JSON document between markers, then its exit code.
J() { local label=$1; shift; echo "@@BEGIN-$label@@"; "$@" 2>/tmp/j.err; local rc=$?; echo "@@END-$label@@"; echo "@@RC $label=$rc"; sed "s/^/@@ERR $label: /" /tmp/j.err; }
# V KEY CMD...: the output of CMD on one line (newlines as |).
V() { local key=$1; shift; echo "@@VAL $key=$("$@" 2>&1 | tr '\n' '|' | sed 's/|$//')"; }
# R LABEL CMD...: run CMD, print its output prefixed, then its exit code.
R() { local label=$1; shift; "$@" >/tmp/r.out 2>&1; local rc=$?; sed "s/^/@@OUT $label: /" /tmp/r.out; echo "@@RC $label=$rc"; }
exists() { if test -e "$1"; then echo present; else echo absent; fi; }
# The names in bootc/ of the boot filesystem: the ESP (read with mtools) on
# UEFI, /sysroot/boot on BIOS; `.`-prefixed temporary names left out.
boot_dirs() {
    local esp
    esp=$(lsblk -rnpo PATH,PARTTYPE | while read -r p t; do [ "${t,,}" = c12a7328-f81f-11d2-ba4b-00a0c93ec93b ] && echo "$p"; done | head -n1)
    if [ -n "$esp" ]; then
        # (mdir warns about the partition geometry on stderr.)
        MTOOLS_SKIP_CHECK=1 mdir -b -i "$esp" ::/bootc 2>/dev/null | sed -n 's|^::/bootc/\([^./][^/]*\)/$|\1|p'
    else
        ls /sysroot/boot/bootc | grep -v '^\.'
    fi
}
"#;

fn vm_lifecycle_switch_rollback(ctx: &Ctx) -> Result<()> {
    if let Some(reason) = vm::qemu_missing() {
        println!("SKIP: {reason}");
        return Ok(());
    }
    let _l = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    for img in [v1(), v2()] {
        let st = Command::new("podman")
            .args(["image", "exists", img])
            .status()
            .context("Running podman image exists")?;
        ensure!(
            st.success(),
            "{img} is not in podman's storage: run `examples/build.sh v1` and \
             `examples/build.sh v2 --build-arg VARIANT=v2`"
        );
    }
    let start = Instant::now();
    ensure_v3()?;
    println!("v3 ready: {:.1?}", start.elapsed());
    let work = tempfile::Builder::new()
        .prefix("bootc-lifecycle.")
        .tempdir_in("/var/tmp")?;
    let mut l = Lifecycle::prepare(ctx, work.path())?;
    println!("prepared in {:.1?}: {:#?}", t0.elapsed(), l.digests);
    l.run_all(ctx)?;
    println!("lifecycle scenario passed in {:.1?}", t0.elapsed());
    Ok(())
}

/// The image id of `img` in podman's storage (`None` if it is not there).
pub(crate) fn podman_image_id(img: &str) -> Result<Option<String>> {
    let out = Command::new("podman")
        .args(["image", "inspect", "--format", "{{.Id}}", img])
        .stderr(Stdio::null())
        .output()
        .context("Running podman image inspect")?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()))
}

/// Whether `img` exists and its label `label` is `from_id` (the image id it
/// was built from).
pub(crate) fn built_from(img: &str, label: &str, from_id: &str) -> Result<bool> {
    if podman_image_id(img)?.is_none() {
        return Ok(false);
    }
    let out = run(Command::new("podman").args([
        "image",
        "inspect",
        "--format",
        &format!("{{{{index .Labels \"{label}\"}}}}"),
        img,
    ]))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == from_id)
}

/// The manifest digest podman's storage gives `img`.
pub(crate) fn podman_digest(img: &str) -> Result<String> {
    let out =
        run(Command::new("podman").args(["image", "inspect", "--format", "{{.Digest}}", img]))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `bootc install to-disk --via-loopback` of `img` (containers-storage) to
/// `disk` with `bootloader` and the `bootc.test.poweroff=1` karg the step
/// protocol needs, bounded by [`INSTALL_TIMEOUT`]; `extra` args go before
/// the disk.
pub(crate) fn install_to_disk(
    ctx: &Ctx,
    img: &str,
    bootloader: &str,
    extra: &[String],
    disk: &Path,
) -> Result<()> {
    let mut c = Command::new("timeout");
    c.args(["--kill-after=30", &INSTALL_TIMEOUT.as_secs().to_string()])
        .arg(&ctx.bootc.bin)
        .args([
            "install",
            "to-disk",
            "--via-loopback",
            "--source-imgref",
            &format!("containers-storage:{img}"),
            "--bootloader",
            bootloader,
            "--karg",
            "bootc.test.poweroff=1",
        ])
        .args(extra)
        .arg(disk)
        .env("CONTAINERS_REGISTRIES_CONF", ctx.bootc.registries_conf())
        .env("CONTAINERS_POLICY_JSON", ctx.bootc.policy_json())
        .stdin(Stdio::null());
    run(&mut c).with_context(|| format!("Installing {img} to {}", disk.display()))?;
    Ok(())
}

/// The `BOOTCTEST` disk `work/bootctest.ext4` holding an OCI layout of each
/// (image, name) at `/name` (tag `name`) and a placeholder step.sh; returns
/// it with the layouts' manifest digests, in order.
pub(crate) fn make_test_disk(
    work: &Path,
    images: &[(&str, &str)],
) -> Result<(PathBuf, Vec<String>)> {
    let dir = work.join("testdisk");
    fs::create_dir(&dir)?;
    let mut digests = Vec::new();
    for (img, name) in images {
        run(Command::new("skopeo").args([
            "copy",
            "--quiet",
            &format!("containers-storage:{img}"),
            &format!("oci:{}:{name}", dir.join(name).display()),
        ]))
        .with_context(|| format!("Copying {img} to an OCI layout"))?;
        digests.push(oci_digest(&dir.join(name))?);
    }
    fs::write(dir.join("step.sh"), "echo no step yet\n")?;
    let testdisk = work.join("bootctest.ext4");
    vm::make_ext4_image(&dir, "BOOTCTEST", &testdisk)?;
    fs::remove_dir_all(&dir)?;
    Ok((testdisk, digests))
}

/// Put `body` (after [`PRELUDE`]) as step.sh on the BOOTCTEST disk
/// `testdisk`, dropping the previous step's out.log.
pub(crate) fn write_step(testdisk: &Path, body: &str) -> Result<()> {
    let m = tempfile::Builder::new()
        .prefix("bootctest-mnt.")
        .tempdir_in("/var/tmp")?;
    run(Command::new("mount")
        .args(["-o", "loop"])
        .arg(testdisk)
        .arg(m.path()))?;
    let r = fs::write(m.path().join("step.sh"), format!("{PRELUDE}{body}")).map(|()| {
        let _ = fs::remove_file(m.path().join("out.log"));
    });
    run(Command::new("umount").arg(m.path()))?;
    r.context("Writing step.sh on the BOOTCTEST disk")
}

/// Build [`v3`] from the current [`v2`] unless a v3 built from it exists.
fn ensure_v3() -> Result<()> {
    let (v2, v3) = (v2(), v3());
    let v2_id = podman_image_id(v2)?.with_context(|| format!("{v2} is not in podman's storage"))?;
    if built_from(v3, V3_FROM_LABEL, &v2_id)? {
        println!("reusing {v3} (built from {v2} {v2_id})");
        return Ok(());
    }
    let ctx = tempfile::Builder::new()
        .prefix("bootc-lifecycle-v3.")
        .tempdir_in("/var/tmp")?;
    let files = V3_BULK_MIB / V3_BULK_FILE_MIB;
    // FROM the id, not the tag: the label then names what v3 is made of.
    // The random files go in one RUN (one layer) of incompressible data.
    let containerfile = format!(
        "FROM {v2_id}\n\
         RUN set -eu; mkdir -p /usr/share/bootc-bulk; \\\n\
         \x20   for i in $(seq 1 {files}); do \\\n\
         \x20       head -c {V3_BULK_FILE_MIB}M /dev/urandom > /usr/share/bootc-bulk/blob-$i; \\\n\
         \x20   done; \\\n\
         \x20   echo v3 > /usr/share/bootc-example/variant\n\
         LABEL org.opencontainers.image.version=v3 {V3_FROM_LABEL}={v2_id}\n"
    );
    fs::write(ctx.path().join("Containerfile"), containerfile)?;
    let start = Instant::now();
    run(Command::new("podman")
        .args([
            "build",
            "--isolation=chroot",
            "--layers=false",
            "-t",
            v3,
            "-f",
        ])
        .arg(ctx.path().join("Containerfile"))
        .arg(ctx.path()))
    .with_context(|| format!("Building {v3} from {v2}"))?;
    println!("built {v3} from {v2} in {:.1?}", start.elapsed());
    Ok(())
}

/// Manifest digests of the images as each source serves them.
#[derive(Debug)]
struct Digests {
    /// v1 in containers-storage (what install recorded).
    v1_storage: String,
    /// v2 in the OCI layout on the test disk.
    v2_oci: String,
    /// v2 in the local registry.
    v2_registry: String,
    /// v3 in the OCI layout on the test disk.
    v3_oci: String,
    /// v1 in the OCI layout on the test disk.
    v1_oci: String,
}

struct Lifecycle {
    disk: PathBuf,
    testdisk: PathBuf,
    registry_ref: String,
    digests: Digests,
    boots: u32,
}

impl Lifecycle {
    /// Install v1 to a disk; make the BOOTCTEST disk with the OCI layouts;
    /// push v2 to the registry.
    fn prepare(ctx: &Ctx, work: &Path) -> Result<Self> {
        let disk = work.join("disk.raw");
        fs::File::create(&disk)?.set_len(DISK_SIZE)?;
        let start = Instant::now();
        // The root filesystem defaults to xfs here, not ext4: the guest
        // kernel has fs-verity and seals what it writes on ext4 -O verity,
        // and this host's kernel (no fs-verity) then cannot open those
        // files at all (EOPNOTSUPP), which breaks the offline step 4 on
        // the host. On ext4, steps 1-3 pass. BOOTC_LIFECYCLE_FILESYSTEM=ext4
        // selects ext4 on a host whose kernel has fs-verity.
        let fs_args = [
            "--filesystem".to_owned(),
            std::env::var("BOOTC_LIFECYCLE_FILESYSTEM").unwrap_or_else(|_| "xfs".into()),
        ];
        install_to_disk(ctx, v1(), firmware().1, &fs_args, &disk)
            .context("Installing v1 (install side)")?;
        println!(
            "install v1 to-disk ({}): {:.1?}",
            firmware().1,
            start.elapsed()
        );

        let v1_storage = podman_digest(v1())?;

        let start = Instant::now();
        let (testdisk, layouts) =
            make_test_disk(work, &[(v1(), "v1"), (v2(), "v2"), (v3(), "v3")])?;
        let [v1_oci, v2_oci, v3_oci] = [&layouts[0], &layouts[1], &layouts[2]].map(Clone::clone);
        println!("OCI layouts + BOOTCTEST disk: {:.1?}", start.elapsed());

        let registry_ref = format!("{}/bootc-example:v2", ctx.registry.addr);
        let digestfile = work.join("v2.digest");
        run(Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false", "--digestfile"])
            .arg(&digestfile)
            .arg(format!("containers-storage:{}", v2()))
            .arg(format!("docker://{registry_ref}")))
        .context("Pushing v2 to the local registry")?;
        let v2_registry = fs::read_to_string(&digestfile)?.trim().to_owned();
        Ok(Self {
            disk,
            testdisk,
            registry_ref,
            digests: Digests {
                v1_storage,
                v2_oci,
                v2_registry,
                v3_oci,
                v1_oci,
            },
            boots: 0,
        })
    }

    /// Put `body` (after [`PRELUDE`]) as step.sh on the BOOTCTEST disk.
    fn set_step(&self, body: &str) -> Result<()> {
        write_step(&self.testdisk, body)
    }

    /// Boot once with `step`; wait for `until` (then `grace` for qemu to
    /// exit by itself).
    fn boot(&mut self, name: &str, step: &str, until: &str, grace: Duration) -> Result<Run> {
        self.set_step(step)?;
        self.boots += 1;
        let mut vm = Vm::builder()
            .firmware(firmware().0)
            .disk(&self.disk)
            .disk(&self.testdisk)
            .build()?;
        let r = vm.run_until_then_exit(until, grace, BOOT_TIMEOUT)?;
        println!(
            "boot {} ({name}): {until} after {:.1?}, qemu ended after {:.1?} ({:?})",
            self.boots,
            r.matched_after.unwrap_or_default(),
            r.elapsed,
            r.end
        );
        Ok(r)
    }

    /// Boot with a step that ends in `bootc switch --apply`: the step's
    /// `systemctl` wrapper prints `BOOTC-APPLY-REBOOT` when bootc asks for
    /// the reboot; qemu (`-no-reboot`) then exits by itself. Checks that it
    /// was that reboot, not the test's power-off.
    fn boot_step_apply(&mut self, name: &str, step: &str) -> Result<(Run, Step)> {
        let r = self.boot(name, step, "BOOTC-APPLY-REBOOT", SHUTDOWN_GRACE)?;
        let s = Step::parse(&r).with_context(|| report(&r, None))?;
        let log = vm::tail_lines(&r.log, usize::MAX);
        ensure!(
            r.matched(),
            "bootc switch --apply did not ask systemctl to reboot in {name}\n{}",
            report(&r, Some(&s))
        );
        ensure!(
            r.exited_cleanly(),
            "the guest did not reboot after {name} ({:?}): shutdown/finalize hung?\n{}",
            r.end,
            report(&r, Some(&s))
        );
        ensure!(
            log.contains("reboot: Restarting system") && !log.contains("reboot: Power down"),
            "the guest did not end {name} with a reboot (kernel message)\n{}",
            report(&r, Some(&s))
        );
        ensure!(
            !log.contains("BOOTC-POWEROFF"),
            "the test's power-off unit ran in {name}: the reboot did not come from --apply\n{}",
            report(&r, Some(&s))
        );
        Ok((r, s))
    }

    /// Boot, run the step to its end and power off (finalizing anything staged).
    fn boot_step(&mut self, name: &str, step: &str) -> Result<(Run, Step)> {
        let r = self.boot(name, step, "BOOTC-POWEROFF", SHUTDOWN_GRACE)?;
        let s = Step::parse(&r).with_context(|| report(&r, None))?;
        ensure!(
            s.rc == Some(0),
            "step.sh of {name} exited with {:?}\n{}",
            s.rc,
            report(&r, Some(&s))
        );
        ensure!(
            r.exited_cleanly(),
            "the guest did not power off after {name} ({:?}): shutdown/finalize hung?\n{}",
            r.end,
            report(&r, Some(&s))
        );
        Ok((r, s))
    }

    fn run_all(&mut self, ctx: &Ctx) -> Result<()> {
        let d = &self.digests;
        let (v1_storage, v2_oci, v2_registry, v3_oci, v1_oci) = (
            d.v1_storage.clone(),
            d.v2_oci.clone(),
            d.v2_registry.clone(),
            d.v3_oci.clone(),
            d.v1_oci.clone(),
        );

        // BOOTC_LIFECYCLE_START=offline skips steps 1-3 (a debugging aid: the
        // host-side part runs even while the guest-side switch is broken).
        let full = std::env::var("BOOTC_LIFECYCLE_START").as_deref() != Ok("offline");
        if full {
            self.guest_switch_and_rollback(&v1_storage, &v2_oci)?;
        } else {
            println!("BOOTC_LIFECYCLE_START=offline: skipping steps 1-3");
        }
        self.offline_and_kill(ctx, full, &v1_storage, &v2_registry, &v3_oci, &v1_oci)
    }

    /// Steps 1-3: local changes on v1, switch to v2, roll back.
    fn guest_switch_and_rollback(&mut self, v1_storage: &str, v2_oci: &str) -> Result<()> {
        let (v1_storage, v2_oci) = (v1_storage.to_owned(), v2_oci.to_owned());
        // 1. v1 booted: local /etc and /var changes, switch to v2 (OCI
        // layout) with --apply. A persistent journal for step 6.
        let (r, s) = self.boot_step_apply(
            "1: v1, local changes, switch --apply to v2",
            r#"J before bootc status --format json
V variant cat /usr/share/bootc-example/variant
V cmdline cat /proc/cmdline
mkdir -p /var/log/journal && systemd-tmpfiles --create --prefix /var/log/journal && journalctl --flush
echo 'variant = local edit' > /etc/bootc-example.conf
echo 'added locally' > /etc/local-added
rm /etc/bootc-example-removable.conf
mkdir -p /var/lib/mydata && echo precious > /var/lib/mydata/data
sync
# bootc reboots through `systemctl reboot`: this wrapper runs first, with
# the deployment staged and nothing finalized yet.
mkdir -p /run/apply-shim
cat > /run/apply-shim/systemctl <<'SHIM'
#!/bin/bash
if [ "${1:-}" = reboot ]; then
    echo "@@VAL rebooter=$(tr '\0' ' ' < /proc/$PPID/cmdline)"
    J staged bootc status --format json
    # Made after staging: the merge at shutdown must still see it.
    echo 'after staging' > /etc/local-after-staging
    sync
    echo BOOTC-STEP-END
    echo BOOTC-APPLY-REBOOT
fi
exec /usr/bin/systemctl "$@"
SHIM
chmod +x /run/apply-shim/systemctl
export -f J
PATH=/run/apply-shim:$PATH bootc switch --apply --transport oci /run/bootctest/v2:v2
echo "@@RC switch=$?"
"#,
        )?;
        let ctx1 = || report(&r, Some(&s));
        (|| -> Result<()> {
            let before = s.json("before")?;
            expect_booted(&before, "containers-storage", Some(v1()), &v1_storage)?;
            s.expect_val("variant", "v1")?;
            expect_karg(&s, "bootc.example=v1", true)?;
            let rebooter = s.val("rebooter").unwrap_or_default();
            ensure!(
                rebooter.contains("bootc switch --apply"),
                "systemctl reboot was called by {rebooter:?}, not bootc switch --apply"
            );
            let st = s.json("staged")?;
            expect_entry(&st, "staged", "oci", "/run/bootctest/v2:v2", &v2_oci)?;
            expect_booted(&st, "containers-storage", Some(v1()), &v1_storage)?;
            ensure!(
                st["spec"]["image"]["image"] == "/run/bootctest/v2:v2",
                "spec.image after switch is {}, not the OCI layout",
                st["spec"]["image"]
            );
            Ok(())
        })()
        .with_context(ctx1)
        .context("step 1 (v1 booted, switch to v2)")?;

        // 2. v2 booted: /usr, /etc merge, /var, kargs, v1 as rollback; roll back.
        let (r, s) = self.boot_step(
            "2: v2 booted, roll back",
            r#"J status bootc status --format json
V variant cat /usr/share/bootc-example/variant
V cmdline cat /proc/cmdline
V conf cat /etc/bootc-example.conf
V added cat /etc/local-added
V after cat /etc/local-after-staging
V removable exists /etc/bootc-example-removable.conf
V v2only cat /etc/bootc-example-v2-only.conf
V defaults cat /etc/bootc-example-defaults.conf
V mydata cat /var/lib/mydata/data
V tree sh -c 'command -v tree || echo missing'
V bootdirs boot_dirs
echo 'edited in v2' > /etc/v2-local
echo 'written by v2' > /var/lib/mydata/from-v2
sync
R rollback bootc rollback
J queued bootc status --format json
"#,
        )?;
        (|| -> Result<()> {
            let st = s.json("status")?;
            expect_booted(&st, "oci", Some("/run/bootctest/v2:v2"), &v2_oci)?;
            expect_entry(&st, "rollback", "containers-storage", v1(), &v1_storage)?;
            ensure!(
                st["status"]["staged"].is_null(),
                "status.staged after finalize: {}",
                st["status"]["staged"]
            );
            s.expect_val("variant", "v2")?;
            expect_karg(&s, "bootc.example=v2", true)?;
            expect_karg(&s, "bootc.example=v1", false)?;
            expect_karg(&s, "bootc.test.poweroff=1", true)?;
            s.expect_val("conf", "variant = local edit")?;
            s.expect_val("added", "added locally")?;
            s.expect_val("after", "after staging")?;
            s.expect_val("removable", "absent")?;
            s.expect_val("v2only", "only in v2")?;
            s.expect_val("defaults", "defaults of v2")?;
            s.expect_val("mydata", "precious")?;
            s.expect_val("tree", "/usr/bin/tree")?;
            // v1 and v2 have the same kernel: one shared boot directory.
            let digest = &st["status"]["booted"]["composefs"]["bootDigest"];
            ensure!(
                digest.as_str().is_some_and(|d| d.len() == 64)
                    && *digest == st["status"]["rollback"]["composefs"]["bootDigest"],
                "booted and rollback bootDigest differ or are missing: {} / {}",
                digest,
                st["status"]["rollback"]["composefs"]["bootDigest"]
            );
            s.expect_val("bootdirs", digest.as_str().unwrap_or_default())?;
            s.expect_rc("rollback", 0)?;
            let q = s.json("queued")?;
            expect_booted(&q, "oci", Some("/run/bootctest/v2:v2"), &v2_oci)?;
            ensure!(
                q["status"]["rollbackQueued"] == true,
                "status.rollbackQueued after `bootc rollback` is {}",
                q["status"]["rollbackQueued"]
            );
            Ok(())
        })()
        .with_context(|| report(&r, Some(&s)))
        .context("step 2 (v2 booted after switch; rollback)")?;

        // 3. v1 booted again, with its /etc as it was.
        let (r, s) = self.boot_step(
            "3: v1 after rollback",
            r#"J status bootc status --format json
V variant cat /usr/share/bootc-example/variant
V cmdline cat /proc/cmdline
V conf cat /etc/bootc-example.conf
V added cat /etc/local-added
V after cat /etc/local-after-staging
V removable exists /etc/bootc-example-removable.conf
V v2only exists /etc/bootc-example-v2-only.conf
V v2local exists /etc/v2-local
V defaults cat /etc/bootc-example-defaults.conf
V mydata cat /var/lib/mydata/data
V fromv2 cat /var/lib/mydata/from-v2
V tree sh -c 'command -v tree || echo missing'
"#,
        )?;
        (|| -> Result<()> {
            let st = s.json("status")?;
            expect_booted(&st, "containers-storage", Some(v1()), &v1_storage)?;
            expect_entry(&st, "rollback", "oci", "/run/bootctest/v2:v2", &v2_oci)?;
            s.expect_val("variant", "v1")?;
            expect_karg(&s, "bootc.example=v1", true)?;
            expect_karg(&s, "bootc.example=v2", false)?;
            s.expect_val("conf", "variant = local edit")?;
            s.expect_val("added", "added locally")?;
            s.expect_val("after", "after staging")?;
            s.expect_val("removable", "absent")?;
            s.expect_val("v2only", "absent")?;
            s.expect_val("v2local", "absent")?;
            s.expect_val("defaults", "defaults of v1")?;
            s.expect_val("mydata", "precious")?;
            s.expect_val("fromv2", "written by v2")?;
            s.expect_val("tree", "missing")?;
            Ok(())
        })()
        .with_context(|| report(&r, Some(&s)))
        .context("step 3 (v1 booted after rollback)")?;

        Ok(())
    }

    /// Steps 4-6: offline switch from the registry; kill while staging; a
    /// failed finalization.
    fn offline_and_kill(
        &mut self,
        ctx: &Ctx,
        full: bool,
        v1_storage: &str,
        v2_registry: &str,
        v3_oci: &str,
        v1_oci: &str,
    ) -> Result<()> {
        let (v1_storage, v2_registry, v3_oci) = (
            v1_storage.to_owned(),
            v2_registry.to_owned(),
            v3_oci.to_owned(),
        );
        // The local edit of step 1 survives every merge; without it, v2's default.
        let conf = if full {
            "variant = local edit"
        } else {
            "# bootc example configuration|variant = v2"
        };
        // 4. Offline: stage v2 from the registry with --sysroot, boot it.
        let start = Instant::now();
        self.offline_switch(ctx)
            .context("step 4 (offline switch with --sysroot from the registry)")?;
        println!("offline switch: {:.1?}", start.elapsed());
        let reg = self.registry_ref.clone();
        // 5 (first half): after the checks, stage v3 (a large new layer)
        // and be killed in the middle of the import. The step prints its
        // own BOOTC-STEP-END before.
        let r = self.boot(
            "4+5: v2 from the registry; killed while staging",
            r#"J status bootc status --format json
V variant cat /usr/share/bootc-example/variant
V cmdline cat /proc/cmdline
V conf cat /etc/bootc-example.conf
V mydata cat /var/lib/mydata/data
echo BOOTC-STEP-END
bootc switch --transport oci /run/bootctest/v3:v3 &
echo BOOTC-STAGING
wait
echo BOOTC-STAGING-DONE
"#,
            "BOOTC-STAGING",
            KILL_DELAY,
        )?;
        let s = Step::parse(&r).with_context(|| report(&r, None))?;
        (|| -> Result<()> {
            let st = s.json("status")?;
            expect_booted(&st, "registry", Some(&reg), &v2_registry)?;
            expect_entry(&st, "rollback", "containers-storage", v1(), &v1_storage)?;
            s.expect_val("variant", "v2")?;
            expect_karg(&s, "bootc.example=v2", true)?;
            s.expect_val("conf", conf)?;
            if full {
                s.expect_val("mydata", "precious")?;
            }
            ensure!(r.matched(), "no BOOTC-STAGING marker");
            ensure!(
                !vm::tail_lines(&r.log, usize::MAX).contains("BOOTC-STAGING-DONE"),
                "staging finished within {KILL_DELAY:?}: the kill did not land in the middle of it"
            );
            ensure!(
                !r.exited_cleanly(),
                "qemu exited by itself instead of being killed ({:?})",
                r.end
            );
            Ok(())
        })()
        .with_context(|| report(&r, Some(&s)))
        .context("step 4 (v2 booted after the offline switch)")?;

        // 5. After the kill: the old deployment boots, staging v3 again
        // (over whatever the killed import left in the store) works.
        let start = Instant::now();
        let (r, s) = self.boot_step(
            "5: after the kill, stage v3 again",
            r#"J status bootc status --format json
V variant cat /usr/share/bootc-example/variant
V bulk exists /usr/share/bootc-bulk
V t0 date +%s
R switch bootc switch --transport oci /run/bootctest/v3:v3
V t1 date +%s
J staged bootc status --format json
"#,
        )?;
        println!("boot + stage v3 again: {:.1?}", start.elapsed());
        (|| -> Result<()> {
            let st = s.json("status")?;
            expect_booted(&st, "registry", Some(&reg), &v2_registry)?;
            ensure!(
                st["status"]["staged"].is_null(),
                "a staged deployment survived the kill in the middle of staging: {}",
                st["status"]["staged"]
            );
            s.expect_val("variant", "v2")?;
            s.expect_val("bulk", "absent")?;
            s.expect_rc("switch", 0)?;
            if let (Some(t0), Some(t1)) = (s.val("t0"), s.val("t1")) {
                println!("guest: staging v3 after the kill took {t0}..{t1} s");
            }
            let staged = s.json("staged")?;
            expect_entry(&staged, "staged", "oci", "/run/bootctest/v3:v3", &v3_oci)?;
            expect_booted(&staged, "registry", Some(&reg), &v2_registry)?;
            Ok(())
        })()
        .with_context(|| report(&r, Some(&s)))
        .context("step 5 (after the kill)")?;

        // 5 (end): the new staging was finalized and boots. 6 (first
        // half): stage v1, take the staged deployment's EROFS image out of
        // the store, power off: the finalization at shutdown fails.
        let (r, s) = self.boot_step(
            "5+6: the re-staged v3 boots; stage v1 and break it",
            r#"J status bootc status --format json
V variant cat /usr/share/bootc-example/variant
V conf cat /etc/bootc-example.conf
V bulk sh -c 'ls /usr/share/bootc-bulk | wc -l'
V bulkread sh -c 'cat /usr/share/bootc-bulk/* | wc -c'
V bootdirs boot_dirs
R stage1 bootc switch --transport oci /run/bootctest/v1:v1
J staged1 bootc status --format json
id=$(sed -n 's/.*"id": *"\([0-9a-f]*\)".*/\1/p' /sysroot/state/staged.json)
V brokenid echo "$id"
V imagebefore exists "/sysroot/composefs/images/$id"
rm -f "/sysroot/composefs/images/$id"
V imageafter exists "/sysroot/composefs/images/$id"
sync
"#,
        )?;
        (|| -> Result<()> {
            let st = s.json("status")?;
            expect_booted(&st, "oci", Some("/run/bootctest/v3:v3"), &v3_oci)?;
            expect_entry(&st, "rollback", "registry", &reg, &v2_registry)?;
            s.expect_val("variant", "v3")?;
            let files = V3_BULK_MIB / V3_BULK_FILE_MIB;
            s.expect_val("bulk", &files.to_string())?;
            s.expect_val("bulkread", &(u64::from(V3_BULK_MIB) << 20).to_string())?;
            if full {
                s.expect_val("conf", "variant = local edit")?;
            }
            let digest = st["status"]["booted"]["composefs"]["bootDigest"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            s.expect_val("bootdirs", &digest)?;
            Ok(())
        })()
        .with_context(|| report(&r, Some(&s)))
        .context("step 5 (the deployment staged after the kill boots)")?;
        let broken = (|| -> Result<String> {
            s.expect_rc("stage1", 0)?;
            let st = s.json("staged1")?;
            expect_entry(&st, "staged", "oci", "/run/bootctest/v1:v1", v1_oci)?;
            let id = s.val("brokenid").unwrap_or_default();
            ensure!(
                st["status"]["staged"]["composefs"]["verity"] == id.as_str(),
                "staged.json names {id:?}, status.staged is {}",
                st["status"]["staged"]["composefs"]["verity"]
            );
            s.expect_val("imagebefore", "present")?;
            s.expect_val("imageafter", "absent")?;
            let log = vm::tail_lines(&r.log, usize::MAX);
            ensure!(
                log.contains(&format!("finalizing staged deployment {id} failed")),
                "no finalization failure for {id} on the console at shutdown"
            );
            Ok(id)
        })()
        .with_context(|| report(&r, Some(&s)))
        .context("step 6 (stage v1, break its image)")?;

        // 6. The finalization failed: v3, the old default, boots again; the
        // failure is in the previous boot's journal of the unit.
        let (r, s) = self.boot_step(
            "6: after the failed finalization",
            r#"J status bootc status --format json
V variant cat /usr/share/bootc-example/variant
R journal journalctl -b -1 -u bootc-finalize-staged.service --no-pager -o cat
"#,
        )?;
        (|| -> Result<()> {
            let st = s.json("status")?;
            expect_booted(&st, "oci", Some("/run/bootctest/v3:v3"), &v3_oci)?;
            expect_entry(&st, "rollback", "registry", &reg, &v2_registry)?;
            ensure!(
                st["status"]["staged"].is_null(),
                "the staged deployment whose finalization failed is still staged: {}",
                st["status"]["staged"]
            );
            s.expect_val("variant", "v3")?;
            s.expect_rc("journal", 0)?;
            let journal = s.out("journal");
            for want in [
                format!(
                    "finalizing staged deployment {broken} failed; the previous default still boots"
                ),
                format!("dropped the staged deployment {broken}"),
            ] {
                ensure!(
                    journal.contains(&want),
                    "`journalctl -b -1 -u bootc-finalize-staged.service` lacks {want:?}:\n{journal}"
                );
            }
            Ok(())
        })()
        .with_context(|| report(&r, Some(&s)))
        .context("step 6 (after the failed finalization)")?;
        Ok(())
    }

    /// Mount the powered-off disk's root partition and `bootc --sysroot MNT
    /// switch` to v2 from the registry (finalized at once).
    fn offline_switch(&self, ctx: &Ctx) -> Result<()> {
        let lo = Loop::attach(&self.disk)?;
        let parts = vm::partitions(&self.disk)?;
        let root = parts
            .iter()
            .find(|p| p.type_guid == ROOT_X86_64)
            .with_context(|| format!("no root partition on {}: {parts:?}", self.disk.display()))?;
        let dev = lo.partition(root.number)?;
        let mnt = tempfile::Builder::new()
            .prefix("bootc-offline.")
            .tempdir_in("/var/tmp")?;
        run(Command::new("mount").arg(&dev).arg(mnt.path()))?;
        let r = (|| -> Result<()> {
            let out = ctx
                .bootc
                .cmd(mnt.path())
                .args(["switch", &self.registry_ref])
                .output()
                .context("Running bootc --sysroot switch")?;
            println!(
                "offline switch: {}\nstdout: {}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            ensure!(
                out.status.success(),
                "bootc --sysroot MNT switch {} failed",
                self.registry_ref
            );
            let out = ctx.bootc.ok(mnt.path(), &["status", "--format", "json"])?;
            let st: Value =
                serde_json::from_slice(&out.stdout).context("Parsing offline status")?;
            ensure!(
                st["status"]["staged"].is_null(),
                "offline switch left a staged deployment (offline finalizes at once): {}",
                st["status"]["staged"]
            );
            ensure!(
                st["spec"]["image"]["image"] == self.registry_ref.as_str(),
                "offline status spec.image is {}, not {}",
                st["spec"]["image"],
                self.registry_ref
            );
            Ok(())
        })();
        run(Command::new("umount").arg(mnt.path()))?;
        drop(lo);
        r
    }
}

/// A whole-disk loop device with its partitions (partx), detached on drop.
pub(crate) struct Loop {
    dev: String,
}

impl Loop {
    pub(crate) fn attach(file: &Path) -> Result<Self> {
        let out = run(Command::new("losetup").args(["-f", "--show"]).arg(file))?;
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        ensure!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
        let l = Self { dev };
        run(Command::new("partx").args(["-a", &l.dev]))?;
        Ok(l)
    }

    pub(crate) fn partition(&self, n: u32) -> Result<String> {
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

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("partx")
            .args(["-d", &self.dev])
            .stderr(Stdio::null())
            .status();
        if let Err(e) = run(Command::new("losetup").args(["-d", &self.dev])) {
            eprintln!("warning: detaching {}: {e:#}", self.dev);
        }
    }
}

/// The manifest digest of the one image of an OCI layout.
pub(crate) fn oci_digest(layout: &Path) -> Result<String> {
    let p = layout.join("index.json");
    let v: Value = serde_json::from_str(
        &fs::read_to_string(&p).with_context(|| format!("Reading {}", p.display()))?,
    )?;
    v["manifests"][0]["digest"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no manifest digest in {}", p.display()))
}

/// What one step printed.
#[derive(Debug)]
pub(crate) struct Step {
    /// The lines between BOOTC-STEP-BEGIN and BOOTC-STEP-END.
    pub(crate) text: String,
    /// BOOTC-STEP-RC, if printed.
    pub(crate) rc: Option<i32>,
}

impl Step {
    pub(crate) fn parse(r: &Run) -> Result<Self> {
        let text = vm::parse_block(&r.log, "BOOTC-STEP-BEGIN", "BOOTC-STEP-END").context(
            "No BOOTC-STEP-BEGIN ... BOOTC-STEP-END block on the console (test runner unit)",
        )?;
        let rc = vm::tail_lines(&r.log, usize::MAX)
            .lines()
            .rev()
            .find_map(|l| {
                l.split("BOOTC-STEP-RC=")
                    .nth(1)
                    .map(|v| v.trim().parse().ok())
            })
            .flatten();
        Ok(Self { text, rc })
    }

    /// What a step printed before the guest went down in its middle (a
    /// reboot by `--apply`): from BOOTC-STEP-BEGIN to the end of the log.
    pub(crate) fn parse_partial(r: &Run) -> Self {
        // An end marker after the log closes the last block.
        let log = format!("{}\nBOOTC-STEP-END\n", r.log);
        let text = vm::parse_block(&log, "BOOTC-STEP-BEGIN", "BOOTC-STEP-END").unwrap_or_default();
        Self { text, rc: None }
    }

    /// The JSON document printed by `J label`; fails if its command failed.
    pub(crate) fn json(&self, label: &str) -> Result<Value> {
        let rc = self.rc_of(label);
        let errs: Vec<&str> = self
            .text
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("@@ERR {label}: ")))
            .collect();
        ensure!(
            rc == Some(0),
            "`bootc status --format json` ({label}) in the guest exited with {rc:?}: {}",
            errs.join("\n")
        );
        let body = vm::parse_block(
            &self.text,
            &format!("@@BEGIN-{label}@@"),
            &format!("@@END-{label}@@"),
        )
        .with_context(|| format!("no status JSON block {label} in the step output"))?;
        serde_json::from_str(&body)
            .with_context(|| format!("Parsing the status JSON {label}:\n{body}"))
    }

    pub(crate) fn rc_of(&self, label: &str) -> Option<i32> {
        let p = format!("@@RC {label}=");
        self.text
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(&p).and_then(|v| v.trim().parse().ok()))
    }

    /// The exit code of `R label` is `want`; the command's output otherwise.
    pub(crate) fn expect_rc(&self, label: &str, want: i32) -> Result<()> {
        let got = self.rc_of(label);
        if got != Some(want) {
            let out: Vec<&str> = self
                .text
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("@@OUT {label}: ")))
                .collect();
            bail!(
                "`{label}` in the guest exited with {got:?}, not {want}; its output:\n{}",
                out.join("\n")
            );
        }
        Ok(())
    }

    /// The output lines of `R label`, joined with newlines.
    fn out(&self, label: &str) -> String {
        let p = format!("@@OUT {label}: ");
        self.text
            .lines()
            .filter_map(|l| l.strip_prefix(&p))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub(crate) fn val(&self, key: &str) -> Option<String> {
        let p = format!("@@VAL {key}=");
        self.text
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(&p).map(|v| v.trim_end().to_owned()))
    }

    pub(crate) fn expect_val(&self, key: &str, want: &str) -> Result<()> {
        let got = self.val(key);
        ensure!(
            got.as_deref() == Some(want),
            "guest check {key}: got {got:?}, want {want:?}"
        );
        Ok(())
    }
}

/// The kernel command line printed by `V cmdline` has (or lacks) `arg`.
pub(crate) fn expect_karg(s: &Step, arg: &str, present: bool) -> Result<()> {
    let cmdline = s
        .val("cmdline")
        .context("no cmdline value in the step output")?;
    let has = cmdline.split_whitespace().any(|a| a == arg);
    ensure!(
        has == present,
        "/proc/cmdline {} {arg}: {cmdline}",
        if present { "lacks" } else { "still has" }
    );
    Ok(())
}

/// `status.<which>` names `image` over `transport` with `digest`.
pub(crate) fn expect_entry(
    st: &Value,
    which: &str,
    transport: &str,
    image: &str,
    digest: &str,
) -> Result<()> {
    let e = &st["status"][which];
    ensure!(!e.is_null(), "status.{which} is null: {}", st["status"]);
    let img = &e["image"];
    ensure!(
        img["image"]["transport"] == transport && img["image"]["image"] == image,
        "status.{which}.image.image is {}, want {transport}:{image}",
        img["image"]
    );
    ensure!(
        img["imageDigest"] == digest,
        "status.{which}.image.imageDigest is {}, want {digest}",
        img["imageDigest"]
    );
    Ok(())
}

/// `status.booted` is the image with `digest` (and, when given, named
/// `image` over `transport`; install may record a normalised name, so a
/// containers-storage name only has to end with it).
pub(crate) fn expect_booted(
    st: &Value,
    transport: &str,
    image: Option<&str>,
    digest: &str,
) -> Result<()> {
    let e = &st["status"]["booted"];
    ensure!(!e.is_null(), "status.booted is null: {}", st["status"]);
    let img = &e["image"];
    ensure!(
        img["imageDigest"] == digest,
        "status.booted.image.imageDigest is {}, want {digest} ({transport}:{image:?})",
        img["imageDigest"]
    );
    ensure!(
        img["image"]["transport"] == transport,
        "status.booted transport is {}, want {transport}",
        img["image"]["transport"]
    );
    if let Some(want) = image {
        let got = img["image"]["image"].as_str().unwrap_or_default();
        ensure!(
            got == want || (transport == "containers-storage" && got.ends_with(want)),
            "status.booted.image.image.image is {got:?}, want {want:?}"
        );
    }
    Ok(())
}

/// Console lines that tell what went wrong.
const TELLTALES: &[&str] = &[
    "bootc",
    "finalize",
    "composefs",
    "Kernel panic",
    "emergency",
    "FAILED",
    "Failed",
    "error",
    "Error",
    "Linux version",
];

/// The step output, telltale console lines and the console tail.
pub(crate) fn report(r: &Run, s: Option<&Step>) -> String {
    let clean = vm::tail_lines(&r.log, usize::MAX);
    let tells: Vec<&str> = clean
        .lines()
        .filter(|l| TELLTALES.iter().any(|t| l.contains(t)))
        .collect();
    let tells = &tells[tells.len().saturating_sub(50)..];
    format!(
        "--- step output (rc {:?}) ---\n{}\n--- telltale console lines ---\n{}\n--- last console lines ---\n{}\n--- qemu stderr ---\n{}",
        s.and_then(|s| s.rc),
        s.map(|s| s.text.as_str()).unwrap_or("(none)"),
        tells.join("\n"),
        r.tail(40),
        r.qemu_stderr.trim()
    )
}
