//! Write logs in the dm-log-writes format, as Linux's `dm-log-writes`
//! target and qemu-storage-daemon's `blklogwrites` block driver record them,
//! and the disk states they imply.
//!
//! The format (Linux `Documentation/admin-guide/device-mapper/log-writes.rst`
//! and qemu's `block/blklogwrites.c`, read for the layout only): all fields
//! little-endian, the log cut in sectors of `sectorsize` bytes.
//!
//! - Sector 0, the super block: `magic: u64` (0x6a736677736872),
//!   `version: u64` (1), `nr_entries: u64`, `sectorsize: u32`.
//! - From sector 1, one entry per request, in the order the requests
//!   completed: a sector holding `sector: u64`, `nr_sectors: u64`,
//!   `flags: u64`, `data_len: u64`; then `data_len` bytes of inline data
//!   (a mark's name) rounded up to whole sectors; then, unless the entry is
//!   a discard, the `nr_sectors` sectors the request wrote. `sector` and
//!   `nr_sectors` count log sectors of the logged device.
//! - Flags: flush (1), FUA (2), discard (4), mark (8), metadata (16).
//!
//! The states a disk can be in after a power cut at some moment: everything
//! logged before the last completed flush, every FUA write completed since,
//! and any subset of the other writes completed since (the drive's cache
//! may have kept or lost each of them). [`Log::flushes`] gives the first kind
//! of state, [`Log::subset`] draws the others.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};

pub mod qsd;

/// The super block's magic number.
pub const MAGIC: u64 = 0x006a_7366_7773_6872;
/// The one format version.
pub const VERSION: u64 = 1;
/// The request was a cache flush (a barrier: all earlier writes are durable).
pub const FLAG_FLUSH: u64 = 1;
/// The write was forced to media (durable when it completed).
pub const FLAG_FUA: u64 = 2;
/// The request discarded its range (no data in the log).
pub const FLAG_DISCARD: u64 = 4;
/// A mark put into the log by its user (a name as inline data).
pub const FLAG_MARK: u64 = 8;
/// The write was file-system metadata (set by some kernels, informative).
pub const FLAG_METADATA: u64 = 16;
const KNOWN_FLAGS: u64 = FLAG_FLUSH | FLAG_FUA | FLAG_DISCARD | FLAG_MARK | FLAG_METADATA;

/// One logged request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Position in the log, from 0.
    pub index: usize,
    /// First sector (of the log's sector size) of the request.
    pub sector: u64,
    /// Length in sectors (0 for a flush).
    pub nr_sectors: u64,
    /// `FLAG_*` bits.
    pub flags: u64,
    /// A mark's name.
    pub mark: Option<String>,
    /// Byte offset in the log of the written data.
    data_offset: u64,
}

impl Entry {
    /// A flush request.
    pub fn is_flush(&self) -> bool {
        self.flags & FLAG_FLUSH != 0
    }
    /// A write forced to media.
    pub fn is_fua(&self) -> bool {
        self.flags & FLAG_FUA != 0
    }
    /// A discard.
    pub fn is_discard(&self) -> bool {
        self.flags & FLAG_DISCARD != 0
    }
    /// A request that changes the disk (a write or a discard).
    pub fn changes_disk(&self) -> bool {
        self.nr_sectors > 0 && self.flags & FLAG_MARK == 0
    }
}

/// The super block: (number of entries, sector size).
pub fn parse_super(buf: &[u8]) -> Result<(u64, u64)> {
    ensure!(buf.len() >= 28, "Log super block too short ({} bytes)", buf.len());
    let magic = le64(buf, 0);
    ensure!(magic == MAGIC, "Not a write log: magic {magic:#x}, expected {MAGIC:#x}");
    let version = le64(buf, 8);
    ensure!(version == VERSION, "Unsupported write log version {version}");
    let nr = le64(buf, 16);
    let ss = u64::from(u32::from_le_bytes(buf[24..28].try_into().unwrap()));
    ensure!(
        ss >= 512 && ss.is_power_of_two(),
        "Write log sector size {ss} is not a power of two of at least 512"
    );
    Ok((nr, ss))
}

fn le64(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().unwrap())
}

/// An opened write log with its entries indexed.
#[derive(Debug)]
pub struct Log {
    file: File,
    /// Bytes per sector, of the log and of the sector numbers in entries.
    pub sector_size: u64,
    /// Every entry, in log order.
    pub entries: Vec<Entry>,
}

