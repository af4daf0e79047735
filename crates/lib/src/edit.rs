//! `bootc edit`: change the host by editing its spec as YAML.
//!
//! 1. Build the host as `bootc status` does and write it as YAML.
//! 2. Let the admin edit it in `$EDITOR` (or read `-f FILE` instead).
//! 3. Parse it strictly: invalid YAML, a field our types do not know, or a
//!    value of the wrong shape is an error and nothing changes.
//! 4. Apply what changed in `spec`: a new `spec.image` is a `switch`, a
//!    flipped `spec.bootOrder` a `rollback`; nothing changed says so.
//!    Edits of `status` and `metadata` are ignored (they are reports).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use bootc_oci::imgref::ImageRef;
use bootc_spec::{Host, HostSpec, ImageReference, ImageSignature};
use serde_yaml_ng::Value;

/// Arguments of `bootc edit`.
#[derive(Debug, clap::Args)]
pub struct EditArgs {
    /// Read the edited host from FILE instead of opening `$EDITOR`.
    #[arg(long, short = 'f', value_name = "FILE")]
    pub filename: Option<PathBuf>,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
}

/// What an edit asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EditPlan {
    /// The spec is unchanged.
    NoChanges,
    /// Track and stage another image (as `bootc switch`).
    Switch(ImageReference),
    /// Flip the boot order (as `bootc rollback`).
    Rollback,
}

/// The keys of `input` (dotted paths) that re-serialising the parsed value
/// (`known`) dropped: fields our types do not know. A key whose value is
/// `null` is accepted (optional fields are left out when empty).
pub fn unknown_fields(input: &Value, known: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(input, known, "", &mut out);
    out
}

