//! The lifecycle state of a sysroot beside its deployments, which the
//! engine's transactions (`bootc-deploy`) share: the staged deployment
//! (`state/staged.json`), pins (`state/deploy/<ID>/pinned`), the store tag
//! of each deployment, removing a deployment directory, and the kernel
//! arguments of a new deployment (kargs.d changes and named sources).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fn_error_context::context;
use serde::{Deserialize, Serialize};

use crate::deployment::KargsSources;

/// The staged-deployment marker, relative to the sysroot.
pub const STAGED_JSON: &str = "state/staged.json";

/// The pin marker's file name in a deployment directory.
pub const PINNED: &str = "pinned";

/// `state/staged.json`: a deployment that is ready but not yet in the boot
/// entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Staged {
    /// The staged deployment's id.
    pub id: String,
    /// Whether it must not be finalized until asked (upstream's
    /// `--download-only`).
    #[serde(default)]
    pub download_only: bool,
    /// When it was staged (RFC 3339, UTC).
    pub staged_at: String,
    /// Keep image names that no deployment uses any more when pruning at
    /// finalization (`switch --retain`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retain: bool,
}

/// The path of `state/staged.json` in `sysroot`.
pub fn staged_path(sysroot: &Path) -> PathBuf {
    sysroot.join(STAGED_JSON)
}

/// The staged deployment of `sysroot`, if any.
#[context("Reading the staged deployment of {}", sysroot.display())]
pub fn read_staged(sysroot: &Path) -> Result<Option<Staged>> {
    let p = staged_path(sysroot);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("Reading {}", p.display())),
    };
    let s: Staged =
        serde_json::from_str(&text).with_context(|| format!("Parsing {}", p.display()))?;
    anyhow::ensure!(
        crate::cmdline::is_valid_id(&s.id),
        "{} names an invalid deployment id {:?}",
        p.display(),
        s.id
    );
    Ok(Some(s))
}

/// Write `state/staged.json` atomically (temporary file, fsync, rename).
#[context("Writing {}", staged_path(sysroot).display())]
pub fn write_staged(sysroot: &Path, staged: &Staged) -> Result<()> {
    use cap_std_ext::cap_std::{ambient_authority, fs::Dir};
    use cap_std_ext::dirext::CapStdExtDirExt;
    let dir = sysroot.join("state");
    std::fs::create_dir_all(&dir).with_context(|| format!("Creating {}", dir.display()))?;
    let d = Dir::open_ambient_dir(&dir, ambient_authority())?;
    let mut json = serde_json::to_string_pretty(staged).expect("plain struct serialises");
    json.push('\n');
    d.atomic_write("staged.json", json)?;
    crate::fsync_dir(&dir)
}

