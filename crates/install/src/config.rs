//! Install configuration shipped in the image, as upstream bootc reads it:
//!
//! - `/usr/lib/bootc/install/*.toml` (and `/etc/bootc/install/*.toml`, where a
//!   file of the same name replaces the one in /usr/lib): an `[install]`
//!   table, merged in lexical order of file names. Later files override
//!   scalar values and append `kargs`; a file whose `match-architectures`
//!   does not list this machine's architecture is skipped. `root-fs-type`
//!   and `filesystem.root.type` are two spellings of one setting (the
//!   latter wins).
//! - `/usr/lib/bootc/kargs.d/*.toml`: `kargs = [...]` and optional
//!   `match-architectures = [...]`, concatenated in lexical order.
//!
//! `parse_*` and `merge*` are pure; `load_*` read an [`ImageTree`].

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use bootc_sysroot::ImageTree;
use fn_error_context::context;
use serde::{Deserialize, Serialize};

/// Install drop-in directories of an image, lowest precedence first.
pub const INSTALL_CONFIG_DIRS: &[&str] = &["usr/lib/bootc/install", "etc/bootc/install"];

/// The kernel argument drop-ins of an image.
pub const KARGS_DIR: &str = "usr/lib/bootc/kargs.d";

/// Root filesystem types `to-disk` can create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    /// ext4, created with fs-verity support.
    Ext4,
    /// XFS.
    Xfs,
    /// Btrfs.
    Btrfs,
}

impl Filesystem {
    /// The name `mkfs.<name>` and `mount -t` use.
    pub fn as_str(&self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
            Filesystem::Btrfs => "btrfs",
        }
    }
}

impl std::fmt::Display for Filesystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[install.filesystem.root]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootFs {
    /// The root filesystem type.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub fstype: Option<Filesystem>,
}

/// `[install.filesystem]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filesystems {
    /// The root filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<RootFs>,
}

/// The `[install]` table (one drop-in, or the merge of all).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct InstallConfig {
    /// Root filesystem type (older spelling of `filesystem.root.type`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_fs_type: Option<Filesystem>,
    /// Filesystem settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<Filesystems>,
    /// Kernel arguments appended at install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kargs: Option<Vec<String>>,
    /// The architectures this drop-in applies to (`x86_64`, `aarch64`, ...).
    #[serde(
        default,
        alias = "match_architectures",
        skip_serializing_if = "Option::is_none"
    )]
    pub match_architectures: Option<Vec<String>>,
    /// The stateroot name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stateroot: Option<String>,
    /// The `root=` value, e.g. `UUID=...` or `LABEL=root`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_mount_spec: Option<String>,
    /// The /boot mount specification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_mount_spec: Option<String>,
    /// Refuse a signature policy that accepts anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforce_container_sigpolicy: Option<bool>,
    /// The bootloader: `systemd`, `grub` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootloader: Option<String>,
    /// Keys we do not use (upstream's `block`, `ostree`, `bootupd`, ...),
    /// kept so that print-configuration shows them.
    #[serde(flatten)]
    pub other: BTreeMap<String, toml::Value>,
}

/// A whole drop-in file.
#[derive(Debug, Clone, Default, Deserialize)]
struct InstallConfigFile {
    install: Option<InstallConfig>,
    #[serde(flatten)]
    other: BTreeMap<String, toml::Value>,
}

/// Parse one install drop-in; `None` when it has no `[install]` table.
/// Unknown top-level tables are ignored with a warning, as upstream.
pub fn parse_install_config(name: &str, text: &str) -> Result<Option<InstallConfig>> {
    let f: InstallConfigFile =
        toml::from_str(text).with_context(|| format!("Parsing install configuration {name}"))?;
    for k in f.other.keys() {
        tracing::warn!("{name}: unknown table {k}");
    }
    if let Some(c) = &f.install {
        for k in c.other.keys() {
            tracing::debug!("{name}: install.{k} is not used by this bootc");
        }
    }
    Ok(f.install)
}

