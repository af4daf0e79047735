//! Carrying out a merge on disk: copy the new image's /etc into the target,
//! then run the [`Plan`] against it.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cap_std_ext::cap_std::fs::Dir;
use fn_error_context::context;

use crate::diff::Change;
use crate::fs::{self, CopyLog, Depth};
use crate::plan::{Plan, Step, plan};
use crate::report::MergeReport;

/// Fills the empty directory `target` with the new image's /etc plus the
/// local `changes` (from [`crate::diff()`]), whose content is read from
/// `current`. Returns what was carried, conflicts and skipped entries.
///
/// Writes are not synced: the caller syncs the filesystem (`syncfs`) before
/// it makes the result reachable, and discards a partly filled target after
/// an error or crash.
#[context("Merging local /etc changes into the new image's /etc")]
pub fn apply(
    changes: &[Change],
    current: &Dir,
    new_image: &Dir,
    target: &Dir,
) -> Result<MergeReport> {
    if !fs::is_empty_dir(target.as_fd()).context("Checking the merge target")? {
        bail!("The merge target is not empty");
    }
    let copied = copy_image(new_image, target)?;
    let plan = plan(changes, &copied.layout);
    let mut report = execute(&plan, current, target)?;
    report.skipped.splice(0..0, copied.skipped);
    Ok(report)
}

/// Copies the whole tree of `new_image` into `target`, root metadata
/// included.
#[context("Copying the new image's /etc")]
fn copy_image(new_image: &Dir, target: &Dir) -> Result<CopyLog> {
    let mut log = CopyLog::default();
    for name in fs::read_names(new_image.as_fd(), Path::new(""))? {
        let rel = PathBuf::from(&name);
        fs::copy_at(
            new_image.as_fd(),
            target.as_fd(),
            &name,
            &rel,
            Depth::Recursive,
            &mut log,
        )?;
    }
    // Metadata calls need readable fds, not the O_PATH ones cap-std may hold.
    let dot = std::ffi::OsStr::new(".");
    let src = fs::open_dir_at(new_image.as_fd(), dot).context("Opening the new image's /etc")?;
    let dst = fs::open_dir_at(target.as_fd(), dot).context("Opening the merge target")?;
    fs::copy_dir_meta(src.as_fd(), dst.as_fd()).context("Copying root metadata")?;
    Ok(log)
}

/// Runs the steps of `plan` on `target`, reading local entries from
/// `current`. Directory metadata is applied last, deepest first, so
/// read-only directories are filled before they become read-only.
#[context("Applying local changes")]
pub fn execute(plan: &Plan, current: &Dir, target: &Dir) -> Result<MergeReport> {
    let mut report = plan.report.clone();
    let mut log = CopyLog::default();
    let mut dir_metadata: Vec<&Path> = Vec::new();
    for step in &plan.steps {
        match step {
            Step::Remove(path) => {
                let (parent, name) = fs::open_parent(target.as_fd(), path)?;
                fs::remove_all_at(parent.as_fd(), name, path)?;
            }
            Step::MakeDir(path) => {
                let (parent, name) = fs::open_parent(target.as_fd(), path)?;
                fs::make_dir_at(parent.as_fd(), name)
                    .with_context(|| format!("Creating directory {}", path.display()))?;
                dir_metadata.push(path);
            }
            Step::DirMetadata(path) => dir_metadata.push(path),
            Step::Copy(path) | Step::CopyTree(path) => {
                let depth = if matches!(step, Step::CopyTree(_)) {
                    Depth::Recursive
                } else {
                    Depth::NonDirOnly
                };
                let (src, name) = fs::open_parent(current.as_fd(), path)?;
                let (dst, _) = fs::open_parent(target.as_fd(), path)?;
                fs::copy_at(src.as_fd(), dst.as_fd(), name, path, depth, &mut log)?;
            }
        }
    }
    // Children sort after their parent; reversed, they come first.
    dir_metadata.sort();
    dir_metadata.dedup();
    for path in dir_metadata.into_iter().rev() {
        let ctx = || format!("Copying metadata of directory {}", path.display());
        let (src_parent, name) = fs::open_parent(current.as_fd(), path).with_context(ctx)?;
        let (dst_parent, _) = fs::open_parent(target.as_fd(), path).with_context(ctx)?;
        let src = fs::open_dir_at(src_parent.as_fd(), name).with_context(ctx)?;
        let dst = fs::open_dir_at(dst_parent.as_fd(), name).with_context(ctx)?;
        fs::copy_dir_meta(src.as_fd(), dst.as_fd()).with_context(ctx)?;
    }
    for skipped in log.skipped {
        report.forget_carried(&skipped.path);
        report.skipped.push(skipped);
    }
    Ok(report)
}
