//! The `/usr` overlay (`bootc usr-overlay [--read-only]`): a transient
//! writable overlayfs on `/usr` of the booted host, for debugging tools or
//! hotfixes that must vanish at reboot; and reading which overlay is on
//! `/usr` for `bootc status` (`usrOverlay`).
//!
//! 1. Refuse unless booted from a deployment (not with `--sysroot`), and
//!    when `/usr` already carries an overlay ([`parse_usr_overlay`] on
//!    `/proc/self/mountinfo`).
//! 2. Mount a fresh tmpfs at [`OVERLAY_DIR`] (under `/run`, itself gone at
//!    reboot) and make `upper/` (owner and mode of `/usr`) and `work/` in it.
//! 3. Mount overlayfs on `/usr` with the current `/usr` as its lower layer
//!    ([`overlay_options`]). With `--read-only` the mount (not the
//!    filesystem) is then made read-only, so it can be remounted read/write
//!    in a private mount namespace while it stays read-only for the rest of
//!    the system (as upstream).
//!
//! On failure after the tmpfs is mounted it is unmounted again. Nothing is
//! written to the sysroot: a reboot boots the deployment as it was.
//! `/etc` and `/var` are not affected (they are writable and persistent).

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use bootc_spec::{FilesystemOverlay, FilesystemOverlayAccessMode, FilesystemOverlayPersistence};
use rustix::mount::{MountFlags, UnmountFlags};

use crate::target::Target;

/// Where the overlay's upper and work directories live: a tmpfs of its own
/// under `/run`, so that both are on one filesystem that vanishes at reboot.
pub const OVERLAY_DIR: &str = "/run/bootc/usr-overlay";

/// The mount point the command acts on.
const USR: &str = "/usr";

/// One line of `/proc/self/mountinfo`, the fields we use.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MountInfo {
    id: u64,
    parent: u64,
    mount_point: String,
    /// Per-mount options (`rw`/`ro`, `nosuid`, ...).
    mount_options: String,
    fs_type: String,
    /// Per-filesystem options (for overlayfs: `lowerdir=`, `upperdir=`, ...).
    super_options: String,
}

/// Parse one mountinfo line; `None` when malformed. Mount points keep the
/// kernel's octal escapes (`\040` for a space): `/usr` has none.
fn parse_mountinfo_line(line: &str) -> Option<MountInfo> {
    let (left, right) = line.split_once(" - ")?;
    let mut l = left.split(' ');
    let id = l.next()?.parse().ok()?;
    let parent = l.next()?.parse().ok()?;
    let _devno = l.next()?;
    let _root = l.next()?;
    let mount_point = l.next()?.to_owned();
    let mount_options = l.next()?.to_owned();
    let mut r = right.split(' ');
    let fs_type = r.next()?.to_owned();
    let _source = r.next()?;
    let super_options = r.next().unwrap_or("").to_owned();
    Some(MountInfo {
        id,
        parent,
        mount_point,
        mount_options,
        fs_type,
        super_options,
    })
}

/// The overlay visible on `/usr` according to `mountinfo` (the text of
/// `/proc/self/mountinfo`), if any.
///
/// The visible `/usr` mount is the one no other `/usr` mount is stacked on.
/// It is an overlay when its type is `overlay`; it is read-only when its
/// per-mount options say `ro`; it is transient when its upper directory is
/// under `/run` (a tmpfs) or it has none, persistent otherwise.
pub fn parse_usr_overlay(mountinfo: &str) -> Option<FilesystemOverlay> {
    parse_overlay_at(mountinfo, USR)
}

/// [`parse_usr_overlay`] for any mount point.
fn parse_overlay_at(mountinfo: &str, mount_point: &str) -> Option<FilesystemOverlay> {
    let usr: Vec<MountInfo> = mountinfo
        .lines()
        .filter_map(parse_mountinfo_line)
        .filter(|m| m.mount_point == mount_point)
        .collect();
    let top = usr
        .iter()
        .rev()
        .find(|m| !usr.iter().any(|o| o.parent == m.id))?;
    if top.fs_type != "overlay" {
        return None;
    }
    let has = |opts: &str, o: &str| opts.split(',').any(|x| x == o);
    let access_mode = if has(&top.mount_options, "ro") || has(&top.super_options, "ro") {
        FilesystemOverlayAccessMode::ReadOnly
    } else {
        FilesystemOverlayAccessMode::ReadWrite
    };
    let upper = top
        .super_options
        .split(',')
        .find_map(|o| o.strip_prefix("upperdir="));
    let persistence = match upper {
        Some(u) if !(u == "/run" || u.starts_with("/run/")) => {
            FilesystemOverlayPersistence::Persistent
        }
        _ => FilesystemOverlayPersistence::Transient,
    };
    Some(FilesystemOverlay {
        access_mode,
        persistence,
    })
}