fn walk(input: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (input, known) {
        (Value::Mapping(i), Value::Mapping(k)) => {
            for (key, v) in i {
                let name = match key {
                    Value::String(s) => s.clone(),
                    other => serde_yaml_ng::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                };
                let p = if path.is_empty() {
                    name
                } else {
                    format!("{path}.{name}")
                };
                match k.get(key) {
                    Some(kv) => walk(v, kv, &p, out),
                    None if v.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Sequence(i), Value::Sequence(k)) => {
            for (n, (iv, kv)) in i.iter().zip(k).enumerate() {
                walk(iv, kv, &format!("{path}[{n}]"), out);
            }
        }
        (Value::Tagged(i), Value::Tagged(k)) => walk(&i.value, &k.value, path, out),
        _ => {}
    }
}

/// Parse an edited host strictly: YAML syntax, our types, no unknown fields.
pub fn parse_host(text: &str) -> Result<Host> {
    let value: Value =
        serde_yaml_ng::from_str(text).map_err(|e| anyhow::anyhow!("invalid YAML: {e}"))?;
    let host: Host = serde_yaml_ng::from_value(value.clone())
        .map_err(|e| anyhow::anyhow!("not a valid host: {e}"))?;
    let known = serde_yaml_ng::to_value(&host).context("Serialising the host")?;
    let unknown = unknown_fields(&value, &known);
    if !unknown.is_empty() {
        bail!("unknown field(s): {}", unknown.join(", "));
    }
    Ok(host)
}

/// What changing `old` into `new` asks for.
pub fn plan(old: &HostSpec, new: &HostSpec) -> Result<EditPlan> {
    let image_changed = old.image != new.image;
    let order_changed = old.boot_order != new.boot_order;
    match (image_changed, order_changed) {
        (false, false) => Ok(EditPlan::NoChanges),
        (true, true) => bail!(
            "spec.image and spec.bootOrder changed together; change one at a time (switch, then roll back, or the other way round)"
        ),
        (false, true) => Ok(EditPlan::Rollback),
        (true, false) => match &new.image {
            Some(img) => Ok(EditPlan::Switch(img.clone())),
            None => bail!("spec.image cannot be removed; give an image to switch to"),
        },
    }
}

/// Run `$EDITOR` (default `vi`) on `path`; the variable may carry arguments.
fn run_editor(path: &Path) -> Result<()> {
    let editor = std::env::var("EDITOR")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "vi".into());
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(path)
        .status()
        .with_context(|| format!("Running the editor {editor}"))?;
    anyhow::ensure!(status.success(), "The editor {editor} failed ({status})");
    Ok(())
}

/// `bootc edit`.
pub async fn run(sysroot: &Path, args: EditArgs) -> Result<()> {
    let t = crate::output::target(sysroot, args.quiet)?;
    let state = bootc_deploy::deployments::load_state(&t.sysroot)
        .with_context(|| format!("Loading deployments of {}", t.sysroot.display()))?;
    let current = bootc_deploy::deployments::build_host(&state, t.booted.as_deref());
    let text = match &args.filename {
        Some(f) => {
            std::fs::read_to_string(f).with_context(|| format!("Reading {}", f.display()))?
        }
        None => {
            let mut tmp = tempfile::Builder::new()
                .prefix("bootc-edit-")
                .suffix(".yaml")
                .tempfile()
                .context("Creating a temporary file")?;
            serde_yaml_ng::to_writer(&mut tmp, &current).context("Writing the host as YAML")?;
            run_editor(tmp.path())?;
            std::fs::read_to_string(tmp.path())
                .with_context(|| format!("Reading {}", tmp.path().display()))?
        }
    };
    let source = args
        .filename
        .as_ref()
        .map(|f| f.display().to_string())
        .unwrap_or_else(|| "the edited host".into());
    let edited = parse_host(&text).with_context(|| format!("Reading {source}; nothing changed"))?;
    match plan(&current.spec, &edited.spec)
        .with_context(|| format!("Applying {source}; nothing changed"))?
    {
        EditPlan::NoChanges => {
            if !args.quiet {
                println!("No changes");
            }
            Ok(())
        }
        EditPlan::Rollback => {
            // As `bootc rollback`, which prints even with --quiet.
            let t = crate::output::target(sysroot, false)?;
            crate::output::rolled_back(&bootc_deploy::rollback::rollback(&t)?);
            Ok(())
        }
        EditPlan::Switch(img) => {
            let imgref =
                ImageRef::parse_with_transport(&img.image, &img.transport).with_context(|| {
                    format!(
                        "spec.image {}:{}; nothing changed",
                        img.transport, img.image
                    )
                })?;
            let (signature, enforce) = match &img.signature {
                None => (None, false),
                Some(ImageSignature::Insecure) => (Some(ImageSignature::Insecure), false),
                Some(ImageSignature::ContainerPolicy) => {
                    (Some(ImageSignature::ContainerPolicy), true)
                }
                Some(s @ ImageSignature::OstreeRemote(_)) => {
                    bail!(
                        "spec.image.signature {s} is not supported by this backend; nothing changed"
                    )
                }
            };
            let req = bootc_deploy::stage::StageRequest {
                imgref,
                signature,
                enforce,
                retain: false,
                download_only: false,
            };
            let outcome = bootc_deploy::apply::stage_and_finish(&t, req).await?;
            crate::output::applied(&t, &outcome, args.quiet, false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bootc_spec::BootOrder;

    const HOST: &str = "\
apiVersion: org.containers.bootc/v1
kind: BootcHost
metadata:
  name: host
spec:
  image:
    image: quay.io/example/os:v1
    transport: registry
  bootOrder: default
status:
  staged: null
  booted: null
  rollback: null
  rollbackQueued: false
  type: bootcHost
";

    #[test]
    fn parse_table() {
        // (text, Ok(image name) or Err(fragment))
        let cases: Vec<(String, Result<&str, &str>)> = vec![
            (HOST.into(), Ok("quay.io/example/os:v1")),
            (HOST.replace("os:v1", "os:v2"), Ok("quay.io/example/os:v2")),
            (
                HOST.replace(
                    "  bootOrder: default\n",
                    "  bootOrder: default\n  color: red\n",
                ),
                Err("unknown field(s): spec.color"),
            ),
            (
                HOST.replace("transport: registry\n", "transport: registry\n    tag: x\n"),
                Err("spec.image.tag"),
            ),
            (format!("{HOST}extra: 1\n"), Err("unknown field(s): extra")),
            (
                HOST.replace("bootOrder: default", "bootOrder: sideways"),
                Err("not a valid host"),
            ),
            (HOST.replace("spec:\n", "spec: [\n"), Err("invalid YAML")),
            ("".into(), Err("not a valid host")),
            // optional fields given as null are fine
            (
                HOST.replace(
                    "transport: registry\n",
                    "transport: registry\n    signature: null\n",
                ),
                Ok("quay.io/example/os:v1"),
            ),
        ];
        for (text, expect) in cases {
            match (expect, parse_host(&text)) {
                (Ok(name), Ok(h)) => assert_eq!(h.spec.image.unwrap().image, name),
                (Err(frag), Err(e)) => {
                    assert!(format!("{e:#}").contains(frag), "{frag}: {e:#}")
                }
                (e, g) => panic!("{text}: expected {e:?}, got {g:?}"),
            }
        }
    }

    #[test]
    fn plan_table() {
        let img = |n: &str| Some(ImageReference::registry(n));
        let spec = |i: Option<ImageReference>, o| HostSpec {
            image: i,
            boot_order: o,
        };
        let (d, r) = (BootOrder::Default, BootOrder::Rollback);
        // (old, new, Ok(plan) or Err(fragment))
        let cases: Vec<(HostSpec, HostSpec, Result<EditPlan, &str>)> = vec![
            (
                spec(img("a"), d),
                spec(img("a"), d),
                Ok(EditPlan::NoChanges),
            ),
            (spec(img("a"), d), spec(img("a"), r), Ok(EditPlan::Rollback)),
            (spec(img("a"), r), spec(img("a"), d), Ok(EditPlan::Rollback)),
            (
                spec(img("a"), d),
                spec(img("b"), d),
                Ok(EditPlan::Switch(ImageReference::registry("b"))),
            ),
            (
                spec(img("a"), d),
                spec(Some(ImageReference::new("oci", "/srv/os:v2")), d),
                Ok(EditPlan::Switch(ImageReference::new("oci", "/srv/os:v2"))),
            ),
            (
                spec(img("a"), d),
                spec(
                    Some(
                        ImageReference::registry("a")
                            .with_signature(Some(ImageSignature::Insecure)),
                    ),
                    d,
                ),
                Ok(EditPlan::Switch(
                    ImageReference::registry("a").with_signature(Some(ImageSignature::Insecure)),
                )),
            ),
            (spec(img("a"), d), spec(img("b"), r), Err("one at a time")),
            (spec(img("a"), d), spec(None, d), Err("cannot be removed")),
        ];
        for (old, new, expect) in cases {
            match (expect, plan(&old, &new)) {
                (Ok(p), Ok(g)) => assert_eq!(g, p, "{new:?}"),
                (Err(frag), Err(e)) => assert!(format!("{e:#}").contains(frag), "{e:#}"),
                (e, g) => panic!("{new:?}: expected {e:?}, got {g:?}"),
            }
        }
    }

    #[test]
    fn status_yaml_round_trips_without_unknown_fields() {
        // What `bootc status` prints for a host with every role is accepted
        // as is (no field of ours is reported unknown).
        let view = |c: &str, pinned, download_only| bootc_deploy::deployments::DeploymentView {
            id: c.repeat(64),
            image: ImageReference::registry(format!("quay.io/example/os:{c}"))
                .with_signature(Some(ImageSignature::Insecure)),
            digest: format!("sha256:{}", c.repeat(64)),
            version: Some(c.into()),
            timestamp: Some("2026-11-25T10:00:00Z".parse().unwrap()),
            architecture: "amd64".into(),
            bootloader: bootc_spec::Bootloader::Grub,
            insecure: true,
            pinned,
            download_only,
            boot_assessment: None,
            boot_digest: None,
        };
        let state = bootc_deploy::deployments::HostState {
            order: vec![
                view("b", false, false),
                view("a", false, false),
                view("c", true, false),
            ],
            staged: Some(view("d", false, true)),
            others: vec![view("e", true, false)],
        };
        for booted in [None, Some("b".repeat(64)), Some("a".repeat(64))] {
            let host = bootc_deploy::deployments::build_host(&state, booted.as_deref());
            let text = serde_yaml_ng::to_string(&host).unwrap();
            assert_eq!(parse_host(&text).unwrap(), host, "{text}");
            let json = serde_json::to_string(&host).unwrap();
            assert_eq!(parse_host(&json).unwrap(), host, "{json}");
        }
        assert_eq!(
            parse_host(HOST).unwrap().spec.boot_order,
            BootOrder::Default
        );
    }
}
