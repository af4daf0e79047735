//! The image's bootc can read the deployment records the running bootc
//! writes. After an update the image's bootc runs the host: if it supports a
//! lower deployment format version than the bootc that staged it, it
//! refuses the records (`UnsupportedFormat`), and status, upgrade and
//! rollback stop working.
//!
//! Each bootc binary carries the version it reads as the marker
//! [`MARKER`]; the check finds it in the image's /usr/bin/bootc without
//! running it (the image may be for another architecture, and nothing of an
//! image tree is executed).

use anyhow::{Context, Result};
use bootc_sysroot::deployment::FORMAT_VERSION;
use cap_std_ext::cap_std::fs::Dir;
use cap_std_ext::dirext::CapStdExtDirExt;

use crate::{Finding, Lint, Severity};

/// The marker in every bootc binary: prefix, the highest deployment format
/// version it reads, `;`. Kept equal to [`FORMAT_VERSION`] by a test.
pub static MARKER: &str = "bootc-deployment-format-version=1;";

/// The version this binary's marker states (read through `black_box` so
/// that the marker stays in the binary).
pub fn own_version() -> u32 {
    let m: &str = std::hint::black_box(MARKER);
    parse_markers(m.as_bytes())
        .into_iter()
        .max()
        .unwrap_or(FORMAT_VERSION)
}

/// Every marker version found in `bytes`.
pub fn parse_markers(bytes: &[u8]) -> Vec<u32> {
    // Built at run time so that the search string itself is not a marker.
    let prefix = ["bootc-deployment-", "format-version="].concat();
    let p = prefix.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while let Some(off) = bytes[i..].windows(p.len()).position(|w| w == p) {
        let start = i + off + p.len();
        let digits = bytes[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits > 0 && bytes.get(start + digits) == Some(&b';') {
            if let Ok(v) = std::str::from_utf8(&bytes[start..start + digits])
                .unwrap_or("")
                .parse()
            {
                found.push(v);
            }
        }
        i = start;
    }
    found
}

/// The image's bootc reads our format.
pub const STORE_FORMAT: Lint = Lint {
    name: "store-format",
    severity: Severity::Error,
    description: "the image's /usr/bin/bootc reads the deployment format version of the running bootc",
    run: check_store_format,
};

fn check_store_format(root: &Dir) -> Result<Vec<Finding>> {
    let ours = own_version();
    let path = "usr/bin/bootc";
    let m = root.symlink_metadata_optional(path)?;
    let fix = "install a bootc at least as new as the one on your hosts (the bootc package), as /usr/bin/bootc";
    if !m.as_ref().is_some_and(|m| m.is_file()) {
        return Ok(vec![Finding::new(
            path,
            "missing (or not a regular file): a host updated to this image has no bootc to update it again",
            fix,
        )]);
    }
    let bytes = root
        .read(path)
        .with_context(|| format!("Reading /{path}"))?;
    let theirs = parse_markers(&bytes).into_iter().max();
    Ok(match theirs {
        None => vec![Finding::new(
            path,
            format!(
                "does not state which deployment format it reads (an older bootc?); the running bootc writes version {ours}"
            ),
            fix,
        )],
        Some(v) if v < ours => vec![Finding::new(
            path,
            format!(
                "reads deployment format up to version {v}, but the running bootc writes version {ours}: after the update it would refuse the host's deployments"
            ),
            fix,
        )],
        Some(_) => vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{file, tree};

    #[test]
    fn marker_matches_the_format_version() {
        assert_eq!(own_version(), FORMAT_VERSION);
        assert_eq!(parse_markers(MARKER.as_bytes()), [FORMAT_VERSION]);
    }

    #[test]
    fn store_format() {
        let t = tree();
        assert!(
            check_store_format(&t).unwrap()[0]
                .problem
                .starts_with("missing")
        );
        file(&t, "usr/bin/bootc", b"\x7fELF\0no marker here");
        assert!(
            check_store_format(&t).unwrap()[0]
                .problem
                .contains("does not state")
        );
        file(
            &t,
            "usr/bin/bootc",
            b"\x7fELF\0bootc-deployment-format-version=0;\0",
        );
        let f = check_store_format(&t).unwrap();
        assert!(f[0].problem.contains("up to version 0"), "{}", f[0].problem);
        let mut bin = b"\x7fELF\0bootc-deployment-format-version=x\0".to_vec();
        bin.extend_from_slice(MARKER.as_bytes());
        file(&t, "usr/bin/bootc", &bin);
        assert!(check_store_format(&t).unwrap().is_empty());
    }
}
