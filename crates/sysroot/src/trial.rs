//! Automatic-rollback state in the sysroot: the deployment on trial
//! (`state/boot-trial.json`), failure records
//! (`state/deploy/<ID>/boot-failure.json`), and the boot-counting
//! configuration an image and its admin give (`bootc/boot.toml`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fn_error_context::context;
use serde::{Deserialize, Serialize};

/// The trial marker, relative to the sysroot.
pub const TRIAL_JSON: &str = "state/boot-trial.json";

/// A deployment's failure record, in its directory.
pub const FAILURE_JSON: &str = "boot-failure.json";

/// The boot-counting configuration, relative to `/usr/lib` (image default)
/// and `/etc` (the admin's override).
pub const BOOT_TOML: &str = "bootc/boot.toml";

/// The tries a new deployment gets when no configuration says otherwise.
pub const DEFAULT_TRIES: u32 = 3;

/// `state/boot-trial.json`: the default deployment boots on trial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trial {
    /// The deployment on trial.
    pub id: String,
    /// The tries it was given.
    pub tries: u32,
    /// When the trial started (RFC 3339, UTC).
    pub started: String,
}

/// `boot-failure.json`: why a deployment was left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootFailure {
    /// What went wrong, for people.
    pub reason: String,
    /// When it was recorded (RFC 3339, UTC).
    pub time: String,
}

fn write_json(dir: &Path, name: &str, value: &impl Serialize) -> Result<()> {
    use cap_std_ext::cap_std::{ambient_authority, fs::Dir};
    use cap_std_ext::dirext::CapStdExtDirExt;
    std::fs::create_dir_all(dir).with_context(|| format!("Creating {}", dir.display()))?;
    let d = Dir::open_ambient_dir(dir, ambient_authority())
        .with_context(|| format!("Opening {}", dir.display()))?;
    let mut json = serde_json::to_string_pretty(value).expect("plain struct serialises");
    json.push('\n');
    d.atomic_write(name, json)
        .with_context(|| format!("Writing {}/{name}", dir.display()))?;
    crate::fsync_dir(dir)
}

fn read_json<T: for<'de> Deserialize<'de>>(p: &Path) -> Result<Option<T>> {
    let text = match std::fs::read_to_string(p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("Reading {}", p.display())),
    };
    serde_json::from_str(&text)
        .map(Some)
        .with_context(|| format!("Parsing {}", p.display()))
}

fn remove(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => crate::fsync_dir(p.parent().expect("has a parent")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("Removing {}", p.display())),
    }
}

/// The path of `state/boot-trial.json` in `sysroot`.
pub fn trial_path(sysroot: &Path) -> PathBuf {
    sysroot.join(TRIAL_JSON)
}

/// The deployment on trial, if any.
pub fn read_trial(sysroot: &Path) -> Result<Option<Trial>> {
    let t: Option<Trial> = read_json(&trial_path(sysroot))?;
    if let Some(t) = &t {
        anyhow::ensure!(
            crate::cmdline::is_valid_id(&t.id),
            "{} names an invalid deployment id {:?}",
            trial_path(sysroot).display(),
            t.id
        );
    }
    Ok(t)
}

/// Record that `trial` starts (atomic replace).
#[context("Recording the boot trial of {}", trial.id)]
pub fn write_trial(sysroot: &Path, trial: &Trial) -> Result<()> {
    write_json(&sysroot.join("state"), "boot-trial.json", trial)
}

/// The trial is over (no error when there was none).
pub fn remove_trial(sysroot: &Path) -> Result<()> {
    remove(&trial_path(sysroot))
}

fn failure_path(sysroot: &Path, id: &str) -> PathBuf {
    crate::deployment::deployment_dir(sysroot, id).join(FAILURE_JSON)
}

/// The failure record of deployment `id`, if any.
pub fn read_failure(sysroot: &Path, id: &str) -> Result<Option<BootFailure>> {
    read_json(&failure_path(sysroot, id))
}

/// Record why deployment `id` failed.
#[context("Recording the boot failure of {id}")]
pub fn write_failure(sysroot: &Path, id: &str, failure: &BootFailure) -> Result<()> {
    write_json(
        &crate::deployment::deployment_dir(sysroot, id),
        FAILURE_JSON,
        failure,
    )
}