impl Log {
    /// Open and index the log at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("Opening {}", path.display()))?;
        Self::from_file(file).with_context(|| format!("Reading the write log {}", path.display()))
    }

    fn from_file(file: File) -> Result<Self> {
        let len = file.metadata()?.len();
        let mut sb = [0u8; 28];
        file.read_exact_at(&mut sb, 0).context("Reading the super block")?;
        let (nr, ss) = parse_super(&sb)?;
        let mut entries = Vec::with_capacity(nr.min(1 << 20) as usize);
        let mut at = ss;
        let mut hdr = [0u8; 32];
        for index in 0..nr as usize {
            ensure!(at + ss <= len, "Entry {index} at byte {at} is past the end ({len} bytes)");
            file.read_exact_at(&mut hdr, at)
                .with_context(|| format!("Reading entry {index} at byte {at}"))?;
            let (sector, nr_sectors, flags, data_len) =
                (le64(&hdr, 0), le64(&hdr, 8), le64(&hdr, 16), le64(&hdr, 24));
            if flags & !KNOWN_FLAGS != 0 {
                bail!("Entry {index} at byte {at} has unknown flags {flags:#x}");
            }
            at += ss;
            let mut mark = None;
            if data_len > 0 {
                ensure!(at + data_len <= len, "Entry {index}: inline data past the end");
                let mut d = vec![0u8; data_len as usize];
                file.read_exact_at(&mut d, at)?;
                if flags & FLAG_MARK != 0 {
                    mark = Some(String::from_utf8_lossy(&d).trim_end_matches('\0').to_owned());
                }
                at += data_len.div_ceil(ss) * ss;
            }
            let data_offset = at;
            if flags & (FLAG_DISCARD | FLAG_MARK) == 0 {
                at += nr_sectors * ss;
                ensure!(at <= len, "Entry {index}: data past the end of the log");
            }
            entries.push(Entry { index, sector, nr_sectors, flags, mark, data_offset });
        }
        Ok(Self { file, sector_size: ss, entries })
    }

    /// Indices of the flush entries: the state after flush `i` is
    /// `apply(0..=i)`.
    pub fn flushes(&self) -> Vec<usize> {
        self.entries.iter().filter(|e| e.is_flush()).map(|e| e.index).collect()
    }

    /// The entry named by a mark.
    pub fn mark(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.mark.as_deref() == Some(name))
    }

    /// Apply entries `range` (log indices), in log order, to `target`.
    pub fn apply_range(&self, range: std::ops::Range<usize>, target: &File) -> Result<()> {
        self.apply(range.map(|i| &self.entries[i]), target)
    }

    /// Apply `entries` in the order given: writes copy their data, discards
    /// write zeroes (what a replay onto a disk without discard reads back).
    pub fn apply<'a>(&self, entries: impl IntoIterator<Item = &'a Entry>, target: &File) -> Result<()> {
        let mut buf = vec![0u8; 1 << 20];
        for e in entries {
            if !e.changes_disk() {
                continue;
            }
            let mut done = 0u64;
            let total = e.nr_sectors * self.sector_size;
            let dst = e.sector * self.sector_size;
            while done < total {
                let n = (total - done).min(buf.len() as u64) as usize;
                if e.is_discard() {
                    buf[..n].fill(0);
                } else {
                    self.file
                        .read_exact_at(&mut buf[..n], e.data_offset + done)
                        .with_context(|| format!("Reading the data of entry {}", e.index))?;
                }
                target
                    .write_all_at(&buf[..n], dst + done)
                    .with_context(|| format!("Writing entry {} at byte {}", e.index, dst + done))?;
                if e.is_discard() {
                    buf[..n].fill(0);
                }
                done += n as u64;
            }
        }
        Ok(())
    }

    /// A state a power cut after flush entry `after` may leave (see the
    /// crate docs): entries up to `after` are durable (the caller applies
    /// them), then of the requests completed before a cut drawn in the
    /// window up to the next flush, every FUA write and a random half of
    /// the others. Returns the chosen entries' indices, in log order.
    pub fn subset(&self, after: usize, seed: u64) -> Vec<usize> {
        let end = self.entries[after + 1..]
            .iter()
            .find(|e| e.is_flush())
            .map_or(self.entries.len(), |e| e.index);
        choose_subset(&self.entries[after + 1..end], seed)
    }
}

/// See [`Log::subset`]: `window` is the requests between two flushes.
pub fn choose_subset(window: &[Entry], seed: u64) -> Vec<usize> {
    let mut rng = SplitMix(seed);
    let writes: Vec<&Entry> = window.iter().filter(|e| e.changes_disk()).collect();
    if writes.is_empty() {
        return Vec::new();
    }
    let cut = 1 + (rng.next_u64() % writes.len() as u64) as usize;
    writes[..cut]
        .iter()
        .filter(|e| e.is_fua() || rng.next_u64() & 1 == 1)
        .map(|e| e.index)
        .collect()
}

/// A small deterministic generator (SplitMix64), so that a seed names a state.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests;
