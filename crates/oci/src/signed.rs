//! Signature enforcement around skopeo: deciding before a pull whether the
//! image must be verified ([`decide`]), and telling the user, in words, why
//! skopeo refused an image ([`explain_failure`]).
//!
//! skopeo reports a policy refusal as a logrus line whose message can hold
//! Go values printed with `%#v` (for a GPG key it does not know, a whole
//! `gpgme.Signature{...}` struct). Those are translated here into what the
//! policy required and what the image lacked; nothing of Go's debug syntax
//! reaches the user.
//!
//! # What Debian's skopeo 1.9.3 can verify
//!
//! - `signedBy` (GPG simple signing), with signatures in a registries.d
//!   `lookaside` (or its older name `sigstore`): yes, with every
//!   `signedIdentity` rule.
//! - `sigstoreSigned`: no. Debian builds skopeo 1.9.3 with sigstore
//!   disabled: every `sigstoreSigned` requirement fails with
//!   "Debian-local change: sigstore disabled" (also for a correct signature),
//!   and `--sign-by-sigstore-private-key` refuses to sign. Such a policy
//!   therefore refuses every image; [`explain_failure`] says why.

use std::path::Path;

use anyhow::{Result, bail};

use crate::imgref::ImageRef;
use crate::policy::{self, Policy, PolicyDecision, Requirement};

/// Applies the policy file at `policy_path` to `imgref` before anything is
/// fetched: an error if the policy rejects the image outright, or if
/// `enforce` (`--enforce-container-sigpolicy`) is set and the policy would
/// accept the image without verifying a signature; else whether skopeo must
/// verify it. A missing policy file accepts anything unless `enforce`.
pub fn decide(imgref: &ImageRef, enforce: bool, policy_path: &Path) -> Result<PolicyDecision> {
    let policy = match policy::load_policy(policy_path) {
        Ok(p) => p,
        Err(e) if !enforce && !policy_path.try_exists().unwrap_or(true) => {
            tracing::debug!(
                "no policy at {}: {e:#}; accepting anything",
                policy_path.display()
            );
            return Ok(PolicyDecision::AcceptAnything);
        }
        Err(e) => return Err(e),
    };
    if enforce {
        policy::check_enforce(&policy, imgref).map_err(|e| {
            e.context(format!(
                "Checking {} for {imgref} (--enforce-container-sigpolicy)",
                policy_path.display()
            ))
        })?;
    }
    match policy.decide(imgref) {
        PolicyDecision::Reject => bail!(
            "Image {imgref} is rejected by signature policy {}: the requirements for its scope ({}) are 'reject'",
            policy_path.display(),
            policy.scope_for(imgref)
        ),
        d => Ok(d),
    }
}

/// The user-facing message for a `skopeo copy` of `imgref` under the policy
/// at `policy_path` that failed with `stderr`: the image, the requirement
/// that applied (re-read from the policy file, if it still parses), and the
/// reason in words.
pub fn explain_failure(imgref: &ImageRef, policy_path: &Path, stderr: &str) -> String {
    let policy = policy::load_policy(policy_path).ok();
    explain(imgref, policy_path, policy.as_ref(), stderr)
}

/// [`explain_failure`] with the policy given.
fn explain(imgref: &ImageRef, policy_path: &Path, policy: Option<&Policy>, stderr: &str) -> String {
    let message = skopeo_message(stderr);
    let path = policy_path.display();
    let Some(reason) = message.strip_prefix("Source image rejected: ") else {
        return format!(
            "Fetching {imgref} under signature policy {path} failed: {}",
            strip_go_values(&message)
        );
    };
    let requirement = match policy {
        Some(p) => format!(
            "{} requires {}",
            p.scope_for(imgref),
            describe_requirements(p.requirements_for(imgref))
        ),
        None => "its requirement".to_owned(),
    };
    format!(
        "Image {imgref} refused by signature policy {path}: {requirement}; {}",
        translate_reason(reason)
    )
}

/// The requirements of one scope, in words.
fn describe_requirements(reqs: &[Requirement]) -> String {
    let parts: Vec<String> = reqs.iter().map(describe_requirement).collect();
    parts.join(" and ")
}

