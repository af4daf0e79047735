//! Man pages of bootc generated from its clap definitions: `bootc(8)` and
//! one page per visible verb, named as upstream names them
//! (`bootc-upgrade(8)`, `bootc-image-pull(8)`). The checked-in copies live
//! in `docs/man/`; a test regenerates them and fails when they are stale.

use anyhow::Result;
use clap::CommandFactory;

/// `(file name, roff text)` of every page, sorted by name.
pub fn pages() -> Result<Vec<(String, Vec<u8>)>> {
    let mut cmd = bootc_lib::cli::Cli::command();
    // Propagate global options (--sysroot) into the subcommands.
    cmd.build();
    let mut out = Vec::new();
    render(&cmd, "bootc", &mut out)?;
    out.sort();
    Ok(out)
}

fn render(cmd: &clap::Command, name: &str, out: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
    let named = cmd
        .clone()
        .name(name.to_owned())
        .bin_name(name.replace('-', " "));
    let mut buf = Vec::new();
    clap_mangen::Man::new(named)
        .title(name.to_uppercase())
        .section("8")
        .manual("bootc")
        .render(&mut buf)?;
    out.push((format!("{name}.8"), buf));
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        render(sub, &format!("{name}-{}", sub.get_name()), out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The checked-in pages are the generated ones (regenerate with
    /// `cargo run -p bootc-man -- docs/man`).
    #[test]
    fn docs_man_is_current() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/man");
        let pages = pages().unwrap();
        let mut stale = Vec::new();
        for (name, text) in &pages {
            match std::fs::read(dir.join(name)) {
                Ok(old) if old == *text => {}
                Ok(_) => stale.push(format!("{name} differs")),
                Err(_) => stale.push(format!("{name} missing")),
            }
        }
        for e in std::fs::read_dir(&dir).unwrap() {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            if n.ends_with(".8") && !pages.iter().any(|(p, _)| *p == n) {
                stale.push(format!("{n} is not generated any more"));
            }
        }
        assert!(
            stale.is_empty(),
            "docs/man is stale ({}); run `cargo run -p bootc-man -- docs/man`",
            stale.join(", ")
        );
    }

    #[test]
    fn one_page_per_verb() {
        let names: Vec<_> = pages().unwrap().into_iter().map(|(n, _)| n).collect();
        for n in [
            "bootc.8",
            "bootc-upgrade.8",
            "bootc-image-pull.8",
            "bootc-container-lint.8",
            "bootc-completion.8",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} not in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("internals")));
        let (_, text) = pages()
            .unwrap()
            .into_iter()
            .find(|(n, _)| n == "bootc-upgrade.8")
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("bootc\\-upgrade") && text.contains("\\-\\-sysroot"),
            "{text}"
        );
    }
}
