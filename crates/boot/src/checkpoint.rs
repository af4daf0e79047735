//! Making a filesystem's metadata readable by a boot loader that does not
//! replay the journal.
//!
//! GRUB reads ext4 from its home locations only. After `fsync`, a rename can
//! still be only in the journal; a power cut then leaves GRUB a directory and
//! inode table that Linux (which replays the journal) never sees. An ext4
//! journal checkpoint (`EXT4_IOC_CHECKPOINT`, Linux 5.13) writes every
//! committed transaction to its home location and waits for it, without the
//! freeze/thaw pair that would leave the filesystem frozen if we were killed
//! between the two.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result};
use rustix::ioctl::{Setter, ioctl, opcode};

/// `EXT4_IOC_CHECKPOINT`: `_IOW('f', 43, __u32)`, flags 0 (no discard, no zeroing).
const EXT4_IOC_CHECKPOINT: rustix::ioctl::Opcode = opcode::write::<u32>(b'f', 43);

/// What [`checkpoint`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpointed {
    /// The journal was checkpointed: the home locations hold every committed change.
    Journal,
    /// Not ext4 with a journal (or a kernel before 5.13): only `syncfs`.
    SyncOnly,
}

/// `syncfs` the filesystem holding `dir`, then checkpoint its journal when it
/// is ext4.
#[allow(unsafe_code)] // One ioctl with a u32 argument; no safe wrapper exists.
pub fn checkpoint(dir: &Path) -> Result<Checkpointed> {
    let f = File::open(dir).with_context(|| format!("Opening {}", dir.display()))?;
    rustix::fs::syncfs(&f).with_context(|| format!("Syncing the filesystem of {}", dir.display()))?;
    // SAFETY: the opcode takes a pointer to a u32, which `Setter` passes.
    let r = unsafe { ioctl(&f, Setter::<EXT4_IOC_CHECKPOINT, u32>::new(0)) };
    match r {
        Ok(()) => Ok(Checkpointed::Journal),
        // Not ext4 (ENOTTY), no journal or unsupported flags (EINVAL), old
        // kernel (ENOTTY), or not permitted: the sync above is all we can do.
        Err(_) => Ok(Checkpointed::SyncOnly),
    }
}
