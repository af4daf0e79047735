//! Running the system tools install needs, with their errors in ours.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn check(cmd: &Command, out: &std::process::Output) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let msg = [stderr.trim(), stdout.trim()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    anyhow::bail!("`{}` failed ({}): {msg}", describe(cmd), out.status)
}

/// Run `cmd`; fail with its output when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    tracing::debug!("running {}", describe(cmd));
    let out = cmd.stdin(Stdio::null()).output().with_context(|| {
        format!(
            "Running {} (is it installed?)",
            cmd.get_program().to_string_lossy()
        )
    })?;
    check(cmd, &out)
}

/// Run `cmd` and return its stdout.
pub fn run_output(cmd: &mut Command) -> Result<String> {
    tracing::debug!("running {}", describe(cmd));
    let out = cmd.stdin(Stdio::null()).output().with_context(|| {
        format!(
            "Running {} (is it installed?)",
            cmd.get_program().to_string_lossy()
        )
    })?;
    check(cmd, &out)?;
    String::from_utf8(out.stdout)
        .with_context(|| format!("Output of `{}` is not UTF-8", describe(cmd)))
}

/// Run `cmd` with `input` on its stdin.
pub fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Result<()> {
    tracing::debug!("running {}", describe(cmd));
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!(
                "Running {} (is it installed?)",
                cmd.get_program().to_string_lossy()
            )
        })?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(input).context("Writing to stdin")?;
    drop(stdin);
    let out = child.wait_with_output().context("Waiting for command")?;
    check(cmd, &out)
}
