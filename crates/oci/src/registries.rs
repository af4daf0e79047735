//! `registries.conf` (containers-registries.conf(5)), read only to explain.
//!
//! skopeo reads `registries.conf` itself and applies its mirrors, remapped
//! locations, `insecure` and `blocked` settings; we never pass them on. We
//! parse the file only so that a failed pull can say which locations were
//! tried ([`RegistriesConf::resolve`]) and why a name was refused
//! ([`RegistriesConf::is_blocked`]).
//!
//! Supported: the v2 format (`[[registry]]` tables with `prefix`,
//! `location`, `insecure`, `blocked`, `mirror-by-digest-only` and
//! `[[registry.mirror]]` with `location`, `insecure`, `pull-from-mirror`),
//! the v1 tables (`[registries.search|insecure|block]`), and drop-ins
//! ([`load_registries_conf`]). Short-name aliases and
//! `unqualified-search-registries` play no part here: skopeo's `docker://`
//! transport expands an unqualified name to `docker.io` without them.
//!
//! # Choosing the `[[registry]]` table
//!
//! The fully expanded reference (`docker.io/library/busybox:latest`) is
//! compared against each prefix; a prefix matches when the reference equals
//! it or continues it with `/`, `:` or `@`, and `*.example.com` matches any
//! subdomain of `example.com` in the host part. Of the matching tables the
//! one with the longest prefix is used.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fn_error_context::context;
use serde::Deserialize;

use crate::imgref::ImageRef;

/// The system-wide file.
pub const REGISTRIES_CONF_PATH: &str = "/etc/containers/registries.conf";

/// The system-wide drop-in directory; its `*.conf` files are merged in
/// lexical order after the main file.
pub const REGISTRIES_CONF_DIR: &str = "/etc/containers/registries.conf.d";

/// Environment variable naming a main file to use instead of the system and
/// per-user ones (honoured by containers-image).
pub const REGISTRIES_CONF_ENV_VAR: &str = "CONTAINERS_REGISTRIES_CONF";

/// The parsed configuration (only what [`RegistriesConf::resolve`] needs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistriesConf {
    /// The `[[registry]]` tables, in file order.
    pub registries: Vec<Registry>,
    /// `unqualified-search-registries` (or v1 `[registries.search]`).
    pub unqualified_search_registries: Vec<String>,
}

/// One `[[registry]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    /// The names this table applies to; defaults to `location`.
    pub prefix: String,
    /// Where images under `prefix` really live; empty only for a wildcard
    /// prefix, meaning "the name as given".
    pub location: String,
    /// Whether plain HTTP and unverified TLS are allowed for `location`.
    pub insecure: bool,
    /// Whether pulling names under `prefix` is forbidden.
    pub blocked: bool,
    /// Whether mirrors are used only for references by digest.
    pub mirror_by_digest_only: bool,
    /// Mirrors, tried in order before `location`.
    pub mirrors: Vec<Mirror>,
}

/// One `[[registry.mirror]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// Where the mirror serves the prefix's namespace.
    pub location: String,
    /// Whether plain HTTP and unverified TLS are allowed for this mirror.
    pub insecure: bool,
    /// Which references this mirror serves.
    pub pull_from_mirror: PullFromMirror,
}

/// A mirror's `pull-from-mirror` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullFromMirror {
    /// Tag and digest references (`all`, or unset).
    #[default]
    All,
    /// Digest references only (`digest-only`).
    DigestOnly,
    /// Tag references only (`tag-only`).
    TagOnly,
}

/// One place skopeo will try to pull an image from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullSource {
    /// The rewritten reference, e.g. `mirror.internal:5000/os:42`.
    pub location: String,
    /// Whether TLS verification is off for it.
    pub insecure: bool,
    /// Whether it is a mirror (as opposed to the primary location).
    pub mirror: bool,
}

