//! Checks on untrusted image metadata, before anything of an image is stored.
//!
//! Images are input from anywhere and bootc runs as root. composefs-oci
//! 0.9.4 trusts more than we can afford to, so [`crate::pull`] runs these
//! checks first:
//!
//! - **Digests.** Blobs are named by sha256 digests of 64 hex digits
//!   ([`check_digest`]); a blob read from an OCI layout must hash to its
//!   descriptor's digest and have its size ([`check_blob`]). composefs-oci's
//!   layout reader compares only sizes, so a tampered layout imports
//!   silently, and a config stored under a digest it does not have.
//! - **JSON.** Index, manifest and config are bounded in size
//!   ([`MAX_JSON_BLOB_SIZE`], as containers-image bounds them), parsed
//!   strictly, and their media types must be those of a container image
//!   ([`parse_manifest`], [`parse_config`]): an artifact, a manifest list
//!   where a manifest belongs or a layer of `text/plain` is refused by name
//!   instead of failing later with an unrelated message.
//! - **diff_ids.** One per layer, sha256 ([`parse_config`]). The layer
//!   content itself is hashed while it is imported and compared with its
//!   diff_id (see [`crate::pull`]): composefs-oci keys its layer cache by
//!   diff_id and never checks it, so an image lying about one would poison
//!   that layer for every other image that shares it.
//! - **Tar entries.** No path or hardlink target may contain `..`
//!   ([`check_entry`]). composefs never writes entries to the host (layers
//!   become objects and an EROFS image inside the store), so absolute paths,
//!   symlinks pointing anywhere, device nodes and whiteouts are stored as
//!   the image describes them; a `..` would only fail later when the EROFS
//!   image is built, without naming the layer.
//!
//! [`load_layout_image`] and [`load_layout_blob`] read an OCI layout
//! directory with these checks; everything else is pure.

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use containers_image_proxy::oci_spec::image::{
    Descriptor, Digest, DigestAlgorithm, ImageConfiguration, ImageIndex, ImageManifest, MediaType,
    Platform,
};
use sha2::{Digest as _, Sha256};

/// The largest index, manifest or config we read: containers-image refuses
/// manifests and configs above 4 MiB, and these are read into memory.
pub const MAX_JSON_BLOB_SIZE: u64 = 4 << 20;

/// The annotation an OCI layout's `index.json` tags a manifest with.
const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// The config media type of Docker schema 2 images (OCI layouts written by
/// some tools keep it).
const DOCKER_CONFIG_MEDIA_TYPE: &str = "application/vnd.docker.container.image.v1+json";

/// Refuse a digest that is not sha256 with 64 lowercase hex digits: the
/// store and its layer cache are keyed by sha256, and the digest becomes a
/// file name inside an OCI layout.
pub fn check_digest(digest: &Digest) -> Result<()> {
    ensure!(
        *digest.algorithm() == DigestAlgorithm::Sha256,
        "unsupported digest algorithm in {digest}: only sha256 is supported"
    );
    let hex = digest.digest();
    ensure!(
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "malformed sha256 digest {digest}"
    );
    Ok(())
}

/// The `sha256:<hex>` digest of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Check that `data` is the blob `desc` describes: same size, same digest.
pub fn check_blob(desc: &Descriptor, data: &[u8]) -> Result<()> {
    check_digest(desc.digest())?;
    ensure!(
        data.len() as u64 == desc.size(),
        "blob {} has {} bytes but its descriptor declares {}",
        desc.digest(),
        data.len(),
        desc.size()
    );
    let found = sha256_digest(data);
    ensure!(
        found == desc.digest().to_string(),
        "digest mismatch: blob {} hashes to {found}",
        desc.digest()
    );
    Ok(())
}

/// Refuse a JSON descriptor whose declared size is over [`MAX_JSON_BLOB_SIZE`].
fn check_json_size(what: &str, desc: &Descriptor) -> Result<()> {
    ensure!(
        desc.size() <= MAX_JSON_BLOB_SIZE,
        "{what} {} declares {} bytes, more than the {MAX_JSON_BLOB_SIZE} allowed",
        desc.digest(),
        desc.size()
    );
    Ok(())
}

