//! Container image references and their transports, as `bootc` takes them.
//!
//! Upstream bootc names an image by a *transport* and a *name* in that
//! transport's syntax. On the command line the two arrive either together
//! (`docker://quay.io/example/os:latest`, `oci:/var/mnt/layout:tag`) or
//! apart (`bootc switch --transport oci /var/mnt/layout`); the host spec
//! stores them apart (`transport: registry`, `image: quay.io/example/os`).
//!
//! [`ImageRef::parse`] takes the combined form and also a plain registry
//! name; [`ImageRef::parse_with_transport`] takes the `--transport` form.
//! Both validate the name enough to give a clear error before skopeo is run.
//!
//! # Transports
//!
//! | [`Transport`] | stored name | skopeo form | name syntax |
//! |---|---|---|---|
//! | `Registry` | `registry` | `docker://NAME` | `[domain/]repo[:tag][@digest]` |
//! | `OciDir` | `oci` | `oci:NAME` | `path[:tag]` |
//! | `OciArchive` | `oci-archive` | `oci-archive:NAME` | `path[:tag]` |
//! | `ContainersStorage` | `containers-storage` | `containers-storage:NAME` | `[[driver@root]]ref` |
//!
//! The other containers-image transports (`docker-archive`, `dir`,
//! `docker-daemon`) are recognised and refused with
//! [`ImgRefError::UnsupportedTransport`].
//!
//! # Unqualified names
//!
//! Upstream bootc does not require a registry domain: a name such as
//! `fedora/fedora-bootc:42` is passed to skopeo as typed, and skopeo's
//! `docker://` transport expands it to `docker.io/fedora/fedora-bootc:42`
//! (it does not consult the short-name aliases of `registries.conf`). We do
//! the same; [`ImageRef::docker_reference`] gives the expanded form that
//! `policy.json` and `registries.conf` are matched against.

use std::fmt;
use std::str::FromStr;

use containers_image_proxy::oci_spec::distribution::Reference;

/// How an image is fetched: the containers-image transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// A registry speaking the OCI distribution API (`registry`, or
    /// `docker://` in skopeo syntax).
    Registry,
    /// A directory holding an OCI image layout (`oci`).
    OciDir,
    /// A tar archive of an OCI image layout (`oci-archive`).
    OciArchive,
    /// The local containers-storage of podman/buildah (`containers-storage`).
    ContainersStorage,
}

/// Transport names containers-image knows but that we do not fetch from.
const UNSUPPORTED_TRANSPORTS: &[&str] = &["docker-archive", "dir", "docker-daemon"];

/// The transport names accepted by [`Transport::parse`], for error messages.
const SUPPORTED_TRANSPORTS: &str = "registry, oci, oci-archive, containers-storage";

impl Transport {
    /// All transports we support, in the order they are documented.
    pub const ALL: [Transport; 4] = [
        Transport::Registry,
        Transport::OciDir,
        Transport::OciArchive,
        Transport::ContainersStorage,
    ];

    /// The name upstream bootc uses for this transport (in `--transport`
    /// and in the host spec's `transport` field).
    pub fn as_str(&self) -> &'static str {
        match self {
            Transport::Registry => "registry",
            Transport::OciDir => "oci",
            Transport::OciArchive => "oci-archive",
            Transport::ContainersStorage => "containers-storage",
        }
    }

    /// The prefix containers-image (skopeo) expects before a name of this
    /// transport: `docker://`, `oci:`, `oci-archive:` or
    /// `containers-storage:`.
    pub fn skopeo_prefix(&self) -> &'static str {
        match self {
            Transport::Registry => "docker://",
            Transport::OciDir => "oci:",
            Transport::OciArchive => "oci-archive:",
            Transport::ContainersStorage => "containers-storage:",
        }
    }

    /// The transport name `containers-policy.json(5)` uses as a key under
    /// `transports` (`docker` for registries).
    pub fn policy_name(&self) -> &'static str {
        match self {
            Transport::Registry => "docker",
            other => other.as_str(),
        }
    }

    /// Parses a transport name as given to `--transport`.
    ///
    /// Accepts upstream's names (`registry`, `oci`, `oci-archive`,
    /// `containers-storage`) and, like upstream, the skopeo spelling
    /// `docker://` for registries.
    pub fn parse(name: &str) -> Result<Transport, ImgRefError> {
        match name {
            "registry" | "docker://" => Ok(Transport::Registry),
            "oci" => Ok(Transport::OciDir),
            "oci-archive" => Ok(Transport::OciArchive),
            "containers-storage" => Ok(Transport::ContainersStorage),
            "docker" => Err(ImgRefError::MissingDockerSlashes {
                input: name.to_owned(),
            }),
            n if UNSUPPORTED_TRANSPORTS.contains(&n) => Err(ImgRefError::UnsupportedTransport {
                transport: n.to_owned(),
                input: name.to_owned(),
            }),
            n => Err(ImgRefError::UnknownTransport {
                transport: n.to_owned(),
                input: name.to_owned(),
            }),
        }
    }
}

