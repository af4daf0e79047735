//! The host object: `kind: BootcHost`, its spec and its status.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::entry::BootEntry;
use crate::imgref::ImageReference;

/// The `apiVersion` we write.
///
/// Upstream still accepts and has written `org.containers.bootc/v1alpha1`;
/// both parse, and the field is kept as it was read.
pub const API_VERSION: &str = "org.containers.bootc/v1";

/// The `kind` of the host object.
pub const KIND: &str = "BootcHost";

/// The `metadata.name` of the host object; there is only ever one.
pub const OBJECT_NAME: &str = "host";

/// Kubernetes-style object metadata.
///
/// Unset fields are omitted from the output, so a default value serialises
/// as `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// The object's name; [`OBJECT_NAME`] for hosts we create.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The object's namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels, key to value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations, key to value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// The host: what it should run ([`HostSpec`]) and what it runs
/// ([`HostStatus`]), as `bootc status` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Host {
    /// The API version, [`API_VERSION`] for hosts we create.
    pub api_version: String,
    /// The object kind, [`KIND`].
    pub kind: String,
    /// Object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What the host should run.
    #[serde(default)]
    pub spec: HostSpec,
    /// What the host runs and has ready.
    #[serde(default)]
    pub status: HostStatus,
}

impl Host {
    /// Builds a host with `spec`, an empty status, and the standard
    /// `apiVersion`, `kind` and `metadata.name`.
    pub fn new(spec: HostSpec) -> Self {
        Self {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            metadata: ObjectMeta {
                name: Some(OBJECT_NAME.to_owned()),
                ..ObjectMeta::default()
            },
            spec,
            status: HostStatus::default(),
        }
    }

    /// Clears every slot but `slot` from the status (staged, booted and
    /// rollback; pinned deployments are left alone), as `status --booted`
    /// does.
    pub fn filter_to_slot(&mut self, slot: Slot) {
        let status = &mut self.status;
        if slot != Slot::Staged {
            status.staged = None;
        }
        if slot != Slot::Booted {
            status.booted = None;
        }
        if slot != Slot::Rollback {
            status.rollback = None;
        }
    }

    /// Every deployment in the status: staged, booted, rollback, then the
    /// other (pinned) deployments.
    pub fn deployments(&self) -> impl Iterator<Item = &BootEntry> {
        let status = &self.status;
        status
            .staged
            .iter()
            .chain(status.booted.iter())
            .chain(status.rollback.iter())
            .chain(status.other_deployments.iter())
    }

    /// Serialises the host as canonical JSON: compact, with the keys of every
    /// object sorted, as upstream's `status --format=json` prints it.
    ///
    /// Key order is byte order, which equals RFC 8785's UTF-16 order for the
    /// ASCII keys of the schema; the only numbers are small integers.
    pub fn to_canon_json_string(&self) -> serde_json::Result<String> {
        let value = sort_keys(serde_json::to_value(self)?);
        serde_json::to_string(&value)
    }
}

impl Default for Host {
    /// [`Host::new`] with a default spec: no image, default boot order.
    fn default() -> Self {
        Self::new(HostSpec::default())
    }
}

/// Rebuilds every object of `value` with its keys in sorted order, whatever
/// map type `serde_json` was built with.
fn sort_keys(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<String, Value> =
                map.into_iter().map(|(k, v)| (k, sort_keys(v))).collect();
            Value::Object(sorted.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

/// Which deployment boots next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BootOrder {
    /// The staged deployment if any, else the booted one (`default`).
    #[default]
    Default,
    /// The rollback deployment (`rollback`).
    Rollback,
}

impl BootOrder {
    /// The other boot order: what a `rollback` flips to.
    #[must_use]
    pub fn swapped(self) -> Self {
        match self {
            BootOrder::Default => BootOrder::Rollback,
            BootOrder::Rollback => BootOrder::Default,
        }
    }
}

/// What the host should run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostSpec {
    /// The image to run; `null` when the host does not track an image.
    pub image: Option<ImageReference>,
    /// Which deployment boots next.
    #[serde(default)]
    pub boot_order: BootOrder,
}

/// The detected type of system.
///
/// Not exhaustive: upstream may add variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum HostType {
    /// The system is deployed in a bootc compatible way (`bootcHost`).
    BootcHost,
}

/// Whether a `/usr` overlay is read-only or read/write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FilesystemOverlayAccessMode {
    /// Mounted read-only (`readOnly`).
    ReadOnly,
    /// Mounted read/write (`readWrite`).
    ReadWrite,
}

impl fmt::Display for FilesystemOverlayAccessMode {
    /// Prints `read-only` or `read/write`, as upstream's human status does.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FilesystemOverlayAccessMode::ReadOnly => "read-only",
            FilesystemOverlayAccessMode::ReadWrite => "read/write",
        })
    }
}

/// Whether changes in a `/usr` overlay survive a reboot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FilesystemOverlayPersistence {
    /// Changes are lost at reboot (`transient`).
    Transient,
    /// Changes persist across reboots (`persistent`).
    Persistent,
}

impl fmt::Display for FilesystemOverlayPersistence {
    /// Prints `transient` or `persistent`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FilesystemOverlayPersistence::Transient => "transient",
            FilesystemOverlayPersistence::Persistent => "persistent",
        })
    }
}

