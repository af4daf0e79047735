//! Deployments in a sysroot: their state directories, /etc and /var, and which one is booted.
//!
//! - [`deployment`]: the `deployment.json` record, creating, loading and listing deployments.
//! - [`image`]: reading a (mounted) image tree: kernel, os-release, files, without
//!   following its symlinks out of it.
//! - [`cmdline`]: the kernel command line and the `composefs=<ID>` selector.
//! - [`copy`]: copying a system tree with owners, modes, xattrs and links.
//! - [`lifecycle`]: `state/staged.json`, pins, deployment tags and removal, and
//!   the kernel arguments of a new deployment.
//!
//! **Architecture invariant**: this crate knows the layout of the physical root
//! filesystem (below) but nothing about bootloaders or partitions.
//!
//! # On-disk layout
//!
//! ```text
//! <sysroot>/composefs/                  the image store (bootc-store)
//! <sysroot>/state/deploy/<ID>/          one directory per deployment; ID = fs-verity id
//!                                       of the deployment's EROFS image
//! <sysroot>/state/deploy/<ID>/etc/      the deployment's writable /etc
//! <sysroot>/state/deploy/<ID>/deployment.json   the record ([`Deployment`])
//! <sysroot>/state/os/<STATEROOT>/var/   the /var shared by the stateroot's deployments
//! <sysroot>/state/staged.json           the staged deployment, not yet in the boot entries
//! <sysroot>/state/deploy/<ID>/pinned    marker: never prune this deployment
//! ```

pub mod cmdline;
pub mod copy;
pub mod deployment;
pub mod image;
pub mod lifecycle;
pub mod trial;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fn_error_context::context;

pub use cmdline::booted_deployment_id;
pub use deployment::{
    Bootloader, Deployment, DeploymentError, KargsSources, NewDeployment, Verity,
    create_deployment, list_deployments, load_deployment,
};
pub use image::{ImageMount, ImageTree, KernelInfo, OsRelease};

/// Deployments, relative to the sysroot.
pub const DEPLOY_DIR: &str = "state/deploy";

/// Stateroots, relative to the sysroot.
pub const OS_DIR: &str = "state/os";

/// The stateroot used when none is given (as upstream bootc).
pub const DEFAULT_STATEROOT: &str = "default";

/// The shared /var of `stateroot` in `sysroot`.
pub fn stateroot_var_dir(sysroot: &Path, stateroot: &str) -> PathBuf {
    sysroot.join(OS_DIR).join(stateroot).join("var")
}

/// Whether `name` can be a stateroot: a non-empty file name of ASCII
/// letters, digits, `-`, `_` and `.`, not starting with `.`.
pub fn is_valid_stateroot(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// [`is_valid_stateroot`] as an error.
pub fn ensure_valid_stateroot(name: &str) -> Result<()> {
    anyhow::ensure!(
        is_valid_stateroot(name),
        "invalid stateroot name {name:?}: use letters, digits, '-', '_' and '.', not starting with '.'"
    );
    Ok(())
}

/// Create the shared /var of `stateroot` from the image's /var.
///
/// Like a Docker `VOLUME`, image content under /var is copied only here, at
/// install: a /var that exists already is left untouched (and `false` is
/// returned). The copy is built beside and renamed into place.
#[context("Initialising /var of stateroot {stateroot}")]
pub fn init_stateroot_var(sysroot: &Path, stateroot: &str, tree: &ImageTree) -> Result<bool> {
    ensure_valid_stateroot(stateroot)?;
    let var = stateroot_var_dir(sysroot, stateroot);
    if var.symlink_metadata().is_ok() {
        return Ok(false);
    }
    let parent = var.parent().expect("has a parent");
    std::fs::create_dir_all(parent).with_context(|| format!("Creating {}", parent.display()))?;
    let tmp = parent.join(".tmp-var");
    if tmp.symlink_metadata().is_ok() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("Removing stale {}", tmp.display()))?;
    }
    match tree.open_dir("var")? {
        Some(fd) => copy::copy_dir_fd(&fd, &tmp)
            .with_context(|| format!("Copying /var of image {}", tree.name()))?,
        None => {
            std::fs::create_dir(&tmp).with_context(|| format!("Creating {}", tmp.display()))?;
        }
    }
    let fd = copy::open_dir(rustix::fs::CWD, &tmp)?;
    rustix::fs::syncfs(&fd).context("Syncing the sysroot")?;
    std::fs::rename(&tmp, &var)
        .with_context(|| format!("Renaming {} to {}", tmp.display(), var.display()))?;
    fsync_dir(parent)?;
    Ok(true)
}

/// fsync the directory `p` (after a rename in it).
pub fn fsync_dir(p: &Path) -> Result<()> {
    let fd = copy::open_dir(rustix::fs::CWD, p)?;
    rustix::fs::fsync(&fd).with_context(|| format!("Syncing {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stateroot_names() {
        for ok in ["default", "os-1", "fedora_40", "a.b"] {
            assert!(is_valid_stateroot(ok), "{ok}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", "ü"] {
            assert!(!is_valid_stateroot(bad), "{bad}");
        }
    }

    #[test]
    fn var_is_copied_once() {
        let td = tempfile::tempdir().unwrap();
        let img = td.path().join("img");
        std::fs::create_dir_all(img.join("var/lib/x")).unwrap();
        std::os::unix::fs::symlink("/run/lock", img.join("var/lock")).unwrap();
        let tree = ImageTree::open(&img, "example").unwrap();
        let sysroot = td.path().join("sysroot");
        assert!(init_stateroot_var(&sysroot, "default", &tree).unwrap());
        let var = sysroot.join("state/os/default/var");
        assert!(var.join("lib/x").is_dir());
        assert_eq!(
            std::fs::read_link(var.join("lock")).unwrap(),
            Path::new("/run/lock")
        );
        std::fs::create_dir(img.join("var/new")).unwrap();
        assert!(!init_stateroot_var(&sysroot, "default", &tree).unwrap());
        assert!(!var.join("new").exists());
    }
}