impl fmt::Display for Transport {
    /// Prints [`Transport::as_str`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Transport {
    type Err = ImgRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Transport::parse(s)
    }
}

/// Why an image reference was refused.
///
/// Every variant carries the text the user gave, so the message can be
/// shown without further context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImgRefError {
    /// The reference, or its name after the transport, is empty.
    #[error("empty image name in `{input}`")]
    EmptyName {
        /// What the user gave.
        input: String,
    },
    /// The reference contains whitespace or control characters where none
    /// are allowed.
    #[error("image reference `{input}` contains whitespace or control characters")]
    Whitespace {
        /// What the user gave.
        input: String,
    },
    /// The transport is not one containers-image knows.
    #[error("unknown transport `{transport}` in `{input}`; supported: {SUPPORTED_TRANSPORTS}")]
    UnknownTransport {
        /// The transport name as given.
        transport: String,
        /// What the user gave.
        input: String,
    },
    /// The transport exists in containers-image but bootc does not fetch
    /// from it.
    #[error(
        "transport `{transport}` in `{input}` is not supported; supported: {SUPPORTED_TRANSPORTS}"
    )]
    UnsupportedTransport {
        /// The transport name as given.
        transport: String,
        /// What the user gave.
        input: String,
    },
    /// `docker:` was given without the `//` that skopeo requires.
    #[error(
        "`{input}` uses the `docker` transport without `//`; write `docker://NAME` or `registry:NAME`"
    )]
    MissingDockerSlashes {
        /// What the user gave.
        input: String,
    },
    /// A registry name is not a valid OCI distribution reference.
    #[error("invalid registry image name `{input}`: {reason}")]
    InvalidRegistryName {
        /// What the user gave.
        input: String,
        /// Why the reference parser refused it.
        reason: String,
    },
    /// A registry name was given with a transport prefix while the
    /// transport was also given separately (e.g. `--transport registry
    /// docker://quay.io/x`).
    #[error(
        "`{input}` already names a transport; give either `--transport` or a prefixed reference, not both"
    )]
    DoubleTransport {
        /// What the user gave.
        input: String,
    },
    /// A `containers-storage:[...]` store specifier is not closed.
    #[error("unterminated `[` store specifier in `{input}`")]
    UnterminatedStoreSpec {
        /// What the user gave.
        input: String,
    },
}

/// A transport together with a name in that transport's syntax.
///
/// `name` is kept as the user wrote it (no normalisation), so that it can be
/// stored in the host spec and shown back unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// How the image is fetched.
    pub transport: Transport,
    /// The image name in the transport's syntax, without a transport prefix.
    pub name: String,
}

