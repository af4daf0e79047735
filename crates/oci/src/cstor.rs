//! Importing an image's layers from containers-storage (podman's local
//! storage), the source of `bootc install` and of `containers-storage:` pulls.
//!
//! containers-storage keeps each layer as an overlay diff directory plus a
//! tar-split file (the tar headers and padding, with a reference to each
//! file's content). Replaying the tar-split with the files' contents gives
//! back the exact layer tar. We replay it into a layer splitstream: headers
//! and files of at most [`INLINE_CONTENT_MAX_V0`] bytes inline, every other
//! file as an object.
//!
//! composefs-oci 0.9.4 has its own import of containers-storage, which
//! [`crate::pull`] uses only without root. We import the layers ourselves
//! (and `crate::commit` records the rest) because its path costs, for
//! each file, two userspace SHA-256 passes and three reads of the content on
//! a store that is on another filesystem than containers-storage (the
//! install case): the digest of the source, a failed hardlink, a copy, then
//! the digest of the copy read back. It imports one file after another, and
//! syncs the filesystem after every layer.
//!
//! Here each object is written in one pass that reads the source once and,
//! on a store without fs-verity, hashes it while copying. Files are spread
//! over one worker thread per core while one thread replays the tar-split.
//! The layer streams are written unnamed; one `syncfs` then covers all of
//! them and their objects, and only after it are they named by diff_id (see
//! [`fetch_from_containers_storage`]).
//!
//! What is checked is what composefs-oci's import checks: the layers are
//! found through the image's diff_ids in containers-storage's own index, and
//! each file must have the size its tar header declares. Layer contents are
//! not hashed against their diff_ids (containers-storage verified them when
//! it stored the layers).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail, ensure};
use bootc_store::{ObjectId, Repo};
use composefs::INLINE_CONTENT_MAX_V0;
use composefs::fsverity::{FsVerityHashValue, FsVerityHasher};
use composefs::repository::ObjectStoreMethod;
use composefs_oci::progress::ProgressUnit;
use composefs_oci::{
    ComponentId, ImportStats, LAYER_CONTENT_TYPE, OciDigest, ProgressEvent, SharedReporter,
    layer_content_id,
};
use composefs_storage::{Image, Layer, Storage, TarSplitFdStream, TarSplitItem};

use crate::commit;
use crate::fetch::Fetched;
use rustix::fs::{AtFlags, CWD, Mode, linkat, mkdirat, statat};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};

/// Where containers-storage roots are looked for, in order: the same search
/// as composefs-oci's, so that both find the same image.
fn storage_search_paths() -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Some(root) = std::env::var_os("CONTAINERS_STORAGE_ROOT") {
        paths.push(PathBuf::from(root));
    }
    if let Some(home) = std::env::var_os("HOME") {
        if let Some(xdg) = std::env::var_os("XDG_DATA_HOME") {
            paths.push(Path::new(&xdg).join("containers/storage"));
        }
        paths.push(Path::new(&home).join(".local/share/containers/storage"));
    }
    paths.push(PathBuf::from("/var/lib/containers/storage"));
    if let Ok(opts) = std::env::var("STORAGE_OPTS") {
        paths.extend(
            opts.split(',')
                .filter_map(|o| o.trim().strip_prefix("additionalimagestore="))
                .map(PathBuf::from),
        );
    }
    paths
}

/// An image found in a containers-storage root, with its layers.
struct Found {
    root: PathBuf,
    storage: Storage,
    /// The manifest in OCI form ([`commit::oci_manifest`]) and its digest.
    manifest_raw: Vec<u8>,
    manifest_digest: OciDigest,
    /// The config's bytes and digest.
    config_raw: Vec<u8>,
    config_digest: OciDigest,
    /// (storage layer id, diff_id), bottom layer first.
    layers: Vec<(String, OciDigest)>,
    /// The blob digest of each layer as the manifest names it.
    blob_digests: Vec<String>,
}

