//! Reading an image's file tree: a mounted composefs image (or any directory
//! for tests), its kernel and its os-release.
//!
//! Every path is resolved with `openat2(RESOLVE_IN_ROOT)`, so an absolute or
//! `..` symlink in the image stays inside the image.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result};
use bootc_store::{OciDigest, Store, StoredImage};
use fn_error_context::context;
use rustix::fs::{Mode, OFlags, ResolveFlags};

/// Where images keep their kernels: `usr/lib/modules/<kver>/{vmlinuz,initramfs.img}`.
pub const MODULES_DIR: &str = "usr/lib/modules";

/// A directory holding an image's root filesystem, opened once.
#[derive(Debug)]
pub struct ImageTree {
    root: PathBuf,
    fd: OwnedFd,
    name: String,
}

impl ImageTree {
    /// Open the tree at `root`; `name` names the image in error messages.
    #[context("Opening image tree {}", root.display())]
    pub fn open(root: &Path, name: &str) -> Result<Self> {
        let fd = crate::copy::open_dir(rustix::fs::CWD, root)?;
        Ok(Self {
            root: root.to_owned(),
            fd,
            name: name.to_owned(),
        })
    }

    /// The directory this tree was opened from.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The image's name, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn openat_in_root(&self, rel: &str, flags: OFlags) -> rustix::io::Result<OwnedFd> {
        rustix::fs::openat2(
            &self.fd,
            rel,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    }

    /// Open the regular file `rel` (relative to the image root) for reading.
    pub fn open_file(&self, rel: &str) -> Result<File> {
        let fd = self
            .openat_in_root(rel, OFlags::RDONLY)
            .with_context(|| format!("Opening /{rel} in image {}", self.name))?;
        let f = File::from(fd);
        let md = f.metadata()?;
        anyhow::ensure!(
            md.is_file(),
            "/{rel} in image {} is not a regular file",
            self.name
        );
        Ok(f)
    }