impl ImageRef {
    /// Parses a reference that may carry its transport.
    ///
    /// Accepted forms:
    /// - `docker://quay.io/example/os:tag`, `registry:quay.io/example/os`;
    /// - a plain registry name `quay.io/example/os:tag` (the default
    ///   transport, as in `bootc switch`);
    /// - `oci:/path/to/layout[:tag]`, `oci-archive:/path/x.tar[:tag]`;
    /// - `containers-storage:localhost/os:tag`, also with a store
    ///   specifier `containers-storage:[overlay@/var/lib/containers/storage]…`.
    ///
    /// A prefix that is not a transport name but makes the rest an invalid
    /// registry name (e.g. `ostree-unverified-registry:quay.io/x`) is
    /// reported as an unknown transport.
    pub fn parse(input: &str) -> Result<ImageRef, ImgRefError> {
        check_outer(input)?;
        if let Some(rest) = input.strip_prefix("docker://") {
            return ImageRef::new(Transport::Registry, rest, input);
        }
        let Some((prefix, rest)) = input.split_once(':') else {
            return ImageRef::new(Transport::Registry, input, input);
        };
        let transport = match prefix {
            "registry" => Some(Transport::Registry),
            "oci" => Some(Transport::OciDir),
            "oci-archive" => Some(Transport::OciArchive),
            "containers-storage" => Some(Transport::ContainersStorage),
            "docker" => {
                return Err(ImgRefError::MissingDockerSlashes {
                    input: input.to_owned(),
                });
            }
            p if UNSUPPORTED_TRANSPORTS.contains(&p) => {
                return Err(ImgRefError::UnsupportedTransport {
                    transport: p.to_owned(),
                    input: input.to_owned(),
                });
            }
            _ => None,
        };
        match transport {
            Some(t) => ImageRef::new(t, rest, input),
            None => {
                // No transport prefix: a registry name whose ':' belongs to
                // a port or a tag. If that does not parse and the prefix
                // looks like a transport name, blame the transport.
                let plain = ImageRef::new(Transport::Registry, input, input);
                if plain.is_err() && looks_like_transport(prefix) {
                    return Err(ImgRefError::UnknownTransport {
                        transport: prefix.to_owned(),
                        input: input.to_owned(),
                    });
                }
                plain
            }
        }
    }

    /// Parses a name given apart from its transport, as `bootc switch
    /// --transport TRANSPORT NAME` does; `transport` takes the names of
    /// [`Transport::parse`].
    ///
    /// The name must not repeat a transport prefix (`docker://…` under
    /// `--transport registry` is refused rather than guessed at).
    pub fn parse_with_transport(name: &str, transport: &str) -> Result<ImageRef, ImgRefError> {
        let transport = Transport::parse(transport)?;
        check_outer(name)?;
        if transport == Transport::Registry
            && (name.starts_with("docker://") || name.starts_with("registry:"))
        {
            return Err(ImgRefError::DoubleTransport {
                input: name.to_owned(),
            });
        }
        ImageRef::new(transport, name, name)
    }

    /// Validates `name` for `transport`; `input` is what the user typed, for
    /// error messages.
    fn new(transport: Transport, name: &str, input: &str) -> Result<ImageRef, ImgRefError> {
        if name.is_empty() {
            return Err(ImgRefError::EmptyName {
                input: input.to_owned(),
            });
        }
        match transport {
            Transport::Registry => {
                if name.chars().any(char::is_whitespace) {
                    return Err(ImgRefError::Whitespace {
                        input: input.to_owned(),
                    });
                }
                Reference::from_str(name).map_err(|e| ImgRefError::InvalidRegistryName {
                    input: input.to_owned(),
                    reason: e.to_string(),
                })?;
            }
            Transport::ContainersStorage => {
                if name.chars().any(char::is_whitespace) {
                    return Err(ImgRefError::Whitespace {
                        input: input.to_owned(),
                    });
                }
                if let Some(spec) = name.strip_prefix('[') {
                    let Some((_, image)) = spec.split_once(']') else {
                        return Err(ImgRefError::UnterminatedStoreSpec {
                            input: input.to_owned(),
                        });
                    };
                    if image.is_empty() {
                        return Err(ImgRefError::EmptyName {
                            input: input.to_owned(),
                        });
                    }
                }
            }
            Transport::OciDir | Transport::OciArchive => {
                // Paths may contain interior spaces; check_outer already
                // refused leading/trailing whitespace and control characters.
                let (path, _) = split_path_tag(name);
                if path.is_empty() {
                    return Err(ImgRefError::EmptyName {
                        input: input.to_owned(),
                    });
                }
            }
        }
        Ok(ImageRef {
            transport,
            name: name.to_owned(),
        })
    }

