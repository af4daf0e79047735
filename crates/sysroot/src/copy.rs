//! Copying a directory tree with everything that makes it a system tree:
//! modes, owners, extended attributes, symlinks, hard links, device nodes and
//! timestamps (what `cp -a` keeps), working relative to directory fds.
//!
//! Symlinks are copied as links and never followed, so a tree taken from an
//! image can not make us read or write outside of it.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fn_error_context::context;
use rustix::fs::{
    AtFlags, FileType, Mode, OFlags, Stat, Timespec, Timestamps, UTIME_OMIT, fchmod, fchown, fstat,
    mkdirat, mknodat, openat, readlinkat, statat, symlinkat, utimensat,
};
use rustix::process::{Gid, Uid};

/// Copy the directory `src` to `dst`, which must not exist yet; its parent must.
///
/// Nothing is synced: the caller issues one `syncfs` barrier for all its writes.
#[context("Copying {} to {}", src.display(), dst.display())]
pub fn copy_dir_all(src: &Path, dst: &Path) -> Result<()> {
    let src_fd = open_dir(rustix::fs::CWD, src)?;
    copy_dir_fd(&src_fd, dst)
}

/// Copy the directory open as `src_fd` to `dst`, like [`copy_dir_all`].
pub fn copy_dir_fd(src_fd: &OwnedFd, dst: &Path) -> Result<()> {
    let (parent, name) = split_parent(dst)?;
    let parent_fd = open_dir(rustix::fs::CWD, parent)?;
    let st = fstat(src_fd).context("Inspecting the source directory")?;
    mkdirat(&parent_fd, name, Mode::from_raw_mode(0o700))
        .with_context(|| format!("Creating {}", dst.display()))?;
    let dst_fd = open_dir(&parent_fd, Path::new(name))?;
    let mut copier = Copier {
        dst_root: dst_fd.try_clone().context("Duplicating fd")?,
        links: HashMap::new(),
    };
    copier.copy_dir_contents(src_fd, &dst_fd, Path::new(""))?;
    apply_metadata_fd(&dst_fd, src_fd, &st)
        .with_context(|| format!("Setting metadata of {}", dst.display()))?;
    Ok(())
}

struct Copier {
    /// The top of the destination, for re-creating hard links by path.
    dst_root: OwnedFd,
    /// Source (dev, ino) of multiply-linked files → their first copy's path
    /// relative to `dst_root`.
    links: HashMap<(u64, u64), PathBuf>,
}

impl Copier {
    fn copy_dir_contents(&mut self, src: &OwnedFd, dst: &OwnedFd, rel: &Path) -> Result<()> {
        let mut names = Vec::new();
        let dup = src.try_clone().context("Duplicating fd")?;
        let dir = rustix::fs::Dir::read_from(dup)
            .with_context(|| format!("Reading directory {}", show(rel)))?;
        for entry in dir {
            let entry = entry.with_context(|| format!("Reading directory {}", show(rel)))?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            names.push(name.to_owned());
        }
        // A stable order makes inode numbers and errors reproducible.
        names.sort();
        for name in names {
            let child_rel = rel.join(OsStr::from_bytes(name.as_bytes()));
            self.copy_entry(src, dst, &name, &child_rel)
                .with_context(|| format!("Copying {}", show(&child_rel)))?;
        }
        Ok(())
    }