    /// The contents of `rel`, or `None` when it does not exist.
    pub fn read_optional(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        match self.openat_in_root(rel, OFlags::RDONLY) {
            Ok(fd) => {
                let mut buf = Vec::new();
                File::from(fd)
                    .read_to_end(&mut buf)
                    .with_context(|| format!("Reading /{rel} in image {}", self.name))?;
                Ok(Some(buf))
            }
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("Opening /{rel} in image {}", self.name)),
        }
    }

    /// Whether `rel` exists as a regular file.
    pub fn is_file(&self, rel: &str) -> Result<bool> {
        match self.openat_in_root(rel, OFlags::PATH) {
            Ok(fd) => Ok(rustix::fs::fstat(&fd)
                .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_file())
                .unwrap_or(false)),
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("Looking up /{rel} in image {}", self.name)),
        }
    }

    /// The names in directory `rel`, sorted; empty when it does not exist.
    pub fn list_dir(&self, rel: &str) -> Result<Vec<String>> {
        let fd = match self.openat_in_root(rel, OFlags::RDONLY | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(Vec::new()),
            Err(e) => {
                return Err(e).with_context(|| format!("Opening /{rel} in image {}", self.name));
            }
        };
        let mut out = Vec::new();
        let dir = rustix::fs::Dir::read_from(fd)
            .with_context(|| format!("Reading /{rel} in image {}", self.name))?;
        for entry in dir {
            let entry = entry.with_context(|| format!("Reading /{rel} in image {}", self.name))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "." && name != ".." {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Open directory `rel` (for copying a subtree such as `/etc`); `None`
    /// when it does not exist.
    pub fn open_dir(&self, rel: &str) -> Result<Option<OwnedFd>> {
        match self.openat_in_root(rel, OFlags::RDONLY | OFlags::DIRECTORY) {
            Ok(fd) => Ok(Some(fd)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("Opening /{rel} in image {}", self.name)),
        }
    }

    /// The image's kernel: exactly one `usr/lib/modules/<kver>/vmlinuz`,
    /// with an `initramfs.img` beside it.
    #[context("Finding the kernel of image {}", self.name)]
    pub fn find_kernel(&self) -> Result<KernelInfo> {
        let mut found = Vec::new();
        for kver in self.list_dir(MODULES_DIR)? {
            let vmlinuz = format!("{MODULES_DIR}/{kver}/vmlinuz");
            if self.is_file(&vmlinuz)? {
                found.push(kver);
            }
        }
        let kver = match found.as_slice() {
            [] => anyhow::bail!(
                "image {} has no kernel: no /{MODULES_DIR}/<version>/vmlinuz",
                self.name
            ),
            [one] => one.clone(),
            many => anyhow::bail!(
                "image {} has several kernels in /{MODULES_DIR} ({}); exactly one is supported",
                self.name,
                many.join(", ")
            ),
        };
        let initramfs = format!("{MODULES_DIR}/{kver}/initramfs.img");
        anyhow::ensure!(
            self.is_file(&initramfs)?,
            "image {} has no initramfs: /{initramfs} is missing",
            self.name
        );
        Ok(KernelInfo {
            vmlinuz: format!("{MODULES_DIR}/{kver}/vmlinuz"),
            initramfs,
            version: kver,
        })
    }

    /// The image's os-release (`usr/lib/os-release`, else `etc/os-release`),
    /// empty when it has none.
    #[context("Reading os-release of image {}", self.name)]
    pub fn os_release(&self) -> Result<OsRelease> {
        for p in ["etc/os-release", "usr/lib/os-release"] {
            if let Some(buf) = self.read_optional(p)? {
                return Ok(OsRelease::parse(&String::from_utf8_lossy(&buf)));
            }
        }
        Ok(OsRelease::default())
    }
}

/// An image's kernel, as paths relative to the image root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelInfo {
    /// The kernel version (the directory name under `usr/lib/modules`).
    pub version: String,
    /// `usr/lib/modules/<kver>/vmlinuz`.
    pub vmlinuz: String,
    /// `usr/lib/modules/<kver>/initramfs.img`.
    pub initramfs: String,
}

/// The key/value pairs of an os-release file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsRelease(pub Vec<(String, String)>);

impl OsRelease {
    /// Parse os-release syntax: `KEY=value` lines with shell-like quoting;
    /// comments and malformed lines are skipped.
    pub fn parse(s: &str) -> Self {
        let mut out = Vec::new();
        for line in s.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            out.push((k.to_owned(), unquote(v)));
        }
        Self(out)
    }

    /// The value of `key`, the last one when repeated.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `PRETTY_NAME`, else `NAME`, else "Linux" (the os-release default).
    pub fn pretty_name(&self) -> &str {
        self.get("PRETTY_NAME")
            .or_else(|| self.get("NAME"))
            .unwrap_or("Linux")
    }
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    let bytes = v.as_bytes();
    if bytes.len() >= 2 && bytes[0] == b'\'' && bytes[bytes.len() - 1] == b'\'' {
        return v[1..v.len() - 1].to_owned();
    }
    let inner = if bytes.len() >= 2 && bytes[0] == b'"' && bytes[bytes.len() - 1] == b'"' {
        &v[1..v.len() - 1]
    } else {
        v
    };
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A stored image's composefs mounted read-only as a detached mount: held
/// by a file descriptor of this process and attached to no directory, so a
/// killed process leaks no mount (the kernel drops it with the last
/// descriptor). The tree's [`ImageTree::path`] is `/proc/<pid>/fd/<fd>`,
/// which this process and its children (as root) can walk.
#[derive(Debug)]
pub struct ImageMount {
    tree: Option<ImageTree>,
    _mount: OwnedFd,
}

/// The prefix of the temporary mount points of older versions, which
/// attached image mounts to `$TMPDIR/bootc-image-*`.
const LEGACY_MOUNT_PREFIX: &str = "bootc-image-";

impl ImageMount {
    /// Mount `image` from `store`.
    #[context("Mounting image {}", image.image)]
    pub fn new(store: &Store, image: &StoredImage) -> Result<Self> {
        static CLEANED: std::sync::Once = std::sync::Once::new();
        CLEANED.call_once(|| {
            if let Err(e) = remove_legacy_mounts(&std::env::temp_dir()) {
                tracing::warn!("{e:#}");
            }
        });
        let digest = OciDigest::from_str(&image.manifest_digest)
            .with_context(|| format!("Parsing digest {}", image.manifest_digest))?;
        let mount = store.fsmount_image(&digest)?;
        let root = PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            std::os::fd::AsRawFd::as_raw_fd(&mount)
        ));
        // The mount's root, opened through the descriptor (not the magic link).
        let fd = rustix::fs::openat(
            &mount,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("Opening the root of image {}", image.image))?;
        let tree = ImageTree {
            root,
            fd,
            name: image.image.clone(),
        };
        bootc_utils::crashpoint::point("image.mounted");
        Ok(Self {
            tree: Some(tree),
            _mount: mount,
        })
    }
}

impl std::ops::Deref for ImageMount {
    type Target = ImageTree;
    fn deref(&self) -> &ImageTree {
        self.tree.as_ref().expect("present until drop")
    }
}

/// The mount points of `/proc/self/mountinfo` text that older versions
/// left: `<tmp>/bootc-image-*` directly under `tmp`.
pub fn legacy_mounts(mountinfo: &str, tmp: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(bootc_utils::mountinfo::unescape(p)))
        .filter(|p| {
            p.parent() == Some(tmp)
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(LEGACY_MOUNT_PREFIX))
        })
        .collect();
    out.dedup();
    out
}