    /// The reference in containers-image syntax, as skopeo and the image
    /// proxy take it: `docker://quay.io/x:tag`, `oci:/path:tag`, …
    pub fn to_skopeo_string(&self) -> String {
        format!("{}{}", self.transport.skopeo_prefix(), self.name)
    }

    /// Whether the image is read from this machine rather than a registry.
    pub fn is_local(&self) -> bool {
        self.transport != Transport::Registry
    }

    /// For a registry image, the name expanded the way skopeo expands it
    /// (`busybox` → `docker.io/library/busybox:latest`); `None` for other
    /// transports.
    pub fn docker_reference(&self) -> Option<Reference> {
        match self.transport {
            // Validated by `new`, so the parse cannot fail; stay total anyway.
            Transport::Registry => Reference::from_str(&self.name).ok(),
            _ => None,
        }
    }

    /// For `oci` and `oci-archive`, the path and the optional tag (the text
    /// after the first `:`, as containers-image splits it on Linux).
    pub fn oci_path_and_tag(&self) -> Option<(&str, Option<&str>)> {
        match self.transport {
            Transport::OciDir | Transport::OciArchive => Some(split_path_tag(&self.name)),
            _ => None,
        }
    }
}

impl fmt::Display for ImageRef {
    /// Prints the reference as upstream's human-readable status does: the
    /// bare name for registries (`quay.io/example/os:tag`), otherwise
    /// `TRANSPORT:NAME` with upstream's transport names
    /// (`oci:/path`, `containers-storage:localhost/os`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.transport {
            Transport::Registry => f.write_str(&self.name),
            t => write!(f, "{}:{}", t.as_str(), self.name),
        }
    }
}

impl FromStr for ImageRef {
    type Err = ImgRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

/// Checks that hold for every transport: non-empty, no surrounding
/// whitespace, no control characters.
fn check_outer(input: &str) -> Result<(), ImgRefError> {
    if input.is_empty() {
        return Err(ImgRefError::EmptyName {
            input: input.to_owned(),
        });
    }
    if input.trim() != input || input.chars().any(char::is_control) {
        return Err(ImgRefError::Whitespace {
            input: input.to_owned(),
        });
    }
    Ok(())
}

/// Whether `prefix` has the shape of a transport name (lowercase letters
/// and dashes), as opposed to a registry host or a repository.
fn looks_like_transport(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '-' || c.is_ascii_digit())
}

