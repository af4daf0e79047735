//! Command-line types and dispatch.

/// Parse `args` and run the chosen verb.
pub fn run_from_args(_args: impl IntoIterator<Item = std::ffi::OsString>) -> anyhow::Result<()> {
    Ok(())
}
