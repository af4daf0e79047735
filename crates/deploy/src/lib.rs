//! The engine: every transaction on a sysroot, each a sequence of named
//! steps ([`steps`]). It knows no command line and prints nothing: each
//! transaction returns a typed outcome and tells a [`Reporter`] what
//! happens on the way.
//!
//! - [`target`]: the host being changed ([`Target`]), the writer lock, the
//!   boot order, boot files and entries shared by the transactions.
//! - [`stage`]: a pulled image becomes the staged deployment.
//! - [`finalize`]: the staged deployment becomes the default (/etc merge,
//!   then entries in one atomic step), then [`prune`].
//! - [`apply`]: updates end to end (stage, then finalize or arm the
//!   shutdown unit), download-only and `--from-downloaded`.
//! - [`rollback`]: the rollback deployment becomes the default.
//! - [`trial`]: boot trials, blessing, and falling back from a failed trial.
//! - [`prune`]: removing old deployments, their boot files and GC roots;
//!   store garbage collection.
//! - [`deployments`]: the deployments by role and the host they make
//!   (`status`); pinning.
//! - [`kargs`]: kernel arguments owned by named sources.
//! - [`seal`]: fs-verity mode of the store.
//! - [`usr_overlay`]: the transient overlay on `/usr` of the running host.
//! - [`space`]: cost and free-space checks, `upgrade --check`.
//! - [`diff`]: what changes between the base and the staged deployment.
//! - [`policy`]: the pure rules (boot orders, what pruning keeps, space).
//! - [`report`]: the [`Reporter`] trait the command line implements.
//! - [`steps`]: the names of every durable step, per transaction, for
//!   `bootc_utils::crashpoint::point` and the crash tests (`BOOTC_CRASH_AT`).

pub mod apply;
pub mod deployments;
pub mod diff;
pub mod finalize;
pub mod kargs;
pub mod policy;
pub mod prune;
pub mod report;
pub mod rollback;
pub mod seal;
pub mod space;
pub mod stage;
pub mod steps;
pub mod target;
pub mod trial;
pub mod usr_overlay;

pub use report::{Reporter, Silent};
pub use target::Target;
