//! Recording a checked image in the store once its layers are there: the
//! EROFS image flattened from the layers ([`crate::flatten`]), the config
//! (its exact bytes, naming its layer streams and the EROFS image), and
//! the manifest (naming the config and layer streams). This replaces the
//! second half of composefs-oci 0.9.4's pull for every transport, so that
//! all of them give the same tree, and the same composefs image id, for the
//! same layers.
//!
//! Docker schema 2 manifests (as `docker save` writes them into OCI
//! layouts) are recorded as the OCI manifest they stand for: the same
//! config and layer blobs under their OCI media types. skopeo's proxy hands
//! us registry images the same way. The recorded manifest digest is then
//! that of the OCI form, not the Docker one.
//!
//! Crash safety: everything is written as unnamed objects and streams,
//! then named; none of it is reachable from a tag until [`crate::pull`]
//! writes the tag after a `syncfs`.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use bootc_store::{ObjectId, OciDigest, Repo};
use composefs::erofs::format::FormatEpoch;
use composefs_oci::oci_image::{has_manifest, manifest_identifier};
use containers_image_proxy::oci_spec::image::{ImageManifest, MediaType};

use crate::flatten::{self, LayerToApply};
use crate::validate;

/// composefs-oci's content type of manifest splitstreams (`ocimanif`).
const MANIFEST_CONTENT_TYPE: u64 = u64::from_le_bytes(*b"ocimanif");

/// An image whose manifest and config were checked and whose layers are in
/// the store.
pub(crate) struct CheckedImage<'a> {
    /// The image, for messages (`oci:/path:tag`, a registry reference...).
    pub name: &'a str,
    /// The manifest as fetched.
    pub manifest_raw: &'a [u8],
    /// Its digest.
    pub manifest_digest: &'a OciDigest,
    /// The config as fetched.
    pub config_raw: &'a [u8],
    /// Its digest.
    pub config_digest: &'a OciDigest,
    /// The layer blob digests and diff_ids, bottom first.
    pub layers: Vec<(String, OciDigest)>,
    /// The store's stream of each diff_id.
    pub streams: &'a HashMap<String, ObjectId>,
}

/// What [`commit`] recorded.
#[derive(Debug, Clone)]
pub(crate) struct Committed {
    /// The manifest digest as stored (the OCI form of a Docker manifest).
    pub manifest_digest: OciDigest,
}

/// Whether the store holds the manifest `digest` with its EROFS image.
pub(crate) fn is_committed(repo: &Repo, digest: &OciDigest) -> Result<bool> {
    if has_manifest(repo, digest)?.is_none() {
        return Ok(false);
    }
    match composefs_oci::oci_image::OciImage::open(repo, digest, None) {
        Ok(img) => Ok(img.image_ref(repo.erofs_version()).is_some()),
        Err(e) => {
            tracing::debug!("manifest {digest} not usable from the store: {e:#}");
            Ok(false)
        }
    }
}

/// The manifest to record for `raw` (received as `digest`): itself, or
/// for a Docker schema 2 manifest its OCI form, with the digest of what is
/// recorded.
pub(crate) fn oci_manifest(raw: &[u8], digest: &OciDigest) -> Result<(Vec<u8>, OciDigest)> {
    let manifest = validate::parse_manifest(raw)?;
    let docker = manifest
        .media_type()
        .as_ref()
        .is_some_and(|m| *m != MediaType::ImageManifest)
        || *manifest.config().media_type() != MediaType::ImageConfig
        || manifest
            .layers()
            .iter()
            .any(|l| validate::oci_media_type(l.media_type()) != *l.media_type());
    if !docker {
        // Recorded under the digest of these very bytes: skopeo's proxy
        // may hand over a converted manifest with the original's digest.
        let own: OciDigest = validate::sha256_digest(raw)
            .parse()
            .context("Formatting a manifest digest")?;
        if own != *digest {
            tracing::debug!("manifest {digest} as received hashes to {own}");
        }
        return Ok((raw.to_vec(), own));
    }
    let mut oci: ImageManifest = manifest;
    oci.set_media_type(Some(MediaType::ImageManifest));
    let mut config = oci.config().clone();
    config.set_media_type(MediaType::ImageConfig);
    oci.set_config(config);
    let layers = oci
        .layers()
        .iter()
        .map(|l| {
            let mut l = l.clone();
            l.set_media_type(validate::oci_media_type(l.media_type()));
            l
        })
        .collect();
    oci.set_layers(layers);
    let json = serde_json::to_vec(&oci).context("Writing the OCI form of a Docker manifest")?;
    let digest: OciDigest = validate::sha256_digest(&json)
        .parse()
        .context("Formatting a manifest digest")?;
    Ok((json, digest))
}