/// An overlay mounted on `/usr` (`bootc usr-overlay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FilesystemOverlay {
    /// Read-only or read/write.
    pub access_mode: FilesystemOverlayAccessMode,
    /// Transient or persistent.
    pub persistence: FilesystemOverlayPersistence,
}

impl fmt::Display for FilesystemOverlay {
    /// Prints `PERSISTENCE, ACCESS`, e.g. `transient, read/write`, as
    /// upstream's human status does.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, {}", self.persistence, self.access_mode)
    }
}

/// What the host runs and has ready.
///
/// Every field is written on output (unset options as `null`) except
/// `otherDeployments`, which is omitted when empty, matching upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostStatus {
    /// The deployment staged for the next boot.
    pub staged: Option<BootEntry>,
    /// The booted deployment; unset when the host is not bootc compatible.
    pub booted: Option<BootEntry>,
    /// The previous deployment, to roll back to.
    pub rollback: Option<BootEntry>,
    /// Further deployments kept because they are pinned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_deployments: Vec<BootEntry>,
    /// Whether the rollback deployment is queued for the next boot.
    #[serde(default)]
    pub rollback_queued: bool,
    /// The detected type of system; unset when not booted via bootc.
    #[serde(rename = "type")]
    pub ty: Option<HostType>,
    /// The overlay mounted on `/usr`, if any.
    pub usr_overlay: Option<FilesystemOverlay>,
    /// Whether the physical root is on read-only media (e.g. a live ISO),
    /// so that commands changing the system are unavailable.
    #[serde(default)]
    pub read_only: bool,
}

impl HostStatus {
    /// The deployment in `slot`, if there is one.
    pub fn slot(&self, slot: Slot) -> Option<&BootEntry> {
        match slot {
            Slot::Staged => self.staged.as_ref(),
            Slot::Booted => self.booted.as_ref(),
            Slot::Rollback => self.rollback.as_ref(),
        }
    }
}

/// One of the three named deployment slots of [`HostStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    /// The deployment that boots next, once finalised.
    Staged,
    /// The running deployment.
    Booted,
    /// The previous deployment.
    Rollback,
}

impl fmt::Display for Slot {
    /// Prints `staged`, `booted` or `rollback`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::Staged => "staged",
            Slot::Booted => "booted",
            Slot::Rollback => "rollback",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pinned: bool) -> BootEntry {
        BootEntry {
            pinned,
            ..BootEntry::default()
        }
    }

    fn full_host() -> Host {
        let mut host = Host::default();
        host.status.staged = Some(entry(false));
        host.status.booted = Some(entry(false));
        host.status.rollback = Some(entry(false));
        host.status.other_deployments = vec![entry(true)];
        host
    }

    #[test]
    fn filter_to_slot_keeps_only_that_slot() {
        for slot in [Slot::Staged, Slot::Booted, Slot::Rollback] {
            let mut host = full_host();
            host.filter_to_slot(slot);
            for other in [Slot::Staged, Slot::Booted, Slot::Rollback] {
                assert_eq!(
                    host.status.slot(other).is_some(),
                    other == slot,
                    "filtering to {slot}, {other}"
                );
            }
            assert_eq!(host.status.other_deployments.len(), 1);
        }
    }

    #[test]
    fn deployments_in_slot_order() {
        let host = full_host();
        let pinned: Vec<bool> = host.deployments().map(|e| e.pinned).collect();
        assert_eq!(pinned, [false, false, false, true]);
        assert_eq!(Host::default().deployments().count(), 0);
    }

    #[test]
    fn boot_order_swaps() {
        assert_eq!(BootOrder::Default.swapped(), BootOrder::Rollback);
        assert_eq!(BootOrder::Rollback.swapped(), BootOrder::Default);
    }

    #[test]
    fn overlay_display() {
        let overlay = FilesystemOverlay {
            access_mode: FilesystemOverlayAccessMode::ReadWrite,
            persistence: FilesystemOverlayPersistence::Transient,
        };
        assert_eq!(overlay.to_string(), "transient, read/write");
        let overlay = FilesystemOverlay {
            access_mode: FilesystemOverlayAccessMode::ReadOnly,
            persistence: FilesystemOverlayPersistence::Persistent,
        };
        assert_eq!(overlay.to_string(), "persistent, read-only");
    }

    #[test]
    fn default_host_json_is_the_minimal_host() {
        let expected = serde_json::json!({
            "apiVersion": "org.containers.bootc/v1",
            "kind": "BootcHost",
            "metadata": {"name": "host"},
            "spec": {"image": null, "bootOrder": "default"},
            "status": {
                "staged": null,
                "booted": null,
                "rollback": null,
                "rollbackQueued": false,
                "type": null,
                "usrOverlay": null,
                "readOnly": false,
            },
        });
        assert_eq!(serde_json::to_value(Host::default()).unwrap(), expected);
        assert_eq!(Host::new(HostSpec::default()), Host::default());
    }

    #[test]
    fn canon_json_sorts_keys_and_is_compact() {
        let s = Host::default().to_canon_json_string().unwrap();
        assert_eq!(
            s,
            concat!(
                r#"{"apiVersion":"org.containers.bootc/v1","kind":"BootcHost","#,
                r#""metadata":{"name":"host"},"spec":{"bootOrder":"default","image":null},"#,
                r#""status":{"booted":null,"readOnly":false,"rollback":null,"#,
                r#""rollbackQueued":false,"staged":null,"type":null,"usrOverlay":null}}"#
            )
        );
    }
}
