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

/// Make an ext4 image at `img` holding a copy of `dir` (`mkfs.ext4 -d`),
/// sized from the directory's content with room for metadata.
pub fn make_ext4_image(dir: &Path, label: &str, img: &Path) -> Result<()> {
    let used = dir_size(dir).with_context(|| format!("Measuring {}", dir.display()))?;
    // ext4 metadata, journal and per-file block rounding: a quarter more, plus
    // a fixed 64 MiB so tiny directories get a valid filesystem.
    let size = (used + used / 4 + (64 << 20)).next_multiple_of(1 << 20);
    let f = fs::File::create(img).with_context(|| format!("Creating {}", img.display()))?;
    f.set_len(size)
        .with_context(|| format!("Sizing {} to {size} bytes", img.display()))?;
    drop(f);
    crate::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", label, "-d"])
            .arg(dir)
            .arg(img),
    )?;
    Ok(())
}

/// Bytes used by regular files under `dir` (symlinks not followed).
fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        if ft.is_dir() {
            total += dir_size(&entry.path())?;
        } else if ft.is_file() {
            total += entry.metadata()?.len().next_multiple_of(4096);
        }
    }
    Ok(total)
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

/// The last `n` lines of `text`, with control characters except newlines
/// and tabs dropped (serial logs carry escape sequences).
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..]
        .iter()
        .map(|l| {
            strip_ansi(l)
                .chars()
                .filter(|c| !c.is_control() || *c == '\t')
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n")
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

// --- Serial log parsing -------------------------------------------------------

/// Remove ANSI escape sequences (CSI `ESC [ ... letter`, and lone `ESC x`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        // CSI: parameters and intermediates, then one final byte in @..~.
        // Any other escape: the escape and the next character.
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

/// The byte length of a kernel log timestamp `[ SSSS.UUUUUU]` (plus one
/// following space, if any) at the start of `s`.
fn kernel_stamp_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    if b.first() != Some(&b'[') {
        return None;
    }
    let mut i = 1;
    while b.get(i) == Some(&b' ') {
        i += 1;
    }
    let secs = i;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    if i == secs || b.get(i) != Some(&b'.') {
        return None;
    }
    i += 1;
    let usecs = i;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    if i - usecs != 6 || b.get(i) != Some(&b']') {
        return None;
    }
    i += 1;
    if b.get(i) == Some(&b' ') {
        i += 1;
    }
    Some(i)
}

/// Where a kernel timestamp starts inside `s`, if anywhere.
fn find_kernel_stamp(s: &str) -> Option<usize> {
    s.match_indices('[')
        .map(|(i, _)| i)
        .find(|&i| kernel_stamp_len(&s[i..]).is_some())
}

/// A systemd console status line (`[  OK  ] Started ...`, `[FAILED] ...`,
/// `         Starting ...`), after ANSI stripping. A line of JSON never starts
/// with a bracket holding letters, nor with an upper-case word.
fn is_console_status(line: &str) -> bool {
    if let Some(rest) = line.strip_prefix('[') {
        if let Some(close) = rest.find(']') {
            let inner = &rest[..close];
            return !inner.contains('"')
                && inner.chars().any(|c| c.is_ascii_alphabetic() || c == '*');
        }
        return false;
    }
    line.trim_start()
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_uppercase())
}

/// The identifier of a journald console prefix `IDENT[PID]: ` ending
/// `prefix` (what stands before a message on its line), after an optional
/// kernel-style timestamp. The PID is not part of it: the lines of one unit
/// carry the PID of whichever of its processes wrote them.
fn journal_ident(prefix: &str) -> Option<&str> {
    let p = match find_kernel_stamp(prefix) {
        Some(i) => &prefix[i + kernel_stamp_len(&prefix[i..])?..],
        None => prefix,
    };
    // IDENT[PID]:<space>, IDENT without blanks.
    let body = p.trim_start().strip_suffix("]: ")?;
    let open = body.rfind('[')?;
    let (name, pid) = (&body[..open], &body[open + 1..]);
    let name = name.rsplit(' ').next()?;
    (!name.is_empty() && !pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit())).then_some(name)
}

