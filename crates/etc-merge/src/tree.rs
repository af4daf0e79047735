//! Snapshots of a directory tree: what each path is, with the metadata the
//! merge compares. Loading a snapshot is the only I/O here.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cap_std_ext::cap_std::fs::Dir;
use fn_error_context::context;
use rustix::fs::{AtFlags, FileType, Stat};
use sha2::{Digest, Sha256};

use crate::fs::{self, Node};

/// Extended attributes of one entry, by name. Only the namespaces the merge
/// carries are present (see [`crate`] docs, "What is compared").
pub type Xattrs = BTreeMap<OsString, Vec<u8>>;

/// What kind of entry the target holds at each path, relative to its root.
pub type Layout = BTreeMap<PathBuf, FileKind>;

/// The type of a directory entry, without its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// A directory.
    Directory,
    /// A regular file.
    Regular,
    /// A symbolic link.
    Symlink,
    /// A block device node.
    BlockDevice,
    /// A character device node.
    CharDevice,
    /// A named pipe.
    Fifo,
    /// A unix domain socket.
    Socket,
}

impl FileKind {
    /// The kind encoded in a `st_mode`, or `None` for a type Linux does not define.
    pub fn from_mode(mode: u32) -> Option<Self> {
        Some(match FileType::from_raw_mode(mode) {
            FileType::Directory => Self::Directory,
            FileType::RegularFile => Self::Regular,
            FileType::Symlink => Self::Symlink,
            FileType::BlockDevice => Self::BlockDevice,
            FileType::CharacterDevice => Self::CharDevice,
            FileType::Fifo => Self::Fifo,
            FileType::Socket => Self::Socket,
            FileType::Unknown => return None,
        })
    }

    /// Whether this is a directory.
    pub fn is_dir(self) -> bool {
        self == Self::Directory
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Directory => "directory",
            Self::Regular => "regular file",
            Self::Symlink => "symlink",
            Self::BlockDevice => "block device",
            Self::CharDevice => "character device",
            Self::Fifo => "fifo",
            Self::Socket => "socket",
        })
    }
}

/// The content of an entry: what makes two entries of the same kind differ
/// apart from their metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A directory; its children are separate entries.
    Directory,
    /// A regular file, identified by the SHA-256 of its data.
    Regular {
        /// SHA-256 digest of the file's data.
        sha256: [u8; 32],
    },
    /// A symbolic link, never followed.
    Symlink {
        /// The link's target, byte for byte as stored.
        target: PathBuf,
    },
    /// A block device node.
    BlockDevice {
        /// The device number.
        rdev: u64,
    },
    /// A character device node.
    CharDevice {
        /// The device number.
        rdev: u64,
    },
    /// A named pipe.
    Fifo,
    /// A unix domain socket.
    Socket,
}

impl Content {
    /// The kind of entry holding this content.
    pub fn kind(&self) -> FileKind {
        match self {
            Self::Directory => FileKind::Directory,
            Self::Regular { .. } => FileKind::Regular,
            Self::Symlink { .. } => FileKind::Symlink,
            Self::BlockDevice { .. } => FileKind::BlockDevice,
            Self::CharDevice { .. } => FileKind::CharDevice,
            Self::Fifo => FileKind::Fifo,
            Self::Socket => FileKind::Socket,
        }
    }
}

/// One aspect in which two entries at the same path differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Aspect {
    /// The entry changed type (for example a file became a directory). When
    /// the kind differs no other aspect is listed.
    Kind,
    /// File data, symlink target or device number.
    Content,
    /// Permission bits, including setuid, setgid and sticky.
    Mode,
    /// Owning user or group.
    Owner,
    /// Extended attributes (user, security, POSIX ACL).
    Xattrs,
}

/// One entry of a snapshot. Timestamps are not part of it: the merge ignores
/// them when comparing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What the entry holds.
    pub content: Content,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owning user id.
    pub uid: u32,
    /// Owning group id.
    pub gid: u32,
    /// Extended attributes in the carried namespaces.
    pub xattrs: Xattrs,
}

impl Entry {
    /// The kind of this entry.
    pub fn kind(&self) -> FileKind {
        self.content.kind()
    }

