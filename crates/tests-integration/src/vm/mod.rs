//! A qemu harness for boot tests: one fresh `qemu-system-x86_64 -accel tcg`
//! per boot, serial console to a file, every run bounded by a timeout.
//!
//! - [`exclusive`]: the lock every VM test holds, so that guests run one at
//!   a time.
//! - [`Vm::builder`] describes the machine: [`Firmware`] (SeaBIOS or OVMF
//!   with a private copy of the variable store), the boot disk, extra disks
//!   (raw files, or directories turned into ext4 images), memory, or a direct
//!   kernel boot.
//! - [`Vm::run_until`] starts qemu and returns when a pattern shows up on the
//!   serial console, when qemu exits, or at the timeout; qemu is killed (by
//!   pid) before it returns, so no process outlives a run. [`Vm::run_to_exit`]
//!   waits for the guest to power off.
//! - [`parse_status_json`] takes the `bootc status --format json` document
//!   printed between [`STATUS_BEGIN`] and [`STATUS_END`] out of a serial log;
//!   [`marker_value`] the text of other marker lines (`BOOTC-FINDMNT-ROOT ...`)
//!   and [`parse_findmnt_row`] the `findmnt` output on them.
//!
//! qemu runs with `-no-reboot`: after a systemd guest reboots, the in-process
//! firmware reset is slow or hangs under TCG, so a reboot ends the run and
//! the next boot is a new qemu on the same disks (and the same OVMF
//! variables).

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

mod disk;
mod serial;

pub use disk::{Partition, busybox_initramfs, make_ext4_image, parse_sfdisk_json, partitions};
pub use serial::{
    MountRow, marker_value, parse_block, parse_findmnt_row, parse_status_json, strip_ansi,
    tail_lines,
};

/// Line printed on the serial console before the status JSON.
pub const STATUS_BEGIN: &str = "BOOTC-STATUS-BEGIN";
/// Line printed on the serial console after the status JSON.
pub const STATUS_END: &str = "BOOTC-STATUS-END";

/// The qemu binary.
const QEMU: &str = "qemu-system-x86_64";

/// Memory of a guest unless set: the example image's dracut initramfs and
/// systemd are comfortable with it, and a few guests fit beside the builds.
const DEFAULT_MEMORY_MB: u32 = 2048;

/// How long a run goes on after a fail pattern ([`VmBuilder::fail_on`]),
/// so that the messages that follow it are in the log.
pub const FAIL_LINGER: Duration = Duration::from_secs(5);

/// How often the serial log is read while qemu runs.
const POLL: Duration = Duration::from_millis(100);

/// OVMF code and variable-store templates, tried in order; the code and the
/// variables of one pair must have the same size.
const OVMF_PAIRS: &[(&str, &str)] = &[
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
];

/// The firmware of the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS, qemu's default.
    Bios,
    /// OVMF, read-only code plus a per-[`Vm`] copy of the variable store.
    Uefi,
}

/// Where a disk comes from.
#[derive(Debug, Clone)]
enum DiskSource {
    /// A raw image file used in place.
    Raw(PathBuf),
    /// A directory copied into a new ext4 image (`mkfs.ext4 -d`) at build time.
    Directory { dir: PathBuf, label: String },
}

#[derive(Debug, Clone)]
struct DiskSpec {
    source: DiskSource,
    readonly: bool,
}

/// A direct kernel boot (`-kernel`, `-initrd`, `-append`).
#[derive(Debug, Clone)]
struct KernelBoot {
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    cmdline: String,
}

/// Describes a [`Vm`]; see [`Vm::builder`].
#[derive(Debug, Clone)]
pub struct VmBuilder {
    firmware: Firmware,
    disks: Vec<DiskSpec>,
    memory_mb: u32,
    cpus: u32,
    kernel: Option<KernelBoot>,
    extra_args: Vec<OsString>,
    fail_patterns: Vec<String>,
}

impl VmBuilder {
    /// The firmware (default [`Firmware::Bios`]).
    pub fn firmware(mut self, firmware: Firmware) -> Self {
        self.firmware = firmware;
        self
    }

    /// Add a raw disk image, attached as the next virtio disk (the first one
    /// added is `/dev/vda` and the one the firmware boots). Written by the guest.
    pub fn disk(mut self, path: impl Into<PathBuf>) -> Self {
        self.disks.push(DiskSpec {
            source: DiskSource::Raw(path.into()),
            readonly: false,
        });
        self
    }

    /// Add a raw disk image the guest sees read-only.
    pub fn disk_readonly(mut self, path: impl Into<PathBuf>) -> Self {
        self.disks.push(DiskSpec {
            source: DiskSource::Raw(path.into()),
            readonly: true,
        });
        self
    }

