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
//! The step protocol and the boots are [`crate::guest`]'s: every step
//! prints the status document, the variant and the kernel command line
//! first, then what its own lines ask for (`J`, `V`, `R`).
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

mod offline;
mod online;

use std::fs;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bootc_tests_integration::run;
use bootc_tests_integration::vm::Firmware;

use crate::guest::{self, Guest, skip_without_qemu};
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
/// [`build_v3`]): `localhost/bootc-example:v3` for the default v2, else
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

/// The firmware: OVMF (systemd-boot), or SeaBIOS (GRUB) with
/// `BOOTC_LIFECYCLE_FIRMWARE=bios`.
fn firmware() -> Firmware {
    match std::env::var("BOOTC_LIFECYCLE_FIRMWARE").as_deref() {
        Ok("bios") => Firmware::Bios,
        _ => Firmware::Uefi,
    }
}

/// Size of v3's layer of random (incompressible) files.
const V3_BULK_MIB: u32 = 192;

/// Size of each of v3's random files.
const V3_BULK_FILE_MIB: u32 = 16;

/// Size of the sparse disk image (three deployments of ~300 MB images).
const DISK_SIZE: u64 = 8 << 30;

/// After the guest says it started staging v3, how long it runs before qemu
/// is killed: well inside the import of v3's large layer under TCG.
const KILL_DELAY: Duration = Duration::from_secs(6);

/// One run of this scenario at a time (boot.rs tests hold
/// [`bootc_tests_integration::vm::exclusive`]; this one may run beside them).
static LOCK: Mutex<()> = Mutex::new(());

fn vm_lifecycle_switch_rollback(ctx: &Ctx) -> Result<()> {
    skip_without_qemu!();
    let _l = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    for img in [v1(), v2()] {
        guest::require_image(
            img,
            "`examples/build.sh v1` and `examples/build.sh v2 --build-arg VARIANT=v2`",
        )?;
    }
    let start = Instant::now();
    build_v3()?;
    println!("v3 ready: {:.1?}", start.elapsed());
    let mut l = Lifecycle::prepare(ctx)?;
    println!("prepared in {:.1?}: {:#?}", t0.elapsed(), l.digests);
    l.run_all(ctx)?;
    println!("lifecycle scenario passed in {:.1?}", t0.elapsed());
    Ok(())
}

/// Build [`v3`] from the current [`v2`] unless a v3 built from it exists:
/// the random files go in one RUN (one layer) of incompressible data.
fn build_v3() -> Result<()> {
    let files = V3_BULK_MIB / V3_BULK_FILE_MIB;
    guest::derive_image(
        v2(),
        v3(),
        &format!(
            "RUN set -eu; mkdir -p /usr/share/bootc-bulk; \\\n\
             \x20   for i in $(seq 1 {files}); do \\\n\
             \x20       head -c {V3_BULK_FILE_MIB}M /dev/urandom > /usr/share/bootc-bulk/blob-$i; \\\n\
             \x20   done; \\\n\
             \x20   echo v3 > /usr/share/bootc-example/variant\n\
             LABEL org.opencontainers.image.version=v3\n"
        ),
    )
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
    guest: Guest,
    registry_ref: String,
    digests: Digests,
}

impl Lifecycle {
    /// Install v1 to a disk; make the BOOTCTEST disk with the OCI layouts;
    /// push v2 to the registry.
    fn prepare(ctx: &Ctx) -> Result<Self> {
        // The root filesystem defaults to xfs here, not ext4: the guest
        // kernel has fs-verity and seals what it writes on ext4 -O verity,
        // and this host's kernel (no fs-verity) then cannot open those
        // files at all (EOPNOTSUPP), which breaks the offline step 4 on
        // the host. On ext4, steps 1-3 pass. BOOTC_LIFECYCLE_FILESYSTEM=ext4
        // selects ext4 on a host whose kernel has fs-verity.
        let filesystem =
            std::env::var("BOOTC_LIFECYCLE_FILESYSTEM").unwrap_or_else(|_| "xfs".into());
        let (guest, layouts) = Guest::install(
            &ctx.bootc,
            v1(),
            firmware(),
            &["--filesystem", &filesystem],
            DISK_SIZE,
            &[(v1(), "v1"), (v2(), "v2"), (v3(), "v3")],
        )?;
        let v1_storage = guest::podman_digest(v1())?;
        let [v1_oci, v2_oci, v3_oci] = [&layouts[0], &layouts[1], &layouts[2]].map(Clone::clone);

        let registry_ref = format!("{}/bootc-example:v2", ctx.registry.addr);
        let digestfile = guest.workdir().join("v2.digest");
        run(Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false", "--digestfile"])
            .arg(&digestfile)
            .arg(format!("containers-storage:{}", v2()))
            .arg(format!("docker://{registry_ref}")))
        .context("Pushing v2 to the local registry")?;
        let v2_registry = fs::read_to_string(&digestfile)?.trim().to_owned();
        Ok(Self {
            guest,
            registry_ref,
            digests: Digests {
                v1_storage,
                v2_oci,
                v2_registry,
                v3_oci,
                v1_oci,
            },
        })
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
}