/// Remove `state/staged.json` (no error when absent).
#[context("Removing {}", staged_path(sysroot).display())]
pub fn remove_staged(sysroot: &Path) -> Result<()> {
    match std::fs::remove_file(staged_path(sysroot)) {
        Ok(()) => crate::fsync_dir(&sysroot.join("state")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether deployment `id` is pinned (kept by pruning).
pub fn is_pinned(sysroot: &Path, id: &str) -> bool {
    crate::deployment::deployment_dir(sysroot, id)
        .join(PINNED)
        .exists()
}

/// Pin (`true`) or unpin deployment `id`: create or remove its `pinned`
/// marker, then sync the deployment directory. Returns whether the pin
/// state changed.
#[context("Setting the pin of deployment {id}")]
pub fn set_pinned(sysroot: &Path, id: &str, pinned: bool) -> Result<bool> {
    anyhow::ensure!(
        crate::cmdline::is_valid_id(id),
        "invalid deployment id {id:?}"
    );
    let dir = crate::deployment::deployment_dir(sysroot, id);
    anyhow::ensure!(dir.is_dir(), "no deployment {id} in {}", sysroot.display());
    let marker = dir.join(PINNED);
    let changed = match (pinned, marker.exists()) {
        (true, false) => {
            std::fs::File::create(&marker)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("Creating {}", marker.display()))?;
            true
        }
        (false, true) => {
            std::fs::remove_file(&marker)
                .with_context(|| format!("Removing {}", marker.display()))?;
            true
        }
        _ => false,
    };
    if changed {
        crate::fsync_dir(&dir)?;
    }
    Ok(changed)
}

/// The store tag that keeps deployment `id`'s image (manifest, config and
/// layers) alive while the deployment exists, whatever its image name
/// points at later.
pub fn deployment_tag(id: &str) -> String {
    format!("{}deployment-{id}", bootc_store::PIN_PREFIX)
}

/// Delete the directory of deployment `id`: renamed to a `.tmp-` name first
/// so a crash never leaves a half-deleted deployment under its real name.
#[context("Removing deployment {id}")]
pub fn remove_deployment_dir(sysroot: &Path, id: &str) -> Result<()> {
    anyhow::ensure!(
        crate::cmdline::is_valid_id(id),
        "invalid deployment id {id:?}"
    );
    let parent = crate::deployment::deploy_dir(sysroot);
    let dir = parent.join(id);
    if dir.symlink_metadata().is_err() {
        return Ok(());
    }
    let tmp = parent.join(format!(".tmp-rm-{id}"));
    if tmp.symlink_metadata().is_ok() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("Removing stale {}", tmp.display()))?;
    }
    std::fs::rename(&dir, &tmp)
        .with_context(|| format!("Renaming {} to {}", dir.display(), tmp.display()))?;
    crate::fsync_dir(&parent)?;
    std::fs::remove_dir_all(&tmp).with_context(|| format!("Removing {}", tmp.display()))
}

/// The kernel arguments of a deployment made from an update of `base`:
///
/// - `composefs=` names `new_id`;
/// - each argument of the old image's kargs.d that the new image's kargs.d
///   no longer has is removed (one occurrence each);
/// - each argument the new image's kargs.d added is appended;
/// - everything else (`root=`, install-time and local arguments) is kept in
///   its place.
pub fn update_kargs(
    base: &[String],
    old_kargs_d: &[String],
    new_kargs_d: &[String],
    new_id: &str,
) -> Vec<String> {
    let removed = multiset_minus(old_kargs_d, new_kargs_d);
    let added = multiset_minus(new_kargs_d, old_kargs_d);
    let mut out: Vec<String> = Vec::with_capacity(base.len() + added.len());
    let mut to_remove = removed;
    for a in base {
        if let Some(pos) = to_remove.iter().position(|r| r == a) {
            to_remove.remove(pos);
            continue;
        }
        if a.starts_with(&format!("{}=", crate::cmdline::DEPLOYMENT_KARG)) {
            out.push(format!("{}={new_id}", crate::cmdline::DEPLOYMENT_KARG));
        } else {
            out.push(a.clone());
        }
    }
    if !out
        .iter()
        .any(|a| a.starts_with(&format!("{}=", crate::cmdline::DEPLOYMENT_KARG)))
    {
        out.push(format!("{}={new_id}", crate::cmdline::DEPLOYMENT_KARG));
    }
    out.extend(added);
    out
}

/// Whether `name` can name a source of kernel arguments: non-empty ASCII
/// letters, digits, `-` and `_` (as upstream bootc).
pub fn is_valid_source_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// The arguments of a source's `--options` text, split on whitespace.
///
/// Refused: double quotes (a quoted argument with spaces cannot be kept
/// through our records and entries, so it is not accepted rather than
/// mangled) and the arguments that select the deployment and its stateroot
/// (`composefs=`, `bootc.stateroot=`), which only bootc sets.
pub fn parse_source_options(options: &str) -> Result<Vec<String>> {
    let args: Vec<String> = options.split_whitespace().map(str::to_owned).collect();
    for a in &args {
        anyhow::ensure!(
            !a.contains('"'),
            "Kernel argument {a:?} contains a double quote; quoted arguments are not supported"
        );
        let key = a.split_once('=').map_or(a.as_str(), |(k, _)| k);
        anyhow::ensure!(
            key != crate::cmdline::DEPLOYMENT_KARG && key != crate::cmdline::STATEROOT_KARG,
            "Kernel argument {a:?} selects the deployment; only bootc sets it"
        );
    }
    Ok(args)
}

