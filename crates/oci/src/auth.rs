//! Registry credentials: which `auth.json` to hand to skopeo.
//!
//! Upstream bootc (through ostree-ext) keeps the credentials of the *host*
//! apart from those of interactive container use, in an ostree-specific
//! file. For root it looks for `auth.json` in these directories, first hit
//! wins, each taken relative to the root of the system being managed:
//!
//! 1. `/run/ostree/` — runtime, e.g. written by provisioning for this boot;
//! 2. `/etc/ostree/` — the machine's persistent configuration;
//! 3. `/usr/lib/ostree/` — shipped in the image itself.
//!
//! [`find_authfile`] implements that lookup (symlinks are followed inside
//! the root, so `/etc/ostree/auth.json -> /etc/containers/auth.json` works
//! for a root other than `/` too). When it finds a file, pass it to skopeo
//! as `--authfile` ([`ImageProxyConfig::authfile`]); skopeo then reads
//! *only* that file.
//!
//! When it finds none, pass nothing: skopeo then applies its own defaults
//! (containers-auth.json(5)): `$REGISTRY_AUTH_FILE` (skopeo's default for
//! `--authfile`), else `${XDG_RUNTIME_DIR}/containers/auth.json` (for root
//! without `XDG_RUNTIME_DIR`: `/run/containers/0/auth.json`), then
//! `$XDG_CONFIG_HOME/containers/auth.json`, `$DOCKER_CONFIG/config.json`
//! or `~/.docker/config.json`, and `~/.dockercfg`. [`proxy_authfile`] only
//! sets [`ImageProxyConfig::authfile`] when a file was found and never
//! touches `auth_anonymous`, so those defaults keep working.
//!
//! The non-root lookup of ostree-ext (`$XDG_RUNTIME_DIR/ostree`,
//! `~/.config/ostree`) is not implemented: bootc runs as root.
//!
//! [`ImageProxyConfig::authfile`]: containers_image_proxy::ImageProxyConfig::authfile

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};
use containers_image_proxy::ImageProxyConfig;
use fn_error_context::context;

/// Where bootc looks for registry credentials, in order, relative to the
/// root: runtime, machine configuration, then the image's defaults.
pub const AUTHFILE_PATHS: [&str; 3] = [
    "run/ostree/auth.json",
    "etc/ostree/auth.json",
    "usr/lib/ostree/auth.json",
];

/// Bound on symlinks followed while resolving one path, as the kernel's
/// `MAXSYMLINKS`, so that a loop ends in an error rather than hanging.
const MAX_SYMLINKS: usize = 40;

/// Finds the bootc credentials file under `root` (see the module docs).
///
/// Returns the real location of the file (symlinks resolved within `root`),
/// or `None` if none of [`AUTHFILE_PATHS`] exists. A dangling symlink counts
/// as absent, as it does for ostree-ext; other I/O errors (e.g. permission
/// denied) are returned.
#[context("Looking for auth.json under {}", root.display())]
pub fn find_authfile(root: &Path) -> Result<Option<PathBuf>> {
    for candidate in AUTHFILE_PATHS {
        if let Some(found) = resolve_in_root(root, Path::new(candidate))? {
            if found.is_file() {
                return Ok(Some(found));
            }
            tracing::debug!("Ignoring {}: not a regular file", found.display());
        }
    }
    Ok(None)
}

/// Sets `config.authfile` to the bootc credentials file under `root` if
/// there is one, and leaves the configuration untouched otherwise so that
/// skopeo's own defaults apply. Returns the file chosen.
pub fn proxy_authfile(config: &mut ImageProxyConfig, root: &Path) -> Result<Option<PathBuf>> {
    let found = find_authfile(root)?;
    if let Some(path) = &found {
        tracing::debug!("Using registry credentials from {}", path.display());
        config.authfile = Some(path.clone());
    }
    Ok(found)
}

/// Resolves `rel` below `root` component by component, following symlinks
/// with absolute targets re-rooted at `root` and `..` clamped at `root`.
/// Returns `None` if a component does not exist.
fn resolve_in_root(root: &Path, rel: &Path) -> Result<Option<PathBuf>> {
    // Components still to walk, last first.
    let mut pending: Vec<OsString> = Vec::new();
    push_components(&mut pending, rel);
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let mut path = root.to_path_buf();
        path.extend(&resolved);
        path.push(&part);
        let meta = match path.symlink_metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("Inspecting {}", path.display())),
        };
        if meta.file_type().is_symlink() {
            links += 1;
            anyhow::ensure!(
                links <= MAX_SYMLINKS,
                "too many levels of symbolic links at {}",
                path.display()
            );
            let target = std::fs::read_link(&path)
                .with_context(|| format!("Reading symlink {}", path.display()))?;
            if target.is_absolute() {
                resolved.clear();
            }
            push_components(&mut pending, &target);
        } else {
            resolved.push(part);
        }
    }
    let mut path = root.to_path_buf();
    path.extend(&resolved);
    Ok(Some(path))
}

