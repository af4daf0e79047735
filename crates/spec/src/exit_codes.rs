//! Process exit codes of the `bootc` CLI.
//!
//! Scripts branch on these, so they are part of the interface, like the
//! status schema. They match upstream bootc: success or a single generic
//! failure, with the reason printed to stderr.

/// The command did what was asked, including "nothing to do" outcomes such
/// as `upgrade` finding no newer image or `upgrade --check` reporting one.
pub const OK: i32 = 0;

/// The command failed; the error chain is printed to stderr. Every failure
/// of a verb (bad image reference, fetch or policy error, lock held, I/O
/// error, ...) uses this code.
pub const ERROR: i32 = 1;

/// The command line could not be parsed (unknown flag, missing argument).
///
/// This is the code clap's own error exit uses; `--help` and `--version`
/// exit with [`OK`].
pub const USAGE: i32 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct() {
        assert_eq!([OK, ERROR, USAGE], [0, 1, 2]);
    }
}
