//! `bootc image pull|list|fsck|gc` against the real registry and podman.

use std::collections::HashSet;
use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bootc_tests_integration::{ImageSpec, Layer, count_objects, noise, run};
use serde_json::Value;

use crate::{Ctx, TestFn};

/// The tests of this module.
pub const TESTS: &[(&str, TestFn)] = &[
    (
        "pull_registry_twice_fetches_once",
        pull_registry_twice_fetches_once,
    ),
    (
        "pull_update_fetches_only_changed_layer",
        pull_update_fetches_only_changed_layer,
    ),
    ("pull_oci_and_oci_archive", pull_oci_and_oci_archive),
    ("pull_containers_storage", pull_containers_storage),
    (
        "pull_through_registries_conf_mirror",
        pull_through_registries_conf_mirror,
    ),
    (
        "policy_reject_imports_nothing",
        policy_reject_imports_nothing,
    ),
    (
        "policy_signed_by_goes_through_skopeo_copy",
        policy_signed_by_goes_through_skopeo_copy,
    ),
    (
        "enforce_sigpolicy_refuses_accept_anything",
        enforce_sigpolicy_refuses_accept_anything,
    ),
    ("missing_image_and_tag_errors", missing_image_and_tag_errors),
    (
        "corrupted_blob_imports_nothing",
        corrupted_blob_imports_nothing,
    ),
    (
        "kill_during_import_then_fsck_and_retry",
        kill_during_import_then_fsck_and_retry,
    ),
    (
        "concurrent_pulls_wait_for_lock",
        concurrent_pulls_wait_for_lock,
    ),
    ("list_reports_insecure_store", list_reports_insecure_store),
    ("pull_example_bootable_image", pull_example_bootable_image),
    (
        "pull_progress_fd_writes_json_lines",
        pull_progress_fd_writes_json_lines,
    ),
];

/// Three layers of files big enough not to be inlined (composefs stores
/// files above a small threshold as objects).
fn three_layers(tag: &str, changed: u64) -> Vec<Layer> {
    let base: Layer = (0..20)
        .map(|i| (format!("usr/lib/base/f{i}"), noise(i, 4096)))
        .collect();
    let mid: Layer = (0..10)
        .map(|i| (format!("usr/share/mid/f{i}"), noise(100 + i, 8192)))
        .collect();
    let mut top: Layer = (0..5)
        .map(|i| (format!("usr/lib/top/f{i}"), noise(1000 + i, 2048)))
        .collect();
    // `changed` new files in the top layer.
    for i in 0..changed {
        top.push((
            format!("usr/lib/top/new{i}-{tag}"),
            noise(5000 + i * 7 + changed, 3000),
        ));
    }
    vec![base, mid, top]
}

fn image(name: &str, layers: Vec<Layer>) -> ImageSpec {
    ImageSpec {
        name: format!("localhost/bootc-test-{name}"),
        layers,
        labels: vec![("org.opencontainers.image.version".into(), "1".into())],
    }
}

fn registry_ref(ctx: &Ctx, repo: &str) -> String {
    format!("docker://{}/{repo}", ctx.registry.addr)
}

fn pull_registry_twice_fetches_once(ctx: &Ctx) -> Result<()> {
    let img = image("twice:v1", three_layers("a", 0));
    img.build()?;
    img.push(&registry_ref(ctx, "twice:v1"))?;
    let sysroot = tempfile::tempdir()?;
    let r = ctx
        .bootc
        .pull(sysroot.path(), &registry_ref(ctx, "twice:v1"))?;
    ensure!(r["layers"] == 3 && r["layersAlreadyPresent"] == 0, "{r}");
    ensure!(
        r["objectsNew"].as_u64() == Some(35),
        "35 files expected as objects: {r}"
    );
    let first = ctx.registry.blob_gets("twice")?;
    ensure!(
        first.len() == 4,
        "config + 3 layers fetched once: {first:?}"
    );
    let objects = count_objects(sysroot.path())?;

    let r2 = ctx
        .bootc
        .pull(sysroot.path(), &registry_ref(ctx, "twice:v1"))?;
    ensure!(
        r2["layersAlreadyPresent"] == 3 && r2["objectsNew"] == 0,
        "{r2}"
    );
    let second = ctx.registry.blob_gets("twice")?;
    let layer_gets: Vec<_> = second[first.len()..].to_vec();
    ensure!(
        layer_gets.len() <= 1,
        "second pull must fetch at most the config, got {layer_gets:?}"
    );
    // FIXME: a re-pull rewrites the config's splitstream (composefs-oci links
    // the EROFS image into it), leaving at most a couple of small unreferenced
    // objects until the next gc; no file content is stored twice.
    let after = count_objects(sysroot.path())?;
    ensure!(
        after <= objects + 2,
        "no new content: {objects} before, {after} after; {r2}"
    );
    ctx.bootc.ok(sysroot.path(), &["image", "gc"])?;
    let after_gc = count_objects(sysroot.path())?;
    ensure!(
        after_gc <= objects,
        "gc reclaims the leftovers: {objects} before, {after_gc} after gc"
    );
    let list = ctx.bootc.list(sysroot.path())?;
    ensure!(list.len() == 1, "{list:?}");
    // Registry references are recorded as upstream bootc prints them: no prefix.
    ensure!(
        list[0]["image"] == format!("{}/twice:v1", ctx.registry.addr),
        "{list:?}"
    );
    ensure!(list[0]["manifestDigest"] == r["image"]["manifestDigest"]);
    ctx.bootc.ok(sysroot.path(), &["image", "fsck"])?;
    Ok(())
}