/// The OCI media type a Docker schema 2 media type stands for, or
/// `media_type` itself. `docker save` (Docker 25 and later) writes OCI
/// layouts whose index, manifests and layers keep Docker's names; the
/// formats are the same (the OCI image spec was made from them).
pub fn oci_media_type(media_type: &MediaType) -> MediaType {
    let MediaType::Other(mt) = media_type else {
        return media_type.clone();
    };
    match mt.as_str() {
        "application/vnd.docker.distribution.manifest.v2+json" => MediaType::ImageManifest,
        "application/vnd.docker.distribution.manifest.list.v2+json" => MediaType::ImageIndex,
        "application/vnd.docker.image.rootfs.diff.tar" => MediaType::ImageLayer,
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => MediaType::ImageLayerGzip,
        "application/vnd.docker.image.rootfs.diff.tar.zstd" => MediaType::ImageLayerZstd,
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
            MediaType::ImageLayerNonDistributableGzip
        }
        _ => media_type.clone(),
    }
}

/// Whether a layer of `media_type` can be imported: a tar, plain, gzip or
/// zstd, under its OCI or its Docker schema 2 name.
pub fn is_layer_media_type(media_type: &MediaType) -> bool {
    composefs_oci::layer::is_tar_media_type(&oci_media_type(media_type))
}

/// Parse an image manifest and check that it describes a container image
/// we can import: schema 2, an image config, tar layers, sha256 digests.
pub fn parse_manifest(data: &[u8]) -> Result<ImageManifest> {
    let manifest: ImageManifest =
        serde_json::from_slice(data).context("Parsing image manifest JSON")?;
    ensure!(
        manifest.schema_version() == 2,
        "unsupported manifest schemaVersion {}",
        manifest.schema_version()
    );
    if let Some(mt) = manifest.media_type()
        && oci_media_type(mt) != MediaType::ImageManifest
    {
        bail!(
            "manifest has media type {mt}, not {}",
            MediaType::ImageManifest
        );
    }
    let config = manifest.config();
    check_digest(config.digest()).context("Checking the config descriptor")?;
    match config.media_type() {
        MediaType::ImageConfig => {}
        MediaType::Other(mt) if mt == DOCKER_CONFIG_MEDIA_TYPE => {}
        mt => bail!(
            "config {} has media type {mt}: not a container image (bootc pulls container images only)",
            config.digest()
        ),
    }
    check_json_size("config", config)?;
    for (i, layer) in manifest.layers().iter().enumerate() {
        check_digest(layer.digest()).with_context(|| format!("Checking layer {}", i + 1))?;
        ensure!(
            is_layer_media_type(layer.media_type()),
            "layer {} ({}) has media type {}, which is not a tar layer",
            i + 1,
            layer.digest(),
            layer.media_type()
        );
    }
    Ok(manifest)
}

/// Parse an image config and return it with its diff_ids, checked against
/// `manifest`: `rootfs.type` is `layers`, and there is one sha256 diff_id
/// per layer.
pub fn parse_config(
    data: &[u8],
    manifest: &ImageManifest,
) -> Result<(ImageConfiguration, Vec<Digest>)> {
    let config: ImageConfiguration =
        serde_json::from_slice(data).context("Parsing image config JSON")?;
    let rootfs = config.rootfs();
    ensure!(
        rootfs.typ() == "layers",
        "config rootfs.type is {:?}, not \"layers\"",
        rootfs.typ()
    );
    ensure!(
        rootfs.diff_ids().len() == manifest.layers().len(),
        "config lists {} diff_ids for {} layers",
        rootfs.diff_ids().len(),
        manifest.layers().len()
    );
    let diff_ids = rootfs
        .diff_ids()
        .iter()
        .map(|d| {
            let digest: Digest = d
                .parse()
                .with_context(|| format!("Parsing diff_id {d:?}"))?;
            check_digest(&digest)?;
            Ok(digest)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((config, diff_ids))
}

/// Parse an image index (an OCI layout's `index.json`, or a manifest list).
pub fn parse_index(data: &[u8]) -> Result<ImageIndex> {
    let index: ImageIndex = serde_json::from_slice(data).context("Parsing image index JSON")?;
    ensure!(
        index.schema_version() == 2,
        "unsupported index schemaVersion {}",
        index.schema_version()
    );
    Ok(index)
}

/// Refuse a tar entry whose path, or hardlink target, climbs out of the
/// image root with `..`. Absolute paths are fine: they are taken relative
/// to the image root, as every container runtime does.
pub fn check_entry(path: &Path, hardlink_target: Option<&OsStr>) -> Result<()> {
    fn climbs(p: &Path) -> bool {
        p.components().any(|c| c == Component::ParentDir)
    }
    ensure!(
        !climbs(path),
        "tar entry {path:?} leaves the image root (`..` in its path)"
    );
    if let Some(target) = hardlink_target {
        ensure!(
            !climbs(Path::new(target)),
            "tar entry {path:?} is a hardlink to {target:?}, outside the image root (`..`)"
        );
    }
    Ok(())
}

/// An image found in an OCI layout directory, its manifest checked.
#[derive(Debug)]
pub struct LayoutImage {
    /// The manifest's descriptor (from `index.json` or a nested index).
    pub descriptor: Descriptor,
    /// The manifest, parsed and checked ([`parse_manifest`]).
    pub manifest: ImageManifest,
    /// The manifest's bytes.
    pub raw: Vec<u8>,
}

/// Where a blob lives in an OCI layout. The digest must have passed
/// [`check_digest`], so that it is a plain file name.
fn layout_blob_path(layout: &Path, digest: &Digest) -> PathBuf {
    layout
        .join("blobs")
        .join(digest.algorithm().as_ref())
        .join(digest.digest())
}

/// Read a file of at most `max` bytes.
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).with_context(|| format!("Opening {}", path.display()))?;
    let mut data = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut data)
        .with_context(|| format!("Reading {}", path.display()))?;
    ensure!(
        data.len() as u64 <= max,
        "{} is larger than {max} bytes",
        path.display()
    );
    Ok(data)
}

