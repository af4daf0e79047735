//! The pull flow: bring an image from any transport into a [`Store`].
//!
//! 1. Evaluate `policy.json` for the reference ([`crate::policy`]). With
//!    `--enforce-container-sigpolicy`, a policy that accepts anything is refused
//!    before any network traffic. A `reject` requirement fails at once with the
//!    policy's reason.
//! 2. Choose a path ([`PullPath`]):
//!    - the policy accepts anything: the skopeo proxy streams layers straight
//!      into the store, or (for `oci`/`oci-archive`) the layout is read
//!      directly, or (for `containers-storage`) the local storage is read
//!      natively;
//!    - the policy requires verification (signatures): Debian's skopeo 1.9
//!      proxy does not enforce policy.json, so the image is first copied with
//!      `skopeo copy` (which does) into an OCI layout in the sysroot's scratch
//!      space, and that layout is imported.
//! 3. Layers whose diff_id is already in the store are not fetched again;
//!    new files are stored once (content-addressed); the EROFS image is built.
//! 4. The tag for the reference is written last ([`Store::tag`], one symlink
//!    rename): until then nothing of the pull is visible, and a killed pull
//!    leaves only unreferenced objects that [`Store::gc`] reclaims.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use bootc_store::{StoredImage, Store};
use composefs_oci::{LocalFetchOpt, SharedReporter};
use containers_image_proxy::ImageProxyConfig;

use crate::imgref::{ImageRef, Transport};
use crate::policy::{self, PolicyDecision};

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

    let decision = decide(imgref, opts)?;
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
    let source = if path == PullPath::PolicyCopy {
        let dir = store.scratch_dir()?;
        let layout = dir.path().join("layout");
        skopeo_copy(imgref, &layout, opts).await?;
        _scratch = Some(dir);
        format!("oci:{}:image", layout.display())
    } else {
        imgref.to_skopeo_string()
    };

    let mut proxy_config = ImageProxyConfig::default();
    proxy_config.authfile = opts.authfile.clone();
    if let Some(conf) = &opts.registries_conf {
        // Global options go before the subcommand the proxy library appends.
        let mut cmd = std::process::Command::new("skopeo");
        cmd.arg("--registries-conf").arg(conf);
        proxy_config.skopeo_cmd = Some(cmd);
    }
    let copts = composefs_oci::PullOptions {
        img_proxy_config: Some(proxy_config),
        local_fetch: if path == PullPath::ContainersStorage {
            LocalFetchOpt::IfPossible
        } else {
            LocalFetchOpt::Disabled
        },
        progress: Some(opts.progress.clone()),
        ..Default::default()
    };
    let result = composefs_oci::pull(store.repo(), &source, None, copts)
        .await
        .with_context(|| format!("Pulling {name}"))?;
    store.repo().sync_async().await.context("Syncing store")?;
    store.tag(&result.manifest_digest, &name)?;
    let image = store
        .get(&name)?
        .with_context(|| format!("Image {name} vanished after tagging"))?;
    let s = &result.stats;
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

/// Apply policy.json to `imgref`: an error for `reject` or for a refused
/// `--enforce-container-sigpolicy`, else whether verification is required.
fn decide(imgref: &ImageRef, opts: &PullOptions) -> Result<PolicyDecision> {
    let path = &opts.policy_path;
    let policy = match policy::load_policy(path) {
        Ok(p) => p,
        Err(e) if !opts.enforce_sigpolicy && !path.try_exists().unwrap_or(true) => {
            tracing::debug!("no policy at {}: {e:#}; accepting anything", path.display());
            return Ok(PolicyDecision::AcceptAnything);
        }
        Err(e) => return Err(e),
    };
    if opts.enforce_sigpolicy {
        policy::check_enforce(&policy, imgref)
            .with_context(|| format!("Checking {} for {imgref}", path.display()))?;
    }
    match policy.decide(imgref) {
        PolicyDecision::Reject => bail!(
            "Image {imgref} is rejected by signature policy {}: the requirements for its scope are 'reject'",
            path.display()
        ),
        d => Ok(d),
    }
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
        bail!(
            "Fetching {imgref} with signature policy {} failed: {}",
            opts.policy_path.display(),
            err.trim()
        );
    }
    Ok(())
}
