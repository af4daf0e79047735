//! Every external program the code and the scripts run comes from a package
//! that `scripts/deps.sh` installs (issue 9: a program installed by hand must
//! never hide a package missing from deps.sh).
//!
//! 1. Collect program names: `Command::new("...")` and `mtool("...")` in the
//!    Rust sources of `crates/`, the command words of `scripts/*.sh`,
//!    `bench/*.sh` and `examples/build.sh`, plus [`BY_VARIABLE`].
//! 2. Resolve each in the package-managed directories (`/usr/sbin`, `/usr/bin`,
//!    `/sbin`, `/bin`; a copy in `/usr/local` does not count).
//! 3. Map the file to its package with `dpkg -S`; the package must be listed
//!    in deps.sh's `PACKAGES`, be pulled in by one (its `Depends`), or be
//!    Essential.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::Ctx;

/// The tests of this module.
pub const TESTS: &[(&str, crate::TestFn)] = &[
    (
        "deps_every_program_from_deps_sh",
        deps_every_program_from_deps_sh,
    ),
    (
        "deps_checker_fails_without_grub2_common",
        deps_checker_fails_without_grub2_common,
    ),
];

/// Programs run through a variable or a computed name, which the scan of
/// literal names cannot see.
const BY_VARIABLE: &[(&str, &str)] = &[
    // crates/tests-integration/src/vm.rs: Command::new(QEMU)
    ("qemu-system-x86_64", "vm.rs QEMU"),
    // crates/install/src/filesystem.rs: Command::new(format!("mkfs.{}", fs))
    ("mkfs.ext4", "install filesystem.rs mkfs.{fs}"),
    ("mkfs.xfs", "install filesystem.rs mkfs.{fs}"),
    ("mkfs.btrfs", "install filesystem.rs mkfs.{fs}"),
    // The VM tests build disks for the guest with qemu-img and read them with debugfs.
    ("qemu-img", "vm tests"),
    ("debugfs", "demo.sh, vm tests: files the guest wrote"),
];

/// Programs that run only on a booted bootc host (from the image, never on the
/// build machine), so the build machine needs no package for them.
const ON_BOOTED_HOST_ONLY: &[(&str, &str)] = &[
    (
        "systemctl",
        "bootc upgrade --apply, boot counting: the host's systemd",
    ),
    ("modprobe", "bootc-initramfs-setup, in the initramfs"),
];

/// Root of the workspace.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn deps_every_program_from_deps_sh(_: &Ctx) -> Result<()> {
    let ws = workspace();
    let problems = check(&ws, &ws.join("scripts/deps.sh"))?;
    if !problems.is_empty() {
        bail!(
            "programs not installed by scripts/deps.sh:\n{}",
            problems.join("\n")
        );
    }
    Ok(())
}

fn deps_checker_fails_without_grub2_common(_: &Ctx) -> Result<()> {
    let ws = workspace();
    let deps = std::fs::read_to_string(ws.join("scripts/deps.sh")).context("Reading deps.sh")?;
    assert!(
        deps.contains(" grub2-common "),
        "deps.sh lists grub2-common"
    );
    let tmp = tempfile::tempdir()?;
    let copy = tmp.path().join("deps.sh");
    std::fs::write(&copy, deps.replacen(" grub2-common ", " ", 1))?;
    let problems = check(&ws, &copy)?;
    let hit = problems
        .iter()
        .any(|p| p.contains("grub-install") && p.contains("grub2-common"));
    assert!(
        hit,
        "the checker names grub-install/grub2-common: {problems:?}"
    );
    Ok(())
}

/// Every problem found, one line each (empty: all good).
pub fn check(ws: &Path, deps_sh: &Path) -> Result<Vec<String>> {
    let listed = parse_packages(
        &std::fs::read_to_string(deps_sh)
            .with_context(|| format!("Reading {}", deps_sh.display()))?,
    );
    let installed_by_deps = depends_closure(&listed)?;
    let mut programs = collect_programs(ws)?;
    for (p, why) in BY_VARIABLE {
        programs
            .entry(p.to_string())
            .or_default()
            .insert(why.to_string());
    }
    let mut problems = Vec::new();
    for (prog, used_in) in &programs {
        if ON_BOOTED_HOST_ONLY.iter().any(|(p, _)| p == prog) {
            continue;
        }
        let used: Vec<_> = used_in.iter().take(2).cloned().collect();
        let used = used.join(", ");
        if is_rust_toolchain(prog) {
            continue;
        }
        let Some(pkg) = owning_package(prog)? else {
            problems.push(format!(
                "{prog} (used in {used}): no Debian package ships it"
            ));
            continue;
        };
        if installed_by_deps.contains(&pkg) || is_essential(&pkg)? {
            continue;
        }
        problems.push(format!(
            "{prog} (used in {used}) comes from {pkg}, which deps.sh does not install"
        ));
    }
    Ok(problems)
}