/// Find `image` (an id or a name) the way composefs-oci does. `None` when
/// its layers are not all in the root that holds the image (composefs-oci
/// then imports it itself, searching every root).
fn find_image(image: &str) -> Result<Option<Found>> {
    for root in storage_search_paths() {
        let storage = match Storage::open(&root) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("no containers-storage at {}: {e}", root.display());
                continue;
            }
        };
        let Ok(img) = Image::open(&storage, image).or_else(|_| storage.find_image_by_name(image))
        else {
            continue;
        };
        let layer_ids = match img.storage_layer_ids(std::slice::from_ref(&storage)) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::debug!("layers of {image} not all in {}: {e}", root.display());
                return Ok(None);
            }
        };
        let config = img
            .config()
            .with_context(|| format!("Reading the config of {image} in {}", root.display()))?;
        let diff_ids = config
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| {
                d.parse::<OciDigest>()
                    .with_context(|| format!("Parsing diff_id {d:?}"))
            })
            .collect::<Result<Vec<_>>>()?;
        ensure!(
            layer_ids.len() == diff_ids.len(),
            "image {image} in {} has {} layers but its config lists {} diff_ids",
            root.display(),
            layer_ids.len(),
            diff_ids.len()
        );
        let manifest = img
            .read_manifest_raw()
            .with_context(|| format!("Reading the manifest of {image} in {}", root.display()))?;
        let manifest_digest: OciDigest =
            format!("sha256:{}", hex::encode(Sha256::digest(&manifest)))
                .parse()
                .context("Formatting the manifest digest")?;
        let (manifest_raw, manifest_digest) = commit::oci_manifest(&manifest, &manifest_digest)
            .with_context(|| format!("Checking the manifest of {image} in {}", root.display()))?;
        let parsed = crate::validate::parse_manifest(&manifest_raw)?;
        let config_digest = parsed.config().digest().clone();
        // containers-storage keeps the config as image metadata named by
        // the base64 of "sha256:<image id>".
        let config_raw = img
            .read_metadata(&bootc_utils::base64::encode(format!("sha256:{}", img.id()).as_bytes()))
            .with_context(|| format!("Reading the config of {image} in {}", root.display()))?;
        let found_config = format!("sha256:{}", hex::encode(Sha256::digest(&config_raw)));
        ensure!(
            found_config == config_digest.to_string(),
            "the config of {image} in {} hashes to {found_config}, not {config_digest}",
            root.display()
        );
        let blob_digests = if parsed.layers().len() == diff_ids.len() {
            parsed
                .layers()
                .iter()
                .map(|l| l.digest().to_string())
                .collect()
        } else {
            diff_ids.iter().map(|d| d.to_string()).collect()
        };
        return Ok(Some(Found {
            root,
            storage,
            manifest_raw,
            manifest_digest,
            config_raw,
            config_digest,
            layers: layer_ids.into_iter().zip(diff_ids).collect(),
            blob_digests,
        }));
    }
    Ok(None)
}

/// Import into `repo` the layers of the containers-storage image `image`
/// that it lacks, and name them by diff_id.
///
/// Crash safety: every layer stream and object is written unnamed (an
/// `O_TMPFILE` linked under its digest once complete); one `syncfs` follows,
/// and only then are the streams named, so a named layer always has its
/// objects on disk. A crash before leaves unreferenced objects for GC.
///
/// `Ok(None)` when this path does not apply (not root, or the image spans
/// several storage roots): composefs-oci's import then does everything.
pub(crate) async fn fetch_from_containers_storage(
    repo: &Arc<Repo>,
    image: &str,
    progress: &SharedReporter,
) -> Result<Option<Fetched>> {
    if !composefs_storage::can_bypass_file_permissions() {
        // Rootless: composefs-oci reads the files through a helper in a
        // user namespace.
        return Ok(None);
    }
    let (found, imported) = {
        let repo = Arc::clone(repo);
        let image = image.to_owned();
        let progress = progress.clone();
        tokio::task::spawn_blocking(move || import_layers(&repo, &image, &progress))
            .await
            .context("Importing layers from containers-storage")??
    };
    let Some(mut fetched) = found else {
        return Ok(None);
    };
    if !imported.is_empty() {
        repo.sync_async().await.context("Syncing the store")?;
    }
    for (diff_id, stream) in imported {
        // Each syncs again, with nothing left to write after the sync above.
        repo.register_stream(&stream, &layer_content_id(&diff_id), None)
            .await
            .with_context(|| format!("Registering layer {diff_id}"))?;
        fetched.streams.insert(diff_id.to_string(), stream);
    }
    Ok(Some(fetched))
}

