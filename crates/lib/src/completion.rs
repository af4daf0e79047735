//! `bootc completion bash|zsh|fish`: shell completion scripts generated from
//! the clap definitions of [`crate::cli::Cli`].

use clap::CommandFactory;

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
pub fn script(shell: Shell) -> Vec<u8> {
    let mut cmd = crate::cli::Cli::command();
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
pub fn run(args: &CompletionArgs) -> anyhow::Result<()> {
    use std::io::Write;
    std::io::stdout().lock().write_all(&script(args.shell))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_name_the_verbs() {
        for s in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let text = String::from_utf8(script(s)).unwrap();
            assert!(text.contains("upgrade") && text.contains("lint"), "{s:?}");
        }
    }
}
