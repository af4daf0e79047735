//! Probing fs-verity support of the filesystem that will hold the store.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use composefs::fsverity::{EnableVerityError, enable_verity_raw};

use crate::{ObjectId, VerityMode};

/// Whether files under `dir` can have fs-verity enabled: write a small file,
/// reopen it read-only and try. Any refusal by the kernel or filesystem
/// (no kernel support, feature not enabled on the filesystem) means
/// [`VerityMode::Insecure`]; other I/O errors are returned.
pub fn probe(dir: &Path) -> Result<VerityMode> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".verity-probe-")
        .tempfile_in(dir)
        .with_context(|| format!("Creating probe file in {}", dir.display()))?;
    tmp.write_all(b"bootc fs-verity probe\n")?;
    tmp.as_file().sync_all()?;
    let ro = std::fs::File::open(tmp.path())?;
    let (_, path) = tmp.keep().context("Keeping probe file")?;
    let result = enable_verity_raw::<ObjectId>(&ro);
    drop(ro);
    let _ = std::fs::remove_file(&path);
    match result {
        Ok(()) | Err(EnableVerityError::AlreadyEnabled) => Ok(VerityMode::Verified),
        Err(EnableVerityError::FilesystemNotSupported) => Ok(VerityMode::Insecure),
        Err(e) => {
            tracing::warn!(
                "fs-verity probe in {} failed ({e}); using insecure mode",
                dir.display()
            );
            Ok(VerityMode::Insecure)
        }
    }
}