/// The blocking part of [`fetch_from_containers_storage`]: find the image
/// and write the streams of the layers `repo` lacks, returned unnamed with
/// their diff_ids (the streams of the others are in the result).
fn import_layers(
    repo: &Arc<Repo>,
    image: &str,
    progress: &SharedReporter,
) -> Result<(Option<Fetched>, Vec<(OciDigest, ObjectId)>)> {
    let Some(found) = find_image(image)? else {
        return Ok((None, Vec::new()));
    };
    if commit::is_committed(repo, &found.manifest_digest)? {
        let f = Fetched::nothing(found.manifest_digest, found.config_digest);
        return Ok((Some(f), Vec::new()));
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut stats = ImportStats::default();
    let mut present = HashMap::new();
    let mut imported = Vec::new();
    with_writeback(repo, || {
        import_missing(
            repo,
            &found,
            workers,
            progress,
            &mut stats,
            &mut present,
            &mut imported,
        )
    })?;
    let fetched = Fetched {
        manifest_digest: found.manifest_digest,
        manifest_raw: found.manifest_raw,
        config_digest: found.config_digest,
        config_raw: found.config_raw,
        layers: found
            .blob_digests
            .into_iter()
            .zip(found.layers.into_iter().map(|(_, d)| d))
            .collect(),
        streams: present,
        stats,
        committed: false,
    };
    Ok((Some(fetched), imported))
}

/// How often [`with_writeback`] starts writing back what was written.
const WRITEBACK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// Run `f` while a thread keeps syncing the store's filesystem, so that the
/// disk writes what the import produces while it goes on instead of all at
/// the sync that follows it (the page cache holds a whole image without
/// writing any of it back by itself). This is not a barrier: the caller
/// still syncs after `f`, before anything is named.
fn with_writeback<T>(repo: &Repo, f: impl FnOnce() -> T) -> T {
    let stop = (Mutex::new(false), std::sync::Condvar::new());
    std::thread::scope(|s| {
        s.spawn(|| {
            let (lock, cvar) = &stop;
            let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                (stopped, _) = cvar
                    .wait_timeout(stopped, WRITEBACK_INTERVAL)
                    .unwrap_or_else(|e| e.into_inner());
                if *stopped {
                    return;
                }
                drop(stopped);
                if let Err(e) = repo.sync() {
                    tracing::debug!("background sync: {e:#}");
                    return;
                }
                stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
            }
        });
        let out = f();
        *stop.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        stop.1.notify_all();
        out
    })
}

/// Import the layers of `found` that `repo` lacks (see [`import_layers`]).
fn import_missing(
    repo: &Arc<Repo>,
    found: &Found,
    workers: usize,
    progress: &SharedReporter,
    stats: &mut ImportStats,
    present: &mut HashMap<String, ObjectId>,
    imported: &mut Vec<(OciDigest, ObjectId)>,
) -> Result<()> {
    let mut seen = HashSet::new();
    for (layer_id, diff_id) in &found.layers {
        let key = diff_id.to_string();
        let id = ComponentId::from(key.clone());
        if !seen.insert(key.clone()) {
            continue; // the same layer twice in one image
        }
        if let Some(stream) = repo.has_stream(&layer_content_id(diff_id))? {
            progress.report(ProgressEvent::Skipped { id });
            present.insert(key, stream);
            continue;
        }
        progress.report(ProgressEvent::Started {
            id: id.clone(),
            total: None,
            unit: ProgressUnit::Bytes,
        });
        let (stream, s) =
            import_layer(repo, &found.storage, layer_id, workers).with_context(|| {
                format!(
                    "Importing layer {layer_id} (diff_id {diff_id}) from {}",
                    found.root.display()
                )
            })?;
        progress.report(ProgressEvent::Done {
            id,
            transferred: s.new_bytes(),
        });
        stats.merge(&s);
        imported.push((diff_id.clone(), stream));
    }
    Ok(())
}

/// A piece of the layer stream, in order.
enum Piece {
    /// Tar headers, padding and small files.
    Inline(Vec<u8>),
    /// The object of the file given to a worker as job `n`, of `size` bytes.
    Object { job: usize, size: u64 },
}

