//! Cost and free-space checks: what an update costs to fetch, whether the
//! sysroot can hold it, and `upgrade --check`.

use std::process::Command;

use anyhow::{Context, Result, bail};
use bootc_oci::imgref::ImageRef;
use bootc_oci::inspect::{self, DownloadCost};
use bootc_store::Store;
use bootc_sysroot::lifecycle;
use bootc_sysroot::{Bootloader, Deployment, deployment};

use crate::target::{Target, base_deployment, current_order, imgref_of, with_tag};

/// Bytes as people read them.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The size of `base`'s kernel and initramfs on the sysroot (GRUB keeps
/// them in `/boot/bootc/<bootDigest>/`; systemd-boot on the ESP, another
/// filesystem): an upper bound, as a new image with the same kernel shares it.
fn kernel_bytes(t: &Target, base: &Deployment) -> u64 {
    if base.bootloader != Bootloader::Grub {
        return 0;
    }
    let dir = t.boot_dir().join("bootc").join(base.boot_dir_name());
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Refuse to stage `imgref` when the sysroot's filesystem cannot hold it
/// ([`crate::policy::space_needed`]). When the download size cannot be
/// learnt, warn and go on (the pull reports its own errors).
pub(crate) fn ensure_space(
    t: &Target,
    store: &Store,
    imgref: &ImageRef,
    base: &Deployment,
) -> Result<()> {
    let cost = match inspect::remote_layers(imgref) {
        Ok((layers, diff_ids)) => {
            inspect::download_cost(&layers, &diff_ids, &store.present_layers()?)
        }
        Err(e) => {
            t.report.warn(&format!(
                "warning: cannot learn the download size of {imgref} ({e:#}); not checking free space"
            ));
            return Ok(());
        }
    };
    let kernel = kernel_bytes(t, base);
    let needed = crate::policy::space_needed(cost.bytes, kernel);
    let st = rustix::fs::statvfs(&t.sysroot)
        .with_context(|| format!("Reading the free space of {}", t.sysroot.display()))?;
    let available = st.f_bavail.saturating_mul(st.f_frsize);
    if crate::policy::space_shortfall(needed, available).is_some() {
        let source = Command::new("findmnt")
            .args(["-n", "-o", "SOURCE", "-T"])
            .arg(&t.sysroot)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| format!(" ({})", String::from_utf8_lossy(&o.stdout).trim()))
            .unwrap_or_default();
        bail!(
            "Not enough free space to stage {imgref} on the filesystem of {}{source}: it needs about {needed} bytes ({}: {} layers with {} bytes to download, counted twice, plus {kernel} bytes of kernel and initramfs) and {available} bytes ({}) are available; free some space (for example `bootc image gc`) and retry",
            t.sysroot.display(),
            human_bytes(needed),
            cost.layers,
            cost.bytes,
            human_bytes(available),
        );
    }
    Ok(())
}

/// What `upgrade --check` found.
#[derive(Debug, Clone)]
pub struct UpdateInfo {
    /// The image checked.
    pub imgref: String,
    /// Whether it differs from the booted and staged deployments.
    pub available: bool,
    /// Its manifest digest.
    pub digest: String,
    /// Its version label.
    pub version: Option<String>,
    /// Its creation time.
    pub created: Option<String>,
    /// What fetching it costs; `None` if that could not be learnt.
    pub cost: Option<DownloadCost>,
}

impl std::fmt::Display for UpdateInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.available {
            return writeln!(f, "No changes in: {}", self.imgref);
        }
        writeln!(f, "Update available for: {}", self.imgref)?;
        writeln!(f, "  Version: {}", self.version.as_deref().unwrap_or("-"))?;
        writeln!(f, "  Digest: {}", self.digest)?;
        writeln!(f, "  Timestamp: {}", self.created.as_deref().unwrap_or("-"))?;
        match &self.cost {
            Some(c) => writeln!(
                f,
                "  To download: {} of {} layers, {} bytes ({}) of {} bytes",
                c.layers,
                c.layers_total,
                c.bytes,
                human_bytes(c.bytes),
                c.bytes_total
            ),
            None => writeln!(f, "  To download: unknown"),
        }
    }
}

/// `bootc upgrade --check`: the manifest and config only, via skopeo.
pub fn check_update(t: &Target, base: &Deployment, imgref: &ImageRef) -> Result<UpdateInfo> {
    let remote = inspect::inspect(imgref)?;
    let staged = lifecycle::read_staged(&t.sysroot)?.and_then(|s| {
        deployment::load_deployment(&t.sysroot, &s.id)
            .ok()
            .flatten()
    });
    let available = remote.digest != base.manifest_digest
        && staged
            .as_ref()
            .is_none_or(|s| s.manifest_digest != remote.digest);
    let cost = if available {
        match inspect::download_cost_for(&t.sysroot, imgref) {
            Ok(c) => Some(c),
            Err(e) => {
                t.report.warn(&format!(
                    "warning: cannot learn the download size of {imgref}: {e:#}"
                ));
                None
            }
        }
    } else {
        None
    };
    Ok(UpdateInfo {
        imgref: imgref.to_string(),
        available,
        digest: remote.digest,
        version: remote.version,
        created: remote.created,
        cost,
    })
}

/// `bootc upgrade --check` for the host `t` (optionally another tag of its
/// image).
pub fn check_for(t: &Target, tag: Option<&str>) -> Result<UpdateInfo> {
    let order = current_order(t)?;
    let base = base_deployment(t, &order)?;
    let mut imgref = imgref_of(&base.image)?;
    if let Some(tag) = tag {
        imgref = with_tag(&imgref, tag)?;
    }
    check_update(t, &base, &imgref)
}
