//! Block devices: loop devices, "is this disk in use" checks, GPT
//! partitioning with sfdisk, and finding partitions.
//!
//! Every command is given the one device the user named (or the loop device
//! we attached); nothing here enumerates or touches other disks.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fn_error_context::context;
use serde::Deserialize;

use crate::run::{run, run_output};

/// GPT type of the BIOS boot partition (GRUB's core.img lives there).
pub const BIOS_BOOT_GUID: &str = "21686148-6449-6E6F-744E-656564454649";
/// GPT type of the EFI system partition.
pub const ESP_GUID: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

/// Size of the BIOS boot partition: GRUB's core.img needs well under 1 MiB.
pub const BIOS_BOOT_SIZE_MIB: u64 = 1;
/// Size of the ESP: room for several kernels and initramfs images.
pub const ESP_SIZE_MIB: u64 = 512;

/// The discoverable-partitions root type of this architecture.
pub fn root_type_guid(arch: &str) -> Option<&'static str> {
    Some(match arch {
        "x86_64" => "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
        "aarch64" => "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
        "x86" => "44479540-F297-41B2-9AF7-D131D5F0458A",
        "powerpc64" => "912ADE1D-A839-4913-8964-A10EEE08FBD2",
        "riscv64" => "72EC70A6-CF74-40E6-BD49-4BDA08E8F224",
        "s390x" => "5EEAD9A9-FE09-4A1E-A1D7-520D00531306",
        _ => return None,
    })
}

/// The partitions `to-disk` creates, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// A BIOS boot partition first (for GRUB on BIOS).
    pub bios_boot: bool,
    /// The size of the root partition in bytes; the rest of the disk when `None`.
    pub root_size: Option<u64>,
}

/// Partition numbers of a [`Layout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartNumbers {
    /// The BIOS boot partition.
    pub bios_boot: Option<u32>,
    /// The ESP.
    pub esp: u32,
    /// The root partition.
    pub root: u32,
}

impl Layout {
    /// Where each partition ends up.
    pub fn numbers(&self) -> PartNumbers {
        let off = u32::from(self.bios_boot);
        PartNumbers {
            bios_boot: self.bios_boot.then_some(1),
            esp: 1 + off,
            root: 2 + off,
        }
    }

    /// The sfdisk script creating this layout (GPT).
    pub fn sfdisk_script(&self, root_type: &str) -> String {
        let mut s = String::from("label: gpt\n");
        if self.bios_boot {
            s.push_str(&format!(
                "size={BIOS_BOOT_SIZE_MIB}MiB, type={BIOS_BOOT_GUID}, name=\"BIOS-BOOT\"\n"
            ));
        }
        s.push_str(&format!(
            "size={ESP_SIZE_MIB}MiB, type={ESP_GUID}, name=\"EFI-SYSTEM\"\n"
        ));
        match self.root_size {
            Some(b) => s.push_str(&format!(
                "size={}MiB, type={root_type}, name=\"root\"\n",
                b.div_ceil(1 << 20)
            )),
            None => s.push_str(&format!("type={root_type}, name=\"root\"\n")),
        }
        s
    }
}

/// Parse a size such as `10G`, `512MiB`, `4096` (bytes); binary units.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().with_context(|| {
        format!("invalid size {s:?}: expected a number with an optional unit (K, M, G, T)")
    })?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        u => anyhow::bail!("invalid size {s:?}: unknown unit {u:?}"),
    };
    n.checked_mul(1u64 << shift)
        .with_context(|| format!("size {s:?} is too large"))
}

/// `lsblk --json` output.
#[derive(Debug, Deserialize)]
pub struct Lsblk {
    /// The devices asked about.
    pub blockdevices: Vec<BlockDev>,
}

/// One device of `lsblk --json -o NAME,PATH,TYPE,MAJ:MIN,FSTYPE,PTTYPE,MOUNTPOINTS`.
#[derive(Debug, Clone, Deserialize)]
pub struct BlockDev {
    /// Kernel name (`loop0p3`).
    pub name: String,
    /// Device node.
    pub path: Option<String>,
    /// `disk`, `part`, `loop`, ...
    #[serde(rename = "type")]
    pub devtype: Option<String>,
    /// `major:minor`.
    #[serde(rename = "maj:min")]
    pub majmin: Option<String>,
    /// Filesystem signature found by udev/blkid, if any.
    pub fstype: Option<String>,
    /// Partition table type, if any.
    pub pttype: Option<String>,
    /// Where it is mounted (lsblk gives `[null]` when nowhere).
    #[serde(default)]
    pub mountpoints: Vec<Option<String>>,
    /// Partitions and holders.
    #[serde(default)]
    pub children: Vec<BlockDev>,
}

