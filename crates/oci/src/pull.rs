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
//! 3. Fetch and check what the store lacks ourselves ([`fetch_via_proxy`],
//!    [`fetch_from_layout`]): the manifest, config and media types are
//!    checked ([`crate::validate`]); each missing layer is streamed into the
//!    store while its size, digest and diff_id are computed, and its tar
//!    entries checked; only then is it registered under its diff_id, and
//!    the config last. Layers whose diff_id is already in the store are not
//!    fetched again; new files are stored once (content-addressed).
//! 4. composefs-oci's own pull then finds every layer and the config in the
//!    store, records the manifest and builds the EROFS image. It must end at
//!    the manifest we checked (for registries it is given the digest).
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

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, Result, bail, ensure};
use bootc_store::{ObjectId, Repo, Store, StoredImage};
use composefs_oci::layer::decompress_async;
use composefs_oci::oci_image::has_manifest;
use composefs_oci::progress::{ProgressRead, ProgressUnit};
use composefs_oci::tar::{TarItem, split_async};
use composefs_oci::{
    ComponentId, ImportStats, LAYER_CONTENT_TYPE, LocalFetchOpt, OciDigest, ProgressEvent,
    ProgressReporter, SharedReporter, layer_content_id,
};
use containers_image_proxy::oci_spec::image::{Descriptor, ImageManifest};
use containers_image_proxy::{ImageProxy, ImageProxyConfig, OpenedImage};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, BufReader, ReadBuf};
use tokio::task::JoinSet;

use crate::imgref::{ImageRef, Transport};
use crate::policy::{self, PolicyDecision};
use crate::validate;

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
            _ => None,
        };
        (imgref.to_skopeo_string(), layout)
    };

    let (result, fetched) = import(store, imgref, path, &source, layout, opts)
        .await
        .with_context(|| format!("Pulling {name}"))?;
    store.repo().sync_async().await.context("Syncing store")?;
    store.tag(&result.manifest_digest, &name)?;
    let image = store
        .get(&name)?
        .with_context(|| format!("Image {name} vanished after tagging"))?;
    let mut s = result.stats;
    if let Some(f) = &fetched {
        s.merge(&f.stats);
    }
    let diff_ids = store.open_image(&result.manifest_digest)?;
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
        objects_new: s.new_objects(),
        objects_already_present: s.objects_already_present,
        bytes_new: s.new_bytes(),
    })
}

