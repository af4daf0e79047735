//! Signed images under a `signedBy` policy (issue 18): GPG simple signing
//! with keys generated in the test, signatures in a `file://` lookaside
//! store configured through registries.d, pulled from the real registry.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};
use bootc_tests_integration::{ImageSpec, count_objects, noise, run};

use crate::{Ctx, TestFn};

/// The tests of this module.
pub const TESTS: &[(&str, TestFn)] = &[
    (
        "signed_by_gpg_accepts_signed_refuses_the_rest",
        signed_by_gpg_accepts_signed_refuses_the_rest,
    ),
    (
        "signed_by_gpg_swapped_tampered_and_identity_rules",
        signed_by_gpg_swapped_tampered_and_identity_rules,
    ),
];

/// A GPG key generated for the test, in its own GNUPGHOME.
pub(crate) struct Key {
    home: tempfile::TempDir,
    fingerprint: String,
    /// The exported public key (binary keyring).
    public: PathBuf,
}

pub(crate) fn gen_key(name: &str) -> Result<Key> {
    let home = tempfile::tempdir()?;
    let gpg = || {
        let mut c = Command::new("gpg");
        c.env("GNUPGHOME", home.path()).arg("--batch");
        c
    };
    run(gpg().args([
        "--passphrase",
        "",
        "--quick-gen-key",
        &format!("{name} <{name}@example.invalid>"),
        "default",
        "default",
        "never",
    ]))?;
    let out = run(gpg().args(["--with-colons", "--list-secret-keys"]))?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let fingerprint = listing
        .lines()
        .find_map(|l| l.strip_prefix("fpr:"))
        .and_then(|rest| rest.split(':').find(|f| !f.is_empty()))
        .context("fingerprint in gpg --list-secret-keys")?
        .to_string();
    let public = home.path().join("public.gpg");
    run(gpg()
        .arg("--output")
        .arg(&public)
        .args(["--export", &fingerprint]))?;
    Ok(Key {
        home,
        fingerprint,
        public,
    })
}

/// How registries.d says where signatures are.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Style {
    /// `lookaside` / `lookaside-staging` (a `file://` store).
    Lookaside,
    /// The older names of the same keys, `sigstore` / `sigstore-staging`.
    SigstoreKeys,
    /// `use-sigstore-attachments: true` (signatures stored in the registry).
    Attachments,
}

/// HOME for bootc and skopeo: `.config/containers/registries.d` points the
/// registry at a `file://` lookaside store for reading and writing.
pub(crate) struct SigConfig {
    pub(crate) home: tempfile::TempDir,
    pub(crate) lookaside: PathBuf,
    accept: PathBuf,
}

impl SigConfig {
    pub(crate) fn new(ctx: &Ctx) -> Result<Self> {
        Self::with_style(ctx, Style::Lookaside)
    }

    /// With the registries.d entry written in `style`.
    pub(crate) fn with_style(ctx: &Ctx, style: Style) -> Result<Self> {
        let home = tempfile::tempdir()?;
        let lookaside = home.path().join("lookaside");
        fs::create_dir_all(&lookaside)?;
        let regd = home.path().join(".config/containers/registries.d");
        fs::create_dir_all(&regd)?;
        let l = lookaside.display();
        let entry = match style {
            Style::Lookaside => format!("lookaside: file://{l}\n    lookaside-staging: file://{l}"),
            Style::SigstoreKeys => {
                format!("sigstore: file://{l}\n    sigstore-staging: file://{l}")
            }
            Style::Attachments => "use-sigstore-attachments: true".to_owned(),
        };
        fs::write(
            regd.join("signed-helper.yaml"),
            format!("docker:\n  {}:\n    {entry}\n", ctx.registry.addr),
        )?;
        let accept = home.path().join("accept.json");
        fs::write(
            &accept,
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )?;
        Ok(Self {
            home,
            lookaside,
            accept,
        })
    }

    pub(crate) fn registries_d(&self) -> PathBuf {
        self.home.path().join(".config/containers/registries.d")
    }