/// Flatten the layers, write the EROFS image, the config and the manifest
/// (see the module documentation). Blocking: run it off the async threads.
pub(crate) fn commit(repo: &Arc<Repo>, image: &CheckedImage<'_>) -> Result<Committed> {
    let (manifest_raw, manifest_digest) =
        oci_manifest(image.manifest_raw, image.manifest_digest)
            .with_context(|| format!("Checking manifest {}", image.manifest_digest))?;
    let mut layers = Vec::new();
    let mut refs: HashMap<Box<str>, ObjectId> = HashMap::new();
    for (digest, diff_id) in &image.layers {
        let key = diff_id.to_string();
        let stream = image
            .streams
            .get(&key)
            .with_context(|| format!("Layer {digest} (diff_id {diff_id}) was not imported"))?;
        refs.insert(key.clone().into_boxed_str(), stream.clone());
        layers.push(LayerToApply {
            digest: digest.clone(),
            diff_id: key,
            stream: stream.clone(),
        });
    }
    let fs = flatten::flatten(repo, image.name, &layers)?;
    let ids = fs
        .commit_images(repo, None)
        .with_context(|| format!("Writing the composefs image of {}", image.name))?;
    let (mut v1, mut v2) = (None, None);
    for (version, id) in ids {
        match version.epoch() {
            FormatEpoch::Epoch1 => v1 = Some(id),
            FormatEpoch::Epoch2 => v2 = Some(id),
        }
    }
    let (config_digest, config_verity) = composefs_oci::write_config_raw(
        repo,
        image.config_raw,
        refs.clone(),
        v2.as_ref(),
        v1.as_ref(),
        &HashMap::new(),
    )
    .with_context(|| format!("Storing config {}", image.config_digest))?;
    ensure!(
        config_digest == *image.config_digest,
        "config {} was stored as {config_digest}",
        image.config_digest
    );

    let mut stream = repo
        .create_stream(MANIFEST_CONTENT_TYPE)
        .context("Creating the manifest stream")?;
    stream.add_named_stream_ref(&format!("config:{config_digest}"), &config_verity);
    let mut names: Vec<_> = refs.iter().collect();
    names.sort_by(|a, b| a.0.cmp(b.0));
    for (diff_id, id) in names {
        stream.add_named_stream_ref(diff_id, id);
    }
    stream
        .write_external(&manifest_raw)
        .context("Writing the manifest")?;
    repo.write_stream(stream, &manifest_identifier(&manifest_digest), None)
        .with_context(|| format!("Storing manifest {manifest_digest}"))?;
    Ok(Committed { manifest_digest })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_manifest_is_recorded_in_oci_form() {
        let config = format!("sha256:{}", "a".repeat(64));
        let layer = format!("sha256:{}", "b".repeat(64));
        let raw = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": config, "size": 10},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": layer, "size": 20}],
        })
        .to_string();
        let digest: OciDigest = validate::sha256_digest(raw.as_bytes()).parse().unwrap();
        let (json, new) = oci_manifest(raw.as_bytes(), &digest).unwrap();
        assert_ne!(new, digest);
        let text = String::from_utf8(json).unwrap();
        assert!(!text.contains("docker"), "{text}");
        assert!(
            text.contains("application/vnd.oci.image.layer.v1.tar+gzip"),
            "{text}"
        );
        assert!(text.contains(&layer) && text.contains(&config), "{text}");
        // An OCI manifest is recorded as it is.
        let (same, d) = oci_manifest(text.as_bytes(), &new).unwrap();
        assert_eq!((same, d), (text.into_bytes(), new));
    }
}
