//! Boot entries: one deployment as `status` reports it.
//!
//! A [`BootEntry`] describes one deployment (staged, booted, rollback or
//! pinned): the image it came from, and the backend state behind it. Our
//! backend fills [`BootEntry::composefs`]; [`BootEntry::ostree`] exists so
//! that status written by upstream's ostree backend parses and round-trips.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::imgref::ImageReference;

/// Metadata of a fetched image: which reference, which digest, when built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageStatus {
    /// The reference the image was fetched from.
    pub image: ImageReference,
    /// The image's version label (`org.opencontainers.image.version`), if any.
    pub version: Option<String>,
    /// The image's build time (`org.opencontainers.image.created`), if any.
    pub timestamp: Option<DateTime<Utc>>,
    /// The manifest digest of the fetched image, e.g. `sha256:a0...`.
    pub image_digest: String,
    /// The image's hardware architecture in OCI terms, e.g. `amd64`.
    pub architecture: String,
}

impl ImageStatus {
    /// Builds the status of `image` with `digest` and `architecture`; the
    /// version and timestamp start unset.
    pub fn new(
        image: ImageReference,
        digest: impl Into<String>,
        architecture: impl Into<String>,
    ) -> Self {
        Self {
            image,
            version: None,
            timestamp: None,
            image_digest: digest.into(),
            architecture: architecture.into(),
        }
    }
}

/// The container storage backend a deployment's image lives in.
///
/// The schema knows only upstream's ostree-container store; deployments of
/// our composefs backend leave [`BootEntry::store`] unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Store {
    /// Upstream's ostree-container storage backend.
    OstreeContainer,
}

/// Upstream's ostree state of a deployment.
///
/// We never produce this; it is here so that status written by upstream's
/// ostree backend parses and round-trips.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootEntryOstree {
    /// The stateroot holding the deployment's `/etc` and `/var`.
    pub stateroot: String,
    /// The ostree commit checksum.
    pub checksum: String,
    /// The deployment serial.
    pub deploy_serial: u32,
}

/// How a composefs deployment is booted.
///
/// Serialised as `Bls` or `Uki`, the schema's exact (capitalised) values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BootType {
    /// A Type 1 Boot Loader Specification entry: separate kernel and initrd.
    Bls,
    /// A Type 2 entry: a Unified Kernel Image.
    Uki,
}

impl fmt::Display for BootType {
    /// Prints the schema value: `Bls` or `Uki`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BootType::Bls => "Bls",
            BootType::Uki => "Uki",
        })
    }
}

/// The bootloader that boots a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bootloader {
    /// GRUB (`grub`).
    Grub,
    /// GRUB for confidential clusters (`grub-cc`).
    GrubCc,
    /// systemd-boot (`systemd`).
    Systemd,
    /// A bootloader that bootc does not manage (`none`).
    None,
}

impl Bootloader {
    /// The schema's string value: `grub`, `grub-cc`, `systemd` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Bootloader::Grub => "grub",
            Bootloader::GrubCc => "grub-cc",
            Bootloader::Systemd => "systemd",
            Bootloader::None => "none",
        }
    }
}

impl fmt::Display for Bootloader {
    /// Prints the schema value (see [`Bootloader::as_str`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`Bootloader`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown bootloader '{0}' (expected grub, grub-cc, systemd or none)")]
pub struct UnknownBootloader(pub String);

impl FromStr for Bootloader {
    type Err = UnknownBootloader;

    /// Parses the schema value; exact and case-sensitive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Bootloader::Grub,
            Bootloader::GrubCc,
            Bootloader::Systemd,
            Bootloader::None,
        ]
        .into_iter()
        .find(|b| b.as_str() == s)
        .ok_or_else(|| UnknownBootloader(s.to_owned()))
    }
}

/// The composefs state of a deployment: what our backend boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootEntryComposefs {
    /// The fs-verity digest (hex) of the deployment's EROFS image; it names
    /// the deployment.
    pub verity: String,
    /// Whether the deployment boots through a BLS entry or a UKI.
    pub boot_type: BootType,
    /// The bootloader that boots it.
    pub bootloader: Bootloader,
    /// The sha256 of the kernel plus initrd, for BLS entries only
    /// (serialised as `null` otherwise).
    pub boot_digest: Option<String>,
    /// Whether the deployment may be mounted without fs-verity, i.e. the
    /// store runs in insecure mode on a filesystem without verity support.
    ///
    /// Defaults to `false` when absent on input, for status written before
    /// the field existed; always written on output.
    #[serde(default)]
    pub missing_verity_allowed: bool,
}