    /// `skopeo copy` to the registry, signing with `key` (and an explicit
    /// identity) if given; returns the pushed manifest digest.
    pub(crate) fn push(
        &self,
        src: &str,
        dest: &str,
        key: Option<&Key>,
        identity: Option<&str>,
    ) -> Result<String> {
        let digestfile = self.home.path().join("digest");
        let mut c = Command::new("skopeo");
        c.arg("--registries.d")
            .arg(self.registries_d())
            .arg("--policy")
            .arg(&self.accept)
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg("--digestfile")
            .arg(&digestfile);
        if let Some(k) = key {
            c.env("GNUPGHOME", k.home.path())
                .args(["--sign-by", &k.fingerprint]);
        }
        if let Some(i) = identity {
            c.args(["--sign-identity", i]);
        }
        run(c.arg(src).arg(dest))?;
        Ok(fs::read_to_string(&digestfile)?.trim().to_string())
    }

    pub(crate) fn policy(&self, name: &str, json: &str) -> Result<PathBuf> {
        let p = self.home.path().join(name);
        fs::write(&p, json)?;
        Ok(p)
    }
}

/// `bootc image pull` under `policy` with our registries.d; the output.
pub(crate) fn pull(
    ctx: &Ctx,
    cfg: &SigConfig,
    sysroot: &Path,
    policy: &Path,
    imgref: &str,
) -> Result<std::process::Output> {
    Ok(ctx
        .bootc
        .cmd(sysroot)
        .env("HOME", cfg.home.path())
        .env("CONTAINERS_POLICY_JSON", policy)
        .args(["image", "pull", "--quiet", "--format", "json", imgref])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()?)
}

/// Refused with the policy's `reason` (skopeo's words), and nothing imported;
/// the message.
pub(crate) fn refused(
    ctx: &Ctx,
    cfg: &SigConfig,
    policy: &Path,
    imgref: &str,
    what: &str,
    reason: &str,
) -> Result<String> {
    let sysroot = tempfile::tempdir()?;
    let out = pull(ctx, cfg, sysroot.path(), policy, imgref)?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(!out.status.success(), "{what}: must be refused");
    ensure!(
        err.contains(&format!("refused by signature policy {}", policy.display()))
            && err.contains(reason),
        "{what}: policy's reason ({reason}) shown: {err}"
    );
    no_go_text(what, &err)?;
    ensure!(
        count_objects(sysroot.path())? == 0,
        "{what}: nothing imported"
    );
    ensure!(
        ctx.bootc.list(sysroot.path())?.is_empty(),
        "{what}: nothing listed"
    );
    Ok(err)
}

/// The message is for people: no Go values or logrus framing from skopeo.
pub(crate) fn no_go_text(what: &str, err: &str) -> Result<()> {
    for bad in ["gpgme.", "time.Date", "{", "level=", "msg=", "\\\""] {
        ensure!(!err.contains(bad), "{what}: {bad:?} in the message: {err}");
    }
    Ok(())
}

/// Accepted and imported; the imported manifest is the signed one (`digest`).
pub(crate) fn accepted(
    ctx: &Ctx,
    cfg: &SigConfig,
    policy: &Path,
    imgref: &str,
    what: &str,
    digest: &str,
) -> Result<()> {
    let sysroot = tempfile::tempdir()?;
    let out = pull(ctx, cfg, sysroot.path(), policy, imgref)?;
    ensure!(
        out.status.success(),
        "{what}: must be accepted: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        outcome.to_string().contains(digest),
        "{what}: pull reports the pushed digest {digest}: {outcome}"
    );
    let list = ctx.bootc.list(sysroot.path())?;
    ensure!(list.len() == 1, "{what}: {list:?}");
    ensure!(
        list[0].to_string().contains(digest),
        "{what}: listed image has the signed manifest digest {digest}: {}",
        list[0]
    );
    ensure!(
        count_objects(sysroot.path())? > 0,
        "{what}: content imported"
    );
    Ok(())
}