fn applies(arches: &Option<Vec<String>>, arch: &str) -> bool {
    arches.as_ref().is_none_or(|a| a.iter().any(|x| x == arch))
}

impl InstallConfig {
    /// Apply `other` (a later drop-in) over `self`, if it applies to `arch`.
    pub fn merge(&mut self, other: InstallConfig, arch: &str) {
        if !applies(&other.match_architectures, arch) {
            return;
        }
        fn set<T>(a: &mut Option<T>, b: Option<T>) {
            if b.is_some() {
                *a = b;
            }
        }
        set(&mut self.root_fs_type, other.root_fs_type);
        if let Some(fs) = other.filesystem {
            let mine = self.filesystem.get_or_insert_with(Default::default);
            if let Some(root) = fs.root {
                let r = mine.root.get_or_insert_with(Default::default);
                set(&mut r.fstype, root.fstype);
            }
        }
        if let Some(k) = other.kargs {
            self.kargs.get_or_insert_with(Vec::new).extend(k);
        }
        set(&mut self.stateroot, other.stateroot);
        set(&mut self.root_mount_spec, other.root_mount_spec);
        set(&mut self.boot_mount_spec, other.boot_mount_spec);
        set(
            &mut self.enforce_container_sigpolicy,
            other.enforce_container_sigpolicy,
        );
        set(&mut self.bootloader, other.bootloader);
        self.other.extend(other.other);
    }

    /// Make the two spellings of the root filesystem type agree (the
    /// `filesystem.root.type` one wins) and drop the architecture filter,
    /// which has been applied.
    pub fn canonicalize(&mut self) {
        let nested = self
            .filesystem
            .as_ref()
            .and_then(|f| f.root.as_ref())
            .and_then(|r| r.fstype);
        match (nested, self.root_fs_type) {
            (Some(t), _) => self.root_fs_type = Some(t),
            (None, Some(t)) => {
                self.filesystem
                    .get_or_insert_with(Default::default)
                    .root
                    .get_or_insert_with(Default::default)
                    .fstype = Some(t)
            }
            (None, None) => {}
        }
        self.match_architectures = None;
    }

    /// The configured root filesystem type.
    pub fn root_fs(&self) -> Option<Filesystem> {
        self.filesystem
            .as_ref()
            .and_then(|f| f.root.as_ref())
            .and_then(|r| r.fstype)
            .or(self.root_fs_type)
    }
}

/// Merge drop-ins given in lexical order of their names, for `arch`.
/// The first drop-in that applies is the base, as upstream.
pub fn merge_install_configs(
    configs: impl IntoIterator<Item = InstallConfig>,
    arch: &str,
) -> Option<InstallConfig> {
    let mut out: Option<InstallConfig> = None;
    for c in configs {
        match out.as_mut() {
            Some(o) => o.merge(c, arch),
            None if applies(&c.match_architectures, arch) => out = Some(c),
            None => {}
        }
    }
    if let Some(o) = out.as_mut() {
        o.canonicalize();
    }
    out
}

/// One kargs.d drop-in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct KargsFile {
    /// The kernel arguments.
    pub kargs: Vec<String>,
    /// The architectures this drop-in applies to.
    #[serde(default)]
    pub match_architectures: Option<Vec<String>>,
}

/// Parse one kargs.d drop-in.
pub fn parse_kargs_file(name: &str, text: &str) -> Result<KargsFile> {
    toml::from_str(text).with_context(|| format!("Parsing kernel arguments {name}"))
}

/// The kernel arguments of kargs.d drop-ins (in lexical order) for `arch`.
pub fn merge_kargs(files: impl IntoIterator<Item = KargsFile>, arch: &str) -> Vec<String> {
    files
        .into_iter()
        .filter(|f| applies(&f.match_architectures, arch))
        .flat_map(|f| f.kargs)
        .collect()
}