    /// The aspects in which `other` differs from `self`; empty when equal.
    /// The mode of symlinks is not compared (Linux fixes it at 0777).
    pub fn differences(&self, other: &Entry) -> Vec<Aspect> {
        if self.kind() != other.kind() {
            return vec![Aspect::Kind];
        }
        let mut aspects = Vec::new();
        if self.content != other.content {
            aspects.push(Aspect::Content);
        }
        if self.kind() != FileKind::Symlink && self.mode != other.mode {
            aspects.push(Aspect::Mode);
        }
        if (self.uid, self.gid) != (other.uid, other.gid) {
            aspects.push(Aspect::Owner);
        }
        if self.xattrs != other.xattrs {
            aspects.push(Aspect::Xattrs);
        }
        aspects
    }
}

/// A snapshot of a directory tree: every entry below the root, keyed by its
/// path relative to the root. Paths sort component by component, so a
/// directory comes right before its descendants. The root itself is not an
/// entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    entries: BTreeMap<PathBuf, Entry>,
}

impl Tree {
    /// Builds a tree from entries already in memory (for tests and callers
    /// that have their own source).
    pub fn from_entries(entries: impl IntoIterator<Item = (PathBuf, Entry)>) -> Self {
        Self {
            entries: entries.into_iter().collect(),
        }
    }

    /// Reads the whole tree below `dir`. Symlinks are recorded, never
    /// followed; regular files are hashed.
    #[context("Reading a directory tree")]
    pub fn load(dir: &Dir) -> Result<Self> {
        let mut entries = BTreeMap::new();
        load_dir(dir.as_fd(), Path::new(""), 0, &mut entries)?;
        Ok(Self { entries })
    }

    /// The entry at `path`, if any.
    pub fn get(&self, path: &Path) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// All entries in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&Path, &Entry)> {
        self.entries.iter().map(|(p, e)| (p.as_path(), e))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the tree has no entries below its root.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The kind of every entry.
    pub fn layout(&self) -> Layout {
        self.entries
            .iter()
            .map(|(p, e)| (p.clone(), e.kind()))
            .collect()
    }
}

fn load_dir(
    dir: BorrowedFd<'_>,
    rel: &Path,
    depth: usize,
    out: &mut BTreeMap<PathBuf, Entry>,
) -> Result<()> {
    fs::check_depth(depth, rel)?;
    for name in fs::read_names(dir, rel)? {
        let path = rel.join(&name);
        let st = rustix::fs::statat(dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
            .with_context(|| format!("Reading metadata of {}", path.display()))?;
        let entry = load_entry(dir, &name, &path, &st)?;
        let is_dir = entry.kind().is_dir();
        out.insert(path.clone(), entry);
        if is_dir {
            let sub = fs::open_dir_at(dir, &name)
                .with_context(|| format!("Opening directory {}", path.display()))?;
            load_dir(sub.as_fd(), &path, depth + 1, out)?;
        }
    }
    Ok(())
}

fn load_entry(dir: BorrowedFd<'_>, name: &OsStr, path: &Path, st: &Stat) -> Result<Entry> {
    let kind = FileKind::from_mode(st.st_mode)
        .with_context(|| format!("Unknown file type {:o} at {}", st.st_mode, path.display()))?;
    let content = match kind {
        FileKind::Directory => Content::Directory,
        FileKind::Regular => Content::Regular {
            sha256: hash_file(dir, name, path)?,
        },
        FileKind::Symlink => Content::Symlink {
            target: fs::read_link_at(dir, name)
                .with_context(|| format!("Reading symlink {}", path.display()))?,
        },
        FileKind::BlockDevice => Content::BlockDevice { rdev: st.st_rdev },
        FileKind::CharDevice => Content::CharDevice { rdev: st.st_rdev },
        FileKind::Fifo => Content::Fifo,
        FileKind::Socket => Content::Socket,
    };
    let xattrs = fs::load_xattrs(Node::At(dir, name))
        .with_context(|| format!("Reading extended attributes of {}", path.display()))?;
    Ok(Entry {
        content,
        mode: st.st_mode & fs::PERMISSION_BITS,
        uid: st.st_uid,
        gid: st.st_gid,
        xattrs,
    })
}

fn hash_file(dir: BorrowedFd<'_>, name: &OsStr, path: &Path) -> Result<[u8; 32]> {
    let mut file =
        fs::open_regular_at(dir, name).with_context(|| format!("Opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("Reading {}", path.display()))?;
    Ok(hasher.finalize().into())
}
