//! `bootc install` onto a disk file or a mounted filesystem, as the VM
//! scenarios need it: the image from containers-storage, the test's
//! containers configuration, the `bootc.test.poweroff=1` karg of the step
//! protocol, bounded by [`INSTALL_TIMEOUT`].

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bootc_tests_integration::{Bootc, run};

use super::INSTALL_TIMEOUT;

/// `bootc install VERB... --source-imgref containers-storage:IMG
/// --bootloader BOOTLOADER --karg bootc.test.poweroff=1 EXTRA... TARGET`
/// under `timeout(1)`; returns how long it took.
fn install(
    bootc: &Bootc,
    verb: &[&str],
    img: &str,
    bootloader: &str,
    extra: &[&str],
    target: &Path,
) -> Result<Duration> {
    let start = Instant::now();
    let what = format!("{img} {} {} ({bootloader})", verb[0], target.display());
    let mut c = Command::new("timeout");
    c.args(["--kill-after=30", &INSTALL_TIMEOUT.as_secs().to_string()])
        .arg(&bootc.bin)
        .arg("install")
        .args(verb)
        .arg("--source-imgref")
        .arg(format!("containers-storage:{img}"))
        .args([
            "--bootloader",
            bootloader,
            "--karg",
            "bootc.test.poweroff=1",
        ])
        .args(extra)
        .arg(target)
        .env("CONTAINERS_REGISTRIES_CONF", bootc.registries_conf())
        .env("CONTAINERS_POLICY_JSON", bootc.policy_json())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    run(&mut c).with_context(|| format!("Installing {what} (install side)"))?;
    let took = start.elapsed();
    println!("bootc install {what}: {took:.1?}");
    Ok(took)
}

/// `bootc install to-disk --via-loopback` of `img` to the disk file `disk`
/// with `bootloader` (`grub`, `systemd`); `extra` arguments go before the
/// disk.
pub(crate) fn install_to_disk(
    bootc: &Bootc,
    img: &str,
    bootloader: &str,
    extra: &[&str],
    disk: &Path,
) -> Result<Duration> {
    let verb = ["to-disk", "--via-loopback"];
    install(bootc, &verb, img, bootloader, extra, disk)
}

/// `bootc install to-filesystem` of `img` into the mounted `root` with
/// GRUB; `extra` arguments go before the root.
pub(crate) fn install_to_filesystem(
    bootc: &Bootc,
    img: &str,
    root: &Path,
    extra: &[&str],
) -> Result<Duration> {
    install(bootc, &["to-filesystem"], img, "grub", extra, root)
}
