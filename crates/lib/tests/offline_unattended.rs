//! Unattended operation on a loop disk, offline (`--sysroot`): download-only
//! staging and `--from-downloaded`, `upgrade --check` download cost, the
//! free-space refusal, pinning through pruning, `bootc edit -f`, and kernel
//! arguments owned by a source (`bootc loader-entries
//! set-options-for-source`) carried through upgrades and a switch.
//!
//! Needs root, podman and the example image `localhost/bootc-example:latest`
//! (built by examples/build.sh); skipped otherwise.

use std::path::Path;
use std::process::Command;

const REPO: &str = "localhost/bootc-unattended-test";

mod common;
mod offline_disk;
use common::sh;
use offline_disk::{InstalledDisk, bootc, run};

fn bootc_err(args: &[&str]) -> String {
    match run(args) {
        Ok(()) => panic!("bootc {args:?} succeeded"),
        Err(e) => format!("{e:#}"),
    }
}

/// Deployment ids in boot order (default first), from the BLS entries.
fn order(mnt: &Path) -> Vec<String> {
    let mut v: Vec<(u64, String)> = std::fs::read_dir(mnt.join("boot/loader/entries"))
        .unwrap()
        .map(|e| {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            let version = text
                .lines()
                .find_map(|l| l.strip_prefix("version "))
                .unwrap()
                .parse()
                .unwrap();
            let id = text
                .split_whitespace()
                .find_map(|a| a.strip_prefix("composefs="))
                .unwrap()
                .to_owned();
            (version, id)
        })
        .collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.0));
    v.into_iter().map(|(_, id)| id).collect()
}

/// The options of deployment `id`'s entry in /boot/loader/entries, as
/// arguments.
fn entry_options(mnt: &Path, id: &str) -> Vec<String> {
    let needle = format!("composefs={id}");
    for e in std::fs::read_dir(mnt.join("boot/loader/entries")).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        if let Some(opts) = text.lines().find_map(|l| l.strip_prefix("options ")) {
            let args: Vec<String> = opts.split_whitespace().map(str::to_owned).collect();
            if args.contains(&needle) {
                return args;
            }
        }
    }
    panic!("no entry for {id}")
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Set source `name`'s options (`None`: no --options) on the disk at `sysroot`.
fn set_source(sysroot: &str, name: &str, options: Option<&str>) {
    let mut args = vec![
        "loader-entries",
        "set-options-for-source",
        "--source",
        name,
        "--sysroot",
        sysroot,
    ];
    if let Some(o) = options {
        args.extend(["--options", o]);
    }
    bootc(&args);
}

fn host(mnt: &Path) -> bootc_spec::Host {
    let state = bootc_deploy::deployments::load_state(mnt).unwrap();
    bootc_deploy::deployments::build_host(&state, None)
}

fn build(tag: &str, from: &str, run: &str, dir: &Path) {
    offline_disk::build(
        dir,
        &format!("{REPO}:{tag}"),
        &format!("FROM {from}\nRUN {run}\nLABEL org.opencontainers.image.version={tag}\n"),
    );
}