/// Forget a failure of deployment `id` (it booted well since).
pub fn remove_failure(sysroot: &Path, id: &str) -> Result<()> {
    remove(&failure_path(sysroot, id))
}

/// `boot.toml`: `[boot] tries = N` (0 turns boot counting off).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BootToml {
    #[serde(default)]
    boot: BootSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BootSection {
    tries: Option<u32>,
}

/// The tries a new deployment gets: `/etc/bootc/boot.toml` (the admin's,
/// `etc_text`) wins over `/usr/lib/bootc/boot.toml` (the image's,
/// `usr_text`), else [`DEFAULT_TRIES`]; at most `max`.
pub fn configured_tries(etc_text: Option<&str>, usr_text: Option<&str>, max: u32) -> Result<u32> {
    let parse = |text: &str, which: &str| -> Result<Option<u32>> {
        let t: BootToml = toml::from_str(text).with_context(|| format!("Parsing {which}"))?;
        Ok(t.boot.tries)
    };
    let etc = etc_text
        .map(|t| parse(t, &format!("/etc/{BOOT_TOML}")))
        .transpose()?
        .flatten();
    let usr = usr_text
        .map(|t| parse(t, &format!("/usr/lib/{BOOT_TOML}")))
        .transpose()?
        .flatten();
    Ok(etc.or(usr).unwrap_or(DEFAULT_TRIES).min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tries_table() {
        let cases: &[(Option<&str>, Option<&str>, Result<u32, &str>)] = &[
            (None, None, Ok(DEFAULT_TRIES)),
            (None, Some("[boot]\ntries = 1\n"), Ok(1)),
            (
                Some("[boot]\ntries = 0\n"),
                Some("[boot]\ntries = 1\n"),
                Ok(0),
            ),
            (Some("[boot]\n"), Some("[boot]\ntries = 2\n"), Ok(2)),
            (Some(""), None, Ok(DEFAULT_TRIES)),
            (Some("[boot]\ntries = 50\n"), None, Ok(9)),
            (
                Some("[boot]\ntries = -1\n"),
                None,
                Err("/etc/bootc/boot.toml"),
            ),
            (
                None,
                Some("[boot]\ntriez = 1\n"),
                Err("/usr/lib/bootc/boot.toml"),
            ),
        ];
        for (etc, usr, expect) in cases {
            match (configured_tries(*etc, *usr, 9), expect) {
                (Ok(g), Ok(e)) => assert_eq!(g, *e, "{etc:?} {usr:?}"),
                (Err(g), Err(frag)) => assert!(format!("{g:#}").contains(frag), "{g:#}"),
                (g, e) => panic!("{etc:?} {usr:?}: got {g:?}, expected {e:?}"),
            }
        }
    }

    #[test]
    fn trial_and_failure_files() {
        let td = tempfile::tempdir().unwrap();
        let root = td.path();
        let id = "ab".repeat(32);
        assert_eq!(read_trial(root).unwrap(), None);
        let t = Trial {
            id: id.clone(),
            tries: 2,
            started: "2026-11-26T00:00:00Z".into(),
        };
        write_trial(root, &t).unwrap();
        assert_eq!(read_trial(root).unwrap(), Some(t));
        remove_trial(root).unwrap();
        remove_trial(root).unwrap();
        assert_eq!(read_trial(root).unwrap(), None);
        std::fs::create_dir_all(crate::deployment::deployment_dir(root, &id)).unwrap();
        let f = BootFailure {
            reason: "x.service failed".into(),
            time: "2026-11-26T00:00:00Z".into(),
        };
        write_failure(root, &id, &f).unwrap();
        assert_eq!(read_failure(root, &id).unwrap(), Some(f));
        remove_failure(root, &id).unwrap();
        assert_eq!(read_failure(root, &id).unwrap(), None);
        std::fs::write(
            trial_path(root),
            "{\"id\":\"../x\",\"tries\":1,\"started\":\"\"}",
        )
        .unwrap();
        assert!(read_trial(root).is_err());
    }
}
