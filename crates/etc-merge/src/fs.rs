//! Low-level filesystem operations relative to directory fds.
//!
//! Every lookup here resolves one path component at a time with
//! `O_NOFOLLOW` (or `AT_SYMLINK_NOFOLLOW`), so a symlink inside a tree is
//! always treated as the link itself and never leads out of the tree.
//! Extended attributes of entries that cannot be opened safely (symlinks,
//! device nodes) are reached as `/proc/self/fd/<dirfd>/<name>` with the
//! `l*xattr` calls: the kernel jumps through the directory fd and does not
//! follow the final component.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;

use crate::report::Skipped;
use crate::tree::{FileKind, Layout, Xattrs};

/// Permission bits carried by the merge: rwx for user, group and other plus
/// setuid, setgid and sticky.
pub(crate) const PERMISSION_BITS: u32 = 0o7777;

/// Deepest directory nesting we walk. Each level holds an open directory fd
/// and a stack frame; real /etc trees are a handful of levels deep, so this
/// only stops pathological input before it exhausts fds or stack.
const MAX_DEPTH: usize = 256;

/// Attempts at reading an xattr list or value whose size changes between the
/// size query and the read (a concurrent writer); beyond this we give up.
const XATTR_READ_ATTEMPTS: usize = 4;

/// Mode of a directory we create before its content is filled in; the final
/// mode is applied after the content, so read-only directories can be filled.
const DIR_CREATE_MODE: u32 = 0o700;

/// Mode of a regular file while its data is copied; the final mode follows.
const FILE_CREATE_MODE: u32 = 0o600;

pub(crate) fn check_depth(depth: usize, rel: &Path) -> Result<()> {
    if depth > MAX_DEPTH {
        bail!(
            "Directory nesting at {} is deeper than {MAX_DEPTH} levels",
            rel.display()
        );
    }
    Ok(())
}

/// Opens the directory `name` in `dir` without following a symlink.
pub(crate) fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Opens the regular file `name` in `dir` for reading. Refuses symlinks, and
/// never blocks on a fifo swapped in under the name.
pub(crate) fn open_regular_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        bail!("Expected a regular file, found mode {:o}", st.st_mode);
    }
    Ok(File::from(fd))
}

/// The target of the symlink `name` in `dir`, byte for byte.
pub(crate) fn read_link_at(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<PathBuf> {
    let target = rustix::fs::readlinkat(dir, name, Vec::new())?;
    Ok(PathBuf::from(OsString::from_vec(target.into_bytes())))
}

/// The names in `dir`, sorted, without `.` and `..`.
pub(crate) fn read_names(dir: BorrowedFd<'_>, rel: &Path) -> Result<Vec<OsString>> {
    let ctx = || format!("Listing directory {}", display_rel(rel));
    // `dir` may be an O_PATH fd (cap-std opens directories that way), which
    // cannot be read; open a readable one.
    let readable = open_dir_at(dir, OsStr::new(".")).with_context(ctx)?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::new(readable).with_context(ctx)? {
        let entry = entry.with_context(ctx)?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    }
    names.sort();
    Ok(names)
}

/// Opens the parent directory of `path` below `root`, one component at a
/// time without following symlinks, and returns it with the last component.
/// `path` must be relative and made of plain names.
pub(crate) fn open_parent<'p>(
    root: BorrowedFd<'_>,
    path: &'p Path,
) -> Result<(OwnedFd, &'p OsStr)> {
    let mut names = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => names.push(name),
            _ => bail!("Invalid path {path:?}: only plain relative names are allowed"),
        }
    }
    let Some((last, parents)) = names.split_last() else {
        bail!("Invalid empty path");
    };
    let mut dir = open_dir_at(root, OsStr::new(".")).context("Opening the tree root")?;
    for name in parents {
        dir = open_dir_at(dir.as_fd(), name)
            .with_context(|| format!("Opening the parent directories of {}", path.display()))?;
    }
    Ok((dir, last))
}

/// Renders a relative path, showing the root as `.`.
pub(crate) fn display_rel(rel: &Path) -> std::path::Display<'_> {
    if rel.as_os_str().is_empty() {
        Path::new(".").display()
    } else {
        rel.display()
    }
}

/// How to address one entry for metadata calls.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Node<'a> {
    /// An fd opened on the entry itself (regular files and directories).
    Fd(BorrowedFd<'a>),
    /// A name in a directory, never followed (symlinks, device nodes).
    At(BorrowedFd<'a>, &'a OsStr),
}

