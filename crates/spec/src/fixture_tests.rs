//! Compatibility tests against upstream's reference data: the example hosts
//! in `fixtures/` and the `org.containers.bootc/v1` JSON schema.

use serde_json::{Value, json};

use crate::*;

const SCHEMA: &str = include_str!("fixtures/host-v1.schema.json");

/// Fields some examples carry that our types intentionally drop, as JSON
/// pointers.
///
/// `status.isContainer` was a `v1alpha1` field that upstream removed from its
/// types and schema; upstream ignores it on input and never writes it, and so
/// do we.
const DROPPED: &[&str] = &["/status/isContainer"];

enum Format {
    Json,
    Yaml,
}

struct Example {
    name: &'static str,
    text: &'static str,
    format: Format,
}

macro_rules! example {
    ($name:literal, $format:ident) => {
        Example {
            name: $name,
            text: include_str!(concat!("fixtures/", $name)),
            format: Format::$format,
        }
    };
}

const EXAMPLES: &[Example] = &[
    example!("spec-booted-pinned.yaml", Yaml),
    example!("spec-booted-update-same-digest.yaml", Yaml),
    example!("spec-booted-usroverlay.yaml", Yaml),
    example!("spec-booted-with-update-no-version.yaml", Yaml),
    example!("spec-booted-with-update.yaml", Yaml),
    example!("spec-only-booted.yaml", Yaml),
    example!("spec-ostree-remote.yaml", Yaml),
    example!("spec-ostree-to-bootc.yaml", Yaml),
    example!("spec-rfe-ostree-deployment.yaml", Yaml),
    example!("spec-staged-booted.yaml", Yaml),
    example!("spec-staged-download-only.yaml", Yaml),
    example!("spec-staged-rollback.yaml", Yaml),
    example!("spec-v1-null.json", Json),
    example!("spec-v1a1-orig.yaml", Yaml),
    example!("spec-v1a1.yaml", Yaml),
    example!("spec-via-local-oci.yaml", Yaml),
];

impl Example {
    fn parse(&self) -> Host {
        let parsed = match self.format {
            Format::Json => serde_json::from_str(self.text).map_err(|e| e.to_string()),
            Format::Yaml => serde_yaml_ng::from_str(self.text).map_err(|e| e.to_string()),
        };
        parsed.unwrap_or_else(|e| panic!("parsing {}: {e}", self.name))
    }

    /// The example as an untyped JSON value, without going through our types.
    fn raw(&self) -> Value {
        match self.format {
            Format::Json => serde_json::from_str(self.text).unwrap(),
            Format::Yaml => yaml_to_json(serde_yaml_ng::from_str(self.text).unwrap()),
        }
    }
}

/// Converts a YAML document to JSON, writing a tagged value `!tag v` as the
/// externally tagged enum `{"tag": v}` it stands for.
fn yaml_to_json(value: serde_yaml_ng::Value) -> Value {
    use serde_yaml_ng::Value as Y;
    match value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => serde_json::to_value(n).unwrap(),
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(yaml_to_json).collect()),
        Y::Mapping(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k.as_str().unwrap().to_owned(), yaml_to_json(v)))
                .collect(),
        ),
        Y::Tagged(tagged) => {
            let tag = tagged.tag.to_string();
            json!({ tag.trim_start_matches('!'): yaml_to_json(tagged.value) })
        }
    }
}

/// Whether a scalar we wrote means the same as the example's scalar.
///
/// Beyond equality this allows the two ways the examples' text differs from
/// our output without differing in content: a YAML plain scalar such as
/// `version: 20231230.1` reads as a number but is the string
/// `"20231230.1"`, and timestamps are written by chrono in RFC 3339 with its
/// own precision (`19:22:15.42Z` comes back as `19:22:15.420Z`).
fn same_scalar(original: &Value, ours: &Value) -> bool {
    if original == ours {
        return true;
    }
    match (original, ours) {
        (Value::Number(n), Value::String(s)) => n.to_string() == *s,
        (Value::String(a), Value::String(b)) => {
            let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok();
            matches!((parse(a), parse(b)), (Some(x), Some(y)) if x == y)
        }
        _ => false,
    }
}

/// Asserts that `ours` carries everything in `original` except the
/// [`DROPPED`] fields, and that whatever `ours` adds is only a default
/// written out (`null`, `false`, or the `default` boot order).
fn assert_keeps_content(example: &str, path: &str, original: &Value, ours: &Value) {
    match (original, ours) {
        (Value::Object(orig), Value::Object(out)) => {
            for (key, orig_value) in orig {
                let child = format!("{path}/{key}");
                if DROPPED.contains(&child.as_str()) {
                    assert!(
                        !out.contains_key(key),
                        "{example}: {child} should be dropped"
                    );
                    continue;
                }
                let out_value = out
                    .get(key)
                    .unwrap_or_else(|| panic!("{example}: {child} lost in round trip"));
                assert_keeps_content(example, &child, orig_value, out_value);
            }
            for (key, out_value) in out.iter().filter(|(k, _)| !orig.contains_key(*k)) {
                assert!(
                    matches!(out_value, Value::Null | Value::Bool(false))
                        || (key == "bootOrder" && out_value == "default"),
                    "{example}: {path}/{key} added with non-default value {out_value}"
                );
            }
        }
        (Value::Array(orig), Value::Array(out)) => {
            assert_eq!(orig.len(), out.len(), "{example}: {path} length");
            for (i, (o, n)) in orig.iter().zip(out).enumerate() {
                assert_keeps_content(example, &format!("{path}/{i}"), o, n);
            }
        }
        _ => assert!(
            same_scalar(original, ours),
            "{example}: {path} was {original}, now {ours}"
        ),
    }
}

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(SCHEMA).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("compiling host-v1.schema.json offline")
}