/// This machine's architecture as drop-ins name it (Rust's names: `x86_64`, `aarch64`).
pub fn host_arch() -> &'static str {
    std::env::consts::ARCH
}

/// `*.toml` names of `dirs` in `tree`, a later directory replacing a file of
/// the same name, sorted by name; each with the directory it came from.
fn dropins(tree: &ImageTree, dirs: &[&str]) -> Result<Vec<(String, String)>> {
    let mut by_name = BTreeMap::new();
    for dir in dirs {
        for name in tree.list_dir(dir)? {
            if name.ends_with(".toml") && tree.is_file(&format!("{dir}/{name}"))? {
                by_name.insert(name.clone(), format!("{dir}/{name}"));
            }
        }
    }
    Ok(by_name.into_iter().collect())
}

fn read_text(tree: &ImageTree, path: &str) -> Result<String> {
    let buf = tree
        .read_optional(path)?
        .with_context(|| format!("/{path} vanished"))?;
    String::from_utf8(buf).with_context(|| format!("/{path} is not UTF-8"))
}

/// The merged install configuration of the image, `None` when it has none.
#[context("Loading install configuration of image {}", tree.name())]
pub fn load_install_config(tree: &ImageTree) -> Result<Option<InstallConfig>> {
    let mut configs = Vec::new();
    for (_, path) in dropins(tree, INSTALL_CONFIG_DIRS)? {
        if let Some(c) = parse_install_config(&format!("/{path}"), &read_text(tree, &path)?)? {
            configs.push(c);
        }
    }
    Ok(merge_install_configs(configs, host_arch()))
}

