//! The verbs of `bootc`: command-line types and the flows behind them.
//!
//! - [`cli`]: clap types (the only place clap is used) and dispatch.
//! - [`image`]: `bootc image pull|list|remove|gc|fsck`.
//! - [`install`]: `bootc install to-disk|to-filesystem|to-existing-root|print-configuration`.
//! - [`status`]: `bootc status`.
//! - [`upgrade`]: `bootc upgrade|switch|rollback`, `bootc internals finalize-staged`.
//! - [`edit`]: `bootc edit`.
//! - [`deployments`]: reading deployments by role; `bootc pin`.
//! - [`bootcount`]: automatic rollback (boot trials), `bootc internals boot-check`.
//! - [`loader_entries`]: `bootc loader-entries set-options-for-source`.
//! - [`usr_overlay`]: `bootc usr-overlay`, and the `/usr` overlay status.
//! - [`container`]: `bootc container lint` (checks in `bootc-lint`).
//! - [`completion`]: `bootc completion bash|zsh|fish`.
//! - [`seal`]: fs-verity mode: `bootc internals seal-store`, per-deployment mode for status.

pub mod bootcount;
pub mod cli;
pub mod completion;
pub mod container;
pub mod deployments;
pub mod edit;
pub mod image;
pub mod install;
pub mod loader_entries;
pub mod progress;
pub mod seal;
pub mod status;
pub mod upgrade;
pub mod usr_overlay;
