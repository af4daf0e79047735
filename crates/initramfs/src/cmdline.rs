//! The kernel command line: which deployment to boot.
//!
//! Boot entries written by bootc carry `composefs=<ID>` (the hex fs-verity id
//! of the deployment's EROFS image) and `bootc.stateroot=<NAME>`. This module
//! splits `/proc/cmdline` the way the kernel does and picks those two out.

use anyhow::{Result, bail};

/// The kernel argument naming the deployment's composefs image.
pub const KARG_DEPLOYMENT: &str = "composefs";

/// The kernel argument naming the stateroot whose `/var` the deployment uses.
pub const KARG_STATEROOT: &str = "bootc.stateroot";

/// The stateroot used when the command line names none.
pub const DEFAULT_STATEROOT: &str = "default";

/// Length of a deployment id: a SHA-256 fs-verity digest in hex.
const DEPLOYMENT_ID_LEN: usize = 64;

/// What the kernel command line says to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootArgs {
    /// The deployment id: the composefs image's fs-verity digest, 64 lowercase hex characters.
    pub deployment: String,
    /// The stateroot whose shared `/var` is mounted.
    pub stateroot: String,
}

/// One kernel parameter: `key` or `key=value`, quotes removed as the kernel does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param<'a> {
    /// The name, before the first `=`.
    pub key: &'a str,
    /// The value after the first `=`, if there is one.
    pub value: Option<&'a str>,
}

/// Split a kernel command line into parameters.
///
/// Parameters are separated by whitespace outside double quotes. Like the
/// kernel, a quote that opens the parameter and the one that closes it are
/// removed (`"a=b c"`), as are the quotes around a value (`a="b c"`); other
/// quotes stay. Parsing stops at a lone `--`: what follows belongs to init.
pub fn split_params(cmdline: &str) -> Vec<Param<'_>> {
    let mut params = Vec::new();
    let mut rest = cmdline.trim_start();
    while !rest.is_empty() {
        let (token, tail) = next_token(rest);
        rest = tail.trim_start();
        if token == "--" {
            break;
        }
        params.push(parse_param(token));
    }
    params
}

/// The first token of `s` (which starts with a non-space) and what follows it.
fn next_token(s: &str) -> (&str, &str) {
    let mut in_quote = false;
    for (i, c) in s.char_indices() {
        if c == '"' {
            in_quote = !in_quote;
        } else if c.is_whitespace() && !in_quote {
            return (&s[..i], &s[i..]);
        }
    }
    (s, "")
}

/// Split one token into key and value and remove its quoting.
fn parse_param(token: &str) -> Param<'_> {
    // A token that opens with a quote loses it, and its closing quote.
    let token = match token.strip_prefix('"') {
        Some(inner) => inner.strip_suffix('"').unwrap_or(inner),
        None => token,
    };
    match token.split_once('=') {
        None => Param {
            key: token,
            value: None,
        },
        Some((key, value)) => {
            let value = match value.strip_prefix('"') {
                Some(inner) => inner.strip_suffix('"').unwrap_or(inner),
                None => value,
            };
            Param {
                key,
                value: Some(value),
            }
        }
    }
}

