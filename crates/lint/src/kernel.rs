//! The kernel of the image: exactly one `/usr/lib/modules/<kver>` with
//! `vmlinuz` and `initramfs.img`, and in that initramfs our root set-up
//! (`bootc-initramfs-setup` and what starts it: the dracut module's systemd
//! unit or the initramfs-tools local-bottom script).

use anyhow::{Context, Result};
use cap_std_ext::cap_std::fs::Dir;
use cap_std_ext::dirext::CapStdExtDirExt;

use crate::{Finding, Lint, Severity, cpio};

const MODULES: &str = "usr/lib/modules";

/// One kernel with its initramfs.
pub const KERNEL: Lint = Lint {
    name: "kernel",
    severity: Severity::Error,
    description: "exactly one kernel, /usr/lib/modules/<kver>/vmlinuz, with its initramfs.img",
    run: check_kernel,
};

/// The initramfs mounts the deployment.
pub const INITRAMFS_ROOT_SETUP: Lint = Lint {
    name: "initramfs-root-setup",
    severity: Severity::Error,
    description: "the kernel's initramfs contains bootc-initramfs-setup and starts it (dracut module 50bootc or the initramfs-tools hook)",
    run: check_initramfs,
};

/// The `<kver>` directories of /usr/lib/modules that hold a `vmlinuz`,
/// and those that do not (module trees of a removed kernel, for example).
fn kernel_dirs(root: &Dir) -> Result<(Vec<String>, Vec<String>)> {
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let Some(d) = root.open_dir_optional(MODULES)? else {
        return Ok((with, without));
    };
    for e in d.entries()? {
        let e = e?;
        if !e.file_type()?.is_dir() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        let has = d
            .symlink_metadata_optional(format!("{name}/vmlinuz"))?
            .is_some_and(|m| m.is_file());
        if has {
            with.push(name)
        } else {
            without.push(name)
        }
    }
    with.sort();
    without.sort();
    Ok((with, without))
}

fn check_kernel(root: &Dir) -> Result<Vec<Finding>> {
    let (kernels, _) = kernel_dirs(root)?;
    let mut out = Vec::new();
    match kernels.as_slice() {
        [] => out.push(Finding::new(
            MODULES,
            "no kernel: no /usr/lib/modules/<kver>/vmlinuz, so the image cannot boot",
            "install a kernel package and copy its image to /usr/lib/modules/<kver>/vmlinuz",
        )),
        [k] => {
            let initramfs = format!("{MODULES}/{k}/initramfs.img");
            if !root.symlink_metadata_optional(&initramfs)?.is_some_and(|m| m.is_file()) {
                out.push(Finding::new(
                    &initramfs,
                    format!("missing: kernel {k} has no initramfs, so the deployment cannot be mounted at boot"),
                    format!("generate it in the build: `dracut --force --kver {k} /{initramfs}`"),
                ));
            }
        }
        many => out.push(Finding::new(
            MODULES,
            format!("{} kernels ({}); bootc boots exactly one kernel per image", many.len(), many.join(", ")),
            "remove all kernels but one (`apt-get purge` the others, then `rm -rf /usr/lib/modules/<kver>`)",
        )),
    }
    Ok(out)
}

/// What our root set-up looks like inside an initramfs; `Ok` or what is missing.
pub fn root_setup_missing(members: &[cpio::Member]) -> Option<&'static str> {
    let has = |pred: &dyn Fn(&str) -> bool| members.iter().any(|m| pred(&m.name));
    let binary = has(&|n| n == "usr/bin/bootc-initramfs-setup" || n == "bin/bootc-initramfs-setup");
    if !binary {
        return Some("usr/bin/bootc-initramfs-setup is not in it");
    }
    let unit = has(&|n| n.ends_with("systemd/system/bootc-initramfs-setup.service"));
    let unit_enabled = has(&|n| {
        n.ends_with(".requires/bootc-initramfs-setup.service")
            || n.ends_with(".wants/bootc-initramfs-setup.service")
    });
    let script = has(&|n| n == "scripts/local-bottom/bootc");
    match (unit, unit_enabled, script) {
        (_, _, true) | (true, true, _) => None,
        (true, false, false) => Some("bootc-initramfs-setup.service is in it but not enabled"),
        (false, _, false) => Some(
            "nothing in it starts bootc-initramfs-setup (no bootc-initramfs-setup.service, no scripts/local-bottom/bootc)",
        ),
    }
}

