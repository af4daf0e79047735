//! Flattening an image's layers into one composefs tree, the way the OCI
//! image layer specification applies changesets ("Applying Changesets"),
//! from the layer streams already in the store.
//!
//! Every path that imports layers (skopeo's proxy, an OCI layout or
//! archive, containers-storage's tar-split replay in `cstor`) ends with each
//! layer as a tar splitstream; this module is the one place that turns
//! those streams into the tree the EROFS image is written from
//! ([`crate::commit`]). It replaces composefs-oci 0.9.4's
//! `image::create_filesystem`, which drops every xattr but
//! `security.capability`, refuses entries whose parent directories have no
//! entries of their own, and puts Rust `Debug` text in its errors.
//!
//! Semantics, layer by layer, bottom first:
//! - **Whiteouts** (`.wh.NAME`) remove `NAME` and **opaque markers**
//!   (`.wh..wh..opq`) empty their directory, but only of what the layers
//!   *below* brought: "Whiteout files MUST only apply to resources in
//!   lower/parent layers. Files that are present in the same layer as a
//!   whiteout file can only be hidden by whiteout files in subsequent
//!   layers." So all of a layer's whiteouts are applied before any of its
//!   other entries, whatever their order in the tar. The whiteout entries
//!   themselves are not part of the tree.
//! - **Missing parents** are created as directories `0755`, owner 0:0,
//!   mtime 0, no xattrs, as containers-storage does when it unpacks a layer
//!   (`os.MkdirAll(parent, 0755)`; it leaves the time of the pull as mtime,
//!   we leave 0, so that the image id does not depend on when it was
//!   pulled). A parent that an earlier layer made is left as it is: the
//!   layer has no entry for it, so it does not change it. (containers-storage
//!   creates it in the layer's own diff directory, so podman shows it as
//!   `0755` 0:0 with a new mtime instead; see ARCHITECTURE.md.)
//! - A parent that exists but is not a directory (a symlink above all) is
//!   refused: following it could put the file anywhere.
//! - **Duplicates**: the last entry for a path wins. A directory entry over a
//!   directory replaces its metadata and keeps its contents; any other entry
//!   replaces what was there (a path can change type between layers).
//! - **Hard links** share the leaf they link to (as it is when the link
//!   entry is read), which must be a non-directory already in the tree; the
//!   link entry's owner, mode, mtime and xattrs then apply to that leaf, as
//!   when a tar is unpacked onto a filesystem. Symlinks have mode 0777.
//! - **Extended attributes** are kept, every namespace (`user.`,
//!   `security.`, `trusted.`), except names under `trusted.overlay.`:
//!   that is overlayfs' own namespace (composefs itself marks its files
//!   with `trusted.overlay.metacopy` and `.redirect`), podman's overlay
//!   mounts never show such names from a layer, and an image that carries
//!   them has most likely captured them from a build host's overlay.
//!   (composefs would store them escaped, as `trusted.overlay.overlay.*`,
//!   so keeping them would be safe, but would differ from podman.)
//! - Modes keep their permission bits, setuid, setgid and sticky (the type
//!   comes from the entry type).
//!
//! After the last layer the image's root takes `/usr`'s metadata and `/run`
//! is emptied, as composefs does for every OCI image (the root entry of a
//! layer tar is ignored by container runtimes; `/run` is a tmpfs at boot).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use anyhow::{Context, Result, anyhow, bail};
use bootc_store::{ObjectId, Repo};
use composefs::tree::{Directory, FileSystem, Inode, LeafContent, Stat};
use composefs_oci::LAYER_CONTENT_TYPE;
use composefs_oci::tar::{TarEntry, TarItem, get_entry};

/// One layer of the image to flatten.
#[derive(Debug, Clone)]
pub(crate) struct LayerToApply {
    /// The layer blob's digest (as the manifest names it), for messages.
    pub digest: String,
    /// Its diff_id, for messages.
    pub diff_id: String,
    /// The layer splitstream in the store.
    pub stream: ObjectId,
}