/// `kargs` without the arguments that `sources` own: for each owned
/// argument its last occurrence is removed (sources' arguments are kept at
/// the end of the command line, so these are the sources' copies even when
/// kargs.d or an admin has the same argument). An owned argument missing
/// from `kargs` is skipped.
pub fn strip_source_kargs(kargs: &[String], sources: &KargsSources) -> Vec<String> {
    let mut out = kargs.to_vec();
    for a in sources.values().flatten() {
        if let Some(p) = out.iter().rposition(|x| x == a) {
            out.remove(p);
        }
    }
    out
}

/// `rest` followed by every source's arguments, sources in name order.
pub fn append_source_kargs(mut rest: Vec<String>, sources: &KargsSources) -> Vec<String> {
    rest.extend(sources.values().flatten().cloned());
    rest
}

/// The command line and sources after source `name` sets its arguments to
/// `new` (`bootc loader-entries set-options-for-source`): its previous
/// arguments are removed, `new` is appended after the other sources'
/// (sources in name order); an empty `new` removes the source. Arguments
/// owned by nobody (root=, kargs.d, install-time, an admin's) stay as they
/// are, in place.
pub fn set_source_kargs(
    kargs: &[String],
    sources: &KargsSources,
    name: &str,
    new: &[String],
) -> (Vec<String>, KargsSources) {
    let mut next = sources.clone();
    if new.is_empty() {
        next.remove(name);
    } else {
        next.insert(name.to_owned(), new.to_vec());
    }
    let rest = strip_source_kargs(kargs, sources);
    (append_source_kargs(rest, &next), next)
}

/// The kernel arguments of a deployment made from an update of `base`
/// whose arguments `sources` own: [`update_kargs`] applied to the
/// arguments no source owns, then the sources' arguments appended
/// unchanged, so a kargs.d change never removes a source's copy of an
/// argument and sources carry over to every new deployment.
pub fn carry_kargs(
    base: &[String],
    sources: &KargsSources,
    old_kargs_d: &[String],
    new_kargs_d: &[String],
    new_id: &str,
) -> Vec<String> {
    let rest = strip_source_kargs(base, sources);
    append_source_kargs(
        update_kargs(&rest, old_kargs_d, new_kargs_d, new_id),
        sources,
    )
}

