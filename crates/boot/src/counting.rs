//! Boot counting: a newly finalized deployment boots on trial, with a
//! limited number of tries, until userspace says the boot was good.
//!
//! - **systemd-boot** counts by itself: the entry's file name on the ESP
//!   carries `+LEFT[-DONE]` before `.conf` ([`counted_name`],
//!   [`parse_counted_name`]); each boot of it moves one try from LEFT to DONE,
//!   and an entry with no try left sorts after the others, so the previous
//!   deployment becomes the default by itself. Blessing renames the file to
//!   its plain name.
//! - **GRUB** (BIOS) keeps the counter in its environment block
//!   (`grub/grubenv`, [`render_grubenv`], [`parse_grubenv`]): `bootc_trial`
//!   names the deployment on trial and `bootc_tries` the tries left. The
//!   generated `grub.cfg` ([`grub_trial_script`]) decrements the counter
//!   with `save_env` when the first entry is the one on trial, and picks the
//!   second entry once no try is left.
//!
//! This module is pure; the flows (starting a trial at finalization,
//! blessing, noticing a fallback) are in the `bootc` library.

use std::collections::BTreeMap;

use anyhow::Result;

/// The size of a GRUB environment block file.
pub const GRUBENV_SIZE: usize = 1024;

/// The first line of a GRUB environment block.
const GRUBENV_HEADER: &str = "# GRUB Environment Block\n";

/// The GRUB variable naming the deployment on trial.
pub const GRUB_TRIAL_VAR: &str = "bootc_trial";

/// The GRUB variable counting the tries left.
pub const GRUB_TRIES_VAR: &str = "bootc_tries";

/// The most tries a trial may get: the GRUB script counts down with one
/// `elif` per value.
pub const MAX_TRIES: u32 = 9;

/// Render a GRUB environment block holding `vars` (`name=value` lines,
/// padded with `#` to [`GRUBENV_SIZE`] bytes, as `grub-editenv` writes it).
pub fn render_grubenv(vars: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut out = String::from(GRUBENV_HEADER);
    for (k, v) in vars {
        anyhow::ensure!(
            !k.is_empty()
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !v.contains(['\n', '\\']),
            "invalid GRUB environment variable {k}={v:?}"
        );
        out.push_str(&format!("{k}={v}\n"));
    }
    anyhow::ensure!(
        out.len() <= GRUBENV_SIZE,
        "GRUB environment block overflows {GRUBENV_SIZE} bytes"
    );
    let mut bytes = out.into_bytes();
    bytes.resize(GRUBENV_SIZE, b'#');
    Ok(bytes)
}

