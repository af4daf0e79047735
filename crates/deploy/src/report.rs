//! How the engine tells its caller what happens: the [`Reporter`] trait,
//! which the command line implements (the engine itself prints nothing).

use std::sync::Arc;

use anyhow::Result;
use bootc_oci::imgref::ImageRef;
use bootc_oci::progress::{ProgressMode, PullProgress};

/// Receives what a transaction has to say while it runs. Its final result
/// comes back as a typed outcome; this is for what happens on the way.
pub trait Reporter: Send + Sync {
    /// A note for the user (the command line prints it on stdout unless
    /// it is quiet).
    fn info(&self, msg: &str);
    /// A note printed even when the command line is quiet (stdout).
    fn notice(&self, msg: &str) {
        self.info(msg)
    }
    /// Something is wrong but the transaction goes on (stderr).
    fn warn(&self, msg: &str);
    /// The named step `name` (see [`crate::steps`]) is durable.
    fn step(&self, name: &str) {
        tracing::debug!("step {name}");
    }
    /// Where the progress of pulling `imgref` goes; by default nowhere.
    fn pull_progress(&self, imgref: &ImageRef) -> Result<Arc<PullProgress>> {
        Ok(Arc::new(PullProgress::new(imgref, ProgressMode::Quiet)))
    }
}

/// A reporter that drops notes and sends warnings to the log.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Reporter for Silent {
    fn info(&self, _msg: &str) {}
    fn warn(&self, msg: &str) {
        tracing::warn!("{msg}");
    }
}
