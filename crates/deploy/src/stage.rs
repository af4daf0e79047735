//! Staging: a pulled image becomes a deployment that boots only after
//! finalization ([`crate::finalize`]).
//!
//! Pull the image (after the free-space check); unless its digest is the
//! booted or staged one, create its deployment (/etc copied from the new
//! image, kernel arguments updated for kargs.d changes), copy its kernel to
//! the boot filesystem, and write `state/staged.json`. Nothing that decides
//! what boots changes. The steps are [`crate::steps::stage`].

use std::path::Path;

use anyhow::{Context, Result};
use bootc_boot::BlsEntry;
use bootc_oci::imgref::ImageRef;
use bootc_spec::{ImageReference, ImageSignature};
use bootc_store::{Store, StoredImage};
use bootc_sysroot::lifecycle::{self, Staged};
use bootc_sysroot::{Deployment, ImageMount, NewDeployment, deployment};
use cap_std_ext::cap_std::{ambient_authority, fs::Dir};

use crate::steps::{download_only as dl_steps, stage as steps};
use crate::target::{
    Target, base_deployment, current_order, deployment_image, install_kernel, parse_digest,
    pin_deployment_images, remove_kernels,
};

/// What to stage.
#[derive(Debug, Clone)]
pub struct StageRequest {
    /// The image.
    pub imgref: ImageRef,
    /// How its signature is checked, as recorded in the deployment.
    pub signature: Option<ImageSignature>,
    /// Refuse images the policy accepts without checking.
    pub enforce: bool,
    /// Keep the previous image's name in the store when pruning.
    pub retain: bool,
    /// Stage it locked: not applied until `--from-downloaded`.
    pub download_only: bool,
}

/// What staging did.
#[derive(Debug, Clone)]
pub enum StageOutcome {
    /// Nothing new.
    Unchanged(Unchanged),
    /// A new deployment was staged.
    Staged(Deployment),
    /// The download-only staged deployment is the update: it is unlocked.
    Unlocked(Deployment),
}

/// Why staging changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unchanged {
    /// The image is the one the base deployment runs.
    Booted,
    /// The image is staged already, as asked.
    AlreadyStaged,
    /// The staged deployment of the image was made download-only.
    Locked,
}

fn pull_options(
    t: &Target,
    enforce: bool,
    imgref: &ImageRef,
) -> Result<(
    bootc_oci::pull::PullOptions,
    std::sync::Arc<bootc_oci::progress::PullProgress>,
)> {
    let progress = t.report.pull_progress(imgref)?;
    Ok((
        bootc_oci::pull::PullOptions {
            enforce_sigpolicy: enforce,
            authfile: bootc_oci::auth::find_authfile(Path::new("/"))?,
            progress: progress.clone(),
            policy_path: bootc_oci::policy::find_policy_path()
                .unwrap_or_else(|_| bootc_oci::policy::DEFAULT_POLICY_PATH.into()),
            registries_conf: std::env::var_os("CONTAINERS_REGISTRIES_CONF").map(Into::into),
        },
        progress,
    ))
}

