//! The harness's self-test: the example image's kernel with a busybox
//! initramfs that prints a fake status block and powers off.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bootc_tests_integration::run;
use bootc_tests_integration::vm::{self, Firmware, RunEnd, STATUS_END, Vm};

use super::{ensure_example_image, image};
use crate::Ctx;
use crate::guest::{report, skip_without_qemu, with_report};

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
            report(&r, None)
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
    ensure!(r.matched(), "no status block: {}", report(&r, None));
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
        report(&r, None)
    );
    Ok(())
}

pub(super) fn vm_harness_busybox_bios(_ctx: &Ctx) -> Result<()> {
    skip_without_qemu!();
    let _l = vm::exclusive();
    busybox_boot(Firmware::Bios)
}

pub(super) fn vm_harness_busybox_uefi(_ctx: &Ctx) -> Result<()> {
    skip_without_qemu!();
    let _l = vm::exclusive();
    busybox_boot(Firmware::Uefi)
}