/// Splits `path[:tag]` at the first `:`, as containers-image does on Linux.
fn split_path_tag(name: &str) -> (&str, Option<&str>) {
    match name.split_once(':') {
        Some((path, tag)) => (path, Some(tag)),
        None => (name, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(input, Ok((transport, name, display, skopeo)))` or `Err(message
    /// fragment)`.
    type Expect = Result<(Transport, &'static str, &'static str, &'static str), &'static str>;

    fn check(input: &str, expect: Expect) {
        let got = ImageRef::parse(input);
        match (got, expect) {
            (Ok(r), Ok((t, name, display, skopeo))) => {
                assert_eq!(r.transport, t, "{input}");
                assert_eq!(r.name, name, "{input}");
                assert_eq!(r.to_string(), display, "{input}");
                assert_eq!(r.to_skopeo_string(), skopeo, "{input}");
                assert_eq!(r.is_local(), t != Transport::Registry, "{input}");
                // The displayed form parses back to the same reference.
                assert_eq!(ImageRef::parse(display).as_ref(), Ok(&r), "{input}");
            }
            (Err(e), Err(frag)) => {
                let msg = e.to_string();
                assert!(msg.contains(frag), "{input}: {msg:?} lacks {frag:?}");
            }
            (got, expect) => panic!("{input}: got {got:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn parse_table() {
        use Transport::*;
        let cases: &[(&str, Expect)] = &[
            (
                "docker://quay.io/example/os:latest",
                Ok((
                    Registry,
                    "quay.io/example/os:latest",
                    "quay.io/example/os:latest",
                    "docker://quay.io/example/os:latest",
                )),
            ),
            (
                "registry:quay.io/example/os",
                Ok((
                    Registry,
                    "quay.io/example/os",
                    "quay.io/example/os",
                    "docker://quay.io/example/os",
                )),
            ),
            (
                "quay.io/example/os:42",
                Ok((
                    Registry,
                    "quay.io/example/os:42",
                    "quay.io/example/os:42",
                    "docker://quay.io/example/os:42",
                )),
            ),
            (
                "localhost:5000/os:tag",
                Ok((
                    Registry,
                    "localhost:5000/os:tag",
                    "localhost:5000/os:tag",
                    "docker://localhost:5000/os:tag",
                )),
            ),
            // Unqualified names are accepted, as upstream does.
            (
                "busybox",
                Ok((Registry, "busybox", "busybox", "docker://busybox")),
            ),
            (
                "busybox:1.36",
                Ok((
                    Registry,
                    "busybox:1.36",
                    "busybox:1.36",
                    "docker://busybox:1.36",
                )),
            ),
            (
                "quay.io/x@sha256:5db6d8b5f34d3cbdaa1e82ed0152a5ac980076d19317d4269db149cbde057bb2",
                Ok((
                    Registry,
                    "quay.io/x@sha256:5db6d8b5f34d3cbdaa1e82ed0152a5ac980076d19317d4269db149cbde057bb2",
                    "quay.io/x@sha256:5db6d8b5f34d3cbdaa1e82ed0152a5ac980076d19317d4269db149cbde057bb2",
                    "docker://quay.io/x@sha256:5db6d8b5f34d3cbdaa1e82ed0152a5ac980076d19317d4269db149cbde057bb2",
                )),
            ),
            (
                "oci:/var/lib/layout",
                Ok((
                    OciDir,
                    "/var/lib/layout",
                    "oci:/var/lib/layout",
                    "oci:/var/lib/layout",
                )),
            ),
            (
                "oci:/var/lib/layout:v1",
                Ok((
                    OciDir,
                    "/var/lib/layout:v1",
                    "oci:/var/lib/layout:v1",
                    "oci:/var/lib/layout:v1",
                )),
            ),
            (
                "oci:/my dir/layout",
                Ok((
                    OciDir,
                    "/my dir/layout",
                    "oci:/my dir/layout",
                    "oci:/my dir/layout",
                )),
            ),
            (
                "oci-archive:/tmp/x.tar",
                Ok((
                    OciArchive,
                    "/tmp/x.tar",
                    "oci-archive:/tmp/x.tar",
                    "oci-archive:/tmp/x.tar",
                )),
            ),
            (
                "oci-archive:/tmp/x.tar:tag",
                Ok((
                    OciArchive,
                    "/tmp/x.tar:tag",
                    "oci-archive:/tmp/x.tar:tag",
                    "oci-archive:/tmp/x.tar:tag",
                )),
            ),
            (
                "containers-storage:localhost/os:tag",
                Ok((
                    ContainersStorage,
                    "localhost/os:tag",
                    "containers-storage:localhost/os:tag",
                    "containers-storage:localhost/os:tag",
                )),
            ),
            (
                "containers-storage:[overlay@/var/lib/containers/storage]localhost/os",
                Ok((
                    ContainersStorage,
                    "[overlay@/var/lib/containers/storage]localhost/os",
                    "containers-storage:[overlay@/var/lib/containers/storage]localhost/os",
                    "containers-storage:[overlay@/var/lib/containers/storage]localhost/os",
                )),
            ),
            ("", Err("empty image name in ``")),
            ("docker://", Err("empty image name in `docker://`")),
            ("oci:", Err("empty image name in `oci:`")),
            ("oci::tag", Err("empty image name in `oci::tag`")),
            ("containers-storage:", Err("empty image name")),
            ("containers-storage:[overlay@/x]", Err("empty image name")),
            ("containers-storage:[overlay@/x", Err("unterminated `[`")),
            (" quay.io/x", Err("contains whitespace")),
            ("quay.io/x ", Err("contains whitespace")),
            ("quay.io/x y", Err("contains whitespace")),
            ("oci:/a\nb", Err("contains whitespace")),
            (
                "containers-storage:local host/x",
                Err("contains whitespace"),
            ),
            ("docker:quay.io/x", Err("without `//`")),
            (
                "dir:/tmp/x",
                Err("transport `dir` in `dir:/tmp/x` is not supported"),
            ),
            ("docker-archive:/tmp/x.tar", Err("is not supported")),
            ("docker-daemon:x:latest", Err("is not supported")),
            (
                "ostree-unverified-registry:quay.io/x",
                Err("unknown transport `ostree-unverified-registry`"),
            ),
            (
                "bogus:/path",
                Err("unknown transport `bogus` in `bogus:/path`"),
            ),
            (
                "Quay.io/Upper",
                Err("invalid registry image name `Quay.io/Upper`"),
            ),
            ("quay.io/x:bad tag!", Err("contains whitespace")),
            ("quay.io/x:-bad", Err("invalid registry image name")),
        ];
        for (input, expect) in cases {
            check(input, *expect);
        }
    }

    #[test]
    fn parse_with_transport_table() {
        use Transport::*;
        let ok: &[(&str, &str, Transport, &str)] = &[
            (
                "quay.io/example/os:latest",
                "registry",
                Registry,
                "docker://quay.io/example/os:latest",
            ),
            (
                "quay.io/example/os",
                "docker://",
                Registry,
                "docker://quay.io/example/os",
            ),
            ("/var/mnt/layout", "oci", OciDir, "oci:/var/mnt/layout"),
            (
                "/var/mnt/img.tar:v2",
                "oci-archive",
                OciArchive,
                "oci-archive:/var/mnt/img.tar:v2",
            ),
            (
                "localhost/os",
                "containers-storage",
                ContainersStorage,
                "containers-storage:localhost/os",
            ),
        ];
        for (name, transport, t, skopeo) in ok {
            let r = ImageRef::parse_with_transport(name, transport).unwrap();
            assert_eq!(r.transport, *t);
            assert_eq!(r.name, *name);
            assert_eq!(r.to_skopeo_string(), *skopeo);
        }
        let bad: &[(&str, &str, &str)] = &[
            ("quay.io/x", "docker", "without `//`"),
            ("quay.io/x", "Registry", "unknown transport `Registry`"),
            ("quay.io/x", "dir", "is not supported"),
            ("quay.io/x", "", "unknown transport ``"),
            (
                "docker://quay.io/x",
                "registry",
                "already names a transport",
            ),
            ("", "oci", "empty image name"),
            ("quay.io/x\t", "registry", "contains whitespace"),
        ];
        for (name, transport, frag) in bad {
            let e = ImageRef::parse_with_transport(name, transport).unwrap_err();
            assert!(e.to_string().contains(frag), "{name} {transport}: {e}");
        }
    }

    #[test]
    fn transport_names_round_trip() {
        for t in Transport::ALL {
            assert_eq!(Transport::parse(t.as_str()), Ok(t));
            assert_eq!(t.to_string(), t.as_str());
        }
        assert_eq!(Transport::Registry.policy_name(), "docker");
        assert_eq!(Transport::OciArchive.policy_name(), "oci-archive");
    }

    #[test]
    fn docker_reference_expands_like_skopeo() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("fedora/fedora-bootc:42", "docker.io/fedora/fedora-bootc:42"),
            ("quay.io/example/os", "quay.io/example/os:latest"),
            ("localhost/os:t", "localhost/os:t"),
        ];
        for (input, expanded) in cases {
            let r = ImageRef::parse(input).unwrap();
            assert_eq!(r.docker_reference().unwrap().whole(), expanded);
        }
        let oci = ImageRef::parse("oci:/a/b:tag").unwrap();
        assert!(oci.docker_reference().is_none());
        assert_eq!(oci.oci_path_and_tag(), Some(("/a/b", Some("tag"))));
    }
}