/// Unmount (lazily) and remove the image mount points older versions left
/// in `tmp` when they were killed; they keep the filesystem of the store
/// busy. Returns how many were removed.
#[context("Removing image mounts left in {}", tmp.display())]
pub fn remove_legacy_mounts(tmp: &Path) -> Result<usize> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("Reading mountinfo")?;
    let found = legacy_mounts(&info, tmp);
    let mut n = 0;
    for p in &found {
        // Stacked mounts on one point: unmount until none is left.
        while rustix::mount::unmount(p, rustix::mount::UnmountFlags::DETACH).is_ok() {
            n += 1;
        }
        if let Err(e) = std::fs::remove_dir(p) {
            tracing::debug!("removing {}: {e}", p.display());
        }
    }
    if n > 0 {
        tracing::warn!(
            "unmounted {n} image mount(s) left in {} by an interrupted bootc",
            tmp.display()
        );
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree_with(files: &[(&str, &str)]) -> (tempfile::TempDir, ImageTree) {
        let td = tempfile::tempdir().unwrap();
        for (p, c) in files {
            let full = td.path().join(p);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, c).unwrap();
        }
        let t = ImageTree::open(td.path(), "example:latest").unwrap();
        (td, t)
    }

    #[test]
    fn finds_the_one_kernel() {
        let (_td, t) = tree_with(&[
            ("usr/lib/modules/6.12.0-1-amd64/vmlinuz", "k"),
            ("usr/lib/modules/6.12.0-1-amd64/initramfs.img", "i"),
            ("usr/lib/modules/extra/modules.dep", ""),
        ]);
        let k = t.find_kernel().unwrap();
        assert_eq!(k.version, "6.12.0-1-amd64");
        assert_eq!(k.vmlinuz, "usr/lib/modules/6.12.0-1-amd64/vmlinuz");
        assert_eq!(k.initramfs, "usr/lib/modules/6.12.0-1-amd64/initramfs.img");
    }

    #[test]
    fn kernel_errors_name_image_and_path() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[],
                "image example:latest has no kernel: no /usr/lib/modules/<version>/vmlinuz",
            ),
            (
                &[("usr/lib/modules/6.1/vmlinuz", "k")],
                "image example:latest has no initramfs: /usr/lib/modules/6.1/initramfs.img is missing",
            ),
            (
                &[
                    ("usr/lib/modules/6.1/vmlinuz", "k"),
                    ("usr/lib/modules/6.2/vmlinuz", "k"),
                ],
                "image example:latest has several kernels in /usr/lib/modules (6.1, 6.2); exactly one is supported",
            ),
        ];
        for (files, expect) in cases {
            let (_td, t) = tree_with(files);
            let e = t.find_kernel().unwrap_err();
            assert_eq!(e.root_cause().to_string(), *expect);
        }
    }

    #[test]
    fn symlinks_stay_inside_the_tree() {
        let (td, t) = tree_with(&[("usr/lib/os-release", "PRETTY_NAME=\"Inside\"\n")]);
        std::fs::create_dir_all(td.path().join("etc")).unwrap();
        // An absolute link resolves against the image root, not the host.
        std::os::unix::fs::symlink("/usr/lib/os-release", td.path().join("etc/os-release"))
            .unwrap();
        assert_eq!(t.os_release().unwrap().pretty_name(), "Inside");
    }

    #[test]
    fn finds_legacy_mounts() {
        let info = "36 25 0:32 / / rw - ext4 /dev/vda rw\n\
                    90 36 0:50 / /tmp/bootc-image-Ab12 ro - overlay composefs:x ro\n\
                    91 36 0:51 / /tmp/bootc-image-Ab12 ro - overlay composefs:x ro\n\
                    92 36 0:52 / /tmp/x/bootc-image-no ro - overlay composefs:x ro\n\
                    93 36 0:53 / /tmp/bootc-image-sp\\040ace ro - overlay composefs:x ro\n";
        assert_eq!(
            legacy_mounts(info, Path::new("/tmp")),
            [
                PathBuf::from("/tmp/bootc-image-Ab12"),
                PathBuf::from("/tmp/bootc-image-sp ace")
            ]
        );
    }

    #[test]
    fn parses_os_release() {
        let cases = [
            (
                "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=x",
                "Debian GNU/Linux 12 (bookworm)",
            ),
            ("NAME='Single quoted'", "Single quoted"),
            ("# comment\nNAME=Plain", "Plain"),
            ("NAME=\"with \\\"escape\\\"\"", "with \"escape\""),
            ("garbage line\n", "Linux"),
        ];
        for (input, pretty) in cases {
            assert_eq!(OsRelease::parse(input).pretty_name(), pretty, "{input}");
        }
    }
}