/// Steps 3 and 4 of the flow: fetch and check what is missing, then let
/// composefs-oci record the manifest and build the EROFS image. Nothing is
/// tagged yet.
async fn import(
    store: &Store,
    imgref: &ImageRef,
    path: PullPath,
    source: &str,
    layout: Option<(PathBuf, Option<String>)>,
    opts: &PullOptions,
) -> Result<(composefs_oci::PullResult<ObjectId>, Option<Fetched>)> {
    let repo = store.repo();
    // The containers-storage root our layer import read, for composefs-oci
    // to read the same.
    let mut storage_root = None;
    let fetched = match (path, layout) {
        // containers-storage verified the layers when it stored them. We
        // import them ourselves (crate::cstor), composefs-oci the rest.
        (PullPath::ContainersStorage, _) => {
            let image = composefs_oci::cstor::parse_containers_storage_ref(source)
                .with_context(|| format!("{source} is not a containers-storage reference"))?;
            crate::cstor::fetch_from_containers_storage(repo, image, &opts.progress)
                .await?
                .map(|f| {
                    storage_root = Some(f.storage_root);
                    Fetched {
                        manifest_digest: f.manifest_digest,
                        pinned: None,
                        stats: f.stats,
                        reported: f.reported,
                    }
                })
        }
        (_, Some((dir, tag))) => {
            Some(fetch_from_layout(repo, &dir, tag.as_deref(), &opts.progress).await?)
        }
        (_, None) => {
            // skopeo unpacks an oci-archive into a temporary directory per
            // process: one process, one copy.
            let workers = if imgref.transport == Transport::OciArchive {
                1
            } else {
                default_workers()
            };
            Some(fetch_via_proxy(repo, imgref, source, opts, workers).await?)
        }
    };
    let (source, progress) = match &fetched {
        Some(f) => {
            let progress: SharedReporter = Arc::new(AlreadyReported {
                inner: opts.progress.clone(),
                ids: f.reported.clone(),
            });
            (
                f.pinned.clone().unwrap_or_else(|| source.to_owned()),
                progress,
            )
        }
        None => (source.to_owned(), opts.progress.clone()),
    };
    let copts = composefs_oci::PullOptions {
        img_proxy_config: Some(proxy_config(opts)),
        local_fetch: if path == PullPath::ContainersStorage {
            LocalFetchOpt::IfPossible
        } else {
            LocalFetchOpt::Disabled
        },
        storage_root: storage_root.as_deref(),
        progress: Some(progress),
        ..Default::default()
    };
    let result = composefs_oci::pull(repo, &source, None, copts)
        .await
        .map_err(|e| {
            // composefs-oci's context for an entry that does not fit the
            // tree built from the layers below it (a parent that is a
            // symlink or missing, a hardlink to nothing or to a directory).
            if e.chain().any(|c| c.to_string() == "Processing tar entry") {
                e.context("Assembling the layers into one filesystem")
            } else {
                e
            }
        })?;
    if let Some(f) = &fetched {
        ensure!(
            result.manifest_digest == f.manifest_digest,
            "the image changed while it was pulled: checked manifest {}, stored {}",
            f.manifest_digest,
            result.manifest_digest
        );
    }
    Ok((result, fetched))
}

