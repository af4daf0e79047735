//! `bootc switch`: track another image and stage it for the next boot.

use std::path::Path;

use anyhow::Result;
use bootc_deploy::stage::StageRequest;
use bootc_oci::imgref::ImageRef;
use bootc_spec::ImageSignature;

/// Arguments of `bootc switch`.
#[derive(Debug, clap::Args)]
pub struct SwitchArgs {
    /// The image to track from now on.
    pub target: String,
    /// The transport of the image (registry, oci, oci-archive, containers-storage).
    #[arg(long, default_value = "registry")]
    pub transport: String,
    /// Keep the previous image's name in the store.
    #[arg(long)]
    pub retain: bool,
    /// Reboot when the image was staged.
    #[arg(long)]
    pub apply: bool,
    /// Refuse images that the signature policy accepts without checking.
    #[arg(long, conflicts_with = "no_signature_verification")]
    pub enforce_container_sigpolicy: bool,
    /// Do not verify signatures of the image (record it as unverified).
    #[arg(long)]
    pub no_signature_verification: bool,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
    /// Fetch and stage the image, but do not apply it at shutdown until
    /// `bootc upgrade --from-downloaded` unlocks it.
    #[arg(long, conflicts_with = "apply")]
    pub download_only: bool,
}

/// `bootc switch`.
pub async fn run(sysroot: &Path, args: SwitchArgs) -> Result<()> {
    let t = crate::output::target(sysroot, args.quiet)?;
    let imgref = if args.target.contains("://") || args.transport == "registry" {
        ImageRef::parse(&args.target)
            .or_else(|_| ImageRef::parse_with_transport(&args.target, &args.transport))?
    } else {
        ImageRef::parse_with_transport(&args.target, &args.transport)?
    };
    let signature = if args.enforce_container_sigpolicy {
        Some(ImageSignature::ContainerPolicy)
    } else if args.no_signature_verification {
        Some(ImageSignature::Insecure)
    } else {
        None
    };
    let req = StageRequest {
        imgref,
        signature,
        enforce: args.enforce_container_sigpolicy,
        retain: args.retain,
        download_only: args.download_only,
    };
    let outcome = bootc_deploy::apply::stage_and_finish(&t, req).await?;
    crate::output::applied(&t, &outcome, args.quiet, args.apply)
}
