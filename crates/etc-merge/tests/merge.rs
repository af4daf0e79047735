//! End-to-end merges in temporary directories: build pristine, current and
//! new-image trees, merge into an empty target, compare the target and the
//! report with the expectation.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::Result;
use bootc_etc_merge::{MergeReport, merge};
use cap_std_ext::cap_std::fs::{Dir, Permissions, PermissionsExt};
use cap_std_ext::cap_std::{self, fs::MetadataExt};
use cap_tempfile::TempDir;
use rustix::fs::{AtFlags, FileType, Mode};

/// One entry of a tree description.
#[derive(Debug, Clone, Copy)]
enum N {
    /// Regular file with content, mode 0644.
    F(&'static str),
    /// Regular file with content and mode.
    Fm(&'static str, u32),
    /// Directory, mode 0755.
    D,
    /// Directory with mode.
    Dm(u32),
    /// Symlink with target.
    L(&'static str),
}
use N::*;

type Spec = &'static [(&'static str, N)];

struct Case {
    name: &'static str,
    pristine: Spec,
    current: Spec,
    new: Spec,
    /// The whole target tree after the merge.
    expect: Spec,
    added: &'static [&'static str],
    modified: &'static [&'static str],
    removed: &'static [&'static str],
    conflicts: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "unchanged: result is the new image",
        pristine: &[("a", F("1")), ("d", D), ("d/b", F("2"))],
        current: &[("a", F("1")), ("d", D), ("d/b", F("2"))],
        new: &[("a", F("1v2")), ("d", D), ("d/b", F("2"))],
        expect: &[("a", F("1v2")), ("d", D), ("d/b", F("2"))],
        added: &[],
        modified: &[],
        removed: &[],
        conflicts: &[],
    },
    Case {
        name: "local edit of a file v2 also changes: local wins",
        pristine: &[("motd", F("v1"))],
        current: &[("motd", F("local"))],
        new: &[("motd", F("v2"))],
        expect: &[("motd", F("local"))],
        added: &[],
        modified: &["motd"],
        removed: &[],
        conflicts: &[],
    },
    Case {
        name: "local edit of a file v2 leaves alone; other defaults updated",
        pristine: &[("a", F("1")), ("b", F("x"))],
        current: &[("a", F("local")), ("b", F("x"))],
        new: &[("a", F("1")), ("b", F("y"))],
        expect: &[("a", F("local")), ("b", F("y"))],
        added: &[],
        modified: &["a"],
        removed: &[],
        conflicts: &[],
    },
    Case {
        name: "local addition",
        pristine: &[("a", F("1"))],
        current: &[("a", F("1")), ("local.conf", Fm("mine", 0o600))],
        new: &[("a", F("1"))],
        expect: &[("a", F("1")), ("local.conf", Fm("mine", 0o600))],
        added: &["local.conf"],
        modified: &[],
        removed: &[],
        conflicts: &[],
    },
    Case {
        name: "local deletion",
        pristine: &[("a", F("1")), ("b", F("2"))],
        current: &[("a", F("1"))],
        new: &[("a", F("1")), ("b", F("2"))],
        expect: &[("a", F("1"))],
        added: &[],
        modified: &[],
        removed: &["b"],
        conflicts: &[],
    },
    Case {
        // Upstream removes a locally deleted path whatever the new image did.
        name: "local deletion wins over a new-image change",
        pristine: &[("b", F("2"))],
        current: &[],
        new: &[("b", F("2v2"))],
        expect: &[],
        added: &[],
        modified: &[],
        removed: &["b"],
        conflicts: &[],
    },
    Case {
        name: "local deletion of a directory the new image extends",
        pristine: &[("d", D), ("d/a", F("1"))],
        current: &[],
        new: &[("d", D), ("d/a", F("1")), ("d/b", F("new"))],
        expect: &[],
        added: &[],
        modified: &[],
        removed: &["d"],
        conflicts: &[],
    },
    Case {
        name: "new default file in the new image appears",
        pristine: &[("a", F("1"))],
        current: &[("a", F("1"))],
        new: &[("a", F("1")), ("new.d", D), ("new.d/x", F("x"))],
        expect: &[("a", F("1")), ("new.d", D), ("new.d/x", F("x"))],
        added: &[],
        modified: &[],
        removed: &[],
        conflicts: &[],
    },
    Case {
        name: "removed in new image, unchanged locally: gone",
        pristine: &[("a", F("1")), ("old", F("o"))],
        current: &[("a", F("1")), ("old", F("o"))],
        new: &[("a", F("1"))],
        expect: &[("a", F("1"))],
        added: &[],
        modified: &[],
        removed: &[],
        conflicts: &[],
    },
    Case {
        // Upstream copies a modified file whether or not the new image has it.
        name: "removed in new image, modified locally: kept",
        pristine: &[("old", F("o"))],
        current: &[("old", F("mine"))],
        new: &[],
        expect: &[("old", F("mine"))],
        added: &[],
        modified: &["old"],
        removed: &[],
        conflicts: &[],
    },
    Case {
        name: "dropped directory re-created for a local change inside",
        pristine: &[("d", Dm(0o750)), ("d/a", F("1")), ("d/b", F("2"))],
        current: &[
            ("d", Dm(0o750)),
            ("d/a", F("1")),
            ("d/b", F("2")),
            ("d/c", F("3")),
        ],
        new: &[],
        expect: &[("d", Dm(0o750)), ("d/c", F("3"))],
        added: &["d/c"],
        modified: &[],
        removed: &[],
        conflicts: &[],
    },
    Case {
        // The whole local file wins, as upstream: the new content is not taken.
        name: "mode change",
        pristine: &[("a", F("1"))],
        current: &[("a", Fm("1", 0o600))],
        new: &[("a", F("1v2"))],
        expect: &[("a", Fm("1", 0o600))],
        added: &[],
        modified: &["a"],
        removed: &[],
        conflicts: &[],
    },
    Case {
        name: "directory mode change keeps the new image's content",
        pristine: &[("d", D), ("d/a", F("1"))],
        current: &[("d", Dm(0o700)), ("d/a", F("1"))],
        new: &[("d", D), ("d/a", F("1v2")), ("d/n", F("n"))],
        expect: &[("d", Dm(0o700)), ("d/a", F("1v2")), ("d/n", F("n"))],
        added: &[],
        modified: &["d"],
        removed: &[],
        conflicts: &[],
    },
    Case {
        name: "symlink retarget",
        pristine: &[("l", L("a")), ("a", F("1")), ("b", F("2"))],
        current: &[("l", L("b")), ("a", F("1")), ("b", F("2"))],
        new: &[("l", L("a")), ("a", F("1")), ("b", F("2"))],
        expect: &[("a", F("1")), ("b", F("2")), ("l", L("b"))],
        added: &[],
        modified: &["l"],
        removed: &[],
        conflicts: &[],
    },
    Case {
        name: "dir to file conflict: local directory kept",
        pristine: &[("d", D), ("d/a", F("1"))],
        current: &[("d", D), ("d/a", F("1")), ("d/local", F("x"))],
        new: &[("d", F("now a file"))],
        expect: &[("d", D), ("d/a", F("1")), ("d/local", F("x"))],
        added: &["d/local"],
        modified: &[],
        removed: &[],
        conflicts: &["d"],
    },
    Case {
        name: "file to dir conflict: local file kept",
        pristine: &[("f", F("1"))],
        current: &[("f", F("local"))],
        new: &[("f", D), ("f/x", F("x"))],
        expect: &[("f", F("local"))],
        added: &[],
        modified: &["f"],
        removed: &[],
        conflicts: &["f"],
    },
    Case {
        name: "added on both sides as different types: conflict, local kept",
        pristine: &[],
        current: &[("x", D), ("x/y", F("mine"))],
        new: &[("x", F("theirs"))],
        expect: &[("x", D), ("x/y", F("mine"))],
        added: &["x", "x/y"],
        modified: &[],
        removed: &[],
        conflicts: &["x"],
    },
    Case {
        name: "local type change where the image kept the type: no conflict",
        pristine: &[("f", F("1"))],
        current: &[("f", D), ("f/x", F("x"))],
        new: &[("f", F("1v2"))],
        expect: &[("f", D), ("f/x", F("x"))],
        added: &["f/x"],
        modified: &["f"],
        removed: &[],
        conflicts: &[],
    },
    Case {
        name: "nested new directories",
        pristine: &[],
        current: &[
            ("a", D),
            ("a/b", Dm(0o700)),
            ("a/b/c", D),
            ("a/b/c/f", F("deep")),
        ],
        new: &[("z", F("z"))],
        expect: &[
            ("a", D),
            ("a/b", Dm(0o700)),
            ("a/b/c", D),
            ("a/b/c/f", F("deep")),
            ("z", F("z")),
        ],
        added: &["a", "a/b", "a/b/c", "a/b/c/f"],
        modified: &[],
        removed: &[],
        conflicts: &[],
    },
    Case {
        name: "symlink pointing outside is copied as a symlink, never followed",
        pristine: &[],
        current: &[("shadow", L("../../etc/shadow")), ("abs", L("/etc/shadow"))],
        new: &[],
        expect: &[("abs", L("/etc/shadow")), ("shadow", L("../../etc/shadow"))],
        added: &["abs", "shadow"],
        modified: &[],
        removed: &[],
        conflicts: &[],
    },
];

