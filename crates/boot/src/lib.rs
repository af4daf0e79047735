//! Boot entries: BLS type-1 files, grub.cfg, systemd-boot on the ESP.
//!
//! - [`bls`]: the entry model, [`bls::parse_bls`] and [`bls::BlsEntry::render`] (pure).
//! - [`entries`]: entry sets and boot files in a mounted directory, swapped in
//!   with `renameat2(RENAME_EXCHANGE)` after a `syncfs`.
//! - [`grub`]: `grub.cfg` generation (pure) and `grub-install` for BIOS.
//! - [`esp`]: the EFI system partition written with mtools, systemd-boot.
//! - [`esp_layout`]: entry file names on the ESP, systemd-boot's default (pure).
//! - [`counting`]: boot counting (systemd-boot `+N` names, GRUB's grubenv).
//!
//! **Architecture invariant**: every change to what boots ends in one rename
//! or exchange after a sync barrier (on FAT, see [`esp`] for what we get).
//! This crate knows nothing of images or deployments beyond a boot directory
//! name (`bootc/<bootDigest>/`) and a kernel command line.

pub mod bls;
pub mod counting;
pub mod entries;
pub mod esp;
pub mod esp_layout;
pub mod grub;

use std::process::Command;

use anyhow::{Context, Result};

pub use bls::{BlsEntry, parse_bls};

/// Run `cmd`, failing with its stderr (and stdout) when it fails.
pub(crate) fn run_command(cmd: &mut Command) -> Result<()> {
    let prog = cmd.get_program().to_string_lossy().into_owned();
    tracing::debug!("running {cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("Running {prog} (is it installed?)"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let msg = [stderr.trim(), stdout.trim()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        anyhow::bail!("{prog} failed ({}): {msg}", out.status);
    }
    Ok(())
}
