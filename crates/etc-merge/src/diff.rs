//! The local changes: how the live /etc differs from the pristine one.
//! Pure: works on two [`Tree`] snapshots.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::tree::{Aspect, Entry, Tree};

/// One local change, relative to the pristine /etc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The path exists locally but not in the pristine tree. Every entry of
    /// an added directory is its own `Added` change, after the directory.
    Added {
        /// Path relative to the /etc root.
        path: PathBuf,
        /// The local entry.
        current: Entry,
    },
    /// The path exists in both but differs.
    Modified {
        /// Path relative to the /etc root.
        path: PathBuf,
        /// The pristine entry.
        pristine: Entry,
        /// The local entry.
        current: Entry,
        /// How they differ.
        aspects: Vec<Aspect>,
    },
    /// The path exists in the pristine tree but not locally. Only the top of
    /// a deleted directory is listed.
    Removed {
        /// Path relative to the /etc root.
        path: PathBuf,
        /// The pristine entry.
        pristine: Entry,
    },
}

impl Change {
    /// The path this change is about, relative to the /etc root.
    pub fn path(&self) -> &Path {
        match self {
            Change::Added { path, .. }
            | Change::Modified { path, .. }
            | Change::Removed { path, .. } => path,
        }
    }

    /// The pristine entry, unless the path was added.
    pub fn pristine(&self) -> Option<&Entry> {
        match self {
            Change::Added { .. } => None,
            Change::Modified { pristine, .. } | Change::Removed { pristine, .. } => Some(pristine),
        }
    }

    /// The local entry, unless the path was removed.
    pub fn current(&self) -> Option<&Entry> {
        match self {
            Change::Added { current, .. } | Change::Modified { current, .. } => Some(current),
            Change::Removed { .. } => None,
        }
    }
}

/// Every local change of `current` relative to `pristine`, in path order
/// (a directory before its descendants).
///
/// Descendants that vanish with their directory are not listed: when a
/// pristine directory was deleted, or replaced by a non-directory, only that
/// path appears. Timestamps are ignored.
pub fn diff(pristine: &Tree, current: &Tree) -> Vec<Change> {
    let paths: BTreeSet<&Path> = pristine
        .iter()
        .chain(current.iter())
        .map(|(path, _)| path)
        .collect();
    let mut changes = Vec::new();
    // A pristine directory whose whole subtree is gone locally.
    let mut gone: Option<&Path> = None;
    for path in paths {
        if let Some(dir) = gone {
            if path.starts_with(dir) {
                continue;
            }
            gone = None;
        }
        match (pristine.get(path), current.get(path)) {
            (Some(old), Some(new)) => {
                let aspects = old.differences(new);
                if aspects.is_empty() {
                    continue;
                }
                if old.kind().is_dir() && !new.kind().is_dir() {
                    gone = Some(path);
                }
                changes.push(Change::Modified {
                    path: path.to_path_buf(),
                    pristine: old.clone(),
                    current: new.clone(),
                    aspects,
                });
            }
            (Some(old), None) => {
                if old.kind().is_dir() {
                    gone = Some(path);
                }
                changes.push(Change::Removed {
                    path: path.to_path_buf(),
                    pristine: old.clone(),
                });
            }
            (None, Some(new)) => changes.push(Change::Added {
                path: path.to_path_buf(),
                current: new.clone(),
            }),
            // `path` came from one of the two trees.
            (None, None) => {}
        }
    }
    changes
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tree::{Content, Xattrs};

    pub(crate) fn dir() -> Entry {
        Entry {
            content: Content::Directory,
            mode: 0o755,
            uid: 0,
            gid: 0,
            xattrs: Xattrs::new(),
        }
    }

    pub(crate) fn file(byte: u8) -> Entry {
        Entry {
            content: Content::Regular { sha256: [byte; 32] },
            mode: 0o644,
            ..dir()
        }
    }

    pub(crate) fn link(target: &str) -> Entry {
        Entry {
            content: Content::Symlink {
                target: target.into(),
            },
            mode: 0o777,
            ..dir()
        }
    }

    pub(crate) fn tree(entries: &[(&str, Entry)]) -> Tree {
        Tree::from_entries(entries.iter().map(|(p, e)| (PathBuf::from(p), e.clone())))
    }

    /// Renders changes as `+ path`, `- path`, `~ path [aspects]`.
    fn render(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Added { path, .. } => format!("+ {}", path.display()),
                Change::Removed { path, .. } => format!("- {}", path.display()),
                Change::Modified { path, aspects, .. } => {
                    format!("~ {} {aspects:?}", path.display())
                }
            })
            .collect()
    }

    #[test]
    fn diff_table() {
        let mode600 = Entry {
            mode: 0o600,
            ..file(1)
        };
        let owned = Entry {
            uid: 1000,
            ..file(1)
        };
        let mut xattr = file(1);
        xattr.xattrs.insert("user.a".into(), b"1".to_vec());
        #[expect(clippy::type_complexity)]
        let cases: &[(&str, &[(&str, Entry)], &[(&str, Entry)], &[&str])] = &[
            ("unchanged", &[("a", file(1))], &[("a", file(1))], &[]),
            (
                "content",
                &[("a", file(1))],
                &[("a", file(2))],
                &["~ a [Content]"],
            ),
            (
                "mode",
                &[("a", file(1))],
                &[("a", mode600)],
                &["~ a [Mode]"],
            ),
            (
                "owner",
                &[("a", file(1))],
                &[("a", owned)],
                &["~ a [Owner]"],
            ),
            (
                "xattr",
                &[("a", file(1))],
                &[("a", xattr)],
                &["~ a [Xattrs]"],
            ),
            (
                "retarget",
                &[("l", link("x"))],
                &[("l", link("y"))],
                &["~ l [Content]"],
            ),
            (
                "nested add",
                &[],
                &[("d", dir()), ("d/e", dir()), ("d/e/f", file(1))],
                &["+ d", "+ d/e", "+ d/e/f"],
            ),
            (
                "dir removed lists only its top",
                &[
                    ("d", dir()),
                    ("d/a", file(1)),
                    ("d/b", dir()),
                    ("d/b/c", file(1)),
                    ("e", file(1)),
                ],
                &[("e", file(1))],
                &["- d"],
            ),
            (
                "dir became file",
                &[("d", dir()), ("d/a", file(1)), ("d0", file(1))],
                &[("d", file(3)), ("d0", file(2))],
                &["~ d [Kind]", "~ d0 [Content]"],
            ),
            (
                "file became dir",
                &[("f", file(1))],
                &[("f", dir()), ("f/x", file(1))],
                &["~ f [Kind]", "+ f/x"],
            ),
            (
                "sibling with common prefix is not inside",
                &[("d", dir()), ("d-x", file(1))],
                &[("d-x", file(2))],
                &["- d", "~ d-x [Content]"],
            ),
        ];
        for (name, pristine, current, expect) in cases {
            let got = render(&diff(&tree(pristine), &tree(current)));
            assert_eq!(got, *expect, "case {name}");
        }
    }
}
