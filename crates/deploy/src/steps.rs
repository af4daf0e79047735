//! Names of the durable steps of each transaction.
//!
//! Each name is `<transaction>.<step>`; a transaction marks the moment a
//! step becomes durable with `Target::step`, which calls
//! `bootc_utils::crashpoint::point(NAME)` (so a crash test can stop the
//! process exactly there, `BOOTC_CRASH_AT=<name>`) and tells the reporter.
//! The point is reached *after* the step: crashing at
//! `stage.deployment-dir-renamed` means the rename happened.
//!
//! The lower layers mark their own steps inside these: `image.mounted`
//! (`bootc-sysroot`), `esp.*` (`bootc-boot`, each ESP write). ARCHITECTURE.md
//! says, per transaction, what is on disk after each step.

/// Staging a deployment from an image ([`crate::stage`]).
pub mod stage {
    /// The image is in the store under its name (nothing else changed).
    pub const IMAGE_PULLED: &str = "stage.image-pulled";
    /// A different staged deployment was discarded (`staged.json` removed,
    /// then its boot files and directory unless an entry uses them).
    pub const PREVIOUS_DISCARDED: &str = "stage.previous-discarded";
    /// The deployment directory (record, /etc) is in place under its name:
    /// written as `.tmp-ID`, synced and renamed (or an existing one's
    /// record rewritten atomically).
    pub const DEPLOYMENT_DIR_RENAMED: &str = "stage.deployment-dir-renamed";
    /// Its kernel and initramfs are where the bootloader reads them.
    pub const KERNEL_INSTALLED: &str = "stage.kernel-installed";
    /// `state/staged.json` names the deployment.
    pub const STAGED_MARKED: &str = "stage.staged-marked";
    /// Every step, in order.
    pub const ALL: &[&str] = &[
        IMAGE_PULLED,
        PREVIOUS_DISCARDED,
        DEPLOYMENT_DIR_RENAMED,
        KERNEL_INSTALLED,
        STAGED_MARKED,
    ];
}

/// Locking and unlocking a staged deployment (`--download-only`,
/// `--from-downloaded`).
pub mod download_only {
    /// `staged.json` says download-only: shutdown does not finalize it.
    pub const LOCKED: &str = "download-only.locked";
    /// `staged.json` no longer says download-only.
    pub const UNLOCKED: &str = "download-only.unlocked";
    /// Every step, in order.
    pub const ALL: &[&str] = &[LOCKED, UNLOCKED];
}

/// Finalizing a staged deployment ([`crate::finalize`]).
pub mod finalize {
    /// The three-way /etc merge is the deployment's /etc (exchanged in).
    pub const ETC_MERGED: &str = "finalize.etc-merged";
    /// The new boot entries (new default, booted as rollback) are what
    /// boots: the bootloader's copy, then `/boot/loader/entries`.
    pub const ENTRIES_PUBLISHED: &str = "finalize.entries-published";
    /// `staged.json` is removed.
    pub const STAGED_CLEARED: &str = "finalize.staged-cleared";
    /// Finalization failed before the entries: `staged.json` is removed so
    /// the failed deployment is not retried at every shutdown.
    pub const STAGED_DROPPED: &str = "finalize.staged-dropped";
    /// Every step, in order.
    pub const ALL: &[&str] = &[
        ETC_MERGED,
        ENTRIES_PUBLISHED,
        STAGED_CLEARED,
        STAGED_DROPPED,
    ];
}

/// Rolling back to the previous deployment ([`crate::rollback`]).
pub mod rollback {
    /// The staged deployment is discarded.
    pub const STAGED_DISCARDED: &str = "rollback.staged-discarded";
    /// The entries with the rollback deployment first are what boots.
    pub const ENTRIES_PUBLISHED: &str = "rollback.entries-published";
    /// Every step, in order.
    pub const ALL: &[&str] = &[STAGED_DISCARDED, ENTRIES_PUBLISHED];
}

/// Boot trials and blessing ([`crate::trial`]).
pub mod trial {
    /// The trial record and GRUB's counter are written for the new default
    /// (before the entries that make it the default).
    pub const COUNTER_ARMED: &str = "trial.counter-armed";
    /// No trial is pending (record and GRUB counter removed).
    pub const ENDED: &str = "trial.ended";
    /// The booted deployment on trial is blessed (counter cleared).
    pub const BLESSED: &str = "trial.blessed";
    /// A failed trial boot is recorded in `boot-failure.json`.
    pub const FAILURE_RECORDED: &str = "trial.failure-recorded";
    /// The booted deployment is the default again, the failed one its rollback.
    pub const FELL_BACK: &str = "trial.fell-back";
    /// Every step, in order.
    pub const ALL: &[&str] = &[COUNTER_ARMED, ENDED, BLESSED, FAILURE_RECORDED, FELL_BACK];
}

/// Pruning old deployments and their GC roots ([`crate::prune`]).
pub mod prune {
    /// The boot files no remaining deployment uses are removed.
    pub const BOOT_FILES_REMOVED: &str = "prune.boot-files-removed";
    /// A deployment's directory is removed (renamed to `.tmp-rm-ID` first).
    pub const DEPLOYMENT_REMOVED: &str = "prune.deployment-removed";
    /// Its store tag (the GC root of its image) is dropped.
    pub const ROOT_DROPPED: &str = "prune.root-dropped";
    /// Every step, in order.
    pub const ALL: &[&str] = &[BOOT_FILES_REMOVED, DEPLOYMENT_REMOVED, ROOT_DROPPED];
}

/// Store garbage collection ([`crate::prune::gc`], after pruning).
pub mod gc {
    /// An image name no deployment uses is dropped.
    pub const NAME_DROPPED: &str = "gc.name-dropped";
    /// Store content no name or tag reaches is removed.
    pub const COLLECTED: &str = "gc.collected";
    /// Every step, in order.
    pub const ALL: &[&str] = &[NAME_DROPPED, COLLECTED];
}

/// Pinning a deployment ([`crate::deployments::pin`]).
pub mod pin {
    /// The pin file is created or removed.
    pub const CHANGED: &str = "pin.changed";
    /// Every step, in order.
    pub const ALL: &[&str] = &[CHANGED];
}

/// Sealing the store for fs-verity ([`crate::seal`]).
pub mod seal {
    /// Every object has fs-verity and the store is marked secure.
    pub const STORE_SEALED: &str = "seal.store-sealed";
    /// Every step, in order.
    pub const ALL: &[&str] = &[STORE_SEALED];
}

/// Setting a source's kernel arguments ([`crate::kargs`]).
pub mod kargs {
    /// The base deployment's record has the new arguments.
    pub const RECORD_WRITTEN: &str = "kargs.record-written";
    /// Its boot entry has them.
    pub const ENTRIES_PUBLISHED: &str = "kargs.entries-published";
    /// The staged deployment's record has them.
    pub const STAGED_RECORD_WRITTEN: &str = "kargs.staged-record-written";
    /// Every step, in order.
    pub const ALL: &[&str] = &[RECORD_WRITTEN, ENTRIES_PUBLISHED, STAGED_RECORD_WRITTEN];
}

/// Every transaction with its steps: `(transaction, steps)`.
pub const ALL: &[(&str, &[&str])] = &[
    ("stage", stage::ALL),
    ("download-only", download_only::ALL),
    ("finalize", finalize::ALL),
    ("rollback", rollback::ALL),
    ("trial", trial::ALL),
    ("prune", prune::ALL),
    ("gc", gc::ALL),
    ("pin", pin::ALL),
    ("seal", seal::ALL),
    ("kargs", kargs::ALL),
];

#[cfg(test)]
mod tests;