fn assert_valid(validator: &jsonschema::Validator, what: &str, instance: &Value) {
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{what} fails the schema: {errors:#?}");
}

#[test]
fn every_example_parses_and_round_trips_losslessly() {
    for example in EXAMPLES {
        let host = example.parse();

        // Through serde_json::Value and back: nothing changes.
        let value = serde_json::to_value(&host).unwrap();
        let reparsed: Host = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(reparsed, host, "{}: JSON round trip", example.name);
        assert_eq!(serde_json::to_value(&reparsed).unwrap(), value);

        // Through YAML text and back, as `status --format=yaml` writes it.
        let yaml = serde_yaml_ng::to_string(&host).unwrap();
        let reparsed: Host = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(reparsed, host, "{}: YAML round trip", example.name);

        // Compared with the example's own content, not just our reading of it.
        assert_keeps_content(example.name, "", &example.raw(), &value);
    }
}

#[test]
fn examples_read_as_upstream_reads_them() {
    let find = |name: &str| EXAMPLES.iter().find(|e| e.name == name).unwrap().parse();

    let host = find("spec-v1-null.json");
    assert_eq!(host.api_version, API_VERSION);
    assert_eq!(host.status, HostStatus::default());

    let host = find("spec-ostree-remote.yaml");
    assert_eq!(
        host.spec.image.unwrap().signature,
        Some(ImageSignature::OstreeRemote("fedora".into()))
    );

    let host = find("spec-v1a1.yaml");
    let image = host.spec.image.unwrap();
    assert_eq!(image.image, "quay.io/otherexample/otherimage:latest");
    assert_eq!(image.signature, None);
    let booted = host.status.booted.unwrap().image.unwrap();
    assert_eq!(booted.version.as_deref(), Some("20231230.1"));

    let host = find("spec-booted-usroverlay.yaml");
    assert_eq!(
        host.status.usr_overlay,
        Some(FilesystemOverlay {
            access_mode: FilesystemOverlayAccessMode::ReadWrite,
            persistence: FilesystemOverlayPersistence::Transient,
        })
    );

    let host = find("spec-staged-download-only.yaml");
    assert!(host.status.staged.unwrap().download_only);
    // Absent in the example: defaults to false.
    assert!(!host.status.booted.unwrap().download_only);

    let host = find("spec-booted-pinned.yaml");
    assert_eq!(host.status.other_deployments.len(), 1);
    assert!(host.status.other_deployments[0].pinned);

    let host = find("spec-ostree-to-bootc.yaml");
    assert_eq!(
        host.status.staged.unwrap().store,
        Some(Store::OstreeContainer)
    );
    assert_eq!(host.status.ty, None);

    let host = find("spec-via-local-oci.yaml");
    let image = host.status.booted.unwrap().image.unwrap().image;
    assert_eq!(image.to_string(), "oci:/var/mnt/osupdate");
}

#[test]
fn every_example_reserialised_validates() {
    let validator = validator();
    for example in EXAMPLES {
        let value = serde_json::to_value(example.parse()).unwrap();
        assert_valid(&validator, example.name, &value);
    }
}

fn composefs_entry(verity: char, boot_type: BootType, image: ImageStatus) -> BootEntry {
    BootEntry {
        image: Some(image),
        composefs: Some(BootEntryComposefs {
            verity: verity.to_string().repeat(128),
            boot_type,
            bootloader: Bootloader::Systemd,
            boot_digest: (boot_type == BootType::Bls).then(|| "d".repeat(64)),
            missing_verity_allowed: true,
        }),
        ..BootEntry::default()
    }
}

fn image_status(digest: char, version: Option<&str>) -> ImageStatus {
    ImageStatus {
        version: version.map(str::to_owned),
        timestamp: Some("2025-06-01T12:00:00.5Z".parse().unwrap()),
        ..ImageStatus::new(
            ImageReference::registry("localhost:5000/bootc-example:latest"),
            format!("sha256:{}", digest.to_string().repeat(64)),
            "amd64",
        )
    }
}

/// Hosts as our status code would build them.
fn constructed_hosts() -> Vec<(&'static str, Host)> {
    let spec = HostSpec {
        image: Some(ImageReference::registry(
            "localhost:5000/bootc-example:latest",
        )),
        boot_order: BootOrder::Default,
    };

    let mut only_booted = Host::new(spec.clone());
    only_booted.status.booted = Some(composefs_entry(
        'a',
        BootType::Bls,
        image_status('1', Some("1.0")),
    ));
    only_booted.status.ty = Some(HostType::BootcHost);

    let mut full = Host::new(HostSpec {
        image: Some(
            ImageReference::new("oci", "/var/mnt/update:v2")
                .with_signature(Some(ImageSignature::ContainerPolicy)),
        ),
        boot_order: BootOrder::Rollback,
    });
    let mut staged = composefs_entry('b', BootType::Uki, image_status('2', Some("2.0")));
    staged.download_only = true;
    let mut booted = composefs_entry('a', BootType::Bls, image_status('1', None));
    booted.cached_update = Some(image_status('3', None));
    booted.soft_reboot_capable = true;
    let mut pinned = composefs_entry('c', BootType::Bls, image_status('0', None));
    pinned.pinned = true;
    full.status = HostStatus {
        staged: Some(staged),
        booted: Some(booted),
        rollback: Some(composefs_entry('c', BootType::Bls, image_status('0', None))),
        other_deployments: vec![pinned],
        rollback_queued: true,
        ty: Some(HostType::BootcHost),
        usr_overlay: Some(FilesystemOverlay {
            access_mode: FilesystemOverlayAccessMode::ReadOnly,
            persistence: FilesystemOverlayPersistence::Persistent,
        }),
        read_only: false,
    };

    let mut insecure = Host::new(HostSpec {
        image: Some(
            ImageReference::registry("quay.io/x/y").with_signature(Some(ImageSignature::Insecure)),
        ),
        ..HostSpec::default()
    });
    insecure.status.read_only = true;
    insecure.status.booted = Some(BootEntry {
        incompatible: true,
        ..BootEntry::default()
    });

    vec![
        ("only booted", only_booted),
        ("staged, booted, rollback, pinned", full),
        ("insecure, read-only, imageless booted", insecure),
        ("empty / unbooted", Host::default()),
    ]
}

#[test]
fn constructed_hosts_validate_and_round_trip() {
    let validator = validator();
    for (what, host) in constructed_hosts() {
        let value = serde_json::to_value(&host).unwrap();
        assert_valid(&validator, what, &value);
        let reparsed: Host = serde_json::from_value(value).unwrap();
        assert_eq!(reparsed, host, "{what}");
        let canon: Host = serde_json::from_str(&host.to_canon_json_string().unwrap()).unwrap();
        assert_eq!(canon, host, "{what}: canonical JSON");
    }
}

#[test]
fn composefs_entry_serialises_as_schema_shows() {
    let entry = composefs_entry('a', BootType::Uki, image_status('1', None));
    let value = serde_json::to_value(entry.composefs.unwrap()).unwrap();
    assert_eq!(
        value,
        json!({
            "verity": "a".repeat(128),
            "bootType": "Uki",
            "bootloader": "systemd",
            "bootDigest": null,
            "missingVerityAllowed": true,
        })
    );
}

#[test]
fn default_host_is_valid_minimal_host() {
    let host = Host::default();
    assert_eq!(host.api_version, API_VERSION);
    assert_eq!(host.kind, KIND);
    assert_eq!(host.metadata.name.as_deref(), Some(OBJECT_NAME));
    assert_eq!(host.spec, HostSpec::default());
    assert!(host.deployments().next().is_none());
    assert_eq!(host, Host::new(HostSpec::default()));
    assert_valid(
        &validator(),
        "Host::default()",
        &serde_json::to_value(&host).unwrap(),
    );

    // A document with only the required fields reads as that status.
    let minimal: Host =
        serde_json::from_value(json!({"apiVersion": API_VERSION, "kind": KIND})).unwrap();
    assert_eq!(minimal.status, host.status);
    assert_eq!(minimal.spec, host.spec);
}

/// The schema checks are only worth something if the validator rejects what
/// the schema forbids.
#[test]
fn validator_rejects_what_the_schema_forbids() {
    let validator = validator();
    let good = serde_json::to_value(&constructed_hosts()[1].1).unwrap();
    let broken: &[(&str, &str, Value)] = &[
        ("missing kind", "/kind", Value::Null),
        (
            "bad bootloader",
            "/status/booted/composefs/bootloader",
            json!("lilo"),
        ),
        (
            "bad boot type",
            "/status/booted/composefs/bootType",
            json!("bls"),
        ),
        ("bad boot order", "/spec/bootOrder", json!("Default")),
        (
            "bad signature",
            "/spec/image/signature",
            json!({"ostreeRemote": 1}),
        ),
        (
            "bad timestamp",
            "/status/booted/image/timestamp",
            json!("yesterday"),
        ),
        ("pinned not bool", "/status/booted/pinned", json!("no")),
    ];
    for (what, pointer, replacement) in broken {
        let mut instance = good.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let parent = instance
            .pointer_mut(parent)
            .unwrap()
            .as_object_mut()
            .unwrap();
        if replacement.is_null() {
            parent.remove(key);
        } else {
            parent.insert(key.to_owned(), replacement.clone());
        }
        assert!(!validator.is_valid(&instance), "{what}: accepted");
    }
}