/// The whiteout prefix of the OCI layer format (and of AUFS before it).
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// overlayfs' private xattr namespace, dropped from layers.
const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";
/// The name that makes its directory opaque.
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Flatten `layers` (bottom first) of the image `image` into one tree.
pub(crate) fn flatten(
    repo: &Repo,
    image: &str,
    layers: &[LayerToApply],
) -> Result<FileSystem<ObjectId>> {
    let mut fs = FileSystem::new(implicit_dir_stat());
    let count = layers.len();
    for (i, layer) in layers.iter().enumerate() {
        let describe = || {
            format!(
                "Applying layer {} of {count} ({}, diff_id {}) of {image}",
                i + 1,
                layer.digest,
                layer.diff_id
            )
        };
        let entries = read_entries(repo, &layer.stream).with_context(describe)?;
        apply_layer(&mut fs, entries).with_context(describe)?;
    }
    finish(&mut fs).with_context(|| format!("Finishing the filesystem of {image}"))?;
    Ok(fs)
}

/// Every entry of the layer splitstream `stream`, in tar order.
fn read_entries(repo: &Repo, stream: &ObjectId) -> Result<Vec<TarEntry<ObjectId>>> {
    let mut reader = repo
        .open_stream("", Some(stream), Some(LAYER_CONTENT_TYPE))
        .context("Opening the layer stream")?;
    let mut entries = Vec::new();
    loop {
        let after = entries
            .last()
            .map(|e: &TarEntry<ObjectId>| e.path.display().to_string());
        match get_entry(&mut reader) {
            Ok(Some(entry)) => entries.push(entry),
            Ok(None) => return Ok(entries),
            Err(e) => {
                return Err(match after {
                    Some(p) => e.context(format!("Reading the tar entry after \"{p}\"")),
                    None => e.context("Reading the first tar entry"),
                });
            }
        }
    }
}

/// The stat of a directory that a layer implies but does not list.
fn implicit_dir_stat() -> Stat {
    Stat {
        st_mode: 0o755,
        st_uid: 0,
        st_gid: 0,
        st_mtim_sec: 0,
        st_mtim_nsec: 0,
        xattrs: Default::default(),
    }
}

/// What a tar entry's file name means.
enum Name<'a> {
    /// `.wh..wh..opq`: empty the directory (of lower layers' content).
    Opaque,
    /// `.wh.NAME`: remove `NAME` (of lower layers).
    Whiteout(&'a OsStr),
    /// Anything else.
    Plain,
}

fn classify(name: &OsStr) -> Name<'_> {
    let bytes = name.as_bytes();
    if bytes == OPAQUE_MARKER {
        Name::Opaque
    } else if let Some(target) = bytes.strip_prefix(WHITEOUT_PREFIX) {
        Name::Whiteout(OsStr::from_bytes(target))
    } else {
        Name::Plain
    }
}

/// The normal components of an entry path (`/`, `.` dropped); `..` is an
/// error (validation refuses it earlier, this keeps the tree safe anyway).
fn components(path: &Path) -> Result<Vec<&OsStr>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                bail!("tar entry \"{}\" leaves the image root", path.display())
            }
        }
    }
    Ok(out)
}

/// `path` as users see it in messages.
fn shown(path: &Path) -> String {
    let s = path.display().to_string();
    if s.is_empty() { "/".to_owned() } else { s }
}

/// Apply one layer's entries to `fs` (see the module documentation).
fn apply_layer(fs: &mut FileSystem<ObjectId>, entries: Vec<TarEntry<ObjectId>>) -> Result<()> {
    // Whiteouts first: they apply to the layers below only.
    for entry in &entries {
        let parts = components(&entry.path)?;
        let Some((name, parents)) = parts.split_last() else {
            continue;
        };
        let kind = classify(name);
        if matches!(kind, Name::Plain) {
            continue;
        }
        let Some(dir) = existing_dir_mut(&mut fs.root, parents) else {
            continue; // nothing below to hide
        };
        match kind {
            Name::Opaque => dir.clear(),
            Name::Whiteout(target) => dir.remove(target),
            Name::Plain => unreachable!("skipped above"),
        }
    }
    for entry in entries {
        apply_entry(fs, entry)?;
    }
    Ok(())
}

