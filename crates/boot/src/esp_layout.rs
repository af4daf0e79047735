//! The names of boot entries on the ESP and what systemd-boot makes of
//! them (pure; the mtools side is in [`crate::esp`]).
//!
//! Each set of entries written by [`crate::esp::Esp::write_entries`] is a
//! *generation* `G`: entry `NAME.conf` is the file `gG-NAME.conf` in
//! `loader/entries`, first written as `gG-NAME.conf.new` (a name
//! systemd-boot ignores). Files of older versions of bootc (no `gG-`
//! prefix) are generation 0.

use std::cmp::Ordering;

use crate::bls::BlsEntry;
use crate::counting::parse_counted_name;

/// The suffix of an entry file whose contents are written but not yet
/// flushed and named: systemd-boot reads only `*.conf`.
pub const PENDING_SUFFIX: &str = ".new";

/// An entry file name in `loader/entries` taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskName {
    /// The generation (0 for names without a `gG-` prefix).
    pub generation: u64,
    /// The entry's name as callers know it (`bootc-default-1.conf`).
    pub name: String,
    /// Written as [`PENDING_SUFFIX`], not yet visible to the boot loader.
    pub pending: bool,
}

/// The file name of entry `name` in generation `generation`.
pub fn disk_name(generation: u64, name: &str) -> String {
    format!("g{generation}-{name}")
}

/// Take apart a file name of `loader/entries`; `None` for files that are
/// neither an entry nor a pending one.
pub fn parse_disk_name(file: &str) -> Option<DiskName> {
    let (file, pending) = match file.strip_suffix(PENDING_SUFFIX) {
        Some(f) => (f, true),
        None => (file, false),
    };
    if !file.ends_with(".conf") {
        return None;
    }
    let split = file
        .strip_prefix('g')
        .and_then(|r| r.split_once('-'))
        .and_then(|(g, rest)| Some((g.parse::<u64>().ok()?, rest)))
        .filter(|(_, rest)| rest.len() > ".conf".len());
    let (generation, name) = match split {
        Some((g, rest)) => (g, rest.to_owned()),
        None => (0, file.to_owned()),
    };
    Some(DiskName {
        generation,
        name,
        pending,
    })
}

/// The tries left that systemd-boot reads in entry file `file`'s name.
fn tries_left(file: &str) -> Option<u32> {
    parse_counted_name(file).map(|(_, left, _)| left)
}

/// systemd-boot's order of entries (file name, entry): entries with no try
/// left last, then by sort key and highest version ([`BlsEntry`]'s menu
/// order), then by file name, highest first.
pub fn loader_order(a: (&str, &BlsEntry), b: (&str, &BlsEntry)) -> Ordering {
    let exhausted = |f: &str| tries_left(f) == Some(0);
    exhausted(a.0)
        .cmp(&exhausted(b.0))
        .then_with(|| a.1.menu_order(b.1))
        .then_with(|| b.0.cmp(a.0))
}

/// The `default` pattern of a `loader.conf` (systemd-boot's glob on entry
/// ids), if any.
pub fn loader_conf_default(loader_conf: &str) -> Option<String> {
    loader_conf.lines().find_map(|l| {
        let l = l.trim();
        let (k, v) = l.split_once(char::is_whitespace)?;
        (k == "default").then(|| v.trim().to_owned())
    })
}

/// Whether `pattern` (a glob of `*` and `?`) matches `text`.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob_match(&pattern[1..], text) || (!text.is_empty() && glob_match(pattern, &text[1..]))
        }
        (Some(p), Some(t)) if *p == b'?' || p == t => glob_match(&pattern[1..], &text[1..]),
        _ => false,
    }
}

/// The entry systemd-boot boots without user input, given `loader.conf` and
/// the visible entries (file name, entry) of `loader/entries`: the one the
/// `default` pattern matches, else the first in [`loader_order`].
pub fn default_entry<'a>(
    loader_conf: &str,
    entries: &'a [(String, BlsEntry)],
) -> Option<&'a (String, BlsEntry)> {
    let mut sorted: Vec<&(String, BlsEntry)> = entries.iter().collect();
    sorted.sort_by(|a, b| loader_order((&a.0, &a.1), (&b.0, &b.1)));
    if let Some(pat) = loader_conf_default(loader_conf)
        && let Some(e) = sorted.iter().find(|(f, _)| glob_match(pat.as_bytes(), f.as_bytes()))
    {
        return Some(e);
    }
    sorted.first().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let n = disk_name(7, "bootc-default-2+3.conf");
        assert_eq!(n, "g7-bootc-default-2+3.conf");
        assert_eq!(
            parse_disk_name(&n),
            Some(DiskName {
                generation: 7,
                name: "bootc-default-2+3.conf".into(),
                pending: false
            })
        );
        assert_eq!(
            parse_disk_name(&format!("{n}{PENDING_SUFFIX}")).map(|d| d.pending),
            Some(true)
        );
        // Names of older versions: generation 0.
        assert_eq!(
            parse_disk_name("bootc-default-1.conf").map(|d| (d.generation, d.name)),
            Some((0, "bootc-default-1.conf".into()))
        );
        assert_eq!(parse_disk_name("g1-.conf").map(|d| d.generation), Some(0));
        assert_eq!(parse_disk_name("README"), None);
    }

    fn entry(v: u64, key: &str) -> BlsEntry {
        BlsEntry::for_deployment("OS", v, "ab", "rw", key)
    }

    #[test]
    fn picks_default_like_systemd_boot() {
        let es = vec![
            ("g1-a-1.conf".to_owned(), entry(1, "default")),
            ("g1-a-2+0-3.conf".to_owned(), entry(2, "default")),
            ("g2-a-2.conf".to_owned(), entry(2, "default")),
        ];
        // The exhausted trial sorts last; of equal versions the higher name wins.
        assert_eq!(default_entry("timeout 3\n", &es).unwrap().0, "g2-a-2.conf");
        assert_eq!(
            default_entry("default g1-a-1*\n", &es).unwrap().0,
            "g1-a-1.conf"
        );
        assert_eq!(default_entry("default nothing\n", &es).unwrap().0, "g2-a-2.conf");
        assert!(default_entry("", &[]).is_none());
        assert!(glob_match(b"a*c?", b"abbcd"));
        assert!(!glob_match(b"a*c", b"abd"));
    }
}
