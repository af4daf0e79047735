//! Reading a sysroot's deployments for `status`.

use std::path::Path;

use anyhow::Result;
use bootc_spec::Bootloader;
use bootc_sysroot::deployment::{self, Verity};

use crate::status::DeploymentView;

/// The deployments of the physical root `root`, newest first (the order in
/// which the boot entries list them: the first is the default).
pub fn load_views(root: &Path) -> Result<Vec<DeploymentView>> {
    let mut deps = deployment::list_deployments(root)?;
    deps.sort_by(|a, b| b.created.cmp(&a.created));
    Ok(deps
        .into_iter()
        .map(|d| DeploymentView {
            id: d.id().to_owned(),
            image: d.image.clone(),
            digest: d.manifest_digest.clone(),
            version: d.version.clone(),
            timestamp: d.timestamp.as_deref().and_then(|t| t.parse().ok()),
            architecture: d.architecture.clone(),
            bootloader: match d.bootloader {
                deployment::Bootloader::Systemd => Bootloader::Systemd,
                deployment::Bootloader::Grub => Bootloader::Grub,
                deployment::Bootloader::None => Bootloader::None,
            },
            insecure: d.verity == Verity::Insecure,
            pinned: false,
        })
        .collect())
}