/// Stage `req`.
pub async fn stage(t: &Target, store: &Store, req: &StageRequest) -> Result<StageOutcome> {
    let order = current_order(t)?;
    let base = base_deployment(t, &order)?;
    let all = deployment::list_deployments(&t.sysroot)?;
    pin_deployment_images(store, &all)?;
    crate::space::ensure_space(t, store, &req.imgref, &base)?;
    let (opts, progress) = pull_options(t, req.enforce, &req.imgref)?;
    let outcome = bootc_oci::pull::pull(store, &req.imgref, &opts).await;
    progress.finish();
    let image = outcome?.image;
    t.step(steps::IMAGE_PULLED);
    let staged = lifecycle::read_staged(&t.sysroot)?;
    let staged_dep = match &staged {
        Some(s) => deployment::load_deployment(&t.sysroot, &s.id)?,
        None => None,
    };
    let new_ref = ImageReference {
        image: req.imgref.name.clone(),
        transport: req.imgref.transport.as_str().to_owned(),
        signature: req.signature.clone(),
    };
    if image.manifest_digest == base.manifest_digest && new_ref == base.image {
        t.report.info(&format!("No changes in {}", req.imgref));
        return Ok(StageOutcome::Unchanged(Unchanged::Booted));
    }
    if let (Some(s), Some(sd)) = (&staged, &staged_dep)
        && sd.manifest_digest == image.manifest_digest
        && sd.image == new_ref
    {
        if s.download_only == req.download_only {
            t.report
                .info(&format!("No changes in {} (already staged)", req.imgref));
            return Ok(StageOutcome::Unchanged(Unchanged::AlreadyStaged));
        }
        lifecycle::write_staged(
            &t.sysroot,
            &Staged {
                download_only: req.download_only,
                ..s.clone()
            },
        )?;
        t.step(if req.download_only {
            dl_steps::LOCKED
        } else {
            dl_steps::UNLOCKED
        });
        if req.download_only {
            t.report.info(&format!(
                    "The staged deployment of {} is now download-only: it is not applied until `bootc upgrade --from-downloaded`",
                req.imgref
            ));
            return Ok(StageOutcome::Unchanged(Unchanged::Locked));
        }
        return Ok(StageOutcome::Unlocked(sd.clone()));
    }
    let id = image
        .composefs_image
        .clone()
        .with_context(|| format!("Image {} has no composefs image", image.image))?;
    anyhow::ensure!(
        id != base.id(),
        "Image {} is the deployment {} already in use; nothing to stage",
        req.imgref,
        base.id()
    );
    // A different staged deployment is replaced.
    if let (Some(s), Some(sd)) = (&staged, &staged_dep)
        && s.id != id
    {
        discard_staged(t, store, sd, &order)?;
        t.step(steps::PREVIOUS_DISCARDED);
    }
    let new_mount = ImageMount::new(store, &image)?;
    let base_mount = ImageMount::new(store, &deployment_image(store, base.id())?)?;
    let old_kd = bootc_install::config::load_kargs(&base_mount)?;
    let new_kd = bootc_install::config::load_kargs(&new_mount)?;
    drop(base_mount);
    // kargs.d changes apply to the arguments no source owns; the sources'
    // (`bootc loader-entries set-options-for-source`) carry over as they are.
    let kargs = lifecycle::carry_kargs(&base.kargs, &base.kargs_sources, &old_kd, &new_kd, &id);
    let new_kernel = new_mount.find_kernel()?;
    let new = NewDeployment {
        imgref: new_ref,
        stateroot: base.stateroot.clone(),
        kargs,
        kargs_sources: base.kargs_sources.clone(),
        bootloader: base.bootloader,
        boot_digest: deployment::boot_digest(&new_mount, &new_kernel)?,
        kernel: new_kernel,
    };
    let dep = if deployment::deployment_dir(&t.sysroot, &id).exists() {
        if order.iter().any(|(o, _)| o == &id) {
            // An older deployment of the same image (e.g. the rollback) that
            // still has a boot entry: keep its directory, give it the new
            // record; finalization merges /etc into it afresh.
            reuse_deployment(store, &image, &new, &id)?
        } else {
            lifecycle::remove_deployment_dir(&t.sysroot, &id)?;
            bootc_sysroot::create_deployment(store, &new_mount, &image, &new)?
        }
    } else {
        bootc_sysroot::create_deployment(store, &new_mount, &image, &new)?
    };
    t.step(steps::DEPLOYMENT_DIR_RENAMED);
    install_kernel(t, &dep, &new_mount)?;
    t.step(steps::KERNEL_INSTALLED);
    drop(new_mount);
    lifecycle::write_staged(
        &t.sysroot,
        &Staged {
            id: id.clone(),
            download_only: req.download_only,
            staged_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            retain: req.retain,
        },
    )?;
    t.step(steps::STAGED_MARKED);
    Ok(StageOutcome::Staged(dep))
}

/// Rewrite the record of the existing deployment `id` for `new`.
fn reuse_deployment(
    store: &Store,
    image: &StoredImage,
    new: &NewDeployment,
    id: &str,
) -> Result<Deployment> {
    use cap_std_ext::dirext::CapStdExtDirExt;
    let old = deployment::load_deployment(store.sysroot(), id)?
        .with_context(|| format!("Deployment {id} vanished"))?;
    let dep = Deployment {
        image: new.imgref.clone(),
        kargs: new.kargs.clone(),
        boot_digest: Some(new.boot_digest.clone()),
        kargs_sources: new.kargs_sources.clone(),
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ..old
    };
    store.tag(
        &parse_digest(&image.manifest_digest)?,
        &lifecycle::deployment_tag(id),
    )?;
    let dir = deployment::deployment_dir(store.sysroot(), id);
    let d = Dir::open_ambient_dir(&dir, ambient_authority())
        .with_context(|| format!("Opening {}", dir.display()))?;
    d.atomic_write(deployment::DEPLOYMENT_JSON, dep.to_json())
        .with_context(|| format!("Writing {}/{}", dir.display(), deployment::DEPLOYMENT_JSON))?;
    Ok(dep)
}

/// Remove a staged deployment that is not (also) in the boot entries.
pub(crate) fn discard_staged(
    t: &Target,
    store: &Store,
    dep: &Deployment,
    order: &[(String, BlsEntry)],
) -> Result<()> {
    lifecycle::remove_staged(&t.sysroot)?;
    if order.iter().any(|(id, _)| id == dep.id()) || t.booted.as_deref() == Some(dep.id()) {
        return Ok(());
    }
    let all = deployment::list_deployments(&t.sysroot)?;
    let others: Vec<&Deployment> = all.iter().filter(|d| d.id() != dep.id()).collect();
    remove_kernels(t, &[dep], &others)?;
    lifecycle::remove_deployment_dir(&t.sysroot, dep.id())?;
    store.untag(&lifecycle::deployment_tag(dep.id()))?;
    Ok(())
}
