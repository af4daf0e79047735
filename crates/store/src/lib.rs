//! Our face over the composefs repository that holds every OS image of a sysroot.
//!
//! - [`Store`]: open or create the repository in a sysroot, list, tag, open and
//!   mount images, garbage-collect and fsck.
//! - [`lock`]: the sysroot-wide writer lock that serialises bootc processes.
//! - [`tagname`]: how an image reference becomes a repository tag and back.
//! - [`verity`]: probing whether the filesystem supports fs-verity.
//! - [`seal`]: turning an insecure store into a verified one in place.
//!
//! **Architecture invariant**: this crate knows nothing about deployments,
//! bootloaders or fetching. Callers hand it names and digests; it hands back
//! images. The composefs crates are used only here and in `bootc-oci`, so they
//! can be replaced behind this API.
//!
//! # On-disk layout
//!
//! ```text
//! <sysroot>/composefs/          the composefs repository (meta.json, objects/, images/, streams/)
//! <sysroot>/composefs/streams/refs/oci/<tag>   one GC root per pulled image (see [`tagname`])
//! <sysroot>/state/lock          the writer lock (holds the holder's pid, for messages)
//! <sysroot>/state/tmp/          scratch space for pulls that go through an OCI layout
//! ```

pub mod lock;
pub mod seal;
pub mod tagname;
pub mod verity;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use composefs::fsverity::{Algorithm, Sha256HashValue};
use composefs::repository::{Repository, RepositoryConfig};
use composefs_oci::oci_image::OciImage;
use fn_error_context::context;

pub use composefs_oci::OciDigest;
pub use lock::{LockWait, WriteLock};
pub use seal::{SealError, SealReport};

/// The object identifier of our repositories: fs-verity SHA-256 digests.
pub type ObjectId = Sha256HashValue;

/// The composefs repository type used by every bootc store.
pub type Repo = Repository<ObjectId>;

/// Where the repository lives, relative to the sysroot.
pub const REPO_DIR: &str = "composefs";

/// Where bootc keeps its own state (lock, scratch), relative to the sysroot.
pub const STATE_DIR: &str = "state";

/// Names under which callers keep an image alive without it being listed
/// (e.g. a deployment's own image): GC roots that `list` leaves out.
pub const PIN_PREFIX: &str = "pin:";

/// How composefs-oci names a layer's stream: this prefix and the diff_id.
const LAYER_STREAM_PREFIX: &str = "oci-layer-";

/// Whether objects in the store are protected by fs-verity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerityMode {
    /// Every object has fs-verity enabled and is checked by the kernel on read.
    Verified,
    /// The filesystem lacks fs-verity: objects are content-addressed but the
    /// kernel does not verify them on read.
    Insecure,
}

impl std::fmt::Display for VerityMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VerityMode::Verified => "verified",
            VerityMode::Insecure => "insecure",
        })
    }
}

/// An image held in the store under a tag.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredImage {
    /// The image reference the image was pulled from (decoded from its tag).
    pub image: String,
    /// The manifest digest.
    pub manifest_digest: String,
    /// The config digest.
    pub config_digest: String,
    /// The image's architecture from its config.
    pub architecture: String,
    /// The image's creation time from its config.
    pub created: Option<String>,
    /// `org.opencontainers.image.version`, when labelled.
    pub version: Option<String>,
    /// Number of layers.
    pub layers: usize,
    /// The fs-verity id of the composefs (EROFS) image built from it, if any.
    pub composefs_image: Option<String>,
}

/// The image store of one sysroot.
#[derive(Debug)]
pub struct Store {
    sysroot: PathBuf,
    repo: Arc<Repo>,
}

/// The outcome of [`Store::fsck`].
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FsckReport {
    /// Whether no problem was found.
    pub ok: bool,
    /// The composefs repository check.
    pub repository: composefs::repository::FsckResult,
    /// Tags whose image could not be opened, with the reason.
    pub broken_tags: Vec<(String, String)>,
}

/// What a garbage collection removed.
#[derive(Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GcReport {
    /// Objects deleted.
    pub objects_removed: u64,
    /// Bytes of object data deleted.
    pub bytes_removed: u64,
}

impl Store {
    /// The repository path inside `sysroot`.
    pub fn repo_path(sysroot: &Path) -> PathBuf {
        sysroot.join(REPO_DIR)
    }

    /// Open the store of `sysroot`; `Ok(None)` when it has none yet.
    #[context("Opening image store in {}", sysroot.display())]
    pub fn open(sysroot: &Path) -> Result<Option<Self>> {
        let path = Self::repo_path(sysroot);
        if !path.join("meta.json").try_exists()? {
            return Ok(None);
        }
        let repo = Repo::open_path(rustix::fs::CWD, &path)
            .with_context(|| format!("Opening composefs repository {}", path.display()))?;
        Ok(Some(Self {
            sysroot: sysroot.to_owned(),
            repo: Arc::new(repo),
        }))
    }

