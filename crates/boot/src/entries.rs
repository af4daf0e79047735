//! Writing boot entries and boot files to a mounted boot directory (for GRUB:
//! `<sysroot>/boot` on the root filesystem).

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::Path;

use anyhow::{Context, Result};
use fn_error_context::context;
use rustix::fs::{Mode, OFlags, RenameFlags};

use crate::bls::{BOOT_FILES_DIR, BlsEntry, INITRAMFS, VMLINUZ, is_valid_boot_dir_name, parse_bls};

/// The entries directory, relative to the boot directory.
pub const ENTRIES_DIR: &str = "loader/entries";

/// Where a new set of entries is built before it is swapped in.
const STAGED_NAME: &str = "entries.staged";

/// Replace the set of boot entries in `boot_dir/loader/entries` with
/// `entries` (file name, entry).
///
/// Crash safety: the new set is written to `loader/entries.staged`, the
/// filesystem is synced (`syncfs`), then `renameat2(RENAME_EXCHANGE)` swaps
/// it with `loader/entries` in one step and `loader` is fsynced. A crash
/// leaves either the old or the new set in `loader/entries`, never a mix;
/// a leftover `entries.staged` is removed by the next call.
#[context("Writing boot entries in {}", boot_dir.display())]
pub fn write_entries(boot_dir: &Path, entries: &[(String, BlsEntry)]) -> Result<()> {
    for (name, _) in entries {
        check_entry_name(name)?;
    }
    let loader_path = boot_dir.join("loader");
    std::fs::create_dir_all(&loader_path)
        .with_context(|| format!("Creating {}", loader_path.display()))?;
    let loader = open_dir(&loader_path)?;
    let staged = loader_path.join(STAGED_NAME);
    if staged.symlink_metadata().is_ok() {
        std::fs::remove_dir_all(&staged)
            .with_context(|| format!("Removing stale {}", staged.display()))?;
    }
    rustix::fs::mkdirat(&loader, STAGED_NAME, Mode::from_raw_mode(0o755))
        .with_context(|| format!("Creating {}", staged.display()))?;
    let staged_fd = open_dir(&staged)?;
    for (name, entry) in entries {
        write_new_file(&staged_fd, name, entry.render().as_bytes(), 0o644)
            .with_context(|| format!("Writing {}/{name}", staged.display()))?;
    }
    rustix::fs::syncfs(&loader).context("Syncing the boot filesystem")?;
    let swapped = match rustix::fs::renameat_with(
        &loader,
        STAGED_NAME,
        &loader,
        "entries",
        RenameFlags::EXCHANGE,
    ) {
        Ok(()) => true,
        Err(rustix::io::Errno::NOENT) => {
            rustix::fs::renameat(&loader, STAGED_NAME, &loader, "entries")
                .context("Renaming entries.staged to entries")?;
            false
        }
        Err(e) => return Err(e).context("Exchanging entries.staged with entries"),
    };
    rustix::fs::fsync(&loader).context("Syncing loader/")?;
    if swapped {
        // Now the previous set.
        std::fs::remove_dir_all(&staged)
            .with_context(|| format!("Removing the previous entries {}", staged.display()))?;
    }
    Ok(())
}