struct Fixture {
    _tmp: TempDir,
    pristine: Dir,
    current: Dir,
    new: Dir,
    target: Dir,
    outside: Dir,
}

fn fixture() -> Result<Fixture> {
    let tmp = cap_tempfile::tempdir(cap_std::ambient_authority())?;
    let open = |name: &str| -> Result<Dir> {
        tmp.create_dir(name)?;
        Ok(tmp.open_dir(name)?)
    };
    Ok(Fixture {
        pristine: open("pristine")?,
        current: open("current")?,
        new: open("new")?,
        target: open("target")?,
        outside: open("outside")?,
        _tmp: tmp,
    })
}

fn build(dir: &Dir, spec: Spec) -> Result<()> {
    for (path, node) in spec {
        if let Some(parent) = Path::new(path).parent()
            && !parent.as_os_str().is_empty()
        {
            dir.create_dir_all(parent)?;
        }
        match *node {
            D | Dm(_) => {
                let mode = if let Dm(m) = *node { m } else { 0o755 };
                dir.create_dir_all(path)?;
                dir.set_permissions(path, Permissions::from_mode(mode))?;
            }
            F(data) | Fm(data, _) => {
                let mode = if let Fm(_, m) = *node { m } else { 0o644 };
                dir.write(path, data)?;
                dir.set_permissions(path, Permissions::from_mode(mode))?;
            }
            L(target) => rustix::fs::symlinkat(target, dir, *path)?,
        }
    }
    Ok(())
}

