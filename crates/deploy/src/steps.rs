//! Names of the durable steps of each transaction.
//!
//! Each name is `<transaction>.<step>`; a transaction marks the moment a
//! step becomes durable with `bootc_utils::crashpoint::point(NAME)`, so a
//! crash test can stop the process exactly there (`BOOTC_CRASH_AT=<name>`).

/// Steps of staging a deployment from a pulled image.
pub mod stage {
    /// The new deployment's directory is written under a temporary name.
    pub const DEPLOYMENT_DIR_WRITTEN: &str = "stage.deployment-dir-written";
    /// The deployment directory is renamed to its final name.
    pub const DEPLOYMENT_DIR_RENAMED: &str = "stage.deployment-dir-renamed";
    /// The staged marker naming the deployment is published.
    pub const STAGED_MARKED: &str = "stage.staged-marked";
    /// Every step, in order.
    pub const ALL: &[&str] = &[DEPLOYMENT_DIR_WRITTEN, DEPLOYMENT_DIR_RENAMED, STAGED_MARKED];
}

/// Steps of finalizing a staged deployment (at shutdown or on demand).
pub mod finalize {
    /// The three-way /etc merge is written into the staged deployment.
    pub const ETC_MERGED: &str = "finalize.etc-merged";
    /// The new boot entries are swapped in as one atomic step.
    pub const ENTRIES_PUBLISHED: &str = "finalize.entries-published";
    /// The staged marker is removed.
    pub const STAGED_CLEARED: &str = "finalize.staged-cleared";
    /// Every step, in order.
    pub const ALL: &[&str] = &[ETC_MERGED, ENTRIES_PUBLISHED, STAGED_CLEARED];
}

/// Steps of a rollback to the previous deployment.
pub mod rollback {
    /// The entries with the rollback deployment first are swapped in.
    pub const ENTRIES_PUBLISHED: &str = "rollback.entries-published";
    /// Every step, in order.
    pub const ALL: &[&str] = &[ENTRIES_PUBLISHED];
}

/// Steps of a boot trial and its blessing.
pub mod trial {
    /// The trial counter is armed for the new default.
    pub const COUNTER_ARMED: &str = "trial.counter-armed";
    /// The booted deployment is blessed (counter cleared).
    pub const BLESSED: &str = "trial.blessed";
    /// Every step, in order.
    pub const ALL: &[&str] = &[COUNTER_ARMED, BLESSED];
}

/// Steps of pruning old deployments and their GC roots.
pub mod prune {
    /// A deployment's directory is removed.
    pub const DEPLOYMENT_REMOVED: &str = "prune.deployment-removed";
    /// The store's GC roots for removed deployments are dropped.
    pub const ROOTS_DROPPED: &str = "prune.roots-dropped";
    /// Every step, in order.
    pub const ALL: &[&str] = &[DEPLOYMENT_REMOVED, ROOTS_DROPPED];
}

/// Every transaction with its steps: `(transaction, steps)`.
pub const ALL: &[(&str, &[&str])] = &[
    ("stage", stage::ALL),
    ("finalize", finalize::ALL),
    ("rollback", rollback::ALL),
    ("trial", trial::ALL),
    ("prune", prune::ALL),
];

#[cfg(test)]
mod tests {
    use super::ALL;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_and_prefixed() {
        let mut seen = HashSet::new();
        for (transaction, steps) in ALL {
            assert!(!steps.is_empty(), "{transaction} has no steps");
            for name in *steps {
                assert!(seen.insert(*name), "duplicate step name {name}");
                let prefix = format!("{transaction}.");
                assert!(name.starts_with(&prefix), "{name} lacks prefix {prefix}");
                let step = &name[prefix.len()..];
                assert!(
                    !step.is_empty() && step.chars().all(|c| c.is_ascii_lowercase() || c == '-'),
                    "{name}: step part must be lowercase words joined by '-'"
                );
            }
        }
    }
}