/// The entries in `boot_dir/loader/entries`, sorted by file name; files
/// that are not entries are skipped with a warning.
#[context("Reading boot entries in {}", boot_dir.display())]
pub fn read_entries(boot_dir: &Path) -> Result<Vec<(String, BlsEntry)>> {
    let dir = boot_dir.join(ENTRIES_DIR);
    let Some(rd) = read_dir_if_exists(&dir)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.with_context(|| format!("Reading {}", dir.display()))?;
        let Some(name) = ent.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !name.ends_with(".conf") || !ent.file_type()?.is_file() {
            continue;
        }
        let p = ent.path();
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("Reading {}", p.display()))?;
        match parse_bls(&text) {
            Ok(e) => out.push((name, e)),
            Err(e) => tracing::warn!("skipping {}: {e:#}", p.display()),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Copy a kernel and initramfs to `boot_dir/bootc/<NAME>/` (NAME: their
/// boot digest, see [`BOOT_FILES_DIR`]).
///
/// Built in `bootc/.tmp-<NAME>` and renamed into place after a `syncfs`, so
/// `bootc/<NAME>` is complete whenever it exists; an existing one is kept
/// (the name is the digest of the content, so deployments with the same
/// kernel share one copy).
#[context("Copying the kernel to {}/{BOOT_FILES_DIR}/{name}", boot_dir.display())]
pub fn install_boot_files(
    boot_dir: &Path,
    name: &str,
    vmlinuz: &mut File,
    initramfs: &mut File,
) -> Result<()> {
    anyhow::ensure!(
        is_valid_boot_dir_name(name),
        "invalid boot directory name {name:?}"
    );
    let parent = boot_dir.join(BOOT_FILES_DIR);
    std::fs::create_dir_all(&parent).with_context(|| format!("Creating {}", parent.display()))?;
    let final_dir = parent.join(name);
    if final_dir.is_dir() {
        return Ok(());
    }
    let tmp = parent.join(format!(".tmp-{name}"));
    if tmp.symlink_metadata().is_ok() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("Removing stale {}", tmp.display()))?;
    }
    std::fs::create_dir(&tmp).with_context(|| format!("Creating {}", tmp.display()))?;
    let tmp_fd = open_dir(&tmp)?;
    for (file, src) in [(VMLINUZ, vmlinuz), (INITRAMFS, initramfs)] {
        let fd = rustix::fs::openat(
            &tmp_fd,
            file,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .with_context(|| format!("Creating {}/{file}", tmp.display()))?;
        let mut f = File::from(fd);
        std::io::copy(src, &mut f).with_context(|| format!("Writing {}/{file}", tmp.display()))?;
    }
    rustix::fs::syncfs(&tmp_fd).context("Syncing the boot filesystem")?;
    std::fs::rename(&tmp, &final_dir)
        .with_context(|| format!("Renaming {} to {}", tmp.display(), final_dir.display()))?;
    rustix::fs::fsync(open_dir(&parent)?)
        .with_context(|| format!("Syncing {}", parent.display()))?;
    Ok(())
}

/// Remove `boot_dir/bootc/<NAME>/` (renamed aside first, so a crash never
/// leaves a half-deleted kernel directory under its real name). The caller
/// checks that no deployment uses it any more.
#[context("Removing {}/{BOOT_FILES_DIR}/{name}", boot_dir.display())]
pub fn remove_boot_files(boot_dir: &Path, name: &str) -> Result<()> {
    anyhow::ensure!(
        is_valid_boot_dir_name(name),
        "invalid boot directory name {name:?}"
    );
    let parent = boot_dir.join(BOOT_FILES_DIR);
    let dir = parent.join(name);
    if dir.symlink_metadata().is_err() {
        return Ok(());
    }
    let tmp = parent.join(format!(".tmp-rm-{name}"));
    if tmp.symlink_metadata().is_ok() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("Removing stale {}", tmp.display()))?;
    }
    std::fs::rename(&dir, &tmp)
        .with_context(|| format!("Renaming {} to {}", dir.display(), tmp.display()))?;
    std::fs::remove_dir_all(&tmp).with_context(|| format!("Removing {}", tmp.display()))
}

/// The names of the boot directories in `boot_dir/bootc/` (temporary
/// `.`-prefixed ones excluded), sorted; empty when there are none.
#[context("Listing {}/{BOOT_FILES_DIR}", boot_dir.display())]
pub fn list_boot_dirs(boot_dir: &Path) -> Result<Vec<String>> {
    let dir = boot_dir.join(BOOT_FILES_DIR);
    let Some(rd) = read_dir_if_exists(&dir)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.with_context(|| format!("Reading {}", dir.display()))?;
        if let Some(name) = ent.file_name().to_str()
            && is_valid_boot_dir_name(name)
            && ent.file_type()?.is_dir()
        {
            out.push(name.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// The entries in boot order: the default (highest `version`) first.
pub fn boot_order(mut entries: Vec<(String, BlsEntry)>) -> Vec<(String, BlsEntry)> {
    crate::bls::sort_for_menu(&mut entries);
    entries
}

/// Entries for `order` (default first): each keeps its text but gets the
/// version and file name of its place, the last being 1.
pub fn renumber(order: Vec<BlsEntry>, stateroot: &str) -> Vec<(String, BlsEntry)> {
    let n = order.len() as u64;
    order
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            let v = n - i as u64;
            e.version = Some(v.to_string());
            (crate::bls::entry_file_name(stateroot, v), e)
        })
        .collect()
}

/// Entry file names must be plain `*.conf` names.
pub(crate) fn check_entry_name(name: &str) -> Result<()> {
    anyhow::ensure!(
        name.ends_with(".conf")
            && name.len() > 5
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+' | b'@')),
        "invalid boot entry file name {name:?}"
    );
    Ok(())
}

/// The entries of directory `dir`, `None` when it does not exist.
fn read_dir_if_exists(dir: &Path) -> Result<Option<std::fs::ReadDir>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => Ok(Some(rd)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("Reading {}", dir.display())),
    }
}

pub(crate) fn open_dir(p: &Path) -> Result<OwnedFd> {
    rustix::fs::openat(
        rustix::fs::CWD,
        p,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("Opening {}", p.display()))
}