impl BlockDev {
    /// This device and everything below it.
    pub fn walk(&self) -> Vec<&BlockDev> {
        let mut out = vec![self];
        for c in &self.children {
            out.extend(c.walk());
        }
        out
    }
}

/// Parse `lsblk --json` output.
pub fn parse_lsblk(json: &str) -> Result<Lsblk> {
    serde_json::from_str(json).context("Parsing lsblk output")
}

/// The `major:minor` of every mount in `/proc/self/mountinfo` text, with
/// its mount point.
pub fn parse_mountinfo(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let _id = f.next()?;
            let _parent = f.next()?;
            let majmin = f.next()?;
            let _root = f.next()?;
            let mnt = f.next()?;
            Some((majmin.to_owned(), bootc_utils::mountinfo::unescape(mnt)))
        })
        .collect()
}

/// What is on a disk, for deciding whether it may be overwritten.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DiskUse {
    /// Partitions the kernel knows.
    pub partitions: Vec<String>,
    /// A partition table or filesystem signature found by probing the disk.
    pub signature: Option<String>,
    /// Mounted filesystems on the disk or its partitions (device, mount point).
    pub mounts: Vec<(String, String)>,
    /// Swap areas on it.
    pub swaps: Vec<String>,
}

/// Decide from `lsblk`, mountinfo and swaps what uses `disk`.
pub fn disk_use(
    disk: &BlockDev,
    mountinfo: &[(String, String)],
    swaps: &[String],
    signature: Option<String>,
) -> DiskUse {
    let mut u = DiskUse {
        signature,
        ..Default::default()
    };
    for d in disk.walk() {
        let path = d.path.clone().unwrap_or_else(|| format!("/dev/{}", d.name));
        if !std::ptr::eq(d, disk) && d.devtype.as_deref() == Some("part") {
            u.partitions.push(path.clone());
        }
        for mp in d.mountpoints.iter().flatten() {
            u.mounts.push((path.clone(), mp.clone()));
        }
        if let Some(mm) = &d.majmin {
            for (m, mp) in mountinfo {
                if m == mm && !u.mounts.iter().any(|(_, x)| x == mp) {
                    u.mounts.push((path.clone(), mp.clone()));
                }
            }
        }
        if swaps.contains(&path) {
            u.swaps.push(path.clone());
        }
    }
    u
}

/// The device paths in `/proc/swaps` text.
pub fn parse_swaps(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(bootc_utils::mountinfo::unescape)
        .collect()
}

/// Refuse `disk` when it is in use: always when something on it is mounted
/// or used as swap; when it has partitions or a signature, unless `wipe`.
#[context("Checking that {} is unused", disk.display())]
pub fn check_disk_unused(disk: &Path, wipe: bool) -> Result<()> {
    let md = std::fs::metadata(disk).with_context(|| format!("Inspecting {}", disk.display()))?;
    anyhow::ensure!(
        md.file_type().is_block_device(),
        "{} is not a block device (use --via-loopback for a disk image file)",
        disk.display()
    );
    let out = run_output(
        Command::new("lsblk")
            .args([
                "--json",
                "-o",
                "NAME,PATH,TYPE,MAJ:MIN,FSTYPE,PTTYPE,MOUNTPOINTS",
            ])
            .arg(disk),
    )?;
    let lsblk = parse_lsblk(&out)?;
    let dev = lsblk
        .blockdevices
        .first()
        .with_context(|| format!("lsblk knows no {}", disk.display()))?;
    anyhow::ensure!(
        dev.devtype.as_deref() != Some("part"),
        "{} is a partition; give the whole disk",
        disk.display()
    );
    let mountinfo = parse_mountinfo(
        &std::fs::read_to_string("/proc/self/mountinfo").context("Reading /proc/self/mountinfo")?,
    );
    let swaps = parse_swaps(&std::fs::read_to_string("/proc/swaps").unwrap_or_default());
    let u = disk_use(dev, &mountinfo, &swaps, probe_signature(disk)?);
    if let Some((dev, mp)) = u.mounts.first() {
        anyhow::bail!(
            "{} is in use: {dev} is mounted on {mp}; unmount it first",
            disk.display()
        );
    }
    if let Some(s) = u.swaps.first() {
        anyhow::bail!("{} is in use: {s} is an active swap area", disk.display());
    }
    if !wipe {
        if !u.partitions.is_empty() {
            anyhow::bail!(
                "{} has partitions ({}); pass --wipe to erase them",
                disk.display(),
                u.partitions.join(", ")
            );
        }
        if let Some(sig) = &u.signature {
            anyhow::bail!(
                "{} is not empty (found {sig}); pass --wipe to erase it",
                disk.display()
            );
        }
    }
    Ok(())
}

