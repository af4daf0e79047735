//! Three-way merge of /etc when moving to a new deployment.
//!
//! Three trees go in: the **pristine** /etc of the booted deployment's image,
//! the **current** live /etc of that deployment, and the **new image**'s
//! /etc. The result, written into an empty **target** directory, is the new
//! image's /etc with every local change (current relative to pristine) laid
//! on top. Unchanged entries take the new image's version, so new defaults
//! arrive; local edits, additions and deletions survive.
//!
//! # Modules
//!
//! - [`tree`]: snapshots of a directory tree ([`Tree::load`] is the only I/O),
//!   entries, kinds, and how two entries differ ([`Aspect`]).
//! - [`diff`](mod@diff): pure; [`diff()`] lists the local [`Change`]s.
//! - [`plan`](mod@plan): pure; [`plan()`] decides the [`Step`]s on the target and
//!   detects conflicts.
//! - [`apply`](mod@apply): I/O; [`apply()`] copies the new image into the target and
//!   runs the plan.
//! - [`report`]: [`MergeReport`], what was carried, for the journal and the
//!   command's output.
//! - `fs` (private): fd-relative, symlink-safe file operations.
//!
//! # The rules
//!
//! As upstream bootc (and ostree before it) document and do:
//! - An entry modified or added locally replaces the new image's entry
//!   whole (data and metadata), even if the new image changed it too.
//! - An entry deleted locally is absent from the result, even if the new
//!   image changed it.
//! - An entry modified locally is kept even if the new image dropped it.
//! - A path the new image turned into a directory (or out of one) while it
//!   has local changes is a conflict. Unlike upstream, which fails by
//!   default, the local version is kept and the conflict is reported.
//! - Fifos and sockets are not carried; device nodes are, when we may create
//!   them (root). Hard links are not preserved. The /etc root's own
//!   metadata comes from the new image.
//!
//! # What is compared
//!
//! Entry type, file data (SHA-256), symlink target (never followed), device
//! number, permission bits, owner, and extended attributes in the `user.*`
//! and `security.*` namespaces plus POSIX ACLs; `trusted.*` is ignored.
//! Timestamps are ignored (but copied).
//!
//! # Safety against symlinks
//!
//! All three input trees are opened below their directory handles one
//! component at a time with `O_NOFOLLOW`; a symlink is copied as a symlink
//! with its target byte for byte, whatever it points at.

pub mod apply;
pub mod diff;
mod fs;
pub mod plan;
pub mod report;
pub mod tree;

pub use apply::{apply, execute};
pub use diff::{Change, diff};
pub use plan::{Plan, Step, plan};
pub use report::{Conflict, MergeReport, Skipped};
pub use tree::{Aspect, Content, Entry, FileKind, Layout, Tree, Xattrs};

use anyhow::{Context, Result};
use cap_std_ext::cap_std::fs::Dir;
use fn_error_context::context;

/// Merges `/etc`: fills the empty `target` with `new_image` plus the local
/// changes of `current` relative to `pristine`. `pristine` and `new_image`
/// are only read; `current` is only read.
///
/// See [`apply()`] for durability: the caller syncs before publishing.
#[context("Merging /etc")]
pub fn merge(pristine: &Dir, current: &Dir, new_image: &Dir, target: &Dir) -> Result<MergeReport> {
    let pristine_tree = Tree::load(pristine).context("Reading the pristine /etc")?;
    let current_tree = Tree::load(current).context("Reading the current /etc")?;
    let changes = diff(&pristine_tree, &current_tree);
    apply(&changes, current, new_image, target)
}
