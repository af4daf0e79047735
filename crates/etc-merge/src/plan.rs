//! Deciding how local changes land on the new image's /etc. Pure: works on
//! the list of [`Change`]s and the [`Layout`] of the new image.

use std::ops::Bound;
use std::path::{Path, PathBuf};

use crate::diff::Change;
use crate::report::{Conflict, MergeReport, Skipped};
use crate::tree::{FileKind, Layout};

/// One filesystem operation on the target, which starts as a copy of the new
/// image's /etc. Paths are relative to the /etc root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Remove whatever the target has at the path, recursively.
    Remove(PathBuf),
    /// Create a directory at the path; it gets the local directory's
    /// metadata once all other steps are done.
    MakeDir(PathBuf),
    /// Give the existing directory at the path the local directory's
    /// metadata, once all other steps are done.
    DirMetadata(PathBuf),
    /// Copy the local non-directory entry at the path (data or link target,
    /// owner, mode, xattrs, mtime). The path is free in the target.
    Copy(PathBuf),
    /// Copy the local directory at the path with everything below it. The
    /// path is free in the target.
    CopyTree(PathBuf),
}

/// The steps of a merge and the report they produce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Operations in order.
    pub steps: Vec<Step>,
    /// What the merge reports if every step succeeds.
    pub report: MergeReport,
}

/// Decides how `changes` (from [`crate::diff()`]) land on a target laid out
/// like `new_image`.
///
/// The rules, following upstream bootc and ostree:
/// - An entry changed or added locally replaces the new image's entry, whole
///   (data and metadata), even if the new image changed it too.
/// - An entry deleted locally is removed, even if the new image changed it.
/// - A locally changed entry is kept even if the new image dropped it; its
///   missing parent directories are re-created with their local metadata.
/// - A directory changed locally keeps the new image's content and gets the
///   local metadata; local changes inside it are separate changes.
/// - A conflict is a path where the new image changed whether it is a
///   directory while the local tree has changes at or below it. The local
///   version wins: for a local directory the whole local subtree is copied.
///   Conflicts are reported.
/// - Fifos and sockets are never carried; they are reported as skipped.
pub fn plan(changes: &[Change], new_image: &Layout) -> Plan {
    let mut planner = Planner {
        layout: new_image.clone(),
        covered: Vec::new(),
        plan: Plan::default(),
    };
    for change in changes {
        planner.change(change);
    }
    planner.plan
}

struct Planner {
    /// What the target holds after the steps planned so far.
    layout: Layout,
    /// Directories copied whole from the local tree: later changes below
    /// them are already in place.
    covered: Vec<PathBuf>,
    plan: Plan,
}

impl Planner {
    fn change(&mut self, change: &Change) {
        let path = change.path();
        if self.is_covered(path) {
            self.record(change);
            return;
        }
        let Some(current) = change.current() else {
            // Removed locally.
            if self.layout.contains_key(path) {
                self.remove(path);
            }
            self.record(change);
            return;
        };
        let kind = current.kind();
        if matches!(kind, FileKind::Fifo | FileKind::Socket) {
            self.plan.report.skipped.push(Skipped {
                path: path.to_path_buf(),
                reason: format!("a local {kind} is runtime state, not configuration; not carried"),
            });
            return;
        }
        if !self.ensure_parents(path) {
            // A conflicting parent was copied whole, with this change in it.
            self.record(change);
            return;
        }
        let pristine_is_dir = change.pristine().map(|e| e.kind().is_dir());
        let in_target = self.layout.get(path).copied();
        match (kind.is_dir(), in_target) {
            (true, Some(FileKind::Directory)) => self.push(Step::DirMetadata(path.into())),
            (true, None) => {
                self.push(Step::MakeDir(path.into()));
                self.layout.insert(path.into(), FileKind::Directory);
            }
            (true, Some(theirs)) => {
                if pristine_is_dir != Some(false) {
                    self.conflict(
                        path,
                        format!(
                            "locally a directory, a {theirs} in the new image; \
                             keeping the local directory"
                        ),
                    );
                }
                self.replace_with_local_tree(path);
            }
            (false, theirs) => {
                if let Some(theirs) = theirs {
                    if theirs.is_dir() && pristine_is_dir != Some(true) {
                        self.conflict(
                            path,
                            format!(
                                "locally a {kind}, a directory in the new image; \
                                 keeping the local {kind}"
                            ),
                        );
                    }
                    self.remove(path);
                }
                self.push(Step::Copy(path.into()));
                self.layout.insert(path.into(), kind);
            }
        }
        self.record(change);
    }

    /// Makes every parent of `path` a directory in the target. A missing
    /// parent is created (it exists locally, since `path` does). A parent
    /// that the new image turned into a non-directory is a conflict: the
    /// local directory is copied whole, and `false` is returned.
    fn ensure_parents(&mut self, path: &Path) -> bool {
        let mut parents: Vec<&Path> = path
            .ancestors()
            .skip(1)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        parents.reverse();
        for parent in parents {
            match self.layout.get(parent).copied() {
                Some(FileKind::Directory) => {}
                None => {
                    self.push(Step::MakeDir(parent.into()));
                    self.layout.insert(parent.into(), FileKind::Directory);
                }
                Some(theirs) => {
                    self.conflict(
                        parent,
                        format!(
                            "locally a directory with changes inside, a {theirs} in the \
                             new image; keeping the local directory"
                        ),
                    );
                    self.replace_with_local_tree(parent);
                    return false;
                }
            }
        }
        true
    }