#[test]
fn offline_unattended_operation() {
    if !offline_disk::can_run() {
        return;
    }
    let td = tempfile::tempdir().unwrap();
    let v1_img = format!("{REPO}:v1");
    sh(Command::new("podman").args(["tag", "localhost/bootc-example:latest", &v1_img]));
    build(
        "v2",
        &v1_img,
        "echo v2 > /usr/share/unattended-v2 && echo v2 > /etc/unattended.conf && printf 'kargs = [\"unattended.v2=1\"]\\n' > /usr/lib/bootc/kargs.d/50-unattended.toml",
        td.path(),
    );
    build(
        "v3",
        &format!("{REPO}:v2"),
        "head -c 3000000 /dev/urandom > /usr/share/unattended-v3",
        td.path(),
    );
    sh(Command::new("podman").args(["tag", &v1_img, &format!("{REPO}:cur")]));

    let disk = InstalledDisk::install(td.path(), &format!("containers-storage:{REPO}:cur"), &[]);
    let mnt = disk.mnt.clone();
    let sysroot = disk.sysroot();
    let v1 = order(&mnt)[0].clone();

    // Kernel arguments owned by sources: set, a second source, replace;
    // nobody else's arguments move.
    let dep = |id: &str| {
        bootc_sysroot::load_deployment(&mnt, id)
            .unwrap()
            .expect("deployment")
    };
    let installed = entry_options(&mnt, &v1);
    assert!(
        installed.contains(&"console=ttyS0,115200".to_owned()),
        "{installed:?}"
    );
    set_source(sysroot, "tuned", Some("isolcpus=1-3 nohz=full"));
    let with = |tail: &[&str]| [installed.clone(), strs(tail)].concat();
    assert_eq!(
        entry_options(&mnt, &v1),
        with(&["isolcpus=1-3", "nohz=full"])
    );
    let grub = std::fs::read_to_string(mnt.join("boot/grub/grub.cfg")).unwrap();
    assert!(grub.contains("isolcpus=1-3 nohz=full"), "{grub}");
    // A second source that repeats a kargs.d argument.
    set_source(sysroot, "admin", Some("console=ttyS0,115200 quiet"));
    set_source(sysroot, "tuned", Some("isolcpus=0-7"));
    let expect = with(&["console=ttyS0,115200", "quiet", "isolcpus=0-7"]);
    assert_eq!(entry_options(&mnt, &v1), expect);
    let d1 = dep(&v1);
    assert_eq!(d1.kargs, expect);
    assert_eq!(
        d1.kargs_sources.get("tuned").cloned(),
        Some(strs(&["isolcpus=0-7"]))
    );
    let entries_before = std::fs::read_to_string(mnt.join("boot/grub/grub.cfg")).unwrap();
    set_source(sysroot, "tuned", Some("isolcpus=0-7"));
    assert_eq!(
        std::fs::read_to_string(mnt.join("boot/grub/grub.cfg")).unwrap(),
        entries_before
    );
    for (args, msg) in [
        (
            &["--source", "a b", "--options", "x"][..],
            "Invalid source name",
        ),
        (
            &["--source", "t", "--options", "composefs=x"],
            "selects the deployment",
        ),
        (&["--source", "t", "--options", "a=\"b c\""], "double quote"),
    ] {
        let mut v = vec![
            "loader-entries",
            "set-options-for-source",
            "--sysroot",
            sysroot,
        ];
        v.extend_from_slice(args);
        let e = bootc_err(&v);
        assert!(e.contains(msg), "{e}");
    }
    assert_eq!(entry_options(&mnt, &v1), expect);

    // --check: what v2 costs (v1's layers are in the store already).
    sh(Command::new("podman").args(["tag", &format!("{REPO}:v2"), &format!("{REPO}:cur")]));
    let info = bootc_lib::upgrade::check_for(&mnt, None).unwrap();
    assert!(info.available, "{info}");
    let cost = info.cost.unwrap();
    assert!(
        cost.layers >= 1 && cost.layers < cost.layers_total && cost.bytes > 0,
        "{info}"
    );
    assert!(info.to_string().contains("To download: "), "{info}");
    eprintln!("{info}");

    // Download-only: staged, locked, not finalized (not even offline).
    bootc(&[
        "upgrade",
        "--download-only",
        "--quiet",
        "--sysroot",
        sysroot,
    ]);
    let staged = bootc_sysroot::lifecycle::read_staged(&mnt)
        .unwrap()
        .expect("staged");
    assert!(staged.download_only);
    assert_eq!(order(&mnt), vec![v1.clone()]);
    // The staged deployment carries the sources; changing one while it is
    // staged changes both the booted (default) entry and the staged record.
    assert_eq!(dep(&staged.id).kargs_sources, dep(&v1).kargs_sources);
    set_source(sysroot, "tuned", Some("isolcpus=0-3"));
    let sources_tail = ["console=ttyS0,115200", "quiet", "isolcpus=0-3"];
    assert_eq!(entry_options(&mnt, &v1), with(&sources_tail));
    let sk = dep(&staged.id).kargs;
    assert!(sk.ends_with(&strs(&sources_tail)), "{sk:?}");
    let h = host(&mnt);
    assert!(h.status.staged.as_ref().unwrap().download_only);
    let human = bootc_lib::status::render_human(&h, true);
    assert!(human.contains("Download-only"), "{human}");
    bootc(&["internals", "finalize-staged", "--sysroot", sysroot]);
    assert_eq!(order(&mnt), vec![v1.clone()]);
    // The diff between the booted (default) and the staged deployment.
    let diff = bootc_lib::internals::diff_staged(&mnt).unwrap();
    use bootc_deploy::diff::Change;
    assert!(
        diff.contains(&("/usr/share/unattended-v2".into(), Change::Added)),
        "{diff:?}"
    );
    assert!(
        diff.iter()
            .any(|(p, c)| p == "/etc/unattended.conf" && *c != Change::Removed),
        "{diff:?}"
    );
    assert!(diff.len() < 20, "{diff:?}");
    bootc(&["internals", "diff-staged", "--sysroot", sysroot]);
    // The same image again: nothing new to fetch, still locked.
    let upgrade = |flag: &str| bootc(&["upgrade", flag, "--quiet", "--sysroot", sysroot]);
    let locked = || {
        bootc_sysroot::lifecycle::read_staged(&mnt)
            .unwrap()
            .map(|s| s.download_only)
    };
    upgrade("--download-only");
    assert_eq!(locked(), Some(true));

    // --from-downloaded unlocks it; offline that finalizes at once.
    upgrade("--from-downloaded");
    assert_eq!(locked(), None);
    let v2 = staged.id.clone();
    assert_eq!(order(&mnt), vec![v2.clone(), v1.clone()]);
    // v2's kargs.d added an argument: it comes before the sources'.
    let o2 = entry_options(&mnt, &v2);
    assert!(
        o2.ends_with(&strs(&[
            "unattended.v2=1",
            "console=ttyS0,115200",
            "quiet",
            "isolcpus=0-3"
        ])),
        "{o2:?}"
    );
    assert!(o2.contains(&format!("composefs={v2}")), "{o2:?}");
    assert_eq!(entry_options(&mnt, &v1), with(&sources_tail));
    assert!(
        bootc_err(&["upgrade", "--from-downloaded", "--sysroot", sysroot])
            .contains("No downloaded update")
    );

    // Pin the rollback (v1).
    bootc(&["pin", "rollback", "--sysroot", sysroot]);
    assert!(bootc_sysroot::lifecycle::is_pinned(&mnt, &v1));

    // Free space: with the disk full, staging v3 is refused and leaves nothing.
    sh(Command::new("podman").args(["tag", &format!("{REPO}:v3"), &format!("{REPO}:cur")]));
    let st = rustix::fs::statvfs(&mnt).unwrap();
    let fill = mnt.join("fill");
    let keep = 1 << 20;
    sh(Command::new("fallocate")
        .args(["-l", &(st.f_bavail * st.f_frsize - keep).to_string()])
        .arg(&fill));
    let err = bootc_err(&["upgrade", "--quiet", "--sysroot", sysroot]);
    eprintln!("{err}");
    assert!(
        err.contains("Not enough free space") && err.contains(sysroot),
        "{err}"
    );
    assert!(
        bootc_sysroot::lifecycle::read_staged(&mnt)
            .unwrap()
            .is_none()
    );
    assert_eq!(order(&mnt), vec![v2.clone(), v1.clone()]);
    std::fs::remove_file(&fill).unwrap();

    // v3: the pinned v1 survives pruning and shows in otherDeployments.
    bootc(&["upgrade", "--quiet", "--sysroot", sysroot]);
    let o = order(&mnt);
    assert_eq!(o.len(), 3, "{o:?}");
    let v3 = o[0].clone();
    assert_eq!(o[1..], [v2.clone(), v1.clone()]);
    assert_eq!(
        entry_options(&mnt, &v3),
        entry_options(&mnt, &v2)
            .into_iter()
            .map(|a| if a == format!("composefs={v2}") {
                format!("composefs={v3}")
            } else {
                a
            })
            .collect::<Vec<_>>()
    );
    let h = host(&mnt);
    assert_eq!(h.status.other_deployments.len(), 1);
    assert!(h.status.other_deployments[0].pinned);
    assert_eq!(
        h.status.other_deployments[0]
            .composefs
            .as_ref()
            .unwrap()
            .verity,
        v1
    );
    bootc(&["pin", "--unpin", &v1[..12], "--sysroot", sysroot]);
    assert!(!bootc_sysroot::lifecycle::is_pinned(&mnt, &v1));

    // bootc edit -f.
    let yaml = serde_yaml_ng::to_string(&host(&mnt)).unwrap();
    let f = td.path().join("host.yaml");
    let f_s = f.to_str().unwrap();
    let edit_err = |text: &str| {
        std::fs::write(&f, text).unwrap();
        bootc_err(&["edit", "-f", f_s, "--sysroot", sysroot])
    };
    let e = edit_err(&yaml.replace("spec:\n", "spec:\n  color: red\n"));
    assert!(e.contains("unknown field(s): spec.color"), "{e}");
    eprintln!("{e}");
    let e = edit_err(&yaml.replace("spec:\n", "spec: [\n"));
    assert!(e.contains("invalid YAML"), "{e}");
    assert_eq!(order(&mnt)[0], v3);
    std::fs::write(&f, &yaml).unwrap();
    bootc(&["edit", "-f", f_s, "--quiet", "--sysroot", sysroot]);
    assert_eq!(order(&mnt)[0], v3);
    // bootOrder: rollback → as `bootc rollback`.
    assert!(yaml.contains("bootOrder: default"), "{yaml}");
    std::fs::write(
        &f,
        yaml.replace("bootOrder: default", "bootOrder: rollback"),
    )
    .unwrap();
    bootc(&["edit", "-f", f_s, "--sysroot", sysroot]);
    assert_eq!(order(&mnt)[..2], [v2.clone(), v3.clone()]);
    // spec.image → as `bootc switch`.
    let yaml = serde_yaml_ng::to_string(&host(&mnt)).unwrap();
    let cur = format!("image: {REPO}:cur");
    assert!(yaml.contains(&cur), "{yaml}");
    std::fs::write(&f, yaml.replacen(&cur, &format!("image: {REPO}:v1"), 1)).unwrap();
    bootc(&["edit", "-f", f_s, "--quiet", "--sysroot", sysroot]);
    assert_eq!(order(&mnt)[0], v1);
    let h = host(&mnt);
    assert_eq!(h.spec.image.as_ref().unwrap().image, format!("{REPO}:v1"));
    // The switch back to v1 (whose kargs.d lacks v2's argument) kept the
    // sources; removing them leaves exactly the installed command line.
    let o1 = entry_options(&mnt, &v1);
    assert_eq!(o1, with(&sources_tail), "{o1:?}");
    set_source(sysroot, "tuned", None);
    set_source(sysroot, "admin", Some(""));
    assert_eq!(entry_options(&mnt, &v1), installed);
    assert!(dep(&v1).kargs_sources.is_empty());
    let json = std::fs::read_to_string(
        bootc_sysroot::deployment::deployment_dir(&mnt, &v1).join("deployment.json"),
    )
    .unwrap();
    assert!(!json.contains("kargsSources"), "{json}");
    drop(disk);
}