/// The lines of the serial log, CR and ANSI sequences removed.
fn clean_lines(log: &str) -> Vec<String> {
    log.split('\n')
        .map(|l| strip_ansi(l).replace('\r', ""))
        .collect()
}

/// The text between the last complete pair of `begin` and `end` marker
/// lines of a serial log, with console noise removed:
///
/// - CRs (serial consoles end lines with CRLF, and some lines get two) and
///   ANSI escapes;
/// - if the begin marker has a journald prefix (`[ 12.345678] IDENT[PID]: `,
///   as `StandardOutput=journal+console` prints), only lines with the same
///   IDENT count (any PID: the unit's child processes have their own), with
///   the prefix removed;
/// - otherwise kernel messages (`[ 12.345678] ...`) and systemd status
///   lines are dropped, and a line cut by a kernel message in its middle is
///   joined with the line that continues it.
pub fn parse_block(log: &str, begin: &str, end: &str) -> Option<String> {
    let lines = clean_lines(log);
    // The last begin marker that has an end marker after it.
    let mut chosen = None;
    let mut open: Option<usize> = None;
    for (i, l) in lines.iter().enumerate() {
        if l.contains(begin) {
            open = Some(i);
        } else if l.contains(end)
            && let Some(b) = open.take()
        {
            chosen = Some((b, i));
        }
    }
    let (b, e) = chosen?;
    let begin_line = &lines[b];
    let prefix = &begin_line[..begin_line.find(begin)?];
    let mut out: Vec<String> = Vec::new();
    if let Some(ident) = journal_ident(prefix) {
        for l in &lines[b + 1..e] {
            if let Some((_, body)) = messages(l).find(|(i, _)| *i == Some(ident)) {
                out.push(body.to_owned());
            }
        }
        return Some(out.join("\n"));
    }
    let mut pending = String::new();
    for l in &lines[b + 1..e] {
        if kernel_stamp_len(l).is_some() || is_console_status(l) {
            continue;
        }
        match find_kernel_stamp(l) {
            // Our line was cut by a kernel message: the rest follows on a later line.
            Some(p) => pending.push_str(&l[..p]),
            None => {
                pending.push_str(l);
                out.push(std::mem::take(&mut pending));
            }
        }
    }
    if !pending.is_empty() {
        out.push(pending);
    }
    Some(out.join("\n"))
}

/// The JSON document between [`STATUS_BEGIN`] and [`STATUS_END`] in a serial
/// log (see [`parse_block`] for the noise it tolerates).
pub fn parse_status_json(log: &str) -> Result<serde_json::Value> {
    let text = parse_block(log, STATUS_BEGIN, STATUS_END)
        .with_context(|| format!("No {STATUS_BEGIN} ... {STATUS_END} block in the serial log"))?;
    serde_json::from_str(&text)
        .with_context(|| format!("Parsing the status JSON printed on the console:\n{text}"))
}

/// A mount as `findmnt -n -o [TARGET,]SOURCE,FSTYPE,OPTIONS` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountRow {
    /// `TARGET` (empty if not printed).
    pub target: String,
    /// `SOURCE` (empty if findmnt printed none).
    pub source: String,
    /// `FSTYPE`.
    pub fstype: String,
    /// `OPTIONS`.
    pub options: String,
}

