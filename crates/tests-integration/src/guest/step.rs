//! The step protocol: what the host gives a boot to run inside the guest
//! (the `BOOTCTEST` disk with OCI layouts and `step.sh`) and what it reads
//! back ([`Step`]).
//!
//! Inside a step, the helper functions of [`PRELUDE`] print what the host
//! asserts on: `@@BEGIN-<label>@@` / `@@END-<label>@@` around a
//! `bootc status --format json` document, `@@VAL <key>=<value>` lines,
//! `@@OUT <label>: ` output lines and `@@RC <label>=<exit code>` lines. The
//! BOOTCTEST disk is mounted at `/run/bootctest` in the guest, so an OCI
//! layout `NAME` on it is `/run/bootctest/NAME:NAME`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use bootc_tests_integration::run;
use bootc_tests_integration::vm::{self, Run};
use serde_json::Value;

use super::{Mounted, oci_digest};

/// Shell helpers put in front of every step script.
pub(crate) const PRELUDE: &str = r#"set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# J LABEL CMD...: a JSON document between markers, then its exit code.
J() { local label=$1; shift; echo "@@BEGIN-$label@@"; "$@" 2>/tmp/j.err; local rc=$?; echo "@@END-$label@@"; echo "@@RC $label=$rc"; sed "s/^/@@ERR $label: /" /tmp/j.err; }
# V KEY CMD...: the output of CMD on one line (newlines as |).
V() { local key=$1; shift; echo "@@VAL $key=$("$@" 2>&1 | tr '\n' '|' | sed 's/|$//')"; }
# R LABEL CMD...: run CMD, print its output prefixed, then its exit code.
R() { local label=$1; shift; "$@" >/tmp/r.out 2>&1; local rc=$?; sed "s/^/@@OUT $label: /" /tmp/r.out; echo "@@RC $label=$rc"; }
exists() { if test -e "$1"; then echo present; else echo absent; fi; }
# The names in bootc/ of the boot filesystem: the ESP (read with mtools) on
# UEFI, /sysroot/boot on BIOS; `.`-prefixed temporary names left out.
boot_dirs() {
    local esp
    esp=$(lsblk -rnpo PATH,PARTTYPE | while read -r p t; do [ "${t,,}" = c12a7328-f81f-11d2-ba4b-00a0c93ec93b ] && echo "$p"; done | head -n1)
    if [ -n "$esp" ]; then
        # (mdir warns about the partition geometry on stderr.)
        MTOOLS_SKIP_CHECK=1 mdir -b -i "$esp" ::/bootc 2>/dev/null | sed -n 's|^::/bootc/\([^./][^/]*\)/$|\1|p'
    else
        ls /sysroot/boot/bootc | grep -v '^\.'
    fi
}
"#;

/// The `BOOTCTEST` disk `work/bootctest.ext4` holding an OCI layout of each
/// (image, name) at `/name` (tag `name`) and a placeholder step.sh; returns
/// it with the layouts' manifest digests, in order.
pub(crate) fn make_test_disk(
    work: &Path,
    images: &[(&str, &str)],
) -> Result<(PathBuf, Vec<String>)> {
    let dir = work.join("testdisk");
    fs::create_dir(&dir)?;
    let mut digests = Vec::new();
    for (img, name) in images {
        run(Command::new("skopeo").args([
            "copy",
            "--quiet",
            &format!("containers-storage:{img}"),
            &format!("oci:{}:{name}", dir.join(name).display()),
        ]))
        .with_context(|| format!("Copying {img} to an OCI layout"))?;
        digests.push(oci_digest(&dir.join(name))?);
    }
    fs::write(dir.join("step.sh"), "echo no step yet\n")?;
    let testdisk = work.join("bootctest.ext4");
    vm::make_ext4_image(&dir, "BOOTCTEST", &testdisk)?;
    fs::remove_dir_all(&dir)?;
    Ok((testdisk, digests))
}

/// Put `body` (after [`PRELUDE`]) as step.sh on the BOOTCTEST disk
/// `testdisk`, dropping the previous step's out.log.
pub(crate) fn write_step(testdisk: &Path, body: &str) -> Result<()> {
    let m = Mounted::new(testdisk, "loop")?;
    fs::write(m.path().join("step.sh"), format!("{PRELUDE}{body}"))
        .context("Writing step.sh on the BOOTCTEST disk")?;
    let _ = fs::remove_file(m.path().join("out.log"));
    Ok(())
}

/// A directory holding `body` (after [`PRELUDE`]) as step.sh, to attach as
/// the BOOTCTEST disk with [`vm::VmBuilder::disk_from_dir`].
pub(crate) fn step_dir(body: &str) -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("bootc-step.")
        .tempdir_in("/var/tmp")?;
    fs::write(dir.path().join("step.sh"), format!("{PRELUDE}{body}"))?;
    Ok(dir)
}

