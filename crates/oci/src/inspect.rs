//! Inspecting a remote image without pulling it (`skopeo inspect`): its
//! digest and labels, the layers its manifest lists for this machine, and
//! what fetching them into a store costs.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::imgref::ImageRef;

/// A `skopeo` command with `--registries-conf` when
/// `$CONTAINERS_REGISTRIES_CONF` is set (Debian's skopeo 1.9 does not read it).
fn skopeo() -> Command {
    let mut cmd = Command::new("skopeo");
    if let Some(conf) = std::env::var_os("CONTAINERS_REGISTRIES_CONF") {
        cmd.arg("--registries-conf").arg(conf);
    }
    cmd
}

/// Run `skopeo inspect ARGS IMAGE` (with the auth file a pull would use)
/// and parse its JSON.
fn skopeo_inspect(args: &[&str], image: &str) -> Result<serde_json::Value> {
    let mut cmd = skopeo();
    cmd.arg("inspect");
    if let Some(auth) = crate::auth::find_authfile(Path::new("/"))? {
        cmd.arg("--authfile").arg(auth);
    }
    let out = cmd
        .args(args)
        .arg(image)
        .output()
        .context("Running skopeo inspect")?;
    if !out.status.success() {
        bail!(
            "Inspecting {image}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "Parsing skopeo inspect {} output for {image}",
            args.join(" ")
        )
    })
}

/// The architecture name of this machine as OCI spells it.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        a => a,
    }
}

/// A registry name with its tag replaced by `@digest`.
fn by_digest(name: &str, digest: &str) -> String {
    let base = name.split('@').next().unwrap_or(name);
    let last_slash = base.rfind('/').map(|i| i + 1).unwrap_or(0);
    let repo = match base[last_slash..].rfind(':') {
        Some(c) => &base[..last_slash + c],
        None => base,
    };
    format!("{repo}@{digest}")
}

/// Layers (digest, size) of a manifest and the diff_ids of its config.
pub type RemoteLayers = (Vec<(String, u64)>, Vec<String>);

/// The layers (digest, size) of `imgref`'s manifest for this machine and
/// the diff_ids of its config, from `skopeo inspect --raw [--config]`.
pub fn remote_layers(imgref: &ImageRef) -> Result<RemoteLayers> {
    let mut image = imgref.to_skopeo_string();
    let mut manifest = skopeo_inspect(&["--raw"], &image)?;
    if manifest.get("manifests").is_some() {
        // An index: the manifest of our platform, by digest.
        let digest = manifest["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["platform"]["architecture"] == oci_arch() && m["platform"]["os"] == "linux")
            .and_then(|m| m["digest"].as_str())
            .with_context(|| format!("{imgref} has no image for linux/{}", oci_arch()))?
            .to_owned();
        anyhow::ensure!(
            imgref.transport == crate::imgref::Transport::Registry,
            "{imgref} is a multi-platform index; only registry images are resolved by digest"
        );
        image = format!(
            "{}{}",
            imgref.transport.skopeo_prefix(),
            by_digest(&imgref.name, &digest)
        );
        manifest = skopeo_inspect(&["--raw"], &image)?;
    }
    let layers = manifest["layers"]
        .as_array()
        .with_context(|| format!("The manifest of {imgref} lists no layers"))?
        .iter()
        .map(|l| {
            Ok((
                l["digest"]
                    .as_str()
                    .context("A layer without a digest")?
                    .to_owned(),
                l["size"].as_u64().context("A layer without a size")?,
            ))
        })
        .collect::<Result<Vec<_>>>()
        .with_context(|| format!("Reading the manifest of {imgref}"))?;
    let config = skopeo_inspect(&["--raw", "--config"], &image)?;
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str().map(str::to_owned))
        .collect();
    Ok((layers, diff_ids))
}

/// What `skopeo inspect` tells of an image's manifest and config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteImage {
    /// The manifest digest.
    pub digest: String,
    /// The `org.opencontainers.image.version` label.
    pub version: Option<String>,
    /// The creation time.
    pub created: Option<String>,
}

