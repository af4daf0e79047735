//! Choosing where pull progress goes: terminal bars, JSON lines, or nowhere.

use std::sync::Arc;

use anyhow::Result;
use bootc_oci::imgref::ImageRef;
use bootc_oci::progress::{JsonLinesWriter, ProgressMode, PullProgress};

/// The reporter for pulling `image`: nothing with `--quiet`; progress-v0 JSON
/// lines on `--progress-fd`; otherwise bars on stderr when it is a terminal.
pub fn reporter(
    image: &ImageRef,
    quiet: bool,
    progress_fd: Option<u32>,
) -> Result<Arc<PullProgress>> {
    let mode = match (progress_fd, quiet) {
        (Some(fd), _) => {
            let fd = i32::try_from(fd)
                .map_err(|_| anyhow::anyhow!("--progress-fd {fd} is out of range"))?;
            ProgressMode::Json(JsonLinesWriter::open_fd(fd)?)
        }
        (None, true) => ProgressMode::Quiet,
        (None, false) => ProgressMode::Terminal,
    };
    Ok(Arc::new(PullProgress::new(image, mode)))
}
