//! Tree diffs between the base deployment's image and the staged one
//! (`bootc internals diff-staged`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bootc_sysroot::ImageMount;
use bootc_sysroot::lifecycle;

use crate::target::{Target, base_deployment, current_order, deployment_image};

/// How a path differs between two deployments' images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// Only in the new image.
    Added,
    /// Only in the old image.
    Removed,
    /// In both, with a different type, mode, owner, size, link target or content.
    Changed,
}

impl Change {
    /// `A`, `D` or `M`, as `diff-staged` prints it.
    pub fn letter(self) -> char {
        match self {
            Change::Added => 'A',
            Change::Removed => 'D',
            Change::Changed => 'M',
        }
    }
}

/// The metadata of one path of an image tree that a diff compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// `st_mode` (type and permission bits).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size of a regular file (0 otherwise).
    pub size: u64,
    /// Target of a symlink.
    pub link: Option<PathBuf>,
}

impl TreeEntry {
    fn is_file(&self) -> bool {
        self.mode & 0o170000 == 0o100000
    }
}

/// The differences between two trees (path → entry): added, removed and
/// changed paths in path order. Regular files with equal metadata are
/// compared with `same_content(path)`.
pub fn diff_trees(
    old: &std::collections::BTreeMap<String, TreeEntry>,
    new: &std::collections::BTreeMap<String, TreeEntry>,
    mut same_content: impl FnMut(&str) -> bool,
) -> Vec<(String, Change)> {
    let mut out = Vec::new();
    for (p, o) in old {
        match new.get(p) {
            None => out.push((p.clone(), Change::Removed)),
            Some(n) if n != o => out.push((p.clone(), Change::Changed)),
            Some(n) if n.is_file() && !same_content(p) => out.push((p.clone(), Change::Changed)),
            Some(_) => {}
        }
    }
    for p in new.keys().filter(|p| !old.contains_key(*p)) {
        out.push((p.clone(), Change::Added));
    }
    out.sort();
    out
}

/// Every path under `root/top` (as `/top/...`) with its metadata.
fn tree_entries(root: &Path, top: &str) -> Result<std::collections::BTreeMap<String, TreeEntry>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![format!("/{top}")];
    while let Some(rel) = stack.pop() {
        let abs = root.join(rel.trim_start_matches('/'));
        let md = match abs.symlink_metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && rel == format!("/{top}") => {
                return Ok(out);
            }
            Err(e) => return Err(e).with_context(|| format!("Reading {}", abs.display())),
        };
        let link = if md.file_type().is_symlink() {
            Some(std::fs::read_link(&abs).with_context(|| format!("Reading {}", abs.display()))?)
        } else {
            None
        };
        if md.is_dir() {
            for e in
                std::fs::read_dir(&abs).with_context(|| format!("Listing {}", abs.display()))?
            {
                let name = e?.file_name();
                stack.push(format!("{rel}/{}", name.to_string_lossy()));
            }
        }
        out.insert(
            rel,
            TreeEntry {
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                size: if md.is_file() { md.len() } else { 0 },
                link,
            },
        );
    }
    Ok(out)
}

/// Whether two files have the same bytes.
fn same_bytes(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (Ok(mut fa), Ok(mut fb)) = (std::fs::File::open(a), std::fs::File::open(b)) else {
        return false;
    };
    let mut ba = vec![0u8; 1 << 16];
    let mut bb = vec![0u8; 1 << 16];
    loop {
        let Ok(na) = fa.read(&mut ba) else {
            return false;
        };
        if na == 0 {
            return fb.read(&mut bb).is_ok_and(|n| n == 0);
        }
        if fb.read_exact(&mut bb[..na]).is_err() || ba[..na] != bb[..na] {
            return false;
        }
    }
}

/// The files added, removed and changed in `/usr` and in the image's `/etc`
/// defaults between the booted deployment (offline: the default) and the
/// staged one (download-only or not).
pub fn diff_staged(t: &Target) -> Result<Vec<(String, Change)>> {
    let store = t.open_store()?;
    let staged = lifecycle::read_staged(&t.sysroot)?
        .context("No staged deployment (stage one with `bootc upgrade --download-only`)")?;
    let order = current_order(t)?;
    let base = base_deployment(t, &order)?;
    let old = ImageMount::new(&store, &deployment_image(&store, base.id())?)?;
    let new = ImageMount::new(&store, &deployment_image(&store, &staged.id)?)?;
    let mut out = Vec::new();
    for top in ["usr", "etc"] {
        let a = tree_entries(old.path(), top)?;
        let b = tree_entries(new.path(), top)?;
        out.extend(diff_trees(&a, &b, |p| {
            let rel = p.trim_start_matches('/');
            same_bytes(&old.path().join(rel), &new.path().join(rel))
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod diff_tests {
    use super::*;
    use std::collections::BTreeMap;

    fn f(mode: u32, size: u64) -> TreeEntry {
        TreeEntry {
            mode,
            uid: 0,
            gid: 0,
            size,
            link: None,
        }
    }

    #[test]
    fn diff_table() {
        const FILE: u32 = 0o100644;
        const DIR: u32 = 0o040755;
        let link = |t: &str| TreeEntry {
            mode: 0o120777,
            link: Some(t.into()),
            ..f(0, 0)
        };
        let tree = |v: &[(&str, TreeEntry)]| {
            v.iter()
                .map(|(p, e)| (p.to_string(), e.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        // (old, new, paths whose content differs, expected)
        type Case<'a> = (
            Vec<(&'a str, TreeEntry)>,
            Vec<(&'a str, TreeEntry)>,
            &'a [&'a str],
            Vec<(&'a str, Change)>,
        );
        let cases: Vec<Case> = vec![
            (
                vec![("/usr", f(DIR, 0))],
                vec![("/usr", f(DIR, 0))],
                &[],
                vec![],
            ),
            (
                vec![("/usr", f(DIR, 0)), ("/usr/a", f(FILE, 1))],
                vec![("/usr", f(DIR, 0)), ("/usr/b", f(FILE, 1))],
                &[],
                vec![("/usr/a", Change::Removed), ("/usr/b", Change::Added)],
            ),
            // same size, other bytes
            (
                vec![("/usr/a", f(FILE, 3))],
                vec![("/usr/a", f(FILE, 3))],
                &["/usr/a"],
                vec![("/usr/a", Change::Changed)],
            ),
            // mode change, size change, type change, link target change
            (
                vec![
                    ("/etc/m", f(FILE, 1)),
                    ("/etc/s", f(FILE, 1)),
                    ("/etc/t", f(FILE, 0)),
                    ("/etc/l", link("x")),
                ],
                vec![
                    ("/etc/m", f(0o100600, 1)),
                    ("/etc/s", f(FILE, 2)),
                    ("/etc/t", f(DIR, 0)),
                    ("/etc/l", link("y")),
                ],
                &[],
                vec![
                    ("/etc/l", Change::Changed),
                    ("/etc/m", Change::Changed),
                    ("/etc/s", Change::Changed),
                    ("/etc/t", Change::Changed),
                ],
            ),
            // a directory's content compare is never asked
            (
                vec![("/usr/d", f(DIR, 0))],
                vec![("/usr/d", f(DIR, 0))],
                &["/usr/d"],
                vec![],
            ),
        ];
        for (old, new, differ, expect) in cases {
            let got = diff_trees(&tree(&old), &tree(&new), |p| !differ.contains(&p));
            let expect: Vec<(String, Change)> =
                expect.into_iter().map(|(p, c)| (p.to_owned(), c)).collect();
            assert_eq!(got, expect, "{old:?} -> {new:?}");
        }
    }
}
