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
pub const TESTS: &[(&str, TestFn)] = &[(
    "signed_by_gpg_accepts_signed_refuses_the_rest",
    signed_by_gpg_accepts_signed_refuses_the_rest,
)];

/// A GPG key generated for the test, in its own GNUPGHOME.
struct Key {
    home: tempfile::TempDir,
    fingerprint: String,
    /// The exported public key (binary keyring).
    public: PathBuf,
}

fn gen_key(name: &str) -> Result<Key> {
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

/// HOME for bootc and skopeo: `.config/containers/registries.d` points the
/// registry at a `file://` lookaside store for reading and writing.
struct SigConfig {
    home: tempfile::TempDir,
    lookaside: PathBuf,
    accept: PathBuf,
}

impl SigConfig {
    fn new(ctx: &Ctx) -> Result<Self> {
        let home = tempfile::tempdir()?;
        let lookaside = home.path().join("lookaside");
        fs::create_dir_all(&lookaside)?;
        let regd = home.path().join(".config/containers/registries.d");
        fs::create_dir_all(&regd)?;
        fs::write(
            regd.join("signed-helper.yaml"),
            format!(
                "docker:\n  {}:\n    lookaside: file://{l}\n    lookaside-staging: file://{l}\n",
                ctx.registry.addr,
                l = lookaside.display()
            ),
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

    fn registries_d(&self) -> PathBuf {
        self.home.path().join(".config/containers/registries.d")
    }

    /// `skopeo copy` to the registry, signing with `key` (and an explicit
    /// identity) if given; returns the pushed manifest digest.
    fn push(
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

    fn policy(&self, name: &str, json: &str) -> Result<PathBuf> {
        let p = self.home.path().join(name);
        fs::write(&p, json)?;
        Ok(p)
    }
}

/// `bootc image pull` under `policy` with our registries.d; the output.
fn pull(
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

/// Refused with the policy's `reason` (skopeo's words), and nothing imported.
fn refused(
    ctx: &Ctx,
    cfg: &SigConfig,
    policy: &Path,
    imgref: &str,
    what: &str,
    reason: &str,
) -> Result<()> {
    let sysroot = tempfile::tempdir()?;
    let out = pull(ctx, cfg, sysroot.path(), policy, imgref)?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "{what}: must be refused");
    ensure!(
        err.contains("Source image rejected") && err.contains(reason),
        "{what}: policy's reason ({reason}) shown: {err}"
    );
    ensure!(
        count_objects(sysroot.path())? == 0,
        "{what}: nothing imported"
    );
    ensure!(
        ctx.bootc.list(sysroot.path())?.is_empty(),
        "{what}: nothing listed"
    );
    Ok(())
}

fn signed_by_gpg_accepts_signed_refuses_the_rest(ctx: &Ctx) -> Result<()> {
    let img = ImageSpec {
        name: "localhost/signed-helper-img:v1".into(),
        layers: vec![vec![("usr/lib/signed/f".into(), noise(18, 8192))]],
        labels: vec![],
    };
    img.build()?;
    let src = format!("containers-storage:{}", img.name);
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

    let policy = cfg.policy(
        "signed-by.json",
        &format!(
            r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{addr}":[{{"type":"signedBy","keyType":"GPGKeys","keyPath":"{}"}}]}}}}}}"#,
            key.public.display()
        ),
    )?;

    // Accepted and imported; the imported manifest is the signed one.
    let sysroot = tempfile::tempdir()?;
    let out = pull(
        ctx,
        &cfg,
        sysroot.path(),
        &policy,
        &r("signed-helper-ok:v1"),
    )?;
    ensure!(
        out.status.success(),
        "a correctly signed image must be accepted: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        outcome.to_string().contains(&digest),
        "pull reports the pushed digest {digest}: {outcome}"
    );
    let list = ctx.bootc.list(sysroot.path())?;
    ensure!(list.len() == 1, "{list:?}");
    ensure!(
        list[0].to_string().contains(&digest),
        "listed image has the signed manifest digest {digest}: {}",
        list[0]
    );
    ensure!(count_objects(sysroot.path())? > 0, "content imported");

    refused(
        ctx,
        &cfg,
        &policy,
        &r("signed-helper-unsigned:v1"),
        "unsigned",
        "no signature exists",
    )?;
    refused(
        ctx,
        &cfg,
        &policy,
        &r("signed-helper-otherkey:v1"),
        "signed by another key",
        "Invalid GPG signature",
    )?;
    refused(
        ctx,
        &cfg,
        &policy,
        &r("signed-helper-ident:v1"),
        "signature names another image",
        "signed-helper-elsewhere:v1 is not accepted",
    )?;

    // exactReference: a valid signature for the pulled name, but the policy
    // demands another identity.
    let exact = cfg.policy(
        "exact.json",
        &format!(
            r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{addr}":[{{"type":"signedBy","keyType":"GPGKeys","keyPath":"{}","signedIdentity":{{"type":"exactReference","dockerReference":"{addr}/signed-helper-elsewhere:v1"}}}}]}}}}}}"#,
            key.public.display()
        ),
    )?;
    refused(
        ctx,
        &cfg,
        &exact,
        &r("signed-helper-ok:v1"),
        "exactReference to another name",
        "signed-helper-ok:v1 is not accepted",
    )?;
    Ok(())
}
