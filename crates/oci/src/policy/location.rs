//! Where the policy file lives.
//!
//! [`find_policy_path`] follows the order upstream bootc uses (matching
//! current containers-image): `$CONTAINERS_POLICY_JSON` if set, else
//! `$XDG_CONFIG_HOME/containers/policy.json` (or
//! `$HOME/.config/containers/policy.json`), else
//! `/etc/containers/policy.json`, else `/usr/share/containers/policy.json`.
//! Older skopeo (1.9, as in Debian 12) knows only the `$HOME/.config` and
//! `/etc` locations and ignores the environment variable; whoever starts
//! skopeo should pass the path we found with `skopeo --policy PATH` so that
//! what we check is what skopeo enforces.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{Policy, load_policy};

/// The system-wide policy file, the one normally in effect for root.
pub const DEFAULT_POLICY_PATH: &str = "/etc/containers/policy.json";

/// Environment variable naming a policy file that overrides every other
/// location (honoured by current containers-image and upstream bootc, not
/// by skopeo 1.9).
pub const POLICY_ENV_VAR: &str = "CONTAINERS_POLICY_JSON";

/// System locations tried in order, relative to the root.
const SYSTEM_POLICY_PATHS: &[&str] = &[
    "etc/containers/policy.json",
    "usr/share/containers/policy.json",
];

/// The per-user location, under `$XDG_CONFIG_HOME` or `$HOME/.config`.
const USER_POLICY_SUFFIX: &str = "containers/policy.json";

/// Finds the policy file in effect for this process (see the module docs
/// for the order); errors if none exists.
pub fn find_policy_path() -> Result<PathBuf> {
    let home = std::env::var_os("HOME");
    let xdg = std::env::var_os("XDG_CONFIG_HOME");
    resolve_policy_path(
        Path::new("/"),
        std::env::var_os(POLICY_ENV_VAR).as_deref(),
        xdg.as_deref().map(Path::new),
        home.as_deref().map(Path::new),
    )
}

/// [`find_policy_path`] then [`load_policy`].
pub fn load_default_policy() -> Result<Policy> {
    load_policy(&find_policy_path()?)
}

/// The lookup behind [`find_policy_path`], with its inputs explicit and all
/// absolute paths taken relative to `root`.
///
/// The environment override is trusted as is (no existence check, so that a
/// typo is reported rather than silently replaced by another file); an empty
/// value counts as unset.
fn resolve_policy_path(
    root: &Path,
    env_override: Option<&OsStr>,
    xdg_config_home: Option<&Path>,
    home: Option<&Path>,
) -> Result<PathBuf> {
    let under_root = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    if let Some(p) = env_override.filter(|v| !v.is_empty()) {
        return Ok(under_root(Path::new(p)));
    }
    let user = match (xdg_config_home, home) {
        (Some(xdg), _) if !xdg.as_os_str().is_empty() => Some(xdg.join(USER_POLICY_SUFFIX)),
        (_, Some(home)) if !home.as_os_str().is_empty() => {
            Some(home.join(".config").join(USER_POLICY_SUFFIX))
        }
        _ => None,
    };
    let candidates = user
        .into_iter()
        .chain(SYSTEM_POLICY_PATHS.iter().map(PathBuf::from))
        .map(|p| under_root(&p));
    let mut tried = Vec::new();
    for candidate in candidates {
        match candidate.try_exists() {
            Ok(true) => return Ok(candidate),
            Ok(false) => tried.push(candidate.display().to_string()),
            Err(e) => {
                return Err(e).with_context(|| format!("Checking {}", candidate.display()));
            }
        }
    }
    anyhow::bail!(
        "no containers policy.json found (${POLICY_ENV_VAR} unset; tried {})",
        tried.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_policy_path_order() {
        let td = tempfile::tempdir().unwrap();
        let root = td.path();
        let touch = |p: &str| {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "{}").unwrap();
            p
        };
        // Nothing at all.
        let err = resolve_policy_path(root, None, None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no containers policy.json found"), "{err}");

        let usr = touch("usr/share/containers/policy.json");
        assert_eq!(resolve_policy_path(root, None, None, None).unwrap(), usr);
        let etc = touch("etc/containers/policy.json");
        assert_eq!(resolve_policy_path(root, None, None, None).unwrap(), etc);
        // $HOME/.config wins over /etc, $XDG_CONFIG_HOME over $HOME.
        let home = touch("root/.config/containers/policy.json");
        assert_eq!(
            resolve_policy_path(root, None, None, Some(Path::new("/root"))).unwrap(),
            home
        );
        let xdg = touch("xdg/containers/policy.json");
        assert_eq!(
            resolve_policy_path(
                root,
                None,
                Some(Path::new("/xdg")),
                Some(Path::new("/root"))
            )
            .unwrap(),
            xdg
        );
        // A missing per-user file falls through.
        assert_eq!(
            resolve_policy_path(root, None, Some(Path::new("/nope")), None).unwrap(),
            etc
        );
        // The environment override is trusted even if missing; empty is unset.
        assert_eq!(
            resolve_policy_path(root, Some(OsStr::new("/custom.json")), None, None).unwrap(),
            root.join("custom.json")
        );
        assert_eq!(
            resolve_policy_path(root, Some(OsStr::new("")), None, None).unwrap(),
            etc
        );
    }
}