/// The skopeo proxy configuration for `opts`.
fn proxy_config(opts: &PullOptions) -> ImageProxyConfig {
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

// ---- Fetching and checking what the store lacks --------------------------

/// What [`fetch_via_proxy`] or [`fetch_from_layout`] brought into the store.
#[derive(Debug)]
struct Fetched {
    /// The manifest that was checked; the final import must end there.
    manifest_digest: OciDigest,
    /// For registries, the reference pinned to that manifest.
    pinned: Option<String>,
    /// Objects written for the layers.
    stats: ImportStats,
    /// Layers whose progress was reported (done or skipped).
    reported: HashSet<String>,
}

impl Fetched {
    fn nothing(manifest_digest: OciDigest, pinned: Option<String>) -> Self {
        Fetched {
            manifest_digest,
            pinned,
            stats: ImportStats::default(),
            reported: HashSet::new(),
        }
    }
}

/// Hides from the final import's progress the layers we already reported,
/// which it would announce again as skipped.
struct AlreadyReported {
    inner: SharedReporter,
    ids: HashSet<String>,
}

impl ProgressReporter for AlreadyReported {
    fn report(&self, event: ProgressEvent) {
        if let ProgressEvent::Skipped { id } = &event
            && self.ids.contains(id.as_str())
        {
            return;
        }
        self.inner.report(event);
    }
}

/// How many layers are fetched at once: one per core, as composefs-oci does.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Whether the store already has the image whose manifest is
/// `manifest_digest`, or at least its config (and so all its layers).
fn already_stored(repo: &Repo, manifest_digest: &OciDigest, config: &OciDigest) -> Result<bool> {
    if has_manifest(repo, manifest_digest)?.is_some() {
        return Ok(true);
    }
    match composefs_oci::open_config(repo, config, None) {
        Ok(_) => Ok(true),
        Err(e) => {
            tracing::debug!("config {config} not usable from the store: {e:#}");
            Ok(false)
        }
    }
}

/// One layer to fetch.
#[derive(Debug)]
struct LayerJob {
    /// 1-based position in the image, for messages.
    position: usize,
    /// Layers in the image.
    count: usize,
    descriptor: Descriptor,
    diff_id: OciDigest,
}

impl LayerJob {
    fn describe(&self) -> String {
        format!(
            "Importing layer {} of {} ({}, diff_id {})",
            self.position,
            self.count,
            self.descriptor.digest(),
            self.diff_id
        )
    }
}

/// Sort `manifest`'s layers into those the store has (returned with their
/// stream ids, reported as skipped) and those to fetch, largest first.
fn plan_layers(
    repo: &Repo,
    manifest: &ImageManifest,
    diff_ids: &[OciDigest],
    progress: &SharedReporter,
    reported: &mut HashSet<String>,
) -> Result<(Vec<LayerJob>, HashMap<String, ObjectId>)> {
    let mut present = HashMap::new();
    let mut jobs: Vec<LayerJob> = Vec::new();
    let count = diff_ids.len();
    for (i, (descriptor, diff_id)) in manifest.layers().iter().zip(diff_ids).enumerate() {
        let key = diff_id.to_string();
        // The same layer twice in one image. Another blob claiming the same
        // diff_id is fetched and checked too: it must not pass unread.
        let same_blob = |j: &LayerJob| j.diff_id == *diff_id && j.descriptor == *descriptor;
        if present.contains_key(&key) || jobs.iter().any(same_blob) {
            continue;
        }
        if let Some(id) = repo.has_stream(&layer_content_id(diff_id))? {
            progress.report(ProgressEvent::Skipped {
                id: ComponentId::from(key.clone()),
            });
            reported.insert(key.clone());
            present.insert(key, id);
        } else {
            jobs.push(LayerJob {
                position: i + 1,
                count,
                descriptor: descriptor.clone(),
                diff_id: diff_id.clone(),
            });
        }
    }
    jobs.sort_by_key(|j| std::cmp::Reverse(j.descriptor.size()));
    Ok((jobs, present))
}

/// Where workers read layer blobs from.
enum BlobSource {
    /// A skopeo proxy to start, and the reference to open in it.
    NewProxy(Box<ImageProxyConfig>, String),
    /// A proxy with the image open.
    Proxy(ImageProxy, OpenedImage),
    /// An OCI layout directory.
    Layout(PathBuf),
}

/// What every layer import needs.
struct LayerCtx {
    repo: Arc<Repo>,
    progress: SharedReporter,
}

/// Fetch `jobs`, one worker per source, each taking the next layer from a
/// shared queue. On the first error the other workers are stopped (their
/// blobs closed, their proxies shut down) before it is returned.
async fn run_workers(
    sources: Vec<BlobSource>,
    jobs: Vec<LayerJob>,
    ctx: Arc<LayerCtx>,
) -> Result<(HashMap<String, ObjectId>, ImportStats)> {
    let queue = Arc::new(Mutex::new(VecDeque::from(jobs)));
    let mut set = JoinSet::new();
    for source in sources {
        let queue = Arc::clone(&queue);
        let ctx = Arc::clone(&ctx);
        set.spawn(worker(source, queue, ctx));
    }
    let mut done = HashMap::new();
    let mut stats = ImportStats::default();
    while let Some(joined) = set.join_next().await {
        let result = joined.context("Layer worker failed").and_then(|r| r);
        match result {
            Ok(layers) => {
                for (diff_id, id, s) in layers {
                    stats.merge(&s);
                    done.insert(diff_id, id);
                }
            }
            Err(e) => {
                set.abort_all();
                while set.join_next().await.is_some() {}
                return Err(e);
            }
        }
    }
    Ok((done, stats))
}

type WorkerOutput = Vec<(String, ObjectId, ImportStats)>;

/// Import layers from `source` until `queue` is empty.
async fn worker(
    source: BlobSource,
    queue: Arc<Mutex<VecDeque<LayerJob>>>,
    ctx: Arc<LayerCtx>,
) -> Result<WorkerOutput> {
    let next = || queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
    let mut out = Vec::new();
    // Nothing to do: do not start a proxy for it.
    let Some(mut job) = next() else {
        return Ok(out);
    };
    let source = match source {
        BlobSource::NewProxy(config, imgref) => {
            let proxy = ImageProxy::new_with_config(*config)
                .await
                .context("Starting skopeo experimental-image-proxy")?;
            let img = proxy
                .open_image(&imgref)
                .await
                .with_context(|| format!("Opening {imgref}"))?;
            BlobSource::Proxy(proxy, img)
        }
        s => s,
    };
    loop {
        let (id, stats) = match &source {
            BlobSource::Proxy(proxy, img) => fetch_layer_proxied(proxy, img, &job, &ctx).await,
            BlobSource::Layout(dir) => fetch_layer_from_layout(dir, &job, &ctx).await,
            BlobSource::NewProxy(..) => unreachable!("opened above"),
        }
        .with_context(|| job.describe())?;
        out.push((job.diff_id.to_string(), id, stats));
        match next() {
            Some(j) => job = j,
            None => break,
        }
    }
    if let BlobSource::Proxy(proxy, _) = source
        && let Err(e) = proxy.finalize().await
    {
        tracing::debug!("Shutting down skopeo: {e}");
    }
    Ok(out)
}

/// Fetch one layer through `proxy`, sending `FinishPipe` while the blob is
/// read (see the module documentation), and register it once skopeo and
/// our checks agree.
async fn fetch_layer_proxied(
    proxy: &ImageProxy,
    img: &OpenedImage,
    job: &LayerJob,
    ctx: &LayerCtx,
) -> Result<(ObjectId, ImportStats)> {
    let desc = &job.descriptor;
    let (blob, finish) = proxy
        .get_blob(img, desc.digest(), desc.size())
        .await
        .context("Requesting the blob from skopeo")?;
    // Both run to completion: an import that fails drops the blob, which
    // ends skopeo's copy with a broken pipe; a copy that fails (short or
    // corrupt blob) closes the pipe, which ends the import.
    let (imported, finished) =
        tokio::join!(import_layer(blob, DigestCheck::Skopeo, job, ctx), finish);
    let imported = match (imported, finished) {
        (Ok(imported), Ok(())) => imported,
        (Err(e), Ok(())) => return Err(e),
        (Ok(_), Err(skopeo)) => {
            return Err(anyhow::Error::new(skopeo).context("skopeo could not fetch the blob"));
        }
        // The import gave up first and closed the pipe: its error is the cause.
        (Err(e), Err(skopeo)) if skopeo.to_string().contains("broken pipe") => return Err(e),
        (Err(e), Err(skopeo)) => {
            tracing::debug!("Importing the blob failed too: {e:#}");
            return Err(anyhow::Error::new(skopeo).context("skopeo could not fetch the blob"));
        }
    };
    register_layer(&ctx.repo, job, imported).await
}

/// How much of a layout's layer blob is read at once.
const LAYOUT_READ_SIZE: usize = 1 << 20;

/// Import one layer from an OCI layout and register it.
async fn fetch_layer_from_layout(
    dir: &Path,
    job: &LayerJob,
    ctx: &LayerCtx,
) -> Result<(ObjectId, ImportStats)> {
    let file = validate::open_layout_blob(dir, &job.descriptor)?;
    // Large reads: each read of a tokio file is a trip to a blocking thread.
    let file = BufReader::with_capacity(LAYOUT_READ_SIZE, tokio::fs::File::from_std(file));
    let imported = import_layer(file, DigestCheck::Here, job, ctx).await?;
    register_layer(&ctx.repo, job, imported).await
}

/// Make a checked layer findable by its diff_id.
async fn register_layer(
    repo: &Arc<Repo>,
    job: &LayerJob,
    (id, stats): (ObjectId, ImportStats),
) -> Result<(ObjectId, ImportStats)> {
    repo.register_stream(&id, &layer_content_id(&job.diff_id), None)
        .await
        .context("Registering the layer")?;
    Ok((id, stats))
}

/// Who checks a blob's digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DigestCheck {
    /// skopeo's proxy does, and reports a mismatch in `FinishPipe`.
    Skopeo,
    /// We do, as the blob is read.
    Here,
}

