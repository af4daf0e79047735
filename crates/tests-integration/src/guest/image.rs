//! The images a scenario boots: what podman's storage holds, and variants
//! derived from an image and cached by its id.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use bootc_tests_integration::run;
use serde_json::Value;

/// Label of a derived image holding the image id it was built from.
const FROM_LABEL: &str = "org.bootc-test.v2-id";

/// The image id of `img` in podman's storage (`None` if it is not there).
pub(crate) fn podman_image_id(img: &str) -> Result<Option<String>> {
    let out = Command::new("podman")
        .args(["image", "inspect", "--format", "{{.Id}}", img])
        .stderr(Stdio::null())
        .output()
        .context("Running podman image inspect")?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()))
}

/// Fail unless `img` is in podman's storage; `how` says how to build it.
pub(crate) fn require_image(img: &str, how: &str) -> Result<()> {
    let st = Command::new("podman")
        .args(["image", "exists", img])
        .status()
        .context("Running podman image exists")?;
    ensure!(st.success(), "{img} is not in podman's storage: run {how}");
    Ok(())
}

/// The manifest digest podman's storage gives `img`.
pub(crate) fn podman_digest(img: &str) -> Result<String> {
    let out =
        run(Command::new("podman").args(["image", "inspect", "--format", "{{.Digest}}", img]))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Whether `img` exists and its [`FROM_LABEL`] is `from_id`.
fn built_from(img: &str, from_id: &str) -> Result<bool> {
    if podman_image_id(img)?.is_none() {
        return Ok(false);
    }
    let out = run(Command::new("podman").args([
        "image",
        "inspect",
        "--format",
        &format!("{{{{index .Labels \"{FROM_LABEL}\"}}}}"),
        img,
    ]))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == from_id)
}

/// Build `tag` as `base` plus the Containerfile `lines` (in one build, no
/// layer cache), unless a `tag` built from the current `base` exists. The
/// build starts `FROM` the id, not the tag, so the label names what the
/// image is made of.
pub(crate) fn derive_image(base: &str, tag: &str, lines: &str) -> Result<()> {
    let base_id =
        podman_image_id(base)?.with_context(|| format!("{base} is not in podman's storage"))?;
    if built_from(tag, &base_id)? {
        println!("reusing {tag} (built from {base} {base_id})");
        return Ok(());
    }
    let dir = tempfile::Builder::new()
        .prefix("bootc-derived-img.")
        .tempdir_in("/var/tmp")?;
    let containerfile = dir.path().join("Containerfile");
    fs::write(
        &containerfile,
        format!("FROM {base_id}\n{lines}LABEL {FROM_LABEL}={base_id}\n"),
    )?;
    let start = Instant::now();
    run(Command::new("podman")
        .args([
            "build",
            "--isolation=chroot",
            "--layers=false",
            "-t",
            tag,
            "-f",
        ])
        .arg(&containerfile)
        .arg(dir.path()))
    .with_context(|| format!("Building {tag} from {base}"))?;
    println!("built {tag} from {base} in {:.1?}", start.elapsed());
    Ok(())
}

/// The manifest digest of the one image of an OCI layout.
pub(crate) fn oci_digest(layout: &Path) -> Result<String> {
    let p = layout.join("index.json");
    let v: Value = serde_json::from_str(
        &fs::read_to_string(&p).with_context(|| format!("Reading {}", p.display()))?,
    )?;
    v["manifests"][0]["digest"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no manifest digest in {}", p.display()))
}
