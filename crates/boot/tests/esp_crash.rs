//! Crash at every point of an ESP update, on a FAT image file written with
//! mtools (no mount, no root): after each crash the boot loader's view of
//! the ESP still resolves a default entry whose kernel and initramfs exist,
//! and a rerun reaches the state of a run that never crashed.
//!
//! The crashing process is this test binary run again for the test
//! `crash_child` only, with `BOOTC_CRASH_AT` set: the crash point kills it
//! with SIGKILL, as a power cut or `systemctl kill` would (what this does
//! not model is a disk that keeps only some of the writes before a flush).

use std::path::{Path, PathBuf};
use std::process::Command;

use bootc_boot::BlsEntry;
use bootc_boot::esp::Esp;

const CHILD_ENV: &str = "BOOTC_TEST_ESP_CRASH_CHILD";
const OLD: &str = "0a";
const NEW: &str = "0b";

fn have_tools() -> bool {
    let ok = Command::new("mkfs.vfat").arg("--help").output().is_ok()
        && Command::new("mdir").arg("--version").output().is_ok();
    if !ok {
        eprintln!("skipping: mkfs.vfat or mtools missing");
    }
    ok
}

fn boot_dir(tag: &str) -> String {
    tag.repeat(32)
}

fn entry(title: &str, v: u64, tag: &str) -> (String, BlsEntry) {
    (
        format!("bootc-default-{v}.conf"),
        BlsEntry::for_deployment(title, v, &boot_dir(tag), &format!("rw composefs={tag}"), "default"),
    )
}

/// A fresh ESP with systemd-boot and one deployment (kernel `OLD`), as an
/// install leaves it, plus host files for the kernel `NEW`.
fn fixture(dir: &Path) -> (Esp, PathBuf) {
    let img = dir.join("esp.img");
    std::fs::File::create(&img).unwrap().set_len(40 << 20).unwrap();
    let esp = Esp::mkfs(&img).unwrap();
    std::fs::write(dir.join("sd.efi"), "MZ systemd-boot").unwrap();
    esp.install_systemd_boot(&dir.join("sd.efi")).unwrap();
    for tag in [OLD, NEW] {
        std::fs::write(dir.join(format!("vmlinuz-{tag}")), format!("kernel {tag}")).unwrap();
        std::fs::write(dir.join(format!("initrd-{tag}")), format!("initrd {tag}")).unwrap();
    }
    install(&esp, dir, OLD);
    esp.write_entries(&[entry("OS old", 1, OLD)]).unwrap();
    (esp, img)
}

fn install(esp: &Esp, dir: &Path, tag: &str) {
    esp.install_boot_files(
        &boot_dir(tag),
        &dir.join(format!("vmlinuz-{tag}")),
        &dir.join(format!("initrd-{tag}")),
    )
    .unwrap();
}

/// The operation under test: stage and finalize a new deployment, roll
/// back to the old one, roll forward again, prune the old one and its kernel.
fn operation(esp: &Esp, dir: &Path) {
    install(esp, dir, NEW);
    esp.write_entries(&[entry("OS new", 2, NEW), entry("OS old", 1, OLD)])
        .unwrap();
    esp.write_entries(&[entry("OS old", 2, OLD), entry("OS new", 1, NEW)])
        .unwrap();
    esp.write_entries(&[entry("OS new", 2, NEW), entry("OS old", 1, OLD)])
        .unwrap();
    esp.write_entries(&[entry("OS new", 1, NEW)]).unwrap();
    esp.remove_boot_files(&boot_dir(OLD)).unwrap();
}

/// The end state of [`operation`].
fn final_entries() -> Vec<(String, BlsEntry)> {
    vec![entry("OS new", 1, NEW)]
}

/// Run [`operation`] in a child process on `img` with `env` set; its status.
fn run_child(img: &Path, env: &[(&str, &str)]) -> std::process::ExitStatus {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, img)
        .env_remove("BOOTC_CRASH_AT")
        .env_remove("BOOTC_CRASH_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdout(std::process::Stdio::null()).status().unwrap()
}