/// A file for a worker to store.
struct Job {
    n: usize,
    file: File,
    size: u64,
    name: String,
}

/// What one worker stored: (job, object) pairs and its counts.
type WorkerResult = Result<(Vec<(usize, ObjectId)>, ImportStats)>;

/// Replay the tar-split of the storage layer `layer_id` into a new (unnamed)
/// layer stream, storing its files with `workers` threads.
fn import_layer(
    repo: &Arc<Repo>,
    storage: &Storage,
    layer_id: &str,
    workers: usize,
) -> Result<(ObjectId, ImportStats)> {
    let layer = Layer::open(storage, layer_id).context("Opening the layer")?;
    let mut tarsplit = TarSplitFdStream::new(storage, &layer).context("Opening its tar-split")?;
    let (tx, rx) = sync_channel::<Job>(workers * 16);
    let rx = Mutex::new(rx);
    let failed = AtomicBool::new(false);
    let mut pieces = Vec::new();
    let mut stats = ImportStats::default();
    let (produced, results) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| s.spawn(|| store_worker(repo, &rx, &failed)))
            .collect();
        let produced = replay(&mut tarsplit, &tx, &failed, &mut pieces, &mut stats);
        if produced.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        drop(tx);
        let results: Vec<WorkerResult> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("an object worker panicked")))
            })
            .collect();
        (produced, results)
    });
    // A worker's error explains why the replay stopped: report it first.
    let mut objects: HashMap<usize, ObjectId> = HashMap::new();
    let mut worker_error = None;
    for r in results {
        match r {
            Ok((done, s)) => {
                objects.extend(done);
                stats.merge(&s);
            }
            Err(e) if worker_error.is_none() => worker_error = Some(e),
            Err(e) => tracing::debug!("another object worker failed too: {e:#}"),
        }
    }
    if let Some(e) = worker_error {
        return Err(e);
    }
    produced?;

    let mut writer = repo
        .create_stream(LAYER_CONTENT_TYPE)
        .context("Creating the layer stream")?;
    for piece in pieces {
        match piece {
            Piece::Inline(data) => writer.write_inline(&data),
            Piece::Object { job, size } => {
                let id = objects
                    .remove(&job)
                    .with_context(|| format!("file {job} of the layer was not stored"))?;
                writer.add_external_size(size);
                writer.write_reference(id)?;
            }
        }
    }
    let stream = writer.done().context("Writing the layer stream")?;
    Ok((stream, stats))
}

/// Walk the tar-split: inline pieces are kept, larger files are sent to the
/// workers. Stops early once a worker has failed.
fn replay(
    tarsplit: &mut TarSplitFdStream,
    tx: &SyncSender<Job>,
    failed: &AtomicBool,
    pieces: &mut Vec<Piece>,
    stats: &mut ImportStats,
) -> Result<()> {
    let mut inline = Vec::new();
    let mut jobs = 0;
    while let Some(item) = tarsplit.next().context("Reading the tar-split")? {
        match item {
            TarSplitItem::Segment(bytes) => {
                stats.bytes_inlined += bytes.len() as u64;
                inline.extend_from_slice(&bytes);
            }
            TarSplitItem::FileContent { fd, size, name, .. } => {
                let file = File::from(fd);
                check_size(&file, size, &name)?;
                if size as usize <= INLINE_CONTENT_MAX_V0 {
                    let start = inline.len();
                    inline.resize(start + size as usize, 0);
                    (&file)
                        .read_exact(&mut inline[start..])
                        .with_context(|| format!("Reading {name}"))?;
                    stats.bytes_inlined += size;
                    continue;
                }
                if failed.load(Ordering::Relaxed) {
                    return Ok(()); // the worker's error is reported
                }
                if !inline.is_empty() {
                    pieces.push(Piece::Inline(std::mem::take(&mut inline)));
                }
                pieces.push(Piece::Object { job: jobs, size });
                let job = Job {
                    n: jobs,
                    file,
                    size,
                    name,
                };
                jobs += 1;
                if tx.send(job).is_err() {
                    bail!("the object workers stopped");
                }
            }
        }
    }
    if !inline.is_empty() {
        pieces.push(Piece::Inline(inline));
    }
    Ok(())
}