/// What one step printed.
#[derive(Debug)]
pub(crate) struct Step {
    /// The lines between BOOTC-STEP-BEGIN and BOOTC-STEP-END.
    pub(crate) text: String,
    /// BOOTC-STEP-RC, if printed.
    pub(crate) rc: Option<i32>,
}

impl Step {
    pub(crate) fn parse(r: &Run) -> Result<Self> {
        let text = vm::parse_block(&r.log, "BOOTC-STEP-BEGIN", "BOOTC-STEP-END").context(
            "No BOOTC-STEP-BEGIN ... BOOTC-STEP-END block on the console (test runner unit)",
        )?;
        let rc = vm::tail_lines(&r.log, usize::MAX)
            .lines()
            .rev()
            .find_map(|l| {
                l.split("BOOTC-STEP-RC=")
                    .nth(1)
                    .map(|v| v.trim().parse().ok())
            })
            .flatten();
        Ok(Self { text, rc })
    }

    /// What a step printed before the guest went down in its middle (a
    /// reboot by `--apply`): from BOOTC-STEP-BEGIN to the end of the log.
    pub(crate) fn parse_partial(r: &Run) -> Self {
        // An end marker after the log closes the last block.
        let log = format!("{}\nBOOTC-STEP-END\n", r.log);
        let text = vm::parse_block(&log, "BOOTC-STEP-BEGIN", "BOOTC-STEP-END").unwrap_or_default();
        Self { text, rc: None }
    }

    /// The JSON document printed by `J label`; fails if its command failed.
    pub(crate) fn json(&self, label: &str) -> Result<Value> {
        let rc = self.rc_of(label);
        ensure!(
            rc == Some(0),
            "`bootc status --format json` ({label}) in the guest exited with {rc:?}: {}",
            self.joined(&format!("@@ERR {label}: "))
        );
        let body = vm::parse_block(
            &self.text,
            &format!("@@BEGIN-{label}@@"),
            &format!("@@END-{label}@@"),
        )
        .with_context(|| format!("no status JSON block {label} in the step output"))?;
        serde_json::from_str(&body)
            .with_context(|| format!("Parsing the status JSON {label}:\n{body}"))
    }

    /// The lines that start with `prefix`, without it.
    fn prefixed<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> {
        self.text
            .lines()
            .filter_map(move |l| l.strip_prefix(prefix))
    }

    /// [`Step::prefixed`] joined with newlines.
    fn joined(&self, prefix: &str) -> String {
        self.prefixed(prefix).collect::<Vec<_>>().join("\n")
    }

    /// The exit code of the last `R label` or `J label`.
    pub(crate) fn rc_of(&self, label: &str) -> Option<i32> {
        self.prefixed(&format!("@@RC {label}="))
            .filter_map(|v| v.trim().parse().ok())
            .last()
    }

    /// The exit code of `R label` is `want`; the command's output otherwise.
    pub(crate) fn expect_rc(&self, label: &str, want: i32) -> Result<()> {
        let got = self.rc_of(label);
        ensure!(
            got == Some(want),
            "`{label}` in the guest exited with {got:?}, not {want}; its output:\n{}",
            self.out(label)
        );
        Ok(())
    }

    /// The output lines of `R label`, joined with newlines.
    pub(crate) fn out(&self, label: &str) -> String {
        self.joined(&format!("@@OUT {label}: "))
    }

    /// Run `check` on the step's status document (`J status`, which every
    /// [`super::Guest`] step prints first); a failure carries the boot's
    /// report and then `what` (the step it checked).
    pub(crate) fn check<T>(
        &self,
        r: &Run,
        what: &str,
        check: impl FnOnce(&Value) -> Result<T>,
    ) -> Result<T> {
        super::check(r, Some(self), what, || check(&self.json("status")?))
    }

    /// The value of the last `V key` line.
    pub(crate) fn val(&self, key: &str) -> Option<String> {
        self.prefixed(&format!("@@VAL {key}="))
            .last()
            .map(|v| v.trim_end().to_owned())
    }

    /// The value of `V key` is `want`.
    pub(crate) fn expect_val(&self, key: &str, want: &str) -> Result<()> {
        let got = self.val(key);
        ensure!(
            got.as_deref() == Some(want),
            "guest check {key}: got {got:?}, want {want:?}"
        );
        Ok(())
    }

    /// [`Step::expect_val`] for each (key, wanted value).
    pub(crate) fn expect_vals(&self, want: &[(&str, &str)]) -> Result<()> {
        want.iter().try_for_each(|(k, v)| self.expect_val(k, v))
    }
}