/// The directory at `parts` if it exists (through directories only).
fn existing_dir_mut<'a>(
    mut dir: &'a mut Directory<ObjectId>,
    parts: &[&OsStr],
) -> Option<&'a mut Directory<ObjectId>> {
    for part in parts {
        dir = match dir.lookup(part) {
            Some(Inode::Directory(_)) => dir.get_directory_mut(part).ok()?,
            _ => return None,
        };
    }
    Some(dir)
}

/// The directory at `parts`, created (see [`implicit_dir_stat`]) where missing.
fn parent_dir_mut<'a>(
    mut dir: &'a mut Directory<ObjectId>,
    parts: &[&OsStr],
    path: &Path,
) -> Result<&'a mut Directory<ObjectId>> {
    for part in parts {
        if !matches!(classify(part), Name::Plain) {
            bail!(
                "tar entry \"{}\": directory \"{}\" does not exist (a whiteout name cannot be a directory)",
                shown(path),
                part.to_string_lossy()
            );
        }
        match dir.lookup(part) {
            Some(Inode::Directory(_)) => {}
            Some(_) => bail!(
                "tar entry \"{}\": directory entry \"{}\" is not a subdirectory",
                shown(path),
                part.to_string_lossy()
            ),
            None => {
                dir.insert(
                    part,
                    Inode::Directory(Box::new(Directory::new(implicit_dir_stat()))),
                );
            }
        }
        dir = dir
            .get_directory_mut(part)
            .map_err(|e| anyhow!("tar entry \"{}\": {e}", shown(path)))?;
    }
    Ok(dir)
}

/// Apply one non-whiteout entry (whiteouts only make their parents exist).
fn apply_entry(fs: &mut FileSystem<ObjectId>, entry: TarEntry<ObjectId>) -> Result<()> {
    let TarEntry {
        path,
        mut stat,
        item,
    } = entry;
    // The type comes from the entry type; keep permissions and
    // setuid/setgid/sticky only.
    stat.st_mode &= 0o7777;
    stat.xattrs
        .retain(|name, _| !name.as_bytes().starts_with(OVERLAY_XATTR_PREFIX));
    let parts = components(&path)?;
    let Some((name, parents)) = parts.split_last() else {
        // The root directory: container runtimes ignore its entry; its
        // metadata is taken from /usr at the end (see `finish`).
        if !matches!(item, TarItem::Directory) {
            bail!("tar entry \"/\" (the image root) is not a directory");
        }
        fs.set_root_stat(stat);
        return Ok(());
    };
    let is_whiteout = !matches!(classify(name), Name::Plain);
    let inode = match item {
        _ if is_whiteout => None,
        TarItem::Directory => Some(Inode::Directory(Box::new(Directory::new(stat)))),
        TarItem::Leaf(content) => {
            if matches!(content, LeafContent::Symlink(_)) {
                // Linux gives every symlink mode 0777, whatever the tar says.
                stat.st_mode = 0o777;
            }
            Some(Inode::leaf(fs.push_leaf(stat, content)))
        }
        TarItem::Hardlink(target) => {
            let id = hardlink_target(fs, &path, &target)?;
            // The link entry's metadata applies to the inode it shares, as
            // when a tar is unpacked (containers-storage sets owner, mode,
            // xattrs and times on the path it has just linked).
            let leaf = fs.leaf_mut(id);
            let mut xattrs = std::mem::take(&mut leaf.stat.xattrs);
            xattrs.extend(stat.xattrs);
            if matches!(leaf.content, LeafContent::Symlink(_)) {
                stat.st_mode = 0o777;
            }
            leaf.stat = Stat { xattrs, ..stat };
            Some(Inode::leaf(id))
        }
    };
    let dir = parent_dir_mut(&mut fs.root, parents, &path)?;
    if let Some(inode) = inode {
        dir.merge(name, inode);
    }
    Ok(())
}

