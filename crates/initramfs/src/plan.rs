//! The mount plan: which mounts turn the physical root into the deployment's root.
//!
//! The plan is plain data so it can be tested and printed (`--dry-run`)
//! without privileges; [`crate::execute`] carries it out.
//!
//! For the physical root `R` (`/sysroot` in the initramfs), deployment `ID`
//! and stateroot `S`, with the new root stacked on `R` itself:
//!
//! 1. make `R` a private mount, so the copies taken of it below do not
//!    receive the mounts later attached on top of it;
//! 2. mount the composefs image `ID` of the repository `R/composefs`
//!    read-only on `R`;
//! 3. bind `R/state/deploy/ID/etc` on `R/etc` (writable);
//! 4. bind `R/state/os/S/var` on `R/var` (writable);
//! 5. bind the physical root `R` on `R/sysroot`.
//!
//! Sources are taken **before** anything is attached (see
//! [`crate::execute`]), so in steps 3 to 5 a source under `R` still names the
//! physical root although the new root hides it by then. The result is what
//! systemd's switch-root expects: `/sysroot` is the deployment, and the
//! physical root is at `/sysroot/sysroot`. The physical root stays mounted
//! underneath, so systemd's `sysroot.mount` never sees `/sysroot` go away.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::cmdline::BootArgs;

/// The composefs repository, relative to the physical root.
pub const REPO_DIR: &str = "composefs";

/// Per-deployment state, relative to the physical root: `<dir>/<ID>/etc`.
pub const DEPLOY_DIR: &str = "state/deploy";

/// Per-stateroot state, relative to the physical root: `<dir>/<STATEROOT>/var`.
pub const STATEROOT_DIR: &str = "state/os";

/// Where the physical root appears inside the new root (an empty directory the
/// image must have).
pub const PHYSICAL_ROOT_MOUNTPOINT: &str = "sysroot";

/// One mount operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Make the mount at `path` private (no propagation to or from peers).
    MakePrivate {
        /// An existing mount point.
        path: PathBuf,
    },
    /// Mount composefs image `image` of the repository `repo`, read-only, at `target`.
    MountComposefs {
        /// The composefs repository directory.
        repo: PathBuf,
        /// The image name: its fs-verity digest in hex.
        image: String,
        /// Where the image is mounted.
        target: PathBuf,
    },
    /// Bind the directory `source` (not its submounts) on `target`.
    Bind {
        /// The directory to bind, resolved before any mount of the plan is attached.
        source: PathBuf,
        /// Where it is attached.
        target: PathBuf,
    },
}

/// The mounts that set up one deployment, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    /// The deployment id, for messages.
    pub deployment: String,
    /// The steps, executed in order (sources are opened first, see [`crate::execute`]).
    pub steps: Vec<Step>,
}

/// Compute the mounts that put the deployment named by `args` on `target`,
/// taking its state from the physical root `root`.
///
/// In the initramfs `root` and `target` are both `/sysroot`: the new root is
/// stacked on the physical root.
pub fn plan_mounts(args: &BootArgs, root: &Path, target: &Path) -> MountPlan {
    let steps = vec![
        Step::MakePrivate {
            path: root.to_owned(),
        },
        Step::MountComposefs {
            repo: root.join(REPO_DIR),
            image: args.deployment.clone(),
            target: target.to_owned(),
        },
        Step::Bind {
            source: root.join(DEPLOY_DIR).join(&args.deployment).join("etc"),
            target: target.join("etc"),
        },
        Step::Bind {
            source: root.join(STATEROOT_DIR).join(&args.stateroot).join("var"),
            target: target.join("var"),
        },
        Step::Bind {
            source: root.to_owned(),
            target: target.join(PHYSICAL_ROOT_MOUNTPOINT),
        },
    ];
    MountPlan {
        deployment: args.deployment.clone(),
        steps,
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::MakePrivate { path } => write!(f, "make-private {}", path.display()),
            Step::MountComposefs {
                repo,
                image,
                target,
            } => write!(
                f,
                "mount-composefs {image} of {} on {} (read-only)",
                repo.display(),
                target.display()
            ),
            Step::Bind { source, target } => {
                write!(f, "bind {} on {}", source.display(), target.display())
            }
        }
    }
}

impl fmt::Display for MountPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "deployment {}", self.deployment)?;
        for step in &self.steps {
            writeln!(f, "{step}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1c3b0e8a4d5c6b7a8998877665544332211ffeeddccbbaa00112233445566a";

    fn check(stateroot: &str, root: &str, target: &str, expect: &str) {
        let args = BootArgs {
            deployment: ID.into(),
            stateroot: stateroot.into(),
        };
        let plan = plan_mounts(&args, Path::new(root), Path::new(target));
        assert_eq!(plan.to_string().replace(ID, "<ID>"), expect);
    }

    #[test]
    fn initramfs_plan() {
        check(
            "default",
            "/sysroot",
            "/sysroot",
            "deployment <ID>
make-private /sysroot
mount-composefs <ID> of /sysroot/composefs on /sysroot (read-only)
bind /sysroot/state/deploy/<ID>/etc on /sysroot/etc
bind /sysroot/state/os/default/var on /sysroot/var
bind /sysroot on /sysroot/sysroot
",
        );
    }

    #[test]
    fn separate_target() {
        check(
            "prod",
            "/tmp/s",
            "/tmp/new",
            "deployment <ID>
make-private /tmp/s
mount-composefs <ID> of /tmp/s/composefs on /tmp/new (read-only)
bind /tmp/s/state/deploy/<ID>/etc on /tmp/new/etc
bind /tmp/s/state/os/prod/var on /tmp/new/var
bind /tmp/s on /tmp/new/sysroot
",
        );
    }
}
