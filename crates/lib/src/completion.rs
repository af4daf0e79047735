//! `bootc completion bash|zsh|fish`: shell completion scripts generated from
//! the clap definitions, which `cli` hands in (so this verb does not import
//! `cli`). Tested from outside the crate: `tests/completion.rs`.

/// The shells we write completions for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    /// bash (bash-completion).
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
}

/// Arguments of `bootc completion`.
#[derive(Debug, clap::Args)]
pub struct CompletionArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// The completion script for `shell`.
pub fn script(shell: Shell, mut cmd: clap::Command) -> Vec<u8> {
    let mut out = Vec::new();
    let s = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(s, &mut cmd, "bootc", &mut out);
    out
}

/// Print the completion script.
pub fn run(args: &CompletionArgs, cmd: clap::Command) -> anyhow::Result<()> {
    use std::io::Write;
    std::io::stdout().lock().write_all(&script(args.shell, cmd))?;
    Ok(())
}