/// The leaf the hard link `path` → `target` shares.
fn hardlink_target(
    fs: &FileSystem<ObjectId>,
    path: &Path,
    target: &OsStr,
) -> Result<composefs::generic_tree::LeafId> {
    let target_path = Path::new(target);
    let parts = components(target_path)?;
    let fail = |what: String| {
        anyhow!(
            "tar entry \"{}\" is a hard link to \"{}\": {what}",
            shown(path),
            shown(target_path)
        )
    };
    let Some((name, parents)) = parts.split_last() else {
        return Err(fail("that is the image root, a directory".to_owned()));
    };
    let mut dir = &fs.root;
    for part in parents {
        dir = match dir.lookup(part) {
            Some(Inode::Directory(d)) => d,
            Some(_) => {
                return Err(fail(format!(
                    "directory entry \"{}\" is not a subdirectory",
                    part.to_string_lossy()
                )));
            }
            None => {
                return Err(fail(format!(
                    "directory entry \"{}\" does not exist",
                    part.to_string_lossy()
                )));
            }
        };
    }
    match dir.lookup(name) {
        Some(Inode::Leaf(id, _)) => Ok(*id),
        Some(Inode::Directory(_)) => Err(fail(format!(
            "directory entry \"{}\" is a directory",
            name.to_string_lossy()
        ))),
        None => Err(fail(format!(
            "directory entry \"{}\" does not exist",
            name.to_string_lossy()
        ))),
    }
}

