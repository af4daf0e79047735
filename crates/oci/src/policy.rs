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
//! The identities and namespaces of each transport are listed in
//! [`identity`].
//!
//! Where the policy file lives: [`location`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fn_error_context::context;
use serde::Deserialize;

use crate::imgref::ImageRef;

pub mod identity;
pub mod location;

pub use identity::policy_identities;
pub use location::{DEFAULT_POLICY_PATH, POLICY_ENV_VAR, find_policy_path, load_default_policy};

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
}