    /// Add a disk holding a copy of the directory `dir` in an ext4
    /// filesystem labelled `label` (made at [`VmBuilder::build`], owned by
    /// the [`Vm`]), for example an OCI layout to hand to the guest.
    pub fn disk_from_dir(mut self, dir: impl Into<PathBuf>, label: &str) -> Self {
        self.disks.push(DiskSpec {
            source: DiskSource::Directory {
                dir: dir.into(),
                label: label.to_owned(),
            },
            readonly: false,
        });
        self
    }

    /// Guest memory in MiB (default 2048).
    pub fn memory_mb(mut self, mb: u32) -> Self {
        self.memory_mb = mb;
        self
    }

    /// Number of virtual CPUs (default 1: TCG runs one host thread per
    /// vCPU, and the machine is shared).
    pub fn cpus(mut self, n: u32) -> Self {
        self.cpus = n;
        self
    }

    /// Boot `kernel` directly (through the firmware's loader) instead of a disk.
    pub fn kernel(
        mut self,
        kernel: impl Into<PathBuf>,
        initrd: Option<PathBuf>,
        cmdline: &str,
    ) -> Self {
        self.kernel = Some(KernelBoot {
            kernel: kernel.into(),
            initrd,
            cmdline: cmdline.to_owned(),
        });
        self
    }

    /// Console texts that mean the boot has failed for good (a kernel
    /// panic, an emergency shell waiting for input): a run stops
    /// [`FAIL_LINGER`] after one appears instead of waiting for its timeout.
    pub fn fail_on(mut self, patterns: &[&str]) -> Self {
        self.fail_patterns
            .extend(patterns.iter().map(|p| (*p).to_owned()));
        self
    }

    /// An extra qemu argument, appended as is.
    pub fn qemu_arg(mut self, arg: impl Into<OsString>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Prepare the machine: a work directory, the OVMF variables copy, the
    /// ext4 images of directory disks. Starts nothing.
    pub fn build(self) -> Result<Vm> {
        if let Some(reason) = qemu_missing() {
            bail!("{reason}");
        }
        let workdir = tempfile::Builder::new()
            .prefix("bootc-vm.")
            .tempdir_in("/var/tmp")
            .context("Creating the VM work directory under /var/tmp")?;
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |a: &str| args.push(a.into());
        push("-accel");
        push("tcg");
        push("-m");
        push(&self.memory_mb.to_string());
        push("-smp");
        push(&self.cpus.to_string());
        push("-display");
        push("none");
        push("-monitor");
        push("none");
        push("-no-reboot");
        push("-nic");
        push("none");
        if self.firmware == Firmware::Uefi {
            let (code, vars_template) = ovmf_pair()?;
            let vars = workdir.path().join("OVMF_VARS.fd");
            fs::copy(vars_template, &vars)
                .with_context(|| format!("Copying {vars_template} to {}", vars.display()))?;
            args.push("-drive".into());
            args.push(format!("if=pflash,format=raw,unit=0,readonly=on,file={code}").into());
            args.push("-drive".into());
            args.push(drive_arg("if=pflash,format=raw,unit=1,file=", &vars)?);
        }
        for (i, disk) in self.disks.iter().enumerate() {
            let path = match &disk.source {
                DiskSource::Raw(p) => {
                    ensure!(p.exists(), "disk image {} does not exist", p.display());
                    p.clone()
                }
                DiskSource::Directory { dir, label } => {
                    let img = workdir.path().join(format!("disk{i}.ext4"));
                    make_ext4_image(dir, label, &img)?;
                    img
                }
            };
            let ro = if disk.readonly { ",readonly=on" } else { "" };
            args.push("-drive".into());
            let mut d = drive_arg("if=virtio,format=raw,cache=unsafe,file=", &path)?;
            d.push(ro);
            args.push(d);
        }
        if let Some(k) = &self.kernel {
            args.push("-kernel".into());
            args.push(k.kernel.clone().into());
            if let Some(initrd) = &k.initrd {
                args.push("-initrd".into());
                args.push(initrd.clone().into());
            }
            args.push("-append".into());
            args.push(k.cmdline.clone().into());
        }
        args.extend(self.extra_args);
        Ok(Vm {
            workdir,
            args,
            fail_patterns: self.fail_patterns,
            runs: 0,
            child: None,
        })
    }
}

/// A `-drive` value ending in a file name; qemu splits options on commas, so
/// a path with a comma would be misread.
fn drive_arg(prefix: &str, path: &Path) -> Result<OsString> {
    let s = path
        .to_str()
        .with_context(|| format!("Disk path {} is not UTF-8", path.display()))?;
    ensure!(
        !s.contains(','),
        "disk path {s} contains a comma, which qemu's -drive cannot take"
    );
    Ok(format!("{prefix}{s}").into())
}

fn ovmf_pair() -> Result<(&'static str, &'static str)> {
    OVMF_PAIRS
        .iter()
        .copied()
        .find(|(code, vars)| Path::new(code).exists() && Path::new(vars).exists())
        .context("No OVMF firmware found in /usr/share/OVMF (apt-get install ovmf)")
}

/// One VM test at a time in this process: two TCG guests on a 2-core
/// machine slow each other past their timeouts. Hold the guard for the
/// whole test (install and boots).
static VM_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Take the process-wide VM lock: one VM test at a time (two TCG guests on
/// a 2-core machine slow each other past their timeouts). A test that
/// panicked while holding it does not poison it for the others.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    VM_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why VM tests cannot run here, or `None` when they can: the qemu binary
/// is missing (no `/dev/kvm` is needed, qemu runs with TCG).
pub fn qemu_missing() -> Option<String> {
    match Command::new(QEMU)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!("{QEMU} --version failed ({s})")),
        Err(e) => Some(format!(
            "{QEMU} not found ({e}); apt-get install qemu-system-x86"
        )),
    }
}