    fn copy_entry(&mut self, src: &OwnedFd, dst: &OwnedFd, name: &CStr, rel: &Path) -> Result<()> {
        let st = statat(src, name, AtFlags::SYMLINK_NOFOLLOW)?;
        let ft = FileType::from_raw_mode(st.st_mode);
        if ft != FileType::Directory && st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.links.get(&key) {
                rustix::fs::linkat(&self.dst_root, first, dst, name, AtFlags::empty())
                    .with_context(|| format!("Linking to {}", show(first)))?;
                return Ok(());
            }
            self.links.insert(key, rel.to_owned());
        }
        match ft {
            FileType::Directory => {
                let s = open_dir(src, Path::new(OsStr::from_bytes(name.to_bytes())))?;
                mkdirat(dst, name, Mode::from_raw_mode(0o700))?;
                let d = open_dir(dst, Path::new(OsStr::from_bytes(name.to_bytes())))?;
                self.copy_dir_contents(&s, &d, rel)?;
                apply_metadata_fd(&d, &s, &st)?;
            }
            FileType::RegularFile => {
                let s = openat(
                    src,
                    name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
                    Mode::empty(),
                )?;
                let d = openat(
                    dst,
                    name,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )?;
                let mut sf = std::fs::File::from(s);
                let mut df = std::fs::File::from(d);
                std::io::copy(&mut sf, &mut df)?;
                apply_metadata_fd(&df, &sf, &st)?;
            }
            FileType::Symlink => {
                let target = readlinkat(src, name, Vec::new())?;
                symlinkat(target.as_c_str(), dst, name)?;
                rustix::fs::chownat(
                    dst,
                    name,
                    Some(Uid::from_raw(st.st_uid)),
                    Some(Gid::from_raw(st.st_gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )?;
                copy_xattrs_nofollow(src, dst, name)?;
                set_times_at(dst, name, &st)?;
            }
            FileType::Fifo
            | FileType::CharacterDevice
            | FileType::BlockDevice
            | FileType::Socket => {
                mknodat(dst, name, ft, Mode::from_raw_mode(0o600), st.st_rdev)?;
                rustix::fs::chownat(
                    dst,
                    name,
                    Some(Uid::from_raw(st.st_uid)),
                    Some(Gid::from_raw(st.st_gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )?;
                rustix::fs::chmodat(dst, name, mode_of(&st), AtFlags::empty())?;
                copy_xattrs_nofollow(src, dst, name)?;
                set_times_at(dst, name, &st)?;
            }
            FileType::Unknown => anyhow::bail!("unknown file type {:o}", st.st_mode),
        }
        Ok(())
    }
}

fn show(rel: &Path) -> String {
    if rel.as_os_str().is_empty() {
        ".".into()
    } else {
        rel.display().to_string()
    }
}

fn split_parent(p: &Path) -> Result<(&Path, &OsStr)> {
    let name = p
        .file_name()
        .with_context(|| format!("{} has no final component", p.display()))?;
    let parent = match p.parent() {
        Some(x) if !x.as_os_str().is_empty() => x,
        _ => Path::new("."),
    };
    Ok((parent, name))
}

/// Open a directory without following a final symlink.
pub(crate) fn open_dir(dirfd: impl AsFd, path: &Path) -> Result<OwnedFd> {
    openat(
        dirfd,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("Opening directory {}", path.display()))
}

fn mode_of(st: &Stat) -> Mode {
    Mode::from_raw_mode(st.st_mode & 0o7777)
}

/// Owner, xattrs, mode (after chown, which clears set-id bits), then times.
fn apply_metadata_fd(dst: impl AsFd, src: impl AsFd, st: &Stat) -> Result<()> {
    fchown(
        &dst,
        Some(Uid::from_raw(st.st_uid)),
        Some(Gid::from_raw(st.st_gid)),
    )
    .context("Changing owner")?;
    copy_xattrs_fd(&src, &dst)?;
    fchmod(&dst, mode_of(st)).context("Changing mode")?;
    rustix::fs::futimens(&dst, &timestamps(st)).context("Setting times")?;
    Ok(())
}

fn timestamps(st: &Stat) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: st.st_atime as _,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: st.st_mtime as _,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}

fn set_times_at(dst: impl AsFd, name: &CStr, st: &Stat) -> Result<()> {
    let mut ts = timestamps(st);
    // The access time of a link is of no interest; keep it as created.
    ts.last_access = Timespec {
        tv_sec: 0,
        tv_nsec: UTIME_OMIT as _,
    };
    utimensat(dst, name, &ts, AtFlags::SYMLINK_NOFOLLOW).context("Setting times")?;
    Ok(())
}

/// The names in an xattr list buffer (NUL-separated).
fn xattr_names(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    buf.split(|b| *b == 0).filter(|n| !n.is_empty())
}

fn copy_xattrs_fd(src: impl AsFd, dst: impl AsFd) -> Result<()> {
    let mut list = vec![0u8; 4096];
    let n = loop {
        match rustix::fs::flistxattr(&src, &mut list[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => list.resize(list.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(()),
            Err(e) => return Err(e).context("Listing xattrs"),
        }
    };
    for name in xattr_names(&list[..n]) {
        let cname = CString::new(name).context("xattr name")?;
        let mut val = vec![0u8; 256];
        let len = loop {
            match rustix::fs::fgetxattr(&src, cname.as_c_str(), &mut val[..]) {
                Ok(len) => break len,
                Err(rustix::io::Errno::RANGE) => val.resize(val.len() * 4, 0),
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("Reading xattr {}", cname.to_string_lossy()));
                }
            }
        };
        rustix::fs::fsetxattr(
            &dst,
            cname.as_c_str(),
            &val[..len],
            rustix::fs::XattrFlags::empty(),
        )
        .with_context(|| format!("Writing xattr {}", cname.to_string_lossy()))?;
    }
    Ok(())
}

/// Xattrs of a symlink or special file, addressed through `/proc/self/fd`
/// since there is no fd-relative `l*xattr`.
fn copy_xattrs_nofollow(src: &OwnedFd, dst: &OwnedFd, name: &CStr) -> Result<()> {
    let sp = proc_path(src.as_fd(), name);
    let dp = proc_path(dst.as_fd(), name);
    let mut list = vec![0u8; 4096];
    let n = loop {
        match rustix::fs::llistxattr(&sp, &mut list[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => list.resize(list.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(()),
            Err(e) => return Err(e).context("Listing xattrs"),
        }
    };
    for xname in xattr_names(&list[..n]) {
        let cname = CString::new(xname).context("xattr name")?;
        let mut val = vec![0u8; 256];
        let len = loop {
            match rustix::fs::lgetxattr(&sp, cname.as_c_str(), &mut val[..]) {
                Ok(len) => break len,
                Err(rustix::io::Errno::RANGE) => val.resize(val.len() * 4, 0),
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("Reading xattr {}", cname.to_string_lossy()));
                }
            }
        };
        rustix::fs::lsetxattr(
            &dp,
            cname.as_c_str(),
            &val[..len],
            rustix::fs::XattrFlags::empty(),
        )
        .with_context(|| format!("Writing xattr {}", cname.to_string_lossy()))?;
    }
    Ok(())
}

fn proc_path(dir: BorrowedFd<'_>, name: &CStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    p.push(OsStr::from_bytes(name.to_bytes()));
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn copies_files_links_modes_and_hardlinks() {
        let td = tempfile::tempdir().unwrap();
        let src = td.path().join("src");
        std::fs::create_dir_all(src.join("a/b")).unwrap();
        std::fs::write(src.join("a/file"), b"hello").unwrap();
        std::fs::set_permissions(src.join("a/file"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        std::fs::hard_link(src.join("a/file"), src.join("a/b/hard")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("abs-link")).unwrap();
        std::os::unix::fs::symlink("../file", src.join("a/b/rel-link")).unwrap();
        std::fs::set_permissions(src.join("a/b"), std::fs::Permissions::from_mode(0o1750)).unwrap();

        let dst = td.path().join("dst");
        copy_dir_all(&src, &dst).unwrap();

        assert_eq!(std::fs::read(dst.join("a/file")).unwrap(), b"hello");
        let m = std::fs::metadata(dst.join("a/file")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!(m.nlink(), 2);
        assert_eq!(
            m.ino(),
            std::fs::metadata(dst.join("a/b/hard")).unwrap().ino()
        );
        assert_eq!(
            std::fs::read_link(dst.join("abs-link")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(
            std::fs::read_link(dst.join("a/b/rel-link")).unwrap(),
            Path::new("../file")
        );
        let d = std::fs::metadata(dst.join("a/b")).unwrap();
        assert_eq!(d.mode() & 0o7777, 0o1750);
        assert_eq!(
            d.modified().unwrap(),
            std::fs::metadata(src.join("a/b"))
                .unwrap()
                .modified()
                .unwrap()
        );
    }

    #[test]
    fn refuses_existing_destination() {
        let td = tempfile::tempdir().unwrap();
        std::fs::create_dir(td.path().join("src")).unwrap();
        std::fs::create_dir(td.path().join("dst")).unwrap();
        assert!(copy_dir_all(&td.path().join("src"), &td.path().join("dst")).is_err());
    }
}
