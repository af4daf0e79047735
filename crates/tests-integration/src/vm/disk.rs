//! Disk images for guests: ext4 images made from a directory, the
//! partition table of an image file, and a tiny busybox initramfs for the
//! harness's self-test.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

/// Make an ext4 image at `img` holding a copy of `dir` (`mkfs.ext4 -d`),
/// sized from the directory's content with room for metadata.
pub fn make_ext4_image(dir: &Path, label: &str, img: &Path) -> Result<()> {
    let used = dir_size(dir).with_context(|| format!("Measuring {}", dir.display()))?;
    // ext4 metadata, journal and per-file block rounding: a quarter more, plus
    // a fixed 64 MiB so tiny directories get a valid filesystem.
    let size = (used + used / 4 + (64 << 20)).next_multiple_of(1 << 20);
    let f = fs::File::create(img).with_context(|| format!("Creating {}", img.display()))?;
    f.set_len(size)
        .with_context(|| format!("Sizing {} to {size} bytes", img.display()))?;
    drop(f);
    crate::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", label, "-d"])
            .arg(dir)
            .arg(img),
    )?;
    Ok(())
}

/// Bytes used by regular files under `dir` (symlinks not followed).
fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        if ft.is_dir() {
            total += dir_size(&entry.path())?;
        } else if ft.is_file() {
            total += entry.metadata()?.len().next_multiple_of(4096);
        }
    }
    Ok(total)
}

/// One partition of a disk image, from `sfdisk --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Partition number (1-based, as in the node name).
    pub number: u32,
    /// Type GUID (GPT) or type code (MBR), upper case.
    pub type_guid: String,
    /// Offset from the start of the disk, in bytes.
    pub start_bytes: u64,
    /// Size in bytes.
    pub size_bytes: u64,
}

/// The partitions of a disk image file, read with `sfdisk --json` (no loop
/// device needed).
pub fn partitions(disk: &Path) -> Result<Vec<Partition>> {
    let out = crate::run(Command::new("sfdisk").arg("--json").arg(disk))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_sfdisk_json(&text).with_context(|| format!("Parsing sfdisk --json {}", disk.display()))
}

/// Parse `sfdisk --json` output.
pub fn parse_sfdisk_json(text: &str) -> Result<Vec<Partition>> {
    let v: serde_json::Value = serde_json::from_str(text)?;
    let pt = &v["partitiontable"];
    let sector = pt["sectorsize"].as_u64().unwrap_or(512);
    let device = pt["device"].as_str().context("no partitiontable.device")?;
    let mut parts = Vec::new();
    for p in pt["partitions"]
        .as_array()
        .context("no partitiontable.partitions")?
    {
        let node = p["node"].as_str().context("partition without node")?;
        let number: u32 = node
            .strip_prefix(device)
            .map(|s| s.trim_start_matches('p'))
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("partition node {node} of {device}"))?;
        parts.push(Partition {
            number,
            type_guid: p["type"].as_str().unwrap_or_default().to_ascii_uppercase(),
            start_bytes: p["start"].as_u64().context("partition without start")? * sector,
            size_bytes: p["size"].as_u64().context("partition without size")? * sector,
        });
    }
    Ok(parts)
}

// --- Tiny initramfs (harness self-test) ----------------------------------------

/// Append one `newc` cpio entry.
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
    let namesize = name.len() + 1;
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        1, // nlink
        0, // mtime
        data.len() as u32,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        namesize as u32,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Name, mode, device numbers, content of a cpio entry.
type Entry<'a> = (&'a str, u32, (u32, u32), &'a [u8]);

/// Write a gzip-less `newc` initramfs to `out` holding a static busybox
/// (`busybox`, e.g. `/bin/busybox` of Debian's busybox-static) as
/// `/bin/busybox`, and `init_script` as `/init` (run by `/bin/busybox sh`).
pub fn busybox_initramfs(busybox: &Path, init_script: &str, out: &Path) -> Result<()> {
    let bb = fs::read(busybox).with_context(|| format!("Reading {}", busybox.display()))?;
    let init = format!("#!/bin/busybox sh\n{init_script}");
    let mut a = Vec::with_capacity(bb.len() + 4096);
    let dir = 0o040755;
    let file = 0o100755;
    let entries: [Entry; 7] = [
        ("bin", dir, (0, 0), b""),
        ("dev", dir, (0, 0), b""),
        ("dev/console", 0o020600, (5, 1), b""),
        ("proc", dir, (0, 0), b""),
        ("sys", dir, (0, 0), b""),
        ("bin/busybox", file, (0, 0), &bb),
        ("init", file, (0, 0), init.as_bytes()),
    ];
    for (ino, (name, mode, rdev, data)) in entries.into_iter().enumerate() {
        cpio_entry(&mut a, ino as u32 + 1, name, mode, rdev, data);
    }
    cpio_entry(&mut a, 0, "TRAILER!!!", 0, (0, 0), b"");
    fs::write(out, a).with_context(|| format!("Writing {}", out.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sfdisk_json() {
        let parts = parse_sfdisk_json(
            r#"{"partitiontable": {"label": "gpt", "id": "X", "device": "/var/tmp/d/disk.raw", "unit": "sectors",
            "first-lba": 2048, "last-lba": 12582878, "sectorsize": 512,
            "partitions": [
              {"node": "/var/tmp/d/disk.raw1", "start": 2048, "size": 2048, "type": "21686148-6449-6E6F-744E-656564454649"},
              {"node": "/var/tmp/d/disk.raw3", "start": 4096, "size": 100, "type": "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", "name": "root"}]}}"#,
        )
        .unwrap();
        assert_eq!(
            parts,
            vec![
                Partition {
                    number: 1,
                    type_guid: "21686148-6449-6E6F-744E-656564454649".into(),
                    start_bytes: 2048 * 512,
                    size_bytes: 2048 * 512
                },
                Partition {
                    number: 3,
                    type_guid: "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709".into(),
                    start_bytes: 4096 * 512,
                    size_bytes: 100 * 512
                },
            ]
        );
        // A loop device: /dev/loop0p2.
        let parts = parse_sfdisk_json(
            r#"{"partitiontable": {"device": "/dev/loop0", "partitions": [{"node": "/dev/loop0p2", "start": 1, "size": 2, "type": "x"}]}}"#,
        )
        .unwrap();
        assert_eq!(parts[0].number, 2);
        assert!(parse_sfdisk_json("{}").is_err());
    }

    #[test]
    fn cpio_layout() {
        let mut a = Vec::new();
        cpio_entry(&mut a, 1, "init", 0o100755, (0, 0), b"abc");
        // 110-byte header + "init\0" padded to 116, + 3 bytes padded to 120.
        assert_eq!(a.len(), 120);
        assert_eq!(&a[..6], b"070701");
        assert_eq!(&a[6 + 6 * 8..6 + 7 * 8], b"00000003");
        assert_eq!(&a[110..115], b"init\0");
        assert_eq!(&a[116..119], b"abc");
    }
}