/// The kernel command line printed by `V cmdline` has (or lacks) `arg`.
pub(crate) fn expect_karg(s: &Step, arg: &str, present: bool) -> Result<()> {
    let cmdline = s
        .val("cmdline")
        .context("no cmdline value in the step output")?;
    let has = cmdline.split_whitespace().any(|a| a == arg);
    ensure!(
        has == present,
        "/proc/cmdline {} {arg}: {cmdline}",
        if present { "lacks" } else { "still has" }
    );
    Ok(())
}

/// [`expect_karg`] for each (argument, present).
pub(crate) fn expect_kargs(s: &Step, want: &[(&str, bool)]) -> Result<()> {
    want.iter().try_for_each(|(a, p)| expect_karg(s, a, *p))
}

/// `status.<which>` names `image` over `transport` with `digest`.
pub(crate) fn expect_entry(
    st: &Value,
    which: &str,
    transport: &str,
    image: &str,
    digest: &str,
) -> Result<()> {
    let e = &st["status"][which];
    ensure!(!e.is_null(), "status.{which} is null: {}", st["status"]);
    let img = &e["image"];
    ensure!(
        img["image"]["transport"] == transport && img["image"]["image"] == image,
        "status.{which}.image.image is {}, want {transport}:{image}",
        img["image"]
    );
    ensure!(
        img["imageDigest"] == digest,
        "status.{which}.image.imageDigest is {}, want {digest}",
        img["imageDigest"]
    );
    Ok(())
}

/// `status.booted` is the image with `digest` (and, when given, named
/// `image` over `transport`; install may record a normalised name, so a
/// containers-storage name only has to end with it).
pub(crate) fn expect_booted(
    st: &Value,
    transport: &str,
    image: Option<&str>,
    digest: &str,
) -> Result<()> {
    let e = &st["status"]["booted"];
    ensure!(!e.is_null(), "status.booted is null: {}", st["status"]);
    let img = &e["image"];
    ensure!(
        img["imageDigest"] == digest,
        "status.booted.image.imageDigest is {}, want {digest} ({transport}:{image:?})",
        img["imageDigest"]
    );
    ensure!(
        img["image"]["transport"] == transport,
        "status.booted transport is {}, want {transport}",
        img["image"]["transport"]
    );
    if let Some(want) = image {
        let got = img["image"]["image"].as_str().unwrap_or_default();
        ensure!(
            got == want || (transport == "containers-storage" && got.ends_with(want)),
            "status.booted.image.image.image is {got:?}, want {want:?}"
        );
    }
    Ok(())
}

/// What a step of the [`PRELUDE`] helpers prints is read back as written
/// (a pure test of the parsing, on a console log made up here).
pub(crate) fn guest_step_protocol_reads_back(_ctx: &crate::Ctx) -> Result<()> {
    use std::os::unix::process::ExitStatusExt;
    let log = "[    1.000000] Linux version 6.1\r\n\
        BOOTC-STEP-BEGIN\r\n\
        @@BEGIN-status@@\n{\"status\": {\"booted\": null}}\n@@END-status@@\n@@RC status=0\n\
        @@VAL variant=v1\n@@VAL variant=v2 \n\
        @@OUT rb: line one\n@@OUT rb: line two\n@@RC rb=3\n\
        @@BEGIN-bad@@\n@@END-bad@@\n@@RC bad=1\n@@ERR bad: no sysroot\n\
        BOOTC-STEP-END\nBOOTC-STEP-RC=0\n";
    let r = Run {
        end: vm::RunEnd::Exited(std::process::ExitStatus::from_raw(0)),
        matched_after: None,
        failure: None,
        log: log.to_owned(),
        qemu_stderr: String::new(),
        elapsed: std::time::Duration::ZERO,
        pid: 0,
    };
    let s = Step::parse(&r)?;
    ensure!(s.rc == Some(0), "step rc {:?}", s.rc);
    ensure!(s.json("status")?["status"]["booted"].is_null());
    let e = format!("{:#}", s.json("bad").unwrap_err());
    ensure!(
        e.contains("exited with Some(1)") && e.contains("no sysroot"),
        "{e}"
    );
    ensure!(
        s.val("variant").as_deref() == Some("v2"),
        "{:?}",
        s.val("variant")
    );
    s.expect_vals(&[("variant", "v2")])?;
    ensure!(s.expect_val("variant", "v1").is_err());
    ensure!(s.out("rb") == "line one\nline two", "{:?}", s.out("rb"));
    ensure!(s.rc_of("rb") == Some(3) && s.rc_of("none").is_none());
    let e = format!("{:#}", s.expect_rc("rb", 0).unwrap_err());
    ensure!(e.contains("not 0") && e.contains("line two"), "{e}");
    let partial = Step::parse_partial(&Run {
        log: "BOOTC-STEP-BEGIN\n@@VAL k=x\n".to_owned(),
        ..r
    });
    ensure!(partial.val("k").as_deref() == Some("x") && partial.rc.is_none());
    Ok(())
}
