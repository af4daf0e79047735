//! Malformed and hostile images (issue #2, "Malformed and hostile images").
//!
//! `fixtures/make_hostile.py` writes one OCI layout per case: path
//! traversal, symlink and hardlink escapes, odd whiteouts, device nodes,
//! wrong digests, sizes and diff_ids, broken compression, invalid JSON,
//! unexpected media types. Each case is pulled into a fresh sysroot
//! `CANARY/sysroot`, from the layout and (for the cases a registry accepts)
//! from the registry, and whatever the outcome:
//!
//! - bootc neither hangs nor panics;
//! - nothing appears in `CANARY` beside the sysroot, and `/etc/evil` does
//!   not exist;
//! - a refused image is not listed, and `image fsck` accepts the store;
//! - a refusal names the image and what is wrong with it; a legitimate
//!   oddity (device nodes, absolute paths, whiteouts) is stored.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bootc_tests_integration::run;

use crate::{Ctx, TestFn};

/// The tests of this module.
pub const TESTS: &[(&str, TestFn)] = &[
    ("hostile_layouts", hostile_layouts),
    ("hostile_images_from_registry", hostile_images_from_registry),
    (
        "diffid_lie_does_not_poison_layer_cache",
        diffid_lie_does_not_poison_layer_cache,
    ),
];

/// The generator of the hostile layouts.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/fixtures/make_hostile.py");

/// A pull that takes longer is taken for a hang.
const PULL_TIMEOUT: Duration = Duration::from_secs(120);

/// What a case must do.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// Pulled and listed; the check passes on the mounted image.
    Stored(Check),
    /// Refused with an error containing each of these.
    Refused(&'static [&'static str]),
}

use Want::{Refused, Stored};

/// A check of a stored image, given the root of its mounted filesystem.
type Check = fn(&Path) -> Result<()>;

/// Every case `make_hostile.py` writes, and what bootc must do with it.
#[rustfmt::skip]
const CASES: &[(&str, Want)] = &[
    ("valid", Stored(valid)),
    // Tar entries.
    ("path-traversal", Refused(&["\"/../../etc/evil\"", "leaves the image root", "layer 2 of 2"])),
    ("path-traversal-inner", Refused(&["\"/usr/../../etc/evil\"", "leaves the image root"])),
    ("absolute-path", Stored(absolute_path)),
    ("symlink-escape", Refused(&["\"/link/evil\"", "\"link\" is not a subdirectory"])),
    ("symlink-escape-relative", Refused(&["\"/up/etc/evil\"", "\"up\" is not a subdirectory"])),
    ("hardlink-outside", Refused(&["\"/../../etc/passwd\"", "outside the image root"])),
    ("hardlink-absolute-outside", Refused(&["\"shadow\" does not exist"])),
    ("hardlink-missing", Refused(&["\"nonexistent\" does not exist"])),
    ("hardlink-to-dir", Refused(&["\"etc\" is a directory"])),
    ("hardlink-inside", Stored(hardlink_inside)),
    ("whiteout-opaque-root", Stored(whiteout_opaque_root)),
    ("whiteout-nonexistent", Stored(whiteout_nonexistent)),
    ("whiteout-with-content", Stored(whiteout_with_content)),
    ("whiteout-dotdot", Stored(whiteout_dotdot)),
    ("whiteout-as-dir", Refused(&["\"/etc/.wh.os-release/x\"", "does not exist"])),
    ("devices", Stored(devices)),
    ("setuid-world-writable", Stored(setuid_world_writable)),
    // Blobs.
    ("layer-digest-mismatch", Refused(&["layer 2 of 2", "digest mismatch"])),
    ("truncated-gzip", Refused(&["layer 2 of 2", "unexpected end of file"])),
    ("invalid-gzip", Refused(&["layer 2 of 2", "Invalid gzip header"])),
    ("invalid-tar", Refused(&["layer 2 of 2", "invalid octal field"])),
    ("layer-missing", Refused(&["layer 2 of 2", "No such file"])),
    ("huge-layer-size", Refused(&["layer 2 of 2", "descriptor declares 9007199254740991"])),
    ("huge-config-size", Refused(&["declares 9007199254740991 bytes, more than the 4194304 allowed"])),
    ("layer-size-too-small", Refused(&["layer 2 of 2", "has 146 bytes but its descriptor declares 136"])),
    ("bad-digest-algorithm", Refused(&["md5:", "only sha256"])),
    ("digest-path-traversal", Refused(&["Parsing image manifest JSON", "../../../../etc/passwd"])),
    // diff_ids.
    ("diffid-mismatch", Refused(&["layer 2 of 2", "diff_id mismatch"])),
    ("diffid-poison", Refused(&["layer 2 of 2", "diff_id mismatch"])),
    ("diffid-mismatch-uncompressed", Refused(&["layer 2 of 2", "diff_id mismatch"])),
    ("diffid-count-mismatch", Refused(&["1 diff_ids for 2 layers"])),
    // JSON and media types.
    ("invalid-json-index", Refused(&["index.json", "Parsing image index JSON"])),
    ("invalid-json-manifest", Refused(&["Parsing image manifest JSON"])),
    ("invalid-json-config", Refused(&["Parsing image config JSON"])),
    ("config-wrong-shape", Refused(&["Parsing image config JSON", "expected a sequence"])),
    ("manifest-digest-mismatch", Refused(&["manifest", "digest mismatch"])),
    ("config-digest-mismatch", Refused(&["config", "digest mismatch"])),
    ("layer-media-type-text", Refused(&["text/plain", "not a tar layer"])),
    ("config-media-type-unknown", Refused(&["application/x-hostile", "not a container image"])),
    ("manifest-media-type-index", Refused(&["Parsing image index JSON"])),
    ("index-pointing-nowhere", Refused(&["manifest sha256:", "is missing from the layout"])),
    ("nested-index-pointing-nowhere", Refused(&["manifest sha256:", "is missing from the layout"])),
];

