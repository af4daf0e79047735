//! Root-only integration tests on real parts: a local `docker-registry`,
//! images built by `podman build`, the `bootc` binary, loop devices.
//!
//! - [`Registry`]: a registry on 127.0.0.1, stopped by pid when dropped.
//! - [`ImageSpec`]: build a small multi-layer image with podman (`FROM scratch`
//!   and one `COPY` per layer), push it.
//! - [`Bootc`]: run the `bootc` binary under test with a private containers
//!   configuration (registries.conf, policy.json).
//! - [`vm`]: boot disks in qemu (TCG) with a serial log and a timeout.

pub mod vm;

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// Write the OCI layouts of a fixture generator (`python3 SCRIPT layouts
/// DIR`, one directory per case, names printed one per line) into a new
/// temporary directory, and check that it built exactly the cases `listed`.
pub fn build_layouts(script: &str, listed: &[&str]) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let out = run(Command::new("python3")
        .arg(script)
        .arg("layouts")
        .arg(dir.path()))?;
    let built = String::from_utf8(out.stdout)?;
    let built: std::collections::BTreeSet<&str> = built.lines().collect();
    let listed: std::collections::BTreeSet<&str> = listed.iter().copied().collect();
    for case in built.difference(&listed) {
        anyhow::bail!("case {case} of {script} has no expectation in CASES");
    }
    for case in listed.difference(&built) {
        anyhow::bail!("case {case} is not built by {script}");
    }
    Ok(dir)
}

/// Run `cmd`, failing with its stderr when it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("Running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// A `docker-registry` process listening on 127.0.0.1; killed when dropped.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The registry's log (its stderr).
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Start a registry with storage in a temporary directory.
    pub fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )?;
        let log = dir.path().join("registry.log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            // The access log goes to stdout, the rest to stderr: keep both.
            .stdout(fs::File::create(&log)?)
            .stderr(fs::OpenOptions::new().append(true).open(&log)?)
            .spawn()
            .context("Starting docker-registry (apt-get install docker-registry)")?;
        let reg = Registry {
            child,
            addr,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&reg.addr).is_err() {
            ensure!(
                Instant::now() < deadline,
                "registry did not come up on {}",
                reg.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(reg)
    }

    /// How many times each blob was fetched (`GET /v2/.../blobs/<digest>` answered 200),
    /// for the repository `repo`.
    pub fn blob_gets(&self, repo: &str) -> Result<Vec<String>> {
        let needle = format!("\"GET /v2/{repo}/blobs/");
        let f = fs::File::open(&self.log)?;
        let mut out = Vec::new();
        for line in BufReader::new(f).lines() {
            let line = line?;
            if let Some(pos) = line.find(&needle) {
                let rest = &line[pos + needle.len()..];
                let digest: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                // Common log format: "GET path HTTP/1.1" status size
                if rest.contains("\" 200 ") {
                    out.push(digest);
                }
            }
        }
        Ok(out)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One layer: files (path inside the image, content).
pub type Layer = Vec<(String, Vec<u8>)>;

/// A small image built with podman from `FROM scratch` and one `COPY` per layer.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Name in podman storage, e.g. `localhost/bootc-test-a:v1`.
    pub name: String,
    /// The layers, bottom first.
    pub layers: Vec<Layer>,
    /// Image labels.
    pub labels: Vec<(String, String)>,
}

impl ImageSpec {
    /// Build into podman's storage.
    pub fn build(&self) -> Result<()> {
        let ctx = tempfile::tempdir()?;
        let mut containerfile = String::from("FROM scratch\n");
        for (i, layer) in self.layers.iter().enumerate() {
            let ldir = ctx.path().join(format!("layer{i}"));
            fs::create_dir_all(&ldir)?;
            for (path, content) in layer {
                let p = ldir.join(path.trim_start_matches('/'));
                fs::create_dir_all(p.parent().expect("file has a parent"))?;
                fs::write(&p, content)?;
            }
            containerfile.push_str(&format!("COPY layer{i}/ /\n"));
        }
        for (k, v) in &self.labels {
            containerfile.push_str(&format!("LABEL {k}=\"{v}\"\n"));
        }
        fs::write(ctx.path().join("Containerfile"), containerfile)?;
        // Deterministic layers: same files, same mtimes, same tar.
        run(Command::new("find").arg(ctx.path()).args([
            "-exec",
            "touch",
            "-h",
            "-d",
            "@1700000000",
            "{}",
            "+",
        ]))?;
        run(Command::new("podman")
            .args([
                "build",
                "--isolation=chroot",
                "-q",
                "--timestamp",
                "1700000000",
                "-t",
            ])
            .arg(&self.name)
            .arg(ctx.path()))?;
        Ok(())
    }

    /// Push to `dest` (`docker://...` or any skopeo destination).
    pub fn push(&self, dest: &str) -> Result<()> {
        run(Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            &format!("containers-storage:{}", self.name),
            dest,
        ]))?;
        Ok(())
    }
}

