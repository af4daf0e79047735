//! The EFI system partition, written from userspace with mtools (no mount:
//! the same code path works where vfat cannot be mounted, such as CI hosts).
//!
//! # Atomicity on FAT
//!
//! FAT has no atomic rename-over or exchange, and mtools does not journal.
//! Boot entries are therefore changed in three steps, each of which rewrites
//! a single directory entry:
//!
//! 1. the new set is written to `loader/entries.new` (any previous leftover
//!    is deleted first);
//! 2. `loader/entries` is renamed to `loader/entries.old`;
//! 3. `loader/entries.new` is renamed to `loader/entries`, then
//!    `loader/entries.old` is deleted.
//!
//! A crash during step 1 leaves the old set in place. A crash between 2 and
//! 3 leaves no `loader/entries` but a complete `loader/entries.old`: the next
//! [`Esp::write_entries`] (or [`Esp::repair`]) renames it back first. Until
//! then systemd-boot shows no bootc entry, which is the window FAT leaves.
//! Boot files (`bootc/<NAME>/`, NAME the boot digest) are written before
//! any entry names them, and removed only after no entry does.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use fn_error_context::context;

use crate::bls::{BOOT_FILES_DIR, BlsEntry, INITRAMFS, VMLINUZ, is_valid_boot_dir_name, parse_bls};

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

    /// Rename `from` to `to` (absolute paths in the same directory).
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
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
        self.rename(&tmp, &dir)
    }

    /// Remove `bootc/<NAME>/` if it exists. The caller checks that no
    /// deployment uses it any more.
    #[context("Removing ::/{BOOT_FILES_DIR}/{name} on {}", self.device.display())]
    pub fn remove_boot_files(&self, name: &str) -> Result<()> {
        anyhow::ensure!(
            is_valid_boot_dir_name(name),
            "invalid boot directory name {name:?}"
        );
        self.remove_tree(&format!("/{BOOT_FILES_DIR}/{name}"))
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

    /// Put back `loader/entries` after a crash between the two renames of
    /// [`Esp::write_entries`].
    pub fn repair(&self) -> Result<()> {
        if !self.exists("/loader/entries")? && self.exists("/loader/entries.old")? {
            tracing::warn!(
                "{}: restoring loader/entries from loader/entries.old (interrupted update)",
                self.device.display()
            );
            self.rename("/loader/entries.old", "/loader/entries")?;
        }
        Ok(())
    }

    /// Replace the set of boot entries with `entries` (see the module
    /// documentation for the steps and what a crash leaves).
    #[context("Writing boot entries to {}", self.device.display())]
    pub fn write_entries(&self, entries: &[(String, BlsEntry)]) -> Result<()> {
        for (name, _) in entries {
            crate::entries::check_entry_name(name)?;
        }
        self.mkdir_p("/loader")?;
        self.repair()?;
        self.remove_tree("/loader/entries.new")?;
        self.remove_tree("/loader/entries.old")?;
        self.mkdir_p("/loader/entries.new")?;
        for (name, e) in entries {
            self.put_bytes(
                e.render().as_bytes(),
                &format!("/loader/entries.new/{name}"),
            )?;
        }
        if self.exists("/loader/entries")? {
            self.rename("/loader/entries", "/loader/entries.old")?;
        }
        self.rename("/loader/entries.new", "/loader/entries")?;
        self.remove_tree("/loader/entries.old")?;
        Ok(())
    }

    /// The entries in `loader/entries`, sorted by file name.
    #[context("Reading boot entries from {}", self.device.display())]
    pub fn read_entries(&self) -> Result<Vec<(String, BlsEntry)>> {
        let mut out = Vec::new();
        for name in self.list("/loader/entries")? {
            if !name.ends_with(".conf") {
                continue;
            }
            let Some(buf) = self.read(&format!("/loader/entries/{name}"))? else {
                continue;
            };
            match parse_bls(&String::from_utf8_lossy(&buf)) {
                Ok(e) => out.push((name, e)),
                Err(e) => tracing::warn!("skipping ::/loader/entries/{name}: {e:#}"),
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
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