impl Node<'_> {
    fn proc_path(dir: BorrowedFd<'_>, name: &OsStr) -> OsString {
        let mut path = OsString::from(format!("/proc/self/fd/{}/", dir.as_raw_fd()));
        path.push(name);
        path
    }

    fn stat(self) -> rustix::io::Result<Stat> {
        match self {
            Node::Fd(fd) => rustix::fs::fstat(fd),
            Node::At(dir, name) => rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW),
        }
    }

    fn list_xattrs(self) -> rustix::io::Result<Vec<u8>> {
        match self {
            Node::Fd(fd) => read_sized(
                || rustix::fs::flistxattr_query(fd),
                |buf| rustix::fs::flistxattr(fd, buf),
            ),
            Node::At(dir, name) => {
                let path = Self::proc_path(dir, name);
                read_sized(
                    || rustix::fs::llistxattr_query(&path),
                    |buf| rustix::fs::llistxattr(&path, buf),
                )
            }
        }
    }

    fn get_xattr(self, attr: &OsStr) -> rustix::io::Result<Vec<u8>> {
        match self {
            Node::Fd(fd) => read_sized(
                || rustix::fs::fgetxattr_query(fd, attr),
                |buf| rustix::fs::fgetxattr(fd, attr, buf),
            ),
            Node::At(dir, name) => {
                let path = Self::proc_path(dir, name);
                read_sized(
                    || rustix::fs::lgetxattr_query(&path, attr),
                    |buf| rustix::fs::lgetxattr(&path, attr, buf),
                )
            }
        }
    }

    fn set_xattr(self, attr: &OsStr, value: &[u8]) -> rustix::io::Result<()> {
        match self {
            Node::Fd(fd) => rustix::fs::fsetxattr(fd, attr, value, XattrFlags::empty()),
            Node::At(dir, name) => {
                rustix::fs::lsetxattr(Self::proc_path(dir, name), attr, value, XattrFlags::empty())
            }
        }
    }

    fn remove_xattr(self, attr: &OsStr) -> rustix::io::Result<()> {
        match self {
            Node::Fd(fd) => rustix::fs::fremovexattr(fd, attr),
            Node::At(dir, name) => rustix::fs::lremovexattr(Self::proc_path(dir, name), attr),
        }
    }
}