fn pull_update_fetches_only_changed_layer(ctx: &Ctx) -> Result<()> {
    let v1 = image("update:v1", three_layers("v1", 0));
    let v2 = image("update:v2", three_layers("v2", 3));
    v1.build()?;
    v2.build()?;
    // Same repository, same tag: an update as a host would see it.
    v1.push(&registry_ref(ctx, "update:latest"))?;
    let sysroot = tempfile::tempdir()?;
    let r1 = ctx
        .bootc
        .pull(sysroot.path(), &registry_ref(ctx, "update:latest"))?;
    let before_gets = ctx.registry.blob_gets("update")?.len();
    let before_objects = count_objects(sysroot.path())?;

    v2.push(&registry_ref(ctx, "update:latest"))?;
    let r2 = ctx
        .bootc
        .pull(sysroot.path(), &registry_ref(ctx, "update:latest"))?;
    ensure!(r1["image"]["manifestDigest"] != r2["image"]["manifestDigest"]);
    ensure!(
        r2["previousDigest"] == r1["image"]["manifestDigest"],
        "{r2}"
    );
    ensure!(
        r2["layersAlreadyPresent"] == 2,
        "two layers unchanged: {r2}"
    );
    ensure!(r2["objectsNew"] == 3, "only the 3 new files stored: {r2}");
    let gets = ctx.registry.blob_gets("update")?;
    let new_gets: HashSet<_> = gets[before_gets..].iter().collect();
    ensure!(
        new_gets.len() == 2,
        "exactly the new config and the changed layer fetched: {new_gets:?}"
    );
    // Each new object is a new file plus the new EROFS image and splitstreams;
    // the 35 old files are not stored again.
    let after_objects = count_objects(sysroot.path())?;
    ensure!(
        after_objects - before_objects < 3 + 10,
        "objects grew from {before_objects} to {after_objects}"
    );
    Ok(())
}

fn pull_oci_and_oci_archive(ctx: &Ctx) -> Result<()> {
    let img = image("ocidir:v1", three_layers("oci", 1));
    img.build()?;
    let dir = tempfile::tempdir()?;
    let layout = dir.path().join("layout");
    img.push(&format!("oci:{}:v1", layout.display()))?;
    let archive = dir.path().join("img.tar");
    img.push(&format!("oci-archive:{}:v1", archive.display()))?;
    let sysroot = tempfile::tempdir()?;
    let a = ctx
        .bootc
        .pull(sysroot.path(), &format!("oci:{}:v1", layout.display()))?;
    ensure!(a["path"] == "layout", "{a}");
    let b = ctx.bootc.pull(
        sysroot.path(),
        &format!("oci-archive:{}:v1", archive.display()),
    )?;
    ensure!(
        b["layersAlreadyPresent"] == 3,
        "same layers as the layout: {b}"
    );
    ensure!(a["image"]["configDigest"] == b["image"]["configDigest"]);
    let list = ctx.bootc.list(sysroot.path())?;
    ensure!(list.len() == 2, "{list:?}");
    // --transport with an unprefixed name.
    let c = ctx.bootc.ok(
        sysroot.path(),
        &[
            "image",
            "pull",
            "--quiet",
            "--format",
            "json",
            "--transport",
            "oci",
            &format!("{}:v1", layout.display()),
        ],
    )?;
    let c: Value = serde_json::from_slice(&c.stdout)?;
    ensure!(
        c["image"]["manifestDigest"] == a["image"]["manifestDigest"],
        "{c}"
    );
    Ok(())
}

