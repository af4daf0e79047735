//! The differential test of import fidelity (issue #11): every valid image
//! shows, in `bootc image mount`, exactly the tree `podman image mount`
//! shows, from every transport.
//!
//! `fixtures/make_fidelity.py` writes a corpus of valid but unusual images
//! as OCI layouts (whiteouts and opaque directories, odd modes and owners,
//! xattrs of every namespace, hard links, symlinks, fifos and devices, PAX
//! and GNU long names, missing parents, type changes, duplicates, empty
//! layers, 120 layers, plain/gzip/zstd layers, Docker schema 2 media types,
//! a multi-architecture index). Each is loaded into podman (`skopeo copy
//! oci:... containers-storage:...`) and pushed to the test registry, then
//! pulled by bootc into a fresh sysroot from `oci:`, `oci-archive:`,
//! `containers-storage:` and the registry. For each, the snapshot of the
//! mounted tree (path, type, mode, owner, size, content sha256, link
//! target, device numbers, mtime, xattrs, hard-link group; see
//! `make_fidelity.py snapshot`) must equal podman's, and all four pulls
//! must give the same composefs image id.
//!
//! Left out of the comparison: `/` (composefs gives the root `/usr`'s
//! metadata; podman shows its own directory) and `/run` (emptied by the
//! store; a tmpfs at boot). Where podman deviates from the OCI layer spec
//! we follow the spec, and the case says so ([`Deviation`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use bootc_tests_integration::run;
use serde_json::Value;

use crate::{Ctx, TestFn};

/// The tests of this module.
pub const TESTS: &[(&str, TestFn)] = &[
    ("fidelity_corpus_matches_podman", corpus_matches_podman),
    (
        "fidelity_example_image_matches_podman",
        example_image_matches_podman,
    ),
    (
        "fidelity_errors_have_no_debug_text",
        errors_have_no_debug_text,
    ),
];

/// Rust `Debug` output that must never reach a user.
const DEBUG_TEXT: &[&str] = &["Leaf(", "PhantomData", "Some(", "Os {", "kind:"];

/// The hostile layouts' generator (see `hostile.rs`).
const HOSTILE_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/fixtures/make_hostile.py");

/// The corpus generator and tree snapshotter.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/fixtures/make_fidelity.py");

/// How a case's podman view may differ from ours, and why.
#[derive(Debug, Clone, Copy)]
enum Deviation {
    /// These directories have no entry in a layer that has entries below
    /// them. containers-storage creates them in that layer's own diff
    /// directory at pull time, so podman shows the pull time as their
    /// mtime (and, for one a lower layer made, hides that layer's
    /// metadata). The spec applies only the entries a layer has: we keep
    /// the lower layer's directory, or create a missing one with mtime 0.
    MtimeOf(&'static [&'static str]),
    /// podman refuses the image: a layer has a file and, after it, a
    /// whiteout for it ("processing tar file(file exists)"; the spec says a
    /// whiteout hides only lower layers' files, so we keep the file), or a
    /// path twice ("duplicates of file paths not supported"; a tar is
    /// unpacked in order, the last entry wins). The listed paths must be
    /// present and absent as given, and all transports agree.
    PodmanRefuses {
        present: &'static [&'static str],
        absent: &'static [&'static str],
    },
}

use Deviation::{MtimeOf, PodmanRefuses};

/// Every case of `make_fidelity.py`, with podman's known deviations.
#[rustfmt::skip]
const CASES: &[(&str, &[Deviation])] = &[
    ("whiteouts", &[]),
    ("whiteout-same-layer", &[PodmanRefuses { present: &["/usr/c"], absent: &["/usr/old", "/usr/.wh.c"] }]),
    ("modes-owners", &[]),
    ("xattrs", &[]),
    ("hardlinks", &[]),
    ("symlinks", &[]),
    ("special-files", &[]),
    ("long-names", &[]),
    ("missing-parents", &[MtimeOf(&["/usr", "/usr/lib", "/usr/lib/deep", "/usr/lib/deep/er",
        "/usr/lib/deep/er/still", "/opt", "/opt/x", "/var"])]),
    ("type-change", &[]),
    // podman: "duplicates of file paths not supported". Last one wins.
    ("duplicates", &[PodmanRefuses { present: &["/usr/dup", "/usr/ddir/in", "/usr/was-file/in"], absent: &[] }]),
    ("empty-layers", &[]),
    ("many-layers", &[]),
    ("compression", &[]),
    ("docker-schema2", &[]),
    ("multi-arch", &[]),
];

/// A snapshot of a mounted tree: path → its JSON description.
type Snapshot = BTreeMap<String, Value>;

fn snapshot(root: &Path) -> Result<Snapshot> {
    let out = run(Command::new("python3")
        .arg(SCRIPT)
        .arg("snapshot")
        .arg(root))?;
    let mut snap = Snapshot::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let mut v: Value = serde_json::from_str(line)?;
        let path = v["path"].as_str().context("path")?.to_owned();
        v.as_object_mut().context("object")?.remove("path");
        snap.insert(path, v);
    }
    Ok(snap)
}