    /// Open the store of `sysroot`, creating it (and `sysroot`) when missing.
    ///
    /// A new store is created with fs-verity required when the filesystem
    /// supports it, and in insecure mode otherwise; the mode never changes
    /// afterwards.
    #[context("Creating image store in {}", sysroot.display())]
    pub fn ensure(sysroot: &Path) -> Result<Self> {
        if let Some(s) = Self::open(sysroot)? {
            return Ok(s);
        }
        std::fs::create_dir_all(sysroot)
            .with_context(|| format!("Creating {}", sysroot.display()))?;
        let mut config = RepositoryConfig::new(Algorithm::for_hash::<ObjectId>());
        match verity::probe(sysroot)? {
            VerityMode::Verified => {}
            VerityMode::Insecure => config = config.set_insecure(),
        }
        let path = Self::repo_path(sysroot);
        let (repo, _created) = Repo::init_path(rustix::fs::CWD, &path, config)?;
        tracing::info!("initialised store {} ({})", path.display(), mode_of(&repo));
        Ok(Self {
            sysroot: sysroot.to_owned(),
            repo: Arc::new(repo),
        })
    }

    /// The sysroot this store belongs to.
    pub fn sysroot(&self) -> &Path {
        &self.sysroot
    }

    /// The underlying composefs repository, for `bootc-oci`'s fetching.
    pub fn repo(&self) -> &Arc<Repo> {
        &self.repo
    }

    /// Whether the store's objects are fs-verity protected.
    pub fn verity_mode(&self) -> VerityMode {
        mode_of(&self.repo)
    }

    /// Take the sysroot-wide writer lock.
    pub fn lock(&self, wait: LockWait) -> Result<WriteLock> {
        lock::acquire(&self.sysroot.join(STATE_DIR), wait)
    }

    /// A fresh scratch directory inside the sysroot's state dir (same
    /// filesystem as the store), removed when dropped.
    #[context("Creating scratch directory in {}", self.sysroot.display())]
    pub fn scratch_dir(&self) -> Result<tempfile::TempDir> {
        let tmp = self.sysroot.join(STATE_DIR).join("tmp");
        std::fs::create_dir_all(&tmp).with_context(|| format!("Creating {}", tmp.display()))?;
        Ok(tempfile::Builder::new().prefix("pull-").tempdir_in(&tmp)?)
    }

    /// Record `image` (an image reference string) as a name for the manifest
    /// `digest`, replacing what the name pointed at before. This is the step
    /// that makes a pulled image visible; it is a single symlink rename.
    #[context("Tagging {digest} as {image}")]
    pub fn tag(&self, digest: &OciDigest, image: &str) -> Result<()> {
        composefs_oci::tag_image(&self.repo, digest, &tagname::encode(image))
    }

    /// Remove the name `image`. The content stays until the next [`Store::gc`].
    #[context("Removing tag {image}")]
    pub fn untag(&self, image: &str) -> Result<()> {
        composefs_oci::untag_image(&self.repo, &tagname::encode(image))
    }

    /// Every tagged image, sorted by image reference; pins ([`PIN_PREFIX`]) are not listed.
    #[context("Listing images")]
    pub fn list(&self) -> Result<Vec<StoredImage>> {
        let mut out = Vec::new();
        for (tag, digest) in composefs_oci::list_refs(&self.repo)? {
            let Some(image) = tagname::decode(&tag) else {
                tracing::debug!("skipping foreign tag {tag}");
                continue;
            };
            if image.starts_with(PIN_PREFIX) {
                continue;
            }
            let img = OciImage::open(&self.repo, &digest, None)
                .with_context(|| format!("Opening image {image} ({digest})"))?;
            out.push(describe(&image, &img, self.repo.erofs_version()));
        }
        out.sort_by(|a, b| a.image.cmp(&b.image));
        Ok(out)
    }