/// Not a test by itself: the body of the crashing child process.
#[test]
fn crash_child() {
    let Some(img) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let img = PathBuf::from(img);
    let esp = Esp::new(&img);
    operation(&esp, img.parent().unwrap());
}

fn assert_fsck_clean(img: &Path, what: &str) {
    let out = Command::new("fsck.vfat").arg("-n").arg(img).output().unwrap();
    assert!(
        out.status.success(),
        "{what}: fsck.vfat -n: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_crash_point_leaves_a_bootable_esp() {
    if !have_tools() {
        return;
    }
    // The points the operation passes, from one uncrashed run.
    let td = tempfile::tempdir().unwrap();
    let (_, img) = fixture(td.path());
    let log = td.path().join("crash.log");
    let st = run_child(&img, &[("BOOTC_CRASH_LOG", log.to_str().unwrap())]);
    assert!(st.success(), "uncrashed run failed: {st}");
    let points = bootc_utils::crashpoint::parse_log(&std::fs::read_to_string(&log).unwrap());
    for name in [
        "esp.boot-files-written",
        "esp.boot-files-named",
        "esp.entries-written",
        "esp.entries-flushed",
        "esp.entries-named",
        "esp.old-removed",
        "esp.boot-files-removed",
    ] {
        assert!(points.iter().any(|p| p == name), "{name} not reached: {points:?}");
    }
    let reference = Esp::new(&img);
    assert_eq!(reference.read_entries().unwrap(), final_entries());
    let reference_files = reference.list("/loader/entries").unwrap();

    for n in 1..=points.len() {
        let what = format!("crash at {n} ({})", points[n - 1]);
        let td = tempfile::tempdir().unwrap();
        let (esp, img) = fixture(td.path());
        let st = run_child(&img, &[("BOOTC_CRASH_AT", &n.to_string())]);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&st),
            Some(9),
            "{what}: child was not killed: {st}"
        );
        // The boot loader's view: a default entry, old or new, whose files exist.
        let (name, e) = esp
            .resolve_default()
            .unwrap_or_else(|err| panic!("{what}: {err:#}"));
        let id = e.deployment_id().unwrap();
        assert!(id == OLD || id == NEW, "{what}: default {name} boots {id}");
        assert_fsck_clean(&img, &what);
        // A rerun ends where an uncrashed run does, with no leftovers.
        operation(&esp, td.path());
        assert_eq!(esp.read_entries().unwrap(), final_entries(), "{what}");
        let files = esp.list("/loader/entries").unwrap();
        assert_eq!(files.len(), reference_files.len(), "{what}: {files:?}");
        assert_eq!(esp.list_boot_dirs().unwrap(), [boot_dir(NEW)], "{what}");
        assert_eq!(esp.list("/loader").unwrap(), ["entries", "loader.conf"], "{what}");
        assert_fsck_clean(&img, &what);
    }
    eprintln!("crashed at {} ESP points", points.len());
}

/// States older versions left (entries renamed away, leftovers) are completed.
#[test]
fn repairs_states_of_older_versions() {
    if !have_tools() {
        return;
    }
    let td = tempfile::tempdir().unwrap();
    let (esp, _) = fixture(td.path());
    let old = esp.read_entries().unwrap();
    // Between the two renames of the old layout: no loader/entries at all.
    esp.rename("/loader/entries", "/loader/entries.old").unwrap();
    esp.mkdir_p("/loader/entries.new").unwrap();
    esp.repair().unwrap();
    assert_eq!(esp.read_entries().unwrap(), old);
    assert_eq!(esp.list("/loader").unwrap(), ["entries", "loader.conf"]);
    esp.resolve_default().unwrap();
    // Plain names of the old layout are generation 0 and replaced.
    let td2 = tempfile::tempdir().unwrap();
    let (esp2, _) = fixture(td2.path());
    let (name, e) = entry("OS legacy", 1, OLD);
    esp2.put_bytes(e.render().as_bytes(), &format!("/loader/entries/{name}"))
        .unwrap();
    esp2.write_entries(&[entry("OS new", 1, OLD)]).unwrap();
    assert_eq!(esp2.list("/loader/entries").unwrap().len(), 1);
    assert_eq!(esp2.read_entries().unwrap(), vec![entry("OS new", 1, OLD)]);
}
