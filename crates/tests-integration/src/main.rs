//! The root integration test binary (`cargo test -p bootc-tests-integration`).
//!
//! One registry serves every test and is stopped (by pid) when the run ends.
//! Tests that need root are skipped with a message when not run as root.

mod boot;
mod deps;
mod diskfull;
mod diskfull_eio;
mod fidelity;
mod hostile;
mod guest;
mod lifecycle;
mod powercut;
mod lint;
mod packaging;
mod pull;
mod signed;
mod signed_offline;
mod signed_sigstore;
mod unattended;

use std::sync::Arc;

use anyhow::Result;
use bootc_tests_integration::{Bootc, Registry};
use libtest_mimic::{Arguments, Trial};

/// What every test gets.
pub struct Ctx {
    /// The shared registry.
    pub registry: Registry,
    /// The bootc under test, configured to trust the registry over HTTP.
    pub bootc: Bootc,
}

type TestFn = fn(&Ctx) -> Result<()>;

fn main() -> Result<()> {
    let args = Arguments::from_args();
    let root = rustix::process::geteuid().is_root();
    // The long VM scenarios first, so that they start together on the two
    // test threads and the short tests fill in around them.
    let tests: Vec<(&str, TestFn)> = lifecycle::TESTS
        .iter()
        .chain(unattended::TESTS)
        .chain(boot::TESTS)
        .chain(pull::TESTS)
        .chain(hostile::TESTS)
        .chain(deps::TESTS)
        .chain(signed::TESTS)
        .chain(guest::TESTS)
        .chain(powercut::TESTS)
        .chain(diskfull::TESTS)
        .chain(diskfull_eio::KNOWN_BUG)
        .chain(powercut::LONG)
        .chain(fidelity::TESTS)
        .chain(signed_sigstore::TESTS)
        .chain(signed_offline::TESTS)
        .chain(lint::TESTS)
        .chain(packaging::TESTS)
        .copied()
        .collect();
    let ctx = if root && !args.list {
        let registry = Registry::start()?;
        let bootc = Bootc::new(&[&registry.addr])?;
        Some(Arc::new(Ctx { registry, bootc }))
    } else {
        None
    };
    let trials = tests
        .into_iter()
        .map(|(name, f)| {
            let ctx = ctx.clone();
            Trial::test(name, move || match ctx {
                Some(ctx) => f(&ctx).map_err(|e| format!("{e:#}").into()),
                None => Err("these tests need root".into()),
            })
            // The long reliability sweeps and a test of a known bug run only
            // with --ignored (scripts/reliability.sh).
            .with_ignored_flag(
                !root
                    || powercut::LONG
                        .iter()
                        .chain(diskfull_eio::KNOWN_BUG)
                        .any(|(n, _)| *n == name),
            )
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    // Stop the registry before exiting; exit() skips destructors.
    drop(ctx);
    conclusion.exit()
}