/// The names in deps.sh's `PACKAGES=( ... )`.
fn parse_packages(text: &str) -> BTreeSet<String> {
    let Some(start) = text.find("PACKAGES=(") else {
        return BTreeSet::new();
    };
    let rest = &text[start + "PACKAGES=(".len()..];
    let body = &rest[..rest.find(')').unwrap_or(rest.len())];
    body.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.split_whitespace())
        .map(str::to_owned)
        .collect()
}

/// The listed packages and everything their `Depends`/`Pre-Depends` pull in
/// (as installed here; of alternatives, those installed).
fn depends_closure(listed: &BTreeSet<String>) -> Result<BTreeSet<String>> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = listed.iter().cloned().collect();
    while let Some(p) = todo.pop() {
        if !seen.insert(p.clone()) {
            continue;
        }
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}\t${Depends}, ${Pre-Depends}", &p])
            .output()
            .context("Running dpkg-query")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let Some((status, deps)) = text.split_once('\t') else {
            continue;
        };
        if !status.contains("install ok installed") {
            continue;
        }
        for alt in deps.split(',').flat_map(|d| d.split('|')) {
            let name = alt.trim().split([' ', ':', '(']).next().unwrap_or("");
            if !name.is_empty() && !seen.contains(name) {
                todo.push(name.to_owned());
            }
        }
    }
    Ok(seen)
}

/// Essential, or of priority required: debootstrap installs every required
/// package on every Debian system (mount, mawk, util-linux).
fn is_essential(pkg: &str) -> Result<bool> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Essential} ${Priority}", pkg])
        .output()
        .context("Running dpkg-query")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.trim() == "yes required"
        || text.starts_with("yes ")
        || text.trim().ends_with(" required"))
}

/// cargo and friends come from rustup under ~/.cargo, not from Debian (the
/// README asks for the toolchain on PATH; deps.sh checks for cargo).
fn is_rust_toolchain(prog: &str) -> bool {
    let Ok(out) = Command::new("bash")
        .args(["-c", "command -v -- \"$1\"", "bash", prog])
        .output()
    else {
        return false;
    };
    let path = String::from_utf8_lossy(&out.stdout);
    (prog == "cargo" || prog == "rustc") && path.contains("/.cargo/bin/")
}

/// The package owning `prog` in the package-managed directories, if any.
fn owning_package(prog: &str) -> Result<Option<String>> {
    let candidates: Vec<PathBuf> = if prog.starts_with('/') {
        vec![PathBuf::from(prog)]
    } else {
        ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(prog))
            .collect()
    };
    for c in candidates {
        if !c.exists() {
            continue;
        }
        // Through /etc/alternatives (awk -> mawk) to the packaged file.
        let c = std::fs::canonicalize(&c).unwrap_or(c);
        // With merged /usr, dpkg may know the file under the other prefix.
        let s = c.to_string_lossy().into_owned();
        let alt = match s.strip_prefix("/usr") {
            Some(rest) => rest.to_owned(),
            None => format!("/usr{s}"),
        };
        for path in [s, alt] {
            let out = Command::new("dpkg")
                .args(["-S", &path])
                .output()
                .context("Running dpkg -S")?;
            if !out.status.success() {
                continue;
            }
            let text = String::from_utf8_lossy(&out.stdout);
            // "pkg[:arch][, pkg2]: /path"; diversions start with "diversion by".
            for line in text.lines().filter(|l| !l.starts_with("diversion")) {
                if let Some((pkgs, _)) = line.rsplit_once(": ") {
                    let first = pkgs.split(", ").next().unwrap_or(pkgs);
                    return Ok(Some(first.split(':').next().unwrap_or(first).to_owned()));
                }
            }
        }
    }
    Ok(None)
}