fn pull_containers_storage(ctx: &Ctx) -> Result<()> {
    let img = image("cstor:v1", three_layers("cstor", 2));
    img.build()?;
    let sysroot = tempfile::tempdir()?;
    let r = ctx
        .bootc
        .pull(sysroot.path(), &format!("containers-storage:{}", img.name))?;
    ensure!(r["path"] == "containers-storage", "{r}");
    ensure!(r["objectsNew"].as_u64() == Some(37), "{r}");
    ctx.bootc.ok(sysroot.path(), &["image", "fsck"])?;
    Ok(())
}

fn pull_through_registries_conf_mirror(ctx: &Ctx) -> Result<()> {
    let img = image("mirrored:v1", three_layers("mirror", 0));
    img.build()?;
    img.push(&registry_ref(ctx, "mirrored:v1"))?;
    // The primary location has nothing listening; only the mirror works.
    let conf = ctx.bootc.confdir.path().join("mirror-registries.conf");
    fs::write(
        &conf,
        format!(
            "[[registry]]\nprefix = \"primary.example.invalid/os\"\nlocation = \"127.0.0.1:9/os\"\ninsecure = true\n\n[[registry.mirror]]\nlocation = \"{}/mirrored\"\ninsecure = true\n",
            ctx.registry.addr
        ),
    )?;
    let sysroot = tempfile::tempdir()?;
    let out = run(ctx
        .bootc
        .cmd(sysroot.path())
        .env("CONTAINERS_REGISTRIES_CONF", &conf)
        .args([
            "image",
            "pull",
            "--quiet",
            "--format",
            "json",
            "primary.example.invalid/os:v1",
        ]))?;
    let r: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(r["layers"] == 3, "{r}");
    ensure!(
        r["image"]["image"] == "primary.example.invalid/os:v1",
        "the image is recorded under the name asked for: {r}"
    );
    Ok(())
}

fn policy_file(ctx: &Ctx, name: &str, json: &str) -> Result<std::path::PathBuf> {
    let p = ctx.bootc.confdir.path().join(name);
    fs::write(&p, json)?;
    Ok(p)
}

fn policy_reject_imports_nothing(ctx: &Ctx) -> Result<()> {
    let img = image("rejected:v1", three_layers("rej", 0));
    img.build()?;
    img.push(&registry_ref(ctx, "rejected:v1"))?;
    let policy = policy_file(
        ctx,
        "reject.json",
        &format!(
            r#"{{"default":[{{"type":"insecureAcceptAnything"}}],"transports":{{"docker":{{"{}/rejected":[{{"type":"reject"}}]}}}}}}"#,
            ctx.registry.addr
        ),
    )?;
    let sysroot = tempfile::tempdir()?;
    let out = ctx
        .bootc
        .cmd(sysroot.path())
        .env("CONTAINERS_POLICY_JSON", &policy)
        .args(["image", "pull", &registry_ref(ctx, "rejected:v1")])
        .stderr(Stdio::piped())
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success());
    ensure!(err.contains("rejected by signature policy"), "{err}");
    ensure!(count_objects(sysroot.path())? == 0, "nothing imported");
    ensure!(ctx.bootc.list(sysroot.path())?.is_empty());
    Ok(())
}

fn policy_signed_by_goes_through_skopeo_copy(ctx: &Ctx) -> Result<()> {
    let img = image("unsigned:v1", three_layers("uns", 0));
    img.build()?;
    img.push(&registry_ref(ctx, "unsigned:v1"))?;
    let key = ctx.bootc.confdir.path().join("nokey.gpg");
    fs::write(&key, b"")?;
    let policy = policy_file(
        ctx,
        "signed.json",
        &format!(
            r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{}":[{{"type":"signedBy","keyType":"GPGKeys","keyPath":"{}"}}]}}}}}}"#,
            ctx.registry.addr,
            key.display()
        ),
    )?;
    let sysroot = tempfile::tempdir()?;
    let out = ctx
        .bootc
        .cmd(sysroot.path())
        .env("CONTAINERS_POLICY_JSON", &policy)
        .args(["image", "pull", &registry_ref(ctx, "unsigned:v1")])
        .stderr(Stdio::piped())
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "an unsigned image must not pass signedBy"
    );
    ensure!(err.contains("signature policy"), "{err}");
    ensure!(
        err.to_lowercase().contains("signature"),
        "skopeo's reason is shown: {err}"
    );
    ensure!(ctx.bootc.list(sysroot.path())?.is_empty());
    // The scratch layout is gone.
    let tmp = sysroot.path().join("state/tmp");
    if tmp.exists() {
        ensure!(fs::read_dir(&tmp)?.next().is_none(), "scratch left behind");
    }
    Ok(())
}

