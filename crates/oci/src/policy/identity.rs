//! The policy identity of an image and its namespaces, most specific first:
//! the scope keys [`super::Policy`] looks up under `transports.<transport>`.
//!
//! | transport key | identity, then namespaces |
//! |---|---|
//! | `docker` | `host/ns/repo:tag` (or `@digest`), `host/ns/repo`, `host/ns`, `host`, then `*.domain` wildcards from the most specific |
//! | `oci`, `oci-archive` | the absolute path, then each parent directory (never `/`) |
//! | `containers-storage` | `[driver@root]name:tag`, `[driver@root]name`, its parent namespaces, `[driver@root]`, `[root]` |
//!
//! Registry names are matched in their fully expanded form
//! (`busybox` → `docker.io/library/busybox:latest`). Paths are made absolute
//! lexically; symlinks are not resolved (containers-image resolves them, so
//! a scope naming a symlinked directory can differ). A containers-storage
//! reference without a `[driver@root]` specifier is matched as if it named
//! the default rootful store, `[overlay@/var/lib/containers/storage]`.

use std::ffi::OsStr;
use std::path::{Component, Path};

use crate::imgref::{ImageRef, Transport};

/// The store containers-storage uses for root when a reference names none;
/// the policy identity of such a reference is computed against it.
const DEFAULT_STORAGE_DRIVER: &str = "overlay";
/// See [`DEFAULT_STORAGE_DRIVER`].
const DEFAULT_STORAGE_ROOT: &str = "/var/lib/containers/storage";

/// The policy identity of `imgref` followed by its namespaces, most
/// specific first (the transport default `""` is not included).
pub fn policy_identities(imgref: &ImageRef) -> Vec<String> {
    match imgref.transport {
        Transport::Registry => match imgref.docker_reference() {
            Some(r) => {
                let name = format!("{}/{}", r.registry(), r.repository());
                let identity = match (r.digest(), r.tag()) {
                    (Some(d), _) => format!("{name}@{d}"),
                    (None, Some(t)) => format!("{name}:{t}"),
                    (None, None) => name.clone(),
                };
                let mut out = vec![identity];
                out.extend(docker_namespaces(&name));
                out
            }
            None => Vec::new(),
        },
        Transport::OciDir | Transport::OciArchive => {
            let Some((path, _tag)) = imgref.oci_path_and_tag() else {
                return Vec::new();
            };
            match absolute_lexical(Path::new(path)) {
                Some(abs) => path_namespaces(&abs),
                None => Vec::new(),
            }
        }
        Transport::ContainersStorage => storage_identities(&imgref.name),
    }
}

/// `host/ns/repo`, `host/ns`, `host`, then `*.` wildcards of the host
/// without its port, from the most specific.
fn docker_namespaces(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = name;
    loop {
        out.push(cur.to_owned());
        match cur.rfind('/') {
            Some(i) => cur = &cur[..i],
            None => break,
        }
    }
    let mut host = cur.split(':').next().unwrap_or(cur);
    while let Some(i) = host.find('.') {
        host = &host[i + 1..];
        out.push(format!("*.{host}"));
    }
    out
}

/// The path itself, then each parent directory, never `/`.
fn path_namespaces(abs: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = abs;
    while cur != "/" {
        let Some(i) = cur.rfind('/') else { break };
        out.push(cur.to_owned());
        cur = &cur[..i];
        if cur.is_empty() {
            break;
        }
    }
    out
}

/// Makes `path` absolute against the current directory and normalises it
/// lexically (`.`, `..`, repeated and trailing slashes); symlinks are not
/// resolved. `None` if the path is relative and the current directory is
/// unknown, or it is not UTF-8.
fn absolute_lexical(path: &Path) -> Option<String> {
    let joined;
    let path = if path.is_absolute() {
        path
    } else {
        joined = std::env::current_dir().ok()?.join(path);
        &joined
    };
    let mut parts: Vec<&OsStr> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let mut out = String::new();
    for p in parts {
        out.push('/');
        out.push_str(p.to_str()?);
    }
    if out.is_empty() {
        out.push('/');
    }
    Some(out)
}

