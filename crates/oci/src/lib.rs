//! Image references, transports, the containers configuration files, and
//! fetching images into the store.
//!
//! Modules:
//! - [`imgref`]: parsing `bootc`-style image references and transports.
//! - [`inspect`]: a remote image's digest, labels and layers without pulling
//!   it (`skopeo inspect`), and what fetching it costs.
//! - [`registries`]: `registries.conf` (mirrors, insecure registries).
//! - [`auth`]: locating `auth.json` the way containers and upstream bootc do.
//! - [`policy`]: `policy.json` evaluation (does this pull need enforcement?).
//! - [`progress`]: progress events (`progress-v0`) and their renderers.
//! - [`pull`]: the pull flow: skopeo proxy or `skopeo copy` + OCI layout import.
//! - `fetch`: fetching and checking layers from skopeo's proxy or an OCI layout.
//! - [`signed`]: signature enforcement: the decision before a pull, and
//!   skopeo's refusals in words.
//! - `cstor`: importing layers from containers-storage (used by [`pull`]).
//! - `flatten`: applying the layers, in order, into one composefs tree.
//! - `commit`: recording a fetched image: EROFS image, config, manifest.
//! - [`validate`]: checks on untrusted image metadata (digests, JSON, media
//!   types, diff_ids, tar entry paths) before anything is stored.

pub mod auth;
mod commit;
mod cstor;
mod fetch;
mod flatten;
pub mod imgref;
pub mod inspect;
pub mod policy;
pub mod progress;
pub mod pull;
pub mod registries;
pub mod signed;
pub mod validate;