/// Calls `read` with a buffer of the size `query` reports, retrying if the
/// value grew in between.
fn read_sized(
    query: impl Fn() -> rustix::io::Result<usize>,
    read: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<Vec<u8>> {
    for _ in 0..XATTR_READ_ATTEMPTS {
        let size = query()?;
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        match read(&mut buf) {
            Ok(len) => {
                buf.truncate(len);
                return Ok(buf);
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::RANGE)
}

/// Whether the merge carries the extended attribute `name`: `user.*`,
/// `security.*` and POSIX ACLs. `trusted.*` is skipped: only readable with
/// CAP_SYS_ADMIN and used by overlayfs for its own bookkeeping.
fn is_carried_xattr(name: &[u8]) -> bool {
    name.starts_with(b"user.")
        || name.starts_with(b"security.")
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
}

fn carried_xattr_names(node: Node<'_>) -> rustix::io::Result<Vec<OsString>> {
    let list = match node.list_xattrs() {
        Ok(list) => list,
        // A filesystem without xattr support has none to carry.
        Err(Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(list
        .split(|&b| b == 0)
        .filter(|name| !name.is_empty() && is_carried_xattr(name))
        .map(|name| OsString::from_vec(name.to_vec()))
        .collect())
}

/// The carried extended attributes of `node`.
pub(crate) fn load_xattrs(node: Node<'_>) -> rustix::io::Result<Xattrs> {
    let mut xattrs = Xattrs::new();
    for name in carried_xattr_names(node)? {
        match node.get_xattr(&name) {
            Ok(value) => {
                xattrs.insert(name, value);
            }
            // Removed between listing and reading: it is no longer there.
            Err(Errno::NODATA) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(xattrs)
}

/// Makes the carried extended attributes of `node` exactly `desired`.
fn sync_xattrs(node: Node<'_>, desired: &Xattrs) -> Result<()> {
    for name in carried_xattr_names(node).context("Listing extended attributes")? {
        if !desired.contains_key(&name) {
            node.remove_xattr(&name)
                .with_context(|| format!("Removing extended attribute {name:?}"))?;
        }
    }
    for (name, value) in desired {
        node.set_xattr(name, value)
            .with_context(|| format!("Setting extended attribute {name:?}"))?;
    }
    Ok(())
}

/// Metadata copied along with an entry.
#[derive(Debug)]
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: Timespec,
    xattrs: Xattrs,
}

fn load_meta(node: Node<'_>, st: &Stat) -> Result<Meta> {
    Ok(Meta {
        uid: st.st_uid,
        gid: st.st_gid,
        mode: st.st_mode & PERMISSION_BITS,
        mtime: Timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec as _,
        },
        xattrs: load_xattrs(node).context("Reading extended attributes")?,
    })
}

/// Gives `node` the owner, mode, xattrs and mtime in `meta`. The order
/// matters: chown clears setuid/setgid bits and file capabilities, so it
/// comes first; ACLs are set after the mode they refine.
fn write_meta(node: Node<'_>, kind: FileKind, meta: &Meta) -> Result<()> {
    let st = node.stat().context("Reading metadata")?;
    if (st.st_uid, st.st_gid) != (meta.uid, meta.gid) {
        let uid = Some(rustix::fs::Uid::from_raw(meta.uid));
        let gid = Some(rustix::fs::Gid::from_raw(meta.gid));
        match node {
            Node::Fd(fd) => rustix::fs::fchown(fd, uid, gid),
            Node::At(dir, name) => {
                rustix::fs::chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
            }
        }
        .with_context(|| format!("Changing owner to {}:{}", meta.uid, meta.gid))?;
    }
    if kind != FileKind::Symlink {
        let mode = Mode::from_raw_mode(meta.mode);
        match node {
            Node::Fd(fd) => rustix::fs::fchmod(fd, mode),
            // Only device nodes get here, freshly created by us in the target.
            Node::At(dir, name) => rustix::fs::chmodat(dir, name, mode, AtFlags::empty()),
        }
        .with_context(|| format!("Changing mode to {:o}", meta.mode))?;
    }
    sync_xattrs(node, &meta.xattrs)?;
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: meta.mtime,
    };
    match node {
        Node::Fd(fd) => rustix::fs::futimens(fd, &times),
        Node::At(dir, name) => rustix::fs::utimensat(dir, name, &times, AtFlags::SYMLINK_NOFOLLOW),
    }
    .context("Setting modification time")?;
    Ok(())
}

/// Gives the directory `dst` the metadata of the directory `src`.
pub(crate) fn copy_dir_meta(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> Result<()> {
    let st = rustix::fs::fstat(src).context("Reading directory metadata")?;
    let meta = load_meta(Node::Fd(src), &st)?;
    write_meta(Node::Fd(dst), FileKind::Directory, &meta)
}

/// Creates the directory `name` in `dir`, private until its metadata is set.
pub(crate) fn make_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<()> {
    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(DIR_CREATE_MODE))
}

/// What a copy created and what it had to leave out.
#[derive(Debug, Default)]
pub(crate) struct CopyLog {
    /// Kind of every entry created in the destination.
    pub(crate) layout: Layout,
    /// Entries of the source that were not copied, with why.
    pub(crate) skipped: Vec<Skipped>,
}

/// Whether [`copy_at`] descends into directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Depth {
    /// Copy a directory with everything below it.
    Recursive,
    /// The source must not be a directory.
    NonDirOnly,
}

/// Copies the entry `name` of `src_dir` to a new entry `name` in `dst_dir`
/// (which must not exist), with owner, mode, xattrs and mtime. `rel` is its
/// path relative to the tree roots, for messages and the log. Fifos and
/// sockets are skipped; device nodes are skipped when we may not create them.
pub(crate) fn copy_at(
    src_dir: BorrowedFd<'_>,
    dst_dir: BorrowedFd<'_>,
    name: &OsStr,
    rel: &Path,
    depth: Depth,
    log: &mut CopyLog,
) -> Result<()> {
    copy_at_depth(src_dir, dst_dir, name, rel, depth, 0, log)
}

fn copy_at_depth(
    src_dir: BorrowedFd<'_>,
    dst_dir: BorrowedFd<'_>,
    name: &OsStr,
    rel: &Path,
    depth: Depth,
    level: usize,
    log: &mut CopyLog,
) -> Result<()> {
    check_depth(level, rel)?;
    let st = rustix::fs::statat(src_dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .with_context(|| format!("Reading metadata of {}", rel.display()))?;
    let kind = FileKind::from_mode(st.st_mode)
        .with_context(|| format!("Unknown file type {:o} at {}", st.st_mode, rel.display()))?;
    let ctx = || format!("Copying {} {}", kind, rel.display());
    match kind {
        FileKind::Directory => {
            if depth == Depth::NonDirOnly {
                bail!("{} became a directory while merging", rel.display());
            }
            make_dir_at(dst_dir, name).with_context(ctx)?;
            log.layout.insert(rel.to_path_buf(), kind);
            let src = open_dir_at(src_dir, name).with_context(ctx)?;
            let dst = open_dir_at(dst_dir, name).with_context(ctx)?;
            for child in read_names(src.as_fd(), rel)? {
                let child_rel = rel.join(&child);
                copy_at_depth(
                    src.as_fd(),
                    dst.as_fd(),
                    &child,
                    &child_rel,
                    depth,
                    level + 1,
                    log,
                )?;
            }
            copy_dir_meta(src.as_fd(), dst.as_fd()).with_context(ctx)?;
        }
        FileKind::Regular => {
            copy_regular(src_dir, dst_dir, name).with_context(ctx)?;
            log.layout.insert(rel.to_path_buf(), kind);
        }
        FileKind::Symlink => {
            let target = read_link_at(src_dir, name).with_context(ctx)?;
            rustix::fs::symlinkat(&target, dst_dir, name).with_context(ctx)?;
            let meta = load_meta(Node::At(src_dir, name), &st).with_context(ctx)?;
            write_meta(Node::At(dst_dir, name), kind, &meta).with_context(ctx)?;
            log.layout.insert(rel.to_path_buf(), kind);
        }
        FileKind::BlockDevice | FileKind::CharDevice => {
            let file_type = if kind == FileKind::BlockDevice {
                FileType::BlockDevice
            } else {
                FileType::CharacterDevice
            };
            let mode = Mode::from_raw_mode(st.st_mode & PERMISSION_BITS);
            match rustix::fs::mknodat(dst_dir, name, file_type, mode, st.st_rdev) {
                Ok(()) => {}
                Err(Errno::PERM) => {
                    log.skipped.push(Skipped {
                        path: rel.to_path_buf(),
                        reason: format!("creating a {kind} needs root (CAP_MKNOD)"),
                    });
                    return Ok(());
                }
                Err(e) => return Err(e).with_context(ctx),
            }
            let meta = load_meta(Node::At(src_dir, name), &st).with_context(ctx)?;
            write_meta(Node::At(dst_dir, name), kind, &meta).with_context(ctx)?;
            log.layout.insert(rel.to_path_buf(), kind);
        }
        FileKind::Fifo | FileKind::Socket => {
            log.skipped.push(Skipped {
                path: rel.to_path_buf(),
                reason: format!("a {kind} is runtime state, not configuration; not copied"),
            });
        }
    }
    Ok(())
}

fn copy_regular(src_dir: BorrowedFd<'_>, dst_dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    let mut src = open_regular_at(src_dir, name)?;
    let st = rustix::fs::fstat(&src)?;
    let meta = load_meta(Node::Fd(src.as_fd()), &st)?;
    let dst = rustix::fs::openat(
        dst_dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(FILE_CREATE_MODE),
    )
    .context("Creating the copy")?;
    let mut dst = File::from(dst);
    // std uses copy_file_range between two files, so this can reflink.
    std::io::copy(&mut src, &mut dst).context("Copying data")?;
    write_meta(Node::Fd(dst.as_fd()), FileKind::Regular, &meta)
}

/// Removes the entry `name` of `dir` and, for a directory, everything below
/// it. Succeeds when there is nothing to remove.
pub(crate) fn remove_all_at(dir: BorrowedFd<'_>, name: &OsStr, rel: &Path) -> Result<()> {
    remove_all_at_depth(dir, name, rel, 0)
}

fn remove_all_at_depth(dir: BorrowedFd<'_>, name: &OsStr, rel: &Path, level: usize) -> Result<()> {
    check_depth(level, rel)?;
    let ctx = || format!("Removing {}", rel.display());
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e).with_context(ctx),
    };
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        let sub = open_dir_at(dir, name).with_context(ctx)?;
        // A read-only directory copied from an image cannot be emptied by a
        // non-root caller until it is writable again.
        if let Err(e) = rustix::fs::fchmod(&sub, Mode::from_raw_mode(DIR_CREATE_MODE)) {
            tracing::debug!("Making {} writable before removal: {e}", rel.display());
        }
        for child in read_names(sub.as_fd(), rel)? {
            remove_all_at_depth(sub.as_fd(), &child, &rel.join(&child), level + 1)?;
        }
        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).with_context(ctx)?;
    } else {
        rustix::fs::unlinkat(dir, name, AtFlags::empty()).with_context(ctx)?;
    }
    Ok(())
}

/// Whether `dir` has no entries.
pub(crate) fn is_empty_dir(dir: BorrowedFd<'_>) -> Result<bool> {
    Ok(read_names(dir, Path::new(""))?.is_empty())
}