/// Cases a registry takes as they are; they come through skopeo's proxy
/// (where skopeo checks digests and sizes too), and bootc must do with them
/// what it does with the layout ([`CASES`]) unless an expectation is given.
#[rustfmt::skip]
const REGISTRY_CASES: &[(&str, Option<Want>)] = &[
    ("valid", None),
    ("path-traversal", None),
    ("symlink-escape", None),
    ("hardlink-outside", None),
    ("whiteout-opaque-root", None),
    ("devices", None),
    ("truncated-gzip", None),
    ("invalid-gzip", None),
    ("invalid-tar", None),
    ("diffid-poison", None),
    ("diffid-mismatch-uncompressed", None),
    ("diffid-count-mismatch", None),
    // The blob is shorter than declared: this hung before bootc sent
    // FinishPipe while reading.
    ("huge-layer-size", Some(Refused(&["layer 2 of 2", "9007199254740991"]))),
    ("layer-size-too-small", Some(Refused(&["layer 2 of 2"]))),
    ("layer-media-type-text", None),
    ("config-media-type-unknown", None),
];

/// The hostile layouts, in a temporary directory.
struct Layouts {
    dir: tempfile::TempDir,
}

impl Layouts {
    fn build() -> Result<Self> {
        let listed: Vec<&str> = CASES.iter().map(|(c, _)| *c).collect();
        let dir = bootc_tests_integration::build_layouts(SCRIPT, &listed)?;
        Ok(Layouts { dir })
    }

    fn imgref(&self, case: &str) -> String {
        format!("oci:{}:latest", self.dir.path().join(case).display())
    }

    /// Upload `cases` to the registry as `hostile-<case>:latest`.
    fn push(&self, registry: &str, cases: &[&str]) -> Result<()> {
        run(Command::new("python3")
            .arg(SCRIPT)
            .arg("push")
            .arg(registry)
            .arg(self.dir.path())
            .args(cases))?;
        Ok(())
    }
}

/// A directory that must contain nothing but the sysroot after a pull.
struct Canary {
    dir: tempfile::TempDir,
}

impl Canary {
    fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        fs::create_dir(dir.path().join("sysroot"))?;
        Ok(Canary { dir })
    }

    fn sysroot(&self) -> PathBuf {
        self.dir.path().join("sysroot")
    }

    /// Nothing was written beside the sysroot, nor to the host's /etc.
    fn check(&self) -> Result<()> {
        let mut names: Vec<_> = fs::read_dir(self.dir.path())?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        ensure!(
            names == ["sysroot"],
            "written beside the sysroot: {names:?}"
        );
        ensure!(!Path::new("/etc/evil").exists(), "/etc/evil was created");
        Ok(())
    }
}

