//! The kernel command line: splitting it and finding the deployment selector.

/// The kernel argument naming the booted deployment: `composefs=<ID>`.
pub const DEPLOYMENT_KARG: &str = "composefs";

/// The kernel argument naming the stateroot: `bootc.stateroot=<NAME>`.
pub const STATEROOT_KARG: &str = "bootc.stateroot";

pub use bootc_utils::split_cmdline;

/// The value of the last `key=value` argument of `cmdline`.
pub fn karg_value(cmdline: &str, key: &str) -> Option<String> {
    split_cmdline(cmdline)
        .into_iter()
        .rev()
        .find_map(|a| a.strip_prefix(key)?.strip_prefix('=').map(str::to_owned))
}

/// The deployment id selected by `composefs=<ID>` on `cmdline`, if any and
/// if it looks like a deployment id (lowercase hex).
pub fn booted_deployment_id(cmdline: &str) -> Option<String> {
    karg_value(cmdline, DEPLOYMENT_KARG).filter(|id| is_valid_id(id))
}

/// The stateroot named by `bootc.stateroot=` on `cmdline`, else the default.
pub fn stateroot_of(cmdline: &str) -> String {
    karg_value(cmdline, STATEROOT_KARG)
        .filter(|s| crate::is_valid_stateroot(s))
        .unwrap_or_else(|| crate::DEFAULT_STATEROOT.to_owned())
}

/// Whether `id` has the form of a deployment id: the hex fs-verity digest
/// of an EROFS image (SHA-256 or SHA-512).
pub fn is_valid_id(id: &str) -> bool {
    matches!(id.len(), 64 | 128) && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn splits_like_the_kernel() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("  a  b\tc\n", &["a", "b", "c"]),
            ("root=UUID=x rw", &["root=UUID=x", "rw"]),
            (
                "dyndbg=\"file x.c +p\" quiet",
                &["dyndbg=file x.c +p", "quiet"],
            ),
            ("\"a b\"", &["a b"]),
        ];
        for (input, expect) in cases {
            assert_eq!(split_cmdline(input), *expect, "{input:?}");
        }
    }

    #[test]
    fn finds_the_booted_deployment() {
        let cases: &[(String, Option<&str>)] = &[
            (format!("root=UUID=1 rw composefs={ID} quiet"), Some(ID)),
            (format!("composefs=bad composefs={ID}"), Some(ID)),
            (format!("composefs={ID} composefs=nothex"), None),
            ("root=/dev/sda rw".into(), None),
            (format!("xcomposefs={ID}"), None),
            (format!("composefs={}", &ID[..63]), None),
            (format!("composefs={}", ID.to_uppercase()), None),
        ];
        for (input, expect) in cases {
            assert_eq!(booted_deployment_id(input).as_deref(), *expect, "{input}");
        }
    }

    #[test]
    fn finds_the_stateroot() {
        let cases = [
            ("bootc.stateroot=os1 rw", "os1"),
            ("rw", "default"),
            ("bootc.stateroot=../x", "default"),
            ("bootc.stateroot=", "default"),
        ];
        for (input, expect) in cases {
            assert_eq!(stateroot_of(input), expect, "{input}");
        }
    }
}