/// `a` minus `b`, as multisets, in the order of `a`.
fn multiset_minus(a: &[String], b: &[String]) -> Vec<String> {
    let mut rest: Vec<&String> = b.iter().collect();
    a.iter()
        .filter(|x| match rest.iter().position(|r| r == x) {
            Some(p) => {
                rest.remove(p);
                false
            }
            None => true,
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn kargs_table() {
        // (base, old kargs.d, new kargs.d, expected)
        type Case<'a> = (&'a [&'a str], &'a [&'a str], &'a [&'a str], &'a [&'a str]);
        let cases: &[Case] = &[
            // unchanged kargs.d: only composefs= changes
            (
                &["root=UUID=u", "rw", "composefs=old", "console=ttyS0", "x=1"],
                &["console=ttyS0"],
                &["console=ttyS0"],
                &["root=UUID=u", "rw", "composefs=new", "console=ttyS0", "x=1"],
            ),
            // added and removed
            (
                &["rw", "composefs=old", "a", "quiet", "local"],
                &["a", "quiet"],
                &["a", "b=2"],
                &["rw", "composefs=new", "a", "local", "b=2"],
            ),
            // a local copy of a removed kargs.d arg: one occurrence goes
            (
                &["composefs=old", "quiet", "quiet"],
                &["quiet"],
                &[],
                &["composefs=new", "quiet"],
            ),
            // no composefs= in the base: added
            (&["rw"], &[], &["n"], &["rw", "composefs=new", "n"]),
            // removed arg absent from base (admin deleted it): nothing to do
            (
                &["composefs=old"],
                &["gone"],
                &["gone2"],
                &["composefs=new", "gone2"],
            ),
        ];
        for (base, old, new, expect) in cases {
            assert_eq!(
                update_kargs(&s(base), &s(old), &s(new), "new"),
                s(expect),
                "{base:?} {old:?} {new:?}"
            );
        }
    }

    fn sources(v: &[(&str, &[&str])]) -> KargsSources {
        v.iter().map(|(k, a)| (k.to_string(), s(a))).collect()
    }

    #[test]
    fn source_kargs_table() {
        // (kargs, sources, source, new options, expected kargs, expected sources)
        type Case<'a> = (
            &'a [&'a str],
            &'a [(&'a str, &'a [&'a str])],
            &'a str,
            &'a [&'a str],
            &'a [&'a str],
            &'a [(&'a str, &'a [&'a str])],
        );
        let cases: &[Case] = &[
            // a first source: appended
            (
                &["root=UUID=u", "rw", "composefs=x", "quiet"],
                &[],
                "tuned",
                &["isolcpus=1-3", "nohz=full"],
                &[
                    "root=UUID=u",
                    "rw",
                    "composefs=x",
                    "quiet",
                    "isolcpus=1-3",
                    "nohz=full",
                ],
                &[("tuned", &["isolcpus=1-3", "nohz=full"])],
            ),
            // replaced: only its own arguments change
            (
                &["rw", "quiet", "isolcpus=1-3", "nohz=full"],
                &[("tuned", &["isolcpus=1-3", "nohz=full"])],
                "tuned",
                &["isolcpus=0-7"],
                &["rw", "quiet", "isolcpus=0-7"],
                &[("tuned", &["isolcpus=0-7"])],
            ),
            // removed (empty options)
            (
                &["rw", "quiet", "isolcpus=1-3"],
                &[("tuned", &["isolcpus=1-3"])],
                "tuned",
                &[],
                &["rw", "quiet"],
                &[],
            ),
            // removing a source that does not exist: nothing changes
            (&["rw", "quiet"], &[], "tuned", &[], &["rw", "quiet"], &[]),
            // another source is kept; sources stay in name order at the end
            (
                &["rw", "a=1", "t=1"],
                &[("admin", &["a=1"]), ("tuned", &["t=1"])],
                "dracut",
                &["rd.x=1"],
                &["rw", "a=1", "rd.x=1", "t=1"],
                &[
                    ("admin", &["a=1"]),
                    ("dracut", &["rd.x=1"]),
                    ("tuned", &["t=1"]),
                ],
            ),
            // a source sets an argument kargs.d has already: removing it
            // later leaves the kargs.d copy
            (
                &["rw", "quiet", "quiet"],
                &[("tuned", &["quiet"])],
                "tuned",
                &[],
                &["rw", "quiet"],
                &[],
            ),
            (
                &["rw", "quiet"],
                &[],
                "tuned",
                &["quiet"],
                &["rw", "quiet", "quiet"],
                &[("tuned", &["quiet"])],
            ),
            // two sources own the same argument: one copy each
            (
                &["rw", "x", "x"],
                &[("a", &["x"]), ("b", &["x"])],
                "a",
                &[],
                &["rw", "x"],
                &[("b", &["x"])],
            ),
            // an owned argument someone removed by hand: skipped
            (
                &["rw"],
                &[("tuned", &["gone"])],
                "tuned",
                &["new"],
                &["rw", "new"],
                &[("tuned", &["new"])],
            ),
        ];
        for (kargs, srcs, name, new, ekargs, esrcs) in cases {
            let (k, so) = set_source_kargs(&s(kargs), &sources(srcs), name, &s(new));
            assert_eq!(
                (k, so),
                (s(ekargs), sources(esrcs)),
                "{kargs:?} {name} {new:?}"
            );
        }
    }

    #[test]
    fn carry_kargs_table() {
        // (base, sources, old kargs.d, new kargs.d, expected)
        type Case<'a> = (
            &'a [&'a str],
            &'a [(&'a str, &'a [&'a str])],
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
        );
        let cases: &[Case] = &[
            // sources carried, after the kargs.d additions
            (
                &["rw", "composefs=old", "k", "isolcpus=1"],
                &[("tuned", &["isolcpus=1"])],
                &["k"],
                &["k", "k2"],
                &["rw", "composefs=new", "k", "k2", "isolcpus=1"],
            ),
            // kargs.d drops an argument a source also owns: the source's stays
            (
                &["composefs=old", "quiet", "quiet"],
                &[("tuned", &["quiet"])],
                &["quiet"],
                &[],
                &["composefs=new", "quiet"],
            ),
            // no sources: as update_kargs
            (
                &["composefs=old", "a"],
                &[],
                &["a"],
                &["b"],
                &["composefs=new", "b"],
            ),
        ];
        for (base, srcs, old, new, expect) in cases {
            assert_eq!(
                carry_kargs(&s(base), &sources(srcs), &s(old), &s(new), "new"),
                s(expect),
                "{base:?} {srcs:?}"
            );
        }
    }

    #[test]
    fn source_input_table() {
        for ok in ["tuned", "a-b_C9", "x"] {
            assert!(is_valid_source_name(ok), "{ok}");
        }
        for bad in ["", "a b", "a/b", "a.b", "ü", "a=b"] {
            assert!(!is_valid_source_name(bad), "{bad}");
        }
        let cases: &[(&str, Option<&[&str]>)] = &[
            ("", Some(&[])),
            ("  a=1\tb  ", Some(&["a=1", "b"])),
            (
                "nohz=full isolcpus=1-3",
                Some(&["nohz=full", "isolcpus=1-3"]),
            ),
            ("dyndbg=\"file x +p\"", None),
            ("composefs=abc", None),
            ("bootc.stateroot=x", None),
            ("composefs", None),
            ("xcomposefs=1", Some(&["xcomposefs=1"])),
        ];
        for (input, expect) in cases {
            let got = parse_source_options(input).ok();
            assert_eq!(got, expect.map(s), "{input:?}");
        }
    }

    #[test]
    fn pin_and_unpin() {
        let td = tempfile::tempdir().unwrap();
        let id = "ef".repeat(32);
        assert!(set_pinned(td.path(), &id, true).is_err());
        std::fs::create_dir_all(crate::deployment::deployment_dir(td.path(), &id)).unwrap();
        assert!(set_pinned(td.path(), &id, true).unwrap());
        assert!(!set_pinned(td.path(), &id, true).unwrap());
        assert!(is_pinned(td.path(), &id));
        assert!(set_pinned(td.path(), &id, false).unwrap());
        assert!(!set_pinned(td.path(), &id, false).unwrap());
        assert!(!is_pinned(td.path(), &id));
        assert!(set_pinned(td.path(), "../x", true).is_err());
    }

    #[test]
    fn staged_round_trip() {
        let td = tempfile::tempdir().unwrap();
        assert_eq!(read_staged(td.path()).unwrap(), None);
        let st = Staged {
            id: "ab".repeat(32),
            download_only: false,
            staged_at: "2026-01-01T00:00:00Z".into(),
            retain: false,
        };
        write_staged(td.path(), &st).unwrap();
        let text = std::fs::read_to_string(staged_path(td.path())).unwrap();
        assert!(text.contains("\"downloadOnly\": false"), "{text}");
        assert!(text.contains("\"stagedAt\""), "{text}");
        assert_eq!(read_staged(td.path()).unwrap(), Some(st));
        remove_staged(td.path()).unwrap();
        remove_staged(td.path()).unwrap();
        assert_eq!(read_staged(td.path()).unwrap(), None);
    }

    #[test]
    fn removes_deployment_dirs() {
        let td = tempfile::tempdir().unwrap();
        let id = "cd".repeat(32);
        let dir = crate::deployment::deployment_dir(td.path(), &id);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        assert!(!is_pinned(td.path(), &id));
        std::fs::write(dir.join(PINNED), "").unwrap();
        assert!(is_pinned(td.path(), &id));
        remove_deployment_dir(td.path(), &id).unwrap();
        assert!(!dir.exists());
        remove_deployment_dir(td.path(), &id).unwrap();
        assert!(remove_deployment_dir(td.path(), "../x").is_err());
    }
}