impl MountRow {
    /// Whether the options include `ro`.
    pub fn is_readonly(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

/// Parse one `findmnt -n -o SOURCE,FSTYPE,OPTIONS` line (with a leading
/// `TARGET` column when `with_target`). findmnt pads an empty SOURCE with
/// blanks, so the columns are taken from the right.
pub fn parse_findmnt_row(text: &str, with_target: bool) -> Option<MountRow> {
    let mut cols: Vec<&str> = text.split_whitespace().collect();
    let options = cols.pop()?.to_owned();
    let fstype = cols.pop()?.to_owned();
    let target = if with_target {
        if cols.is_empty() {
            return None;
        }
        cols.remove(0).to_owned()
    } else {
        String::new()
    };
    if cols.len() > 1 {
        return None;
    }
    Some(MountRow {
        target,
        source: cols.first().map(|s| (*s).to_owned()).unwrap_or_default(),
        fstype,
        options,
    })
}

/// The text after `marker` on the last console line where `marker` stands
/// as a word at the start of the message (after an optional journald
/// `[ stamp] IDENT[PID]: ` prefix), trimmed; `Some("")` for a bare marker.
pub fn marker_value(log: &str, marker: &str) -> Option<String> {
    clean_lines(log).iter().rev().find_map(|line| {
        messages(line).find_map(|(_, body)| {
            let rest = body.strip_prefix(marker)?;
            (rest.is_empty() || rest.starts_with(' ')).then(|| rest.trim().to_owned())
        })
    })
}

/// Split a console line into its journald `IDENT` (if the line is
/// `[ stamp] IDENT[PID]: text` or `IDENT[PID]: text`) and the text.
fn split_journal_prefix(line: &str) -> (Option<&str>, &str) {
    let start = kernel_stamp_len(line).unwrap_or(0);
    let rest = &line[start..];
    if let Some(pos) = rest.find("]: ") {
        let candidate = &rest[..pos + 3];
        if let Some(ident) = journal_ident(candidate) {
            return (Some(ident), &rest[pos + 3..]);
        }
    }
    (None, rest)
}

/// The ways to read a console line as one message: as it is, and from
/// after each kernel timestamp in it (other output, such as a getty's
/// `login: ` prompt, may stand before a message on the same line).
fn messages(line: &str) -> impl Iterator<Item = (Option<&str>, &str)> {
    let starts = std::iter::once(0).chain(
        line.match_indices('[')
            .filter_map(|(i, _)| kernel_stamp_len(&line[i..]).map(|n| i + n)),
    );
    starts.map(|i| split_journal_prefix(&line[i..]))
}

// --- Disk images ---------------------------------------------------------------

/// One partition of a disk image, from `sfdisk --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Partition number (1-based, as in the node name).
    pub number: u32,
    /// Type GUID (GPT) or type code (MBR), upper case.
    pub type_guid: String,
    /// Offset from the start of the disk, in bytes.
    pub start_bytes: u64,
    /// Size in bytes.
    pub size_bytes: u64,
}

/// The partitions of a disk image file, read with `sfdisk --json` (no loop
/// device needed).
pub fn partitions(disk: &Path) -> Result<Vec<Partition>> {
    let out = crate::run(Command::new("sfdisk").arg("--json").arg(disk))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_sfdisk_json(&text).with_context(|| format!("Parsing sfdisk --json {}", disk.display()))
}

/// Parse `sfdisk --json` output.
pub fn parse_sfdisk_json(text: &str) -> Result<Vec<Partition>> {
    let v: serde_json::Value = serde_json::from_str(text)?;
    let pt = &v["partitiontable"];
    let sector = pt["sectorsize"].as_u64().unwrap_or(512);
    let device = pt["device"].as_str().context("no partitiontable.device")?;
    let mut parts = Vec::new();
    for p in pt["partitions"]
        .as_array()
        .context("no partitiontable.partitions")?
    {
        let node = p["node"].as_str().context("partition without node")?;
        let number: u32 = node
            .strip_prefix(device)
            .map(|s| s.trim_start_matches('p'))
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("partition node {node} of {device}"))?;
        parts.push(Partition {
            number,
            type_guid: p["type"].as_str().unwrap_or_default().to_ascii_uppercase(),
            start_bytes: p["start"].as_u64().context("partition without start")? * sector,
            size_bytes: p["size"].as_u64().context("partition without size")? * sector,
        });
    }
    Ok(parts)
}

// --- Tiny initramfs (harness self-test) ----------------------------------------

/// Append one `newc` cpio entry.
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
    let namesize = name.len() + 1;
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        1, // nlink
        0, // mtime
        data.len() as u32,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        namesize as u32,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Name, mode, device numbers, content of a cpio entry.
type Entry<'a> = (&'a str, u32, (u32, u32), &'a [u8]);

