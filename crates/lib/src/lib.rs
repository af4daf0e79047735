//! The verbs of `bootc`: command-line types and the flows behind them.
//!
//! - [`cli`]: clap types (the only place clap is used) and dispatch.
//! - [`image`]: `bootc image pull|list`.

pub mod cli;
pub mod image;
pub mod progress;
