//! Image references, transports, the containers configuration files, and
//! fetching images into the store.
//!
//! Modules:
//! - [`imgref`]: parsing `bootc`-style image references and transports.
//! - [`registries`]: `registries.conf` (mirrors, insecure registries).
//! - [`auth`]: locating `auth.json` the way containers and upstream bootc do.
//! - [`policy`]: `policy.json` evaluation (does this pull need enforcement?).
//! - [`progress`]: progress events (`progress-v0`) and their renderers.
//! - [`pull`]: the pull flow: skopeo proxy or `skopeo copy` + OCI layout import.
//! - [`signed`]: signature enforcement: the decision before a pull, and
//!   skopeo's refusals in words.
//! - `cstor`: importing layers from containers-storage (used by [`pull`]).
//! - [`validate`]: checks on untrusted image metadata (digests, JSON, media
//!   types, diff_ids, tar entry paths) before anything is stored.

pub mod auth;
mod cstor;
pub mod imgref;
pub mod policy;
pub mod progress;
pub mod pull;
pub mod registries;
pub mod signed;
pub mod validate;
