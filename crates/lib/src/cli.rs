//! The command line: the global options and the verbs, each parsed and run
//! by its own module.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};

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
    Image(crate::image::ImageCommand),
    /// Install the image to a disk or filesystem so that it boots.
    #[command(subcommand)]
    Install(crate::install::InstallCommand),
    /// Show the state of the host: booted, staged and rollback deployments.
    Status(crate::status::StatusArgs),
    /// Fetch the tracked image and stage it for the next boot if it changed.
    Upgrade(crate::upgrade::UpgradeArgs),
    /// Track another image and stage it for the next boot.
    Switch(crate::switch::SwitchArgs),
    /// Boot the rollback deployment next; discards a staged deployment.
    Rollback(crate::rollback::RollbackArgs),
    /// Edit the host spec as YAML in $EDITOR (or from a file) and apply it:
    /// a new spec.image switches, a flipped spec.bootOrder rolls back.
    Edit(crate::edit::EditArgs),
    /// Pin a deployment so pruning never removes it (or unpin it).
    Pin(crate::pin::PinArgs),
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
    Internals(crate::internals::InternalsCommand),
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
        Command::Upgrade(args) => crate::upgrade::run(&cli.sysroot, args).await,
        Command::Switch(args) => crate::switch::run(&cli.sysroot, args).await,
        Command::Rollback(args) => crate::rollback::run(&cli.sysroot, args),
        Command::Edit(args) => crate::edit::run(&cli.sysroot, args).await,
        Command::Pin(args) => crate::pin::run(&cli.sysroot, args),
        Command::LoaderEntries(cmd) => crate::loader_entries::run(&cli.sysroot, cmd),
        Command::UsrOverlay(args) => crate::usr_overlay::run(&cli.sysroot, &args),
        Command::Container(cmd) => crate::container::run(cmd),
        Command::Completion(args) => crate::completion::run(&args, Cli::command()),
        Command::Internals(cmd) => crate::internals::run(&cli.sysroot, cmd),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ImageCommand;
    use crate::internals::InternalsCommand;

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
            Command::Rollback(crate::rollback::RollbackArgs { apply: true })
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
