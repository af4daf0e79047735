//! The verbs of `bootc`: one module per verb, each with its clap arguments,
//! parsing them, calling the engine (`bootc-deploy`) and rendering the
//! result. No verb module imports another or [`cli`].
//!
//! - [`cli`]: the global options; assembles the verbs and dispatches.
//! - [`image`]: `bootc image pull|list|remove|mount|gc|fsck`.
//! - [`install`]: `bootc install to-disk|to-filesystem|to-existing-root|print-configuration`.
//! - [`status`]: `bootc status`.
//! - [`upgrade`]: `bootc upgrade [--check|--download-only|--from-downloaded]`.
//! - [`switch`]: `bootc switch`.
//! - [`rollback`]: `bootc rollback`.
//! - [`edit`]: `bootc edit`.
//! - [`pin`]: `bootc pin`.
//! - [`loader_entries`]: `bootc loader-entries set-options-for-source`.
//! - [`usr_overlay`]: `bootc usr-overlay`.
//! - [`container`]: `bootc container lint` (checks in `bootc-lint`).
//! - [`completion`]: `bootc completion bash|zsh|fish`.
//! - [`internals`]: `bootc internals finalize-staged|diff-staged|boot-check|seal-store`.
//!
//! Shared by the verbs: [`output`] (the engine's reporter for the terminal,
//! how an update or rollback is told) and [`progress`] (pull progress).

pub mod cli;
pub mod completion;
pub mod container;
pub mod edit;
pub mod image;
pub mod install;
pub mod internals;
pub mod loader_entries;
pub mod output;
pub mod pin;
pub mod progress;
pub mod rollback;
pub mod status;
pub mod switch;
pub mod upgrade;
pub mod usr_overlay;