/// Write a gzip-less `newc` initramfs to `out` holding a static busybox
/// (`busybox`, e.g. `/bin/busybox` of Debian's busybox-static) as
/// `/bin/busybox`, and `init_script` as `/init` (run by `/bin/busybox sh`).
pub fn busybox_initramfs(busybox: &Path, init_script: &str, out: &Path) -> Result<()> {
    let bb = fs::read(busybox).with_context(|| format!("Reading {}", busybox.display()))?;
    let init = format!("#!/bin/busybox sh\n{init_script}");
    let mut a = Vec::with_capacity(bb.len() + 4096);
    let dir = 0o040755;
    let file = 0o100755;
    let entries: [Entry; 7] = [
        ("bin", dir, (0, 0), b""),
        ("dev", dir, (0, 0), b""),
        ("dev/console", 0o020600, (5, 1), b""),
        ("proc", dir, (0, 0), b""),
        ("sys", dir, (0, 0), b""),
        ("bin/busybox", file, (0, 0), &bb),
        ("init", file, (0, 0), init.as_bytes()),
    ];
    for (ino, (name, mode, rdev, data)) in entries.into_iter().enumerate() {
        cpio_entry(&mut a, ino as u32 + 1, name, mode, rdev, data);
    }
    cpio_entry(&mut a, 0, "TRAILER!!!", 0, (0, 0), b"");
    fs::write(out, a).with_context(|| format!("Writing {}", out.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS_RAW: &str = include_str!("fixtures/serial-status-raw.log");
    const STATUS_JOURNAL: &str = include_str!("fixtures/serial-status-journal.log");
    /// An excerpt of a real boot of the example image (to-filesystem, GRUB).
    const STATUS_VM: &str = include_str!("fixtures/serial-status-vm.log");

    fn check_block(log: &str, expect: Option<&str>) {
        assert_eq!(
            parse_block(log, STATUS_BEGIN, STATUS_END).as_deref(),
            expect,
            "log:\n{log}"
        );
    }

    #[test]
    fn blocks() {
        let table: &[(&str, Option<&str>)] = &[
            // Plain, CRLF.
            (
                "BOOTC-STATUS-BEGIN\r\n{\"a\": 1}\r\nBOOTC-STATUS-END\r\n",
                Some("{\"a\": 1}"),
            ),
            // No end marker: nothing.
            ("BOOTC-STATUS-BEGIN\n{\"a\": 1}\n", None),
            // No marker at all.
            ("[    1.000000] Linux version 6.12\n", None),
            // Kernel line and systemd status lines in between, doubled CR.
            (
                "BOOTC-STATUS-BEGIN\r\r\n{\r\n[   20.123456] random: crng init done\r\n[\x1b[0;32m  OK  \x1b[0m] Started foo.service.\r\n         Starting bar.service...\r\n  \"a\": [1, 2]\r\n}\r\nBOOTC-STATUS-END\r\n",
                Some("{\n  \"a\": [1, 2]\n}"),
            ),
            // A kernel message cutting a line in the middle.
            (
                "BOOTC-STATUS-BEGIN\n{\"image\": \"loc[   21.000001] virtio_blk virtio1: [vdb] 8 sectors\nalhost/x\"}\nBOOTC-STATUS-END\n",
                Some("{\"image\": \"localhost/x\"}"),
            ),
            // Two blocks (two boots): the last complete one wins.
            (
                "BOOTC-STATUS-BEGIN\n1\nBOOTC-STATUS-END\nBOOTC-STATUS-BEGIN\n2\nBOOTC-STATUS-END\nBOOTC-STATUS-BEGIN\n3\n",
                Some("2"),
            ),
            // journald-forwarded lines keep only the same IDENT[PID].
            (
                "[   25.000000] bootc-status[301]: BOOTC-STATUS-BEGIN\n[   25.000001] bootc-status[302]: {\n[   25.000002] systemd[1]: Started x.\n[   25.000003] kernel: foo\n[   25.000004] bootc-status[301]:   \"a\": 1\n[   25.000005] bootc-status[301]: }\n[   25.000006] bootc-status[301]: BOOTC-STATUS-END\n",
                Some("{\n  \"a\": 1\n}"),
            ),
            // A getty prompt in front of a line; the PID of a child process.
            (
                "[   25.000000] bootc-status[301]: BOOTC-STATUS-BEGIN\nvm login: [   25.000001] bootc-status[305]: {}\n[   25.000006] bootc-status[301]: BOOTC-STATUS-END\n",
                Some("{}"),
            ),
            // Same without timestamps.
            (
                "bootc-status[301]: BOOTC-STATUS-BEGIN\nbootc-status[301]: {}\nbootc-status[301]: BOOTC-STATUS-END\n",
                Some("{}"),
            ),
        ];
        for (log, expect) in table {
            check_block(log, *expect);
        }
    }

    #[test]
    fn status_json_fixtures() {
        for log in [STATUS_RAW, STATUS_JOURNAL] {
            let v = parse_status_json(log).unwrap();
            assert_eq!(v["kind"], "BootcHost");
            assert_eq!(
                v["status"]["booted"]["image"]["image"]["image"],
                "localhost/bootc-example:latest"
            );
            assert_eq!(
                v["status"]["booted"]["image"]["imageDigest"],
                "sha256:0b2d4f3c1e7a9b8d6c5f4e3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c"
            );
        }
    }

    #[test]
    fn real_vm_log() {
        let v = parse_status_json(STATUS_VM).unwrap();
        let booted = &v["status"]["booted"];
        assert_eq!(
            booted["image"]["image"]["image"],
            "localhost/bootc-example:vmtest"
        );
        assert_eq!(
            booted["image"]["imageDigest"],
            "sha256:3172e094a102fc751c2fbb4f267313202d151f521e9364159bf36e272d930067"
        );
        let root = parse_findmnt_row(
            &marker_value(STATUS_VM, "BOOTC-FINDMNT-ROOT").unwrap(),
            false,
        )
        .unwrap();
        assert_eq!(root.fstype, "overlay");
        assert!(root.source.starts_with("composefs:6c42f9f0"), "{root:?}");
        assert!(root.is_readonly());
        let usr = parse_findmnt_row(&marker_value(STATUS_VM, "BOOTC-FINDMNT-USR").unwrap(), true)
            .unwrap();
        assert!(usr.target == "/" && usr.is_readonly(), "{usr:?}");
        assert_eq!(
            marker_value(STATUS_VM, "BOOTC-USR-READONLY").as_deref(),
            Some("")
        );
        assert!(marker_value(STATUS_VM, "BOOTC-CMDLINE").unwrap().contains(
            "composefs=6c42f9f03138d3761bea396a67c678f50b6133531bb4045612b619ead7cc2973"
        ));
    }

    #[test]
    fn status_json_errors() {
        let e = parse_status_json("nothing here\n").unwrap_err();
        assert!(format!("{e:#}").contains("No BOOTC-STATUS-BEGIN"), "{e:#}");
        let e = parse_status_json("BOOTC-STATUS-BEGIN\n{\"a\":\nBOOTC-STATUS-END\n").unwrap_err();
        assert!(
            format!("{e:#}").contains("Parsing the status JSON"),
            "{e:#}"
        );
    }

    #[test]
    fn markers() {
        for log in [STATUS_RAW, STATUS_JOURNAL] {
            let root = marker_value(log, "BOOTC-FINDMNT-ROOT").expect("root line");
            let root = parse_findmnt_row(&root, false).expect("root row");
            assert_eq!(
                (root.source.as_str(), root.fstype.as_str()),
                ("composefs", "overlay")
            );
            assert!(root.is_readonly());
            let usr = marker_value(log, "BOOTC-FINDMNT-USR").expect("usr line");
            let usr = parse_findmnt_row(&usr, true).expect("usr row");
            assert_eq!(usr.target, "/");
            assert!(usr.is_readonly());
            assert_eq!(marker_value(log, "BOOTC-USR-READONLY").as_deref(), Some(""));
            assert_eq!(marker_value(log, "BOOTC-USR-WRITABLE"), None);
            assert!(
                marker_value(log, "BOOTC-CMDLINE")
                    .unwrap()
                    .contains("composefs=3f2a")
            );
            // A marker is a whole word: BOOTC-FINDMNT is no marker here.
            assert_eq!(marker_value(log, "BOOTC-FINDMNT"), None);
        }
    }

    #[test]
    fn findmnt_rows() {
        // (target, source, fstype, options)
        type Row<'a> = (&'a str, &'a str, &'a str, &'a str);
        let table: &[(&str, bool, Option<Row>)] = &[
            (
                "composefs overlay ro,relatime",
                false,
                Some(("", "composefs", "overlay", "ro,relatime")),
            ),
            (
                "/ composefs overlay ro",
                true,
                Some(("/", "composefs", "overlay", "ro")),
            ),
            // Empty SOURCE.
            ("          tmpfs rw", false, Some(("", "", "tmpfs", "rw"))),
            ("", false, None),
            ("a b c d e", false, None),
        ];
        for (text, with_target, expect) in table {
            let got = parse_findmnt_row(text, *with_target);
            let got = got.as_ref().map(|r| {
                (
                    r.target.as_str(),
                    r.source.as_str(),
                    r.fstype.as_str(),
                    r.options.as_str(),
                )
            });
            assert_eq!(got, *expect, "{text:?}");
        }
    }

    #[test]
    fn kernel_stamps() {
        let table: &[(&str, Option<usize>)] = &[
            ("[    1.234567] x", Some(15)),
            ("[12345.000000]", Some(14)),
            ("[1.2345] x", None),
            ("[  OK  ] x", None),
            ("[1, 2]", None),
            ("x [ 1.000000] y", None),
        ];
        for (s, expect) in table {
            assert_eq!(kernel_stamp_len(s), *expect, "{s:?}");
        }
        assert_eq!(find_kernel_stamp("ab[ 1.000000] c"), Some(2));
    }

    #[test]
    fn ansi() {
        assert_eq!(
            strip_ansi("[\x1b[0;32m  OK  \x1b[0m] a\x1b[?25l"),
            "[  OK  ] a"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn sfdisk_json() {
        let parts = parse_sfdisk_json(
            r#"{"partitiontable": {"label": "gpt", "id": "X", "device": "/var/tmp/d/disk.raw", "unit": "sectors",
            "first-lba": 2048, "last-lba": 12582878, "sectorsize": 512,
            "partitions": [
              {"node": "/var/tmp/d/disk.raw1", "start": 2048, "size": 2048, "type": "21686148-6449-6E6F-744E-656564454649"},
              {"node": "/var/tmp/d/disk.raw3", "start": 4096, "size": 100, "type": "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", "name": "root"}]}}"#,
        )
        .unwrap();
        assert_eq!(
            parts,
            vec![
                Partition {
                    number: 1,
                    type_guid: "21686148-6449-6E6F-744E-656564454649".into(),
                    start_bytes: 2048 * 512,
                    size_bytes: 2048 * 512
                },
                Partition {
                    number: 3,
                    type_guid: "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709".into(),
                    start_bytes: 4096 * 512,
                    size_bytes: 100 * 512
                },
            ]
        );
        // A loop device: /dev/loop0p2.
        let parts = parse_sfdisk_json(
            r#"{"partitiontable": {"device": "/dev/loop0", "partitions": [{"node": "/dev/loop0p2", "start": 1, "size": 2, "type": "x"}]}}"#,
        )
        .unwrap();
        assert_eq!(parts[0].number, 2);
        assert!(parse_sfdisk_json("{}").is_err());
    }

    #[test]
    fn cpio_layout() {
        let mut a = Vec::new();
        cpio_entry(&mut a, 1, "init", 0o100755, (0, 0), b"abc");
        // 110-byte header + "init\0" padded to 116, + 3 bytes padded to 120.
        assert_eq!(a.len(), 120);
        assert_eq!(&a[..6], b"070701");
        assert_eq!(&a[6 + 6 * 8..6 + 7 * 8], b"00000003");
        assert_eq!(&a[110..115], b"init\0");
        assert_eq!(&a[116..119], b"abc");
    }
}
