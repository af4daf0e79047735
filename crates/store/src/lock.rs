//! The sysroot-wide writer lock.
//!
//! Every bootc command that changes a sysroot (pull, gc, later deploy and
//! finalize) holds an exclusive `flock` on `<sysroot>/state/lock` for its whole
//! run. The lock dies with the process, so a SIGKILLed holder never leaves a
//! stale lock behind. The holder writes its pid into the file so that a
//! second process can say whom it is waiting for.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rustix::fs::{FlockOperation, flock};

/// What to do when another process holds the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockWait {
    /// Block until it is released.
    Block,
    /// Fail at once with [`LockBusy`].
    NoWait,
}

/// Another process holds the writer lock.
#[derive(Debug, thiserror::Error)]
#[error("another bootc process{} holds the lock {}", .pid.map(|p| format!(" (pid {p})")).unwrap_or_default(), .path.display())]
pub struct LockBusy {
    /// The lock file.
    pub path: PathBuf,
    /// The pid recorded by the holder, when readable.
    pub pid: Option<u32>,
}

/// A held writer lock; released when dropped.
#[derive(Debug)]
pub struct WriteLock {
    _file: File,
}

/// Take the lock in `state_dir` (created if missing).
pub fn acquire(state_dir: &Path, wait: LockWait) -> Result<WriteLock> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("Creating {}", state_dir.display()))?;
    let path = state_dir.join("lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("Opening lock file {}", path.display()))?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            if wait == LockWait::NoWait {
                let pid = read_pid(&mut file);
                return Err(LockBusy { path, pid }.into());
            }
            flock(&file, FlockOperation::LockExclusive)
                .with_context(|| format!("Waiting for lock {}", path.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("Locking {}", path.display())),
    }
    // Record our pid for the messages of processes that wait on us.
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(WriteLock { _file: file })
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_locker_is_refused_then_succeeds_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let first = acquire(dir.path(), LockWait::NoWait).unwrap();
        // flock locks belong to the open file description: a second open in
        // the same process conflicts just like another process would.
        let err = acquire(dir.path(), LockWait::NoWait).unwrap_err();
        let busy = err.downcast_ref::<LockBusy>().expect("LockBusy");
        assert_eq!(busy.pid, Some(std::process::id()));
        assert!(err.to_string().contains("holds the lock"), "{err}");
        drop(first);
        acquire(dir.path(), LockWait::NoWait).unwrap();
    }
}
