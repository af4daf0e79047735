//! The engine: every transaction on a sysroot (stage, finalize, rollback,
//! boot trials, prune) as a sequence of named steps.
//!
//! Work in progress (issue 9): only the step names exist here so far; the
//! transactions themselves still live in `bootc-lib` and `bootc-sysroot`.
//!
//! - [`steps`]: the names of every durable step, per transaction, for
//!   `bootc_utils::crashpoint::point` and the crash tests (`BOOTC_CRASH_AT`).

pub mod steps;
