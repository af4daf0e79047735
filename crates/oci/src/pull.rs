//! The pull flow: bring an image from any transport into a [`Store`].
//!
//! 1. Evaluate `policy.json` for the reference ([`crate::policy`]). With
//!    `--enforce-container-sigpolicy`, a policy that accepts anything is refused
//!    before any network traffic. A `reject` requirement fails at once with the
//!    policy's reason.
//! 2. Choose a path ([`PullPath`]):
//!    - the policy accepts anything: the skopeo proxy streams layers straight
//!      into the store, or (for `oci`/`oci-archive`) the layout is read
//!      directly, or (for `containers-storage`) the layers are replayed
//!      from the local storage (module `cstor`);
//!    - the policy requires verification (signatures): Debian's skopeo 1.9
//!      proxy does not enforce policy.json, so the image is first copied with
//!      `skopeo copy` (which does) into an OCI layout in the sysroot's scratch
//!      space, and that layout is imported.
//! 3. Fetch and check what the store lacks ourselves (`crate::fetch`,
//!    `crate::cstor`): the manifest, config and media types are checked
//!    ([`crate::validate`]); each missing layer is streamed into the store
//!    while its size, digest and diff_id are computed, and its tar entries
//!    checked; only then is it registered under its diff_id. Layers whose
//!    diff_id is already in the store are not fetched again; new files are
//!    stored once (content-addressed). An `oci-archive:` is first unpacked
//!    into the sysroot's scratch space and read as a layout.
//! 4. Record the image (`crate::commit`): the layers are flattened into one
//!    tree (`crate::flatten`), written as the EROFS image, then the config
//!    and the manifest are stored naming the layers and the image.
//! 5. The tag for the reference is written last ([`Store::tag`], one symlink
//!    rename): until then nothing of the pull is visible, and a killed pull
//!    leaves only unreferenced objects that [`Store::gc`] reclaims.
//!
//! # Why we fetch layers ourselves
//!
//! composefs-oci 0.9.4 reads a proxied blob up to its declared size before
//! it sends `FinishPipe`, and skopeo (1.9 and later) closes the pipe's
//! write end only when it answers `FinishPipe`. A blob that ends early
//! (truncated in the registry's storage, or a manifest declaring more bytes
//! than the blob has) therefore deadlocks both processes: skopeo has
//! finished with an error and waits for `FinishPipe`, composefs-oci waits
//! for bytes that never come. We send `FinishPipe` while the blob is still
//! being read, so that a failed transfer ends the stream and its error is
//! reported. skopeo answers one request at a time and `FinishPipe` blocks
//! it until the blob is written out, so each concurrent layer gets its own
//! skopeo process. composefs-oci also never compares a layer with its
//! diff_id (its layer cache key), nor, for OCI layouts, a blob with its
//! digest; see [`crate::validate`].
//!
//! A transfer that stalls without failing (a registry that stops sending
//! but keeps the connection open) still waits, as `skopeo copy` and
//! `podman pull` do.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use bootc_store::{Repo, Store, StoredImage};
use composefs_oci::{ImportStats, LocalFetchOpt, OciDigest, SharedReporter};
use containers_image_proxy::ImageProxyConfig;

use crate::imgref::{ImageRef, Transport};
use crate::policy::{self, PolicyDecision};
use crate::{commit, fetch};

/// How a pull reached the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPath {
    /// Streamed through `skopeo experimental-image-proxy`.
    Proxy,
    /// Read directly from an OCI layout or archive.
    Layout,
    /// Read natively from containers-storage.
    ContainersStorage,
    /// `skopeo copy` (which enforces policy.json) to an OCI layout, then imported.
    PolicyCopy,
}

/// Options of [`pull`].
pub struct PullOptions {
    /// Refuse a policy that accepts anything (`--enforce-container-sigpolicy`).
    pub enforce_sigpolicy: bool,
    /// The signature policy file.
    pub policy_path: PathBuf,
    /// An auth file to use instead of the containers defaults.
    pub authfile: Option<PathBuf>,
    /// A registries.conf to use instead of `/etc/containers/registries.conf`
    /// (from `$CONTAINERS_REGISTRIES_CONF`, which Debian's skopeo 1.9 does
    /// not read by itself).
    pub registries_conf: Option<PathBuf>,
    /// Where progress goes.
    pub progress: SharedReporter,
}

impl std::fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullOptions")
            .field("enforce_sigpolicy", &self.enforce_sigpolicy)
            .field("policy_path", &self.policy_path)
            .field("authfile", &self.authfile)
            .field("registries_conf", &self.registries_conf)
            .finish_non_exhaustive()
    }
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            enforce_sigpolicy: false,
            policy_path: PathBuf::from(policy::DEFAULT_POLICY_PATH),
            authfile: None,
            registries_conf: None,
            progress: std::sync::Arc::new(composefs_oci::NullReporter),
        }
    }
}