/// A described machine; every run is a new qemu process on the same disks.
#[derive(Debug)]
pub struct Vm {
    workdir: tempfile::TempDir,
    args: Vec<OsString>,
    fail_patterns: Vec<String>,
    runs: u32,
    child: Option<Child>,
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Stopped after the pattern appeared (qemu was then killed).
    Matched,
    /// qemu exited by itself (power off, reboot with `-no-reboot`, or an error).
    Exited(ExitStatus),
    /// A fail pattern appeared ([`Run::failure`]; qemu was then killed).
    Failed,
    /// The timeout passed (qemu was then killed).
    TimedOut,
}

/// The outcome of one boot.
#[derive(Debug, Clone)]
pub struct Run {
    /// Why it ended.
    pub end: RunEnd,
    /// When the pattern appeared, counted from the start of qemu.
    pub matched_after: Option<Duration>,
    /// The first fail pattern that appeared, if any.
    pub failure: Option<String>,
    /// The whole serial console output (invalid UTF-8 replaced).
    pub log: String,
    /// qemu's own stderr (disk or firmware errors show up here).
    pub qemu_stderr: String,
    /// Wall time from spawning qemu to the end.
    pub elapsed: Duration,
    /// The pid qemu had (it is gone when the [`Run`] is returned).
    pub pid: u32,
}

impl Run {
    /// Whether the pattern was seen.
    pub fn matched(&self) -> bool {
        self.matched_after.is_some()
    }

    /// Whether qemu exited by itself with status 0 (the guest powered off or
    /// rebooted).
    pub fn exited_cleanly(&self) -> bool {
        matches!(self.end, RunEnd::Exited(s) if s.success())
    }

    /// The last `n` lines of the serial log, for error messages.
    pub fn tail(&self, n: usize) -> String {
        tail_lines(&self.log, n)
    }

    /// The status document printed on the console; see [`parse_status_json`].
    pub fn status_json(&self) -> Result<serde_json::Value> {
        parse_status_json(&self.log)
    }
}

impl Vm {
    /// Start describing a machine: SeaBIOS, 2048 MiB, one vCPU, no disks.
    pub fn builder() -> VmBuilder {
        VmBuilder {
            firmware: Firmware::Bios,
            disks: Vec::new(),
            memory_mb: DEFAULT_MEMORY_MB,
            cpus: 1,
            kernel: None,
            extra_args: Vec::new(),
            fail_patterns: Vec::new(),
        }
    }

    /// The qemu arguments of every run, without the serial log.
    pub fn args(&self) -> &[OsString] {
        &self.args
    }

    /// Boot, and stop when `pattern` appears on the serial console, when qemu
    /// exits, or after `timeout`. qemu is killed before this returns.
    pub fn run_until(&mut self, pattern: &str, timeout: Duration) -> Result<Run> {
        self.run(Some(pattern), Duration::ZERO, timeout)
    }

    /// Boot, wait for `pattern`, then give the guest up to `grace` to exit by
    /// itself (a power-off after the last message); the whole run lasts at
    /// most `timeout`. qemu is killed before this returns.
    pub fn run_until_then_exit(
        &mut self,
        pattern: &str,
        grace: Duration,
        timeout: Duration,
    ) -> Result<Run> {
        self.run(Some(pattern), grace, timeout)
    }

    /// Boot, and wait for qemu to exit (guest power-off or reboot), at most
    /// `timeout`; then kill it.
    pub fn run_to_exit(&mut self, timeout: Duration) -> Result<Run> {
        self.run(None, Duration::ZERO, timeout)
    }