fn check_initramfs(root: &Dir) -> Result<Vec<Finding>> {
    let (kernels, _) = kernel_dirs(root)?;
    // Zero or several kernels: the `kernel` check reports it.
    let [k] = kernels.as_slice() else {
        return Ok(vec![]);
    };
    let path = format!("{MODULES}/{k}/initramfs.img");
    let Some(image) = root
        .read_optional(&path)
        .with_context(|| format!("Reading /{path}"))?
    else {
        return Ok(vec![]);
    };
    let fix = format!(
        "install the dracut module as /usr/lib/dracut/modules.d/50bootc and the binary as /usr/lib/bootc/bootc-initramfs-setup (the bootc package does both), then regenerate: `dracut --force --kver {k} /{path}`; with initramfs-tools, install its hook and scripts/local-bottom/bootc and run `update-initramfs`"
    );
    let members = match cpio::members(&image) {
        Ok(m) => m,
        Err(e) => {
            return Ok(vec![Finding::new(
                &path,
                format!("cannot read the initramfs: {e:#}"),
                "generate it with dracut or initramfs-tools, compressed with zstd or gzip",
            )]);
        }
    };
    Ok(match root_setup_missing(&members) {
        None => vec![],
        Some(why) => vec![Finding::new(
            &path,
            format!("no bootc root set-up: {why}, so the deployment is not mounted as / at boot"),
            fix,
        )],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::build;
    use crate::testutil::{dirs, file, tree};

    const K: &str = "usr/lib/modules/6.12.0-1-amd64";

    fn dracut_initramfs() -> Vec<u8> {
        let img = build(&[
            ("usr/bin/bootc-initramfs-setup", 0o100755, b"\x7fELF"),
            (
                "usr/lib/systemd/system/bootc-initramfs-setup.service",
                0o100644,
                b"[Unit]",
            ),
            (
                "etc/systemd/system/initrd-root-fs.target.requires/bootc-initramfs-setup.service",
                0o120777,
                b"/usr/lib/systemd/system/bootc-initramfs-setup.service",
            ),
        ]);
        zstd::encode_all(&img[..], 3).unwrap()
    }

    #[test]
    fn kernel_counts() {
        let t = tree();
        let f = check_kernel(&t).unwrap();
        assert!(f[0].problem.contains("no kernel"));
        file(&t, &format!("{K}/vmlinuz"), b"k");
        dirs(&t, &["usr/lib/modules/5.10-old/kernel"]);
        let f = check_kernel(&t).unwrap();
        assert_eq!(f[0].path, format!("/{K}/initramfs.img"));
        assert!(f[0].fix.contains("dracut --force --kver 6.12.0-1-amd64"));
        file(&t, &format!("{K}/initramfs.img"), &dracut_initramfs());
        assert!(check_kernel(&t).unwrap().is_empty());
        file(&t, "usr/lib/modules/6.13/vmlinuz", b"k");
        let f = check_kernel(&t).unwrap();
        assert!(
            f[0].problem.contains("2 kernels (6.12.0-1-amd64, 6.13)"),
            "{}",
            f[0].problem
        );
    }

    #[test]
    fn initramfs_root_setup() {
        let t = tree();
        file(&t, &format!("{K}/vmlinuz"), b"k");
        file(&t, &format!("{K}/initramfs.img"), &dracut_initramfs());
        assert!(check_initramfs(&t).unwrap().is_empty());

        // initramfs-tools, gzip, microcode first.
        let mut img = build(&[("kernel/x86/microcode/AuthenticAMD.bin", 0o100644, b"u")]);
        let main = build(&[
            ("bin/bootc-initramfs-setup", 0o100755, b"\x7fELF"),
            ("scripts/local-bottom/bootc", 0o100755, b"#!/bin/sh"),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &main).unwrap();
        img.extend(gz.finish().unwrap());
        file(&t, &format!("{K}/initramfs.img"), &img);
        assert!(check_initramfs(&t).unwrap().is_empty());

        // A plain initramfs without the module.
        let plain = build(&[("usr/bin/systemd", 0o100755, b"")]);
        file(
            &t,
            &format!("{K}/initramfs.img"),
            &zstd::encode_all(&plain[..], 1).unwrap(),
        );
        let f = check_initramfs(&t).unwrap();
        assert_eq!(f[0].path, format!("/{K}/initramfs.img"));
        assert!(
            f[0].problem.contains("bootc-initramfs-setup is not in it"),
            "{}",
            f[0].problem
        );
        assert!(f[0].fix.contains("50bootc"));

        // The unit without its enablement link.
        let half = build(&[
            ("usr/bin/bootc-initramfs-setup", 0o100755, b""),
            (
                "usr/lib/systemd/system/bootc-initramfs-setup.service",
                0o100644,
                b"",
            ),
        ]);
        file(&t, &format!("{K}/initramfs.img"), &half);
        let f = check_initramfs(&t).unwrap();
        assert!(f[0].problem.contains("not enabled"), "{}", f[0].problem);

        // Unreadable.
        file(&t, &format!("{K}/initramfs.img"), b"\x04\x22\x4d\x18lz4");
        let f = check_initramfs(&t).unwrap();
        assert!(f[0].problem.contains("cannot read"), "{}", f[0].problem);
    }
}