// ---- the TOML document ----

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Document {
    unqualified_search_registries: Option<Vec<String>>,
    #[serde(default)]
    registry: Vec<RegistryTable>,
    registries: Option<V1Tables>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RegistryTable {
    prefix: Option<String>,
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror_by_digest_only: bool,
    #[serde(default)]
    mirror: Vec<MirrorTable>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct MirrorTable {
    location: String,
    #[serde(default)]
    insecure: bool,
    pull_from_mirror: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct V1Tables {
    search: Option<V1List>,
    insecure: Option<V1List>,
    block: Option<V1List>,
}

#[derive(Debug, Default, Deserialize)]
struct V1List {
    #[serde(default)]
    registries: Vec<String>,
}

impl RegistriesConf {
    /// Parses one file (v2 or v1 format, not both).
    pub fn parse(s: &str) -> Result<RegistriesConf> {
        let doc: Document = toml::from_str(s).context("Parsing registries.conf TOML")?;
        if let Some(v1) = doc.registries {
            anyhow::ensure!(
                doc.registry.is_empty() && doc.unqualified_search_registries.is_none(),
                "mixing the v1 [registries.*] tables with v2 settings is not supported"
            );
            return Ok(from_v1(v1));
        }
        let registries = doc
            .registry
            .into_iter()
            .map(Registry::from_table)
            .collect::<Result<Vec<_>>>()?;
        Ok(RegistriesConf {
            registries,
            unqualified_search_registries: doc.unqualified_search_registries.unwrap_or_default(),
        })
    }

    /// Applies a later file (a drop-in) over this one, as containers-image
    /// does: its tables replace ours with the same prefix or are added, and
    /// its `unqualified-search-registries` replace ours if it sets any.
    pub fn merge(&mut self, other: RegistriesConf) {
        for reg in other.registries {
            match self.registries.iter_mut().find(|r| r.prefix == reg.prefix) {
                Some(existing) => *existing = reg,
                None => self.registries.push(reg),
            }
        }
        if !other.unqualified_search_registries.is_empty() {
            self.unqualified_search_registries = other.unqualified_search_registries;
        }
    }

    /// The `[[registry]]` table that applies to `imgref`: the matching one
    /// with the longest prefix. `None` for non-registry transports.
    pub fn find_registry(&self, imgref: &ImageRef) -> Option<&Registry> {
        let reference = imgref.docker_reference()?.whole();
        self.registries
            .iter()
            .filter(|r| prefix_match_len(&reference, &r.prefix).is_some())
            .max_by_key(|r| r.prefix.len())
    }

    /// Whether skopeo will refuse `imgref` because its table is `blocked`.
    pub fn is_blocked(&self, imgref: &ImageRef) -> bool {
        self.find_registry(imgref).is_some_and(|r| r.blocked)
    }

    /// The locations skopeo tries for `imgref`, in order: the applicable
    /// mirrors, then the primary location. Empty for non-registry
    /// transports, which `registries.conf` does not affect.
    pub fn resolve(&self, imgref: &ImageRef) -> Vec<PullSource> {
        let Some(reference) = imgref.docker_reference() else {
            return Vec::new();
        };
        let by_digest = reference.digest().is_some();
        let full = reference.whole();
        let Some(reg) = self.find_registry(imgref) else {
            return vec![PullSource {
                location: full,
                insecure: false,
                mirror: false,
            }];
        };
        let mirrors = reg.mirrors.iter().filter(|m| {
            if reg.mirror_by_digest_only {
                by_digest
            } else {
                match m.pull_from_mirror {
                    PullFromMirror::All => true,
                    PullFromMirror::DigestOnly => by_digest,
                    PullFromMirror::TagOnly => !by_digest,
                }
            }
        });
        let mut out: Vec<PullSource> = mirrors
            .map(|m| PullSource {
                location: rewrite(&full, &reg.prefix, &m.location),
                insecure: m.insecure,
                mirror: true,
            })
            .collect();
        out.push(PullSource {
            location: rewrite(&full, &reg.prefix, &reg.location),
            insecure: reg.insecure,
            mirror: false,
        });
        out
    }
}

impl Registry {
    fn from_table(t: RegistryTable) -> Result<Registry> {
        let location = t
            .location
            .as_deref()
            .map(normalize_location)
            .unwrap_or_default();
        let prefix = match t.prefix.as_deref().map(normalize_location) {
            Some(p) if !p.is_empty() => p,
            _ => location.clone(),
        };
        anyhow::ensure!(
            !prefix.is_empty(),
            "a [[registry]] table has neither prefix nor location"
        );
        validate_wildcard(&prefix)?;
        anyhow::ensure!(
            !location.is_empty() || prefix.starts_with("*."),
            "registry {prefix:?} has an empty location (only a wildcard prefix may omit it)"
        );
        let mut mirrors = Vec::with_capacity(t.mirror.len());
        for m in t.mirror {
            let location = normalize_location(&m.location);
            anyhow::ensure!(
                !location.is_empty(),
                "a mirror of registry {prefix:?} has an empty location"
            );
            let pull_from_mirror = match m.pull_from_mirror.as_deref() {
                None | Some("") | Some("all") => PullFromMirror::All,
                Some("digest-only") => PullFromMirror::DigestOnly,
                Some("tag-only") => PullFromMirror::TagOnly,
                Some(other) => anyhow::bail!(
                    "mirror {location:?} of registry {prefix:?} has invalid pull-from-mirror {other:?} \
                     (expected all, digest-only or tag-only)"
                ),
            };
            anyhow::ensure!(
                !(t.mirror_by_digest_only && pull_from_mirror != PullFromMirror::All),
                "registry {prefix:?} sets mirror-by-digest-only, so its mirror {location:?} \
                 cannot set pull-from-mirror"
            );
            mirrors.push(Mirror {
                location,
                insecure: m.insecure,
                pull_from_mirror,
            });
        }
        Ok(Registry {
            prefix,
            location,
            insecure: t.insecure,
            blocked: t.blocked,
            mirror_by_digest_only: t.mirror_by_digest_only,
            mirrors,
        })
    }
}

/// Converts the v1 lists: each insecure or blocked host becomes a table.
fn from_v1(v1: V1Tables) -> RegistriesConf {
    let mut conf = RegistriesConf {
        registries: Vec::new(),
        unqualified_search_registries: v1.search.map(|s| s.registries).unwrap_or_default(),
    };
    let mut table = |host: &str| -> usize {
        let host = normalize_location(host);
        match conf.registries.iter().position(|r| r.prefix == host) {
            Some(i) => i,
            None => {
                conf.registries.push(Registry {
                    prefix: host.clone(),
                    location: host,
                    insecure: false,
                    blocked: false,
                    mirror_by_digest_only: false,
                    mirrors: Vec::new(),
                });
                conf.registries.len() - 1
            }
        }
    };
    let mut insecure = Vec::new();
    let mut blocked = Vec::new();
    for host in v1.insecure.map(|l| l.registries).unwrap_or_default() {
        insecure.push(table(&host));
    }
    for host in v1.block.map(|l| l.registries).unwrap_or_default() {
        blocked.push(table(&host));
    }
    for i in insecure {
        conf.registries[i].insecure = true;
    }
    for i in blocked {
        conf.registries[i].blocked = true;
    }
    conf
}

/// Drops a trailing `/`, as containers-image does for locations.
fn normalize_location(s: &str) -> String {
    s.trim().trim_end_matches('/').to_owned()
}

/// A `*` may only open a prefix, as `*.example.com`.
fn validate_wildcard(prefix: &str) -> Result<()> {
    let rest = prefix.strip_prefix("*.").unwrap_or(prefix);
    anyhow::ensure!(
        !rest.contains('*'),
        "invalid prefix {prefix:?}: a wildcard is only allowed as a leading `*.`"
    );
    anyhow::ensure!(
        !(prefix.starts_with("*.") && rest.contains(['/', ':', '@'])),
        "invalid prefix {prefix:?}: a wildcard prefix names hosts only"
    );
    Ok(())
}

/// If `prefix` matches `reference`, the length of the matched part of
/// `reference` (what a location replaces).
fn prefix_match_len(reference: &str, prefix: &str) -> Option<usize> {
    let boundary = |rest: &str| rest.is_empty() || rest.starts_with(['/', ':', '@']);
    if let Some(domain) = prefix.strip_prefix('*') {
        // `domain` is ".example.com"; it must end inside the host part.
        let index = reference.find(domain)?;
        if reference[..index].contains('/') {
            return None;
        }
        let end = index + domain.len();
        return boundary(&reference[end..]).then_some(end);
    }
    let rest = reference.strip_prefix(prefix)?;
    boundary(rest).then_some(prefix.len())
}

/// Replaces the part of `reference` matched by `prefix` with `location`; an
/// empty location (wildcard prefixes) keeps the reference as given.
fn rewrite(reference: &str, prefix: &str, location: &str) -> String {
    if location.is_empty() {
        return reference.to_owned();
    }
    match prefix_match_len(reference, prefix) {
        Some(n) => format!("{location}{}", &reference[n..]),
        None => reference.to_owned(),
    }
}

/// Loads the configuration skopeo would use on this system: the main file
/// (`$CONTAINERS_REGISTRIES_CONF`, else `$HOME/.config/containers/registries.conf`
/// if it exists, else [`REGISTRIES_CONF_PATH`]) then the `*.conf` drop-ins
/// of [`REGISTRIES_CONF_DIR`] and `$HOME/.config/containers/registries.conf.d`,
/// each directory in lexical order. Missing files and directories are
/// skipped. Absolute paths are taken relative to `root`.
pub fn load_registries_conf(root: &Path) -> Result<RegistriesConf> {
    let env = std::env::var_os(REGISTRIES_CONF_ENV_VAR);
    let home = std::env::var_os("HOME");
    load_registries_conf_from(
        root,
        env.as_deref().map(Path::new),
        home.as_deref().map(Path::new),
    )
}

/// [`load_registries_conf`] with its environment explicit.
fn load_registries_conf_from(
    root: &Path,
    env_override: Option<&Path>,
    home: Option<&Path>,
) -> Result<RegistriesConf> {
    let under_root = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    let user_dir = home
        .filter(|h| !h.as_os_str().is_empty())
        .map(|h| under_root(&h.join(".config/containers")));
    let main = match env_override.filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => under_root(p),
        None => {
            let user = user_dir.as_ref().map(|d| d.join("registries.conf"));
            match user {
                Some(u) if u.try_exists().unwrap_or(false) => u,
                _ => under_root(Path::new(REGISTRIES_CONF_PATH)),
            }
        }
    };
    let mut conf = load_file(&main)?.unwrap_or_default();
    let dirs = [
        Some(under_root(Path::new(REGISTRIES_CONF_DIR))),
        user_dir.map(|d| d.join("registries.conf.d")),
    ];
    for dir in dirs.into_iter().flatten() {
        for dropin in dropins(&dir)? {
            if let Some(c) = load_file(&dropin)? {
                conf.merge(c);
            }
        }
    }
    Ok(conf)
}

/// Parses `path`; `None` if it does not exist.
#[context("Loading {}", path.display())]
fn load_file(path: &Path) -> Result<Option<RegistriesConf>> {
    match std::fs::read_to_string(path) {
        Ok(text) => RegistriesConf::parse(&text).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).context("Reading file"),
    }
}

/// The `*.conf` files of `dir`, sorted; empty if `dir` does not exist.
#[context("Listing drop-ins in {}", dir.display())]
fn dropins(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).context("Reading directory"),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.context("Reading directory entry")?.path();
        if path.extension().is_some_and(|e| e == "conf") && path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2: &str = include_str!("fixtures/registries-v2.conf");
    const V1: &str = include_str!("fixtures/registries-v1.conf");
    const DROPIN: &str = include_str!("fixtures/registries-dropin.conf");

    const DIGEST: &str = "sha256:5db6d8b5f34d3cbdaa1e82ed0152a5ac980076d19317d4269db149cbde057bb2";

    fn src(location: &str, insecure: bool, mirror: bool) -> PullSource {
        PullSource {
            location: location.to_owned(),
            insecure,
            mirror,
        }
    }

    fn check(conf: &RegistriesConf, image: &str, blocked: bool, expect: &[PullSource]) {
        let r = ImageRef::parse(image).unwrap();
        assert_eq!(conf.is_blocked(&r), blocked, "{image}");
        assert_eq!(conf.resolve(&r), expect, "{image}");
    }

    #[test]
    fn resolve_v2() {
        let conf = RegistriesConf::parse(V2).unwrap();
        assert_eq!(
            conf.unqualified_search_registries,
            ["registry.example.org", "quay.io"]
        );
        let by_digest = format!("quay.io/example-os/os@{DIGEST}");
        let busybox_digest = format!("busybox@{DIGEST}");
        let corp_digest = format!("git.corp.example/team/os@{DIGEST}");
        let cases: Vec<(&str, bool, Vec<PullSource>)> = vec![
            // Mirrors first (the digest-only one skipped for a tag), then the primary.
            (
                "quay.io/example-os/os:42",
                false,
                vec![
                    src("mirror.internal:5000/example-os/os:42", true, true),
                    src("quay.io/example-os/os:42", false, false),
                ],
            ),
            (
                &by_digest,
                false,
                vec![
                    src(
                        &format!("mirror.internal:5000/example-os/os@{DIGEST}"),
                        true,
                        true,
                    ),
                    src(
                        &format!("mirror2.internal/example-os/os@{DIGEST}"),
                        false,
                        true,
                    ),
                    src(&by_digest, false, false),
                ],
            ),
            // Prefix must end at a separator.
            (
                "quay.io/example-os-other/x",
                false,
                vec![src("quay.io/example-os-other/x:latest", false, false)],
            ),
            // Longest prefix wins: the blocked sub-namespace.
            (
                "quay.io/example-os/attic/old",
                true,
                vec![src("quay.io/example-os/attic/old:latest", false, false)],
            ),
            // Location without prefix; insecure primary.
            (
                "registry.example.org/os",
                false,
                vec![src("registry.example.org/os:latest", true, false)],
            ),
            // Unqualified names are expanded; mirror-by-digest-only skips the mirror for tags.
            (
                "busybox",
                false,
                vec![src(
                    "docker-cache.internal/library/busybox:latest",
                    false,
                    false,
                )],
            ),
            (
                &busybox_digest,
                false,
                vec![
                    src(
                        &format!("dockerhub-mirror.internal/library/busybox@{DIGEST}"),
                        false,
                        true,
                    ),
                    src(
                        &format!("docker-cache.internal/library/busybox@{DIGEST}"),
                        false,
                        false,
                    ),
                ],
            ),
            // Wildcards match subdomains in the host only.
            (
                "a.b.blocked.example/x",
                true,
                vec![src("a.b.blocked.example/x:latest", false, false)],
            ),
            (
                "blocked.example/x",
                false,
                vec![src("blocked.example/x:latest", false, false)],
            ),
            // Wildcard without location: the name is kept; tag-only mirror used for a tag.
            (
                "git.corp.example:8443/team/os:1",
                false,
                vec![
                    src("corp-mirror.internal:8443/team/os:1", false, true),
                    src("git.corp.example:8443/team/os:1", false, false),
                ],
            ),
            (
                &corp_digest,
                false,
                vec![src(
                    &format!("git.corp.example/team/os@{DIGEST}"),
                    false,
                    false,
                )],
            ),
            // No table at all.
            (
                "ghcr.io/x/y:z",
                false,
                vec![src("ghcr.io/x/y:z", false, false)],
            ),
        ];
        for (image, blocked, expect) in &cases {
            check(&conf, image, *blocked, expect);
        }
        // Not a registry: nothing to resolve.
        let oci = ImageRef::parse("oci:/srv/layout").unwrap();
        assert!(conf.resolve(&oci).is_empty());
        assert!(!conf.is_blocked(&oci));
    }

    #[test]
    fn v1_and_merge() {
        let mut conf = RegistriesConf::parse(V1).unwrap();
        assert_eq!(conf.unqualified_search_registries, ["docker.io", "quay.io"]);
        check(
            &conf,
            "localhost:5000/os",
            false,
            &[src("localhost:5000/os:latest", true, false)],
        );
        check(
            &conf,
            "evil.example/os",
            true,
            &[src("evil.example/os:latest", false, false)],
        );

        let mut v2 = RegistriesConf::parse(V2).unwrap();
        v2.merge(RegistriesConf::parse(DROPIN).unwrap());
        check(
            &v2,
            "registry.example.org/os",
            true,
            &[src("registry.example.org/os:latest", false, false)],
        );
        // Untouched tables survive and search registries are kept when the drop-in sets none.
        assert!(!v2.is_blocked(&ImageRef::parse("quay.io/example-os/os").unwrap()));
        assert_eq!(v2.unqualified_search_registries.len(), 2);

        conf.merge(RegistriesConf::parse("unqualified-search-registries = ['x.example']").unwrap());
        assert_eq!(conf.unqualified_search_registries, ["x.example"]);
    }

    #[test]
    fn parse_errors() {
        let cases: &[(&str, &str)] = &[
            (
                "[[registry]]\ninsecure = true",
                "neither prefix nor location",
            ),
            (
                "[[registry]]\nprefix = \"quay.io\"\nlocation = \"\"",
                "empty location",
            ),
            (
                "[[registry]]\nprefix = \"quay.io/x\"\nblocked = true",
                "empty location",
            ),
            (
                "[[registry]]\nprefix = \"a.*.com\"",
                "wildcard is only allowed",
            ),
            (
                "[[registry]]\nprefix = \"*.example.com/foo\"",
                "names hosts only",
            ),
            (
                "[[registry]]\nlocation = \"q.io\"\n[[registry.mirror]]\nlocation = \"m.io\"\npull-from-mirror = \"sometimes\"",
                "invalid pull-from-mirror \"sometimes\"",
            ),
            (
                "[[registry]]\nlocation = \"q.io\"\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = \"m.io\"\npull-from-mirror = \"tag-only\"",
                "cannot set pull-from-mirror",
            ),
            (
                "[registries.search]\nregistries = []\n[[registry]]\nlocation = \"q.io\"",
                "mixing the v1",
            ),
            ("[[registry]\n", "Parsing registries.conf TOML"),
        ];
        for (text, frag) in cases {
            let err = format!("{:#}", RegistriesConf::parse(text).unwrap_err());
            assert!(err.contains(frag), "{text}: {err}");
        }
    }

    #[test]
    fn load_with_dropins() {
        let td = tempfile::tempdir().unwrap();
        let root = td.path();
        // Nothing present: an empty configuration.
        assert_eq!(
            load_registries_conf_from(root, None, None).unwrap(),
            RegistriesConf::default()
        );
        let write = |rel: &str, text: &str| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        write("etc/containers/registries.conf", V2);
        write("etc/containers/registries.conf.d/50-block.conf", DROPIN);
        write(
            "etc/containers/registries.conf.d/10-first.conf",
            "[[registry]]\nlocation = \"registry.example.org\"\ninsecure = true\n",
        );
        write("etc/containers/registries.conf.d/README", "not toml [[");
        let conf = load_registries_conf_from(root, None, Some(Path::new("/root"))).unwrap();
        // 50-block.conf is applied after 10-first.conf.
        check(
            &conf,
            "registry.example.org/os",
            true,
            &[src("registry.example.org/os:latest", false, false)],
        );

        // A per-user main file replaces the system one.
        write("root/.config/containers/registries.conf", V1);
        let conf = load_registries_conf_from(root, None, Some(Path::new("/root"))).unwrap();
        assert_eq!(conf.unqualified_search_registries, ["docker.io", "quay.io"]);

        // The environment override wins; errors name the file.
        write("custom.conf", "[[registry]\n");
        let err =
            load_registries_conf_from(root, Some(Path::new("/custom.conf")), None).unwrap_err();
        assert!(format!("{err:#}").contains("custom.conf"), "{err:#}");
    }
}
