//! /var and /run in the image. bootc gives every deployment one shared,
//! writable /var: the image's /var is copied to it only when the system is
//! installed, and later images never change it. /run is a tmpfs at boot, so
//! whatever the image has there is hidden. What must exist in /var at boot is
//! made by systemd-tmpfiles (tmpfiles.d) and its users by systemd-sysusers
//! (sysusers.d), on every boot of every deployment.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Result;
use cap_std_ext::cap_std::fs::{Dir, MetadataExt};
use cap_std_ext::dirext::CapStdExtDirExt;

use crate::walk::{display, walk};
use crate::{Finding, Lint, Severity};

/// /var/run is a symlink to /run.
pub const VAR_RUN: Lint = Lint {
    name: "var-run",
    severity: Severity::Error,
    description: "/var/run is a symlink to /run (never a directory)",
    run: check_var_run,
};

/// /var content comes from tmpfiles.d.
pub const VAR_CONTENT: Lint = Lint {
    name: "var-tmpfiles",
    severity: Severity::Warning,
    description: "content in /var is created by tmpfiles.d (the image's /var is applied only at install, never on update)",
    run: check_var_content,
};

/// /run is empty.
pub const RUN_CONTENT: Lint = Lint {
    name: "run-content",
    severity: Severity::Warning,
    description: "/run is empty in the image (it is a tmpfs at boot, hiding anything there)",
    run: check_run_content,
};

/// Owners of /var content are declared.
pub const VAR_OWNERS: Lint = Lint {
    name: "sysusers",
    severity: Severity::Warning,
    description: "users and groups owning content in /var are declared by sysusers.d or set by a tmpfiles.d line",
    run: check_var_owners,
};

const TMPFILES_DIRS: &[&str] = &["usr/lib/tmpfiles.d", "etc/tmpfiles.d"];
const SYSUSERS_DIRS: &[&str] = &["usr/lib/sysusers.d", "etc/sysusers.d"];

fn check_var_run(root: &Dir) -> Result<Vec<Finding>> {
    let Some(m) = root.symlink_metadata_optional("var/run")? else {
        return Ok(vec![]);
    };
    let fix = "replace it with a symlink: `rm -rf /var/run && ln -s ../run /var/run`";
    if !m.is_symlink() {
        return Ok(vec![Finding::new(
            "var/run",
            "a directory, not a symlink to /run; programs writing there would fill the persistent /var",
            fix,
        )]);
    }
    let target = root.read_link_contents("var/run")?;
    if target != Path::new("/run") && target != Path::new("../run") {
        return Ok(vec![Finding::new(
            "var/run",
            format!("symlink to {}, not to /run", display(&target)),
            fix,
        )]);
    }
    Ok(vec![])
}

/// One tmpfiles.d line: its type and the user and group it sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfilesEntry {
    /// The type letter, without modifiers (`d`, `L`, ...).
    pub kind: char,
    /// The user column, `None` for `-`.
    pub user: Option<String>,
    /// The group column, `None` for `-`.
    pub group: Option<String>,
}

/// Parse tmpfiles.d text: path -> entry (the last line for a path wins).
pub fn parse_tmpfiles(text: &str, out: &mut BTreeMap<String, TmpfilesEntry>) {
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (Some(ty), Some(path)) = (cols.first(), cols.get(1)) else {
            continue;
        };
        let Some(kind) = ty.chars().next() else {
            continue;
        };
        let col = |i: usize| cols.get(i).filter(|c| **c != "-").map(|c| c.to_string());
        out.insert(
            path.trim_end_matches('/').to_string(),
            TmpfilesEntry {
                kind,
                user: col(3),
                group: col(4),
            },
        );
    }
}

/// Parse sysusers.d text into the user and group names it declares.
pub fn parse_sysusers(text: &str, users: &mut BTreeSet<String>, groups: &mut BTreeSet<String>) {
    for line in text.lines() {
        let mut cols = line.split_whitespace();
        let (Some(kind), Some(name)) = (cols.next(), cols.next()) else {
            continue;
        };
        match kind {
            // `u` also creates a group of the same name.
            "u" | "u!" => {
                users.insert(name.to_string());
                groups.insert(name.to_string());
            }
            "g" => {
                groups.insert(name.to_string());
            }
            // `m USER GROUP`: membership, declares neither.
            _ => {}
        }
    }
}