/// The variables of a GRUB environment block (lines `name=value`; comment
/// and padding lines are skipped).
pub fn parse_grubenv(bytes: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The trial recorded in GRUB variables: (deployment id, tries left).
pub fn grub_trial(vars: &BTreeMap<String, String>) -> Option<(String, u32)> {
    let id = vars.get(GRUB_TRIAL_VAR).filter(|v| !v.is_empty())?;
    let tries = vars.get(GRUB_TRIES_VAR)?.parse().ok()?;
    Some((id.clone(), tries))
}

/// The `grub.cfg` lines that run the trial of `first_id`, the deployment of
/// the first (default) menu entry: when the environment block names it,
/// one try is used up (`save_env`), and with none left the second entry
/// becomes the default.
pub fn grub_trial_script(first_id: &str) -> String {
    let mut s = format!(
        "if [ -s \"$prefix/grubenv\" ]; then\n\
         \tload_env -f \"$prefix/grubenv\" {GRUB_TRIAL_VAR} {GRUB_TRIES_VAR}\n\
         fi\n\
         if [ \"${{{GRUB_TRIAL_VAR}}}\" = \"{first_id}\" ]; then\n\
         \tif [ \"${{{GRUB_TRIES_VAR}}}\" = \"0\" ]; then\n\
         \t\tset default=1\n"
    );
    for n in 1..=MAX_TRIES {
        s.push_str(&format!(
            "\telif [ \"${{{GRUB_TRIES_VAR}}}\" = \"{n}\" ]; then\n\
             \t\tset {GRUB_TRIES_VAR}={}\n\
             \t\tsave_env -f \"$prefix/grubenv\" {GRUB_TRIES_VAR}\n",
            n - 1
        ));
    }
    s.push_str("\telse\n\t\tset default=1\n\tfi\nfi\n");
    s
}

/// A boot entry file name with its counter: `NAME+LEFT.conf` (systemd-boot's
/// boot counting; `name` is the plain `NAME.conf`).
pub fn counted_name(name: &str, tries: u32) -> String {
    let stem = name.strip_suffix(".conf").unwrap_or(name);
    format!("{stem}+{tries}.conf")
}

/// A counted entry file name taken apart: the plain name, the tries left
/// and the tries done (0 when absent). `None` for a name without counter.
pub fn parse_counted_name(name: &str) -> Option<(String, u32, u32)> {
    let stem = name.strip_suffix(".conf")?;
    let (plain, counter) = stem.rsplit_once('+')?;
    let (left, done) = match counter.split_once('-') {
        Some((l, d)) => (l.parse().ok()?, d.parse().ok()?),
        None => (counter.parse().ok()?, 0),
    };
    (!plain.is_empty()).then(|| (format!("{plain}.conf"), left, done))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grubenv_round_trip() {
        let mut vars = BTreeMap::new();
        vars.insert(GRUB_TRIAL_VAR.to_owned(), "ab".repeat(32));
        vars.insert(GRUB_TRIES_VAR.to_owned(), "3".to_owned());
        let bytes = render_grubenv(&vars).unwrap();
        assert_eq!(bytes.len(), GRUBENV_SIZE);
        assert!(bytes.starts_with(GRUBENV_HEADER.as_bytes()));
        assert!(bytes.ends_with(b"###"));
        assert_eq!(parse_grubenv(&bytes), vars);
        assert_eq!(grub_trial(&vars), Some(("ab".repeat(32), 3)));
        assert_eq!(grub_trial(&BTreeMap::new()), None);
        // What grub-editenv writes after `save_env` changed a value.
        let edited = parse_grubenv(b"# GRUB Environment Block\nbootc_tries=0\nbootc_trial=x\n####");
        assert_eq!(grub_trial(&edited), Some(("x".to_owned(), 0)));
    }

    /// Needs grub-editenv (grub-common): GRUB's tool reads our block, and
    /// we read what it writes.
    #[test]
    fn grub_editenv_agrees() {
        let td = tempfile::tempdir().unwrap();
        let p = td.path().join("grubenv");
        let vars = BTreeMap::from([
            (GRUB_TRIAL_VAR.to_owned(), "ab".repeat(32)),
            (GRUB_TRIES_VAR.to_owned(), "2".to_owned()),
        ]);
        std::fs::write(&p, render_grubenv(&vars).unwrap()).unwrap();
        let Ok(out) = std::process::Command::new("grub-editenv")
            .arg(&p)
            .arg("list")
            .output()
        else {
            eprintln!("skipping: grub-editenv missing");
            return;
        };
        assert!(out.status.success());
        let listed = String::from_utf8_lossy(&out.stdout);
        assert!(
            listed.contains(&format!("bootc_trial={}", "ab".repeat(32))),
            "{listed}"
        );
        assert!(listed.contains("bootc_tries=2"), "{listed}");
        let st = std::process::Command::new("grub-editenv")
            .arg(&p)
            .args(["set", "bootc_tries=1"])
            .status()
            .unwrap();
        assert!(st.success());
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes.len(), GRUBENV_SIZE);
        assert_eq!(
            grub_trial(&parse_grubenv(&bytes)),
            Some(("ab".repeat(32), 1))
        );
    }

    #[test]
    fn grubenv_refuses_bad_input() {
        for (k, v) in [
            ("a b", "1"),
            ("", "1"),
            ("k", "a\nb"),
            ("k", &"x".repeat(1100)),
        ] {
            let vars = BTreeMap::from([(k.to_owned(), v.to_owned())]);
            assert!(render_grubenv(&vars).is_err(), "{k:?}={v:?}");
        }
    }

    #[test]
    fn trial_script_counts_down() {
        let s = grub_trial_script("abc");
        assert!(s.contains("if [ \"${bootc_trial}\" = \"abc\" ]; then"));
        assert!(s.contains(
            "elif [ \"${bootc_tries}\" = \"3\" ]; then\n\t\tset bootc_tries=2\n\t\tsave_env -f \"$prefix/grubenv\" bootc_tries\n"
        ));
        assert!(s.contains("if [ \"${bootc_tries}\" = \"0\" ]; then\n\t\tset default=1\n"));
        // Balanced: every `if` has its `fi`.
        let ifs = s
            .lines()
            .filter(|l| l.trim_start().starts_with("if "))
            .count();
        let fis = s.lines().filter(|l| l.trim() == "fi").count();
        assert_eq!(ifs, fis);
    }

    #[test]
    fn counted_names() {
        assert_eq!(
            counted_name("bootc-default-3.conf", 2),
            "bootc-default-3+2.conf"
        );
        let cases: &[(&str, Option<(&str, u32, u32)>)] = &[
            (
                "bootc-default-3+2.conf",
                Some(("bootc-default-3.conf", 2, 0)),
            ),
            (
                "bootc-default-3+0-2.conf",
                Some(("bootc-default-3.conf", 0, 2)),
            ),
            (
                "bootc-default-3+1-1.conf",
                Some(("bootc-default-3.conf", 1, 1)),
            ),
            ("bootc-default-3.conf", None),
            ("+1.conf", None),
            ("x+a.conf", None),
            ("x+1", None),
        ];
        for (name, expect) in cases {
            let got = parse_counted_name(name);
            let expect = expect.map(|(p, l, d)| (p.to_owned(), l, d));
            assert_eq!(got, expect, "{name}");
        }
    }
}
