//! Checks of the tree's shape: /usr/etc, file names, base directories, /boot.

use std::path::Path;

use anyhow::Result;
use cap_std_ext::cap_std::fs::Dir;
use cap_std_ext::dirext::CapStdExtDirExt;

use crate::walk::{display, walk};
use crate::{Finding, Lint, Severity};

/// `/usr/etc` must not exist.
pub const USR_ETC: Lint = Lint {
    name: "etc-usretc",
    severity: Severity::Error,
    description: "/usr/etc must not exist: bootc keeps the image's /etc defaults there itself",
    run: check_usr_etc,
};

fn check_usr_etc(root: &Dir) -> Result<Vec<Finding>> {
    Ok(match root.symlink_metadata_optional("usr/etc")? {
        Some(_) => vec![Finding::new(
            "usr/etc",
            "present; bootc uses /usr/etc for the image's /etc defaults and would mix the two",
            "move its content to /etc in the Containerfile and remove /usr/etc",
        )],
        None => vec![],
    })
}

/// File names and symlink targets must be UTF-8.
pub const UTF8: Lint = Lint {
    name: "utf8",
    severity: Severity::Error,
    description: "every file name and symlink target is UTF-8",
    run: check_utf8,
};

fn check_utf8(root: &Dir) -> Result<Vec<Finding>> {
    let mut out = Vec::new();
    walk(root, ".", &mut |path: &Path, meta| {
        if path.file_name().and_then(|n| n.to_str()).is_none() {
            // Report the first bad component only, not every child of it.
            if path.parent().is_none_or(|p| p.to_str().is_some()) {
                out.push(Finding::new(
                    display(path),
                    "file name is not UTF-8; image names and the composefs metadata require UTF-8",
                    "rename it (for example with `convmv`) or remove it in the Containerfile",
                ));
            }
        } else if meta.file_type().is_symlink() && path.to_str().is_some() {
            let target = root.read_link_contents(path)?;
            if target.to_str().is_none() {
                out.push(Finding::new(
                    display(path),
                    format!("symlink target {} is not UTF-8", display(&target)),
                    "point the symlink at a UTF-8 path",
                ));
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// Directories the root set-up and systemd need in every image.
const BASE_DIRECTORIES_LIST: &[(&str, &str)] = &[
    ("usr", "the operating system"),
    ("etc", "configuration, merged across updates"),
    ("var", "the mount point of the shared /var"),
    (
        "sysroot",
        "the mount point of the physical root (bootc-initramfs-setup)",
    ),
    ("dev", "devtmpfs"),
    ("proc", "procfs"),
    ("sys", "sysfs"),
    ("run", "runtime tmpfs"),
    ("tmp", "temporary files"),
];

/// The base directories exist.
pub const BASE_DIRECTORIES: Lint = Lint {
    name: "api-base-directories",
    severity: Severity::Error,
    description: "the base directories (/usr /etc /var /sysroot /dev /proc /sys /run /tmp) exist",
    run: check_base_directories,
};

fn check_base_directories(root: &Dir) -> Result<Vec<Finding>> {
    let mut out = Vec::new();
    for (d, what) in BASE_DIRECTORIES_LIST {
        match root.symlink_metadata_optional(d)? {
            Some(m) if m.is_dir() => {}
            Some(_) => out.push(Finding::new(
                d,
                format!("not a directory; it is {what}"),
                format!(
                    "make /{d} an empty directory in the Containerfile (`rm /{d} && mkdir /{d}`)"
                ),
            )),
            None => out.push(Finding::new(
                d,
                format!("missing; it is {what}"),
                format!("create it in the Containerfile (`RUN mkdir -p /{d}`)"),
            )),
        }
    }
    Ok(out)
}

/// /boot is empty.
pub const NONEMPTY_BOOT: Lint = Lint {
    name: "nonempty-boot",
    severity: Severity::Warning,
    description: "/boot is empty: kernels live in /usr/lib/modules and bootc fills /boot",
    run: check_nonempty_boot,
};

fn check_nonempty_boot(root: &Dir) -> Result<Vec<Finding>> {
    let mut out = Vec::new();
    let Some(d) = root.open_dir_optional("boot")? else {
        return Ok(out);
    };
    for n in crate::walk::sorted_names(&d)? {
        out.push(Finding::new(
            display(&Path::new("boot").join(n)),
            "content in /boot is ignored: the image's kernel and initramfs are read from /usr/lib/modules/<kver>/",
            "remove it at the end of the build (`rm -rf /boot/*`); set `do_symlinks = no` in /etc/kernel-img.conf",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{dirs, file, tree};
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn usr_etc() {
        let t = tree();
        assert!(check_usr_etc(&t).unwrap().is_empty());
        file(&t, "usr/etc/passwd", b"");
        let f = check_usr_etc(&t).unwrap();
        assert_eq!(f[0].path, "/usr/etc");
        assert!(f[0].fix.contains("/etc"));
    }

    #[test]
    fn utf8_names_and_targets() {
        let t = tree();
        file(&t, "usr/share/ok-é", b"");
        assert!(check_utf8(&t).unwrap().is_empty());
        let bad = OsStr::from_bytes(b"bad-\xff");
        t.create_dir_all(Path::new("usr/share").join(bad).join("child"))
            .unwrap();
        crate::testutil::symlink(
            &t,
            Path::new(OsStr::from_bytes(b"/x\xfe")),
            "usr/share/link",
        );
        let f = check_utf8(&t).unwrap();
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[0].path, "/usr/share/bad-\\xff");
        assert_eq!(f[1].path, "/usr/share/link");
        assert!(f[1].problem.contains("\\xfe"));
    }

    #[test]
    fn base_directories() {
        let t = tree();
        dirs(
            &t,
            &["usr", "etc", "var", "dev", "proc", "sys", "run", "tmp"],
        );
        file(&t, "sysroot", b"");
        let f = check_base_directories(&t).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].path, "/sysroot");
        assert!(f[0].problem.contains("not a directory"));
        t.remove_file("sysroot").unwrap();
        t.remove_dir("tmp").unwrap();
        t.create_dir("sysroot").unwrap();
        let f = check_base_directories(&t).unwrap();
        assert_eq!((f.len(), f[0].path.as_str()), (1, "/tmp"));
        assert!(f[0].fix.contains("mkdir -p /tmp"));
    }

    #[test]
    fn nonempty_boot() {
        let t = tree();
        dirs(&t, &["boot"]);
        assert!(check_nonempty_boot(&t).unwrap().is_empty());
        file(&t, "boot/vmlinuz-6.1", b"x");
        let f = check_nonempty_boot(&t).unwrap();
        assert_eq!(f[0].path, "/boot/vmlinuz-6.1");
    }
}
