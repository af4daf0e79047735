//! Fetching and checking what the store lacks of an image, from skopeo's
//! proxy or an OCI layout (step 3 of [`crate::pull`]'s flow): the manifest,
//! config and media types are checked ([`crate::validate`]); each missing
//! layer is streamed into the store while its size, digest and diff_id are
//! computed and its tar entries checked, and only then registered under its
//! diff_id. See [`crate::pull`] for why we fetch layers ourselves.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, Result, bail, ensure};
use bootc_store::{ObjectId, Repo};
use composefs_oci::layer::decompress_async;
use composefs_oci::progress::{ProgressRead, ProgressUnit};
use composefs_oci::tar::{TarItem, split_async};
use composefs_oci::{
    ComponentId, ImportStats, LAYER_CONTENT_TYPE, OciDigest, ProgressEvent, SharedReporter,
    layer_content_id,
};
use containers_image_proxy::oci_spec::image::{Descriptor, ImageManifest};
use containers_image_proxy::{ImageProxy, ImageProxyConfig, OpenedImage};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, BufReader, ReadBuf};
use tokio::task::JoinSet;

use crate::commit;
use crate::imgref::{ImageRef, Transport};
use crate::pull::{PullOptions, proxy_config};
use crate::validate;

/// What [`fetch_via_proxy`] or [`fetch_from_layout`] brought into the
/// store, and what [`commit::commit`] needs to record the image.
#[derive(Debug)]
pub(crate) struct Fetched {
    /// The manifest that was checked, in OCI form ([`commit::oci_manifest`]).
    pub manifest_digest: OciDigest,
    /// Its bytes (empty when `committed`).
    pub manifest_raw: Vec<u8>,
    /// The config digest.
    pub config_digest: OciDigest,
    /// Its bytes (empty when `committed`).
    pub config_raw: Vec<u8>,
    /// (blob digest, diff_id) of each layer, bottom first.
    pub layers: Vec<(String, OciDigest)>,
    /// The stream of each diff_id.
    pub streams: HashMap<String, ObjectId>,
    /// Objects written for the layers.
    pub stats: ImportStats,
    /// The store already had the image, EROFS image included.
    pub committed: bool,
}

impl Fetched {
    pub(crate) fn nothing(manifest_digest: OciDigest, config_digest: OciDigest) -> Self {
        Fetched {
            manifest_digest,
            manifest_raw: Vec::new(),
            config_digest,
            config_raw: Vec::new(),
            layers: Vec::new(),
            streams: HashMap::new(),
            stats: ImportStats::default(),
            committed: true,
        }
    }
}

/// How many layers are fetched at once: one per core, as composefs-oci does.
pub(crate) fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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
pub(crate) async fn fetch_via_proxy(
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
    // Later requests (other workers) must see this very manifest even if
    // the tag moves meanwhile.
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
    let (raw_manifest, manifest_digest) = commit::oci_manifest(&raw_manifest, &manifest_digest)?;
    let config_desc = manifest.config();
    if commit::is_committed(repo, &manifest_digest)? {
        return Ok(Fetched::nothing(
            manifest_digest,
            config_desc.digest().clone(),
        ));
    }

    opts.progress.report(ProgressEvent::Message(format!(
        "Fetching config {}",
        config_desc.digest()
    )));
    // skopeo hands a Docker schema 2 image over as an OCI manifest it
    // converted (the digest it names is the original's), whose config is
    // converted too and is not a blob in the registry: ask for that one.
    let converted = validate::sha256_digest(&raw_manifest) != digest;
    let config = if converted {
        proxy
            .fetch_config_raw(&img)
            .await
            .map_err(anyhow::Error::new)
            .and_then(|data| validate::check_blob(config_desc, &data).map(|()| data))
            .with_context(|| format!("Fetching config {}", config_desc.digest()))?
    } else {
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
        finished
            .map_err(anyhow::Error::new)
            .and_then(|()| Ok(data?))
            .and_then(|data| validate::check_blob(config_desc, &data).map(|()| data))
            .with_context(|| format!("Fetching config {}", config_desc.digest()))?
    };
    let (_, diff_ids) = validate::parse_config(&config, &manifest)
        .with_context(|| format!("Checking config {}", config_desc.digest()))?;

    let (jobs, mut layers) = plan_layers(repo, &manifest, &diff_ids, &opts.progress)?;
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
    let (fetched, stats) = run_workers(sources, jobs, ctx).await?;
    layers.extend(fetched);
    Ok(Fetched {
        manifest_digest,
        manifest_raw: raw_manifest,
        config_digest: config_desc.digest().clone(),
        config_raw: config,
        layers: layer_list(&manifest, &diff_ids),
        streams: layers,
        stats,
        committed: false,
    })
}

/// (blob digest, diff_id) of each layer of `manifest`, bottom first.
fn layer_list(manifest: &ImageManifest, diff_ids: &[OciDigest]) -> Vec<(String, OciDigest)> {
    manifest
        .layers()
        .iter()
        .zip(diff_ids)
        .map(|(l, d)| (l.digest().to_string(), d.clone()))
        .collect()
}

/// Import what the store lacks of the image tagged `tag` in the OCI layout
/// `dir`, checking every blob against its digest.
pub(crate) async fn fetch_from_layout(
    repo: &Arc<Repo>,
    dir: &Path,
    tag: Option<&str>,
    progress: &SharedReporter,
) -> Result<Fetched> {
    let image = validate::load_layout_image(dir, tag)
        .with_context(|| format!("Reading OCI layout {}", dir.display()))?;
    let manifest = image.manifest;
    let (manifest_raw, manifest_digest) =
        commit::oci_manifest(&image.raw, image.descriptor.digest())?;
    let config_desc = manifest.config();
    if commit::is_committed(repo, &manifest_digest)? {
        return Ok(Fetched::nothing(
            manifest_digest,
            config_desc.digest().clone(),
        ));
    }
    let config = validate::load_layout_blob(dir, "config", config_desc)?;
    let (_, diff_ids) = validate::parse_config(&config, &manifest)
        .with_context(|| format!("Checking config {}", config_desc.digest()))?;
    let (jobs, mut layers) = plan_layers(repo, &manifest, &diff_ids, progress)?;
    let workers = default_workers().clamp(1, jobs.len().max(1));
    let sources = (0..workers)
        .map(|_| BlobSource::Layout(dir.to_owned()))
        .collect();
    let ctx = Arc::new(LayerCtx {
        repo: Arc::clone(repo),
        progress: progress.clone(),
    });
    let (fetched, stats) = run_workers(sources, jobs, ctx).await?;
    layers.extend(fetched);
    Ok(Fetched {
        manifest_digest,
        manifest_raw,
        config_digest: config_desc.digest().clone(),
        config_raw: config,
        layers: layer_list(&manifest, &diff_ids),
        streams: layers,
        stats,
        committed: false,
    })
}