/// A file's content must be as long as its tar header says, or the layer
/// read back would not be the tar it was.
fn check_size(file: &File, size: u64, name: &str) -> Result<()> {
    let actual = file
        .metadata()
        .with_context(|| format!("Examining {name}"))?
        .len();
    ensure!(
        actual == size,
        "{name} has {actual} bytes in containers-storage but its tar header declares {size}"
    );
    Ok(())
}

/// Store files from `rx` until it closes. After a failure (its own or
/// another's, see `failed`) it only drains the queue, so that the replay
/// never blocks on it.
fn store_worker(repo: &Repo, rx: &Mutex<Receiver<Job>>, failed: &AtomicBool) -> WorkerResult {
    let mut done = Vec::new();
    let mut stats = ImportStats::default();
    let mut buf = vec![0u8; COPY_BUF_SIZE];
    let mut error = None;
    loop {
        let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => break, // the replay is over
        };
        if error.is_some() || failed.load(Ordering::Relaxed) {
            continue;
        }
        match store_object(repo, &job.file, job.size, &mut buf)
            .with_context(|| format!("Storing {}", job.name))
        {
            Ok((id, method)) => {
                if method == ObjectStoreMethod::AlreadyPresent {
                    stats.objects_already_present += 1;
                } else {
                    stats.objects_copied += 1;
                    stats.bytes_copied += job.size;
                }
                done.push((job.n, id));
            }
            Err(e) => {
                failed.store(true, Ordering::Relaxed);
                error = Some(e);
            }
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok((done, stats)),
    }
}

/// How much of a file is read and written at once.
const COPY_BUF_SIZE: usize = 256 * 1024;

/// Store the `size` bytes of `src` as an object.
///
/// Without fs-verity the digest is computed while the content is copied
/// into an `O_TMPFILE`, which is then linked under it (or dropped if the
/// object exists). With fs-verity composefs enables it on the copy and the
/// kernel measures it.
fn store_object(
    repo: &Repo,
    src: &File,
    size: u64,
    buf: &mut [u8],
) -> Result<(ObjectId, ObjectStoreMethod)> {
    let tmp = File::from(repo.create_object_tmpfile()?);
    if !repo.is_insecure() {
        let copied = std::io::copy(&mut src.take(size), &mut &tmp).context("Copying")?;
        ensure!(copied == size, "read {copied} of {size} bytes");
        return repo.finalize_object_tmpfile(tmp, size);
    }
    let mut hasher = FsVerityHasher::<ObjectId>::new();
    let mut left = size;
    let mut src = src;
    let mut out = &tmp;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = src.read(&mut buf[..want]).context("Reading")?;
        ensure!(
            n > 0,
            "the file ended after {} of {size} bytes",
            size - left
        );
        hasher.write_all(&buf[..n])?;
        out.write_all(&buf[..n]).context("Writing the object")?;
        left -= n as u64;
    }
    let id = hasher.digest();
    link_object(repo, &tmp, &id, size)
}

/// Link the complete `O_TMPFILE` `tmp` into the objects directory as `id`
/// unless an object of that name and size is there already.
fn link_object(
    repo: &Repo,
    tmp: &File,
    id: &ObjectId,
    size: u64,
) -> Result<(ObjectId, ObjectStoreMethod)> {
    let objects = repo.objects_dir()?;
    let path = id.to_object_pathname();
    if let Ok(st) = statat(objects, &path, AtFlags::empty())
        && st.st_size as u64 == size
    {
        return Ok((id.clone(), ObjectStoreMethod::AlreadyPresent));
    }
    match mkdirat(objects, id.to_object_dir(), Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e).context("Creating the object directory"),
    }
    let fd_path = format!("/proc/self/fd/{}", tmp.as_fd().as_raw_fd());
    match linkat(CWD, &fd_path, objects, &path, AtFlags::SYMLINK_FOLLOW) {
        Ok(()) => Ok((id.clone(), ObjectStoreMethod::Copied)),
        Err(Errno::EXIST) => Ok((id.clone(), ObjectStoreMethod::AlreadyPresent)),
        Err(e) => Err(e).with_context(|| format!("Linking object {path}")),
    }
}
