//! Image references as they appear in the host spec and status.
//!
//! An [`ImageReference`] is the triple the schema stores: the image name,
//! the containers-image transport it is fetched through, and how its
//! signature is verified. This module does not parse reference strings such
//! as `docker://quay.io/x`; that belongs to the `oci` crate. It only builds,
//! prints and (de)serialises the stored form.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The transport name the schema stores for images fetched from a registry.
///
/// It is the default transport: human output omits it (see the `Display`
/// impl of [`ImageReference`]).
pub const TRANSPORT_REGISTRY: &str = "registry";

/// How the signature of an image is verified when it is fetched.
///
/// Serialised as the schema encodes it: `{"ostreeRemote": "NAME"}`,
/// `"containerPolicy"` or `"insecure"` (in YAML the first is written
/// `!ostreeRemote NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ImageSignature {
    /// Verify with the keys of the named ostree remote.
    ///
    /// Only meaningful to the upstream ostree backend; we carry it so that a
    /// spec written by upstream bootc round-trips.
    OstreeRemote(String),
    /// Defer to `containers-policy.json`, refusing a default of
    /// `insecureAcceptAnything`.
    ContainerPolicy,
    /// Perform no signature verification.
    Insecure,
}

impl fmt::Display for ImageSignature {
    /// Prints the signature the way upstream's verbose human status does:
    /// `ostree-remote:NAME`, `container-policy` or `insecure`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSignature::OstreeRemote(remote) => write!(f, "ostree-remote:{remote}"),
            ImageSignature::ContainerPolicy => f.write_str("container-policy"),
            ImageSignature::Insecure => f.write_str("insecure"),
        }
    }
}

/// A container image reference with its transport and signature policy.
///
/// `transport` is kept as the schema's free-form string (`registry`, `oci`,
/// `oci-archive`, `containers-storage`, ...) so that values written by other
/// tools survive a round trip unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageReference {
    /// The image name in the transport's syntax, e.g.
    /// `quay.io/example/os:latest` or `/var/mnt/osupdate`.
    pub image: String,
    /// The containers-image transport name without its `:` or `://`, e.g.
    /// `registry` or `oci`.
    pub transport: String,
    /// How the signature is verified; omitted from the output when unset,
    /// which means "whatever the default policy is".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<ImageSignature>,
}

impl ImageReference {
    /// Builds a reference from a transport name and an image name, taken as
    /// they are (no parsing, no validation), with no signature setting.
    pub fn new(transport: impl Into<String>, image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            transport: transport.into(),
            signature: None,
        }
    }

    /// Builds a reference to `image` on a registry (transport `registry`).
    pub fn registry(image: impl Into<String>) -> Self {
        Self::new(TRANSPORT_REGISTRY, image)
    }

    /// Returns this reference with its signature setting replaced.
    #[must_use]
    pub fn with_signature(self, signature: Option<ImageSignature>) -> Self {
        Self { signature, ..self }
    }

    /// Whether the image is fetched from a registry, the default transport.
    pub fn is_registry(&self) -> bool {
        self.transport == TRANSPORT_REGISTRY
    }
}

impl fmt::Display for ImageReference {
    /// Prints the reference the way upstream's human-readable status does:
    /// the bare image name for the default `registry` transport
    /// (`quay.io/example/os:latest`), otherwise `TRANSPORT:IMAGE`
    /// (`oci:/var/mnt/osupdate`, `containers-storage:localhost/os`).
    /// The signature setting is not shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_registry() {
            f.write_str(&self.image)
        } else {
            write!(f, "{}:{}", self.transport, self.image)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_omits_only_the_registry_transport() {
        let cases = [
            (
                ImageReference::registry("quay.io/example/os:latest"),
                "quay.io/example/os:latest",
            ),
            (
                ImageReference::registry("quay.io/example/os:latest")
                    .with_signature(Some(ImageSignature::Insecure)),
                "quay.io/example/os:latest",
            ),
            (
                ImageReference::new("oci", "/var/mnt/osupdate"),
                "oci:/var/mnt/osupdate",
            ),
            (
                ImageReference::new("oci-archive", "/tmp/os.tar"),
                "oci-archive:/tmp/os.tar",
            ),
            (
                ImageReference::new("containers-storage", "localhost/os"),
                "containers-storage:localhost/os",
            ),
        ];
        for (imgref, expected) in cases {
            assert_eq!(imgref.to_string(), expected, "{imgref:?}");
        }
    }

    #[test]
    fn signature_serialisation_matches_schema() {
        let cases = [
            (
                ImageSignature::OstreeRemote("fedora".into()),
                r#"{"ostreeRemote":"fedora"}"#,
                "ostree-remote:fedora",
            ),
            (
                ImageSignature::ContainerPolicy,
                r#""containerPolicy""#,
                "container-policy",
            ),
            (ImageSignature::Insecure, r#""insecure""#, "insecure"),
        ];
        for (sig, json, human) in cases {
            assert_eq!(serde_json::to_string(&sig).unwrap(), json);
            assert_eq!(serde_json::from_str::<ImageSignature>(json).unwrap(), sig);
            assert_eq!(sig.to_string(), human);
        }
    }

    #[test]
    fn unset_signature_is_omitted_not_null() {
        let json = serde_json::to_value(ImageReference::registry("quay.io/x")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"image": "quay.io/x", "transport": "registry"})
        );
    }

    /// YAML carries the data-bearing variant as a tag, as upstream's
    /// examples write it; the `{ostreeRemote: NAME}` map form is JSON's and
    /// serde_yaml_ng does not accept it in YAML.
    #[test]
    fn yaml_writes_and_reads_ostree_remote_as_a_tag() {
        let imgref = ImageReference::registry("x")
            .with_signature(Some(ImageSignature::OstreeRemote("fedora".into())));
        let yaml = serde_yaml_ng::to_string(&imgref).unwrap();
        assert_eq!(
            yaml,
            "image: x\ntransport: registry\nsignature: !ostreeRemote fedora\n"
        );
        assert_eq!(
            serde_yaml_ng::from_str::<ImageReference>(&yaml).unwrap(),
            imgref
        );
        let map_form = "image: x\ntransport: registry\nsignature:\n  ostreeRemote: fedora\n";
        assert!(serde_yaml_ng::from_str::<ImageReference>(map_form).is_err());
    }
}