/// The digest, version and creation time of `imgref`, fetching only its
/// manifest and config.
pub fn inspect(imgref: &ImageRef) -> Result<RemoteImage> {
    let v = skopeo_inspect(&[], &imgref.to_skopeo_string())?;
    Ok(RemoteImage {
        digest: v["Digest"].as_str().unwrap_or_default().to_owned(),
        version: v["Labels"]["org.opencontainers.image.version"]
            .as_str()
            .map(str::to_owned),
        created: v["Created"].as_str().map(str::to_owned),
    })
}

/// What fetching an image costs, given what the store holds already.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DownloadCost {
    /// Layers of the image.
    pub layers_total: usize,
    /// Their size as the manifest gives it (compressed, as transferred).
    pub bytes_total: u64,
    /// Layers not in the store yet.
    pub layers: usize,
    /// Their size as the manifest gives it.
    pub bytes: u64,
}

/// The cost of fetching an image whose manifest lists `layers` (digest and
/// size, in order) and whose config lists `diff_ids` (same order): a layer
/// whose diff_id or digest is in `present` (the diff_ids the store holds)
/// costs nothing. A manifest with more layers than the config has diff_ids
/// is judged by digests alone for the extra ones.
pub fn download_cost(
    layers: &[(String, u64)],
    diff_ids: &[String],
    present: &std::collections::HashSet<String>,
) -> DownloadCost {
    let mut c = DownloadCost {
        layers_total: layers.len(),
        bytes_total: layers.iter().map(|(_, s)| *s).fold(0, u64::saturating_add),
        ..Default::default()
    };
    for (i, (digest, size)) in layers.iter().enumerate() {
        let stored =
            present.contains(digest) || diff_ids.get(i).is_some_and(|d| present.contains(d));
        if !stored {
            c.layers += 1;
            c.bytes = c.bytes.saturating_add(*size);
        }
    }
    c
}

/// What fetching `imgref` into the store of `sysroot` costs (nothing is
/// present without a store).
pub fn download_cost_for(sysroot: &Path, imgref: &ImageRef) -> Result<DownloadCost> {
    let (layers, diff_ids) = remote_layers(imgref)?;
    let present = match bootc_store::Store::open(sysroot)? {
        Some(store) => store.present_layers()?,
        None => Default::default(),
    };
    Ok(download_cost(&layers, &diff_ids, &present))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn download_cost_table() {
        let l = |v: &[(&str, u64)]| {
            v.iter()
                .map(|(d, s)| (d.to_string(), *s))
                .collect::<Vec<_>>()
        };
        let set = |v: &[&str]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<std::collections::HashSet<_>>()
        };
        // (layers, diff_ids, present, expected (layers, bytes), totals)
        type Case<'a> = (
            &'a [(&'a str, u64)],
            &'a [&'a str],
            &'a [&'a str],
            (usize, u64),
            (usize, u64),
        );
        let cases: &[Case] = &[
            // nothing stored: everything
            (
                &[("c1", 10), ("c2", 20)],
                &["d1", "d2"],
                &[],
                (2, 30),
                (2, 30),
            ),
            // diff_id of the first is stored
            (
                &[("c1", 10), ("c2", 20)],
                &["d1", "d2"],
                &["d1"],
                (1, 20),
                (2, 30),
            ),
            // uncompressed layer: digest == diff_id
            (&[("d1", 10), ("c2", 20)], &[], &["d1"], (1, 20), (2, 30)),
            // everything stored
            (
                &[("c1", 10), ("c2", 20)],
                &["d1", "d2"],
                &["d2", "d1", "other"],
                (0, 0),
                (2, 30),
            ),
            // empty image
            (&[], &[], &["d1"], (0, 0), (0, 0)),
            // sizes that would overflow saturate
            (
                &[("a", u64::MAX), ("b", 5)],
                &["x", "y"],
                &[],
                (2, u64::MAX),
                (2, u64::MAX),
            ),
        ];
        for (layers, diff_ids, present, (n, b), (tn, tb)) in cases {
            let c = download_cost(&l(layers), &s(diff_ids), &set(present));
            assert_eq!(
                (c.layers, c.bytes, c.layers_total, c.bytes_total),
                (*n, *b, *tn, *tb),
                "{layers:?} {present:?}"
            );
        }
    }
}
