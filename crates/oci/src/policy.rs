//! The containers signature policy, `policy.json` (containers-policy.json(5)).
//!
//! skopeo enforces the policy itself on every fetch; we read it only to
//! answer one question before fetching: *would this image be accepted
//! without any signature check?* That is what
//! `--enforce-container-sigpolicy` refuses ([`check_enforce`]).
//!
//! # Which requirements apply
//!
//! As containers-image does it ([`Policy::requirements_for`]): under
//! `transports.<transport>`, the first scope that exists among the image's
//! *identity* and then its *namespaces* from most to least specific; else
//! that transport's default scope `""`; else the global `default`. Only that
//! one list applies; more general ones are ignored.
//!
//! | transport key | identity, then namespaces |
//! |---|---|
//! | `docker` | `host/ns/repo:tag` (or `@digest`), `host/ns/repo`, `host/ns`, `host`, then `*.domain` wildcards from the most specific |
//! | `oci`, `oci-archive` | the absolute path, then each parent directory (never `/`) |
//! | `containers-storage` | `[driver@root]name:tag`, `[driver@root]name`, its parent namespaces, `[driver@root]`, `[root]` |
//!
//! Registry names are matched in their fully expanded form
//! (`busybox` → `docker.io/library/busybox:latest`). Paths are made absolute
//! lexically; symlinks are not resolved (containers-image resolves them, so
//! a scope naming a symlinked directory can differ). A containers-storage
//! reference without a `[driver@root]` specifier is matched as if it named
//! the default rootful store, `[overlay@/var/lib/containers/storage]`.
//!
//! # Where the policy lives
//!
//! [`find_policy_path`] follows the order upstream bootc uses (matching
//! current containers-image): `$CONTAINERS_POLICY_JSON` if set, else
//! `$XDG_CONFIG_HOME/containers/policy.json` (or
//! `$HOME/.config/containers/policy.json`), else
//! `/etc/containers/policy.json`, else `/usr/share/containers/policy.json`.
//! Older skopeo (1.9, as in Debian 12) knows only the `$HOME/.config` and
//! `/etc` locations and ignores the environment variable; whoever starts
//! skopeo should pass the path we found with `skopeo --policy PATH` so that
//! what we check is what skopeo enforces.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};
use fn_error_context::context;
use serde::Deserialize;

use crate::imgref::{ImageRef, Transport};

/// The system-wide policy file, the one normally in effect for root.
pub const DEFAULT_POLICY_PATH: &str = "/etc/containers/policy.json";

/// Environment variable naming a policy file that overrides every other
/// location (honoured by current containers-image and upstream bootc, not
/// by skopeo 1.9).
pub const POLICY_ENV_VAR: &str = "CONTAINERS_POLICY_JSON";

/// System locations tried in order, relative to the root.
const SYSTEM_POLICY_PATHS: &[&str] = &[
    "etc/containers/policy.json",
    "usr/share/containers/policy.json",
];

/// The per-user location, under `$XDG_CONFIG_HOME` or `$HOME/.config`.
const USER_POLICY_SUFFIX: &str = "containers/policy.json";

/// The store containers-storage uses for root when a reference names none;
/// the policy identity of such a reference is computed against it.
const DEFAULT_STORAGE_DRIVER: &str = "overlay";
/// See [`DEFAULT_STORAGE_DRIVER`].
const DEFAULT_STORAGE_ROOT: &str = "/var/lib/containers/storage";

/// One policy requirement; an image must satisfy every requirement of the
/// list that applies to it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type")]
pub enum Requirement {
    /// Accept the image without any check.
    #[serde(rename = "insecureAcceptAnything")]
    InsecureAcceptAnything,
    /// Refuse the image.
    #[serde(rename = "reject")]
    Reject,
    /// Require a GPG "simple signing" signature; skopeo checks it.
    #[serde(rename = "signedBy")]
    SignedBy(SignatureParams),
    /// Require a sigstore signature; skopeo checks it.
    #[serde(rename = "sigstoreSigned")]
    SigstoreSigned(SignatureParams),
}

