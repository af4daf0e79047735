//! Checks that the image's bootc configuration parses: kargs.d and install
//! drop-ins, read with the same parsers `bootc install` and `upgrade` use.

use anyhow::Result;
use bootc_install::config::{
    INSTALL_CONFIG_DIRS, KARGS_DIR, parse_install_config, parse_kargs_file,
};
use cap_std_ext::cap_std::fs::Dir;
use cap_std_ext::dirext::CapStdExtDirExt;

use crate::{Finding, Lint, Severity};

/// kargs.d drop-ins parse.
pub const KARGS: Lint = Lint {
    name: "bootc-kargs",
    severity: Severity::Error,
    description: "/usr/lib/bootc/kargs.d/*.toml are valid (`kargs = [...]`, optional `match-architectures`)",
    run: check_kargs,
};

/// Install drop-ins parse.
pub const INSTALL_CONFIG: Lint = Lint {
    name: "install-config",
    severity: Severity::Error,
    description: "/usr/lib/bootc/install/*.toml and /etc/bootc/install/*.toml are valid install configuration",
    run: check_install_config,
};

/// `(path, text or a finding)` of every `*.toml` in `dir`, sorted.
fn dropins(root: &Dir, dir: &str, out: &mut Vec<Finding>) -> Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    let Some(d) = root.open_dir_optional(dir)? else {
        return Ok(files);
    };
    for e in d.entries()? {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.ends_with(".toml") || !e.file_type()?.is_file() {
            continue;
        }
        let path = format!("/{dir}/{name}");
        match String::from_utf8(d.read(name)?) {
            Ok(text) => files.push((path, text)),
            Err(_) => out.push(Finding::new(
                &path,
                "not UTF-8 text, so not TOML",
                "rewrite it as UTF-8 TOML",
            )),
        }
    }
    files.sort();
    Ok(files)
}

/// The parser's message without our context line (the path is in the finding).
fn reason(e: &anyhow::Error) -> String {
    e.chain()
        .skip(1)
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
        .trim()
        .replace('\n', " ")
}

fn check_kargs(root: &Dir) -> Result<Vec<Finding>> {
    let mut out = Vec::new();
    for (path, text) in dropins(root, KARGS_DIR, &mut out)? {
        if let Err(e) = parse_kargs_file(&path, &text) {
            out.push(Finding::new(
                &path,
                format!("invalid kargs.d file: {}", reason(&e)),
                "write `kargs = [\"arg=value\", ...]` and optionally `match-architectures = [\"x86_64\"]`, nothing else",
            ));
        }
    }
    Ok(out)
}

fn check_install_config(root: &Dir) -> Result<Vec<Finding>> {
    let mut out = Vec::new();
    for dir in INSTALL_CONFIG_DIRS {
        for (path, text) in dropins(root, dir, &mut out)? {
            if let Err(e) = parse_install_config(&path, &text) {
                out.push(Finding::new(
                    &path,
                    format!("invalid install configuration: {}", reason(&e)),
                    "fix the `[install]` table (for example `root-fs-type = \"ext4\"`, `kargs = [...]`); `bootc install print-configuration` shows the merged result",
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{file, tree};

    #[test]
    fn kargs() {
        let t = tree();
        file(
            &t,
            "usr/lib/bootc/kargs.d/00-ok.toml",
            b"kargs = [\"quiet\"]\n",
        );
        file(&t, "usr/lib/bootc/kargs.d/README", b"not toml");
        assert!(check_kargs(&t).unwrap().is_empty());
        file(
            &t,
            "usr/lib/bootc/kargs.d/10-bad.toml",
            b"kargs = \"quiet\"\n",
        );
        file(
            &t,
            "usr/lib/bootc/kargs.d/20-typo.toml",
            b"karg = [\"x\"]\n",
        );
        let f = check_kargs(&t).unwrap();
        let paths: Vec<_> = f.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/usr/lib/bootc/kargs.d/10-bad.toml",
                "/usr/lib/bootc/kargs.d/20-typo.toml"
            ]
        );
        assert!(f[1].problem.contains("karg"), "{}", f[1].problem);
        assert!(f[0].fix.contains("kargs = ["));
    }

    #[test]
    fn install_config() {
        let t = tree();
        file(
            &t,
            "usr/lib/bootc/install/00-ok.toml",
            b"[install]\nroot-fs-type = \"xfs\"\n",
        );
        assert!(check_install_config(&t).unwrap().is_empty());
        file(
            &t,
            "etc/bootc/install/10-bad.toml",
            b"[install]\nroot-fs-type = \"zfs\"\n",
        );
        file(&t, "usr/lib/bootc/install/20-syntax.toml", b"[install\n");
        let f = check_install_config(&t).unwrap();
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[0].path, "/usr/lib/bootc/install/20-syntax.toml");
        assert_eq!(f[1].path, "/etc/bootc/install/10-bad.toml");
        assert!(f[1].problem.contains("zfs"), "{}", f[1].problem);
    }
}