/// Run `cmd` to its end, or kill it after `timeout` and fail.
pub(crate) fn output_within(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("Running {cmd:?}"))?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        stdout.read_to_end(&mut v).map(|_| v)
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        stderr.read_to_end(&mut v).map(|_| v)
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = err_reader
                .join()
                .ok()
                .and_then(|r| r.ok())
                .unwrap_or_default();
            bail!(
                "{cmd:?} hung for {timeout:?}; stderr so far:\n{}",
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out_reader
        .join()
        .map_err(|_| anyhow::anyhow!("stdout reader"))??;
    let stderr = err_reader
        .join()
        .map_err(|_| anyhow::anyhow!("stderr reader"))??;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Pull `imgref` into a fresh canary sysroot and check the outcome against
/// `want` and the invariants of this module. Returns the sysroot's canary.
fn check_pull(ctx: &Ctx, imgref: &str, want: Want) -> Result<Canary> {
    let canary = Canary::new()?;
    let sysroot = canary.sysroot();
    let out = output_within(
        ctx.bootc
            .cmd(&sysroot)
            .args(["image", "pull", "--quiet", "--format", "json", imgref]),
        PULL_TIMEOUT,
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!stderr.contains("panicked"), "bootc panicked:\n{stderr}");
    match want {
        Stored(check) => {
            ensure!(
                out.status.success(),
                "expected to be stored, but:\n{stderr}"
            );
            let list = ctx.bootc.list(&sysroot)?;
            ensure!(list.len() == 1, "one image listed: {list:?}");
            let image = list[0]["image"].as_str().context("image name")?;
            check_mounted(ctx, &sysroot, image, check)?;
        }
        Refused(needles) => {
            ensure!(
                !out.status.success(),
                "expected a refusal, but it was stored: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            // Named as the user wrote it, without the `docker://` prefix.
            let name = imgref.strip_prefix("docker://").unwrap_or(imgref);
            ensure!(
                stderr.contains(name),
                "the error names the image {name}:\n{stderr}"
            );
            for needle in needles {
                ensure!(
                    stderr.contains(needle),
                    "the error says {needle:?}:\n{stderr}"
                );
            }
            let list = ctx.bootc.list(&sysroot)?;
            ensure!(list.is_empty(), "nothing listed after a refusal: {list:?}");
        }
    }
    if sysroot.join("composefs").exists() {
        ctx.bootc
            .ok(&sysroot, &["image", "fsck"])
            .context("fsck after the pull")?;
    }
    canary.check()?;
    Ok(canary)
}

/// Mount `image` of `sysroot` (outside the canary) and run `check` on it.
fn check_mounted(ctx: &Ctx, sysroot: &Path, image: &str, check: Check) -> Result<()> {
    let mnt = tempfile::tempdir()?;
    let target = mnt.path().to_str().context("utf-8 mount point")?;
    ctx.bootc.ok(sysroot, &["image", "mount", image, target])?;
    let checked = check(mnt.path()).context("Checking the stored image");
    run(Command::new("umount").arg(mnt.path()))?;
    checked
}

/// Run every case; report all failures at once.
fn check_all(cases: &[(&str, Want)], imgref: impl Fn(&str) -> String, ctx: &Ctx) -> Result<()> {
    let mut failures = Vec::new();
    for (case, want) in cases {
        if let Err(e) = check_pull(ctx, &imgref(case), *want) {
            failures.push(format!("{case}: {e:#}"));
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
    Ok(())
}

fn hostile_layouts(ctx: &Ctx) -> Result<()> {
    let layouts = Layouts::build()?;
    check_all(CASES, |case| layouts.imgref(case), ctx)
}

fn hostile_images_from_registry(ctx: &Ctx) -> Result<()> {
    let layouts = Layouts::build()?;
    let cases = REGISTRY_CASES
        .iter()
        .map(|&(case, want)| {
            let from_layout = CASES.iter().find(|(c, _)| *c == case).map(|&(_, w)| w);
            let want = want
                .or(from_layout)
                .with_context(|| format!("registry case {case} is not in CASES"))?;
            Ok((case, want))
        })
        .collect::<Result<Vec<_>>>()?;
    let names: Vec<&str> = cases.iter().map(|(c, _)| *c).collect();
    layouts.push(&ctx.registry.addr, &names)?;
    let addr = &ctx.registry.addr;
    check_all(
        &cases,
        |case| format!("docker://{addr}/hostile-{case}:latest"),
        ctx,
    )
}

/// The `composefsImage` (EROFS object) of the only image in `sysroot`.
fn composefs_image(ctx: &Ctx, sysroot: &Path) -> Result<String> {
    let list = ctx.bootc.list(sysroot)?;
    ensure!(list.len() == 1, "{list:?}");
    let id = list[0]["composefsImage"]
        .as_str()
        .context("composefsImage")?;
    Ok(id.to_owned())
}

/// An image that declares another layer's diff_id for its own content must
/// not leave that content in the layer cache under the other diff_id: the
/// valid image pulled afterwards is the same as in a clean store.
fn diffid_lie_does_not_poison_layer_cache(ctx: &Ctx) -> Result<()> {
    let layouts = Layouts::build()?;
    layouts.push(&ctx.registry.addr, &["valid", "diffid-poison"])?;
    let addr = &ctx.registry.addr;
    let sources = [
        (layouts.imgref("valid"), layouts.imgref("diffid-poison")),
        (
            format!("docker://{addr}/hostile-valid:latest"),
            format!("docker://{addr}/hostile-diffid-poison:latest"),
        ),
    ];
    for (valid, poison) in sources {
        let clean = check_pull(ctx, &valid, Stored(self::valid))?;
        let expected = composefs_image(ctx, &clean.sysroot())?;
        let store = check_pull(ctx, &poison, Refused(&["diff_id mismatch"]))?;
        let sysroot = store.sysroot();
        ctx.bootc.pull(&sysroot, &valid)?;
        let got = composefs_image(ctx, &sysroot)?;
        ensure!(
            got == expected,
            "{valid} after {poison}: EROFS {got}, in a clean store {expected}"
        );
        ctx.bootc.ok(&sysroot, &["image", "fsck"])?;
        store.check()?;
    }
    Ok(())
}

// ---- What legitimate oddities look like once stored ----------------------

/// The metadata of `path` (relative) in the image at `root`.
fn present(root: &Path, path: &str) -> Result<fs::Metadata> {
    fs::symlink_metadata(root.join(path)).with_context(|| format!("/{path} is not in the image"))
}

/// `path` (relative) is not in the image at `root`.
fn absent(root: &Path, path: &str) -> Result<()> {
    ensure!(
        fs::symlink_metadata(root.join(path)).is_err(),
        "/{path} must not be in the image"
    );
    Ok(())
}

fn valid(root: &Path) -> Result<()> {
    present(root, "usr/lib/ok")?;
    present(root, "etc/os-release")?;
    Ok(())
}

/// `/etc/evil` in the tar is `/etc/evil` of the image.
fn absolute_path(root: &Path) -> Result<()> {
    ensure!(
        present(root, "etc/evil")?.is_file(),
        "/etc/evil is a file of the image"
    );
    Ok(())
}

fn hardlink_inside(root: &Path) -> Result<()> {
    let (link, file) = (
        present(root, "usr/lib/h")?,
        present(root, "usr/lib/base-file")?,
    );
    ensure!(
        link.ino() == file.ino(),
        "/usr/lib/h is a hardlink to /usr/lib/base-file"
    );
    Ok(())
}

/// An opaque whiteout at the root hides everything of the layers below.
fn whiteout_opaque_root(root: &Path) -> Result<()> {
    absent(root, "etc")?;
    absent(root, "usr/lib")?;
    present(root, "usr/after-opaque")?;
    absent(root, ".wh..wh..opq")
}

fn whiteout_nonexistent(root: &Path) -> Result<()> {
    present(root, "etc/os-release")?;
    absent(root, "etc/.wh.nosuchfile")
}

/// A whiteout's content is ignored; the file it names is gone.
fn whiteout_with_content(root: &Path) -> Result<()> {
    absent(root, "etc/os-release")?;
    absent(root, "etc/.wh.os-release")
}

/// Whiteouts of `.` and `..` remove nothing.
fn whiteout_dotdot(root: &Path) -> Result<()> {
    present(root, "etc/os-release")?;
    absent(root, "etc/.wh..")?;
    absent(root, ".wh...")
}

fn devices(root: &Path) -> Result<()> {
    // makedev() for majors and minors below 256.
    let dev = |major: u64, minor: u64| (major << 8) | minor;
    let null = present(root, "dev/null")?;
    ensure!(
        null.file_type().is_char_device() && null.rdev() == dev(1, 3),
        "/dev/null is char 1:3: {null:?}"
    );
    let sda = present(root, "dev/sda")?;
    ensure!(
        sda.file_type().is_block_device() && sda.rdev() == dev(8, 0),
        "/dev/sda is block 8:0: {sda:?}"
    );
    ensure!(
        present(root, "usr/lib/fifo")?.file_type().is_fifo(),
        "/usr/lib/fifo is a fifo"
    );
    Ok(())
}

fn setuid_world_writable(root: &Path) -> Result<()> {
    let suid = present(root, "usr/lib/suid")?.mode() & 0o7777;
    let ww = present(root, "usr/lib/ww")?.mode() & 0o7777;
    ensure!((suid, ww) == (0o4755, 0o777), "modes {suid:o} and {ww:o}");
    Ok(())
}