fn render(path: &str, node: N) -> String {
    match node {
        F(data) => format!("f {path} 644 {data}"),
        Fm(data, mode) => format!("f {path} {mode:o} {data}"),
        D => format!("d {path} 755"),
        Dm(mode) => format!("d {path} {mode:o}"),
        L(target) => format!("l {path} -> {target}"),
    }
}

/// The tree below `dir` as lines in the format of [`render`], in path order.
fn dump(dir: &Dir) -> Result<Vec<String>> {
    let mut out = Vec::new();
    dump_into(dir, Path::new(""), &mut out)?;
    Ok(out)
}

fn dump_into(dir: &Dir, rel: &Path, out: &mut Vec<String>) -> Result<()> {
    let mut names: Vec<_> = dir
        .entries()?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let path = rel.join(&name);
        let p = path.to_string_lossy();
        let meta = dir.symlink_metadata(&name)?;
        let mode = meta.mode() & 0o7777;
        if meta.is_symlink() {
            let target = rustix::fs::readlinkat(dir, &name, Vec::new())?;
            out.push(format!("l {p} -> {}", target.to_string_lossy()));
        } else if meta.is_dir() {
            out.push(format!("d {p} {mode:o}"));
            dump_into(&dir.open_dir(&name)?, &path, out)?;
        } else if meta.is_file() {
            let data = dir.read_to_string(&name)?;
            out.push(format!("f {p} {mode:o} {data}"));
        } else {
            out.push(format!("? {p} {:o}", meta.mode()));
        }
    }
    Ok(())
}