/// Program name → where it is used.
fn collect_programs(ws: &Path) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut rust = Vec::new();
    walk(&ws.join("crates"), &mut rust)?;
    // This file names programs in its comments and its own tables.
    let is_rs =
        |f: &&PathBuf| f.extension().is_some_and(|e| e == "rs") && !f.ends_with("src/deps.rs");
    for f in rust.iter().filter(is_rs) {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("Reading {}", f.display()))?;
        let rel = f.strip_prefix(ws).unwrap_or(f).display().to_string();
        for name in rust_programs(&text) {
            found.entry(name).or_default().insert(rel.clone());
        }
    }
    let mut scripts = Vec::new();
    for d in ["scripts", "bench"] {
        for e in std::fs::read_dir(ws.join(d)).with_context(|| format!("Reading {d}"))? {
            let p = e?.path();
            // deps.sh runs only dpkg-query and apt-get (Essential, apt).
            if p.extension().is_some_and(|e| e == "sh") && !p.ends_with("scripts/deps.sh") {
                scripts.push(p);
            }
        }
    }
    scripts.push(ws.join("examples/build.sh"));
    for f in scripts {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("Reading {}", f.display()))?;
        let rel = f.strip_prefix(ws).unwrap_or(&f).display().to_string();
        for name in shell_programs(&text)? {
            found.entry(name).or_default().insert(rel.clone());
        }
    }
    Ok(found)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("Reading {}", dir.display()))? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            if p.file_name()
                .is_some_and(|n| n != "target" && n != "fixtures")
            {
                walk(&p, out)?;
            }
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// Literal names in `Command::new("...")` and `mtool("...")`.
fn rust_programs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for pat in ["Command::new(\"", "mtool(\""] {
        for (i, _) in text.match_indices(pat) {
            let rest = &text[i + pat.len()..];
            if let Some(end) = rest.find('"') {
                out.insert(rest[..end].to_owned());
            }
        }
    }
    out
}

/// Shell words that name a program: words in command position that bash
/// itself does not know as a keyword, builtin or a function of the script.
fn shell_programs(text: &str) -> Result<BTreeSet<String>> {
    let words = command_words(text);
    let functions: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.trim().split_once("()").map(|(name, _)| name.trim()))
        .collect();
    let mut out = BTreeSet::new();
    for w in words {
        let plain = w
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./+".contains(c));
        // Variables ($bootc), relative paths (scripts of this repository),
        // case patterns and the script's own functions are not programs.
        let starts_like_arg = w.starts_with(|c: char| c == '-' || c.is_ascii_digit());
        if !plain
            || starts_like_arg
            || w.contains('=')
            || (w.contains('/') && !w.starts_with('/'))
            || functions.contains(w.as_str())
        {
            continue;
        }
        let kind = Command::new("bash")
            .args(["-c", "type -t -- \"$1\" || true", "bash", &w])
            .output()
            .context("Running bash type")?;
        let kind = String::from_utf8_lossy(&kind.stdout).trim().to_owned();
        // Only words that name a program on PATH: the scan of shell is a
        // heuristic, and a word bash cannot find is no program that an
        // installation by hand hides (the script itself fails without it).
        if kind != "file" {
            continue;
        }
        out.insert(w);
    }
    Ok(out)
}

