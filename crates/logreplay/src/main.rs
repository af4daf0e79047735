//! `logreplay`: inspect a dm-log-writes log and rebuild a disk from it.
//!
//! ```text
//! logreplay info LOG                       entries, flushes, FUA writes, discards
//! logreplay flushes LOG                    the index of each flush entry, one a line
//! logreplay replay LOG DISK --to N [--subset SEED]
//! ```
//! `replay` applies entries 0..=N to DISK (a copy of the disk as it was when
//! logging began); with `--subset`, N must be a flush and a random subset
//! (by SEED) of the writes that followed it is applied too.

use anyhow::{Context, Result, bail};
use bootc_logreplay::Log;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let num = |s: &str| s.parse::<u64>().with_context(|| format!("Not a number: {s}"));
    match a.as_slice() {
        ["info", log] => {
            let l = Log::open(log.as_ref())?;
            let count = |f: fn(&bootc_logreplay::Entry) -> bool| l.entries.iter().filter(|e| f(e)).count();
            println!(
                "entries {} flushes {} fua {} discards {} sector-size {}",
                l.entries.len(), count(|e| e.is_flush()), count(|e| e.is_fua()), count(|e| e.is_discard()), l.sector_size
            );
        }
        ["flushes", log] => Log::open(log.as_ref())?.flushes().iter().for_each(|i| println!("{i}")),
        ["replay", log, disk, "--to", n, rest @ ..] => {
            let l = Log::open(log.as_ref())?;
            let n = num(n)? as usize;
            anyhow::ensure!(n < l.entries.len(), "--to {n}: the log has {} entries", l.entries.len());
            let f = std::fs::OpenOptions::new().write(true).open(disk).with_context(|| format!("Opening {disk}"))?;
            l.apply_range(0..n + 1, &f)?;
            if let ["--subset", seed] = rest {
                anyhow::ensure!(l.entries[n].is_flush(), "--subset: entry {n} is not a flush");
                let s = l.subset(n, num(seed)?);
                l.apply(s.iter().map(|&i| &l.entries[i]), &f)?;
                println!("applied 0..={n} and {s:?}");
            }
            f.sync_all()?;
        }
        _ => bail!("usage: logreplay info LOG | flushes LOG | replay LOG DISK --to N [--subset SEED]"),
    }
    Ok(())
}
