//! The verbs of `bootc`: command-line types and the flows behind them.
//!
//! - [`cli`]: clap types (the only place clap is used) and dispatch.
//! - [`image`]: `bootc image pull|list|remove|gc|fsck`.
//! - [`install`]: `bootc install to-disk|to-filesystem|to-existing-root|print-configuration`.
//! - [`status`]: `bootc status`.
//! - [`upgrade`]: `bootc upgrade|switch|rollback`, `bootc internals finalize-staged`.

pub mod cli;
pub mod deployments;
pub mod image;
pub mod install;
pub mod status;
pub mod upgrade;
pub mod progress;
