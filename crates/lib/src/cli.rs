//! Command-line types and dispatch. The only module that knows about clap.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

/// Transactional, in-place operating system updates using OCI container images.
#[derive(Debug, Parser)]
#[command(name = "bootc", version, about)]
pub struct Cli {
    /// Act on the root filesystem mounted at PATH instead of the running
    /// system (for example a mounted disk image). The image store lives in
    /// PATH/composefs and is created by the first pull.
    #[arg(long, global = true, value_name = "PATH", default_value = "/")]
    pub sysroot: PathBuf,

    /// The verb.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Operations on the images in the store.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Install the image to a disk or filesystem so that it boots.
    #[command(subcommand)]
    Install(crate::install::InstallCommand),
    /// Show the state of the host: booted, staged and rollback deployments.
    Status(crate::status::StatusArgs),
    /// Fetch the tracked image and stage it for the next boot if it changed.
    Upgrade(crate::upgrade::UpgradeArgs),
    /// Track another image and stage it for the next boot.
    Switch(crate::upgrade::SwitchArgs),
    /// Boot the rollback deployment next; discards a staged deployment.
    Rollback(crate::upgrade::RollbackArgs),
    /// Edit the host spec as YAML in $EDITOR (or from a file) and apply it:
    /// a new spec.image switches, a flipped spec.bootOrder rolls back.
    Edit(crate::edit::EditArgs),
    /// Pin a deployment so pruning never removes it (or unpin it).
    Pin(crate::deployments::PinArgs),
    /// Operations on the boot loader entries: kernel arguments owned by a
    /// named source.
    #[command(subcommand)]
    LoaderEntries(crate::loader_entries::LoaderEntriesCommand),
    /// Mount a transient writable overlay on /usr, discarded at reboot.
    #[command(alias = "usroverlay")]
    UsrOverlay(crate::usr_overlay::UsrOverlayArgs),
    /// Operations for image builds: `bootc container lint`.
    #[command(subcommand)]
    Container(crate::container::ContainerCommand),
    /// Print a shell completion script (bash, zsh or fish).
    Completion(crate::completion::CompletionArgs),
    /// Internal operations, not a stable interface.
    #[command(subcommand, hide = true)]
    Internals(InternalsCommand),
}

/// `bootc internals ...`
#[derive(Debug, Subcommand)]
pub enum InternalsCommand {
    /// Finalize the staged deployment: merge /etc and write the boot entries
    /// (run by bootc-finalize-staged.service at shutdown).
    FinalizeStaged,
    /// List the files added (A), removed (D) and changed (M) in /usr and in
    /// the image's /etc defaults between the booted and the staged deployment.
    DiffStaged,
    /// Bless the booted deployment when boot-complete.target was reached,
    /// or record the failure and reboot out of a failed trial boot (run by
    /// bootc-boot-check.service).
    BootCheck,
    /// Enable fs-verity on every object of an insecure store, then require
    /// it: deployments mount with fs-verity enforced from the next boot
    /// (needs a kernel and filesystem with fs-verity).
    SealStore,
}

/// `bootc image ...`
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Fetch an image into the store without deploying it (pre-seeding).
    Pull(PullArgs),
    /// List the images in the store.
    List(ListArgs),
    /// Remove an image's name from the store; its content is freed by `gc`.
    #[command(alias = "rm")]
    Remove {
        /// The image reference, as shown by `bootc image list`.
        image: String,
    },
    /// Mount an image's composefs filesystem read-only at a directory (for inspection).
    Mount {
        /// The image reference, as shown by `bootc image list`.
        image: String,
        /// An existing directory.
        target: PathBuf,
    },
    /// Delete store content no longer referenced by any image name.
    Gc,
    /// Check the integrity of every object, stream and image in the store.
    Fsck(FsckArgs),
}

/// Output formats of listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    /// A table for people.
    Table,
    /// JSON for tools.
    Json,
}