/// Open the layer blob `desc` of the layout at `layout`, checking that it
/// exists and has the declared size (its digest is checked as it is read).
pub fn open_layout_blob(layout: &Path, desc: &Descriptor) -> Result<std::fs::File> {
    check_digest(desc.digest())?;
    let path = layout_blob_path(layout, desc.digest());
    let f = std::fs::File::open(&path)
        .with_context(|| format!("Opening blob {} ({})", desc.digest(), path.display()))?;
    let found = f.metadata()?.len();
    ensure!(
        found == desc.size(),
        "blob {} has {found} bytes but its descriptor declares {}",
        desc.digest(),
        desc.size()
    );
    Ok(f)
}

/// Read the JSON blob `desc` (config, manifest, index) of a layout: at most
/// [`MAX_JSON_BLOB_SIZE`] bytes, with its size and digest checked.
pub fn load_layout_blob(layout: &Path, what: &str, desc: &Descriptor) -> Result<Vec<u8>> {
    check_digest(desc.digest()).with_context(|| format!("Checking the {what} descriptor"))?;
    check_json_size(what, desc)?;
    let path = layout_blob_path(layout, desc.digest());
    if !path.exists() {
        bail!("{what} {} is missing from the layout", desc.digest());
    }
    let data = read_bounded(&path, MAX_JSON_BLOB_SIZE)
        .with_context(|| format!("Reading {what} {}", desc.digest()))?;
    check_blob(desc, &data).with_context(|| format!("Checking {what} {}", desc.digest()))?;
    Ok(data)
}

/// Find the image tagged `tag` (or, without a tag, the first image) in the
/// OCI layout at `layout` for this machine's platform, the way
/// composefs-oci's layout reader chooses it, and check every blob read on
/// the way.
///
/// A manifest list in `index.json` is looked into (one level, as
/// composefs-oci does); a descriptor without a platform is matched by its
/// config's os and architecture.
pub fn load_layout_image(layout: &Path, tag: Option<&str>) -> Result<LayoutImage> {
    let index_path = layout.join("index.json");
    let index = read_bounded(&index_path, MAX_JSON_BLOB_SIZE)?;
    let index = parse_index(&index).with_context(|| format!("Reading {}", index_path.display()))?;
    let tagged = |d: &&Descriptor| match tag {
        None => true,
        Some(tag) => d
            .annotations()
            .as_ref()
            .and_then(|a| a.get(REF_NAME_ANNOTATION))
            .is_some_and(|t| t == tag),
    };
    let candidates: Vec<&Descriptor> = index.manifests().iter().filter(tagged).collect();
    if candidates.is_empty() {
        match tag {
            Some(tag) => bail!("tag {tag:?} not found in {}", index_path.display()),
            None => bail!("no image in {}", index_path.display()),
        }
    }
    let native = Platform::default();
    let mut seen = Vec::new();
    for desc in candidates {
        match oci_media_type(desc.media_type()) {
            MediaType::ImageManifest => {
                if let Some(found) = load_for_platform(layout, desc, &native, &mut seen)? {
                    return Ok(found);
                }
            }
            MediaType::ImageIndex => {
                let data = load_layout_blob(layout, "image index", desc)?;
                let nested = parse_index(&data)
                    .with_context(|| format!("Reading image index {}", desc.digest()))?;
                for inner in nested.manifests() {
                    match oci_media_type(inner.media_type()) {
                        MediaType::ImageManifest => {
                            if let Some(found) =
                                load_for_platform(layout, inner, &native, &mut seen)?
                            {
                                return Ok(found);
                            }
                        }
                        mt => bail!(
                            "image index {} lists {} of media type {mt}; only image manifests are supported there",
                            desc.digest(),
                            inner.digest()
                        ),
                    }
                }
            }
            mt => bail!(
                "{} lists {} with media type {mt}, not an image manifest or index",
                index_path.display(),
                desc.digest()
            ),
        }
    }
    bail!(
        "no image for {}/{} in {} (found: {})",
        native.os(),
        native.architecture(),
        layout.display(),
        if seen.is_empty() {
            "none".to_owned()
        } else {
            seen.join(", ")
        }
    )
}

