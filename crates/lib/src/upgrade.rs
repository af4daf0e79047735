//! `bootc upgrade`: fetch the tracked image (or another tag of it) and
//! stage it for the next boot if it changed; `--check`, `--download-only`
//! and `--from-downloaded`.

use std::path::Path;

use anyhow::Result;
use bootc_deploy::space::UpdateInfo;
use bootc_deploy::stage::StageRequest;
use bootc_deploy::target::{base_deployment, current_order, imgref_of, with_tag};
use bootc_spec::ImageSignature;

/// Arguments of `bootc upgrade`.
#[derive(Debug, clap::Args)]
pub struct UpgradeArgs {
    /// Only check for an update: fetch the manifest and config and print
    /// the version, digest and timestamp that would be staged, and the
    /// layers and bytes still to download.
    #[arg(long, conflicts_with_all = ["apply", "download_only", "from_downloaded"])]
    pub check: bool,
    /// Reboot when an update was staged.
    #[arg(long)]
    pub apply: bool,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
    /// Move to another tag of the tracked image.
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// Fetch and stage the update, but do not apply it at shutdown until
    /// `bootc upgrade --from-downloaded` (or a plain `bootc upgrade`) unlocks it.
    #[arg(long, conflicts_with_all = ["apply", "from_downloaded"])]
    pub download_only: bool,
    /// Apply the download-only staged deployment without fetching anything.
    #[arg(long, conflicts_with = "tag")]
    pub from_downloaded: bool,
}

/// `bootc upgrade`.
pub async fn run(sysroot: &Path, args: UpgradeArgs) -> Result<()> {
    let t = crate::output::target(sysroot, args.quiet)?;
    let order = current_order(&t)?;
    let base = base_deployment(&t, &order)?;
    let mut imgref = imgref_of(&base.image)?;
    if let Some(tag) = &args.tag {
        imgref = with_tag(&imgref, tag)?;
    }
    if args.from_downloaded {
        let outcome = bootc_deploy::apply::from_downloaded(&t)?;
        return crate::output::applied(&t, &outcome, args.quiet, args.apply);
    }
    if args.check {
        let info = bootc_deploy::space::check_update(&t, &base, &imgref)?;
        if !args.quiet {
            println!("{}", info.to_string().trim_end());
        }
        return Ok(());
    }
    let req = StageRequest {
        imgref,
        signature: base.image.signature.clone(),
        enforce: base.image.signature == Some(ImageSignature::ContainerPolicy),
        retain: false,
        download_only: args.download_only,
    };
    let outcome = bootc_deploy::apply::stage_and_finish(&t, req).await?;
    crate::output::applied(&t, &outcome, args.quiet, args.apply)
}

/// `bootc upgrade --check` for the host at `sysroot` (optionally another
/// tag of its image), without printing.
pub fn check_for(sysroot: &Path, tag: Option<&str>) -> Result<UpdateInfo> {
    let t = crate::output::target(sysroot, true)?;
    bootc_deploy::space::check_for(&t, tag)
}
