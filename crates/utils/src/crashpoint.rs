//! Named crash points: every durable step of a transaction calls [`point`]
//! with a dotted name (`stage.deployment-dir-renamed`, `esp.entries-flushed`).
//!
//! In normal runs a point costs one relaxed atomic load. The reliability
//! tests drive it through the environment:
//!
//! - `BOOTC_CRASH_LOG=FILE`: append one line per point reached,
//!   `<n> <name>` (`n` counts from 1 in this process), so a test can list
//!   the points an operation passes through;
//! - `BOOTC_CRASH_AT=N`: at the N-th point reached, the process kills
//!   itself with `SIGKILL` (no destructor, no `atexit`, no unwinding, no
//!   buffered write flushed: what a power cut or `systemctl kill` leaves);
//! - `BOOTC_CRASH_AT=NAME`: the same at the first point with that name.
//!
//! The point is reached *after* the step it names is done: crashing at
//! `stage.deployment-dir-renamed` means the rename happened.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Exit status a test sees for a process stopped at a crash point
/// (128 + SIGKILL, as a shell reports it).
pub const CRASH_STATUS: i32 = 137;

enum Target {
    Nth(u64),
    Named(String),
}

struct Config {
    log: Option<std::path::PathBuf>,
    at: Option<Target>,
}

fn config() -> Option<&'static Config> {
    static CONFIG: OnceLock<Option<Config>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let log = std::env::var_os("BOOTC_CRASH_LOG").map(std::path::PathBuf::from);
            let at = std::env::var("BOOTC_CRASH_AT").ok().filter(|s| !s.is_empty()).map(|s| {
                match s.parse::<u64>() {
                    Ok(n) => Target::Nth(n),
                    Err(_) => Target::Named(s),
                }
            });
            (log.is_some() || at.is_some()).then_some(Config { log, at })
        })
        .as_ref()
}

/// Mark that the durable step `name` is complete. See the module doc.
pub fn point(name: &str) {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let Some(cfg) = config() else { return };
    let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(log) = &cfg.log {
        // Best effort by design: a test that cannot log sees no points and fails.
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = writeln!(f, "{n} {name}");
        }
    }
    let hit = match &cfg.at {
        Some(Target::Nth(k)) => *k == n,
        Some(Target::Named(s)) => s == name,
        None => false,
    };
    if hit {
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // kill(2) of ourselves with SIGKILL does not return; be sure anyway.
        std::process::abort();
    }
}

/// Parse a crash log written through `BOOTC_CRASH_LOG` into point names, in order.
pub fn parse_log(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_once(' ').map(|(_, name)| name.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_log_keeps_order_and_names() {
        let names = parse_log("1 stage.a\n2 stage.b c\n\n");
        assert_eq!(names, vec!["stage.a".to_string(), "stage.b c".to_string()]);
    }
}