/// Pushes the components of `p` onto `stack` so that the first component
/// is popped first; `.` and the root are dropped, `..` is kept.
fn push_components(stack: &mut Vec<OsString>, p: &Path) {
    let parts: Vec<OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    stack.extend(parts.into_iter().rev());
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn found(root: &Path) -> Option<String> {
        find_authfile(root)
            .unwrap()
            .map(|p| std::fs::read_to_string(p).unwrap())
    }

    #[test]
    fn lookup_order() {
        let td = tempfile::tempdir().unwrap();
        let root = td.path();
        assert_eq!(found(root), None);

        write(root, "usr/lib/ostree/auth.json", "usr");
        assert_eq!(found(root).as_deref(), Some("usr"));
        write(root, "etc/ostree/auth.json", "etc");
        assert_eq!(found(root).as_deref(), Some("etc"));
        write(root, "run/ostree/auth.json", "run");
        assert_eq!(found(root).as_deref(), Some("run"));
        assert_eq!(
            find_authfile(root).unwrap(),
            Some(root.join("run/ostree/auth.json"))
        );

        std::fs::remove_file(root.join("run/ostree/auth.json")).unwrap();
        std::fs::remove_file(root.join("etc/ostree/auth.json")).unwrap();
        assert_eq!(found(root).as_deref(), Some("usr"));
    }

    #[test]
    fn symlinks_resolve_inside_root() {
        let td = tempfile::tempdir().unwrap();
        let root = td.path();
        write(root, "etc/containers/auth.json", "containers");
        std::fs::create_dir_all(root.join("etc/ostree")).unwrap();

        // Absolute target: re-rooted, not the host's /etc.
        symlink(
            "/etc/containers/auth.json",
            root.join("etc/ostree/auth.json"),
        )
        .unwrap();
        assert_eq!(found(root).as_deref(), Some("containers"));
        assert_eq!(
            find_authfile(root).unwrap(),
            Some(root.join("etc/containers/auth.json"))
        );

        // Relative target.
        std::fs::remove_file(root.join("etc/ostree/auth.json")).unwrap();
        symlink("../containers/auth.json", root.join("etc/ostree/auth.json")).unwrap();
        assert_eq!(found(root).as_deref(), Some("containers"));

        // `..` cannot climb out of the root.
        std::fs::remove_file(root.join("etc/ostree/auth.json")).unwrap();
        symlink(
            "../../../../../../etc/containers/auth.json",
            root.join("etc/ostree/auth.json"),
        )
        .unwrap();
        assert_eq!(found(root).as_deref(), Some("containers"));

        // A dangling link counts as absent.
        std::fs::remove_file(root.join("etc/ostree/auth.json")).unwrap();
        symlink("/nonexistent", root.join("etc/ostree/auth.json")).unwrap();
        assert_eq!(found(root), None);

        // A loop is an error, not a hang.
        std::fs::remove_file(root.join("etc/ostree/auth.json")).unwrap();
        symlink("auth.json", root.join("etc/ostree/auth.json")).unwrap();
        let err = format!("{:#}", find_authfile(root).unwrap_err());
        assert!(err.contains("too many levels of symbolic links"), "{err}");
    }

    #[test]
    fn directory_is_not_an_authfile() {
        let td = tempfile::tempdir().unwrap();
        let root = td.path();
        std::fs::create_dir_all(root.join("run/ostree/auth.json")).unwrap();
        write(root, "etc/ostree/auth.json", "etc");
        assert_eq!(found(root).as_deref(), Some("etc"));
    }

    #[test]
    fn proxy_config_untouched_without_file() {
        let td = tempfile::tempdir().unwrap();
        let mut config = ImageProxyConfig::default();
        assert_eq!(proxy_authfile(&mut config, td.path()).unwrap(), None);
        assert_eq!(config.authfile, None);
        assert!(!config.auth_anonymous);

        write(td.path(), "etc/ostree/auth.json", "{}");
        let got = proxy_authfile(&mut config, td.path()).unwrap();
        assert_eq!(got, Some(td.path().join("etc/ostree/auth.json")));
        assert_eq!(config.authfile, got);
    }
}
