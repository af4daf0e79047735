//! Boot Loader Specification type-1 entries (`loader/entries/*.conf`).
//!
//! [`parse_bls`] and [`BlsEntry::render`] are pure; writing a set of entries
//! to disk is in [`crate::entries`] (a mounted directory) and [`crate::esp`]
//! (a FAT partition written with mtools).

use std::cmp::Ordering;

use anyhow::Result;

/// Where kernels and initramfs live on the boot filesystem, relative to its
/// root: `bootc/<NAME>/`, NAME being the boot digest (sha256 of the kernel
/// followed by the initramfs) shared by every deployment with those files,
/// or the deployment id for deployments made before boot files were shared.
pub const BOOT_FILES_DIR: &str = "bootc";

/// The kernel's file name in a deployment's boot directory.
pub const VMLINUZ: &str = "vmlinuz";

/// The initramfs's file name in a deployment's boot directory.
pub const INITRAMFS: &str = "initramfs.img";

/// One BLS type-1 entry. Keys we do not model are kept, in order, in `other`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlsEntry {
    /// `title`: the menu text.
    pub title: Option<String>,
    /// `version`: with the same sort key, higher versions sort first.
    pub version: Option<String>,
    /// `linux`: the kernel, a path on the boot filesystem.
    pub linux: Option<String>,
    /// `initrd` lines, in order.
    pub initrd: Vec<String>,
    /// `options`: the kernel command line (several lines are joined).
    pub options: Option<String>,
    /// `sort-key`: entries are grouped and ordered by it.
    pub sort_key: Option<String>,
    /// Every other `key value` line, in file order.
    pub other: Vec<(String, String)>,
}

/// Parse the text of a BLS type-1 entry.
///
/// Blank lines and `#` comments are skipped; a key is separated from its
/// value by the first run of whitespace. An entry must name what to boot
/// (`linux`, `efi` or `uki`).
pub fn parse_bls(text: &str) -> Result<BlsEntry> {
    let mut e = BlsEntry::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once(|c: char| c.is_whitespace()) {
            Some((k, v)) => (k, v.trim()),
            None => (line, ""),
        };
        let value = value.to_owned();
        match key {
            "title" => e.title = Some(value),
            "version" => e.version = Some(value),
            "linux" => e.linux = Some(value),
            "initrd" => e.initrd.push(value),
            "options" => {
                e.options = Some(match e.options.take() {
                    Some(prev) if !prev.is_empty() => format!("{prev} {value}"),
                    _ => value,
                })
            }
            "sort-key" => e.sort_key = Some(value),
            k => e.other.push((k.to_owned(), value)),
        }
    }
    let boots_something =
        e.linux.is_some() || e.other.iter().any(|(k, _)| k == "efi" || k == "uki");
    anyhow::ensure!(
        boots_something,
        "not a boot entry: no linux, efi or uki line"
    );
    Ok(e)
}

impl BlsEntry {
    /// The entry of a deployment: kernel and initramfs under
    /// `bootc/<BOOT_DIR>/` (see [`BOOT_FILES_DIR`]); the deployment itself
    /// is named by `composefs=` in `options`.
    pub fn for_deployment(
        title: &str,
        n: u64,
        boot_dir: &str,
        options: &str,
        stateroot: &str,
    ) -> BlsEntry {
        let (linux, initrd) = boot_file_paths(boot_dir);
        BlsEntry {
            title: Some(title.to_owned()),
            version: Some(n.to_string()),
            linux: Some(linux),
            initrd: vec![initrd],
            options: Some(options.to_owned()),
            sort_key: Some(sort_key(stateroot)),
            other: Vec::new(),
        }
    }

    /// The entry as file text, one `key value` per line in a fixed order.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: &str| {
            out.push_str(k);
            if !v.is_empty() {
                out.push(' ');
                out.push_str(v);
            }
            out.push('\n');
        };
        if let Some(v) = &self.title {
            line("title", v);
        }
        if let Some(v) = &self.version {
            line("version", v);
        }
        if let Some(v) = &self.linux {
            line("linux", v);
        }
        for v in &self.initrd {
            line("initrd", v);
        }
        if let Some(v) = &self.options {
            line("options", v);
        }
        if let Some(v) = &self.sort_key {
            line("sort-key", v);
        }
        for (k, v) in &self.other {
            line(k, v);
        }
        out
    }

    /// The deployment id named by `composefs=` in the options, if any.
    pub fn deployment_id(&self) -> Option<String> {
        let opts = self.options.as_deref()?;
        opts.split_whitespace()
            .rev()
            .find_map(|a| a.strip_prefix("composefs="))
            .map(str::to_owned)
    }

    /// Compare for menus: by sort key, then newest (highest version) first,
    /// then by title; entries without a sort key go last.
    pub fn menu_order(&self, other: &BlsEntry) -> Ordering {
        match (&self.sort_key, &other.sort_key) {
            (Some(a), Some(b)) if a != b => return a.cmp(b),
            (Some(_), None) => return Ordering::Less,
            (None, Some(_)) => return Ordering::Greater,
            _ => {}
        }
        compare_versions(other.version.as_deref(), self.version.as_deref())
            .then_with(|| self.title.cmp(&other.title))
    }
}