/// What a pull did.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PullOutcome {
    /// The image as now stored.
    pub image: StoredImage,
    /// The manifest digest the reference pointed at before this pull, if any.
    pub previous_digest: Option<String>,
    /// How the image was fetched.
    pub path: PullPath,
    /// Layers in the image.
    pub layers: u64,
    /// Layers that were already in the store and were not fetched.
    pub layers_already_present: u64,
    /// New objects (files) written to the store.
    pub objects_new: u64,
    /// Objects that were already in the store.
    pub objects_already_present: u64,
    /// Bytes of new objects written.
    pub bytes_new: u64,
}

impl PullOutcome {
    /// Whether the reference now points at a different image than before.
    pub fn changed(&self) -> bool {
        self.previous_digest.as_deref() != Some(self.image.manifest_digest.as_str())
    }
}

/// Pull `imgref` into `store` and tag it. The caller holds the store's writer lock.
pub async fn pull(store: &Store, imgref: &ImageRef, opts: &PullOptions) -> Result<PullOutcome> {
    let name = imgref.to_string();
    let previous_digest = store.get(&name)?.map(|i| i.manifest_digest);
    let present_before = store.present_layers()?;

    let decision = crate::signed::decide(imgref, opts.enforce_sigpolicy, &opts.policy_path)?;
    let path = match decision {
        PolicyDecision::Reject => unreachable!("decide() turns Reject into an error"),
        PolicyDecision::RequiresVerification => PullPath::PolicyCopy,
        PolicyDecision::AcceptAnything => match imgref.transport {
            Transport::OciDir | Transport::OciArchive => PullPath::Layout,
            Transport::ContainersStorage => PullPath::ContainersStorage,
            _ => PullPath::Proxy,
        },
    };
    tracing::debug!("pulling {name} via {path:?}");

    // Keep the scratch layout alive until the import is done.
    let mut _scratch = None;
    let (source, layout) = if path == PullPath::PolicyCopy {
        let dir = store.scratch_dir()?;
        let layout = dir.path().join("layout");
        skopeo_copy(imgref, &layout, opts).await?;
        _scratch = Some(dir);
        (
            format!("oci:{}:image", layout.display()),
            Some((layout, Some("image".to_owned()))),
        )
    } else {
        let layout = match (path, imgref.oci_path_and_tag()) {
            (PullPath::Layout, Some((dir, tag))) if imgref.transport == Transport::OciDir => {
                Some((PathBuf::from(dir), tag.map(str::to_owned)))
            }
            // An oci-archive is unpacked to a layout in the scratch space:
            // skopeo 1.9 finds nothing in an archive whose index uses
            // Docker media types (`docker save`), and reading the layout
            // ourselves checks every blob as for `oci:`.
            (PullPath::Layout, Some((archive, tag))) => {
                let dir = store.scratch_dir()?;
                let layout = dir.path().join("layout");
                unpack_archive(Path::new(archive), &layout).await?;
                _scratch = Some(dir);
                Some((layout, tag.map(str::to_owned)))
            }
            _ => None,
        };
        (imgref.to_skopeo_string(), layout)
    };

    let (manifest_digest, stats) = import(store, imgref, path, &source, layout, opts)
        .await
        .with_context(|| format!("Pulling {name}"))?;
    store.repo().sync_async().await.context("Syncing store")?;
    store.tag(&manifest_digest, &name)?;
    let image = store
        .get(&name)?
        .with_context(|| format!("Image {name} vanished after tagging"))?;
    let diff_ids = store.open_image(&manifest_digest)?;
    let diff_ids = diff_ids.layer_diff_ids();
    let already = diff_ids
        .iter()
        .filter(|d| present_before.contains(**d))
        .count();
    Ok(PullOutcome {
        image,
        previous_digest,
        path,
        layers: diff_ids.len() as u64,
        layers_already_present: already as u64,
        objects_new: stats.new_objects(),
        objects_already_present: stats.objects_already_present,
        bytes_new: stats.new_bytes(),
    })
}

