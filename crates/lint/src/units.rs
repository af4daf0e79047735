//! bootc's systemd units in the image.
//!
//! `bootc-finalize-staged.service` has no `[Install]` section: `bootc
//! upgrade` and `switch` start it after staging, and its stop job at
//! shutdown finalizes the staged deployment. "Enabled" therefore means it
//! can be started: the unit is installed in /usr/lib/systemd/system, not
//! masked, and the bootc it runs exists.

use anyhow::Result;
use cap_std_ext::cap_std::fs::Dir;
use cap_std_ext::dirext::CapStdExtDirExt;

use crate::{Finding, Lint, Severity};

const UNIT: &str = "bootc-finalize-staged.service";

/// The finalize unit is usable.
pub const FINALIZE_STAGED: Lint = Lint {
    name: "finalize-staged-unit",
    severity: Severity::Error,
    description: "bootc-finalize-staged.service is installed, not masked, and runs an existing bootc (without it a staged update is never applied)",
    run: check_finalize_staged,
};

fn check_finalize_staged(root: &Dir) -> Result<Vec<Finding>> {
    let mut out = Vec::new();
    let fix_install = "install the bootc package (or copy contrib/systemd/bootc-finalize-staged.service to /usr/lib/systemd/system/)";
    let mut text = None;
    for dir in [
        "etc/systemd/system",
        "usr/lib/systemd/system",
        "lib/systemd/system",
    ] {
        let path = format!("{dir}/{UNIT}");
        let Some(m) = root.symlink_metadata_optional(&path)? else {
            continue;
        };
        if m.is_symlink() {
            let t = root.read_link_contents(&path)?;
            if t.as_os_str() == "/dev/null" {
                out.push(Finding::new(
                    &path,
                    "masked (a symlink to /dev/null): staged updates would never be finalized at shutdown",
                    format!("unmask it: `systemctl unmask {UNIT}` (or remove /{path})"),
                ));
                return Ok(out);
            }
        }
        if m.is_file() {
            text = root.read_to_string_optional(&path)?;
            break;
        }
    }
    let Some(text) = text else {
        out.push(Finding::new(
            format!("usr/lib/systemd/system/{UNIT}"),
            "missing: `bootc upgrade` stages updates that nothing finalizes at shutdown",
            fix_install,
        ));
        return Ok(out);
    };
    for line in text.lines() {
        let Some(cmd) = line.trim().strip_prefix("ExecStop=") else {
            continue;
        };
        let bin = cmd
            .trim_start_matches(['-', '@', '+', '!', ':'])
            .split_whitespace()
            .next()
            .unwrap_or("");
        if !root
            .symlink_metadata_optional(bin.trim_start_matches('/'))?
            .is_some()
        {
            out.push(Finding::new(
                bin,
                format!("{UNIT} runs {bin} at shutdown, which the image does not have"),
                "install bootc at that path (the bootc package puts it in /usr/bin/bootc)",
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{file, tree};

    const TEXT: &[u8] =
        b"[Service]\nExecStart=/bin/true\nExecStop=/usr/bin/bootc internals finalize-staged\n";

    #[test]
    fn finalize_staged() {
        let t = tree();
        let f = check_finalize_staged(&t).unwrap();
        assert_eq!(
            f[0].path,
            "/usr/lib/systemd/system/bootc-finalize-staged.service"
        );
        file(
            &t,
            "usr/lib/systemd/system/bootc-finalize-staged.service",
            TEXT,
        );
        let f = check_finalize_staged(&t).unwrap();
        assert_eq!(f[0].path, "/usr/bin/bootc");
        file(&t, "usr/bin/bootc", b"\x7fELF");
        assert!(check_finalize_staged(&t).unwrap().is_empty());
        t.create_dir_all("etc/systemd/system").unwrap();
        crate::testutil::symlink(
            &t,
            "/dev/null",
            "etc/systemd/system/bootc-finalize-staged.service",
        );
        let f = check_finalize_staged(&t).unwrap();
        assert!(f[0].problem.starts_with("masked"));
        assert!(f[0].fix.contains("systemctl unmask"));
    }
}
