//! Signed images through `install --enforce-container-sigpolicy` and the
//! offline `bootc --sysroot <installed disk> upgrade` / `switch` (issue 18):
//! GPG simple signing under `signedBy`, keys generated in the test, the real
//! registry, a loop disk.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, ensure};
use bootc_tests_integration::run;

use crate::signed::{Key, SigConfig, gen_key, no_go_text, signed_by_policy};
use crate::{Ctx, TestFn};

/// The tests of this module.
pub const TESTS: &[(&str, TestFn)] = &[
    (
        "signed_by_gpg_install_enforce_refuses_accept_anything",
        signed_by_gpg_install_enforce_refuses_accept_anything,
    ),
    (
        "signed_by_gpg_install_upgrade_switch_offline",
        signed_by_gpg_install_upgrade_switch_offline,
    ),
];

/// The root partition type of x86-64.
const ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

/// A mounted filesystem, unmounted on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("umount").arg(&self.0)) {
            eprintln!("warning: unmounting {}: {e:#}", self.0.display());
        }
    }
}

/// The deployment directories of an installed root partition.
fn deployments(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("state/deploy");
    let mut v = fs::read_dir(&dir)
        .with_context(|| format!("Reading {}", dir.display()))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .filter(|n| !matches!(n, Ok(n) if n.starts_with('.')))
        .collect::<Result<Vec<_>>>()?;
    v.sort();
    Ok(v)
}

/// A 6 GiB sparse disk image in its own directory under /var/tmp.
fn new_disk() -> Result<(tempfile::TempDir, PathBuf)> {
    let work = tempfile::Builder::new()
        .prefix("bootc-signed.")
        .tempdir_in("/var/tmp")?;
    let disk = work.path().join("disk.img");
    fs::File::create(&disk)?.set_len(6 << 30)?;
    Ok((work, disk))
}

/// `bootc install to-disk --enforce-container-sigpolicy` of `source` under
/// `policy` (with `cfg`'s registries.d); the output.
fn install_enforced(
    ctx: &Ctx,
    cfg: &SigConfig,
    policy: &Path,
    source: &str,
    disk: &Path,
) -> Result<Output> {
    Ok(Command::new("timeout")
        .args(["--kill-after=30", "900"])
        .arg(&ctx.bootc.bin)
        .args([
            "install",
            "to-disk",
            "--via-loopback",
            "--source-imgref",
            source,
            "--bootloader",
            "grub",
            "--enforce-container-sigpolicy",
        ])
        .arg(disk)
        .env("HOME", cfg.home.path())
        .env("CONTAINERS_REGISTRIES_CONF", ctx.bootc.registries_conf())
        .env("CONTAINERS_POLICY_JSON", policy)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()?)
}

/// Whether the first MiB of `disk` is all zeros (no partition table).
fn untouched(disk: &Path) -> Result<bool> {
    let mut buf = vec![0u8; 1 << 20];
    fs::File::open(disk)?.read_exact(&mut buf)?;
    Ok(buf.iter().all(|b| *b == 0))
}