/// Steps 3 and 4 of the flow: fetch and check what is missing, then
/// record the image ([`crate::commit`]). Nothing is tagged yet. Returns the
/// manifest digest as stored.
async fn import(
    store: &Store,
    imgref: &ImageRef,
    path: PullPath,
    source: &str,
    layout: Option<(PathBuf, Option<String>)>,
    opts: &PullOptions,
) -> Result<(OciDigest, ImportStats)> {
    let repo = store.repo();
    let fetched = match (path, layout) {
        // containers-storage verified the layers when it stored them. We
        // import them ourselves (crate::cstor).
        (PullPath::ContainersStorage, _) => {
            let image = composefs_oci::cstor::parse_containers_storage_ref(source)
                .with_context(|| format!("{source} is not a containers-storage reference"))?;
            match crate::cstor::fetch_from_containers_storage(repo, image, &opts.progress).await? {
                Some(f) => f,
                None => return import_rootless(repo, source, opts).await,
            }
        }
        (_, Some((dir, tag))) => {
            fetch::fetch_from_layout(repo, &dir, tag.as_deref(), &opts.progress).await?
        }
        (_, None) => {
            fetch::fetch_via_proxy(repo, imgref, source, opts, fetch::default_workers()).await?
        }
    };
    if fetched.committed {
        return Ok((fetched.manifest_digest, fetched.stats));
    }
    let repo2 = Arc::clone(repo);
    let name = imgref.to_string();
    let stats = fetched.stats.clone();
    let committed = tokio::task::spawn_blocking(move || {
        let f = &fetched;
        commit::commit(
            &repo2,
            &commit::CheckedImage {
                name: &name,
                manifest_raw: &f.manifest_raw,
                manifest_digest: &f.manifest_digest,
                config_raw: &f.config_raw,
                config_digest: &f.config_digest,
                layers: f.layers.clone(),
                streams: &f.streams,
            },
        )
    })
    .await
    .context("Recording the image")??;
    Ok((committed.manifest_digest, stats))
}

/// containers-storage without root: composefs-oci imports the image itself
/// (through a helper in a user namespace), with its own tree import
/// (`user.*` xattrs dropped, missing parents refused; see ARCHITECTURE.md).
async fn import_rootless(
    repo: &Arc<Repo>,
    source: &str,
    opts: &PullOptions,
) -> Result<(OciDigest, ImportStats)> {
    let copts = composefs_oci::PullOptions {
        img_proxy_config: Some(proxy_config(opts)),
        local_fetch: LocalFetchOpt::IfPossible,
        progress: Some(opts.progress.clone()),
        ..Default::default()
    };
    let result = composefs_oci::pull(repo, source, None, copts).await?;
    Ok((result.manifest_digest, result.stats))
}

/// Unpack the oci-archive `archive` into the new directory `layout`.
async fn unpack_archive(archive: &Path, layout: &Path) -> Result<()> {
    std::fs::create_dir(layout).with_context(|| format!("Creating {}", layout.display()))?;
    let out = tokio::process::Command::new("tar")
        .arg("--extract")
        .arg("--no-same-owner")
        .arg("--no-same-permissions")
        .arg("--file")
        .arg(archive)
        .arg("--directory")
        .arg(layout)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .context("Running tar (is tar installed?)")?;
    ensure!(
        out.status.success(),
        "Unpacking oci-archive {}: {}",
        archive.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The skopeo proxy configuration for `opts`.
pub(crate) fn proxy_config(opts: &PullOptions) -> ImageProxyConfig {
    let mut config = ImageProxyConfig::default();
    config.authfile = opts.authfile.clone();
    if let Some(conf) = &opts.registries_conf {
        // Global options go before the subcommand the proxy library appends.
        let mut cmd = std::process::Command::new("skopeo");
        cmd.arg("--registries-conf").arg(conf);
        config.skopeo_cmd = Some(cmd);
    }
    config
}

/// `skopeo copy` `imgref` into a new OCI layout at `layout`, enforcing `policy.json`.
async fn skopeo_copy(imgref: &ImageRef, layout: &Path, opts: &PullOptions) -> Result<()> {
    let mut cmd = tokio::process::Command::new("skopeo");
    if let Some(conf) = &opts.registries_conf {
        cmd.arg("--registries-conf").arg(conf);
    }
    cmd.arg("copy")
        .arg("--quiet")
        .arg("--preserve-digests")
        // The policy is checked on the source before the copy; an OCI
        // layout cannot hold signatures, so do not try to write them.
        .arg("--remove-signatures")
        .arg("--policy")
        .arg(&opts.policy_path);
    if let Some(a) = &opts.authfile {
        cmd.arg("--authfile").arg(a);
    }
    cmd.arg(imgref.to_skopeo_string())
        .arg(format!("oci:{}:image", layout.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let out = cmd
        .output()
        .await
        .context("Running skopeo copy (is skopeo installed?)")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(crate::signed::explain_failure(
            imgref,
            &opts.policy_path,
            &err
        ));
    }
    Ok(())
}
