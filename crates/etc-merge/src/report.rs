//! What a merge did, for the journal and the command's output.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};

/// The outcome of a merge. Paths are relative to the /etc root. The lists
/// describe the local changes that were carried into the result; unchanged
/// entries take the new image's version and are not listed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MergeReport {
    /// Entries that exist locally but not in the pristine /etc.
    #[serde(serialize_with = "paths_lossy")]
    pub added: Vec<PathBuf>,
    /// Entries changed locally (content, type, mode, owner, xattrs or
    /// symlink target); the local version replaces the new image's.
    #[serde(serialize_with = "paths_lossy")]
    pub modified: Vec<PathBuf>,
    /// Entries deleted locally; they are absent from the result even when
    /// the new image ships them.
    #[serde(serialize_with = "paths_lossy")]
    pub removed: Vec<PathBuf>,
    /// Paths where the local tree and the new image disagree on whether the
    /// path is a directory; the local version was kept.
    pub conflicts: Vec<Conflict>,
    /// Entries that were not carried at all (fifos, sockets, device nodes
    /// without the privilege to create them), from either tree.
    pub skipped: Vec<Skipped>,
}

impl MergeReport {
    /// Whether the merge met any conflict.
    pub fn has_conflicts(&self) -> bool {
        !self.conflicts.is_empty()
    }

    /// Drops `path` from the added and modified lists (because it ended up
    /// skipped after all).
    pub(crate) fn forget_carried(&mut self, path: &Path) {
        self.added.retain(|p| p != path);
        self.modified.retain(|p| p != path);
    }
}

/// A path where the local change clashed with the new image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    /// The path, relative to the /etc root.
    #[serde(serialize_with = "path_lossy")]
    pub path: PathBuf,
    /// What clashed and which version was kept.
    pub reason: String,
}

/// An entry that was not carried into the result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The path, relative to the /etc root.
    #[serde(serialize_with = "path_lossy")]
    pub path: PathBuf,
    /// Why it was left out.
    pub reason: String,
}

/// One line per entry: `added: PATH`, `modified: PATH`, `removed: PATH`,
/// `conflict: PATH: REASON`, `skipped: PATH: REASON`.
impl fmt::Display for MergeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (label, paths) in [
            ("added", &self.added),
            ("modified", &self.modified),
            ("removed", &self.removed),
        ] {
            for path in paths {
                writeln!(f, "{label}: {}", path.display())?;
            }
        }
        for c in &self.conflicts {
            writeln!(f, "conflict: {}: {}", c.path.display(), c.reason)?;
        }
        for s in &self.skipped {
            writeln!(f, "skipped: {}: {}", s.path.display(), s.reason)?;
        }
        Ok(())
    }
}

// Paths in /etc may not be UTF-8; the report is for humans and logs, so a
// lossy rendering beats failing to serialize.
fn path_lossy<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

fn paths_lossy<S: Serializer>(paths: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(paths.iter().map(|p| p.to_string_lossy()))
}
