//! The EFI system partition, written from userspace with mtools (no mount:
//! the same code path works where vfat cannot be mounted, such as CI hosts).
//!
//! # Crash safety on FAT
//!
//! FAT has no atomic rename-over or exchange, mtools does not journal, and
//! mtools never calls fsync: what it writes sits in the page cache of the
//! device until someone flushes it. Every mutating method here therefore
//! ends with [`Esp::flush`] (fsync of the device or image file, which the
//! kernel turns into a write-back plus a cache flush of the disk), and
//! boot entries change in steps after each of which the ESP on disk has a
//! default entry whose kernel and initramfs exist:
//!
//! 1. the new set, generation `G` (see [`crate::esp_layout`]), is written
//!    as `loader/entries/gG-NAME.conf.new` files, which systemd-boot
//!    ignores; flushed (crash points `esp.entries-written`,
//!    `esp.entries-flushed`);
//! 2. each is renamed to `gG-NAME.conf`; flushed (`esp.entries-named`).
//!    Old and new entries are now both visible; either set boots;
//! 3. the entries of older generations are removed; flushed
//!    (`esp.old-removed`).
//!
//! [`Esp::repair`] (run first by [`Esp::write_entries`]) completes what a
//! crash left: pending files of a generation none of whose entries is named
//! yet are dropped (they may not be whole); once one is named (so all were
//! flushed), the rest are named too and older generations removed. It also
//! completes the two-rename layout of older versions (`loader/entries.old`,
//! `loader/entries.new`).
//!
//! Boot files (`bootc/<NAME>/`, NAME the boot digest) are written as
//! `bootc/.new-<NAME>`, flushed, renamed and flushed before any entry names
//! them, and removed only after no entry does.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use fn_error_context::context;

use bootc_utils::crashpoint::point;

use crate::bls::{BOOT_FILES_DIR, BlsEntry, INITRAMFS, VMLINUZ, is_valid_boot_dir_name, parse_bls};
use crate::esp_layout::{PENDING_SUFFIX, default_entry, disk_name, parse_disk_name};

/// The directory of boot entries on the ESP.
const ENTRIES: &str = "/loader/entries";

/// Where images ship the systemd-boot binary.
pub const SYSTEMD_BOOT_EFI: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// The removable-media boot path that firmware tries without boot variables.
pub const REMOVABLE_EFI_PATH: &str = "EFI/BOOT/BOOTX64.EFI";

/// systemd-boot's own path on the ESP.
pub const SYSTEMD_EFI_PATH: &str = "EFI/systemd/systemd-bootx64.efi";

/// The loader.conf we write: the menu shows for 3 s; the default is the
/// first entry in systemd-boot's order (sort-key, then highest version).
pub const LOADER_CONF: &str = "timeout 3\n";

/// The FAT label of the ESP we create.
pub const ESP_LABEL: &str = "EFI-SYSTEM";

/// An ESP, addressed by its block device (or image file).
#[derive(Debug, Clone)]
pub struct Esp {
    device: PathBuf,
}

impl Esp {
    /// The ESP on `device`.
    pub fn new(device: &Path) -> Self {
        Self {
            device: device.to_owned(),
        }
    }

    /// Create a FAT32 filesystem labelled [`ESP_LABEL`] on `device`.
    #[context("Creating a FAT filesystem on {}", device.display())]
    pub fn mkfs(device: &Path) -> Result<Self> {
        let mut cmd = Command::new("mkfs.vfat");
        cmd.args(["-F", "32", "-n", ESP_LABEL]).arg(device);
        crate::run_command(&mut cmd)?;
        Ok(Self::new(device))
    }

