//! Privileged tests: carry out real mount plans on a scratch physical root.
//!
//! They need root and a kernel with EROFS and overlayfs; as another user they
//! print that they were skipped and pass. Each test works in its own
//! temporary directory, bind-mounted on itself to act as the physical root,
//! and unmounts everything it mounted.

use std::path::{Path, PathBuf};

use anyhow::Result;
use bootc_initramfs::cmdline::BootArgs;
use bootc_initramfs::execute::{ErofsBacking, execute};
use bootc_initramfs::plan::plan_mounts;
use composefs::dumpfile::dumpfile_to_filesystem;
use composefs::fsverity::{Algorithm, FsVerityHashValue, Sha256HashValue};
use composefs::repository::{Repository, RepositoryConfig};
use rustix::mount::{UnmountFlags, mount_bind, unmount};

/// A deployment root: the directories the plan binds on, and a file in /usr.
const IMAGE: &str = "/ 0 40755 2 0 0 0 1000.0 - - -
/etc 0 40755 2 0 0 0 1000.0 - - -
/sysroot 0 40755 2 0 0 0 1000.0 - - -
/usr 0 40755 2 0 0 0 1000.0 - - -
/usr/hello 5 100644 1 0 0 0 1000.0 - hello -
/var 0 40755 2 0 0 0 1000.0 - - -
";

/// The same without /sysroot.
const IMAGE_WITHOUT_SYSROOT: &str = "/ 0 40755 2 0 0 0 1000.0 - - -
/etc 0 40755 2 0 0 0 1000.0 - - -
/usr 0 40755 2 0 0 0 1000.0 - - -
/var 0 40755 2 0 0 0 1000.0 - - -
";

/// A physical root in a temporary directory, bind-mounted on itself;
/// everything mounted under it is detached on drop.
struct PhysicalRoot {
    dir: tempfile::TempDir,
}

impl PhysicalRoot {
    fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("bootc-initramfs-test-")
            .tempdir_in("/var/tmp")?;
        mount_bind(dir.path(), dir.path())?;
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Commit a composefs image from a dumpfile and create the state
    /// directories of its deployment; returns the deployment id.
    fn add_deployment(&self, dumpfile: &str) -> Result<String> {
        let config = RepositoryConfig::new(Algorithm::for_hash::<Sha256HashValue>()).set_insecure();
        let (repo, _) = Repository::<Sha256HashValue>::init_path(
            rustix::fs::CWD,
            self.path().join("composefs"),
            config,
        )?;
        let fs = dumpfile_to_filesystem::<Sha256HashValue>(dumpfile)?;
        let id = fs.commit_image(&repo, None)?.to_hex();
        let etc = self.path().join("state/deploy").join(&id).join("etc");
        std::fs::create_dir_all(&etc)?;
        std::fs::write(etc.join("marker"), "deployment etc")?;
        std::fs::create_dir_all(self.path().join("state/os/default/var"))?;
        Ok(id)
    }

    /// The mount points under the physical root, innermost first.
    fn mounts(&self) -> Result<Vec<PathBuf>> {
        let info = std::fs::read_to_string("/proc/self/mountinfo")?;
        let mut found: Vec<PathBuf> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(PathBuf::from)
            .filter(|p| p.starts_with(self.path()))
            .collect();
        found.reverse();
        Ok(found)
    }
}

impl Drop for PhysicalRoot {
    fn drop(&mut self) {
        for m in self.mounts().unwrap_or_default() {
            let _ = unmount(&m, UnmountFlags::DETACH);
        }
    }
}

fn privileged() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("skipped: needs root");
    }
    root
}

fn args(id: &str) -> BootArgs {
    BootArgs {
        deployment: id.into(),
        stateroot: "default".into(),
    }
}

fn check_stacked_root(backing: ErofsBacking) -> Result<()> {
    let root = PhysicalRoot::new()?;
    let id = root.add_deployment(IMAGE)?;
    let r = root.path();
    execute(&plan_mounts(&args(&id), r, r), backing)?;

    assert_eq!(std::fs::read_to_string(r.join("usr/hello"))?, "hello");
    let err = std::fs::write(r.join("usr/new"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc_erofs()), "{err}");
    assert_eq!(
        std::fs::read_to_string(r.join("etc/marker"))?,
        "deployment etc"
    );
    std::fs::write(r.join("var/written"), "x")?;
    assert!(r.join("sysroot/state/os/default/var/written").exists());
    assert!(r.join("sysroot/composefs/meta.json").exists());
    assert!(
        !r.join("composefs").exists(),
        "the new root hides the physical root"
    );
    // The bind-mounted tempdir, the composefs on it, and /etc, /var, /sysroot.
    assert_eq!(root.mounts()?.len(), 5, "{:?}", root.mounts()?);
    Ok(())
}

/// EROFS, the errno for writes to a read-only filesystem.
fn libc_erofs() -> i32 {
    rustix::io::Errno::ROFS.raw_os_error()
}

#[test]
fn stacked_root_file_backed() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    check_stacked_root(ErofsBacking::FileThenLoop)
}

#[test]
fn stacked_root_loop_device() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    check_stacked_root(ErofsBacking::Loop)
}

#[test]
fn image_without_sysroot_leaves_the_root_alone() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let root = PhysicalRoot::new()?;
    let id = root.add_deployment(IMAGE_WITHOUT_SYSROOT)?;
    let r = root.path();
    let err = execute(&plan_mounts(&args(&id), r, r), ErofsBacking::default()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("The image has no directory /sysroot"), "{msg}");
    assert_eq!(root.mounts()?, vec![r.to_owned()]);
    assert!(r.join("composefs/meta.json").exists());
    Ok(())
}

#[test]
fn missing_stateroot() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let root = PhysicalRoot::new()?;
    let id = root.add_deployment(IMAGE)?;
    let r = root.path();
    let mut a = args(&id);
    a.stateroot = "other".into();
    let err = execute(&plan_mounts(&a, r, r), ErofsBacking::default()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("state/os/other/var to bind: No such file or directory"),
        "{msg}"
    );
    assert_eq!(root.mounts()?, vec![r.to_owned()]);
    Ok(())
}
