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

    /// Load the bash script into bash and drive its completion function the
    /// way readline does (COMP_WORDS, COMP_CWORD); print COMPREPLY.
    fn complete(words: &[&str]) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bootc.bash");
        std::fs::write(&path, script(Shell::Bash)).unwrap();
        let words_sh: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let prog = format!(
            r#"source '{}'
fn=$(complete -p bootc | sed -n 's/.*-F \([^ ]*\).*/\1/p')
COMP_WORDS=({})
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE="${{COMP_WORDS[*]}}"
COMP_POINT=${{#COMP_LINE}}
"$fn" bootc "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
            path.display(),
            words_sh.join(" ")
        );
        let out = std::process::Command::new("bash")
            .args(["--norc", "--noprofile", "-c", &prog])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect()
    }

    #[test]
    fn bash_completes_a_verb_and_a_flag() {
        assert_eq!(complete(&["bootc", "upg"]), ["upgrade"]);
        let verbs = complete(&["bootc", "co"]);
        assert_eq!(verbs, ["container", "completion"]);
        assert_eq!(complete(&["bootc", "upgrade", "--ch"]), ["--check"]);
        assert_eq!(
            complete(&["bootc", "container", "lint", "--fatal"]),
            ["--fatal-warnings"]
        );
    }
}
