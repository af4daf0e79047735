//! Small helpers shared by every bootc crate; depends on std and a few core crates only.
//!
//! - [`run_main`]: process set-up and the single place where an error is printed.
//! - [`split_cmdline`]: kernel command lines (and BLS `options`) into arguments.
//! - [`crashpoint`]: named crash points of durable steps, for the reliability tests.
//! - [`base64`]: standard base64 encoding.
//! - [`mountinfo`]: `/proc/self/mountinfo` field unescaping.

use std::io::Write;

pub mod base64;
pub mod crashpoint;
pub mod mountinfo;

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

/// Split a kernel command line (or a BLS `options` line) into arguments the
/// way the kernel does: on whitespace, except inside double quotes, which
/// are removed.
pub fn split_cmdline(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut any = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                any = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn splits_cmdline() {
        let cases: &[(&str, &[&str])] = &[
            ("root=UUID=x rw", &["root=UUID=x", "rw"]),
            ("a=\"b c\"  d", &["a=b c", "d"]),
            ("", &[]),
        ];
        for (input, expect) in cases {
            assert_eq!(super::split_cmdline(input), *expect, "{input}");
        }
    }
}