/// A partition table or filesystem found by probing `disk` itself (the
/// kernel of a build host may not have parsed its partitions).
fn probe_signature(disk: &Path) -> Result<Option<String>> {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(disk)
        .output()
        .context("Running blkid")?;
    // blkid exits 2 when it finds nothing.
    if out.status.code() == Some(2) {
        return Ok(None);
    }
    anyhow::ensure!(
        out.status.success(),
        "blkid -p {}: {}",
        disk.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('=').map(str::to_owned))
    };
    Ok(get("PTTYPE")
        .map(|t| format!("a {t} partition table"))
        .or_else(|| get("TYPE").map(|t| format!("a {t} filesystem"))))
}

/// Erase signatures on `disk` and the partitions the kernel knows of it.
#[context("Wiping {}", disk.display())]
pub fn wipe_disk(disk: &Path) -> Result<()> {
    for p in partitions_of(disk)? {
        run(Command::new("wipefs").arg("-a").arg(&p.1))?;
    }
    run(Command::new("wipefs").arg("-a").arg(disk))?;
    Ok(())
}

/// Write `layout` to `disk` and make its partitions known to the kernel.
/// Returns the partition device paths by number.
#[context("Partitioning {}", disk.display())]
pub fn partition(disk: &Path, layout: &Layout) -> Result<Vec<(u32, PathBuf)>> {
    let arch = std::env::consts::ARCH;
    let root_type =
        root_type_guid(arch).with_context(|| format!("No root partition type for {arch}"))?;
    let script = layout.sfdisk_script(root_type);
    tracing::debug!("sfdisk script:\n{script}");
    let mut cmd = Command::new("sfdisk");
    cmd.args([
        "--quiet",
        "--wipe",
        "always",
        "--no-reread",
        "--no-tell-kernel",
    ])
    .arg(disk);
    crate::run::run_with_stdin(&mut cmd, script.as_bytes())?;
    // Drop whatever the kernel knew before, then add the new table. Build
    // hosts and some kernels do not parse partition tables themselves.
    let _ = Command::new("partx").arg("-d").arg(disk).output();
    run(Command::new("partx").arg("-a").arg(disk))?;
    let want = [
        Some(layout.numbers().esp),
        Some(layout.numbers().root),
        layout.numbers().bios_boot,
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let parts = partitions_of(disk)?;
        let all = want
            .iter()
            .flatten()
            .all(|n| parts.iter().any(|(m, p)| m == n && p.exists()));
        if all {
            return Ok(parts);
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "partitions of {} did not appear (found {:?})",
                disk.display(),
                parts
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The partitions of `disk` the kernel knows, from sysfs: (number, device).
pub fn partitions_of(disk: &Path) -> Result<Vec<(u32, PathBuf)>> {
    let real =
        std::fs::canonicalize(disk).with_context(|| format!("Resolving {}", disk.display()))?;
    let name = real
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no device name", real.display()))?
        .to_owned();
    let sys = Path::new("/sys/class/block").join(&name);
    let mut out = Vec::new();
    let rd = std::fs::read_dir(&sys).with_context(|| format!("Reading {}", sys.display()))?;
    for ent in rd {
        let ent = ent?;
        let Ok(num) = std::fs::read_to_string(ent.path().join("partition")) else {
            continue;
        };
        let Ok(num) = num.trim().parse::<u32>() else {
            continue;
        };
        let pname = ent.file_name();
        out.push((num, Path::new("/dev").join(pname)));
    }
    out.sort();
    Ok(out)
}

/// The device of partition `n` of `disk`.
pub fn partition_path(parts: &[(u32, PathBuf)], n: u32) -> Result<&Path> {
    parts
        .iter()
        .find(|(m, _)| *m == n)
        .map(|(_, p)| p.as_path())
        .with_context(|| format!("No partition {n}"))
}

/// The disk holding partition `part` (its parent in sysfs), e.g. `/dev/loop0`
/// for `/dev/loop0p3`; `part` itself when it is a whole disk.
pub fn parent_disk(part: &Path) -> Result<PathBuf> {
    let real =
        std::fs::canonicalize(part).with_context(|| format!("Resolving {}", part.display()))?;
    let name = real
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no device name", real.display()))?;
    let sys = Path::new("/sys/class/block").join(name);
    if !sys.join("partition").exists() {
        return Ok(real);
    }
    let link =
        std::fs::canonicalize(&sys).with_context(|| format!("Resolving {}", sys.display()))?;
    let parent = link
        .parent()
        .and_then(|p| p.file_name())
        .with_context(|| format!("{} has no parent device", link.display()))?;
    Ok(Path::new("/dev").join(parent))
}

/// The partition of `disk` with GPT type `guid`: from `lsblk PARTTYPE`,
/// else from the partition table itself (`sfdisk --json`), for partitions
/// that udev does not know (added with `partx -a` on a host without udev,
/// where lsblk reports no PARTTYPE).
pub fn find_partition_by_type(disk: &Path, guid: &str) -> Result<Option<PathBuf>> {
    if let Some(p) = find_partition_by_type_lsblk(disk, guid)? {
        return Ok(Some(p));
    }
    let out = match Command::new("sfdisk").arg("--json").arg(disk).output() {
        Ok(out) => out,
        // No sfdisk (a minimal booted image): probe the partitions directly.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return find_partition_by_type_blkid(disk, guid);
        }
        Err(e) => return Err(e).context("Running sfdisk --json"),
    };
    if !out.status.success() {
        // No partition table sfdisk knows: no such partition.
        tracing::debug!(
            "sfdisk --json {}: {}",
            disk.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return Ok(None);
    }
    parse_sfdisk_partition_by_type(&String::from_utf8_lossy(&out.stdout), guid)
        .with_context(|| format!("Parsing sfdisk --json {}", disk.display()))
}

/// The `node` of the first partition of type `guid` in `sfdisk --json` output.
fn parse_sfdisk_partition_by_type(json: &str, guid: &str) -> Result<Option<PathBuf>> {
    #[derive(Deserialize)]
    struct Out {
        partitiontable: Table,
    }
    #[derive(Deserialize)]
    struct Table {
        #[serde(default)]
        partitions: Vec<Part>,
    }
    #[derive(Deserialize)]
    struct Part {
        node: String,
        #[serde(rename = "type")]
        ty: String,
    }
    let out: Out = serde_json::from_str(json)?;
    Ok(out
        .partitiontable
        .partitions
        .into_iter()
        .find(|p| p.ty.eq_ignore_ascii_case(guid))
        .map(|p| PathBuf::from(p.node)))
}

/// The first partition of `disk` (by the kernel's partition list in
/// sysfs) whose type `blkid -p` (a direct probe, no udev) reads as `guid`.
fn find_partition_by_type_blkid(disk: &Path, guid: &str) -> Result<Option<PathBuf>> {
    let name = disk
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no device name", disk.display()))?;
    let sys = Path::new("/sys/class/block").join(name);
    let mut parts: Vec<(u32, String)> = Vec::new();
    for ent in std::fs::read_dir(&sys).with_context(|| format!("Reading {}", sys.display()))? {
        let ent = ent?;
        let Ok(n) = std::fs::read_to_string(ent.path().join("partition")) else {
            continue;
        };
        if let (Ok(n), Some(p)) = (n.trim().parse(), ent.file_name().to_str()) {
            parts.push((n, p.to_owned()));
        }
    }
    parts.sort();
    for (_, p) in parts {
        let dev = Path::new("/dev").join(&p);
        let out = Command::new("blkid")
            .args(["-p", "-o", "value", "-s", "PART_ENTRY_TYPE"])
            .arg(&dev)
            .output()
            .context("Running blkid -p")?;
        if String::from_utf8_lossy(&out.stdout)
            .trim()
            .eq_ignore_ascii_case(guid)
        {
            return Ok(Some(dev));
        }
    }
    Ok(None)
}

fn find_partition_by_type_lsblk(disk: &Path, guid: &str) -> Result<Option<PathBuf>> {
    let out = run_output(
        Command::new("lsblk")
            .args(["--json", "-o", "PATH,TYPE,PARTTYPE"])
            .arg(disk),
    )?;
    #[derive(Deserialize)]
    struct L {
        blockdevices: Vec<D>,
    }
    #[derive(Deserialize)]
    struct D {
        path: Option<String>,
        parttype: Option<String>,
        #[serde(default)]
        children: Vec<D>,
    }
    let l: L = serde_json::from_str(&out).context("Parsing lsblk output")?;
    fn find(d: &D, guid: &str) -> Option<String> {
        if d.parttype
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case(guid))
        {
            return d.path.clone();
        }
        d.children.iter().find_map(|c| find(c, guid))
    }
    Ok(l.blockdevices
        .iter()
        .find_map(|d| find(d, guid))
        .map(PathBuf::from))
}

/// A loop device attached to a file, detached when dropped.
#[derive(Debug)]
pub struct LoopDevice {
    path: Option<PathBuf>,
}

impl LoopDevice {
    /// Attach `file` to a free loop device.
    #[context("Attaching {} to a loop device", file.display())]
    pub fn attach(file: &Path) -> Result<Self> {
        anyhow::ensure!(
            std::fs::metadata(file)
                .with_context(|| format!("Inspecting {}", file.display()))?
                .is_file(),
            "{} is not a regular file",
            file.display()
        );
        let out = run_output(
            Command::new("losetup")
                .args(["--find", "--show", "--direct-io=on"])
                .arg(file),
        )
        .or_else(|_| run_output(Command::new("losetup").args(["--find", "--show"]).arg(file)))?;
        let path = PathBuf::from(out.trim());
        tracing::debug!("attached {} to {}", file.display(), path.display());
        // Partitions the kernel still lists for this loop device were added
        // for a previous backing file (partx entries outlive a detach); the
        // file's own content is judged by probing it.
        let _ = Command::new("partx").arg("-d").arg(&path).output();
        Ok(Self { path: Some(path) })
    }

    /// The loop device.
    pub fn path(&self) -> &Path {
        self.path.as_deref().expect("attached until dropped")
    }

    /// Detach now, reporting errors.
    pub fn detach(mut self) -> Result<()> {
        let p = self.path.take().expect("attached until dropped");
        detach(&p)
    }
}

fn detach(p: &Path) -> Result<()> {
    let _ = Command::new("partx").arg("-d").arg(p).output();
    run(Command::new("losetup").arg("-d").arg(p))
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if let Some(p) = self.path.take()
            && let Err(e) = detach(&p)
        {
            tracing::warn!("detaching {}: {e:#}", p.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sfdisk_partition_lookup() {
        let json = r#"{
   "partitiontable": {
      "label": "gpt",
      "id": "95396673-ADBE-C44C-AAF8-9DD0535D979C",
      "device": "/dev/loop1",
      "unit": "sectors",
      "firstlba": 2048,
      "lastlba": 131038,
      "sectorsize": 512,
      "partitions": [
         {"node": "/dev/loop1p1", "start": 2048, "size": 2048, "type": "21686148-6449-6E6F-744E-656564454649", "uuid": "A"},
         {"node": "/dev/loop1p2", "start": 4096, "size": 32768, "type": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "uuid": "B"},
         {"node": "/dev/loop1p3", "start": 36864, "size": 94208, "type": "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "uuid": "C"}
      ]
   }
}"#;
        for (guid, want) in [
            (ESP_GUID, Some("/dev/loop1p2")),
            ("4f68bce3-e8cd-4db1-96e7-fbcaf984b709", Some("/dev/loop1p3")),
            ("0FC63DAF-8483-4772-8E79-3D69D8477DE4", None),
        ] {
            assert_eq!(
                parse_sfdisk_partition_by_type(json, guid).unwrap(),
                want.map(PathBuf::from),
                "{guid}"
            );
        }
        let empty = r#"{"partitiontable": {"label": "gpt"}}"#;
        assert_eq!(
            parse_sfdisk_partition_by_type(empty, ESP_GUID).unwrap(),
            None
        );
        assert!(parse_sfdisk_partition_by_type("not json", ESP_GUID).is_err());
    }

    #[test]
    fn sfdisk_scripts() {
        let cases = [
            (
                Layout {
                    bios_boot: true,
                    root_size: None,
                },
                "label: gpt\nsize=1MiB, type=21686148-6449-6E6F-744E-656564454649, name=\"BIOS-BOOT\"\nsize=512MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"EFI-SYSTEM\"\ntype=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=\"root\"\n",
                (Some(1), 2, 3),
            ),
            (
                Layout {
                    bios_boot: false,
                    root_size: Some(10 << 30),
                },
                "label: gpt\nsize=512MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"EFI-SYSTEM\"\nsize=10240MiB, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=\"root\"\n",
                (None, 1, 2),
            ),
        ];
        for (layout, script, (bios, esp, root)) in cases {
            assert_eq!(
                layout.sfdisk_script(root_type_guid("x86_64").unwrap()),
                script
            );
            let n = layout.numbers();
            assert_eq!((n.bios_boot, n.esp, n.root), (bios, esp, root));
        }
    }

    #[test]
    fn sizes() {
        let cases = [
            ("4096", Some(4096)),
            ("10G", Some(10 << 30)),
            ("512MiB", Some(512 << 20)),
            ("1t", Some(1 << 40)),
            ("2 GB", Some(2 << 30)),
            ("", None),
            ("G", None),
            ("1.5G", None),
            ("10X", None),
            ("99999999999T", None),
        ];
        for (input, expect) in cases {
            assert_eq!(parse_size(input).ok(), expect, "{input}");
        }
    }

    const LSBLK: &str = r#"{
   "blockdevices": [
      {"name":"loop0", "path":"/dev/loop0", "type":"loop", "maj:min":"7:0", "fstype":null, "pttype":"gpt",
       "mountpoints":[null],
       "children": [
          {"name":"loop0p1", "path":"/dev/loop0p1", "type":"part", "maj:min":"259:0", "fstype":"vfat", "pttype":"gpt", "mountpoints":[null]},
          {"name":"loop0p2", "path":"/dev/loop0p2", "type":"part", "maj:min":"259:1", "fstype":"ext4", "pttype":"gpt", "mountpoints":[null]},
          {"name":"loop0p3", "path":"/dev/loop0p3", "type":"part", "maj:min":"259:2", "fstype":"swap", "pttype":"gpt", "mountpoints":["[SWAP]"]}
       ]
      }
   ]
}"#;

    #[test]
    fn disk_use_table() {
        let l = parse_lsblk(LSBLK).unwrap();
        let disk = &l.blockdevices[0];
        let mi = parse_mountinfo(
            "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
             90 22 259:1 / /mnt/with\\040space rw - ext4 /dev/loop0p2 rw\n",
        );
        assert_eq!(mi[1], ("259:1".to_owned(), "/mnt/with space".to_owned()));
        let swaps =
            parse_swaps("Filename\tType\tSize\tUsed\tPriority\n/dev/loop0p3 partition 1 0 -2\n");
        let u = disk_use(disk, &mi, &swaps, Some("a gpt partition table".into()));
        assert_eq!(
            u.partitions,
            ["/dev/loop0p1", "/dev/loop0p2", "/dev/loop0p3"]
        );
        assert_eq!(
            u.mounts,
            [
                ("/dev/loop0p2".to_owned(), "/mnt/with space".to_owned()),
                ("/dev/loop0p3".to_owned(), "[SWAP]".to_owned())
            ]
        );
        assert_eq!(u.swaps, ["/dev/loop0p3"]);

        let empty = parse_lsblk(
            r#"{"blockdevices":[{"name":"loop1","path":"/dev/loop1","type":"loop","maj:min":"7:1","fstype":null,"pttype":null,"mountpoints":[null]}]}"#,
        )
        .unwrap();
        assert_eq!(
            disk_use(&empty.blockdevices[0], &mi, &[], None),
            DiskUse::default()
        );
    }
}
