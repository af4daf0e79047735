//! `bootc completion`: the generated scripts name the verbs, and bash,
//! loaded with the bash script, completes a verb and a flag.

use bootc_lib::cli::Cli;
use bootc_lib::completion::{Shell, script};
use clap::CommandFactory;

#[test]
fn scripts_name_the_verbs() {
    for s in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let text = String::from_utf8(script(s, Cli::command())).unwrap();
        assert!(text.contains("upgrade") && text.contains("lint"), "{s:?}");
    }
}

/// Load the bash script into bash and drive its completion function the
/// way readline does (COMP_WORDS, COMP_CWORD); print COMPREPLY.
fn complete(words: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bootc.bash");
    std::fs::write(&path, script(Shell::Bash, Cli::command())).unwrap();
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