/// The first word of every simple command (heredoc bodies, quoted strings and
/// comments skipped; `$(...)` inside double quotes scanned).
fn command_words(text: &str) -> Vec<String> {
    const PREFIX: &[&str] = &[
        "then", "do", "else", "elif", "if", "while", "until", "!", "exec", "command", "time",
        "nice", "{",
    ];
    let chars: Vec<char> = text.chars().collect();
    let mut words = Vec::new();
    let mut i = 0;
    let mut at_cmd = true;
    let mut in_dq = Vec::new(); // stack: true = inside "…" at this level
    let mut heredocs: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut cur_is_cmd = false;
    let flush =
        |cur: &mut String, cur_is_cmd: &mut bool, at_cmd: &mut bool, words: &mut Vec<String>| {
            if !cur.is_empty() {
                if *cur_is_cmd {
                    let is_assign = cur.contains('=') && !cur.starts_with('=');
                    if PREFIX.contains(&cur.as_str()) || is_assign {
                        *at_cmd = true;
                    } else {
                        words.push(cur.clone());
                        *at_cmd = false;
                    }
                }
                cur.clear();
            }
            *cur_is_cmd = false;
        };
    while i < chars.len() {
        let c = chars[i];
        if in_dq.last() == Some(&true) {
            match c {
                '\\' => i += 1,
                '"' => {
                    in_dq.pop();
                }
                '$' if chars.get(i + 1) == Some(&'(') && chars.get(i + 2) != Some(&'(') => {
                    in_dq.push(false);
                    at_cmd = true;
                    i += 1;
                }
                _ => {}
            }
            i += 1;
            continue;
        }
        match c {
            '\\' => {
                i += 2;
                continue;
            }
            '\'' => {
                flush(&mut cur, &mut cur_is_cmd, &mut at_cmd, &mut words);
                while i + 1 < chars.len() && chars[i + 1] != '\'' {
                    i += 1;
                }
                i += 2;
                at_cmd = false;
                continue;
            }
            '"' => {
                flush(&mut cur, &mut cur_is_cmd, &mut at_cmd, &mut words);
                in_dq.push(true);
                at_cmd = false;
            }
            '#' if cur.is_empty() => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            '<' if chars.get(i + 1) == Some(&'<') && chars.get(i + 2) != Some(&'<') => {
                flush(&mut cur, &mut cur_is_cmd, &mut at_cmd, &mut words);
                i += 2;
                if chars.get(i) == Some(&'-') {
                    i += 1;
                }
                let mut tag = String::new();
                while i < chars.len() && !chars[i].is_whitespace() && !";|&)".contains(chars[i]) {
                    if !"'\"".contains(chars[i]) {
                        tag.push(chars[i]);
                    }
                    i += 1;
                }
                // `a << 20` (a shift in an embedded program) is no heredoc.
                if tag.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                    heredocs.push(tag);
                }
                continue;
            }
            '\n' => {
                flush(&mut cur, &mut cur_is_cmd, &mut at_cmd, &mut words);
                at_cmd = true;
                i += 1;
                for tag in std::mem::take(&mut heredocs) {
                    // Skip the body up to the line holding only the tag.
                    loop {
                        let end = chars[i..]
                            .iter()
                            .position(|&c| c == '\n')
                            .map_or(chars.len(), |p| i + p);
                        let line: String = chars[i..end].iter().collect();
                        i = (end + 1).min(chars.len());
                        if line.trim() == tag || i >= chars.len() {
                            break;
                        }
                    }
                }
                continue;
            }
            '(' if cur.ends_with('=') || chars.get(i + 1) == Some(&'(') || cur == "$" => {
                // An array `NAME=( ... )` or arithmetic `((...))`, `$((...))`:
                // no commands inside.
                cur.clear();
                cur_is_cmd = false;
                let mut depth = 0;
                while i < chars.len() {
                    match chars[i] {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                i += 1;
                continue;
            }
            ';' | '|' | '&' | '(' | '`' => {
                flush(&mut cur, &mut cur_is_cmd, &mut at_cmd, &mut words);
                at_cmd = true;
            }
            ')' => {
                // A case pattern or the end of a subshell / $(...).
                cur.clear();
                cur_is_cmd = false;
                // The end of `$(...)` leaves an argument; a case pattern or a
                // subshell's end is followed by a command.
                at_cmd = in_dq.last() != Some(&false);
                if !at_cmd {
                    in_dq.pop();
                }
            }
            '$' if chars.get(i + 1) == Some(&'(') && chars.get(i + 2) != Some(&'(') => {
                flush(&mut cur, &mut cur_is_cmd, &mut at_cmd, &mut words);
                in_dq.push(false);
                at_cmd = true;
                i += 2;
                continue;
            }
            c if c.is_whitespace() => flush(&mut cur, &mut cur_is_cmd, &mut at_cmd, &mut words),
            c => {
                if cur.is_empty() {
                    cur_is_cmd = at_cmd;
                }
                cur.push(c);
            }
        }
        i += 1;
    }
    flush(&mut cur, &mut cur_is_cmd, &mut at_cmd, &mut words);
    words
}