impl Requirement {
    /// The requirement's `type` as written in the file.
    pub fn type_name(&self) -> &'static str {
        match self {
            Requirement::InsecureAcceptAnything => "insecureAcceptAnything",
            Requirement::Reject => "reject",
            Requirement::SignedBy(_) => "signedBy",
            Requirement::SigstoreSigned(_) => "sigstoreSigned",
        }
    }
}

/// The parameters of a signature requirement (keys, identity rules), kept
/// as written: skopeo interprets them, we only need to know they exist.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SignatureParams {
    /// Every field other than `type`, e.g. `keyPath`, `signedIdentity`.
    #[serde(flatten)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// What the applicable requirements amount to for one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyDecision {
    /// Every requirement is `insecureAcceptAnything`: nothing is verified.
    AcceptAnything,
    /// A `reject` requirement applies: skopeo will refuse the image.
    Reject,
    /// At least one signature requirement applies and none rejects.
    RequiresVerification,
}

/// Where in the policy the applicable requirements were found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyScope {
    /// `transports.<transport>.<scope>` with a non-empty scope.
    Scope {
        /// The transport key, e.g. `docker`.
        transport: String,
        /// The scope key, e.g. `quay.io/example`.
        scope: String,
    },
    /// `transports.<transport>.""`, the transport's default.
    TransportDefault {
        /// The transport key.
        transport: String,
    },
    /// The top-level `default`.
    GlobalDefault,
}

impl fmt::Display for PolicyScope {
    /// Prints a path into the JSON document, e.g.
    /// `transports.docker."quay.io"` or `default`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyScope::Scope { transport, scope } => {
                write!(f, "transports.{transport}.{scope:?}")
            }
            PolicyScope::TransportDefault { transport } => write!(f, "transports.{transport}.\"\""),
            PolicyScope::GlobalDefault => f.write_str("default"),
        }
    }
}

/// The document as serialized.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyDocument {
    default: Vec<Requirement>,
    #[serde(default)]
    transports: BTreeMap<String, BTreeMap<String, Vec<Requirement>>>,
}

/// A parsed `policy.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    default: Vec<Requirement>,
    transports: BTreeMap<String, BTreeMap<String, Vec<Requirement>>>,
    source: Option<PathBuf>,
}

impl Policy {
    /// Parses a policy document.
    ///
    /// Like containers-image, refuses a document without `default`, with
    /// unknown top-level fields or requirement types, or with an empty
    /// requirement list anywhere.
    pub fn parse(s: &str) -> Result<Policy> {
        let doc: PolicyDocument = serde_json::from_str(s).context("Parsing policy JSON")?;
        anyhow::ensure!(
            !doc.default.is_empty(),
            "policy `default` has no requirements"
        );
        for (transport, scopes) in &doc.transports {
            for (scope, reqs) in scopes {
                anyhow::ensure!(
                    !reqs.is_empty(),
                    "policy scope transports.{transport}.{scope:?} has no requirements"
                );
            }
        }
        Ok(Policy {
            default: doc.default,
            transports: doc.transports,
            source: None,
        })
    }

    /// The file this policy was loaded from, if any.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// The requirements that apply to `imgref` (see the module docs).
    pub fn requirements_for(&self, imgref: &ImageRef) -> &[Requirement] {
        self.lookup(imgref).1
    }

    /// Where the requirements for `imgref` come from.
    pub fn scope_for(&self, imgref: &ImageRef) -> PolicyScope {
        self.lookup(imgref).0
    }

    /// What the requirements for `imgref` amount to.
    pub fn decide(&self, imgref: &ImageRef) -> PolicyDecision {
        decide_requirements(self.requirements_for(imgref))
    }

    fn lookup(&self, imgref: &ImageRef) -> (PolicyScope, &[Requirement]) {
        let transport = imgref.transport.policy_name();
        if let Some(scopes) = self.transports.get(transport) {
            for candidate in policy_identities(imgref) {
                if let Some(reqs) = scopes.get(&candidate) {
                    let scope = PolicyScope::Scope {
                        transport: transport.to_owned(),
                        scope: candidate,
                    };
                    return (scope, reqs);
                }
            }
            if let Some(reqs) = scopes.get("") {
                let scope = PolicyScope::TransportDefault {
                    transport: transport.to_owned(),
                };
                return (scope, reqs);
            }
        }
        (PolicyScope::GlobalDefault, &self.default)
    }
}