fn describe_requirement(req: &Requirement) -> String {
    let (what, params) = match req {
        Requirement::InsecureAcceptAnything => return "nothing (insecureAcceptAnything)".into(),
        Requirement::Reject => return "that it be rejected (reject)".into(),
        Requirement::SignedBy(p) => ("a GPG signature (signedBy)", p),
        Requirement::SigstoreSigned(p) => ("a sigstore signature (sigstoreSigned)", p),
    };
    let str_field = |k: &str| params.fields.get(k).and_then(|v| v.as_str());
    let mut out = what.to_owned();
    if let Some(k) = str_field("keyPath") {
        out.push_str(&format!(" by the key in {k}"));
    } else if let Some(ks) = params.fields.get("keyPaths").and_then(|v| v.as_array()) {
        let ks: Vec<&str> = ks.iter().filter_map(|v| v.as_str()).collect();
        out.push_str(&format!(" by a key in {}", ks.join(", ")));
    } else if params.fields.contains_key("keyData") || params.fields.contains_key("keyDatas") {
        out.push_str(" by a key given inline (keyData)");
    }
    let identity = params
        .fields
        .get("signedIdentity")
        .and_then(|v| v.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("matchRepoDigestOrExact");
    out.push_str(&format!(", identity rule {identity}"));
    out
}

/// skopeo's own sentence for why a policy refused the image, in words.
fn translate_reason(reason: &str) -> String {
    const NO_SIGNATURE: &str = "A signature was required, but no signature exists";
    const SIGSTORE_DISABLED: &str = "Debian-local change: sigstore disabled";
    if let Some(rest) = reason.strip_prefix(NO_SIGNATURE) {
        // sigstoreSigned adds the signatures of other kinds it ignored, as
        // " (N non-sigstore signatures, M sigstore non-signature attachments)".
        let others = rest
            .trim()
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .map(|counts| format!(" it could use (skopeo found {counts})"))
            .unwrap_or_default();
        return format!("the image has no signature{others}");
    }
    if reason.contains(SIGSTORE_DISABLED) {
        return "this system's skopeo cannot verify sigstore signatures (Debian builds skopeo \
                with sigstore disabled), so a sigstoreSigned requirement is never met"
            .into();
    }
    if let Some(detail) = reason.strip_prefix("Invalid GPG signature: ") {
        return gpg_reason(detail);
    }
    if let Some(rest) = reason.strip_prefix("Signature for identity ") {
        if let Some(identity) = rest.strip_suffix(" is not accepted") {
            return format!(
                "the signature names {identity}, which the requirement's identity rule does not accept for this image"
            );
        }
    }
    if let Some(rest) = reason.strip_prefix("Signature for digest ") {
        if let Some(digest) = rest.strip_suffix(" does not match") {
            return format!(
                "the signature is for another manifest ({}), not the one the registry served",
                digest.trim_matches('"')
            );
        }
    }
    strip_go_values(reason)
}

/// gpgme's `GPGME_SIGSUM_*` bits, in words.
const GPG_SUMMARY: &[(u64, &str)] = &[
    (0x04, "the signature is bad (the signed data was changed)"),
    (0x10, "the key was revoked"),
    (0x20, "the key has expired"),
    (0x40, "the signature has expired"),
    (
        0x80,
        "it was made by a key the requirement does not trust (not among its keys)",
    ),
];

/// What skopeo's `Invalid GPG signature: gpgme.Signature{...}` means.
fn gpg_reason(detail: &str) -> String {
    let field = |name: &str| {
        let start = detail.find(&format!("{name}:"))? + name.len() + 1;
        let rest = &detail[start..];
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        Some(rest[..end].trim().trim_matches('"').to_owned())
    };
    let fingerprint = field("Fingerprint").filter(|f| !f.is_empty());
    let summary = field("Summary").and_then(|s| s.parse::<u64>().ok());
    let mut why: Vec<&str> = summary
        .map(|s| {
            GPG_SUMMARY
                .iter()
                .filter(|(bit, _)| s & bit != 0)
                .map(|(_, w)| *w)
                .collect()
        })
        .unwrap_or_default();
    if why.is_empty() {
        why.push("GPG could not verify it");
    }
    let by = fingerprint
        .map(|f| format!(" signed with GPG key {f}"))
        .unwrap_or_default();
    format!("the image is{by}, but {}", why.join("; "))
}

/// The message of skopeo's last logrus line (`time=... level=fatal
/// msg="..."`), unquoted; the trimmed text itself if it has none.
fn skopeo_message(stderr: &str) -> String {
    stderr
        .lines()
        .rev()
        .find_map(|l| {
            let (_, quoted) = l.split_once(" msg=\"")?;
            Some(unquote_go(quoted))
        })
        .unwrap_or_else(|| stderr.trim().to_owned())
}

/// The content of a Go double-quoted string starting after its opening
/// quote (`\"`, `\\`, `\n`, `\t` escapes), up to its closing quote.
fn unquote_go(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => break,
            },
            c => out.push(c),
        }
    }
    out
}