/// Arguments of `bootc image pull`.
#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// The image reference: `[TRANSPORT:]NAME`, where TRANSPORT is one of
    /// registry (default; also `docker://`), oci, oci-archive, containers-storage.
    pub imgref: String,

    /// The transport of IMGREF when it carries no prefix.
    #[arg(long, value_name = "TRANSPORT")]
    pub transport: Option<String>,

    /// Refuse to pull when the signature policy (policy.json) accepts
    /// anything for this image.
    #[arg(long)]
    pub enforce_container_sigpolicy: bool,

    /// Write progress as JSON lines (progress-v0) to this file descriptor.
    #[arg(long, value_name = "FD")]
    pub progress_fd: Option<u32>,

    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,

    /// How to print the result.
    #[arg(long, value_enum, default_value = "table")]
    pub format: ListFormat,
}

/// Arguments of `bootc image list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: ListFormat,
}

/// Arguments of `bootc image fsck`.
#[derive(Debug, clap::Args)]
pub struct FsckArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: ListFormat,
}

/// Parse `args` and run the chosen verb.
pub fn run_from_args(args: impl IntoIterator<Item = OsString>) -> Result<()> {
    let cli = Cli::parse_from(args);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Image(cmd) => crate::image::run(&cli.sysroot, cmd).await,
        Command::Install(cmd) => crate::install::run(&cli.sysroot, cmd).await,
        Command::Status(args) => crate::status::run(&cli.sysroot, args),
        Command::Upgrade(args) => crate::upgrade::upgrade(&cli.sysroot, args).await,
        Command::Switch(args) => crate::upgrade::switch(&cli.sysroot, args).await,
        Command::Rollback(args) => crate::upgrade::rollback(&cli.sysroot, args),
        Command::Edit(args) => crate::edit::run(&cli.sysroot, args).await,
        Command::Pin(args) => crate::deployments::pin(&cli.sysroot, args),
        Command::LoaderEntries(cmd) => crate::loader_entries::run(&cli.sysroot, cmd),
        Command::UsrOverlay(args) => crate::usr_overlay::run(&cli.sysroot, &args),
        Command::Container(cmd) => crate::container::run(cmd),
        Command::Completion(args) => crate::completion::run(&args),
        Command::Internals(InternalsCommand::FinalizeStaged) => {
            crate::upgrade::finalize_staged(&cli.sysroot)
        }
        Command::Internals(InternalsCommand::DiffStaged) => {
            crate::upgrade::print_diff_staged(&cli.sysroot)
        }
        Command::Internals(InternalsCommand::BootCheck) => {
            crate::bootcount::boot_check(&cli.sysroot)
        }
        Command::Internals(InternalsCommand::SealStore) => crate::seal::seal_store(&cli.sysroot),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_lifecycle_verbs() {
        let cli = Cli::try_parse_from([
            "bootc",
            "switch",
            "--transport",
            "oci",
            "--retain",
            "--apply",
            "--no-signature-verification",
            "/mnt/v2:latest",
        ])
        .unwrap();
        let Command::Switch(s) = cli.command else {
            panic!("not a switch")
        };
        assert_eq!(
            (s.transport.as_str(), s.retain, s.apply),
            ("oci", true, true)
        );
        assert!(s.no_signature_verification && !s.enforce_container_sigpolicy);
        assert!(
            Cli::try_parse_from([
                "bootc",
                "switch",
                "--enforce-container-sigpolicy",
                "--no-signature-verification",
                "x"
            ])
            .is_err()
        );
        let cli =
            Cli::try_parse_from(["bootc", "upgrade", "--check", "--quiet", "--tag", "v2"]).unwrap();
        let Command::Upgrade(u) = cli.command else {
            panic!("not an upgrade")
        };
        assert!(u.check && u.quiet && !u.apply);
        assert_eq!(u.tag.as_deref(), Some("v2"));
        assert!(Cli::try_parse_from(["bootc", "upgrade", "--check", "--apply"]).is_err());
        let cli = Cli::try_parse_from(["bootc", "upgrade", "--download-only"]).unwrap();
        let Command::Upgrade(u) = cli.command else {
            panic!("not an upgrade")
        };
        assert!(u.download_only && !u.from_downloaded);
        let cli =
            Cli::try_parse_from(["bootc", "upgrade", "--from-downloaded", "--apply"]).unwrap();
        let Command::Upgrade(u) = cli.command else {
            panic!("not an upgrade")
        };
        assert!(u.from_downloaded && u.apply);
        for bad in [
            &["bootc", "upgrade", "--download-only", "--apply"][..],
            &["bootc", "upgrade", "--download-only", "--from-downloaded"],
            &["bootc", "upgrade", "--check", "--download-only"],
            &["bootc", "upgrade", "--from-downloaded", "--tag", "v2"],
            &["bootc", "switch", "--download-only", "--apply", "x"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        let cli = Cli::try_parse_from(["bootc", "switch", "--download-only", "x"]).unwrap();
        assert!(matches!(cli.command, Command::Switch(s) if s.download_only));
        let cli = Cli::try_parse_from(["bootc", "pin", "--unpin", "rollback"]).unwrap();
        assert!(matches!(cli.command, Command::Pin(p) if p.unpin && p.deployment == "rollback"));
        let cli = Cli::try_parse_from(["bootc", "edit", "-f", "/tmp/h.yaml", "--quiet"]).unwrap();
        assert!(
            matches!(cli.command, Command::Edit(e) if e.quiet && e.filename.as_deref() == Some(std::path::Path::new("/tmp/h.yaml")))
        );
        let cli =
            Cli::try_parse_from(["bootc", "rollback", "--apply", "--sysroot", "/mnt"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Rollback(crate::upgrade::RollbackArgs { apply: true })
        ));
        let cli = Cli::try_parse_from(["bootc", "internals", "finalize-staged"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Internals(InternalsCommand::FinalizeStaged)
        ));
        let cli = Cli::try_parse_from(["bootc", "internals", "seal-store"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Internals(InternalsCommand::SealStore)
        ));
    }

    #[test]
    fn parses_loader_entries_and_usr_overlay() {
        use crate::loader_entries::LoaderEntriesCommand;
        let cli = Cli::try_parse_from([
            "bootc",
            "loader-entries",
            "set-options-for-source",
            "--source",
            "tuned",
            "--options",
            "isolcpus=1-3 nohz=full",
        ])
        .unwrap();
        let Command::LoaderEntries(LoaderEntriesCommand::SetOptionsForSource(a)) = cli.command
        else {
            panic!("not set-options-for-source")
        };
        assert_eq!(
            (a.source.as_str(), a.options.as_deref()),
            ("tuned", Some("isolcpus=1-3 nohz=full"))
        );
        let cli = Cli::try_parse_from([
            "bootc",
            "loader-entries",
            "set-options-for-source",
            "--source",
            "tuned",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::LoaderEntries(LoaderEntriesCommand::SetOptionsForSource(a)) if a.options.is_none()
        ));
        assert!(
            Cli::try_parse_from(["bootc", "loader-entries", "set-options-for-source"]).is_err()
        );
        for (argv, ro) in [
            (&["bootc", "usr-overlay"][..], false),
            (&["bootc", "usroverlay"], false),
            (&["bootc", "usr-overlay", "--read-only"], true),
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            assert!(
                matches!(cli.command, Command::UsrOverlay(a) if a.read_only == ro),
                "{argv:?}"
            );
        }
    }

    #[test]
    fn parses_pull_with_globals() {
        let cli = Cli::try_parse_from([
            "bootc",
            "image",
            "pull",
            "--sysroot",
            "/mnt",
            "--quiet",
            "oci:/x",
        ])
        .unwrap();
        assert_eq!(cli.sysroot, PathBuf::from("/mnt"));
        let Command::Image(ImageCommand::Pull(p)) = cli.command else {
            panic!("not a pull")
        };
        assert!(p.quiet);
        assert_eq!(p.imgref, "oci:/x");
    }
}