/// Folds a requirement list into a [`PolicyDecision`].
fn decide_requirements(reqs: &[Requirement]) -> PolicyDecision {
    if reqs.iter().any(|r| matches!(r, Requirement::Reject)) {
        PolicyDecision::Reject
    } else if reqs
        .iter()
        .all(|r| matches!(r, Requirement::InsecureAcceptAnything))
    {
        PolicyDecision::AcceptAnything
    } else {
        PolicyDecision::RequiresVerification
    }
}

/// Loads and parses the policy file at `path`.
#[context("Loading containers policy {}", path.display())]
pub fn load_policy(path: &Path) -> Result<Policy> {
    let text = std::fs::read_to_string(path).context("Reading file")?;
    let mut policy = Policy::parse(&text)?;
    policy.source = Some(path.to_owned());
    Ok(policy)
}

/// Finds the policy file in effect for this process (see the module docs
/// for the order); errors if none exists.
pub fn find_policy_path() -> Result<PathBuf> {
    let home = std::env::var_os("HOME");
    let xdg = std::env::var_os("XDG_CONFIG_HOME");
    resolve_policy_path(
        Path::new("/"),
        std::env::var_os(POLICY_ENV_VAR).as_deref(),
        xdg.as_deref().map(Path::new),
        home.as_deref().map(Path::new),
    )
}

/// [`find_policy_path`] then [`load_policy`].
pub fn load_default_policy() -> Result<Policy> {
    load_policy(&find_policy_path()?)
}

/// The lookup behind [`find_policy_path`], with its inputs explicit and all
/// absolute paths taken relative to `root`.
///
/// The environment override is trusted as is (no existence check, so that a
/// typo is reported rather than silently replaced by another file); an empty
/// value counts as unset.
fn resolve_policy_path(
    root: &Path,
    env_override: Option<&OsStr>,
    xdg_config_home: Option<&Path>,
    home: Option<&Path>,
) -> Result<PathBuf> {
    let under_root = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    if let Some(p) = env_override.filter(|v| !v.is_empty()) {
        return Ok(under_root(Path::new(p)));
    }
    let user = match (xdg_config_home, home) {
        (Some(xdg), _) if !xdg.as_os_str().is_empty() => Some(xdg.join(USER_POLICY_SUFFIX)),
        (_, Some(home)) if !home.as_os_str().is_empty() => {
            Some(home.join(".config").join(USER_POLICY_SUFFIX))
        }
        _ => None,
    };
    let candidates = user
        .into_iter()
        .chain(SYSTEM_POLICY_PATHS.iter().map(PathBuf::from))
        .map(|p| under_root(&p));
    let mut tried = Vec::new();
    for candidate in candidates {
        match candidate.try_exists() {
            Ok(true) => return Ok(candidate),
            Ok(false) => tried.push(candidate.display().to_string()),
            Err(e) => {
                return Err(e).with_context(|| format!("Checking {}", candidate.display()));
            }
        }
    }
    anyhow::bail!(
        "no containers policy.json found (${POLICY_ENV_VAR} unset; tried {})",
        tried.join(", ")
    )
}

/// Refuses `imgref` when the policy would accept it without verifying any
/// signature, as `--enforce-container-sigpolicy` requires.
///
/// Only [`PolicyDecision::AcceptAnything`] is refused here; an image the
/// policy rejects is left for skopeo to refuse with its own message.
/// Upstream bootc refuses only a global `default` of exactly
/// `insecureAcceptAnything`; this check uses the requirements that actually
/// apply to the image, so a permissive scope for it is refused too and a
/// signed scope under a permissive default is accepted.
pub fn check_enforce(policy: &Policy, imgref: &ImageRef) -> Result<()> {
    if policy.decide(imgref) != PolicyDecision::AcceptAnything {
        return Ok(());
    }
    let file = policy
        .source()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "the containers policy".to_owned());
    anyhow::bail!(
        "{file} accepts {imgref} without signature verification \
         (only insecureAcceptAnything in {scope}); \
         --enforce-container-sigpolicy requires a signedBy or sigstoreSigned requirement",
        scope = policy.scope_for(imgref),
    )
}