    fn replace_with_local_tree(&mut self, path: &Path) {
        self.remove(path);
        self.push(Step::CopyTree(path.into()));
        self.layout.insert(path.into(), FileKind::Directory);
        self.covered.push(path.into());
    }

    fn remove(&mut self, path: &Path) {
        self.push(Step::Remove(path.into()));
        let doomed: Vec<PathBuf> = self
            .layout
            .range::<Path, _>((Bound::Included(path), Bound::Unbounded))
            .take_while(|(p, _)| p.starts_with(path))
            .map(|(p, _)| p.clone())
            .collect();
        for p in doomed {
            self.layout.remove(&p);
        }
    }

    fn is_covered(&self, path: &Path) -> bool {
        self.covered.iter().any(|dir| path.starts_with(dir))
    }

    fn push(&mut self, step: Step) {
        self.plan.steps.push(step);
    }

    fn conflict(&mut self, path: &Path, reason: String) {
        self.plan.report.conflicts.push(Conflict {
            path: path.to_path_buf(),
            reason,
        });
    }

    fn record(&mut self, change: &Change) {
        let report = &mut self.plan.report;
        let list = match change {
            Change::Added { .. } => &mut report.added,
            Change::Modified { .. } => &mut report.modified,
            Change::Removed { .. } => &mut report.removed,
        };
        list.push(change.path().to_path_buf());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::diff;
    use crate::diff::tests::{dir, file, tree};
    use crate::tree::Entry;

    fn render(plan: &Plan) -> Vec<String> {
        let mut out: Vec<String> = plan
            .steps
            .iter()
            .map(|s| match s {
                Step::Remove(p) => format!("rm {}", p.display()),
                Step::MakeDir(p) => format!("mkdir {}", p.display()),
                Step::DirMetadata(p) => format!("meta {}", p.display()),
                Step::Copy(p) => format!("cp {}", p.display()),
                Step::CopyTree(p) => format!("cp -r {}", p.display()),
            })
            .collect();
        out.extend(
            plan.report
                .conflicts
                .iter()
                .map(|c| format!("conflict {}", c.path.display())),
        );
        out.extend(
            plan.report
                .skipped
                .iter()
                .map(|s| format!("skipped {}", s.path.display())),
        );
        out
    }

    #[test]
    fn plan_table() {
        let fifo = Entry {
            content: crate::tree::Content::Fifo,
            ..file(0)
        };
        #[expect(clippy::type_complexity)]
        let cases: &[(
            &str,
            &[(&str, Entry)],
            &[(&str, Entry)],
            &[(&str, Entry)],
            &[&str],
        )] = &[
            (
                "nothing local",
                &[("a", file(1))],
                &[("a", file(1))],
                &[("a", file(2))],
                &[],
            ),
            (
                "local edit wins",
                &[("a", file(1))],
                &[("a", file(9))],
                &[("a", file(2))],
                &["rm a", "cp a"],
            ),
            ("local addition", &[], &[("n", file(1))], &[], &["cp n"]),
            (
                "local deletion",
                &[("a", file(1))],
                &[],
                &[("a", file(2))],
                &["rm a"],
            ),
            (
                "deleted locally, gone in image",
                &[("a", file(1))],
                &[],
                &[],
                &[],
            ),
            (
                "kept although the image dropped it and its dir",
                &[("d", dir()), ("d/a", file(1))],
                &[("d", dir()), ("d/a", file(9))],
                &[],
                &["mkdir d", "cp d/a"],
            ),
            (
                "dir metadata",
                &[("d", dir())],
                &[(
                    "d",
                    Entry {
                        mode: 0o700,
                        ..dir()
                    },
                )],
                &[("d", dir()), ("d/new", file(1))],
                &["meta d"],
            ),
            (
                "local dir vs image file: conflict at parent",
                &[("d", dir()), ("d/a", file(1))],
                &[("d", dir()), ("d/a", file(1)), ("d/b", file(1))],
                &[("d", file(5))],
                &["rm d", "cp -r d", "conflict d"],
            ),
            (
                "local file vs image dir: conflict",
                &[("f", file(1))],
                &[("f", file(9))],
                &[("f", dir()), ("f/x", file(1))],
                &["rm f", "cp f", "conflict f"],
            ),
            (
                "local type change, image unchanged: no conflict",
                &[("f", file(1))],
                &[("f", dir()), ("f/x", file(1))],
                &[("f", file(2))],
                &["rm f", "cp -r f"],
            ),
            (
                "both added, different types",
                &[],
                &[("x", file(1))],
                &[("x", dir())],
                &["rm x", "cp x", "conflict x"],
            ),
            ("fifo skipped", &[], &[("p", fifo)], &[], &["skipped p"]),
        ];
        for (name, pristine, current, new, expect) in cases {
            let changes = diff(&tree(pristine), &tree(current));
            let got = render(&plan(&changes, &tree(new).layout()));
            assert_eq!(got, *expect, "case {name}");
        }
    }
}