/// Load the manifest `desc` if it is for `native`; otherwise record what it
/// is for in `seen` and return `None`.
fn load_for_platform(
    layout: &Path,
    desc: &Descriptor,
    native: &Platform,
    seen: &mut Vec<String>,
) -> Result<Option<LayoutImage>> {
    let matches = |os: &str, arch: &str| {
        os == native.os().to_string() && arch == native.architecture().to_string()
    };
    if let Some(p) = desc.platform()
        && !matches(&p.os().to_string(), &p.architecture().to_string())
    {
        seen.push(format!("{}/{}", p.os(), p.architecture()));
        return Ok(None);
    }
    let data = load_layout_blob(layout, "manifest", desc)?;
    let manifest =
        parse_manifest(&data).with_context(|| format!("Checking manifest {}", desc.digest()))?;
    if desc.platform().is_none() {
        let config = load_layout_blob(layout, "config", manifest.config())?;
        let (config, _) = parse_config(&config, &manifest)
            .with_context(|| format!("Checking config {}", manifest.config().digest()))?;
        let (os, arch) = (config.os().to_string(), config.architecture().to_string());
        if !matches(&os, &arch) {
            seen.push(format!("{os}/{arch}"));
            return Ok(None);
        }
    }
    Ok(Some(LayoutImage {
        descriptor: desc.clone(),
        manifest,
        raw: data,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA_A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const SHA_B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn manifest_json(config_mt: &str, layer_mt: &str, layer_digest: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{{"mediaType":"{config_mt}","digest":"{SHA_A}","size":10}},
            "layers":[{{"mediaType":"{layer_mt}","digest":"{layer_digest}","size":20}}]}}"#
        )
    }

    const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    const GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

    #[test]
    fn manifests() {
        let cases: &[(&str, String, Option<&str>)] = &[
            ("valid", manifest_json(OCI_CONFIG, GZ, SHA_B), None),
            (
                "docker config",
                manifest_json(DOCKER_CONFIG_MEDIA_TYPE, GZ, SHA_B),
                None,
            ),
            (
                "zstd layer",
                manifest_json(OCI_CONFIG, "application/vnd.oci.image.layer.v1.tar+zstd", SHA_B),
                None,
            ),
            (
                "docker schema 2 manifest and layer (docker save)",
                manifest_json(
                    DOCKER_CONFIG_MEDIA_TYPE,
                    "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    SHA_B,
                )
                .replace(
                    "application/vnd.oci.image.manifest.v1+json",
                    "application/vnd.docker.distribution.manifest.v2+json",
                ),
                None,
            ),
            (
                "text layer",
                manifest_json(OCI_CONFIG, "text/plain", SHA_B),
                Some("has media type text/plain, which is not a tar layer"),
            ),
            (
                "artifact config",
                manifest_json(OCI_CONFIG.replace("config", "empty").as_str(), GZ, SHA_B),
                Some("not a container image"),
            ),
            (
                "md5 layer",
                manifest_json(OCI_CONFIG, GZ, "md5:d41d8cd98f00b204e9800998ecf8427e"),
                Some("only sha256"),
            ),
            ("truncated", "{\"schemaVersion\": 2, ".into(), Some("Parsing image manifest JSON")),
            ("not an object", "[]".into(), Some("Parsing image manifest JSON")),
            (
                "an index",
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#.into(),
                Some("Parsing image manifest JSON"),
            ),
            (
                "schema 1",
                manifest_json(OCI_CONFIG, GZ, SHA_B).replace("\"schemaVersion\":2", "\"schemaVersion\":1"),
                Some("schemaVersion 1"),
            ),
            (
                "huge config",
                manifest_json(OCI_CONFIG, GZ, SHA_B).replace("\"size\":10", "\"size\":9007199254740991"),
                Some("more than the 4194304 allowed"),
            ),
        ];
        for (name, json, want) in cases {
            let got = parse_manifest(json.as_bytes());
            match (want, got) {
                (None, Ok(_)) => {}
                (Some(w), Err(e)) => {
                    let e = format!("{e:#}");
                    assert!(e.contains(w), "{name}: {e:?} does not contain {w:?}");
                }
                (want, got) => panic!("{name}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn configs() {
        let manifest = parse_manifest(manifest_json(OCI_CONFIG, GZ, SHA_B).as_bytes()).unwrap();
        let config = |diff_ids: &str, typ: &str| {
            format!(
                r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"{typ}","diff_ids":{diff_ids}}}}}"#
            )
        };
        let cases: &[(&str, String, Option<&str>)] = &[
            ("valid", config(&format!("[\"{SHA_B}\"]"), "layers"), None),
            (
                "no diff_ids",
                config("[]", "layers"),
                Some("0 diff_ids for 1 layers"),
            ),
            (
                "two diff_ids",
                config(&format!("[\"{SHA_A}\",\"{SHA_B}\"]"), "layers"),
                Some("2 diff_ids for 1 layers"),
            ),
            (
                "bad diff_id",
                config("[\"sha256:xyz\"]", "layers"),
                Some("Parsing diff_id"),
            ),
            (
                "sha512 diff_id",
                config(&format!("[\"sha512:{}\"]", "c".repeat(128)), "layers"),
                Some("only sha256"),
            ),
            (
                "rootfs type",
                config(&format!("[\"{SHA_B}\"]"), "other"),
                Some("not \"layers\""),
            ),
            (
                "diff_ids a string",
                config("\"sha256:x\"", "layers"),
                Some("Parsing image config"),
            ),
            (
                "not json",
                "{not json".into(),
                Some("Parsing image config JSON"),
            ),
        ];
        for (name, json, want) in cases {
            let got = parse_config(json.as_bytes(), &manifest);
            match (want, got) {
                (None, Ok((_, ids))) => assert_eq!(ids.len(), 1, "{name}"),
                (Some(w), Err(e)) => {
                    let e = format!("{e:#}");
                    assert!(e.contains(w), "{name}: {e:?} does not contain {w:?}");
                }
                (want, got) => panic!("{name}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn blobs() {
        let data = b"hello";
        let digest = sha256_digest(data);
        let desc = |digest: &str, size: u64| -> Descriptor {
            serde_json::from_str(&format!(
                r#"{{"mediaType":"{GZ}","digest":"{digest}","size":{size}}}"#
            ))
            .unwrap()
        };
        check_blob(&desc(&digest, 5), data).unwrap();
        let e = check_blob(&desc(&digest, 6), data).unwrap_err().to_string();
        assert!(
            e.contains("has 5 bytes but its descriptor declares 6"),
            "{e}"
        );
        let e = check_blob(&desc(SHA_A, 5), data).unwrap_err().to_string();
        assert!(e.contains("digest mismatch"), "{e}");
        // A digest that is a path is refused when parsed.
        assert!(
            serde_json::from_str::<Descriptor>(&format!(
                r#"{{"mediaType":"{GZ}","digest":"sha256:../../etc/passwd","size":1}}"#
            ))
            .is_err()
        );
    }

    #[test]
    fn entries() {
        let cases: &[(&str, Option<&str>, bool)] = &[
            ("/usr/lib/x", None, true),
            ("/etc/evil", None, true),
            ("", None, true),
            ("/./etc/x", None, true),
            ("/../../etc/evil", None, false),
            ("/usr/../../etc/evil", None, false),
            ("/usr/lib/h", Some("/usr/lib/x"), true),
            ("/usr/lib/h", Some("/../../etc/passwd"), false),
        ];
        for (path, link, ok) in cases {
            let got = check_entry(Path::new(path), link.map(OsStr::new));
            assert_eq!(got.is_ok(), *ok, "{path} -> {link:?}: {got:?}");
        }
    }
}