/// A policy rejecting everything but `signedBy` `key` on our registry, with
/// an optional `signedIdentity` object (JSON text).
pub(crate) fn signed_by_policy(
    cfg: &SigConfig,
    ctx: &Ctx,
    name: &str,
    key: &Key,
    identity: Option<&str>,
) -> Result<PathBuf> {
    let ident = identity
        .map(|i| format!(r#","signedIdentity":{i}"#))
        .unwrap_or_default();
    cfg.policy(
        name,
        &format!(
            r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{}":[{{"type":"signedBy","keyType":"GPGKeys","keyPath":"{}"{ident}}}]}}}}}}"#,
            ctx.registry.addr,
            key.public.display()
        ),
    )
}

/// The lookaside signature file skopeo wrote for `repo@digest`.
fn sig_file(cfg: &SigConfig, repo: &str, digest: &str) -> PathBuf {
    cfg.lookaside
        .join(format!("{repo}@{}", digest.replacen(':', "=", 1)))
        .join("signature-1")
}

pub(crate) fn build_image(name: &str, seed: u64) -> Result<String> {
    let img = ImageSpec {
        name: name.into(),
        layers: vec![vec![("usr/lib/signed/f".into(), noise(seed, 8192))]],
        labels: vec![],
    };
    img.build()?;
    Ok(format!("containers-storage:{}", img.name))
}

fn signed_by_gpg_swapped_tampered_and_identity_rules(ctx: &Ctx) -> Result<()> {
    let src_a = build_image("localhost/signed-helper-img:a", 181)?;
    let src_b = build_image("localhost/signed-helper-img:b", 182)?;
    let cfg = SigConfig::new(ctx)?;
    let key = gen_key("signed-helper-c")?;
    let addr = &ctx.registry.addr;
    let r = |repo: &str| format!("docker://{addr}/{repo}");
    let policy = signed_by_policy(&cfg, ctx, "signed-by.json", &key, None)?;

    // Swapped signature: A and B both signed by the trusted key; A's
    // signature copied over B's. B's manifest is not the one signed.
    let da = cfg.push(&src_a, &r("signed-helper-swap:a"), Some(&key), None)?;
    let db = cfg.push(&src_b, &r("signed-helper-swap:b"), Some(&key), None)?;
    ensure!(da != db, "two distinct images: {da} {db}");
    let (sa, sb) = (
        sig_file(&cfg, "signed-helper-swap", &da),
        sig_file(&cfg, "signed-helper-swap", &db),
    );
    ensure!(sa.exists() && sb.exists(), "{sa:?} and {sb:?} written");
    accepted(
        ctx,
        &cfg,
        &policy,
        &r("signed-helper-swap:b"),
        "B before the swap",
        &db,
    )?;
    fs::copy(&sa, &sb)?;
    refused(
        ctx,
        &cfg,
        &policy,
        &r("signed-helper-swap:b"),
        "A's signature over B",
        "the signature is for another manifest",
    )?;

    // Tampered tag: a signed manifest, then another (unsigned) manifest
    // pushed over the same tag. The old digest's signature stays in the
    // lookaside store, but the manifest now served is a different one.
    let dt = cfg.push(&src_a, &r("signed-helper-tamper:v1"), Some(&key), None)?;
    let dt2 = cfg.push(&src_b, &r("signed-helper-tamper:v1"), None, None)?;
    ensure!(dt != dt2, "the tag now names another manifest");
    ensure!(sig_file(&cfg, "signed-helper-tamper", &dt).exists());
    refused(
        ctx,
        &cfg,
        &policy,
        &r("signed-helper-tamper:v1"),
        "tag overwritten with another manifest",
        "the image has no signature",
    )?;

    // matchRepository: a signature for repo:othertag accepts repo:tag...
    let dm = cfg.push(
        &src_a,
        &r("signed-helper-repo:v1"),
        Some(&key),
        Some(&format!("{addr}/signed-helper-repo:othertag")),
    )?;
    let match_repo = signed_by_policy(
        &cfg,
        ctx,
        "match-repo.json",
        &key,
        Some(r#"{"type":"matchRepository"}"#),
    )?;
    accepted(
        ctx,
        &cfg,
        &match_repo,
        &r("signed-helper-repo:v1"),
        "matchRepository",
        &dm,
    )?;
    // ...which the default (matchRepoDigestOrExact) refuses.
    refused(
        ctx,
        &cfg,
        &policy,
        &r("signed-helper-repo:v1"),
        "another tag under the default identity rule",
        "signed-helper-repo:othertag, which the requirement's identity rule does not accept",
    )?;
    // ...but not a signature for another repository.
    cfg.push(
        &src_a,
        &r("signed-helper-repo2:v1"),
        Some(&key),
        Some(&format!("{addr}/signed-helper-elsewhere:v1")),
    )?;
    refused(
        ctx,
        &cfg,
        &match_repo,
        &r("signed-helper-repo2:v1"),
        "matchRepository, another repository",
        "signed-helper-elsewhere:v1, which the requirement's identity rule does not accept",
    )?;

    // remapIdentity: pulled from a mirror prefix, signed under the origin's.
    let signed_name = "origin.example.invalid/signed-helper/app:v1";
    let dr = cfg.push(
        &src_b,
        &r("signed-helper-mirror/app:v1"),
        Some(&key),
        Some(signed_name),
    )?;
    let remap = signed_by_policy(
        &cfg,
        ctx,
        "remap.json",
        &key,
        Some(&format!(
            r#"{{"type":"remapIdentity","prefix":"{addr}/signed-helper-mirror","signedPrefix":"origin.example.invalid/signed-helper"}}"#
        )),
    )?;
    accepted(
        ctx,
        &cfg,
        &remap,
        &r("signed-helper-mirror/app:v1"),
        "remapIdentity",
        &dr,
    )?;
    refused(
        ctx,
        &cfg,
        &policy,
        &r("signed-helper-mirror/app:v1"),
        "origin's identity without the remap",
        "identity rule does not accept",
    )?;
    Ok(())
}

fn signed_by_gpg_accepts_signed_refuses_the_rest(ctx: &Ctx) -> Result<()> {
    let src = build_image("localhost/signed-helper-img:v1", 18)?;
    let cfg = SigConfig::new(ctx)?;
    let key = gen_key("signed-helper-a")?;
    let other = gen_key("signed-helper-b")?;
    let addr = &ctx.registry.addr;
    let r = |repo: &str| format!("docker://{addr}/{repo}");

    let digest = cfg.push(&src, &r("signed-helper-ok:v1"), Some(&key), None)?;
    ensure!(
        fs::read_dir(&cfg.lookaside)?.next().is_some(),
        "skopeo wrote a signature to the lookaside store"
    );
    cfg.push(&src, &r("signed-helper-unsigned:v1"), None, None)?;
    cfg.push(&src, &r("signed-helper-otherkey:v1"), Some(&other), None)?;
    cfg.push(
        &src,
        &r("signed-helper-ident:v1"),
        Some(&key),
        Some(&format!("{addr}/signed-helper-elsewhere:v1")),
    )?;

    let policy = signed_by_policy(&cfg, ctx, "signed-by.json", &key, None)?;
    accepted(
        ctx,
        &cfg,
        &policy,
        &r("signed-helper-ok:v1"),
        "correctly signed",
        &digest,
    )?;

    refused(
        ctx,
        &cfg,
        &policy,
        &r("signed-helper-unsigned:v1"),
        "unsigned",
        "the image has no signature",
    )?;
    refused(
        ctx,
        &cfg,
        &policy,
        &r("signed-helper-otherkey:v1"),
        "signed by another key",
        "a key the requirement does not trust",
    )?;
    refused(
        ctx,
        &cfg,
        &policy,
        &r("signed-helper-ident:v1"),
        "signature names another image",
        "signed-helper-elsewhere:v1, which the requirement's identity rule does not accept",
    )?;

    // exactReference: a valid signature for the pulled name, but the policy
    // demands another identity.
    let exact = signed_by_policy(
        &cfg,
        ctx,
        "exact.json",
        &key,
        Some(&format!(
            r#"{{"type":"exactReference","dockerReference":"{addr}/signed-helper-elsewhere:v1"}}"#
        )),
    )?;
    refused(
        ctx,
        &cfg,
        &exact,
        &r("signed-helper-ok:v1"),
        "exactReference to another name",
        "signed-helper-ok:v1, which the requirement's identity rule does not accept",
    )?;

    // registries.d's older key names for the lookaside store, `sigstore`
    // and `sigstore-staging` (GPG signatures, not sigstore ones).
    let old_keys = SigConfig::with_style(ctx, Style::SigstoreKeys)?;
    let d_old = old_keys.push(&src, &r("signed-helper-oldkeys:v1"), Some(&key), None)?;
    ensure!(
        fs::read_dir(&old_keys.lookaside)?.next().is_some(),
        "skopeo wrote the signature to the store named by `sigstore-staging`"
    );
    let policy = signed_by_policy(&old_keys, ctx, "signed-by.json", &key, None)?;
    accepted(
        ctx,
        &old_keys,
        &policy,
        &r("signed-helper-oldkeys:v1"),
        "lookaside named with the older `sigstore` key",
        &d_old,
    )?;
    Ok(())
}