/// Identity and namespaces of a containers-storage name
/// (`[driver@root+runroot:opts]image`, where image is `name[:tag]`,
/// `name@id`, `@id` or a bare image ID).
fn storage_identities(name: &str) -> Vec<String> {
    let (spec, image) = match name.strip_prefix('[').and_then(|s| s.split_once(']')) {
        Some((spec, image)) => (Some(spec), image),
        None => (None, name),
    };
    let (driver, graphroot) = match spec {
        Some(spec) => {
            let (driver, rest) = match spec.split_once('@') {
                Some((d, rest)) => (d, rest),
                None => (DEFAULT_STORAGE_DRIVER, spec),
            };
            let graphroot = rest.split(['+', ':']).next().unwrap_or(rest);
            (driver, graphroot)
        }
        None => (DEFAULT_STORAGE_DRIVER, DEFAULT_STORAGE_ROOT),
    };
    let store = format!("[{driver}@{graphroot}]");
    let driverless = format!("[{graphroot}]");

    // Split off an image ID: `name@id` where id is not a digest of the name.
    let is_id = |s: &str| {
        let s = s.strip_prefix("sha256:").unwrap_or(s);
        s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit())
    };
    let (named, id) = if let Some(id) = image.strip_prefix('@') {
        (None, Some(id))
    } else if is_id(image) {
        (None, Some(image))
    } else {
        match image.rsplit_once('@') {
            Some((n, id)) if is_id(id) && !id.starts_with("sha256:") => (Some(n), Some(id)),
            _ => (Some(image), None),
        }
    };
    let named = named.and_then(|n| {
        use std::str::FromStr;
        containers_image_proxy::oci_spec::distribution::Reference::from_str(n).ok()
    });

    let mut out = Vec::new();
    match (&named, id) {
        (Some(r), Some(id)) => {
            out.push(format!("{store}{}@{id}", r.whole()));
            out.push(format!("{store}{}", r.whole()));
        }
        (Some(r), None) => out.push(format!("{store}{}", r.whole())),
        (None, Some(id)) => out.push(format!("{store}@{id}")),
        (None, None) => {}
    }
    if let Some(r) = &named {
        let repo = format!("{}/{}", r.registry(), r.repository());
        let mut cur = repo.as_str();
        loop {
            out.push(format!("{store}{cur}"));
            match cur.rfind('/') {
                Some(i) => cur = &cur[..i],
                None => break,
            }
        }
    }
    out.push(store);
    out.push(driverless);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imgref(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap()
    }

    #[test]
    fn identities() {
        let cases: &[(&str, &[&str])] = &[
            (
                "quay.io/example/os:42",
                &[
                    "quay.io/example/os:42",
                    "quay.io/example/os",
                    "quay.io/example",
                    "quay.io",
                    "*.io",
                ],
            ),
            (
                "busybox",
                &[
                    "docker.io/library/busybox:latest",
                    "docker.io/library/busybox",
                    "docker.io/library",
                    "docker.io",
                    "*.io",
                ],
            ),
            (
                "a.b.example.com:8443/ns/r@sha256:5db6d8b5f34d3cbdaa1e82ed0152a5ac980076d19317d4269db149cbde057bb2",
                &[
                    "a.b.example.com:8443/ns/r@sha256:5db6d8b5f34d3cbdaa1e82ed0152a5ac980076d19317d4269db149cbde057bb2",
                    "a.b.example.com:8443/ns/r",
                    "a.b.example.com:8443/ns",
                    "a.b.example.com:8443",
                    "*.b.example.com",
                    "*.example.com",
                    "*.com",
                ],
            ),
            (
                "localhost/os",
                &["localhost/os:latest", "localhost/os", "localhost"],
            ),
            ("oci:/a/b/c:tag", &["/a/b/c", "/a/b", "/a"]),
            ("oci:/a//b/./c/", &["/a/b/c", "/a/b", "/a"]),
            ("oci-archive:/x.tar", &["/x.tar"]),
            (
                "containers-storage:[vfs@/srv/s]localhost/os:t",
                &[
                    "[vfs@/srv/s]localhost/os:t",
                    "[vfs@/srv/s]localhost/os",
                    "[vfs@/srv/s]localhost",
                    "[vfs@/srv/s]",
                    "[/srv/s]",
                ],
            ),
            (
                "containers-storage:5db6d8b5f34d3cbdaa1e82ed0152a5ac980076d19317d4269db149cbde057bb2",
                &[
                    "[overlay@/var/lib/containers/storage]@5db6d8b5f34d3cbdaa1e82ed0152a5ac980076d19317d4269db149cbde057bb2",
                    "[overlay@/var/lib/containers/storage]",
                    "[/var/lib/containers/storage]",
                ],
            ),
        ];
        for (image, expect) in cases {
            assert_eq!(policy_identities(&imgref(image)), *expect, "{image}");
        }
    }
}