fn enforce_sigpolicy_refuses_accept_anything(ctx: &Ctx) -> Result<()> {
    let sysroot = tempfile::tempdir()?;
    let err = ctx.bootc.fails(
        sysroot.path(),
        &[
            "image",
            "pull",
            "--enforce-container-sigpolicy",
            &registry_ref(ctx, "twice:v1"),
        ],
    )?;
    ensure!(err.contains("insecureAcceptAnything"), "{err}");
    ensure!(ctx.bootc.list(sysroot.path())?.is_empty());
    Ok(())
}

fn missing_image_and_tag_errors(ctx: &Ctx) -> Result<()> {
    let img = image("hastag:v1", three_layers("tag", 0));
    img.build()?;
    img.push(&registry_ref(ctx, "hastag:v1"))?;
    let sysroot = tempfile::tempdir()?;
    for missing in ["nosuchimage:v1", "hastag:nosuchtag"] {
        let r = registry_ref(ctx, missing);
        let err = ctx.bootc.fails(sysroot.path(), &["image", "pull", &r])?;
        ensure!(
            err.contains(&r) || err.contains(missing),
            "error names the image: {err}"
        );
        ensure!(
            err.contains("manifest unknown") || err.contains("not found"),
            "error says what is missing: {err}"
        );
    }
    let err = ctx.bootc.fails(
        sysroot.path(),
        &["image", "pull", "oci:/nonexistent/layout:v1"],
    )?;
    ensure!(err.contains("/nonexistent/layout"), "{err}");
    ensure!(ctx.bootc.list(sysroot.path())?.is_empty());
    Ok(())
}

/// Find the registry's stored blob data file for `digest`.
fn registry_blob_path(ctx: &Ctx, digest: &str) -> Result<std::path::PathBuf> {
    let hex = digest.trim_start_matches("sha256:");
    let out = run(Command::new("find")
        .arg(ctx.registry.log.parent().context("registry dir")?)
        .args(["-path", &format!("*/blobs/sha256/{}/{hex}/data", &hex[..2])]))?;
    let p = String::from_utf8(out.stdout)?;
    let p = p
        .lines()
        .next()
        .context("blob not found in registry storage")?;
    Ok(p.into())
}

fn corrupted_blob_imports_nothing(ctx: &Ctx) -> Result<()> {
    let img = image("corrupt:v1", three_layers("corrupt", 4));
    img.build()?;
    let dest = registry_ref(ctx, "corrupt:v1");
    img.push(&dest)?;
    let inspect = run(Command::new("skopeo").args(["inspect", "--tls-verify=false", &dest]))?;
    let inspect: Value = serde_json::from_slice(&inspect.stdout)?;
    let top = inspect["Layers"][2]
        .as_str()
        .context("layer digest")?
        .to_owned();
    let blob = registry_blob_path(ctx, &top)?;
    let orig = fs::read(&blob)?;
    for (what, data) in [
        ("flipped byte", {
            let mut d = orig.clone();
            let mid = d.len() / 2;
            d[mid] ^= 0xff;
            d
        }),
        ("truncated", orig[..orig.len() / 2].to_vec()),
    ] {
        fs::write(&blob, &data)?;
        let sysroot = tempfile::tempdir()?;
        // A blob shorter than its descriptor used to hang bootc and skopeo.
        let out = crate::hostile::output_within(
            ctx.bootc.cmd(sysroot.path()).args(["image", "pull", &dest]),
            Duration::from_secs(120),
        )
        .with_context(|| format!("{what}: pull"))?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "{what}: the pull must fail");
        ensure!(!err.contains("panicked"), "{what}: {err}");
        ensure!(
            err.contains(&top),
            "{what}: error names the layer {top}: {err}"
        );
        ensure!(
            [
                "corrupted blob",
                "unexpected EOF",
                "bytes in blob",
                "deflate",
                "gzip"
            ]
            .iter()
            .any(|n| err.contains(n)),
            "{what}: error names the digest or truncation problem: {err}"
        );
        ensure!(
            ctx.bootc.list(sysroot.path())?.is_empty(),
            "{what}: nothing visible"
        );
        // And the store stays consistent.
        if sysroot.path().join("composefs").exists() {
            ctx.bootc.ok(sysroot.path(), &["image", "fsck"])?;
        }
    }
    fs::write(&blob, &orig)?;
    Ok(())
}