    fn mtool(&self, tool: &str) -> Command {
        let mut cmd = Command::new(tool);
        // Accept any geometry (loop devices, images) without a config file.
        cmd.env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&self.device);
        cmd
    }

    fn run(&self, cmd: &mut Command) -> Result<()> {
        crate::run_command(cmd)
    }

    /// Make everything mtools wrote so far durable: fsync of the device (or
    /// image file), which writes back its page cache and flushes the disk's
    /// write cache. mtools itself never syncs.
    #[context("Flushing the ESP {}", self.device.display())]
    pub fn flush(&self) -> Result<()> {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.device)
            .with_context(|| format!("Opening {}", self.device.display()))?;
        f.sync_all()
            .with_context(|| format!("Syncing {}", self.device.display()))
    }

    /// Whether `path` (absolute on the ESP, e.g. `/loader/entries`) exists.
    pub fn exists(&self, path: &str) -> Result<bool> {
        let out = self
            .mtool("mdir")
            .arg("-b")
            .arg(format!("::{path}"))
            .output()
            .context("Running mdir (is mtools installed?)")?;
        if out.status.success() {
            return Ok(true);
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("not found") {
            Ok(false)
        } else {
            anyhow::bail!("mdir ::{path} on {}: {}", self.device.display(), err.trim())
        }
    }

    /// Create directory `path` and its parents when missing.
    pub fn mkdir_p(&self, path: &str) -> Result<()> {
        let mut cur = String::new();
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            cur.push('/');
            cur.push_str(comp);
            if !self.exists(&cur)? {
                self.run(self.mtool("mmd").arg(format!("::{cur}")))?;
            }
        }
        Ok(())
    }

    /// Copy the host file `src` to `dst` on the ESP, replacing it.
    pub fn put(&self, src: &Path, dst: &str) -> Result<()> {
        self.run(
            self.mtool("mcopy")
                .arg("-o")
                .arg(src)
                .arg(format!("::{dst}")),
        )
        .with_context(|| format!("Copying {} to ::{dst}", src.display()))
    }

    /// Write `contents` to `dst` on the ESP, replacing it.
    pub fn put_bytes(&self, contents: &[u8], dst: &str) -> Result<()> {
        let mut tmp = tempfile::NamedTempFile::new().context("Creating a temporary file")?;
        tmp.write_all(contents)?;
        tmp.flush()?;
        self.put(tmp.path(), dst)
    }

    /// The contents of `path`, `None` when it does not exist.
    pub fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        if !self.exists(path)? {
            return Ok(None);
        }
        let out = self
            .mtool("mcopy")
            .arg("-n")
            .arg(format!("::{path}"))
            .arg("-")
            .output()
            .context("Running mcopy")?;
        anyhow::ensure!(
            out.status.success(),
            "mcopy ::{path} from {}: {}",
            self.device.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(Some(out.stdout))
    }

    /// The names in directory `path`, sorted; empty when it does not exist.
    pub fn list(&self, path: &str) -> Result<Vec<String>> {
        if !self.exists(path)? {
            return Ok(Vec::new());
        }
        let out = self
            .mtool("mdir")
            .arg("-b")
            .arg(format!("::{path}"))
            .output()
            .context("Running mdir")?;
        anyhow::ensure!(
            out.status.success(),
            "mdir ::{path} on {}: {}",
            self.device.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(parse_mdir_bare(&String::from_utf8_lossy(&out.stdout), path))
    }

    /// Rename `from` to `to` (absolute paths in the same directory), made
    /// durable with [`Esp::flush`].
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.rename_unflushed(from, to)?;
        self.flush()
    }

    fn rename_unflushed(&self, from: &str, to: &str) -> Result<()> {
        self.run(
            self.mtool("mren")
                .arg(format!("::{from}"))
                .arg(format!("::{to}")),
        )
    }

    /// Delete `path` and everything below it, if it exists.
    pub fn remove_tree(&self, path: &str) -> Result<()> {
        if self.exists(path)? {
            self.run(self.mtool("mdeltree").arg(format!("::{path}")))?;
        }
        Ok(())
    }

    /// Install systemd-boot: `efi` (the image's `systemd-bootx64.efi`) as
    /// the removable-media path and as `EFI/systemd/`, plus `loader.conf`.
    #[context("Installing systemd-boot to {}", self.device.display())]
    pub fn install_systemd_boot(&self, efi: &Path) -> Result<()> {
        for path in [REMOVABLE_EFI_PATH, SYSTEMD_EFI_PATH] {
            let (dir, _) = path.rsplit_once('/').expect("has a directory");
            self.mkdir_p(dir)?;
            self.put(efi, &format!("/{path}"))?;
        }
        self.mkdir_p("/loader")?;
        self.put_bytes(LOADER_CONF.as_bytes(), "/loader/loader.conf")?;
        self.flush()?;
        point("esp.systemd-boot-installed");
        Ok(())
    }

    /// Copy a kernel and initramfs to `bootc/<NAME>/` (NAME: their boot
    /// digest); an existing complete directory is kept, so deployments with
    /// the same kernel share it. Written as `bootc/.new-<NAME>` and
    /// renamed, so `bootc/<NAME>` exists only when complete.
    #[context("Copying the kernel to ::/{BOOT_FILES_DIR}/{name} on {}", self.device.display())]
    pub fn install_boot_files(&self, name: &str, vmlinuz: &Path, initramfs: &Path) -> Result<()> {
        anyhow::ensure!(
            is_valid_boot_dir_name(name),
            "invalid boot directory name {name:?}"
        );
        let dir = format!("/{BOOT_FILES_DIR}/{name}");
        if self.exists(&dir)? {
            return Ok(());
        }
        let tmp = format!("/{BOOT_FILES_DIR}/.new-{name}");
        self.remove_tree(&tmp)?;
        self.mkdir_p(&tmp)?;
        self.put(vmlinuz, &format!("{tmp}/{VMLINUZ}"))?;
        self.put(initramfs, &format!("{tmp}/{INITRAMFS}"))?;
        self.flush()?;
        point("esp.boot-files-written");
        self.rename(&tmp, &dir)?;
        point("esp.boot-files-named");
        Ok(())
    }

    /// Remove `bootc/<NAME>/` if it exists. The caller checks that no
    /// deployment uses it any more.
    #[context("Removing ::/{BOOT_FILES_DIR}/{name} on {}", self.device.display())]
    pub fn remove_boot_files(&self, name: &str) -> Result<()> {
        anyhow::ensure!(
            is_valid_boot_dir_name(name),
            "invalid boot directory name {name:?}"
        );
        self.remove_tree(&format!("/{BOOT_FILES_DIR}/{name}"))?;
        self.flush()?;
        point("esp.boot-files-removed");
        Ok(())
    }

    /// The names of the boot directories in `bootc/` (temporary ones
    /// excluded), sorted.
    pub fn list_boot_dirs(&self) -> Result<Vec<String>> {
        Ok(self
            .list(&format!("/{BOOT_FILES_DIR}"))?
            .into_iter()
            .filter(|n| is_valid_boot_dir_name(n))
            .collect())
    }

    /// The entry files of `loader/entries` (visible and pending), parsed.
    fn entry_files(&self) -> Result<Vec<(String, crate::esp_layout::DiskName)>> {
        Ok(self
            .list(ENTRIES)?
            .into_iter()
            .filter_map(|f| parse_disk_name(&f).map(|d| (f, d)))
            .collect())
    }

    /// Complete what an interrupted [`Esp::write_entries`] left (see the
    /// module documentation), of this version or an older one.
    #[context("Repairing the boot entries on {}", self.device.display())]
    pub fn repair(&self) -> Result<()> {
        // Older versions: entries.new, then entries -> entries.old,
        // entries.new -> entries, entries.old deleted.
        let mut changed = false;
        if !self.exists(ENTRIES)? && self.exists("/loader/entries.old")? {
            tracing::warn!(
                "{}: restoring loader/entries from loader/entries.old (interrupted update)",
                self.device.display()
            );
            self.rename_unflushed("/loader/entries.old", ENTRIES)?;
            changed = true;
        }
        for leftover in ["/loader/entries.old", "/loader/entries.new"] {
            if self.exists(leftover)? {
                self.remove_tree(leftover)?;
                changed = true;
            }
        }
        if changed {
            self.flush()?;
        }
        let files = self.entry_files()?;
        let Some(newest) = files.iter().map(|(_, d)| d.generation).max() else {
            return Ok(());
        };
        let pending: Vec<&String> = files
            .iter()
            .filter(|(_, d)| d.pending && d.generation == newest)
            .map(|(f, _)| f)
            .collect();
        let named = files.iter().any(|(_, d)| !d.pending && d.generation == newest);
        let older_visible = files.iter().any(|(_, d)| !d.pending && d.generation != newest);
        if named && (older_visible || !pending.is_empty()) {
            tracing::warn!(
                "{}: completing an interrupted update of the boot entries",
                self.device.display()
            );
            // Renaming had begun, so every pending file was flushed whole.
            self.name_and_prune(newest, &pending, &files)?;
        } else if !named {
            // The newest generation was never visible: drop it.
            for f in &pending {
                self.remove_tree(&format!("{ENTRIES}/{f}"))?;
            }
            if !pending.is_empty() {
                self.flush()?;
            }
        }
        // Pending files of older generations can only be strays.
        let stray: Vec<&String> = files
            .iter()
            .filter(|(_, d)| d.pending && d.generation != newest)
            .map(|(f, _)| f)
            .collect();
        for f in &stray {
            self.remove_tree(&format!("{ENTRIES}/{f}"))?;
        }
        if !stray.is_empty() {
            self.flush()?;
        }
        Ok(())
    }

    /// Steps 2 and 3 of [`Esp::write_entries`] for generation `generation`:
    /// name its `pending` files (flushed before), flush, remove the visible
    /// entries of other generations among `files`, flush.
    fn name_and_prune(
        &self,
        generation: u64,
        pending: &[&String],
        files: &[(String, crate::esp_layout::DiskName)],
    ) -> Result<()> {
        for f in pending {
            let to = f.strip_suffix(PENDING_SUFFIX).expect("pending name");
            self.rename_unflushed(&format!("{ENTRIES}/{f}"), &format!("{ENTRIES}/{to}"))?;
        }
        self.flush()?;
        point("esp.entries-named");
        let old: Vec<&String> = files
            .iter()
            .filter(|(_, d)| !d.pending && d.generation != generation)
            .map(|(f, _)| f)
            .collect();
        for f in &old {
            self.remove_tree(&format!("{ENTRIES}/{f}"))?;
        }
        self.flush()?;
        point("esp.old-removed");
        Ok(())
    }

    /// Replace the set of boot entries with `entries` (see the module
    /// documentation for the steps and what a crash leaves).
    #[context("Writing boot entries to {}", self.device.display())]
    pub fn write_entries(&self, entries: &[(String, BlsEntry)]) -> Result<()> {
        for (name, _) in entries {
            crate::entries::check_entry_name(name)?;
        }
        self.mkdir_p(ENTRIES)?;
        self.repair()?;
        let files = self.entry_files()?;
        let generation = files.iter().map(|(_, d)| d.generation).max().unwrap_or(0) + 1;
        let mut pending = Vec::new();
        for (name, e) in entries {
            let f = format!("{}{PENDING_SUFFIX}", disk_name(generation, name));
            self.put_bytes(e.render().as_bytes(), &format!("{ENTRIES}/{f}"))?;
            pending.push(f);
        }
        point("esp.entries-written");
        self.flush()?;
        point("esp.entries-flushed");
        let pending: Vec<&String> = pending.iter().collect();
        self.name_and_prune(generation, &pending, &files)
    }

    /// The visible entries of `loader/entries` (file name, entry) as the
    /// boot loader reads them, sorted by file name.
    #[context("Reading boot entries from {}", self.device.display())]
    pub fn loader_entries(&self) -> Result<Vec<(String, BlsEntry)>> {
        let mut out = Vec::new();
        for name in self.list(ENTRIES)? {
            if !name.to_ascii_lowercase().ends_with(".conf") {
                continue;
            }
            // An entry that cannot be read is skipped, as systemd-boot skips
            // it: after a power cut in the middle of removing an old
            // generation, its directory entry can outlive its FAT chain.
            let buf = match self.read(&format!("{ENTRIES}/{name}")) {
                Ok(Some(buf)) => buf,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!("skipping ::{ENTRIES}/{name}: {e:#}");
                    continue;
                }
            };
            match parse_bls(&String::from_utf8_lossy(&buf)) {
                Ok(e) => out.push((name, e)),
                Err(e) => tracing::warn!("skipping ::{ENTRIES}/{name}: {e:#}"),
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The entries of the newest generation, under the names they were
    /// written with, sorted by name.
    pub fn read_entries(&self) -> Result<Vec<(String, BlsEntry)>> {
        let visible: Vec<(crate::esp_layout::DiskName, BlsEntry)> = self
            .loader_entries()?
            .into_iter()
            .filter_map(|(f, e)| parse_disk_name(&f).map(|d| (d, e)))
            .collect();
        let newest = visible.iter().map(|(d, _)| d.generation).max();
        let mut out: Vec<(String, BlsEntry)> = visible
            .into_iter()
            .filter(|(d, _)| Some(d.generation) == newest)
            .map(|(d, e)| (d.name, e))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The boot loader's view: the entry systemd-boot boots by default
    /// (file name, entry), checked to name a kernel and initramfs that exist
    /// on the ESP. An error says why the ESP would not boot.
    #[context("Resolving the default boot entry on {}", self.device.display())]
    pub fn resolve_default(&self) -> Result<(String, BlsEntry)> {
        let conf = self.read("/loader/loader.conf")?.unwrap_or_default();
        let entries = self.loader_entries()?;
        let (name, e) = default_entry(&String::from_utf8_lossy(&conf), &entries)
            .with_context(|| format!("No boot entry in ::{ENTRIES}"))?
            .clone();
        let linux = e.linux.as_deref().with_context(|| format!("{name} has no linux line"))?;
        for f in std::iter::once(linux).chain(e.initrd.iter().map(String::as_str)) {
            let data = self
                .read(f)?
                .with_context(|| format!("{name} names {f}, which does not exist"))?;
            anyhow::ensure!(!data.is_empty(), "{name} names {f}, which is empty");
        }
        Ok((name, e))
    }
}

/// The entry names of `mdir -b ::DIR` output (full paths, directories with a
/// trailing `/`).
fn parse_mdir_bare(out: &str, dir: &str) -> Vec<String> {
    let prefix = format!("::{}/", dir.trim_end_matches('/'));
    let mut names: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|n| n.trim_end_matches('/').to_owned())
        .filter(|n| !n.is_empty() && !n.contains('/'))
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bare_listing() {
        let out = "::/loader/entries/\n::/loader/loader.conf\n";
        assert_eq!(parse_mdir_bare(out, "/loader"), ["entries", "loader.conf"]);
        assert_eq!(parse_mdir_bare("", "/x"), Vec::<String>::new());
    }

    /// Needs mkfs.vfat and mtools (not root): the whole ESP life cycle on an image file.
    #[test]
    fn esp_on_an_image_file() {
        if Command::new("mkfs.vfat").arg("--help").output().is_err()
            || Command::new("mdir").arg("--version").output().is_err()
        {
            eprintln!("skipping: mkfs.vfat or mtools missing");
            return;
        }
        let td = tempfile::tempdir().unwrap();
        let img = td.path().join("esp.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let esp = Esp::mkfs(&img).unwrap();
        let efi = td.path().join("sd.efi");
        std::fs::write(&efi, "MZ fake").unwrap();
        esp.install_systemd_boot(&efi).unwrap();
        assert_eq!(
            esp.read("/EFI/BOOT/BOOTX64.EFI").unwrap().unwrap(),
            b"MZ fake"
        );
        assert_eq!(
            esp.read("/loader/loader.conf").unwrap().unwrap(),
            LOADER_CONF.as_bytes()
        );

        let id = "ab".repeat(32);
        std::fs::write(td.path().join("k"), "kernel").unwrap();
        std::fs::write(td.path().join("i"), "initrd").unwrap();
        esp.install_boot_files(&id, &td.path().join("k"), &td.path().join("i"))
            .unwrap();
        assert_eq!(
            esp.read(&format!("/bootc/{id}/initramfs.img"))
                .unwrap()
                .unwrap(),
            b"initrd"
        );
        let other = "cd".repeat(32);
        esp.install_boot_files(&other, &td.path().join("k"), &td.path().join("i"))
            .unwrap();
        assert_eq!(esp.list_boot_dirs().unwrap(), [id.clone(), other.clone()]);
        esp.remove_boot_files(&other).unwrap();
        esp.remove_boot_files(&other).unwrap();
        assert_eq!(esp.list_boot_dirs().unwrap(), std::slice::from_ref(&id));
        assert!(esp.remove_boot_files("..").is_err());

        let e1 = (
            "bootc-default-1.conf".to_owned(),
            BlsEntry::for_deployment("OS (1)", 1, &id, "rw", "default"),
        );
        let e2 = (
            "bootc-default-2.conf".to_owned(),
            BlsEntry::for_deployment("OS (2)", 2, &id, "rw quiet", "default"),
        );
        esp.write_entries(std::slice::from_ref(&e1)).unwrap();
        assert_eq!(esp.read_entries().unwrap(), vec![e1.clone()]);
        esp.write_entries(&[e1.clone(), e2.clone()]).unwrap();
        assert_eq!(esp.read_entries().unwrap(), vec![e1.clone(), e2.clone()]);
        assert_eq!(esp.list("/loader").unwrap(), ["entries", "loader.conf"]);

        // A crash between the renames: entries.old is put back.
        esp.rename("/loader/entries", "/loader/entries.old")
            .unwrap();
        esp.repair().unwrap();
        assert_eq!(esp.read_entries().unwrap(), vec![e1, e2]);
    }
}