    fn run(&mut self, pattern: Option<&str>, grace: Duration, timeout: Duration) -> Result<Run> {
        self.kill();
        self.runs += 1;
        let log_path = self
            .workdir
            .path()
            .join(format!("serial-{}.log", self.runs));
        let err_path = self
            .workdir
            .path()
            .join(format!("qemu-{}.stderr", self.runs));
        // qemu truncates the file; creating it first lets us open it for
        // reading before qemu has written anything.
        fs::File::create(&log_path).with_context(|| format!("Creating {}", log_path.display()))?;
        let stderr = fs::File::create(&err_path)
            .with_context(|| format!("Creating {}", err_path.display()))?;
        let mut serial = OsString::from("file:");
        serial.push(&log_path);

        // setpriv --pdeathsig: qemu is killed by the kernel if this thread
        // dies without running our Drop (a test binary killed by SIGKILL).
        // setpriv execs qemu, so the pid we kill is qemu's.
        let mut cmd = if Path::new("/usr/bin/setpriv").exists() {
            let mut c = Command::new("/usr/bin/setpriv");
            c.args(["--pdeathsig", "KILL", QEMU]);
            c
        } else {
            Command::new(QEMU)
        };
        cmd.args(&self.args)
            .arg("-serial")
            .arg(serial)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let start = Instant::now();
        let child = cmd.spawn().with_context(|| format!("Starting {cmd:?}"))?;
        let pid = child.id();
        self.child = Some(child);

        let mut reader =
            fs::File::open(&log_path).with_context(|| format!("Opening {}", log_path.display()))?;
        let mut buf = Vec::new();
        let mut searched = 0usize;
        let mut matched_after = None;
        let mut failure: Option<String> = None;
        let mut fail_searched = 0usize;
        let fail_overlap = self
            .fail_patterns
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(0);
        let mut deadline = start + timeout;
        let end = loop {
            read_new(&mut reader, &mut buf)?;
            if let (Some(p), None) = (pattern, matched_after) {
                // Search only what is new (minus a pattern's length of overlap).
                let from = searched.saturating_sub(p.len()).min(buf.len());
                if memfind(&buf[from..], p.as_bytes()) {
                    matched_after = Some(start.elapsed());
                    deadline = deadline.min(Instant::now() + grace);
                }
                searched = buf.len();
            }
            if failure.is_none() {
                let from = fail_searched.saturating_sub(fail_overlap).min(buf.len());
                if let Some(p) = self
                    .fail_patterns
                    .iter()
                    .find(|p| memfind(&buf[from..], p.as_bytes()))
                {
                    failure = Some(p.clone());
                    deadline = deadline.min(Instant::now() + FAIL_LINGER);
                }
                fail_searched = buf.len();
            }
            let child = self.child.as_mut().context("qemu child vanished")?;
            if let Some(status) = child.try_wait().context("Waiting for qemu")? {
                self.child = None;
                // What qemu wrote just before exiting.
                read_new(&mut reader, &mut buf)?;
                if let (Some(p), None) = (pattern, matched_after)
                    && memfind(&buf, p.as_bytes())
                {
                    matched_after = Some(start.elapsed());
                }
                break RunEnd::Exited(status);
            }
            if Instant::now() >= deadline {
                break if matched_after.is_some() {
                    RunEnd::Matched
                } else if failure.is_some() {
                    RunEnd::Failed
                } else {
                    RunEnd::TimedOut
                };
            }
            std::thread::sleep(POLL);
        };
        let elapsed = start.elapsed();
        self.kill();
        read_new(&mut reader, &mut buf)?;
        let qemu_stderr = fs::read_to_string(&err_path).unwrap_or_default();
        let run = Run {
            end,
            matched_after,
            failure,
            log: String::from_utf8_lossy(&buf).into_owned(),
            qemu_stderr,
            elapsed,
            pid,
        };
        if let Some(dir) = std::env::var_os("BOOTC_TEST_VM_LOGDIR") {
            keep_log(Path::new(&dir), &log_path)?;
        }
        Ok(run)
    }

    /// Kill the running qemu, if any, by its pid, and reap it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // ESRCH (already exited) is fine; wait() reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Copy a serial log to `dir` (set `BOOTC_TEST_VM_LOGDIR` to keep them).
fn keep_log(dir: &Path, log: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("Creating {}", dir.display()))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let name = format!(
        "{stamp}-{}-{}",
        std::thread::current()
            .name()
            .unwrap_or("vm")
            .replace(['/', ':'], "_"),
        log.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("serial.log")
    );
    fs::copy(log, dir.join(&name))
        .with_context(|| format!("Copying {} to {}", log.display(), dir.display()))?;
    Ok(())
}

fn read_new(f: &mut fs::File, buf: &mut Vec<u8>) -> Result<()> {
    // qemu opens with O_TRUNC after we opened the file; if it shrank under
    // us, start over.
    let len = f.metadata()?.len();
    if (len as usize) < buf.len() {
        buf.clear();
        f.seek(SeekFrom::Start(0))?;
    }
    f.read_to_end(buf).context("Reading the serial log")?;
    Ok(())
}

fn memfind(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}
