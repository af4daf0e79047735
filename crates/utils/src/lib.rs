//! Small helpers shared by every bootc crate; depends on std and a few core crates only.
//!
//! - [`run_main`]: process set-up and the single place where an error is printed.

use std::io::Write;

/// Exit code for a command that failed with an error.
pub const EXIT_FAILURE: i32 = 1;

/// Initialise logging from `RUST_LOG` (default: warnings), run `result`'s
/// computation, print an error chain once with `{:#}` and exit.
///
/// A broken pipe on stdout (`bootc status | head`) exits quietly.
pub fn run_main(result: anyhow::Result<()>) -> ! {
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            let broken_pipe = e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            });
            if broken_pipe {
                std::process::exit(0);
            }
            let _ = std::io::stdout().flush();
            eprintln!("error: {e:#}");
            std::process::exit(EXIT_FAILURE)
        }
    }
}

/// Initialise the tracing subscriber; logs go to stderr, filtered by `RUST_LOG`.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .try_init();
}