/// One deployment as `status` reports it.
///
/// Every field is written on output (unset options as `null`), matching
/// upstream; on input only `incompatible` and `pinned` are required.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootEntry {
    /// The image the deployment was made from; unset for a deployment that
    /// did not come from a container image.
    pub image: Option<ImageStatus>,
    /// The newer image found by the last `upgrade --check`, if any.
    pub cached_update: Option<ImageStatus>,
    /// Whether the deployment has local changes bootc does not understand.
    pub incompatible: bool,
    /// Whether the deployment is pinned, i.e. kept from garbage collection.
    pub pinned: bool,
    /// Whether, relative to the booted system, this deployment can be
    /// entered by a soft reboot.
    #[serde(default)]
    pub soft_reboot_capable: bool,
    /// Whether the (staged) deployment was made with `--download-only` and
    /// so will not be finalised automatically at shutdown.
    #[serde(default)]
    pub download_only: bool,
    /// Upstream's container storage backend; unset for our deployments.
    #[serde(default)]
    pub store: Option<Store>,
    /// Upstream's ostree state; unset for our deployments.
    pub ostree: Option<BootEntryOstree>,
    /// The composefs state: set for every deployment of our backend.
    pub composefs: Option<BootEntryComposefs>,
    /// Our extension (absent from upstream's schema, which allows extra
    /// properties): the deployment boots on trial, or failed its trial.
    /// Not written when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_assessment: Option<BootAssessment>,
}

/// Where a deployment stands in automatic rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AssessmentState {
    /// Newly deployed: it boots with a limited number of tries until a boot
    /// reaches `boot-complete.target`.
    Trial,
    /// A boot of it did not reach `boot-complete.target` (see `reason`).
    Failed,
}

/// The automatic-rollback state of a deployment (our extension).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootAssessment {
    /// Trial or failed.
    pub state: AssessmentState,
    /// Boot tries left, when the bootloader's counter could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tries_left: Option<u32>,
    /// Why the deployment failed (failed units, or tries used up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the failure was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_strings_match_schema() {
        let cases: [(serde_json::Value, &str); 8] = [
            (serde_json::to_value(BootType::Bls).unwrap(), "Bls"),
            (serde_json::to_value(BootType::Uki).unwrap(), "Uki"),
            (serde_json::to_value(Bootloader::Grub).unwrap(), "grub"),
            (serde_json::to_value(Bootloader::GrubCc).unwrap(), "grub-cc"),
            (
                serde_json::to_value(Bootloader::Systemd).unwrap(),
                "systemd",
            ),
            (serde_json::to_value(Bootloader::None).unwrap(), "none"),
            (
                serde_json::to_value(Store::OstreeContainer).unwrap(),
                "ostreeContainer",
            ),
            (
                serde_json::Value::String(Bootloader::GrubCc.to_string()),
                "grub-cc",
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(value, expected);
        }
    }

    #[test]
    fn bootloader_from_str() {
        for b in [
            Bootloader::Grub,
            Bootloader::GrubCc,
            Bootloader::Systemd,
            Bootloader::None,
        ] {
            assert_eq!(b.as_str().parse::<Bootloader>(), Ok(b));
        }
        assert_eq!(
            "Grub".parse::<Bootloader>(),
            Err(UnknownBootloader("Grub".into()))
        );
    }

    #[test]
    fn default_entry_writes_every_field() {
        let json = serde_json::to_value(BootEntry::default()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "image": null,
                "cachedUpdate": null,
                "incompatible": false,
                "pinned": false,
                "softRebootCapable": false,
                "downloadOnly": false,
                "store": null,
                "ostree": null,
                "composefs": null,
            })
        );
    }

    #[test]
    fn composefs_entry_tolerates_missing_verity_flag() {
        let entry: BootEntryComposefs = serde_json::from_str(
            r#"{"verity":"ab","bootType":"Uki","bootloader":"systemd","bootDigest":null}"#,
        )
        .unwrap();
        assert!(!entry.missing_verity_allowed);
        assert_eq!(entry.boot_type, BootType::Uki);
    }
}