/// The root takes `/usr`'s metadata and `/run` is emptied (composefs'
/// `transform_for_oci`, without its xattr filter), then leaves no longer
/// reachable are dropped. An image without `/usr` keeps the root entry's
/// metadata (or `0755` 0:0) and its `/run`.
fn finish(fs: &mut FileSystem<ObjectId>) -> Result<()> {
    let has_usr = matches!(fs.root.lookup(OsStr::new("usr")), Some(Inode::Directory(_)));
    if has_usr {
        fs.copy_root_metadata_from_usr()
            .map_err(|e| anyhow!("copying the metadata of /usr to the root: {e}"))?;
        fs.canonicalize_run()
            .map_err(|e| anyhow!("emptying /run: {e}"))?;
    } else if fs.root.stat.st_mode == 0 {
        fs.set_root_stat(implicit_dir_stat());
    }
    fs.root.stat.st_mode &= 0o7777;
    fs.compact();
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use composefs::tree::RegularFile;

    use super::*;

    fn stat(mode: u32) -> Stat {
        Stat {
            st_mode: mode,
            st_uid: 0,
            st_gid: 0,
            st_mtim_sec: 1,
            st_mtim_nsec: 0,
            xattrs: BTreeMap::new(),
        }
    }

    fn file(path: &str, data: &[u8]) -> TarEntry<ObjectId> {
        TarEntry {
            path: PathBuf::from(path),
            stat: stat(0o644),
            item: TarItem::Leaf(LeafContent::Regular(RegularFile::Inline(data.into()))),
        }
    }

    fn dir(path: &str, mode: u32) -> TarEntry<ObjectId> {
        TarEntry {
            path: PathBuf::from(path),
            stat: stat(mode),
            item: TarItem::Directory,
        }
    }

    fn link(path: &str, target: &str) -> TarEntry<ObjectId> {
        TarEntry {
            path: PathBuf::from(path),
            stat: stat(0o644),
            item: TarItem::Hardlink(target.into()),
        }
    }

    /// Apply `layers` and list the tree as `path mode` lines (files with
    /// their content).
    fn check(layers: Vec<Vec<TarEntry<ObjectId>>>) -> Result<Vec<String>> {
        let mut fs = FileSystem::new(implicit_dir_stat());
        for l in layers {
            apply_layer(&mut fs, l)?;
        }
        finish(&mut fs)?;
        let mut out = Vec::new();
        fn walk(
            fs: &FileSystem<ObjectId>,
            d: &Directory<ObjectId>,
            at: &str,
            out: &mut Vec<String>,
        ) {
            for (name, inode) in d.sorted_entries() {
                let p = format!("{at}/{}", name.to_string_lossy());
                match inode {
                    Inode::Directory(sub) => {
                        out.push(format!("{p} d{:o}", sub.stat.st_mode));
                        walk(fs, sub, &p, out);
                    }
                    Inode::Leaf(id, _) => {
                        let leaf = fs.leaf(*id);
                        let data = match &leaf.content {
                            LeafContent::Regular(RegularFile::Inline(d)) => {
                                String::from_utf8_lossy(d).into_owned()
                            }
                            _ => "?".into(),
                        };
                        out.push(format!("{p} {:o} {data} #{}", leaf.stat.st_mode, id.0));
                    }
                }
            }
        }
        walk(&fs, &fs.root, "", &mut out);
        Ok(out)
    }

    #[test]
    fn missing_parents_are_created_0755() {
        let t = check(vec![vec![file("/usr/lib/deep/file", b"x")]]).unwrap();
        assert_eq!(
            t,
            [
                "/usr d755",
                "/usr/lib d755",
                "/usr/lib/deep d755",
                "/usr/lib/deep/file 644 x #0"
            ]
        );
    }

    #[test]
    fn lower_parent_keeps_its_metadata() {
        let t = check(vec![vec![dir("/usr", 0o700)], vec![file("/usr/f", b"x")]]).unwrap();
        assert_eq!(t, ["/usr d700", "/usr/f 644 x #0"]);
    }

    #[test]
    fn whiteouts_apply_to_lower_layers_only() {
        let lower = vec![
            dir("/usr", 0o755),
            file("/usr/a", b"1"),
            file("/usr/b", b"1"),
        ];
        // The whiteout comes after the file it names in the same layer: the
        // file stays (spec), the lower /usr/b goes.
        let upper = vec![
            file("/usr/a", b"2"),
            file("/usr/.wh.a", b""),
            file("/usr/.wh.b", b""),
        ];
        let t = check(vec![lower, upper]).unwrap();
        assert_eq!(t, ["/usr d755", "/usr/a 644 2 #0"]);
    }

    #[test]
    fn opaque_clears_lower_only() {
        let lower = vec![
            dir("/usr", 0o755),
            dir("/usr/d", 0o755),
            file("/usr/d/old", b"1"),
        ];
        let upper = vec![file("/usr/d/new", b"2"), file("/usr/d/.wh..wh..opq", b"")];
        let t = check(vec![lower, upper]).unwrap();
        assert_eq!(t, ["/usr d755", "/usr/d d755", "/usr/d/new 644 2 #0"]);
    }

    #[test]
    fn type_change_and_duplicates() {
        let lower = vec![
            dir("/usr", 0o755),
            dir("/usr/x", 0o755),
            file("/usr/x/in", b"1"),
            file("/usr/y", b"1"),
        ];
        let upper = vec![
            file("/usr/x", b"f"),
            dir("/usr/y", 0o711),
            file("/usr/z", b"a"),
            file("/usr/z", b"b"),
        ];
        let t = check(vec![lower, upper]).unwrap();
        assert_eq!(
            t,
            [
                "/usr d755",
                "/usr/x 644 f #0",
                "/usr/y d711",
                "/usr/z 644 b #1"
            ]
        );
    }

    #[test]
    fn hardlinks_share_a_leaf() {
        let t = check(vec![vec![
            dir("/usr", 0o755),
            file("/usr/a", b"1"),
            link("/usr/b", "/usr/a"),
        ]])
        .unwrap();
        assert_eq!(t, ["/usr d755", "/usr/a 644 1 #0", "/usr/b 644 1 #0"]);
    }

    #[test]
    fn errors_name_the_entry_in_words() {
        let symlink = TarEntry {
            path: PathBuf::from("/link"),
            stat: stat(0o777),
            item: TarItem::Leaf(LeafContent::Symlink(OsStr::new("/etc").into())),
        };
        let cases: Vec<(Vec<TarEntry<ObjectId>>, &str)> = vec![
            (
                vec![symlink, file("/link/evil", b"")],
                "tar entry \"/link/evil\": directory entry \"link\" is not a subdirectory",
            ),
            (
                vec![link("/a", "/nonexistent")],
                "tar entry \"/a\" is a hard link to \"/nonexistent\": directory entry \"nonexistent\" does not exist",
            ),
            (
                vec![dir("/etc", 0o755), link("/a", "/etc")],
                "directory entry \"etc\" is a directory",
            ),
            (
                vec![file("/etc/.wh.x/y", b"")],
                "directory \".wh.x\" does not exist",
            ),
        ];
        for (entries, want) in cases {
            let e = check(vec![entries]).unwrap_err();
            let msg = format!("{e:#}");
            assert!(msg.contains(want), "{msg}");
            for debug in ["Leaf(", "PhantomData", "Some(", "Os {", "kind:"] {
                assert!(!msg.contains(debug), "{msg}");
            }
        }
    }
}