/// Stream a layer blob into the store as a splitstream, checking its size,
/// digest (unless skopeo does) and diff_id and its tar entries. The stream
/// is not registered: until the caller does, it is an unreferenced object
/// that GC reclaims.
async fn import_layer<R: AsyncRead + Unpin + Send>(
    blob: R,
    digest_check: DigestCheck,
    job: &LayerJob,
    ctx: &LayerCtx,
) -> Result<(ObjectId, ImportStats)> {
    let desc = &job.descriptor;
    let id = ComponentId::from(job.diff_id.to_string());
    ctx.progress.report(ProgressEvent::Started {
        id: id.clone(),
        total: Some(desc.size()),
        unit: ProgressUnit::Bytes,
    });
    let (blob, blob_sum) = Summing::new(blob, Some(desc.size()), digest_check == DigestCheck::Here);
    let (blob, progress) = ProgressRead::new(
        blob,
        Arc::clone(&ctx.progress),
        id.clone(),
        Some(desc.size()),
    );
    let tar = decompress_async(blob, &crate::validate::oci_media_type(desc.media_type()))?;
    let (tar, tar_sum) = Summing::new(tar, None, true);
    let (split, ()) = tokio::join!(
        split_async(tar, Arc::clone(&ctx.repo), LAYER_CONTENT_TYPE),
        progress
    );
    let (size, digest) = blob_sum.finish();
    let (object_id, stats) = match split {
        Ok(split) => split,
        // A short blob explains a decompression or tar error: say so first.
        Err(e) if size < desc.size() => bail!(
            "the blob ended after {size} of the {} bytes its descriptor declares: {e:#}",
            desc.size()
        ),
        Err(e) => return Err(e.context("Reading the layer")),
    };
    ensure!(
        size == desc.size(),
        "the blob has {size} bytes but its descriptor declares {}",
        desc.size()
    );
    if let Some(digest) = digest {
        ensure!(
            digest == desc.digest().to_string(),
            "digest mismatch: the blob hashes to {digest}, not {}",
            desc.digest()
        );
    }
    let (_, diff_id) = tar_sum.finish();
    let diff_id = diff_id.context("diff_id not computed")?;
    ensure!(
        diff_id == job.diff_id.to_string(),
        "diff_id mismatch: the config declares {} but the layer's content hashes to {diff_id}",
        job.diff_id
    );
    check_layer_entries(&ctx.repo, &object_id).await?;
    ctx.progress.report(ProgressEvent::Done {
        id,
        transferred: desc.size(),
    });
    Ok((object_id, stats))
}

