//! Carry out a [`MountPlan`] with the kernel's mount API.
//!
//! # Flow
//!
//! 1. [`Step::MakePrivate`] steps run first.
//! 2. Every source is opened as a *detached* mount: the composefs image with
//!    [`mount_composefs`] (an overlayfs over the EROFS image and the
//!    repository's objects), each bind source as a copy from `open_tree`.
//!    Nothing is visible yet, and bind sources under the physical root are
//!    resolved before a new root can hide them.
//! 3. Each bind target inside a composefs mount is checked in the detached
//!    image: it must be a real directory (not a symlink supplied by the image).
//! 4. The detached mounts are attached in plan order with `move_mount`. If one
//!    fails, those already attached are detached again, newest first, so the
//!    emergency shell sees the physical root as it was.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};
use composefs::fsverity::Sha256HashValue;
use composefs::mount::{MountOptions, VerityRequirement, composefs_fsmount};
use composefs::repository::Repository;
use fn_error_context::context;
use rustix::fs::{AtFlags, CWD, FileType};
use rustix::mount::{
    MountPropagationFlags, MoveMountFlags, OpenTreeFlags, UnmountFlags, move_mount, open_tree,
    unmount,
};

use crate::plan::{MountPlan, Step};

/// Kernel modules a composefs root needs; built in on some kernels.
pub const MODULES: &[&str] = &["erofs", "overlay", "loop"];

/// How to mount composefs images.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ErofsBacking {
    /// Mount the EROFS image file directly (kernel 6.12+ with file-backed
    /// EROFS), falling back to a loop device if that fails.
    #[default]
    FileThenLoop,
    /// Always go through a loop device.
    Loop,
}

/// Load `modules` with `modprobe -a`, skipping those already in `/sys/module`.
///
/// modprobe itself succeeds for built-in modules.
#[context("Loading kernel modules {}", modules.join(", "))]
pub fn load_modules(modules: &[&str]) -> Result<()> {
    let missing: Vec<&str> = modules
        .iter()
        .copied()
        .filter(|m| !Path::new("/sys/module").join(m).exists())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let status = Command::new("modprobe")
        .arg("-a")
        .args(&missing)
        .status()
        .context("Running modprobe")?;
    if !status.success() {
        bail!("modprobe -a {} failed: {status}", missing.join(" "));
    }
    Ok(())
}

/// A source opened in phase 2, waiting to be attached.
struct Pending<'p> {
    step: &'p Step,
    target: &'p Path,
    mount: OwnedFd,
}