/// The overlay on `/usr` of this process's mount namespace, if any.
pub fn current() -> Result<Option<FilesystemOverlay>> {
    let p = "/proc/self/mountinfo";
    let text = std::fs::read_to_string(p).with_context(|| format!("Reading {p}"))?;
    Ok(parse_usr_overlay(&text))
}

/// The overlayfs mount options: `lower` (`/usr`) as the lower layer, and the
/// upper and work directories in `dir`.
pub fn overlay_options(lower: &str, dir: &str) -> String {
    format!("lowerdir={lower},upperdir={dir}/upper,workdir={dir}/work")
}

/// `bootc usr-overlay`: mount the transient overlay on `/usr` of the
/// running host `t` (booted from a deployment).
pub fn mount(t: &Target, access: FilesystemOverlayAccessMode) -> Result<()> {
    anyhow::ensure!(
        t.booted.is_some(),
        "bootc usr-overlay acts on the running system; --sysroot is not supported"
    );
    if let Some(o) = current()? {
        bail!(
            "An overlay is already mounted on /usr ({o}); it goes away at reboot (or `umount -l /usr`)"
        );
    }
    mount_overlay(Path::new(OVERLAY_DIR), Path::new(USR), access)
}

/// Steps 2 and 3 of the module flow: a tmpfs at `dir`, an overlay on
/// `target` (`/usr`) with `target` as its lower layer.
fn mount_overlay(dir: &Path, target: &Path, access: FilesystemOverlayAccessMode) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("Creating {}", dir.display()))?;
    rustix::mount::mount(
        "bootc-usr-overlay",
        dir,
        "tmpfs",
        MountFlags::empty(),
        Some(c"mode=0700"),
    )
    .with_context(|| format!("Mounting a tmpfs at {}", dir.display()))?;
    let r = (|| -> Result<()> {
        let usr =
            std::fs::metadata(target).with_context(|| format!("Reading {}", target.display()))?;
        let upper = dir.join("upper");
        let work = dir.join("work");
        for d in [&upper, &work] {
            std::fs::create_dir(d).with_context(|| format!("Creating {}", d.display()))?;
        }
        rustix::fs::chown(
            &upper,
            Some(rustix::fs::Uid::from_raw(usr.uid())),
            Some(rustix::fs::Gid::from_raw(usr.gid())),
        )
        .with_context(|| format!("Setting the owner of {}", upper.display()))?;
        rustix::fs::chmod(&upper, rustix::fs::Mode::from_raw_mode(usr.mode() & 0o7777))
            .with_context(|| format!("Setting the mode of {}", upper.display()))?;
        let utf8 = |p: &Path| {
            p.to_str()
                .with_context(|| format!("{} is not UTF-8", p.display()))
                .map(str::to_owned)
        };
        let data = CString::new(overlay_options(&utf8(target)?, &utf8(dir)?))
            .context("Overlay options")?;
        rustix::mount::mount(
            "overlay",
            target,
            "overlay",
            MountFlags::empty(),
            Some(&*data),
        )
        .with_context(|| format!("Mounting an overlay on {}", target.display()))?;
        if access == FilesystemOverlayAccessMode::ReadOnly {
            // Read-only mount, read/write filesystem: a private namespace
            // can still remount its copy read/write.
            if let Err(e) =
                rustix::mount::mount_remount(target, MountFlags::BIND | MountFlags::RDONLY, "")
            {
                let _ = rustix::mount::unmount(target, UnmountFlags::DETACH);
                return Err(e).with_context(|| {
                    format!("Making the overlay on {} read-only", target.display())
                });
            }
        }
        Ok(())
    })();
    if r.is_err()
        && let Err(e) = rustix::mount::unmount(dir, UnmountFlags::DETACH)
    {
        tracing::debug!("unmounting {}: {e}", dir.display());
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const READ_WRITE: FilesystemOverlay = FilesystemOverlay {
        access_mode: FilesystemOverlayAccessMode::ReadWrite,
        persistence: FilesystemOverlayPersistence::Transient,
    };
    const READ_ONLY: FilesystemOverlay = FilesystemOverlay {
        access_mode: FilesystemOverlayAccessMode::ReadOnly,
        persistence: FilesystemOverlayPersistence::Transient,
    };

    #[test]
    fn usr_overlay_from_mountinfo() {
        let booted = include_str!("fixtures/mountinfo-booted.txt");
        let rw = include_str!("fixtures/mountinfo-usr-overlay-rw.txt");
        let ro = include_str!("fixtures/mountinfo-usr-overlay-ro.txt");
        let cases: &[(&str, String, Option<FilesystemOverlay>)] = &[
            ("booted, no overlay", booted.to_owned(), None),
            ("read/write overlay", rw.to_owned(), Some(READ_WRITE)),
            ("read-only overlay", ro.to_owned(), Some(READ_ONLY)),
            (
                "upper outside /run: persistent",
                rw.replace("upperdir=/run/bootc", "upperdir=/var/tmp/bootc"),
                Some(FilesystemOverlay {
                    access_mode: FilesystemOverlayAccessMode::ReadWrite,
                    persistence: FilesystemOverlayPersistence::Persistent,
                }),
            ),
            (
                "/usr a bind mount, not an overlay",
                format!("{booted}90 23 259:3 /usr /usr ro,relatime shared:9 - ext4 /dev/vda3 rw\n"),
                None,
            ),
            (
                "a bind mount stacked on the overlay hides it",
                format!("{rw}91 88 259:3 /x /usr rw,relatime - ext4 /dev/vda3 rw\n"),
                None,
            ),
            (
                "/usr/local is not /usr",
                booted.replace(" /tmp ", " /usr/local "),
                None,
            ),
            ("empty", String::new(), None),
            ("garbage", "not mountinfo\n1 2\n".into(), None),
        ];
        for (what, text, expect) in cases {
            assert_eq!(parse_usr_overlay(text), *expect, "{what}");
        }
    }

    #[test]
    fn mountinfo_lines() {
        let m = parse_mountinfo_line(
            "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue",
        )
        .unwrap();
        assert_eq!(
            (
                m.id,
                m.parent,
                m.mount_point.as_str(),
                m.mount_options.as_str()
            ),
            (36, 35, "/mnt2", "rw,noatime")
        );
        assert_eq!(
            (m.fs_type.as_str(), m.super_options.as_str()),
            ("ext3", "rw,errors=continue")
        );
        assert_eq!(parse_mountinfo_line("36 35 98:0 /a /b rw"), None);
        assert_eq!(parse_mountinfo_line("x 35 98:0 /a /b rw - t s o"), None);
    }

    #[test]
    fn options() {
        assert_eq!(
            overlay_options(USR, OVERLAY_DIR),
            "lowerdir=/usr,upperdir=/run/bootc/usr-overlay/upper,workdir=/run/bootc/usr-overlay/work"
        );
    }

    /// The mount itself, on a scratch directory instead of /usr (root only;
    /// this host's /usr is never touched): writes land in the tmpfs upper
    /// layer, not in the lower directory; `--read-only` refuses writes;
    /// mountinfo shows the overlay with its access mode.
    #[test]
    fn mounts_an_overlay_on_a_scratch_dir() {
        if !rustix::process::getuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let base = Path::new("/var/tmp");
        for access in [
            FilesystemOverlayAccessMode::ReadWrite,
            FilesystemOverlayAccessMode::ReadOnly,
        ] {
            let td = tempfile::Builder::new()
                .prefix("kargs-usr-overlay-")
                .tempdir_in(base)
                .unwrap();
            let lower = td.path().join("lower");
            let ovl = td.path().join("ovl");
            std::fs::create_dir(&lower).unwrap();
            std::fs::write(lower.join("a"), "lower\n").unwrap();
            mount_overlay(&ovl, &lower, access).unwrap();
            let wrote = std::fs::write(lower.join("b"), "new\n");
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            let seen = parse_overlay_at(&mountinfo, lower.to_str().unwrap());
            let a = std::fs::read_to_string(lower.join("a")).unwrap();
            rustix::mount::unmount(&lower, UnmountFlags::DETACH).unwrap();
            let in_upper = ovl.join("upper/b").exists();
            rustix::mount::unmount(&ovl, UnmountFlags::DETACH).unwrap();
            assert_eq!(a, "lower\n");
            assert_eq!(seen.map(|o| o.access_mode), Some(access), "{mountinfo}");
            match access {
                FilesystemOverlayAccessMode::ReadWrite => {
                    wrote.unwrap();
                    assert!(in_upper);
                }
                FilesystemOverlayAccessMode::ReadOnly => {
                    let e = wrote.unwrap_err();
                    assert_eq!(
                        e.raw_os_error(),
                        Some(rustix::io::Errno::ROFS.raw_os_error())
                    );
                }
            }
            // The lower directory itself never changed.
            assert!(!lower.join("b").exists());
        }
    }
}
