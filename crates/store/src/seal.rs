//! Sealing: turning an insecure store into a verified one, in place, once the
//! kernel and the filesystem support fs-verity.
//!
//! A store is *insecure* when its `meta.json` has no fs-verity (that is how
//! composefs records the mode: [`Repo::open_path`] requires verity on every
//! object exactly when `meta.json` has it). A store created on a kernel
//! without fs-verity (this project's development machine) starts insecure.
//! Its objects are still named by their fs-verity digests, computed in
//! userspace when they were written, so verity can be enabled on them later
//! and the kernel's measurement must then equal the name.
//!
//! # Flow of [`Store::seal`]
//!
//! 1. `meta.json` already has verity: the store is sealed, nothing to do.
//! 2. Probe fs-verity in the repository directory; without it, fail with
//!    [`SealError::Unsupported`] and change nothing.
//! 3. For every object `objects/XX/YYYY…`: measure its fs-verity digest;
//!    if it has none, enable verity (`FS_IOC_ENABLE_VERITY`) and measure
//!    again. A digest that differs from the name is a corrupt object:
//!    stop with [`SealError::Corrupt`], leaving the store insecure.
//! 4. `syncfs`: every object's verity is durable.
//! 5. Enable verity on `meta.json` and `fsync` it. This is the commit: from
//!    here on every open of the store, the initramfs's included, requires
//!    verity on every object it reads.
//!
//! # Crash safety
//!
//! Enabling verity on one file is atomic in the kernel, and measuring it
//! again is how a re-run knows. A crash before step 5 leaves an insecure
//! store in which some objects have verity — the state a verity-capable host
//! writing into an insecure store produces anyway, which insecure mounts
//! accept. Re-running finishes the job. Step 5 happens only after the
//! barrier of step 4, so a sealed store never has an object without verity.
//!
//! The caller holds the sysroot writer lock, so no object is written while
//! the walk runs. Objects created later in a sealed store get verity from
//! composefs itself (it refuses to write them otherwise).

use std::collections::HashSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use anyhow::{Context, Result};
use composefs::fsverity::{
    EnableVerityError, FsVerityHashValue, MeasureVerityError, enable_verity_with_retry,
    measure_verity_opt,
};
use fn_error_context::context;
use rustix::fs::{Dir, FileType, Mode, OFlags, openat};

use crate::{ObjectId, Store, VerityMode};

/// The file whose fs-verity marks a composefs repository as secure.
const META: &str = "meta.json";

/// Why a store could not be sealed (callers branch on these).
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The kernel or the filesystem cannot enable fs-verity here.
    #[error(
        "fs-verity is not available on the filesystem of {0} (it needs a kernel with fs-verity and, on ext4, `-O verity`)"
    )]
    Unsupported(PathBuf),
    /// An object's content does not match its name.
    #[error(
        "object {path} is corrupt: the kernel measured fs-verity digest {found}; remove it and pull its image again"
    )]
    Corrupt {
        /// The object, relative to the repository.
        path: String,
        /// The digest the kernel measured.
        found: String,
    },
}

/// What [`Store::seal`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SealReport {
    /// The store was already sealed when called: nothing was done.
    pub already_sealed: bool,
    /// Objects on which fs-verity was enabled by this run.
    pub objects_enabled: u64,
    /// Objects that already had fs-verity (written by a verity-capable
    /// kernel, or by an interrupted earlier run).
    pub objects_already: u64,
    /// Entries of `objects/` that are not objects (left-over temporary
    /// files), skipped.
    pub skipped: Vec<String>,
}