/// `bootc-<STATEROOT>`, the sort key of a stateroot's entries.
pub fn sort_key(stateroot: &str) -> String {
    format!("bootc-{stateroot}")
}

/// The file name of entry `n` of `stateroot`: `bootc-<STATEROOT>-<N>.conf`.
pub fn entry_file_name(stateroot: &str, n: u64) -> String {
    format!("bootc-{stateroot}-{n}.conf")
}

/// The `linux` and `initrd` paths in boot directory `boot_dir` (a boot
/// digest or a deployment id) on the boot filesystem.
pub fn boot_file_paths(boot_dir: &str) -> (String, String) {
    (
        format!("/{BOOT_FILES_DIR}/{boot_dir}/{VMLINUZ}"),
        format!("/{BOOT_FILES_DIR}/{boot_dir}/{INITRAMFS}"),
    )
}

/// Whether `name` can name a boot directory under [`BOOT_FILES_DIR`]: a
/// non-empty ASCII alphanumeric string (a hex digest or deployment id).
pub fn is_valid_boot_dir_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Versions compared as numbers when both are, else as strings; `None` is lowest.
fn compare_versions(a: Option<&str>, b: Option<&str>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => a.cmp(b),
        },
        (a, b) => a.is_some().cmp(&b.is_some()),
    }
}

/// Sort `entries` for a menu (see [`BlsEntry::menu_order`]): the default first.
pub fn sort_for_menu(entries: &mut [(String, BlsEntry)]) {
    entries.sort_by(|(na, a), (nb, b)| a.menu_order(b).then_with(|| na.cmp(nb)));
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn check(input: &str, expect: &str) {
        let e = parse_bls(input).unwrap();
        assert_eq!(e.render(), expect, "input:\n{input}");
        // Rendering is a fixed point.
        assert_eq!(parse_bls(&e.render()).unwrap(), e);
    }

    const DIGEST: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    #[test]
    fn deployment_entry_snapshot() {
        let e = BlsEntry::for_deployment(
            "Debian GNU/Linux 12 (bookworm) (1.0)",
            2,
            DIGEST,
            &format!(
                "root=UUID=abcd rw composefs={ID} bootc.stateroot=default console=ttyS0,115200"
            ),
            "default",
        );
        let expect = format!(
            "title Debian GNU/Linux 12 (bookworm) (1.0)
version 2
linux /bootc/{DIGEST}/vmlinuz
initrd /bootc/{DIGEST}/initramfs.img
options root=UUID=abcd rw composefs={ID} bootc.stateroot=default console=ttyS0,115200
sort-key bootc-default
"
        );
        assert_eq!(e.render(), expect);
        assert_eq!(parse_bls(&expect).unwrap(), e);
        assert_eq!(e.deployment_id().as_deref(), Some(ID));
        assert_eq!(entry_file_name("default", 2), "bootc-default-2.conf");
    }

    #[test]
    fn boot_dir_names() {
        for (name, ok) in [
            (DIGEST, true),
            (ID, true),
            ("", false),
            ("..", false),
            ("a/b", false),
            (".tmp-ab", false),
        ] {
            assert_eq!(is_valid_boot_dir_name(name), ok, "{name:?}");
        }
    }

    #[test]
    fn parse_table() {
        check(
            "# comment\n\ntitle  Fedora Linux 40\nversion 6.8.5\nmachine-id abc\nlinux /vmlinuz\ninitrd /a.img\ninitrd /b.img\noptions root=/dev/sda\noptions quiet\ngrub_users $grub_users\n",
            "title Fedora Linux 40\nversion 6.8.5\nlinux /vmlinuz\ninitrd /a.img\ninitrd /b.img\noptions root=/dev/sda quiet\nmachine-id abc\ngrub_users $grub_users\n",
        );
        check("efi /EFI/Linux/x.efi\n", "efi /EFI/Linux/x.efi\n");
        check("linux\t/k\noptions\n", "linux /k\noptions\n");
    }

    #[test]
    fn rejects_non_entries() {
        for bad in ["", "# only a comment\n", "title x\noptions y\n"] {
            assert!(parse_bls(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn menu_order_is_newest_first() {
        let mk = |key: Option<&str>, v: &str| BlsEntry {
            version: Some(v.into()),
            sort_key: key.map(Into::into),
            linux: Some("/k".into()),
            ..Default::default()
        };
        let mut entries = vec![
            ("a".to_owned(), mk(Some("bootc-default"), "2")),
            ("b".to_owned(), mk(Some("bootc-default"), "10")),
            ("c".to_owned(), mk(None, "99")),
            ("d".to_owned(), mk(Some("bootc-default"), "3")),
        ];
        sort_for_menu(&mut entries);
        let names: Vec<_> = entries.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["b", "d", "a", "c"]);
    }
}