/// Execute `plan` (see the module documentation for the order of operations).
pub fn execute(plan: &MountPlan, backing: ErofsBacking) -> Result<()> {
    for step in &plan.steps {
        if let Step::MakePrivate { path } = step {
            rustix::mount::mount_change(path, MountPropagationFlags::PRIVATE)
                .with_context(|| format!("Making {} a private mount", path.display()))?;
        }
    }

    let mut pending = Vec::new();
    for step in &plan.steps {
        let (target, mount) = match step {
            Step::MakePrivate { .. } => continue,
            Step::MountComposefs {
                repo,
                image,
                target,
            } => (target, mount_composefs(repo, image, backing)?),
            Step::Bind { source, target } => (target, clone_tree(source)?),
        };
        pending.push(Pending {
            step,
            target,
            mount,
        });
    }

    check_targets(&pending)?;

    let mut attached: Vec<&Path> = Vec::new();
    for p in &pending {
        let r = move_mount(
            p.mount.as_fd(),
            "",
            CWD,
            p.target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .with_context(|| format!("Attaching {} ({})", p.target.display(), p.step));
        if let Err(e) = r {
            detach_all(&attached);
            return Err(e);
        }
        attached.push(p.target);
    }
    Ok(())
}

/// Detach `targets`, newest first, after a failed attach. Errors are printed:
/// the original error is the one to report.
fn detach_all(targets: &[&Path]) {
    for target in targets.iter().rev() {
        if let Err(e) = unmount(*target, UnmountFlags::DETACH) {
            eprintln!(
                "bootc: undoing the mount on {} failed: {e}",
                target.display()
            );
        }
    }
}

/// Check that every bind target inside a pending composefs mount is a
/// directory of the image (a symlink there could send the mount elsewhere).
fn check_targets(pending: &[Pending<'_>]) -> Result<()> {
    for (i, p) in pending.iter().enumerate() {
        let Step::Bind { .. } = p.step else {
            continue;
        };
        // The innermost composefs mount, planned earlier, that contains the target.
        let Some((image_root, rel)) = pending[..i].iter().rev().find_map(|c| {
            let Step::MountComposefs { .. } = c.step else {
                return None;
            };
            let rel = p.target.strip_prefix(c.target).ok()?;
            Some((c, rel))
        }) else {
            continue;
        };
        if rel.as_os_str().is_empty() {
            continue;
        }
        let st = rustix::fs::statat(image_root.mount.as_fd(), rel, AtFlags::SYMLINK_NOFOLLOW)
            .with_context(|| {
                format!(
                    "The image has no directory /{} to mount {} on",
                    rel.display(),
                    p.target.display()
                )
            })?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            bail!(
                "/{} in the image is not a directory; cannot mount {} on it",
                rel.display(),
                p.target.display()
            );
        }
    }
    Ok(())
}

/// A detached copy of the directory `source` (without its submounts).
#[context("Opening {} to bind", source.display())]
fn clone_tree(source: &Path) -> Result<OwnedFd> {
    Ok(open_tree(
        CWD,
        source,
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_SYMLINK_NOFOLLOW,
    )?)
}

/// A detached, read-only mount of composefs image `image` of repository `repo`.
///
/// fs-verity is required when the repository is in secure mode. An insecure
/// repository is mounted without verity even when the image itself has it:
/// a verity-capable kernel enables verity on what it writes, so an insecure
/// store can hold a verity image over objects without verity, and requiring
/// verity there fails every read with EIO.
#[context("Mounting the composefs image from {}", repo.display())]
pub fn mount_composefs(repo: &Path, image: &str, backing: ErofsBacking) -> Result<OwnedFd> {
    let repo = Repository::<Sha256HashValue>::open_path(CWD, repo)
        .with_context(|| format!("Opening composefs repository {}", repo.display()))?;
    if backing == ErofsBacking::Loop {
        return mount_composefs_backed(&repo, image, ErofsBacking::Loop);
    }
    match mount_composefs_backed(&repo, image, ErofsBacking::FileThenLoop) {
        Ok(fd) => Ok(fd),
        // composefs' own chain repeats the id several times; the caller's names it once.
        Err(e) if e.downcast_ref::<composefs::ImageNotFound>().is_some() => {
            bail!("the repository has no image with this id (images/{image})")
        }
        Err(direct) => {
            eprintln!(
                "bootc: mounting the EROFS image file failed ({direct:#}); trying a loop device"
            );
            mount_composefs_backed(&repo, image, ErofsBacking::Loop).map_err(|e| {
                anyhow!("{e:#}; before that, the file-backed mount failed: {direct:#}")
            })
        }
    }
}

/// Whether to make overlayfs check fs-verity of every object.
pub fn verity_requirement(repo_insecure: bool, image_has_verity: bool) -> VerityRequirement {
    if !repo_insecure && image_has_verity {
        VerityRequirement::Required
    } else {
        VerityRequirement::Disabled
    }
}

/// Mount the EROFS image through a loop device (`Loop`) or from its file
/// (anything else; the fallback is the caller's).
#[context("Mounting image {image} ({backing:?})")]
fn mount_composefs_backed(
    repo: &Repository<Sha256HashValue>,
    image: &str,
    backing: ErofsBacking,
) -> Result<OwnedFd> {
    let (image_fd, has_verity) = repo.open_image(image)?;
    let source = match backing {
        ErofsBacking::Loop => {
            composefs_ioctls::loop_device::loopify(&image_fd).context("Creating a loop device")?
        }
        ErofsBacking::FileThenLoop => image_fd,
    };
    let objects = repo
        .objects_dir()
        .context("Opening the repository's objects")?;
    Ok(composefs_fsmount(
        source,
        image,
        &[objects.as_fd()],
        verity_requirement(repo.is_insecure(), has_verity),
        &MountOptions::default(),
    )?)
}

#[cfg(test)]
mod verity_tests {
    use super::*;

    /// Regression: an insecure store written by a host without fs-verity and
    /// then updated by a guest with it holds verity images over objects
    /// without verity; requiring verity there made every read fail (EIO).
    #[test]
    fn insecure_store_never_requires_verity() {
        for (insecure, image_verity, required) in [
            (true, false, false),
            (true, true, false),
            (false, true, true),
            (false, false, false),
        ] {
            assert_eq!(
                verity_requirement(insecure, image_verity) == VerityRequirement::Required,
                required,
                "insecure={insecure} image_verity={image_verity}"
            );
        }
    }
}