/// Check every tar entry of the layer splitstream `id` ([`validate::check_entry`]).
async fn check_layer_entries(repo: &Arc<Repo>, id: &ObjectId) -> Result<()> {
    let repo = Arc::clone(repo);
    let id = id.clone();
    tokio::task::spawn_blocking(move || {
        let mut stream = repo.open_stream("", Some(&id), Some(LAYER_CONTENT_TYPE))?;
        while let Some(entry) = composefs_oci::tar::get_entry(&mut stream)? {
            let link = match &entry.item {
                TarItem::Hardlink(target) => Some(target.as_os_str()),
                _ => None,
            };
            validate::check_entry(&entry.path, link)?;
        }
        anyhow::Ok(())
    })
    .await
    .context("Checking tar entries")?
}

/// The length and sha256 (if asked for) of what went through a
/// [`Summing`] reader.
#[derive(Default)]
struct SumState {
    hasher: Option<Sha256>,
    bytes: u64,
}

/// Reads from the caller's side of a [`Summing`] reader.
struct SumHandle(Arc<Mutex<SumState>>);

impl SumHandle {
    /// Bytes read and, if hashed, their `sha256:` digest.
    fn finish(self) -> (u64, Option<String>) {
        let state = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        let digest = state
            .hasher
            .map(|h| format!("sha256:{}", hex::encode(h.finalize())));
        (state.bytes, digest)
    }
}