/// The kernel arguments of the image's kargs.d for this machine.
#[context("Loading kernel arguments of image {}", tree.name())]
pub fn load_kargs(tree: &ImageTree) -> Result<Vec<String>> {
    let mut files = Vec::new();
    for (_, path) in dropins(tree, &[KARGS_DIR])? {
        files.push(parse_kargs_file(
            &format!("/{path}"),
            &read_text(tree, &path)?,
        )?);
    }
    Ok(merge_kargs(files, host_arch()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(files: &[&str], arch: &str) -> Option<InstallConfig> {
        let configs = files
            .iter()
            .enumerate()
            .filter_map(|(i, t)| parse_install_config(&format!("{i}.toml"), t).unwrap());
        merge_install_configs(configs, arch)
    }

    fn json(c: &Option<InstallConfig>) -> String {
        serde_json::to_string(c).unwrap()
    }

    #[test]
    fn install_config_merge_table() {
        let cases: &[(&[&str], &str, &str)] = &[
            (&[], "x86_64", "null"),
            (&["[other]\nx = 1\n"], "x86_64", "null"),
            (
                &["[install]\nroot-fs-type = \"xfs\"\n"],
                "x86_64",
                r#"{"root-fs-type":"xfs","filesystem":{"root":{"type":"xfs"}}}"#,
            ),
            (
                &[
                    "[install.filesystem.root]\ntype = \"xfs\"\n",
                    "[install]\nroot-fs-type = \"ext4\"\n",
                ],
                "x86_64",
                r#"{"root-fs-type":"xfs","filesystem":{"root":{"type":"xfs"}}}"#,
            ),
            (
                &[
                    "[install.filesystem.root]\ntype = \"xfs\"\n",
                    "[install.filesystem.root]\ntype = \"btrfs\"\n",
                ],
                "x86_64",
                r#"{"root-fs-type":"btrfs","filesystem":{"root":{"type":"btrfs"}}}"#,
            ),
            (
                &[
                    "[install]\nkargs = [\"a\", \"b\"]\n",
                    "[install]\nkargs = [\"c\"]\nstateroot = \"os\"\n",
                ],
                "x86_64",
                r#"{"kargs":["a","b","c"],"stateroot":"os"}"#,
            ),
            (
                &[
                    "[install]\nkargs = [\"a\"]\n",
                    "[install]\nkargs = [\"arm\"]\nmatch-architectures = [\"aarch64\"]\n",
                    "[install]\nkargs = [\"x86\"]\nmatch-architectures = [\"x86_64\", \"aarch64\"]\n",
                ],
                "x86_64",
                r#"{"kargs":["a","x86"]}"#,
            ),
            (
                &[
                    "[install]\nkargs = [\"arm\"]\nmatch-architectures = [\"aarch64\"]\n",
                    "[install]\nbootloader = \"grub\"\n",
                ],
                "x86_64",
                r#"{"bootloader":"grub"}"#,
            ),
            (
                &[
                    "[install]\nblock = [\"direct\"]\nroot-mount-spec = \"LABEL=root\"\nenforce-container-sigpolicy = true\n",
                ],
                "x86_64",
                r#"{"root-mount-spec":"LABEL=root","enforce-container-sigpolicy":true,"block":["direct"]}"#,
            ),
        ];
        for (files, arch, expect) in cases {
            assert_eq!(json(&merged(files, arch)), *expect, "{files:?}");
        }
    }

    #[test]
    fn install_config_errors() {
        for bad in [
            "[install]\nroot-fs-type = \"zfs\"\n",
            "[install]\nkargs = \"not a list\"\n",
            "[install.filesystem.root]\ntype = \"xfs\"\nsize = 1\n",
            "not toml",
        ] {
            assert!(parse_install_config("x.toml", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kargs_merge_table() {
        let cases: &[(&[&str], &[&str])] = &[
            (&[], &[]),
            (
                &["kargs = [\"console=ttyS0,115200\"]\n"],
                &["console=ttyS0,115200"],
            ),
            (
                &[
                    "kargs = [\"a\", \"b\"]\n",
                    "kargs = [\"arm\"]\nmatch-architectures = [\"aarch64\"]\n",
                    "kargs = [\"c\"]\nmatch-architectures = [\"x86_64\"]\n",
                ],
                &["a", "b", "c"],
            ),
        ];
        for (files, expect) in cases {
            let parsed = files.iter().map(|t| parse_kargs_file("k.toml", t).unwrap());
            assert_eq!(merge_kargs(parsed, "x86_64"), *expect, "{files:?}");
        }
        for bad in [
            "kargs = 1\n",
            "karg = [\"x\"]\n",
            "kargs = [\"a\"]\nextra = 1\n",
        ] {
            assert!(parse_kargs_file("k.toml", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn loads_from_a_tree_in_name_order() {
        let td = tempfile::tempdir().unwrap();
        let w = |p: &str, c: &str| {
            let full = td.path().join(p);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, c).unwrap();
        };
        w(
            "usr/lib/bootc/install/20-b.toml",
            "[install]\nkargs = [\"b\"]\n",
        );
        w(
            "usr/lib/bootc/install/10-a.toml",
            "[install]\nkargs = [\"a\"]\nroot-fs-type = \"xfs\"\n",
        );
        w(
            "etc/bootc/install/10-a.toml",
            "[install]\nkargs = [\"etc-a\"]\n",
        );
        w("usr/lib/bootc/install/README", "not toml");
        w(
            "usr/lib/bootc/kargs.d/10-console.toml",
            "kargs = [\"console=ttyS0,115200\"]\n",
        );
        w(
            "usr/lib/bootc/kargs.d/05-first.toml",
            "kargs = [\"first\"]\n",
        );
        let tree = ImageTree::open(td.path(), "t").unwrap();
        let c = load_install_config(&tree).unwrap().unwrap();
        assert_eq!(c.kargs.unwrap(), ["etc-a", "b"]);
        assert_eq!(c.root_fs_type, None);
        assert_eq!(
            load_kargs(&tree).unwrap(),
            ["first", "console=ttyS0,115200"]
        );
    }
}