/// The differences between podman's and bootc's snapshots that
/// `deviations` do not explain, one line each.
fn differences(podman: &Snapshot, bootc: &Snapshot, deviations: &[Deviation]) -> Vec<String> {
    let mtime_ok: BTreeSet<&str> = deviations
        .iter()
        .flat_map(|d| match d {
            MtimeOf(paths) => paths.iter().copied(),
            PodmanRefuses { .. } => [].iter().copied(),
        })
        .collect();
    let mut out = Vec::new();
    let paths: BTreeSet<&String> = podman.keys().chain(bootc.keys()).collect();
    for path in paths {
        match (podman.get(path), bootc.get(path)) {
            (Some(p), Some(b)) => {
                let (mut p, mut b) = (p.clone(), b.clone());
                if mtime_ok.contains(path.as_str()) {
                    p["mtime"] = Value::Null;
                    b["mtime"] = Value::Null;
                }
                if p != b {
                    out.push(format!("{path}: podman {p}, bootc {b}"));
                }
            }
            (Some(p), None) => out.push(format!("{path}: only podman has it: {p}")),
            (None, Some(b)) => out.push(format!("{path}: only bootc has it: {b}")),
            (None, None) => unreachable!(),
        }
    }
    out
}

/// Mount `image` (a podman image name) and snapshot it.
fn podman_snapshot(image: &str) -> Result<Snapshot> {
    let out = run(Command::new("podman").args(["image", "mount", image]))?;
    let mnt = String::from_utf8(out.stdout)?.trim().to_owned();
    let snap = snapshot(Path::new(&mnt));
    run(Command::new("podman").args(["image", "unmount", image]))?;
    snap
}

/// Pull `imgref` into a fresh sysroot; its snapshot, composefs image id
/// and the pull's stderr.
fn bootc_snapshot(ctx: &Ctx, imgref: &str) -> Result<(Snapshot, String)> {
    let sysroot = tempfile::tempdir()?;
    let pulled = ctx
        .bootc
        .pull(sysroot.path(), imgref)
        .with_context(|| format!("bootc image pull {imgref}"))?;
    let id = pulled["image"]["composefsImage"]
        .as_str()
        .with_context(|| format!("no composefs image in {pulled}"))?
        .to_owned();
    let mnt = tempfile::tempdir()?;
    let target = mnt.path().to_str().context("utf-8 mount point")?;
    ctx.bootc
        .ok(sysroot.path(), &["image", "mount", imgref, target])?;
    let snap = snapshot(mnt.path());
    run(Command::new("umount").arg(mnt.path()))?;
    Ok((snap?, id))
}

/// The corpus, written once per test run.
struct Corpus {
    dir: tempfile::TempDir,
}

impl Corpus {
    fn build() -> Result<Self> {
        let listed: Vec<&str> = CASES.iter().map(|(c, _)| *c).collect();
        let dir = bootc_tests_integration::build_layouts(SCRIPT, &listed)?;
        Ok(Corpus { dir })
    }

    fn layout(&self, case: &str) -> PathBuf {
        self.dir.path().join(case)
    }
}

/// The podman image name of a case (tags we own: `fidelity-*`).
fn podman_name(case: &str) -> String {
    format!("localhost/fidelity-{case}:latest")
}