    /// The image stored under the name `image`.
    #[context("Looking up image {image}")]
    pub fn get(&self, image: &str) -> Result<Option<StoredImage>> {
        let tag = tagname::encode(image);
        let digest = match composefs_oci::resolve_ref(&self.repo, &tag) {
            Ok((digest, _)) => digest,
            Err(e) if e.downcast_ref::<composefs_oci::OciRefNotFound>().is_some() => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let img = OciImage::open(&self.repo, &digest, None)?;
        Ok(Some(describe(image, &img, self.repo.erofs_version())))
    }

    /// The diff_ids of every layer held in the store.
    #[context("Listing stored layers")]
    pub fn present_layers(&self) -> Result<std::collections::HashSet<String>> {
        let streams = Self::repo_path(&self.sysroot).join("streams");
        let mut out = std::collections::HashSet::new();
        let rd = match std::fs::read_dir(&streams) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("Reading {}", streams.display())),
        };
        for entry in rd {
            let name = entry?.file_name();
            if let Some(diff_id) = name
                .to_str()
                .and_then(|n| n.strip_prefix(LAYER_STREAM_PREFIX))
            {
                out.insert(diff_id.to_owned());
            }
        }
        Ok(out)
    }

    /// Open a stored image by manifest digest.
    #[context("Opening image {digest}")]
    pub fn open_image(&self, digest: &OciDigest) -> Result<OciImage<ObjectId>> {
        OciImage::open(&self.repo, digest, None)
    }

    /// Mount the composefs image of the manifest `digest` read-only at `target`.
    ///
    /// A secure (or sealed, see [`seal`]) store is mounted with overlayfs
    /// `verity=require`. An insecure store is mounted without fs-verity
    /// checks even when the EROFS image has verity: a verity-capable kernel
    /// enables it on what it writes, so an insecure store can mix objects
    /// with and without verity, and requiring it would fail reads of the
    /// older objects with EIO.
    #[context("Mounting image {digest} at {}", target.display())]
    pub fn mount_image(&self, digest: &OciDigest, target: &Path) -> Result<()> {
        let mnt = self.fsmount_image(digest)?;
        composefs::mount::mount_at(&mnt, rustix::fs::CWD, target)
            .with_context(|| format!("Attaching mount at {}", target.display()))?;
        Ok(())
    }

    /// The composefs image of the manifest `digest` as a detached mount
    /// (see [`Store::mount_image`] for fs-verity): attached nowhere, held
    /// only by the returned file descriptor, so it goes away with the last
    /// descriptor, also when the process is killed. Its files are reached
    /// fd-relative or through `/proc/<pid>/fd/<fd>`.
    #[context("Mounting image {digest}")]
    pub fn fsmount_image(&self, digest: &OciDigest) -> Result<std::os::fd::OwnedFd> {
        use composefs::fsverity::FsVerityHashValue;
        use composefs::mount::{MountOptions, VerityRequirement, composefs_fsmount};
        use std::os::fd::AsFd;
        let img = self.open_image(digest)?;
        let id = img
            .image_ref(self.repo.erofs_version())
            .with_context(|| format!("Image {digest} has no composefs image"))?
            .to_hex();
        let (image_fd, has_verity) = self.repo.open_image(&id)?;
        let verity = if has_verity && !self.repo.is_insecure() {
            VerityRequirement::Required
        } else {
            VerityRequirement::Disabled
        };
        let objects = self.repo.objects_dir().context("Opening objects")?;
        composefs_fsmount(
            image_fd,
            &id,
            &[objects.as_fd()],
            verity,
            &MountOptions::default(),
        )
        .map_err(Into::into)
    }

    /// Delete every object not reachable from a tag or from `extra_roots`
    /// (names of images or streams). Takes the repository's exclusive lock.
    #[context("Garbage collecting {}", self.sysroot.display())]
    pub fn gc(&self, extra_roots: &[&str]) -> Result<GcReport> {
        let r = self.repo.gc(extra_roots)?;
        Ok(GcReport {
            objects_removed: r.objects_removed,
            bytes_removed: r.objects_bytes,
        })
    }

    /// Check every object, stream, image and tag.
    #[context("Checking store {}", self.sysroot.display())]
    pub async fn fsck(&self) -> Result<FsckReport> {
        let repository = self.repo.fsck().await?;
        let mut broken_tags = Vec::new();
        for (tag, digest) in composefs_oci::list_refs(&self.repo)? {
            if let Err(e) = OciImage::open(&self.repo, &digest, None) {
                broken_tags.push((tag, format!("{e:#}")));
            }
        }
        Ok(FsckReport {
            ok: repository.is_ok() && broken_tags.is_empty(),
            repository,
            broken_tags,
        })
    }
}

fn mode_of(repo: &Repo) -> VerityMode {
    if repo.is_insecure() {
        VerityMode::Insecure
    } else {
        VerityMode::Verified
    }
}

fn describe(
    image: &str,
    img: &OciImage<ObjectId>,
    version: composefs::erofs::format::FormatVersion,
) -> StoredImage {
    StoredImage {
        image: image.to_owned(),
        manifest_digest: img.manifest_digest().to_string(),
        config_digest: img.config_digest().to_string(),
        architecture: img.architecture(),
        created: img.created().map(str::to_owned),
        version: img
            .label("org.opencontainers.image.version")
            .map(str::to_owned),
        layers: img.layer_descriptors().len(),
        composefs_image: img.image_ref(version).map(|id| {
            use composefs::fsverity::FsVerityHashValue;
            id.to_hex()
        }),
    }
}