fn write_new_file(dir: &OwnedFd, name: &str, contents: &[u8], mode: u32) -> Result<()> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?;
    File::from(fd).write_all(contents)?;
    Ok(())
}

/// Write `contents` to `dir/name` atomically: temporary file, fsync, rename,
/// fsync of the directory.
#[context("Writing {}/{name}", dir.display())]
pub fn atomic_write(dir: &Path, name: &str, contents: &[u8]) -> Result<()> {
    use cap_std_ext::cap_std::{ambient_authority, fs::Dir};
    use cap_std_ext::dirext::CapStdExtDirExt;
    let d = Dir::open_ambient_dir(dir, ambient_authority())?;
    d.atomic_write(name, contents)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64) -> (String, BlsEntry) {
        let id = format!("{n:064x}");
        (
            crate::bls::entry_file_name("default", n),
            BlsEntry::for_deployment("OS", n, &id, "rw", "default"),
        )
    }

    #[test]
    fn swaps_entry_sets() {
        let td = tempfile::tempdir().unwrap();
        let boot = td.path();
        write_entries(boot, &[entry(1)]).unwrap();
        assert_eq!(read_entries(boot).unwrap(), vec![entry(1)]);
        write_entries(boot, &[entry(1), entry(2)]).unwrap();
        assert_eq!(read_entries(boot).unwrap(), vec![entry(1), entry(2)]);
        write_entries(boot, &[entry(3)]).unwrap();
        assert_eq!(read_entries(boot).unwrap(), vec![entry(3)]);
        let names: Vec<_> = std::fs::read_dir(boot.join("loader"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["entries"]);
    }

    #[test]
    fn orders_and_renumbers() {
        let order = boot_order(vec![entry(1), entry(3), entry(2)]);
        let ids: Vec<_> = order.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            ids,
            [
                "bootc-default-3.conf",
                "bootc-default-2.conf",
                "bootc-default-1.conf"
            ]
        );
        // Swap the first two (a rollback): versions follow the new places.
        let mut es: Vec<BlsEntry> = order.into_iter().map(|(_, e)| e).collect();
        es.swap(0, 1);
        let out = renumber(es, "default");
        assert_eq!(out[0].0, "bootc-default-3.conf");
        assert_eq!(out[0].1.version.as_deref(), Some("3"));
        assert_eq!(out[0].1.deployment_id(), entry(2).1.deployment_id());
        assert_eq!(out[2].1.deployment_id(), entry(1).1.deployment_id());
        assert_eq!(out[2].1.version.as_deref(), Some("1"));
    }

    #[test]
    fn removes_boot_files() {
        let td = tempfile::tempdir().unwrap();
        let id = "ab".repeat(32);
        let d = td.path().join("bootc").join(&id);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("vmlinuz"), "k").unwrap();
        remove_boot_files(td.path(), &id).unwrap();
        assert!(!d.exists());
        remove_boot_files(td.path(), &id).unwrap();
        assert!(remove_boot_files(td.path(), "..").is_err());
    }

    #[test]
    fn refuses_bad_names() {
        let td = tempfile::tempdir().unwrap();
        let (_, e) = entry(1);
        for bad in ["../x.conf", "x", ".conf", "a b.conf"] {
            assert!(
                write_entries(td.path(), &[(bad.to_owned(), e.clone())]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn copies_boot_files_once() {
        let td = tempfile::tempdir().unwrap();
        let src = td.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("k"), "kernel").unwrap();
        std::fs::write(src.join("i"), "initrd").unwrap();
        let boot = td.path().join("boot");
        let id = "ab".repeat(32);
        let mut k = File::open(src.join("k")).unwrap();
        let mut i = File::open(src.join("i")).unwrap();
        install_boot_files(&boot, &id, &mut k, &mut i).unwrap();
        let dir = boot.join("bootc").join(&id);
        assert_eq!(
            std::fs::read_to_string(dir.join("vmlinuz")).unwrap(),
            "kernel"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("initramfs.img")).unwrap(),
            "initrd"
        );
        install_boot_files(&boot, &id, &mut k, &mut i).unwrap();
        std::fs::create_dir(boot.join("bootc/.tmp-x")).unwrap();
        std::fs::write(boot.join("bootc/stray-file"), "").unwrap();
        assert_eq!(list_boot_dirs(&boot).unwrap(), std::slice::from_ref(&id));
        remove_boot_files(&boot, &id).unwrap();
        assert_eq!(list_boot_dirs(&boot).unwrap(), Vec::<String>::new());
        assert_eq!(
            list_boot_dirs(&td.path().join("none")).unwrap(),
            Vec::<String>::new()
        );
    }
}