/// Check one case from every transport; the failures, one line each.
fn check_case(ctx: &Ctx, corpus: &Corpus, case: &str, deviations: &[Deviation]) -> Result<()> {
    let layout = corpus.layout(case);
    // podman loads the OCI twin of a Docker-typed layout: skopeo 1.9 cannot
    // read Docker media types from a layout.
    let for_podman = if corpus.layout(&format!("{case}.oci")).exists() {
        corpus.layout(&format!("{case}.oci"))
    } else {
        layout.clone()
    };
    let name = podman_name(case);
    let loaded = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:latest", for_podman.display()))
        .arg(format!("containers-storage:{name}"))
        .output()?;
    let refused = deviations.iter().find_map(|d| match d {
        PodmanRefuses { present, absent } => Some((*present, *absent)),
        MtimeOf(_) => None,
    });
    let podman = match (loaded.status.success(), refused) {
        (true, None) => Some(podman_snapshot(&name)?),
        (false, Some(_)) => None,
        (true, Some(_)) => bail!("podman now accepts {case}: compare with it instead"),
        (false, None) => bail!(
            "podman refuses {case}: {}",
            String::from_utf8_lossy(&loaded.stderr).trim()
        ),
    };

    // The archive and the registry copy.
    let archive = corpus.dir.path().join(format!("{case}.tar"));
    run(Command::new("tar")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout)
        .arg("."))?;
    let registry_ref = format!("{}/fidelity-{case}:latest", ctx.registry.addr);
    // A Docker-typed case goes to the registry as Docker schema 2 (skopeo
    // converts its OCI twin), the way registries hold `docker push`ed images.
    let mut push = Command::new("skopeo");
    push.args(["copy", "--quiet", "--all", "--dest-tls-verify=false"]);
    if for_podman != layout {
        push.args(["--format", "v2s2"]);
    }
    run(push
        .arg(format!("oci:{}:latest", for_podman.display()))
        .arg(format!("docker://{registry_ref}")))?;
    let mut transports = vec![
        format!("oci:{}:latest", layout.display()),
        format!("oci-archive:{}:latest", archive.display()),
        registry_ref,
    ];
    if podman.is_some() {
        transports.push(format!("containers-storage:{name}"));
    }

    let mut failures = Vec::new();
    let mut ids = BTreeMap::new();
    let mut first: Option<Snapshot> = None;
    for imgref in &transports {
        let (snap, id) = match bootc_snapshot(ctx, imgref) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{imgref}: {e:#}"));
                continue;
            }
        };
        ids.insert(imgref.clone(), id);
        let diffs = match (&podman, &first) {
            (Some(p), _) => differences(p, &snap, deviations),
            (None, Some(f)) => differences(f, &snap, &[]),
            (None, None) => spec_check(&snap, refused.unwrap_or_default()),
        };
        for d in diffs.iter().take(20) {
            failures.push(format!("{imgref}: {d}"));
        }
        if diffs.len() > 20 {
            failures.push(format!("{imgref}: and {} more", diffs.len() - 20));
        }
        first.get_or_insert(snap);
    }
    let distinct: BTreeSet<&String> = ids.values().collect();
    if distinct.len() > 1 {
        failures.push(format!(
            "the transports give different composefs images: {ids:?}"
        ));
    }
    if podman.is_some() {
        run(Command::new("podman").args(["rmi", "--force", &name]))?;
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// For a case podman refuses: the spec's expectations.
fn spec_check(snap: &Snapshot, (present, absent): (&[&str], &[&str])) -> Vec<String> {
    let mut out = Vec::new();
    for p in present {
        if !snap.contains_key(*p) {
            out.push(format!("{p} must be there (the OCI layer spec)"));
        }
    }
    for p in absent {
        if snap.contains_key(*p) {
            out.push(format!("{p} must not be there (the OCI layer spec)"));
        }
    }
    out
}

fn corpus_matches_podman(ctx: &Ctx) -> Result<()> {
    let corpus = Corpus::build()?;
    let mut failures = Vec::new();
    for (case, deviations) in CASES {
        if let Err(e) = check_case(ctx, &corpus, case, deviations) {
            failures.push(format!("{case}:\n{e:#}"));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}

/// The project's example image, where present: from containers-storage
/// (what `bootc install` reads) and, copied there, from the registry.
fn example_image_matches_podman(ctx: &Ctx) -> Result<()> {
    let image = "localhost/bootc-example:latest";
    let exists = Command::new("podman")
        .args(["image", "exists", image])
        .status()?;
    if !exists.success() {
        eprintln!("{image} is not in podman's storage: skipped");
        return Ok(());
    }
    let podman = podman_snapshot(image)?;
    ensure!(
        podman.len() > 1000,
        "{image} has only {} entries",
        podman.len()
    );
    let registry_ref = format!("{}/fidelity-example:latest", ctx.registry.addr);
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("containers-storage:{image}"))
        .arg(format!("docker://{registry_ref}")))?;
    let mut ids = BTreeSet::new();
    let mut failures = Vec::new();
    for imgref in [format!("containers-storage:{image}"), registry_ref] {
        let (snap, id) = bootc_snapshot(ctx, &imgref)?;
        ids.insert(id);
        let diffs = differences(&podman, &snap, &[]);
        failures.extend(diffs.iter().take(20).map(|d| format!("{imgref}: {d}")));
    }
    ensure!(ids.len() == 1, "different composefs images: {ids:?}");
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// Every refused pull of the hostile layouts (see `hostile.rs`) and of the
/// corpus' broken variants: stderr names the image and has no Rust `Debug`
/// text; a refusal of a tar entry names the layer digest and the entry.
fn errors_have_no_debug_text(ctx: &Ctx) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = run(Command::new("python3")
        .arg(HOSTILE_SCRIPT)
        .arg("layouts")
        .arg(dir.path()))?;
    let cases = String::from_utf8(out.stdout)?;
    let mut refused = 0;
    let mut failures = Vec::new();
    for case in cases.lines() {
        let imgref = format!("oci:{}:latest", dir.path().join(case).display());
        let sysroot = tempfile::tempdir()?;
        let out = ctx
            .bootc
            .cmd(sysroot.path())
            .args(["image", "pull", "--quiet", &imgref])
            .output()?;
        if out.status.success() {
            continue;
        }
        refused += 1;
        let stderr = String::from_utf8_lossy(&out.stderr);
        for debug in DEBUG_TEXT {
            if stderr.contains(debug) {
                failures.push(format!("{case}: `{debug}` in: {}", stderr.trim()));
            }
        }
        if !stderr.contains(&imgref) {
            failures.push(format!("{case}: the image is not named: {}", stderr.trim()));
        }
        if stderr.contains("tar entry")
            && !stderr.contains("Applying layer")
            && !stderr.contains("layer 2 of 2")
        {
            failures.push(format!("{case}: the layer is not named: {}", stderr.trim()));
        }
    }
    ensure!(refused > 20, "only {refused} hostile layouts were refused");
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