/// The text of every `*.conf` of `dirs`, a file in a later directory
/// replacing one of the same name.
fn conf_files(root: &Dir, dirs: &[&str]) -> Result<Vec<String>> {
    let mut by_name = BTreeMap::new();
    for dir in dirs {
        let Some(d) = root.open_dir_optional(dir)? else {
            continue;
        };
        for e in d.entries()? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".conf") && e.file_type()?.is_file() {
                by_name.insert(
                    name.clone(),
                    String::from_utf8_lossy(&d.read(&name)?).into_owned(),
                );
            }
        }
    }
    Ok(by_name.into_values().collect())
}

fn tmpfiles(root: &Dir) -> Result<BTreeMap<String, TmpfilesEntry>> {
    let mut m = BTreeMap::new();
    for text in conf_files(root, TMPFILES_DIRS)? {
        parse_tmpfiles(&text, &mut m);
    }
    Ok(m)
}

/// Types that create the path (rather than clean, remove or relabel it).
fn creates(kind: char) -> bool {
    matches!(
        kind,
        'f' | 'w' | 'd' | 'D' | 'v' | 'q' | 'Q' | 'p' | 'L' | 'c' | 'b' | 'C'
    )
}

fn check_var_content(root: &Dir) -> Result<Vec<Finding>> {
    let tf = tmpfiles(root)?;
    let mut out = Vec::new();
    let mut reported: Vec<PathBuf> = Vec::new();
    walk(root, "var", &mut |path, meta| {
        if reported.iter().any(|r| path.starts_with(r)) {
            return Ok(());
        }
        let abs = display(path);
        if path == Path::new("var/run") || tf.get(&abs).is_some_and(|e| creates(e.kind)) {
            return Ok(());
        }
        // The directories leading to a tmpfiles.d path are made by it.
        let prefix = format!("{abs}/");
        if meta.is_dir()
            && tf
                .iter()
                .any(|(p, e)| creates(e.kind) && p.starts_with(&prefix))
        {
            return Ok(());
        }
        let what = if meta.is_dir() {
            "directory"
        } else if meta.file_type().is_symlink() {
            "symlink"
        } else {
            "file"
        };
        let line = if meta.is_dir() {
            format!("d {abs} {:04o} root root -", meta.mode() & 0o7777)
        } else if meta.file_type().is_symlink() {
            let t = root.read_link_contents(path)?;
            format!("L {abs} - - - - {}", t.display())
        } else {
            format!("C {abs} - - - - /usr/share/factory{abs}")
        };
        out.push(Finding::new(
            &abs,
            format!("{what} in the image's /var without a tmpfiles.d entry: it is copied only when the system is installed and never updated by later images"),
            format!("remove it from the image and create it at boot with a line `{line}` in /usr/lib/tmpfiles.d/<name>.conf (or keep static data in /usr)"),
        ));
        reported.push(path.to_path_buf());
        Ok(())
    })?;
    Ok(out)
}

fn check_run_content(root: &Dir) -> Result<Vec<Finding>> {
    let mut out = Vec::new();
    // A mount point (the build's /run) is skipped: that is not image content.
    let Some(m) = root.symlink_metadata_optional("run")? else {
        return Ok(out);
    };
    if !m.is_dir() || root.is_mountpoint("run")?.unwrap_or(false) {
        return Ok(out);
    }
    let Some(d) = root.open_dir_optional("run")? else {
        return Ok(out);
    };
    for n in crate::walk::sorted_names(&d)? {
        // Injected by podman/buildah into every RUN step, not image content.
        if n == ".containerenv" {
            continue;
        }
        let p = Path::new("run").join(&n);
        out.push(Finding::new(
            display(&p),
            "content in the image's /run is hidden at boot by the /run tmpfs",
            format!("remove it at the end of the build (`rm -rf {}`); create runtime files with tmpfiles.d or the unit's RuntimeDirectory=", display(&p)),
        ));
    }
    Ok(out)
}

