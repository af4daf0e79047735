//! The `/etc/fstab` line that mounts a separate `/boot` filesystem on the
//! installed host (`install to-filesystem --boot-mount-spec`, or a separate
//! filesystem mounted at `ROOT/boot`).
//!
//! On a booted host the physical root is at `/sysroot` and bootc writes boot
//! entries, kernels and `grub.cfg` under `/sysroot/boot`; the bootloader
//! reads them from the same filesystem. So the boot filesystem is mounted at
//! [`BOOT_MOUNTPOINT`], not at the deployment's `/boot` (a directory of the
//! read-only image). The line goes into the deployment's own `/etc/fstab`,
//! which systemd's fstab generator reads after switch-root; later
//! deployments inherit it through the `/etc` merge (a local change).

use std::path::Path;

use anyhow::{Context, Result, ensure};
use cap_std_ext::cap_std::{ambient_authority, fs::Dir};
use cap_std_ext::dirext::CapStdExtDirExt;
use fn_error_context::context;

/// Where a separate boot filesystem is mounted on the booted host.
pub const BOOT_MOUNTPOINT: &str = "/sysroot/boot";

/// The fstab line mounting `spec` (`UUID=…`, `LABEL=…`, a device path) at
/// [`BOOT_MOUNTPOINT`], read-write (bootc writes there on every update).
/// `fstype` is the filesystem type when known, else `auto`.
pub fn boot_line(spec: &str, fstype: Option<&str>) -> Result<String> {
    ensure!(
        !spec.is_empty() && !spec.chars().any(char::is_whitespace),
        "invalid boot mount specification {spec:?}: expected e.g. UUID=<uuid> or LABEL=<label>, without spaces"
    );
    let fstype = fstype.filter(|t| !t.is_empty()).unwrap_or("auto");
    Ok(format!("{spec} {BOOT_MOUNTPOINT} {fstype} defaults 0 0"))
}

/// `text` (an fstab) with `line` appended, or `None` when an active line
/// already mounts something at the same place.
pub fn add_line(text: &str, line: &str) -> Option<String> {
    let mountpoint = |l: &str| {
        let l = l.trim();
        (!l.starts_with('#'))
            .then(|| l.split_whitespace().nth(1))
            .flatten()
            .map(str::to_owned)
    };
    let target = mountpoint(line);
    if text
        .lines()
        .any(|l| mountpoint(l).is_some() && mountpoint(l) == target)
    {
        return None;
    }
    let mut out = text.to_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str("# bootc: the separate /boot filesystem (bootc install --boot-mount-spec)\n");
    out.push_str(line);
    out.push('\n');
    Some(out)
}

/// Add `line` to `etc/fstab` of the deployment whose `/etc` is `etc`
/// (atomically replaced; created when missing).
#[context("Adding the /boot mount to {}/fstab", etc.display())]
pub fn write_boot_line(etc: &Path, line: &str) -> Result<()> {
    let d = Dir::open_ambient_dir(etc, ambient_authority())
        .with_context(|| format!("Opening {}", etc.display()))?;
    let text = match d.read_to_string("fstab") {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).context("Reading fstab"),
    };
    match add_line(&text, line) {
        Some(new) => d.atomic_write("fstab", new).context("Writing fstab")?,
        None => tracing::warn!(
            "{}/fstab already mounts something at {BOOT_MOUNTPOINT}; not adding {line:?}",
            etc.display()
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_lines() {
        let cases: &[(&str, Option<&str>, Result<&str, &str>)] = &[
            (
                "UUID=1234-abcd",
                Some("ext4"),
                Ok("UUID=1234-abcd /sysroot/boot ext4 defaults 0 0"),
            ),
            (
                "LABEL=boot",
                None,
                Ok("LABEL=boot /sysroot/boot auto defaults 0 0"),
            ),
            (
                "/dev/vda2",
                Some(""),
                Ok("/dev/vda2 /sysroot/boot auto defaults 0 0"),
            ),
            ("", None, Err("invalid boot mount specification")),
            ("LABEL=my boot", None, Err("without spaces")),
        ];
        for (spec, fstype, expect) in cases {
            match (boot_line(spec, *fstype), expect) {
                (Ok(l), Ok(e)) => assert_eq!(&l, e),
                (Err(err), Err(frag)) => assert!(err.to_string().contains(frag), "{err}"),
                (got, _) => panic!("{spec:?}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn appending() {
        let line = "UUID=b /sysroot/boot ext4 defaults 0 0";
        let comment = "# bootc: the separate /boot filesystem (bootc install --boot-mount-spec)\n";
        let cases: &[(&str, Option<String>)] = &[
            ("", Some(format!("{comment}{line}\n"))),
            (
                "# nothing here\n",
                Some(format!("# nothing here\n{comment}{line}\n")),
            ),
            (
                "tmpfs /tmp tmpfs defaults 0 0",
                Some(format!("tmpfs /tmp tmpfs defaults 0 0\n{comment}{line}\n")),
            ),
            // Already mounted there: left alone. A commented line does not count.
            ("UUID=a /sysroot/boot xfs defaults 0 0\n", None),
            (
                "#UUID=a /sysroot/boot xfs defaults 0 0\n",
                Some(format!(
                    "#UUID=a /sysroot/boot xfs defaults 0 0\n{comment}{line}\n"
                )),
            ),
        ];
        for (text, expect) in cases {
            assert_eq!(&add_line(text, line), expect, "{text:?}");
        }
    }

    #[test]
    fn writes_into_etc() {
        let td = tempfile::tempdir().unwrap();
        let line = boot_line("UUID=b", Some("ext4")).unwrap();
        write_boot_line(td.path(), &line).unwrap();
        write_boot_line(td.path(), &line).unwrap();
        let text = std::fs::read_to_string(td.path().join("fstab")).unwrap();
        assert_eq!(text.matches(&line).count(), 1, "{text}");
    }
}