fn kill_during_import_then_fsck_and_retry(ctx: &Ctx) -> Result<()> {
    // A larger image so there is time to kill it mid-way.
    let layers: Vec<Layer> = (0..4)
        .map(|l| {
            (0..400)
                .map(|i| {
                    (
                        format!("usr/lib/big{l}/f{i}"),
                        noise(l * 10_000 + i, 16 * 1024),
                    )
                })
                .collect()
        })
        .collect();
    let img = image("killme:v1", layers);
    img.build()?;
    let dest = registry_ref(ctx, "killme:v1");
    img.push(&dest)?;
    let sysroot = tempfile::tempdir()?;
    for delay_ms in [50u64, 200, 500, 1000, 2000] {
        let mut child = ctx
            .bootc
            .cmd(sysroot.path())
            .args(["image", "pull", "--quiet", &dest])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let status = child.wait()?;
        if status.success() {
            break; // finished before the kill: nothing more to interrupt
        }
        if sysroot.path().join("composefs/meta.json").exists() {
            ctx.bootc
                .ok(sysroot.path(), &["image", "fsck"])
                .with_context(|| format!("fsck after kill at {delay_ms} ms"))?;
        }
    }
    let r = ctx.bootc.pull(sysroot.path(), &dest)?;
    ensure!(r["layers"] == 4, "{r}");
    ctx.bootc.ok(sysroot.path(), &["image", "fsck"])?;
    ctx.bootc.ok(sysroot.path(), &["image", "gc"])?;
    ctx.bootc.ok(sysroot.path(), &["image", "fsck"])?;
    ensure!(ctx.bootc.list(sysroot.path())?.len() == 1);
    Ok(())
}

fn concurrent_pulls_wait_for_lock(ctx: &Ctx) -> Result<()> {
    let layers: Vec<Layer> = (0..2)
        .map(|l| {
            (0..300)
                .map(|i| {
                    (
                        format!("usr/lib/c{l}/f{i}"),
                        noise(77_000 + l * 1000 + i, 16 * 1024),
                    )
                })
                .collect()
        })
        .collect();
    let img = image("concurrent:v1", layers);
    img.build()?;
    let dest = registry_ref(ctx, "concurrent:v1");
    img.push(&dest)?;
    let sysroot = tempfile::tempdir()?;
    let spawn = || {
        ctx.bootc
            .cmd(sysroot.path())
            .args(["image", "pull", "--quiet", &dest])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
    };
    let a = spawn()?;
    std::thread::sleep(Duration::from_millis(150));
    let b = spawn()?;
    let a = a.wait_with_output()?;
    let b = b.wait_with_output()?;
    ensure!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    ensure!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let both = format!(
        "{}{}",
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr)
    );
    ensure!(
        both.contains("Waiting: another bootc process"),
        "one waited: {both}"
    );
    ctx.bootc.ok(sysroot.path(), &["image", "fsck"])?;
    ensure!(ctx.bootc.list(sysroot.path())?.len() == 1);
    Ok(())
}

fn list_reports_insecure_store(ctx: &Ctx) -> Result<()> {
    let img = image("listing:v1", three_layers("list", 0));
    img.build()?;
    let sysroot = tempfile::tempdir()?;
    // No store yet: an empty listing, not an error.
    ensure!(ctx.bootc.list(sysroot.path())?.is_empty());
    ctx.bootc
        .pull(sysroot.path(), &format!("containers-storage:{}", img.name))?;
    let list = ctx.bootc.list(sysroot.path())?;
    // This host's kernel has no fs-verity: the store must say so.
    ensure!(list[0]["verity"] == "insecure", "{list:?}");
    ensure!(list[0]["version"] == "1", "{list:?}");
    let table = ctx.bootc.ok(sysroot.path(), &["image", "list"])?;
    let table = String::from_utf8(table.stdout)?;
    ensure!(table.contains("fs-verity: insecure"), "{table}");
    ensure!(table.contains("localhost/bootc-test-listing:v1"), "{table}");
    Ok(())
}

