//! Walking an image tree: no symlink is followed and no mount point entered
//! (inside a build, /proc, /sys and /dev are mounts of the build host).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cap_std_ext::cap_std::fs::{Dir, Metadata};
use cap_std_ext::dirext::CapStdExtDirExt;

/// Call `f` for every entry below `start` (a directory relative to `root`,
/// `"."` for all of it), parents before children, each with its path
/// relative to `root` and its own (not followed) metadata. A missing `start`
/// is no error.
pub(crate) fn walk(
    root: &Dir,
    start: &str,
    f: &mut dyn FnMut(&Path, &Metadata) -> Result<()>,
) -> Result<()> {
    let d = if start == "." {
        root.try_clone().context("Duplicating the root handle")?
    } else {
        match root.symlink_metadata_optional(start)? {
            Some(m) if m.is_dir() => match root.open_dir_noxdev(start)? {
                Some(d) => d,
                None => return Ok(()),
            },
            _ => return Ok(()),
        }
    };
    let base = if start == "." {
        PathBuf::new()
    } else {
        PathBuf::from(start)
    };
    walk_dir(&d, &base, f)
}

fn walk_dir(d: &Dir, base: &Path, f: &mut dyn FnMut(&Path, &Metadata) -> Result<()>) -> Result<()> {
    let mut entries = Vec::new();
    for e in d
        .entries()
        .with_context(|| format!("Reading directory /{}", base.display()))?
    {
        let e = e.with_context(|| format!("Reading directory /{}", base.display()))?;
        entries.push(e);
    }
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let path = base.join(&name);
        let meta = e
            .metadata()
            .with_context(|| format!("Reading metadata of /{}", path.display()))?;
        f(&path, &meta)?;
        if meta.is_dir() {
            let sub = d
                .open_dir_noxdev(&name)
                .with_context(|| format!("Opening /{}", path.display()))?;
            if let Some(sub) = sub {
                walk_dir(&sub, &path, f)?;
            }
        }
    }
    Ok(())
}

/// `path` for messages: absolute, non-UTF-8 bytes escaped.
pub(crate) fn display(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let s = match path.to_str() {
        Some(s) => s.to_owned(),
        None => path.as_os_str().as_bytes().escape_ascii().to_string(),
    };
    format!("/{}", s.trim_start_matches('/'))
}

/// The names in directory `d`, sorted (findings come out in a stable order).
pub(crate) fn sorted_names(d: &Dir) -> Result<Vec<std::ffi::OsString>> {
    let mut names: Vec<_> = d
        .entries()?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    Ok(names)
}