/// Deterministic pseudo-random bytes (so layers are not all-compressible).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The `bootc` binary under test and its private containers configuration.
#[derive(Debug)]
pub struct Bootc {
    /// The binary.
    pub bin: PathBuf,
    /// Directory with registries.conf and policy.json.
    pub confdir: tempfile::TempDir,
}

impl Bootc {
    /// Locate the binary (`$BOOTC_BIN`, else next to this test executable's
    /// target directory) and write a registries.conf that marks `insecure`
    /// registries as plain HTTP, and an accept-anything policy.json.
    pub fn new(insecure: &[&str]) -> Result<Self> {
        let bin = match std::env::var_os("BOOTC_BIN") {
            Some(b) => PathBuf::from(b),
            None => {
                let exe = std::env::current_exe()?;
                // target/<profile>/deps/integration-xxxx -> target/<profile>/bootc
                exe.parent()
                    .and_then(Path::parent)
                    .map(|p| p.join("bootc"))
                    .context("Locating bootc binary")?
            }
        };
        ensure!(
            bin.exists(),
            "{} missing: run `cargo build -p bootc` first or set BOOTC_BIN",
            bin.display()
        );
        let confdir = tempfile::tempdir()?;
        let mut conf = String::new();
        for r in insecure {
            conf.push_str(&format!(
                "[[registry]]\nlocation = \"{r}\"\ninsecure = true\n\n"
            ));
        }
        fs::write(confdir.path().join("registries.conf"), conf)?;
        fs::write(
            confdir.path().join("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )?;
        Ok(Self { bin, confdir })
    }

    /// Path of this instance's registries.conf.
    pub fn registries_conf(&self) -> PathBuf {
        self.confdir.path().join("registries.conf")
    }

    /// Path of this instance's policy.json.
    pub fn policy_json(&self) -> PathBuf {
        self.confdir.path().join("policy.json")
    }

    /// A command running bootc with our configuration.
    pub fn cmd(&self, sysroot: &Path) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("CONTAINERS_REGISTRIES_CONF", self.registries_conf())
            .env("CONTAINERS_POLICY_JSON", self.policy_json())
            .arg("--sysroot")
            .arg(sysroot)
            .stdin(Stdio::null());
        c
    }

    /// Run bootc; fail with its output when it fails.
    pub fn ok(&self, sysroot: &Path, args: &[&str]) -> Result<Output> {
        run(self.cmd(sysroot).args(args))
    }

    /// Run bootc expecting failure; returns stderr.
    pub fn fails(&self, sysroot: &Path, args: &[&str]) -> Result<String> {
        let out = self.cmd(sysroot).args(args).output()?;
        ensure!(
            !out.status.success(),
            "bootc {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// `image pull --format json` and its parsed outcome.
    pub fn pull(&self, sysroot: &Path, imgref: &str) -> Result<serde_json::Value> {
        let out = self.ok(
            sysroot,
            &["image", "pull", "--quiet", "--format", "json", imgref],
        )?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// `image list --format json`.
    pub fn list(&self, sysroot: &Path) -> Result<Vec<serde_json::Value>> {
        let out = self.ok(sysroot, &["image", "list", "--format", "json"])?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }
}

/// Count the regular files (objects) in a store's `objects/` directory.
pub fn count_objects(sysroot: &Path) -> Result<usize> {
    let mut n = 0;
    let objects = sysroot.join("composefs/objects");
    if !objects.exists() {
        return Ok(0);
    }
    for d in fs::read_dir(objects)? {
        let d = d?;
        if d.file_type()?.is_dir() {
            n += fs::read_dir(d.path())?.count();
        }
    }
    Ok(n)
}
