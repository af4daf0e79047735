use super::*;
use std::io::Write;

/// A log written by hand in the documented layout.
struct Writer {
    buf: Vec<u8>,
    n: u64,
    ss: usize,
}

impl Writer {
    fn new(ss: usize) -> Self {
        Self { buf: vec![0; ss], n: 0, ss }
    }
    fn entry(&mut self, sector: u64, nr: u64, flags: u64, inline: &[u8], data: &[u8]) {
        let mut s = vec![0u8; self.ss];
        s[0..8].copy_from_slice(&sector.to_le_bytes());
        s[8..16].copy_from_slice(&nr.to_le_bytes());
        s[16..24].copy_from_slice(&flags.to_le_bytes());
        s[24..32].copy_from_slice(&(inline.len() as u64).to_le_bytes());
        self.buf.extend_from_slice(&s);
        if !inline.is_empty() {
            let mut d = inline.to_vec();
            d.resize(inline.len().div_ceil(self.ss) * self.ss, 0);
            self.buf.extend_from_slice(&d);
        }
        self.buf.extend_from_slice(data);
        self.n += 1;
    }
    fn write(&mut self, sector: u64, byte: u8, nr: u64, flags: u64) {
        let data = vec![byte; nr as usize * self.ss];
        self.entry(sector, nr, flags, &[], &data);
    }
    fn finish(mut self) -> tempfile::NamedTempFile {
        self.buf[0..8].copy_from_slice(&MAGIC.to_le_bytes());
        self.buf[8..16].copy_from_slice(&VERSION.to_le_bytes());
        self.buf[16..24].copy_from_slice(&self.n.to_le_bytes());
        self.buf[24..28].copy_from_slice(&(self.ss as u32).to_le_bytes());
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&self.buf).unwrap();
        f
    }
}

fn sample() -> tempfile::NamedTempFile {
    let mut w = Writer::new(512);
    w.write(0, b'a', 2, 0); // 0
    w.entry(0, 0, FLAG_FLUSH, &[], &[]); // 1
    w.write(1, b'b', 1, 0); // 2
    w.entry(0, 0, FLAG_MARK, b"half", &[]); // 3
    w.write(3, b'c', 1, FLAG_FUA); // 4
    w.entry(0, 1, FLAG_DISCARD, &[], &[]); // 5
    w.entry(0, 0, FLAG_FLUSH, &[], &[]); // 6
    w.write(2, b'd', 1, 0); // 7
    w.finish()
}

fn disk(len: u64) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(len).unwrap();
    f
}

fn sectors(f: &File) -> Vec<u8> {
    let mut b = vec![0u8; 4 * 512];
    f.read_exact_at(&mut b, 0).unwrap();
    b.chunks(512).map(|c| {
        assert!(c.iter().all(|&x| x == c[0]), "a sector written in part");
        c[0]
    }).collect()
}

#[test]
fn parses_entries_flags_and_marks() {
    let log = Log::open(sample().path()).unwrap();
    assert_eq!(log.sector_size, 512);
    assert_eq!(log.entries.len(), 8);
    assert_eq!(log.flushes(), [1, 6]);
    assert_eq!(log.mark("half"), Some(3));
    assert!(log.entries[4].is_fua() && log.entries[5].is_discard());
    assert!(!log.entries[3].changes_disk() && !log.entries[1].changes_disk());
}

#[test]
fn replays_to_each_flush() {
    let log = Log::open(sample().path()).unwrap();
    let d = disk(4 * 512);
    log.apply_range(0..2, d.as_file()).unwrap();
    assert_eq!(sectors(d.as_file()), [b'a', b'a', 0, 0]);
    log.apply_range(2..7, d.as_file()).unwrap();
    assert_eq!(sectors(d.as_file()), [0, b'b', 0, b'c']);
    log.apply_range(7..8, d.as_file()).unwrap();
    assert_eq!(sectors(d.as_file()), [0, b'b', b'd', b'c']);
}

#[test]
fn subsets_stay_in_their_window_and_keep_fua_writes() {
    let log = Log::open(sample().path()).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..200 {
        let s = log.subset(1, seed);
        assert!(s.iter().all(|&i| (2..6).contains(&i) && log.entries[i].changes_disk()), "{s:?}");
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        // The FUA write is kept whenever the cut is after it.
        if s.contains(&5) {
            assert!(s.contains(&4), "{s:?}");
        }
        seen.insert(s);
    }
    assert!(seen.len() >= 4, "too few distinct subsets: {seen:?}");
    assert!(log.subset(6, 1).iter().all(|&i| i == 7));
}

#[test]
fn refuses_what_is_not_a_log() {
    let f = disk(4096);
    let e = Log::open(f.path()).unwrap_err();
    assert!(format!("{e:#}").contains("Not a write log"), "{e:#}");
    // An entry count past the end of the file.
    let mut w = Writer::new(512);
    w.write(0, 1, 1, 0);
    w.n = 3;
    let f = w.finish();
    let e = Log::open(f.path()).unwrap_err();
    assert!(format!("{e:#}").contains("past the end"), "{e:#}");
}

/// Needs root (a FUSE mount) and qemu-storage-daemon: a real log, written
/// with a flush after each write, replays to what was on the disk at each
/// flush.
#[test]
fn real_blklogwrites_log_replays_to_each_flush() {
    if !rustix::process::getuid().is_root()
        || std::process::Command::new("qemu-storage-daemon").arg("--version").output().is_err()
    {
        eprintln!("skipped: needs root and qemu-storage-daemon");
        return;
    }
    let td = tempfile::tempdir().unwrap();
    let (img, logp, exp) = (td.path().join("d.img"), td.path().join("l"), td.path().join("e"));
    File::create(&img).unwrap().set_len(1 << 20).unwrap();
    let e = qsd::Export::log_writes(&img, &logp, &exp).unwrap();
    {
        let f = std::fs::OpenOptions::new().write(true).open(&e.path).unwrap();
        for k in 0..4u64 {
            f.write_all_at(&[b'0' + k as u8; 4096], k * 8192).unwrap();
            f.sync_all().unwrap();
        }
    }
    e.stop().unwrap();
    let log = Log::open(&logp).unwrap();
    let fl = log.flushes();
    assert!(fl.len() >= 4, "{:?}", log.entries);
    let target = disk(1 << 20);
    let mut from = 0;
    let mut k = 0u64;
    for &f in &fl {
        log.apply_range(from..f + 1, target.as_file()).unwrap();
        from = f + 1;
        if log.entries[..f].iter().filter(|e| e.changes_disk()).count() as u64 > k {
            k += 1;
        }
        for j in 0..4u64 {
            let mut b = [0u8; 4096];
            target.as_file().read_exact_at(&mut b, j * 8192).unwrap();
            let want = if j < k { b'0' + j as u8 } else { 0 };
            assert!(b.iter().all(|&x| x == want), "flush {f}: block {j}");
        }
    }
    assert_eq!(k, 4);
}