/// Find the deployment to boot in a kernel command line.
///
/// `composefs=<ID>` is required; when a parameter is repeated the last one
/// counts, as for most kernel parameters.
pub fn parse_boot_args(cmdline: &str) -> Result<BootArgs> {
    let mut deployment = None;
    let mut stateroot = None;
    for param in split_params(cmdline) {
        match param.key {
            KARG_DEPLOYMENT => deployment = Some(param.value.unwrap_or("")),
            KARG_STATEROOT => stateroot = Some(param.value.unwrap_or("")),
            _ => {}
        }
    }
    let Some(deployment) = deployment else {
        bail!("the kernel command line has no {KARG_DEPLOYMENT}=<deployment id>");
    };
    if deployment.len() != DEPLOYMENT_ID_LEN
        || !deployment
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        bail!(
            "invalid {KARG_DEPLOYMENT}={deployment:?}: expected {DEPLOYMENT_ID_LEN} lowercase hex characters"
        );
    }
    let stateroot = stateroot.unwrap_or(DEFAULT_STATEROOT);
    if stateroot.is_empty() || stateroot == "." || stateroot == ".." || stateroot.contains('/') {
        bail!("invalid {KARG_STATEROOT}={stateroot:?}: expected a directory name");
    }
    Ok(BootArgs {
        deployment: deployment.to_owned(),
        stateroot: stateroot.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1c3b0e8a4d5c6b7a8998877665544332211ffeeddccbbaa00112233445566a";

    /// Expected parameters: key and value.
    type Expected<'a> = &'a [(&'a str, Option<&'a str>)];

    fn check_split(cmdline: &str, expect: Expected<'_>) {
        let got: Vec<_> = split_params(cmdline)
            .into_iter()
            .map(|p| (p.key, p.value))
            .collect();
        assert_eq!(got, expect, "cmdline {cmdline:?}");
    }

    #[test]
    fn split() {
        let cases: &[(&str, Expected<'_>)] = &[
            ("", &[]),
            ("   \n", &[]),
            ("ro quiet", &[("ro", None), ("quiet", None)]),
            (
                "root=UUID=abc rw\n",
                &[("root", Some("UUID=abc")), ("rw", None)],
            ),
            ("empty=", &[("empty", Some(""))]),
            ("a=\"b c\" d", &[("a", Some("b c")), ("d", None)]),
            ("\"a=b c\" d", &[("a", Some("b c")), ("d", None)]),
            ("a=x\"y z\"w", &[("a", Some("x\"y z\"w"))]),
            ("a=\"unterminated b", &[("a", Some("unterminated b"))]),
            ("x -- composefs=1", &[("x", None)]),
            ("x --y", &[("x", None), ("--y", None)]),
            (
                "\tconsole=ttyS0,115200  console=tty0",
                &[("console", Some("ttyS0,115200")), ("console", Some("tty0"))],
            ),
        ];
        for (cmdline, expect) in cases {
            check_split(cmdline, expect);
        }
    }

    #[test]
    fn boot_args_ok() {
        let cases: &[(String, &str)] = &[
            (format!("root=UUID=x rw composefs={ID}"), "default"),
            (format!("composefs={ID} bootc.stateroot=prod"), "prod"),
            (
                format!("bootc.stateroot=\"prod\" \"composefs={ID}\""),
                "prod",
            ),
            (format!("composefs=00 composefs={ID}"), "default"),
        ];
        for (cmdline, stateroot) in cases {
            let args = parse_boot_args(cmdline).unwrap();
            assert_eq!(
                args,
                BootArgs {
                    deployment: ID.into(),
                    stateroot: (*stateroot).into()
                },
                "cmdline {cmdline:?}"
            );
        }
    }

    #[test]
    fn boot_args_errors() {
        let upper = ID.to_ascii_uppercase();
        let cases: &[(String, &str)] = &[
            ("root=/dev/vda rw".into(), "has no composefs="),
            ("composefs".into(), "invalid composefs=\"\""),
            ("composefs=abc".into(), "expected 64 lowercase hex"),
            (format!("composefs={upper}"), "expected 64 lowercase hex"),
            (
                format!("composefs=?{}", &ID[1..]),
                "expected 64 lowercase hex",
            ),
            (format!("composefs={ID}0"), "expected 64 lowercase hex"),
            (format!("-- composefs={ID}"), "has no composefs="),
            (
                format!("composefs={ID} bootc.stateroot="),
                "invalid bootc.stateroot",
            ),
            (
                format!("composefs={ID} bootc.stateroot=a/b"),
                "invalid bootc.stateroot",
            ),
            (
                format!("composefs={ID} bootc.stateroot=.."),
                "invalid bootc.stateroot",
            ),
        ];
        for (cmdline, expect) in cases {
            let err = parse_boot_args(cmdline).unwrap_err().to_string();
            assert!(err.contains(expect), "cmdline {cmdline:?}: {err}");
        }
    }
}