/// `name:x:id:...` files (passwd, group): id -> name.
fn id_names(text: &str) -> BTreeMap<u32, String> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let id = f.nth(1)?.parse().ok()?;
            Some((id, name.to_string()))
        })
        .collect()
}

fn check_var_owners(root: &Dir) -> Result<Vec<Finding>> {
    let read =
        |p: &str| -> Result<String> { Ok(root.read_to_string_optional(p)?.unwrap_or_default()) };
    let passwd = id_names(&read("etc/passwd")?);
    let group = id_names(&read("etc/group")?);
    let (mut users, mut groups) = (BTreeSet::new(), BTreeSet::new());
    for text in conf_files(root, SYSUSERS_DIRS)? {
        parse_sysusers(&text, &mut users, &mut groups);
    }
    let tf = tmpfiles(root)?;
    // (kind, id) -> (first path, count)
    let mut bad: BTreeMap<(&'static str, u32), (String, Option<String>, usize)> = BTreeMap::new();
    walk(root, "var", &mut |path, meta| {
        let abs = display(path);
        let entry = tf.get(&abs);
        for (kind, id, names, declared, set_by_tmpfiles) in [
            (
                "user",
                meta.uid(),
                &passwd,
                &users,
                entry.and_then(|e| e.user.clone()),
            ),
            (
                "group",
                meta.gid(),
                &group,
                &groups,
                entry.and_then(|e| e.group.clone()),
            ),
        ] {
            if id == 0 {
                continue;
            }
            let name = names.get(&id).cloned();
            if set_by_tmpfiles.is_some() {
                continue;
            }
            if name.as_ref().is_some_and(|n| declared.contains(n)) {
                continue;
            }
            let e = bad.entry((kind, id)).or_insert((abs.clone(), name, 0));
            e.2 += 1;
        }
        Ok(())
    })?;
    Ok(bad
        .into_iter()
        .map(|((kind, id), (path, name, count))| {
            let who = match &name {
                Some(n) => format!("{kind} {n} ({id})"),
                None => format!("{kind} id {id}, which has no name in /etc/{}", if kind == "user" { "passwd" } else { "group" }),
            };
            let more = if count > 1 { format!(" (and {} more paths)", count - 1) } else { String::new() };
            let n = name.unwrap_or_else(|| "NAME".into());
            let line = if kind == "user" { format!("u {n} {id}") } else { format!("g {n} {id}") };
            Finding::new(
                &path,
                format!("owned by {who}, which no sysusers.d file declares{more}: on an installed system that id may belong to someone else or to nobody"),
                format!("declare it with `{line}` in /usr/lib/sysusers.d/<name>.conf, or set the owner with a tmpfiles.d line for {path}"),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{dirs, file, tree};
    use rustix::fs::{AtFlags, Gid, Uid, chownat};

    #[test]
    fn var_run() {
        let t = tree();
        dirs(&t, &["var"]);
        assert!(check_var_run(&t).unwrap().is_empty());
        crate::testutil::symlink(&t, "../run", "var/run");
        assert!(check_var_run(&t).unwrap().is_empty());
        t.remove_file("var/run").unwrap();
        crate::testutil::symlink(&t, "/tmp", "var/run");
        assert!(check_var_run(&t).unwrap()[0].problem.contains("/tmp"));
        t.remove_file("var/run").unwrap();
        dirs(&t, &["var/run"]);
        let f = check_var_run(&t).unwrap();
        assert_eq!(f[0].path, "/var/run");
        assert!(f[0].fix.contains("ln -s ../run /var/run"));
    }

    #[test]
    fn var_content() {
        let t = tree();
        dirs(&t, &["var/lib/app/state", "var/home", "var/tmp"]);
        crate::testutil::symlink(&t, "../run/lock", "var/lock");
        file(&t, "usr/lib/tmpfiles.d/app.conf", b"d /var/home 0755 root root -\nL /var/lock - - - - ../run/lock\nq /var/tmp 1777 root root 30d\n");
        file(&t, "var/lib/app/state/db", b"data");
        let f = check_var_content(&t).unwrap();
        // Only the topmost uncovered directory is reported.
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].path, "/var/lib");
        assert!(
            f[0].fix.contains("d /var/lib 0755 root root -"),
            "{}",
            f[0].fix
        );
        // A tmpfiles path below a directory covers the directories to it.
        file(
            &t,
            "etc/tmpfiles.d/state.conf",
            b"d /var/lib/app/state 0700 root root -\n",
        );
        let f = check_var_content(&t).unwrap();
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].path, "/var/lib/app/state/db");
        assert!(f[0].problem.starts_with("file"));
    }

    #[test]
    fn run_content() {
        let t = tree();
        dirs(&t, &["run"]);
        file(&t, "run/.containerenv", b"engine=\"podman\"");
        assert!(check_run_content(&t).unwrap().is_empty());
        file(&t, "run/adduser", b"");
        let f = check_run_content(&t).unwrap();
        assert_eq!(f[0].path, "/run/adduser");
        assert!(f[0].fix.contains("rm -rf /run/adduser"));
    }

    #[test]
    fn parsers() {
        let mut m = BTreeMap::new();
        parse_tmpfiles(
            "# c\n\nd /var/x/ 0755 app - -\nL+ /var/y - - - - /z\n",
            &mut m,
        );
        assert_eq!(m["/var/x"].user.as_deref(), Some("app"));
        assert_eq!(m["/var/x"].group, None);
        assert_eq!(m["/var/y"].kind, 'L');
        let (mut u, mut g) = (BTreeSet::new(), BTreeSet::new());
        parse_sysusers(
            "u app 990 \"App\" /var/lib/app\ng web -\nm app web\n",
            &mut u,
            &mut g,
        );
        assert_eq!(u.into_iter().collect::<Vec<_>>(), ["app"]);
        assert_eq!(g.into_iter().collect::<Vec<_>>(), ["app", "web"]);
    }

    #[test]
    fn var_owners() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: chown needs root");
            return;
        }
        let t = tree();
        file(
            &t,
            "etc/passwd",
            b"root:x:0:0::/root:/bin/sh\napp:x:990:990::/:/bin/false\nok:x:991:991::/:/bin/false\n",
        );
        file(&t, "etc/group", b"root:x:0:\napp:x:990:\nok:x:991:\n");
        file(&t, "usr/lib/sysusers.d/ok.conf", b"u ok 991\n");
        file(&t, "var/lib/app/a", b"");
        file(&t, "var/lib/app/b", b"");
        file(&t, "var/lib/ok/c", b"");
        file(&t, "var/lib/num/d", b"");
        file(&t, "var/lib/tf/e", b"");
        file(
            &t,
            "usr/lib/tmpfiles.d/tf.conf",
            b"d /var/lib/tf 0755 app app -\n",
        );
        let own = |p: &str, id: u32| {
            chownat(
                &*t,
                p,
                Some(Uid::from_raw(id)),
                Some(Gid::from_raw(id)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .unwrap()
        };
        own("var/lib/app/a", 990);
        own("var/lib/app/b", 990);
        own("var/lib/ok/c", 991);
        own("var/lib/num/d", 4242);
        own("var/lib/tf", 990);
        assert!(check_var_owners(&t).is_ok());
        let f = check_var_owners(&t).unwrap();
        let summary: Vec<_> = f
            .iter()
            .map(|f| (f.path.as_str(), f.problem.split(',').next().unwrap()))
            .collect();
        assert_eq!(
            summary,
            [
                ("/var/lib/app/a", "owned by group app (990)"),
                ("/var/lib/num/d", "owned by group id 4242"),
                ("/var/lib/app/a", "owned by user app (990)"),
                ("/var/lib/num/d", "owned by user id 4242"),
            ]
        );
        assert!(f[0].problem.contains("and 1 more paths"));
        assert!(f[2].problem.contains("and 1 more paths"));
        assert!(f[2].fix.contains("u app 990"));
    }
}