/// The kernel operations sealing needs, behind a trait so that the walk
/// and its order can be tested on a kernel without fs-verity.
pub(crate) trait VerityOps {
    /// The fs-verity digest of `fd`, `None` when it has none.
    fn measure(&self, fd: BorrowedFd<'_>) -> Result<Option<ObjectId>, MeasureVerityError>;
    /// Enable fs-verity on `fd` (opened read-only).
    fn enable(&self, fd: BorrowedFd<'_>) -> Result<(), EnableVerityError>;
    /// Whether the filesystem of `dir` supports fs-verity.
    fn supported(&self, dir: &std::path::Path) -> Result<bool>;
}

/// The real kernel.
struct Kernel;

impl VerityOps for Kernel {
    fn measure(&self, fd: BorrowedFd<'_>) -> Result<Option<ObjectId>, MeasureVerityError> {
        measure_verity_opt::<ObjectId>(fd)
    }
    fn enable(&self, fd: BorrowedFd<'_>) -> Result<(), EnableVerityError> {
        match enable_verity_with_retry::<ObjectId>(fd) {
            Err(EnableVerityError::AlreadyEnabled) => Ok(()),
            r => r,
        }
    }
    fn supported(&self, dir: &std::path::Path) -> Result<bool> {
        Ok(crate::verity::probe(dir)? == VerityMode::Verified)
    }
}

impl Store {
    /// Seal an insecure store: enable fs-verity on every object, then mark
    /// the store secure. Idempotent and crash-safe (see [`crate::seal`]).
    ///
    /// Fails with [`SealError::Unsupported`] (changing nothing) where the
    /// kernel or filesystem lacks fs-verity, and with [`SealError::Corrupt`]
    /// at the first object whose content does not match its name. This
    /// `Store` keeps the mode it was opened with; open the store again to
    /// work in secure mode. The caller holds the writer lock.
    pub fn seal(&self) -> Result<SealReport> {
        seal_repo(&Store::repo_path(&self.sysroot), &Kernel)
    }
}

/// [`Store::seal`] on the repository at `repo`, with `ops` for the kernel.
#[context("Sealing store {}", repo.display())]
pub(crate) fn seal_repo(repo: &std::path::Path, ops: &dyn VerityOps) -> Result<SealReport> {
    let repo_fd = rustix::fs::open(
        repo,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("Opening {}", repo.display()))?;
    let meta = openat(
        &repo_fd,
        META,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("Opening {}/{META}", repo.display()))?;
    if ops
        .measure(meta.as_fd())
        .context("Measuring meta.json")?
        .is_some()
    {
        return Ok(SealReport {
            already_sealed: true,
            ..Default::default()
        });
    }
    if !ops.supported(repo)? {
        return Err(SealError::Unsupported(repo.to_owned()).into());
    }
    let mut report = SealReport::default();
    for first in 0..=0xffu8 {
        let dir = format!("objects/{first:02x}");
        let dir_fd = match openat(
            &repo_fd,
            &dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(e).with_context(|| format!("Opening {dir}")),
        };
        seal_dir(ops, &dir_fd, first, &dir, &mut report)?;
    }
    rustix::fs::syncfs(&repo_fd).context("Syncing the store's filesystem")?;
    ops.enable(meta.as_fd())
        .with_context(|| format!("Enabling fs-verity on {META}"))?;
    rustix::fs::fsync(&meta).with_context(|| format!("Syncing {META}"))?;
    rustix::fs::syncfs(&repo_fd).context("Syncing the store's filesystem")?;
    tracing::info!(
        "sealed store {}: verity enabled on {} objects, {} already had it",
        repo.display(),
        report.objects_enabled,
        report.objects_already
    );
    Ok(report)
}

/// Seal every object of one `objects/XX` directory.
fn seal_dir(
    ops: &dyn VerityOps,
    dir_fd: &OwnedFd,
    first: u8,
    dir: &str,
    report: &mut SealReport,
) -> Result<()> {
    let mut names = Vec::new();
    for ent in Dir::read_from(dir_fd).with_context(|| format!("Reading {dir}"))? {
        let ent = ent.with_context(|| format!("Reading {dir}"))?;
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        names.push((name.to_owned(), ent.file_type()));
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let mut seen = HashSet::new();
    for (name, ftype) in names {
        let shown = format!("{dir}/{}", String::from_utf8_lossy(&name));
        let Ok(expected) = ObjectId::from_object_dir_and_basename(first, &name) else {
            report.skipped.push(shown);
            continue;
        };
        if ftype != FileType::RegularFile && ftype != FileType::Unknown {
            report.skipped.push(shown);
            continue;
        }
        let fd = openat(
            dir_fd,
            name.as_slice(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("Opening {shown}"))?;
        let st = rustix::fs::fstat(&fd).with_context(|| format!("Inspecting {shown}"))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            report.skipped.push(shown);
            continue;
        }
        if !seen.insert(st.st_ino) {
            // A hard link of an object already handled in this directory.
            continue;
        }
        let measured = match ops
            .measure(fd.as_fd())
            .with_context(|| format!("Measuring {shown}"))?
        {
            Some(d) => {
                report.objects_already += 1;
                d
            }
            None => {
                ops.enable(fd.as_fd())
                    .with_context(|| format!("Enabling fs-verity on {shown}"))?;
                report.objects_enabled += 1;
                ops.measure(fd.as_fd())
                    .with_context(|| format!("Measuring {shown}"))?
                    .with_context(|| format!("{shown} has no fs-verity after enabling it"))?
            }
        };
        if measured != expected {
            return Err(SealError::Corrupt {
                path: shown,
                found: measured.to_hex(),
            }
            .into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use composefs::fsverity::compute_verity;
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::io::Read;

    /// A kernel whose "fs-verity" is a table from inode to the digest
    /// computed in userspace when enabled; it logs what it was asked.
    #[derive(Default)]
    struct FakeKernel {
        supported: bool,
        enabled: RefCell<HashMap<u64, ObjectId>>,
        log: RefCell<Vec<String>>,
    }

    impl FakeKernel {
        fn ino(fd: BorrowedFd<'_>) -> u64 {
            rustix::fs::fstat(fd).unwrap().st_ino
        }
    }

    impl VerityOps for FakeKernel {
        fn measure(&self, fd: BorrowedFd<'_>) -> Result<Option<ObjectId>, MeasureVerityError> {
            Ok(self.enabled.borrow().get(&Self::ino(fd)).cloned())
        }
        fn enable(&self, fd: BorrowedFd<'_>) -> Result<(), EnableVerityError> {
            let mut data = Vec::new();
            let mut f = std::fs::File::from(fd.try_clone_to_owned()?);
            std::io::Seek::rewind(&mut f)?;
            f.read_to_end(&mut data)?;
            let size = data.len();
            self.log.borrow_mut().push(format!("enable {size}"));
            self.enabled
                .borrow_mut()
                .insert(Self::ino(fd), compute_verity(&data));
            Ok(())
        }
        fn supported(&self, _dir: &std::path::Path) -> Result<bool> {
            Ok(self.supported)
        }
    }

    /// An insecure store with `objects` written by composefs.
    fn store_with(objects: &[&[u8]]) -> (tempfile::TempDir, Vec<ObjectId>) {
        let td = tempfile::tempdir().unwrap();
        let store = Store::ensure(td.path()).unwrap();
        assert_eq!(store.verity_mode(), VerityMode::Insecure);
        let ids = objects
            .iter()
            .map(|o| store.repo().ensure_object(o).unwrap())
            .collect();
        (td, ids)
    }

    fn repo(td: &tempfile::TempDir) -> PathBuf {
        Store::repo_path(td.path())
    }

    #[test]
    fn unsupported_changes_nothing() {
        let (td, _) = store_with(&[b"a"]);
        let k = FakeKernel::default();
        let e = seal_repo(&repo(&td), &k).unwrap_err();
        assert!(
            matches!(e.downcast_ref(), Some(SealError::Unsupported(_))),
            "{e:#}"
        );
        assert!(k.enabled.borrow().is_empty());
    }

    #[test]
    fn seals_every_object_then_meta_and_is_idempotent() {
        let big = vec![7u8; 3 * 4096 + 5];
        let (td, ids) = store_with(&[b"one", b"two", &big]);
        let k = FakeKernel {
            supported: true,
            ..Default::default()
        };
        // One object already has verity (a verity-capable writer, or an
        // interrupted run): counted, not enabled again.
        let first = repo(&td).join("objects").join(ids[0].to_object_pathname());
        let f = std::fs::File::open(&first).unwrap();
        k.enable(f.as_fd()).unwrap();
        k.log.borrow_mut().clear();

        let r = seal_repo(&repo(&td), &k).unwrap();
        assert_eq!((r.objects_enabled, r.objects_already), (2, 1), "{r:?}");
        assert!(!r.already_sealed && r.skipped.is_empty());
        // meta.json is the last file enabled: the commit.
        let meta_size = std::fs::metadata(repo(&td).join(META)).unwrap().len();
        assert_eq!(
            k.log.borrow().last().unwrap(),
            &format!("enable {meta_size}")
        );
        assert_eq!(k.log.borrow().len(), 3);

        let again = seal_repo(&repo(&td), &k).unwrap();
        assert!(again.already_sealed, "{again:?}");
        assert_eq!(k.log.borrow().len(), 3, "a second run enables nothing");
    }

    #[test]
    fn corrupt_object_stops_before_the_commit() {
        let (td, ids) = store_with(&[b"good", b"will be damaged"]);
        let damaged = repo(&td).join("objects").join(ids[1].to_object_pathname());
        std::fs::write(&damaged, b"tampered").unwrap();
        std::fs::write(
            repo(&td)
                .join("objects")
                .join(&ids[0].to_object_pathname()[..2])
                .join(".tmpXYZ"),
            b"left over",
        )
        .unwrap();
        let k = FakeKernel {
            supported: true,
            ..Default::default()
        };
        let e = seal_repo(&repo(&td), &k).unwrap_err();
        match e.downcast_ref::<SealError>() {
            Some(SealError::Corrupt { path, found }) => {
                assert_eq!(path, &format!("objects/{}", ids[1].to_object_pathname()));
                assert_eq!(found, &compute_verity::<ObjectId>(b"tampered").to_hex());
            }
            other => panic!("expected Corrupt, got {other:?}: {e:#}"),
        }
        let meta = std::fs::File::open(repo(&td).join(META)).unwrap();
        assert_eq!(
            k.measure(meta.as_fd()).unwrap(),
            None,
            "store stays insecure"
        );

        // Repaired (the object re-written correctly): a re-run finishes.
        // (Its verity goes with it: the fake forgets the inode, which the
        // filesystem may reuse.)
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&damaged).unwrap());
        k.enabled.borrow_mut().remove(&ino);
        std::fs::remove_file(&damaged).unwrap();
        let store = Store::open(td.path()).unwrap().unwrap();
        store.repo().ensure_object(b"will be damaged").unwrap();
        let r = seal_repo(&repo(&td), &k).unwrap();
        assert_eq!(r.skipped.len(), 1, "{r:?}");
        assert!(r.skipped[0].ends_with("/.tmpXYZ"), "{r:?}");
        assert!(k.measure(meta.as_fd()).unwrap().is_some());
    }
}