fn strs(paths: &[std::path::PathBuf]) -> Vec<String> {
    let mut v: Vec<String> = paths.iter().map(|p| p.to_string_lossy().into()).collect();
    v.sort();
    v
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

fn run(f: &Fixture) -> Result<MergeReport> {
    merge(&f.pristine, &f.current, &f.new, &f.target)
}

#[test]
fn merge_table() -> Result<()> {
    for case in CASES {
        let f = fixture()?;
        build(&f.pristine, case.pristine)?;
        build(&f.current, case.current)?;
        build(&f.new, case.new)?;
        let report = run(&f).map_err(|e| anyhow::anyhow!("case {}: {e:#}", case.name))?;
        let expect: Vec<String> = case.expect.iter().map(|(p, n)| render(p, *n)).collect();
        assert_eq!(dump(&f.target)?, expect, "case {}: target tree", case.name);
        assert_eq!(
            strs(&report.added),
            sorted(case.added),
            "case {}: added",
            case.name
        );
        assert_eq!(
            strs(&report.modified),
            sorted(case.modified),
            "case {}: modified",
            case.name
        );
        assert_eq!(
            strs(&report.removed),
            sorted(case.removed),
            "case {}: removed",
            case.name
        );
        let conflicts: Vec<_> = report.conflicts.iter().map(|c| c.path.clone()).collect();
        assert_eq!(
            strs(&conflicts),
            sorted(case.conflicts),
            "case {}: conflicts",
            case.name
        );
        assert!(
            report.skipped.is_empty(),
            "case {}: {:?}",
            case.name,
            report.skipped
        );
        // The inputs are untouched.
        let rebuilt = fixture()?;
        build(&rebuilt.current, case.current)?;
        assert_eq!(
            dump(&f.current)?,
            dump(&rebuilt.current)?,
            "case {}: current",
            case.name
        );
    }
    Ok(())
}

/// A new image that turns a locally changed directory into a symlink
/// pointing outside the tree: nothing may be written through it.
#[test]
fn symlink_in_new_image_is_never_written_through() -> Result<()> {
    let f = fixture()?;
    build(&f.pristine, &[("d", D), ("d/a", F("1"))])?;
    build(
        &f.current,
        &[("d", D), ("d/a", F("1")), ("d/x", F("local"))],
    )?;
    let outside = rustix::fs::openat(
        f.outside.as_fd(),
        ".",
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let outside_path =
        rustix::fs::readlink(format!("/proc/self/fd/{}", fd_num(&outside)), Vec::new())?;
    rustix::fs::symlinkat(outside_path.as_c_str(), &f.new, "d")?;
    let report = run(&f)?;
    assert_eq!(
        dump(&f.target)?,
        ["d d 755", "f d/a 644 1", "f d/x 644 local"]
    );
    assert_eq!(dump(&f.outside)?, Vec::<String>::new());
    assert_eq!(report.conflicts.len(), 1);
    assert_eq!(report.conflicts[0].path, Path::new("d"));
    Ok(())
}

fn fd_num(fd: &impl AsFd) -> i32 {
    use std::os::fd::AsRawFd;
    fd.as_fd().as_raw_fd()
}

fn xattrs_supported(dir: &Dir) -> Result<bool> {
    dir.write("probe", "")?;
    let path = format!("/proc/self/fd/{}/probe", fd_num(dir));
    let ok = match rustix::fs::lsetxattr(&path, "user.probe", b"1", rustix::fs::XattrFlags::empty())
    {
        Ok(()) => true,
        Err(rustix::io::Errno::NOTSUP) => false,
        Err(e) => return Err(e.into()),
    };
    dir.remove_file("probe")?;
    Ok(ok)
}

fn get_xattr(dir: &Dir, name: &str, attr: &str) -> Result<Option<Vec<u8>>> {
    let path = format!("/proc/self/fd/{}/{name}", fd_num(dir));
    let mut buf = vec![0u8; 256];
    match rustix::fs::lgetxattr(&path, attr, &mut buf[..]) {
        Ok(n) => Ok(Some(buf[..n].to_vec())),
        Err(rustix::io::Errno::NODATA) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn set_xattr(dir: &Dir, name: &str, attr: &str, value: &[u8]) -> Result<()> {
    let path = format!("/proc/self/fd/{}/{name}", fd_num(dir));
    rustix::fs::lsetxattr(&path, attr, value, rustix::fs::XattrFlags::empty())?;
    Ok(())
}

#[test]
fn xattr_changes_are_carried() -> Result<()> {
    let f = fixture()?;
    if !xattrs_supported(&f.current)? {
        eprintln!("skipping: user xattrs not supported here");
        return Ok(());
    }
    let files: Spec = &[
        ("added", F("1")),
        ("dropped", F("2")),
        ("same", F("3")),
        ("d", D),
    ];
    build(&f.pristine, &files[1..])?;
    build(&f.current, files)?;
    build(&f.new, &files[1..])?;
    set_xattr(&f.pristine, "dropped", "user.a", b"old")?;
    set_xattr(&f.new, "dropped", "user.a", b"old")?;
    set_xattr(&f.current, "added", "user.b", b"new")?;
    set_xattr(&f.current, "d", "user.dir", b"yes")?;
    set_xattr(&f.new, "same", "user.image", b"v2")?;
    let report = run(&f)?;
    assert_eq!(
        get_xattr(&f.target, "added", "user.b")?.as_deref(),
        Some(&b"new"[..])
    );
    assert_eq!(get_xattr(&f.target, "dropped", "user.a")?, None);
    assert_eq!(
        get_xattr(&f.target, "d", "user.dir")?.as_deref(),
        Some(&b"yes"[..])
    );
    assert_eq!(
        get_xattr(&f.target, "same", "user.image")?.as_deref(),
        Some(&b"v2"[..])
    );
    assert_eq!(strs(&report.modified), ["d", "dropped"]);
    assert_eq!(strs(&report.added), ["added"]);
    Ok(())
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[test]
fn owner_change_is_carried() -> Result<()> {
    if !is_root() {
        eprintln!("skipping: changing owners needs root");
        return Ok(());
    }
    let f = fixture()?;
    let files: Spec = &[("a", F("1")), ("d", D), ("l", L("a"))];
    build(&f.pristine, files)?;
    build(&f.current, files)?;
    build(&f.new, &[("a", F("1v2")), ("d", D), ("l", L("a"))])?;
    for name in ["a", "d", "l"] {
        rustix::fs::chownat(
            &f.current,
            name,
            Some(rustix::fs::Uid::from_raw(1234)),
            Some(rustix::fs::Gid::from_raw(4321)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
    }
    let report = run(&f)?;
    for name in ["a", "d", "l"] {
        let meta = f.target.symlink_metadata(name)?;
        assert_eq!((meta.uid(), meta.gid()), (1234, 4321), "{name}");
    }
    // Owner change only: the whole local file still wins.
    assert_eq!(f.target.read_to_string("a")?, "1");
    assert_eq!(strs(&report.modified), ["a", "d", "l"]);
    Ok(())
}

#[test]
fn special_files() -> Result<()> {
    let f = fixture()?;
    rustix::fs::mknodat(
        &f.current,
        "fifo",
        FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )?;
    let null = rustix::fs::makedev(1, 3);
    let dev = rustix::fs::mknodat(
        &f.current,
        "null",
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        null,
    );
    let have_dev = dev.is_ok();
    let report = run(&f)?;
    assert!(!f.target.try_exists("fifo")?);
    let skipped: Vec<_> = report.skipped.iter().map(|s| s.path.clone()).collect();
    assert_eq!(strs(&skipped), ["fifo"]);
    if have_dev {
        let meta = f.target.symlink_metadata("null")?;
        assert_eq!(meta.rdev(), null);
        let local = f.current.symlink_metadata("null")?;
        assert_eq!(meta.mode(), local.mode());
        assert_eq!(strs(&report.added), ["null"]);
    }
    Ok(())
}

#[test]
fn target_must_be_empty() -> Result<()> {
    let f = fixture()?;
    f.target.write("stale", "")?;
    let err = run(&f).unwrap_err();
    assert!(format!("{err:#}").contains("not empty"), "{err:#}");
    Ok(())
}

#[test]
fn report_renders_and_serializes() -> Result<()> {
    let f = fixture()?;
    build(&f.pristine, &[("gone", F("1")), ("f", F("1"))])?;
    build(&f.current, &[("f", F("2")), ("new", F("n"))])?;
    build(&f.new, &[("gone", F("1")), ("f", D)])?;
    let report = run(&f)?;
    assert_eq!(
        report.to_string(),
        "added: new\n\
         modified: f\n\
         removed: gone\n\
         conflict: f: locally a regular file, a directory in the new image; keeping the local regular file\n"
    );
    let json = serde_json::to_value(&report)?;
    assert_eq!(
        json,
        serde_json::json!({
            "added": ["new"],
            "modified": ["f"],
            "removed": ["gone"],
            "conflicts": [{
                "path": "f",
                "reason": "locally a regular file, a directory in the new image; keeping the local regular file"
            }],
            "skipped": [],
        })
    );
    Ok(())
}

#[test]
fn non_utf8_names() -> Result<()> {
    let f = fixture()?;
    let name = OsStr::from_bytes(b"caf\xe9");
    f.current.write(name, "x")?;
    let report = run(&f)?;
    assert_eq!(f.target.read_to_string(name)?, "x");
    let json = serde_json::to_value(&report)?;
    assert_eq!(json["added"][0], "caf\u{fffd}");
    Ok(())
}