/// `--enforce-container-sigpolicy` under a policy that accepts anything:
/// refused before the disk is touched, naming the policy file and the flag.
fn signed_by_gpg_install_enforce_refuses_accept_anything(ctx: &Ctx) -> Result<()> {
    let cfg = SigConfig::new(ctx)?;
    let accept = cfg.policy(
        "accept.json",
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )?;
    let (_work, disk) = new_disk()?;
    let out = install_enforced(
        ctx,
        &cfg,
        &accept,
        "containers-storage:localhost/bootc-example:latest",
        &disk,
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    println!(
        "install under insecureAcceptAnything: {}\n{err}",
        out.status
    );
    ensure!(!out.status.success(), "install must be refused");
    ensure!(
        err.contains(&format!(
            "{} accepts containers-storage:localhost/bootc-example:latest without signature verification",
            accept.display()
        )) && err.contains("--enforce-container-sigpolicy requires a signedBy or sigstoreSigned requirement"),
        "the policy and the flag named: {err}"
    );
    ensure!(
        untouched(&disk)?,
        "refused before anything was written to the disk"
    );
    Ok(())
}

/// An installed disk, its root partition mounted.
struct Installed {
    mnt: PathBuf,
    _mounted: Mounted,
    _lo: crate::guest::LoopDev,
}

fn mount_root(work: &Path, disk: &Path) -> Result<Installed> {
    let lo = crate::guest::LoopDev::attach(disk, false, None, true)?;
    let root = bootc_tests_integration::vm::partitions(disk)?
        .into_iter()
        .find(|p| p.type_guid == ROOT_X86_64)
        .context("no x86-64 root partition on the installed disk")?;
    let dev = lo.partition(root.number)?;
    let mnt = work.join("mnt");
    fs::create_dir_all(&mnt)?;
    run(Command::new("mount").arg(&dev).arg(&mnt))?;
    Ok(Installed {
        _mounted: Mounted(mnt.clone()),
        mnt,
        _lo: lo,
    })
}

/// Offline bootc on the installed root with `cfg`'s HOME and `policy`.
fn offline(ctx: &Ctx, cfg: &SigConfig, mnt: &Path, policy: &Path, args: &[&str]) -> Result<Output> {
    let out = ctx
        .bootc
        .cmd(mnt)
        .env("HOME", cfg.home.path())
        .env("CONTAINERS_POLICY_JSON", policy)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()?;
    println!(
        "bootc {args:?}: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

fn status(ctx: &Ctx, mnt: &Path) -> Result<serde_json::Value> {
    let out = ctx.bootc.ok(mnt, &["status", "--format", "json"])?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The digest of the deployment that boots next (offline, `booted`).
fn next_digest(s: &serde_json::Value) -> String {
    s["status"]["booted"]["image"]["imageDigest"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Push a bootable image signed by `key`; its digest.
fn push_os(ctx: &Ctx, cfg: &SigConfig, img: &str, repo: &str, key: Option<&Key>) -> Result<String> {
    cfg.push(
        &format!("containers-storage:{img}"),
        &format!("docker://{}/{repo}", ctx.registry.addr),
        key,
        None,
    )
}

/// The signed system's life, offline on a loop disk: install under
/// `--enforce-container-sigpolicy` from the registry (verified, at the
/// signed digest, recorded as `containerPolicy`); an upgrade of that origin
/// refused once the policy accepts anything; a signed upgrade accepted at
/// the new digest; a switch to an unsigned image refused with nothing
/// changed; a signed switch accepted at its digest.
fn signed_by_gpg_install_upgrade_switch_offline(ctx: &Ctx) -> Result<()> {
    let cfg = SigConfig::new(ctx)?;
    let key = gen_key("signed-helper-os")?;
    let addr = &ctx.registry.addr;
    let policy = signed_by_policy(&cfg, ctx, "signed-by.json", &key, None)?;
    let accept = cfg.policy(
        "accept.json",
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )?;
    let d1 = push_os(
        ctx,
        &cfg,
        "localhost/bootc-example:latest",
        "signed-helper-os:v1",
        Some(&key),
    )?;

    let (work, disk) = new_disk()?;
    let out = install_enforced(
        ctx,
        &cfg,
        &policy,
        &format!("docker://{addr}/signed-helper-os:v1"),
        &disk,
    )?;
    ensure!(
        out.status.success(),
        "signed install accepted: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inst = mount_root(work.path(), &disk)?;
    let mnt = &inst.mnt;
    let s = status(ctx, mnt)?;
    ensure!(
        next_digest(&s) == d1,
        "installed at the signed digest {d1}: {s}"
    );
    ensure!(
        s["spec"]["image"]["signature"] == "containerPolicy",
        "install recorded that updates verify the policy: {}",
        s["spec"]["image"]
    );
    ensure!(deployments(mnt)?.len() == 1, "one deployment");

    // The origin says containerPolicy: a policy that accepts anything is
    // refused for its upgrades.
    let out = offline(ctx, &cfg, mnt, &accept, &["upgrade", "--quiet"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("without signature verification"),
        "upgrade of an enforced origin under insecureAcceptAnything refused: {err}"
    );
    ensure!(status(ctx, mnt)? == s, "refused upgrade changed nothing");

    // A signed upgrade: the new manifest, by its digest.
    let d2 = push_os(
        ctx,
        &cfg,
        "localhost/bootc-example:v2",
        "signed-helper-os:v1",
        Some(&key),
    )?;
    ensure!(d2 != d1, "v2 is another image");
    let out = offline(ctx, &cfg, mnt, &policy, &["upgrade", "--quiet"])?;
    ensure!(out.status.success(), "signed upgrade accepted");
    let s = status(ctx, mnt)?;
    ensure!(
        next_digest(&s) == d2,
        "upgraded to the signed digest {d2}: {s}"
    );
    ensure!(
        s["status"]["rollback"]["image"]["imageDigest"] == d1.as_str(),
        "the install is the rollback: {s}"
    );
    ensure!(deployments(mnt)?.len() == 2, "two deployments");

    // An unsigned image: refused, nothing changed.
    push_os(
        ctx,
        &cfg,
        "localhost/bootc-example:v1",
        "signed-helper-os-unsigned:v1",
        None,
    )?;
    let before = deployments(mnt)?;
    let out = offline(
        ctx,
        &cfg,
        mnt,
        &policy,
        &["switch", &format!("{addr}/signed-helper-os-unsigned:v1")],
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "switch to an unsigned image refused");
    ensure!(
        err.contains("refused by signature policy") && err.contains("the image has no signature"),
        "the policy's reason shown: {err}"
    );
    no_go_text("unsigned switch", &err)?;
    ensure!(deployments(mnt)? == before, "deployments unchanged");
    let after = status(ctx, mnt)?;
    ensure!(after == s, "status unchanged: {s} -> {after}");
    ensure!(after["status"]["staged"].is_null(), "nothing staged");

    // A signed switch.
    let d3 = push_os(
        ctx,
        &cfg,
        "localhost/bootc-example:v1",
        "signed-helper-os2:v1",
        Some(&key),
    )?;
    ensure!(d3 != d1 && d3 != d2, "v1 is a third image");
    let out = offline(
        ctx,
        &cfg,
        mnt,
        &policy,
        &[
            "switch",
            "--quiet",
            "--enforce-container-sigpolicy",
            &format!("{addr}/signed-helper-os2:v1"),
        ],
    )?;
    ensure!(out.status.success(), "signed switch accepted");
    let s = status(ctx, mnt)?;
    ensure!(
        next_digest(&s) == d3,
        "switched to the signed digest {d3}: {s}"
    );
    ensure!(
        s["spec"]["image"]["image"] == format!("{addr}/signed-helper-os2:v1").as_str()
            && s["spec"]["image"]["signature"] == "containerPolicy",
        "spec names the signed image, verified by policy: {}",
        s["spec"]["image"]
    );
    drop(inst);
    Ok(())
}