/// The policy identity of `imgref` followed by its namespaces, most
/// specific first (the transport default `""` is not included).
pub fn policy_identities(imgref: &ImageRef) -> Vec<String> {
    match imgref.transport {
        Transport::Registry => match imgref.docker_reference() {
            Some(r) => {
                let name = format!("{}/{}", r.registry(), r.repository());
                let identity = match (r.digest(), r.tag()) {
                    (Some(d), _) => format!("{name}@{d}"),
                    (None, Some(t)) => format!("{name}:{t}"),
                    (None, None) => name.clone(),
                };
                let mut out = vec![identity];
                out.extend(docker_namespaces(&name));
                out
            }
            None => Vec::new(),
        },
        Transport::OciDir | Transport::OciArchive => {
            let Some((path, _tag)) = imgref.oci_path_and_tag() else {
                return Vec::new();
            };
            match absolute_lexical(Path::new(path)) {
                Some(abs) => path_namespaces(&abs),
                None => Vec::new(),
            }
        }
        Transport::ContainersStorage => storage_identities(&imgref.name),
    }
}

/// `host/ns/repo`, `host/ns`, `host`, then `*.` wildcards of the host
/// without its port, from the most specific.
fn docker_namespaces(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = name;
    loop {
        out.push(cur.to_owned());
        match cur.rfind('/') {
            Some(i) => cur = &cur[..i],
            None => break,
        }
    }
    let mut host = cur.split(':').next().unwrap_or(cur);
    while let Some(i) = host.find('.') {
        host = &host[i + 1..];
        out.push(format!("*.{host}"));
    }
    out
}

/// The path itself, then each parent directory, never `/`.
fn path_namespaces(abs: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = abs;
    while cur != "/" {
        let Some(i) = cur.rfind('/') else { break };
        out.push(cur.to_owned());
        cur = &cur[..i];
        if cur.is_empty() {
            break;
        }
    }
    out
}

/// Makes `path` absolute against the current directory and normalises it
/// lexically (`.`, `..`, repeated and trailing slashes); symlinks are not
/// resolved. `None` if the path is relative and the current directory is
/// unknown, or it is not UTF-8.
fn absolute_lexical(path: &Path) -> Option<String> {
    let joined;
    let path = if path.is_absolute() {
        path
    } else {
        joined = std::env::current_dir().ok()?.join(path);
        &joined
    };
    let mut parts: Vec<&OsStr> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let mut out = String::new();
    for p in parts {
        out.push('/');
        out.push_str(p.to_str()?);
    }
    if out.is_empty() {
        out.push('/');
    }
    Some(out)
}