/// An `AsyncRead` that counts (and hashes, if asked) what it passes on, and
/// fails once more than `limit` bytes arrive. Its handle stays with the caller while
/// the reader is moved into a decompressor.
struct Summing<R> {
    inner: R,
    state: Arc<Mutex<SumState>>,
    limit: Option<u64>,
}

impl<R> Summing<R> {
    fn new(inner: R, limit: Option<u64>, hash: bool) -> (Self, SumHandle) {
        let state = Arc::new(Mutex::new(SumState {
            hasher: hash.then(Sha256::new),
            bytes: 0,
        }));
        (
            Summing {
                inner,
                state: Arc::clone(&state),
                limit,
            },
            SumHandle(state),
        )
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Summing<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                let mut state = this.state.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(h) = &mut state.hasher {
                    h.update(new);
                }
                state.bytes += new.len() as u64;
                if let Some(limit) = this.limit
                    && state.bytes > limit
                {
                    return Poll::Ready(Err(std::io::Error::other(format!(
                        "the blob is larger than the {limit} bytes its descriptor declares"
                    ))));
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

/// Fetch through skopeo's proxy what the store lacks of `source` (the
/// image `imgref`), with up to `workers` layers at once.
async fn fetch_via_proxy(
    repo: &Arc<Repo>,
    imgref: &ImageRef,
    source: &str,
    opts: &PullOptions,
    workers: usize,
) -> Result<Fetched> {
    let proxy = ImageProxy::new_with_config(proxy_config(opts))
        .await
        .context("Starting skopeo experimental-image-proxy")?;
    let img = proxy
        .open_image(source)
        .await
        .with_context(|| format!("Opening {source}"))?;
    let (digest, raw_manifest) = proxy
        .fetch_manifest_raw_oci(&img)
        .await
        .context("Fetching manifest")?;
    let manifest_digest: OciDigest = digest
        .parse()
        .with_context(|| format!("Parsing manifest digest {digest:?} from skopeo"))?;
    validate::check_digest(&manifest_digest)?;
    // Later requests (other workers, the final import) must see this very
    // manifest even if the tag moves meanwhile.
    let pinned = imgref.docker_reference().map(|r| {
        format!(
            "{}{}/{}@{manifest_digest}",
            Transport::Registry.skopeo_prefix(),
            r.registry(),
            r.repository()
        )
    });
    let manifest = validate::parse_manifest(&raw_manifest)
        .with_context(|| format!("Checking manifest {manifest_digest}"))?;
    let config_desc = manifest.config();
    if already_stored(repo, &manifest_digest, config_desc.digest())? {
        return Ok(Fetched::nothing(manifest_digest, pinned));
    }

    opts.progress.report(ProgressEvent::Message(format!(
        "Fetching config {}",
        config_desc.digest()
    )));
    let (config, driver) = proxy
        .get_descriptor(&img, config_desc)
        .await
        .with_context(|| format!("Fetching config {}", config_desc.digest()))?;
    let read = async move {
        let mut data = Vec::new();
        config
            .take(validate::MAX_JSON_BLOB_SIZE + 1)
            .read_to_end(&mut data)
            .await
            .map(|_| data)
    };
    let (data, finished) = tokio::join!(read, driver);
    let config = finished
        .map_err(anyhow::Error::new)
        .and_then(|()| Ok(data?))
        .and_then(|data| validate::check_blob(config_desc, &data).map(|()| data))
        .with_context(|| format!("Fetching config {}", config_desc.digest()))?;
    let (_, diff_ids) = validate::parse_config(&config, &manifest)
        .with_context(|| format!("Checking config {}", config_desc.digest()))?;

    let mut reported = HashSet::new();
    let (jobs, mut layers) =
        plan_layers(repo, &manifest, &diff_ids, &opts.progress, &mut reported)?;
    let workers = workers.clamp(1, jobs.len().max(1));
    let worker_ref = pinned.clone().unwrap_or_else(|| source.to_owned());
    let mut sources = vec![BlobSource::Proxy(proxy, img)];
    for _ in 1..workers {
        sources.push(BlobSource::NewProxy(
            Box::new(proxy_config(opts)),
            worker_ref.clone(),
        ));
    }
    let ctx = Arc::new(LayerCtx {
        repo: Arc::clone(repo),
        progress: opts.progress.clone(),
    });
    reported.extend(jobs.iter().map(|j| j.diff_id.to_string()));
    let (fetched, stats) = run_workers(sources, jobs, ctx).await?;
    layers.extend(fetched);
    write_config(repo, &config, config_desc.digest(), &diff_ids, layers)?;
    Ok(Fetched {
        manifest_digest,
        pinned,
        stats,
        reported,
    })
}

/// Import what the store lacks of the image tagged `tag` in the OCI layout
/// `dir`, checking every blob against its digest.
async fn fetch_from_layout(
    repo: &Arc<Repo>,
    dir: &Path,
    tag: Option<&str>,
    progress: &SharedReporter,
) -> Result<Fetched> {
    let image = validate::load_layout_image(dir, tag)
        .with_context(|| format!("Reading OCI layout {}", dir.display()))?;
    let manifest_digest = image.descriptor.digest().clone();
    let manifest = image.manifest;
    let config_desc = manifest.config();
    if already_stored(repo, &manifest_digest, config_desc.digest())? {
        return Ok(Fetched::nothing(manifest_digest, None));
    }
    let config = validate::load_layout_blob(dir, "config", config_desc)?;
    let (_, diff_ids) = validate::parse_config(&config, &manifest)
        .with_context(|| format!("Checking config {}", config_desc.digest()))?;
    let mut reported = HashSet::new();
    let (jobs, mut layers) = plan_layers(repo, &manifest, &diff_ids, progress, &mut reported)?;
    let workers = default_workers().clamp(1, jobs.len().max(1));
    let sources = (0..workers)
        .map(|_| BlobSource::Layout(dir.to_owned()))
        .collect();
    let ctx = Arc::new(LayerCtx {
        repo: Arc::clone(repo),
        progress: progress.clone(),
    });
    reported.extend(jobs.iter().map(|j| j.diff_id.to_string()));
    let (fetched, stats) = run_workers(sources, jobs, ctx).await?;
    layers.extend(fetched);
    write_config(repo, &config, config_desc.digest(), &diff_ids, layers)?;
    Ok(Fetched {
        manifest_digest,
        pinned: None,
        stats,
        reported,
    })
}

/// Store the config, naming the stream of each of its layers: from now on
/// composefs-oci takes the image's layers from the store.
fn write_config(
    repo: &Arc<Repo>,
    config: &[u8],
    digest: &OciDigest,
    diff_ids: &[OciDigest],
    mut layers: HashMap<String, ObjectId>,
) -> Result<()> {
    let mut refs = HashMap::new();
    for diff_id in diff_ids {
        let key = diff_id.to_string();
        let id = layers
            .remove(&key)
            .or_else(|| refs.get(key.as_str()).cloned())
            .with_context(|| format!("Layer {diff_id} was not imported"))?;
        refs.insert(Box::<str>::from(key), id);
    }
    let (written, _) =
        composefs_oci::write_config_raw(repo, config, refs, None, None, &HashMap::new())
            .with_context(|| format!("Storing config {digest}"))?;
    ensure!(
        written == *digest,
        "config {digest} was stored as {written}"
    );
    Ok(())
}