/// Replaces each Go composite literal (`pkg.Type{...}`, `time.Date(...)`)
/// in `s` with `(details omitted)`.
fn strip_go_values(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(open) = rest.find(['{', '(']) {
        // The word before the bracket: a Go value if it is `ident.Ident`.
        let head = &rest[..open];
        let word_start = head
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
            .map(|i| i + 1)
            .unwrap_or(0);
        let word = &head[word_start..];
        let go_value = word.contains('.')
            && word
                .split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        match (go_value, matching_close(&rest[open..])) {
            (true, Some(len)) => {
                out.push_str(&head[..word_start]);
                out.push_str("(details omitted)");
                rest = &rest[open + len..];
            }
            _ => {
                out.push_str(&rest[..=open]);
                rest = &rest[open + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The length of the bracketed group at the start of `s`, through its
/// matching close bracket (quotes respected); `None` if unbalanced.
fn matching_close(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '{' | '(' => depth += 1,
            '}' | ')' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: &str = "127.0.0.1:5000";

    fn policy() -> Policy {
        Policy::parse(&format!(
            r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{
                "{ADDR}":[{{"type":"signedBy","keyType":"GPGKeys","keyPath":"/k/a.gpg"}}],
                "{ADDR}/repo":[{{"type":"signedBy","keyType":"GPGKeys","keyPaths":["/k/a.gpg","/k/b.gpg"],
                                 "signedIdentity":{{"type":"matchRepository"}}}}],
                "{ADDR}/sig":[{{"type":"sigstoreSigned","keyPath":"/k/c.pub"}}]
            }}}}}}"#
        ))
        .unwrap()
    }

    fn fatal(msg: &str) -> String {
        format!(
            "time=\"2026-12-04T02:37:03Z\" level=info msg=\"[graphdriver] using prior storage driver: overlay\"\n\
             time=\"2026-12-04T02:37:03Z\" level=fatal msg=\"{}\"\n",
            msg.replace('\\', "\\\\").replace('"', "\\\"")
        )
    }

    /// `explain` for `image` and skopeo's message `msg`; checks that no Go
    /// or logrus syntax is left.
    fn check(image: &str, msg: &str, expect: &[&str]) {
        let imgref = ImageRef::parse(image).unwrap();
        let out = explain(
            &imgref,
            Path::new("/etc/p.json"),
            Some(&policy()),
            &fatal(msg),
        );
        for e in expect {
            assert!(out.contains(e), "{out:?} lacks {e:?}");
        }
        for bad in ["gpgme.", "time.Date", "{", "level=", "msg=", "\\\""] {
            assert!(!out.contains(bad), "{out:?} contains {bad:?}");
        }
    }

    #[test]
    fn refusals_in_words() {
        let img = format!("{ADDR}/app:v1");
        let refused = format!("Image {img} refused by signature policy /etc/p.json");
        check(
            &img,
            r#"Source image rejected: Invalid GPG signature: gpgme.Signature{Summary:128, Fingerprint:"B29157C9972BC43F188509A46B1BBB208D332289", Status:gpgme.Error{err:0x9}, Timestamp:time.Date(2026, time.December, 4, 2, 36, 59, 0, time.Local), ExpTimestamp:time.Date(1970, time.January, 1, 0, 0, 0, 0, time.Local), WrongKeyUsage:false, PKATrust:0x0, ChainModel:false, Validity:0, ValidityReason:error(nil), PubkeyAlgo:1, HashAlgo:10}"#,
            &[
                &refused,
                &format!(
                    r#"transports.docker."{ADDR}" requires a GPG signature (signedBy) by the key in /k/a.gpg, identity rule matchRepoDigestOrExact"#
                ),
                "signed with GPG key B29157C9972BC43F188509A46B1BBB208D332289",
                "a key the requirement does not trust",
            ],
        );
        check(
            &img,
            r#"Source image rejected: Invalid GPG signature: gpgme.Signature{Summary:4, Fingerprint:"AB", Status:gpgme.Error{err:0x8}}"#,
            &["signed with GPG key AB", "the signed data was changed"],
        );
        check(
            &img,
            "Source image rejected: A signature was required, but no signature exists",
            &[&refused, "the image has no signature"],
        );
        check(
            &format!("{ADDR}/sig:v1"),
            "Source image rejected: A signature was required, but no signature exists (1 non-sigstore signatures, 0 sigstore non-signature attachments)",
            &[
                "requires a sigstore signature (sigstoreSigned) by the key in /k/c.pub",
                "no signature it could use (skopeo found 1 non-sigstore signatures, 0 sigstore non-signature attachments)",
            ],
        );
        check(
            &format!("{ADDR}/sig:v1"),
            "Source image rejected: Debian-local change: sigstore disabled",
            &["cannot verify sigstore signatures", "never met"],
        );
        check(
            &format!("{ADDR}/repo:v1"),
            &format!(
                "Source image rejected: Signature for identity {ADDR}/elsewhere:v1 is not accepted"
            ),
            &[
                "by a key in /k/a.gpg, /k/b.gpg, identity rule matchRepository",
                &format!(
                    "the signature names {ADDR}/elsewhere:v1, which the requirement's identity rule does not accept"
                ),
            ],
        );
        check(
            &img,
            "Source image rejected: Signature for digest sha256:aa does not match",
            &["the signature is for another manifest (sha256:aa)"],
        );
        check(
            &img,
            "Source image rejected: Something new: pkg.Thing{A:1, B:\"x}\"} and more",
            &["Something new: (details omitted) and more"],
        );
    }

    #[test]
    fn other_failures_keep_skopeo_words() {
        let imgref = ImageRef::parse(&format!("{ADDR}/app:v1")).unwrap();
        let out = explain(
            &imgref,
            Path::new("/etc/p.json"),
            None,
            &fatal("initializing source docker://x: manifest unknown"),
        );
        assert_eq!(
            out,
            format!(
                "Fetching {ADDR}/app:v1 under signature policy /etc/p.json failed: initializing source docker://x: manifest unknown"
            )
        );
        // Not a logrus line at all.
        let out = explain(&imgref, Path::new("/p"), None, "  plain error\n");
        assert!(out.ends_with("failed: plain error"), "{out}");
    }

    #[test]
    fn go_values_stripped() {
        let cases = [
            ("a x.Y{b:1} c", "a (details omitted) c"),
            ("f(x) and g.h(1, (2))", "f(x) and (details omitted)"),
            ("unbalanced a.B{", "unbalanced a.B{"),
            ("set {a}", "set {a}"),
        ];
        for (input, expect) in cases {
            assert_eq!(strip_go_values(input), expect, "{input}");
        }
    }

    #[test]
    fn decide_rejects_and_enforces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.json");
        let missing = dir.path().join("missing.json");
        std::fs::write(&path, r#"{"default":[{"type":"reject"}],"transports":{"docker":{"quay.io":[{"type":"insecureAcceptAnything"}],"quay.io/s":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/k"}]}}}"#).unwrap();
        let r = |s: &str| ImageRef::parse(s).unwrap();
        assert_eq!(
            decide(&r("quay.io/x"), false, &path).unwrap(),
            PolicyDecision::AcceptAnything
        );
        assert_eq!(
            decide(&r("quay.io/s/os"), true, &path).unwrap(),
            PolicyDecision::RequiresVerification
        );
        let err = format!("{:#}", decide(&r("quay.io/x"), true, &path).unwrap_err());
        assert!(err.contains("--enforce-container-sigpolicy"), "{err}");
        let err = format!(
            "{:#}",
            decide(&r("example.com/x"), false, &path).unwrap_err()
        );
        assert!(
            err.contains("rejected by signature policy") && err.contains("(default)"),
            "{err}"
        );
        assert_eq!(
            decide(&r("quay.io/x"), false, &missing).unwrap(),
            PolicyDecision::AcceptAnything
        );
        assert!(decide(&r("quay.io/x"), true, &missing).is_err());
    }
}