/// Identity and namespaces of a containers-storage name
/// (`[driver@root+runroot:opts]image`, where image is `name[:tag]`,
/// `name@id`, `@id` or a bare image ID).
fn storage_identities(name: &str) -> Vec<String> {
    let (spec, image) = match name.strip_prefix('[').and_then(|s| s.split_once(']')) {
        Some((spec, image)) => (Some(spec), image),
        None => (None, name),
    };
    let (driver, graphroot) = match spec {
        Some(spec) => {
            let (driver, rest) = match spec.split_once('@') {
                Some((d, rest)) => (d, rest),
                None => (DEFAULT_STORAGE_DRIVER, spec),
            };
            let graphroot = rest.split(['+', ':']).next().unwrap_or(rest);
            (driver, graphroot)
        }
        None => (DEFAULT_STORAGE_DRIVER, DEFAULT_STORAGE_ROOT),
    };
    let store = format!("[{driver}@{graphroot}]");
    let driverless = format!("[{graphroot}]");

    // Split off an image ID: `name@id` where id is not a digest of the name.
    let is_id = |s: &str| {
        let s = s.strip_prefix("sha256:").unwrap_or(s);
        s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit())
    };
    let (named, id) = if let Some(id) = image.strip_prefix('@') {
        (None, Some(id))
    } else if is_id(image) {
        (None, Some(image))
    } else {
        match image.rsplit_once('@') {
            Some((n, id)) if is_id(id) && !id.starts_with("sha256:") => (Some(n), Some(id)),
            _ => (Some(image), None),
        }
    };
    let named = named.and_then(|n| {
        use std::str::FromStr;
        containers_image_proxy::oci_spec::distribution::Reference::from_str(n).ok()
    });

    let mut out = Vec::new();
    match (&named, id) {
        (Some(r), Some(id)) => {
            out.push(format!("{store}{}@{id}", r.whole()));
            out.push(format!("{store}{}", r.whole()));
        }
        (Some(r), None) => out.push(format!("{store}{}", r.whole())),
        (None, Some(id)) => out.push(format!("{store}@{id}")),
        (None, None) => {}
    }
    if let Some(r) = &named {
        let repo = format!("{}/{}", r.registry(), r.repository());
        let mut cur = repo.as_str();
        loop {
            out.push(format!("{store}{cur}"));
            match cur.rfind('/') {
                Some(i) => cur = &cur[..i],
                None => break,
            }
        }
    }
    out.push(store);
    out.push(driverless);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSECURE: &str = include_str!("fixtures/policy-insecure-default.json");
    const SIGNED: &str = include_str!("fixtures/policy-signed-os.json");
    const EMPTY_REQS: &str = include_str!("fixtures/policy-empty-requirements.json");

    fn imgref(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap()
    }

    #[test]
    fn decisions_table() {
        use PolicyDecision::*;
        let insecure = Policy::parse(INSECURE).unwrap();
        let signed = Policy::parse(SIGNED).unwrap();
        // (policy, image, decision, scope)
        let cases: &[(&Policy, &str, PolicyDecision, &str)] = &[
            (
                &insecure,
                "quay.io/example-os/os:42",
                AcceptAnything,
                "default",
            ),
            (&insecure, "oci:/var/tmp/x", AcceptAnything, "default"),
            // Repository scope wins over the host scope.
            (
                &signed,
                "quay.io/example-os/os:42",
                RequiresVerification,
                r#"transports.docker."quay.io/example-os""#,
            ),
            (
                &signed,
                "docker://quay.io/example-os/os",
                RequiresVerification,
                r#"transports.docker."quay.io/example-os""#,
            ),
            // The exact tag scope wins over the repository scope.
            (
                &signed,
                "quay.io/example-os/os:devel",
                AcceptAnything,
                r#"transports.docker."quay.io/example-os/os:devel""#,
            ),
            (
                &signed,
                "quay.io/example-os/legacy:1",
                RequiresVerification,
                r#"transports.docker."quay.io/example-os/legacy""#,
            ),
            (
                &signed,
                "quay.io/other/thing",
                AcceptAnything,
                r#"transports.docker."quay.io""#,
            ),
            // Unqualified names match in their expanded form.
            (
                &signed,
                "busybox",
                AcceptAnything,
                r#"transports.docker."docker.io/library/busybox""#,
            ),
            (&signed, "alpine", Reject, r#"transports.docker."""#),
            // Wildcards: the most specific first; the port is ignored.
            (
                &signed,
                "a.lab.example.net/x",
                AcceptAnything,
                r#"transports.docker."*.lab.example.net""#,
            ),
            (
                &signed,
                "b.example.net:5000/x",
                Reject,
                r#"transports.docker."*.example.net""#,
            ),
            (
                &signed,
                "registry.example.net:5000/signed/os",
                RequiresVerification,
                r#"transports.docker."registry.example.net:5000/signed""#,
            ),
            // oci scopes: the directory and its parents.
            (
                &signed,
                "oci:/var/lib/images/trusted",
                AcceptAnything,
                r#"transports.oci."/var/lib/images/trusted""#,
            ),
            (
                &signed,
                "oci:/var/lib/images/trusted/sub/dir:tag",
                AcceptAnything,
                r#"transports.oci."/var/lib/images/trusted""#,
            ),
            (
                &signed,
                "oci:/var/lib/images/trusted/quarantine/x",
                Reject,
                r#"transports.oci."/var/lib/images/trusted/quarantine""#,
            ),
            (
                &signed,
                "oci:/var/lib/images/trusted/../other",
                Reject,
                "default",
            ),
            (&signed, "oci:/var/lib/images/trustedx", Reject, "default"),
            (
                &signed,
                "oci-archive:/tmp/x.tar",
                AcceptAnything,
                r#"transports.oci-archive."""#,
            ),
            // containers-storage: the default store is assumed.
            (
                &signed,
                "containers-storage:localhost/os:tag",
                AcceptAnything,
                r#"transports.containers-storage."[overlay@/var/lib/containers/storage]localhost""#,
            ),
            (
                &signed,
                "containers-storage:[overlay@/var/lib/containers/storage+/run/containers/storage]localhost/os",
                AcceptAnything,
                r#"transports.containers-storage."[overlay@/var/lib/containers/storage]localhost""#,
            ),
            (
                &signed,
                "containers-storage:[overlay@/srv/storage]localhost/os",
                Reject,
                "default",
            ),
            (&signed, "containers-storage:quay.io/x", Reject, "default"),
        ];
        for (policy, image, decision, scope) in cases {
            let r = imgref(image);
            assert_eq!(policy.decide(&r), *decision, "{image}");
            assert_eq!(policy.scope_for(&r).to_string(), *scope, "{image}");
        }
    }

    #[test]
    fn identities() {
        let cases: &[(&str, &[&str])] = &[
            (
                "quay.io/example/os:42",
                &[
                    "quay.io/example/os:42",
                    "quay.io/example/os",
                    "quay.io/example",
                    "quay.io",
                    "*.io",
                ],
            ),
            (
                "busybox",
                &[
                    "docker.io/library/busybox:latest",
                    "docker.io/library/busybox",
                    "docker.io/library",
                    "docker.io",
                    "*.io",
                ],
            ),
            (
                "a.b.example.com:8443/ns/r@sha256:5db6d8b5f34d3cbdaa1e82ed0152a5ac980076d19317d4269db149cbde057bb2",
                &[
                    "a.b.example.com:8443/ns/r@sha256:5db6d8b5f34d3cbdaa1e82ed0152a5ac980076d19317d4269db149cbde057bb2",
                    "a.b.example.com:8443/ns/r",
                    "a.b.example.com:8443/ns",
                    "a.b.example.com:8443",
                    "*.b.example.com",
                    "*.example.com",
                    "*.com",
                ],
            ),
            (
                "localhost/os",
                &["localhost/os:latest", "localhost/os", "localhost"],
            ),
            ("oci:/a/b/c:tag", &["/a/b/c", "/a/b", "/a"]),
            ("oci:/a//b/./c/", &["/a/b/c", "/a/b", "/a"]),
            ("oci-archive:/x.tar", &["/x.tar"]),
            (
                "containers-storage:[vfs@/srv/s]localhost/os:t",
                &[
                    "[vfs@/srv/s]localhost/os:t",
                    "[vfs@/srv/s]localhost/os",
                    "[vfs@/srv/s]localhost",
                    "[vfs@/srv/s]",
                    "[/srv/s]",
                ],
            ),
            (
                "containers-storage:5db6d8b5f34d3cbdaa1e82ed0152a5ac980076d19317d4269db149cbde057bb2",
                &[
                    "[overlay@/var/lib/containers/storage]@5db6d8b5f34d3cbdaa1e82ed0152a5ac980076d19317d4269db149cbde057bb2",
                    "[overlay@/var/lib/containers/storage]",
                    "[/var/lib/containers/storage]",
                ],
            ),
        ];
        for (image, expect) in cases {
            assert_eq!(policy_identities(&imgref(image)), *expect, "{image}");
        }
    }

    #[test]
    fn parse_errors() {
        let cases: &[(&str, &str)] = &[
            (
                EMPTY_REQS,
                r#"transports.docker."quay.io" has no requirements"#,
            ),
            (r#"{"default": []}"#, "`default` has no requirements"),
            (r#"{"transports": {}}"#, "Parsing policy JSON"),
            (
                r#"{"default": [{"type": "frobnicate"}]}"#,
                "Parsing policy JSON",
            ),
            (
                r#"{"default": [{"type": "reject"}], "extra": 1}"#,
                "Parsing policy JSON",
            ),
            ("not json", "Parsing policy JSON"),
        ];
        for (text, frag) in cases {
            let err = format!("{:#}", Policy::parse(text).unwrap_err());
            assert!(err.contains(frag), "{text}: {err}");
        }
    }

    #[test]
    fn signature_params_are_kept() {
        let signed = Policy::parse(SIGNED).unwrap();
        let reqs = signed.requirements_for(&imgref("quay.io/example-os/os"));
        let [Requirement::SigstoreSigned(params)] = reqs else {
            panic!("unexpected {reqs:?}");
        };
        assert_eq!(
            params.fields["keyPath"],
            "/etc/pki/containers/example-os.pub"
        );
        assert_eq!(reqs[0].type_name(), "sigstoreSigned");
    }

    #[test]
    fn enforce() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.json");
        std::fs::write(&path, INSECURE).unwrap();
        let insecure = load_policy(&path).unwrap();
        let signed = Policy::parse(SIGNED).unwrap();

        let err = check_enforce(&insecure, &imgref("quay.io/example-os/os:42")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("quay.io/example-os/os:42"), "{msg}");
        assert!(msg.contains("in default"), "{msg}");

        check_enforce(&signed, &imgref("quay.io/example-os/os:42")).unwrap();
        // Rejected images are left to skopeo.
        check_enforce(&signed, &imgref("alpine")).unwrap();
        let msg = check_enforce(&signed, &imgref("quay.io/elsewhere/os"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("the containers policy accepts quay.io/elsewhere/os"),
            "{msg}"
        );
        assert!(msg.contains(r#"transports.docker."quay.io""#), "{msg}");
    }

    #[test]
    fn load_errors_name_the_file() {
        let err = load_policy(Path::new("/nonexistent/policy.json")).unwrap_err();
        assert!(format!("{err:#}").contains("Loading containers policy /nonexistent/policy.json"));
    }

    #[test]
    fn resolve_policy_path_order() {
        let td = tempfile::tempdir().unwrap();
        let root = td.path();
        let touch = |p: &str| {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "{}").unwrap();
            p
        };
        // Nothing at all.
        let err = resolve_policy_path(root, None, None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no containers policy.json found"), "{err}");

        let usr = touch("usr/share/containers/policy.json");
        assert_eq!(resolve_policy_path(root, None, None, None).unwrap(), usr);
        let etc = touch("etc/containers/policy.json");
        assert_eq!(resolve_policy_path(root, None, None, None).unwrap(), etc);
        // $HOME/.config wins over /etc, $XDG_CONFIG_HOME over $HOME.
        let home = touch("root/.config/containers/policy.json");
        assert_eq!(
            resolve_policy_path(root, None, None, Some(Path::new("/root"))).unwrap(),
            home
        );
        let xdg = touch("xdg/containers/policy.json");
        assert_eq!(
            resolve_policy_path(
                root,
                None,
                Some(Path::new("/xdg")),
                Some(Path::new("/root"))
            )
            .unwrap(),
            xdg
        );
        // A missing per-user file falls through.
        assert_eq!(
            resolve_policy_path(root, None, Some(Path::new("/nope")), None).unwrap(),
            etc
        );
        // The environment override is trusted even if missing; empty is unset.
        assert_eq!(
            resolve_policy_path(root, Some(OsStr::new("/custom.json")), None, None).unwrap(),
            root.join("custom.json")
        );
        assert_eq!(
            resolve_policy_path(root, Some(OsStr::new("")), None, None).unwrap(),
            etc
        );
    }
}
