//! Reading a guest's serial console: ANSI and CR noise, kernel and systemd
//! lines mixed into ours, journald prefixes; the blocks between marker
//! lines, the status JSON, marker values and `findmnt` rows.

use anyhow::{Context, Result};

use super::{STATUS_BEGIN, STATUS_END};

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

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS_RAW: &str = include_str!("../fixtures/serial-status-raw.log");
    const STATUS_JOURNAL: &str = include_str!("../fixtures/serial-status-journal.log");
    /// An excerpt of a real boot of the example image (to-filesystem, GRUB).
    const STATUS_VM: &str = include_str!("../fixtures/serial-status-vm.log");

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
}