/// The real example bootable image (built by `examples/build.sh latest`):
/// from podman's storage, then from the registry with nothing fetched twice,
/// then mounted to check the kernel and initramfs are where install looks.
fn pull_example_bootable_image(ctx: &Ctx) -> Result<()> {
    let src = "localhost/bootc-example:latest";
    let have = Command::new("podman")
        .args(["image", "exists", src])
        .status()?;
    ensure!(
        have.success(),
        "{src} missing: run examples/build.sh latest first (scripts/test.sh does)"
    );
    let sysroot = tempfile::tempdir()?;
    let a = ctx
        .bootc
        .pull(sysroot.path(), &format!("containers-storage:{src}"))?;
    ensure!(
        a["objectsNew"].as_u64().unwrap_or(0) > 1000,
        "a real OS: {a}"
    );
    let dest = registry_ref(ctx, "bootc-example:latest");
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &format!("containers-storage:{src}"),
        &dest,
    ]))?;
    let b = ctx.bootc.pull(sysroot.path(), &dest)?;
    ensure!(b["objectsNew"] == 0, "every file already stored: {b}");
    let mnt = tempfile::tempdir()?;
    ctx.bootc.ok(
        sysroot.path(),
        &[
            "image",
            "mount",
            &format!("{}/bootc-example:latest", ctx.registry.addr),
            mnt.path().to_str().context("utf8")?,
        ],
    )?;
    let check = (|| -> Result<()> {
        let modules = fs::read_dir(mnt.path().join("usr/lib/modules"))?
            .next()
            .context("no kernel in /usr/lib/modules")??
            .path();
        ensure!(modules.join("vmlinuz").is_file(), "{}", modules.display());
        ensure!(
            modules.join("initramfs.img").is_file(),
            "{}",
            modules.display()
        );
        ensure!(mnt.path().join("usr/bin/bootc").is_file());
        // Read-only.
        ensure!(
            fs::write(mnt.path().join("usr/x"), b"x").is_err(),
            "mount is writable"
        );
        Ok(())
    })();
    run(Command::new("umount").arg(mnt.path()))?;
    check
}

/// `--progress-fd 3` writes progress-v0 JSON lines: Start first, then
/// ProgressBytes events, the last with every layer done.
fn pull_progress_fd_writes_json_lines(ctx: &Ctx) -> Result<()> {
    let img = image("progress:v1", three_layers("progress", 1));
    img.build()?;
    let dest = registry_ref(ctx, "progress:v1");
    img.push(&dest)?;
    let sysroot = tempfile::tempdir()?;
    let events = sysroot.path().join("../progress.jsonl");
    let events = std::path::absolute(events)?;
    let bin = ctx.bootc.bin.display().to_string();
    run(ctx
        .bootc
        .cmd(sysroot.path())
        .args(["image", "pull", "--progress-fd", "3", &dest])
        .arg_shell_redirect(&bin, &events))?;
    let text = fs::read_to_string(&events)?;
    let lines: Vec<Value> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("every line is JSON: {text}"))?;
    ensure!(
        lines.first().map(|l| l["type"] == "Start").unwrap_or(false),
        "{text}"
    );
    let bytes: Vec<&Value> = lines
        .iter()
        .filter(|l| l["type"] == "ProgressBytes")
        .collect();
    ensure!(!bytes.is_empty(), "{text}");
    let last = bytes.last().context("a last event")?;
    for key in [
        "task",
        "description",
        "id",
        "bytesCached",
        "bytes",
        "bytesTotal",
        "stepsCached",
        "steps",
        "stepsTotal",
        "subtasks",
    ] {
        ensure!(!last[key].is_null(), "{key} missing in {last}");
    }
    ensure!(
        last["steps"] == 3 && last["stepsTotal"] == 3,
        "all layers done: {last}"
    );
    fs::remove_file(&events)?;
    Ok(())
}

/// Run a prepared bootc command through `sh` so that fd 3 goes to a file.
trait ShellRedirect {
    fn arg_shell_redirect(&mut self, bin: &str, file: &std::path::Path) -> &mut Command;
}

impl ShellRedirect for Command {
    fn arg_shell_redirect(&mut self, bin: &str, file: &std::path::Path) -> &mut Command {
        // Rebuild as: sh -c 'exec "$0" "$@" 3>FILE' BIN ARGS...
        let args: Vec<_> = self.get_args().map(|a| a.to_owned()).collect();
        let envs: Vec<_> = self
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
            .collect();
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg(format!("exec \"$0\" \"$@\" 3>'{}'", file.display()))
            .arg(bin)
            .args(args)
            .envs(envs)
            .stdin(Stdio::null());
        *self = sh;
        self
    }
}
