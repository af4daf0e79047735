//! The member names of an initramfs: concatenated `newc` cpio archives,
//! each uncompressed or compressed with gzip or zstd (what dracut and
//! initramfs-tools write on Debian by default), as the kernel unpacks them.

use std::io::{self, Read};

use anyhow::{Context, Result, bail};

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The name without a leading `./` or `/`.
    pub name: String,
    /// `st_mode` (file type and permissions).
    pub mode: u32,
}

impl Member {
    /// Whether this is a symlink.
    pub fn is_symlink(&self) -> bool {
        self.mode & 0o170000 == 0o120000
    }
}

const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

/// A reader that counts what it has read (cpio padding is by offset).
struct Counted<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read> Counted<R> {
    fn skip(&mut self, n: u64) -> io::Result<()> {
        let copied = io::copy(&mut (&mut *self).take(n), &mut io::sink())?;
        if copied != n {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    fn align4(&mut self) -> io::Result<()> {
        let pad = (4 - self.pos % 4) % 4;
        self.skip(pad)
    }
}

fn hex_field(h: &[u8], i: usize) -> Result<u32> {
    let s = std::str::from_utf8(&h[6 + 8 * i..6 + 8 * (i + 1)]).context("Non-ASCII cpio header")?;
    u32::from_str_radix(s, 16).with_context(|| format!("Bad cpio header field {s:?}"))
}

/// Read archives from `r` until it ends; zero bytes between archives are
/// skipped. Returns the members, and the offset where uncompressed reading
/// stopped if it met something that is not a cpio header (a compressed
/// archive following uncompressed ones).
fn read_archives<R: Read>(r: R, out: &mut Vec<Member>) -> Result<Option<u64>> {
    let mut r = Counted { inner: r, pos: 0 };
    loop {
        // Skip padding between archives (zeros), one byte at a time until a
        // header starts: the first non-zero byte.
        let mut first = [0u8; 1];
        loop {
            match r.read(&mut first)? {
                0 => return Ok(None),
                _ if first[0] == 0 => continue,
                _ => break,
            }
        }
        let start = r.pos - 1;
        let mut h = [0u8; HEADER_LEN];
        h[0] = first[0];
        let mut got = 1;
        while got < HEADER_LEN {
            let n = r.read(&mut h[got..])?;
            if n == 0 {
                break;
            }
            got += n;
        }
        if got < 6 || (&h[..6] != b"070701" && &h[..6] != b"070702") {
            return Ok(Some(start));
        }
        if got < HEADER_LEN {
            bail!("truncated cpio header at offset {start}");
        }
        let mode = hex_field(&h, 1)?;
        let filesize = hex_field(&h, 6)?;
        let namesize = hex_field(&h, 11)? as usize;
        let mut name = vec![0u8; namesize];
        r.read_exact(&mut name)
            .context("Truncated cpio member name")?;
        let name = String::from_utf8_lossy(name.split(|b| *b == 0).next().unwrap_or_default())
            .into_owned();
        r.align4()?;
        r.skip(u64::from(filesize))
            .context("Truncated cpio member")?;
        r.align4()?;
        if name == TRAILER {
            continue;
        }
        let name = name
            .trim_start_matches("./")
            .trim_start_matches('/')
            .to_owned();
        if !name.is_empty() && name != "." {
            out.push(Member { name, mode });
        }
    }
}

/// The members of an initramfs image.
pub fn members(image: &[u8]) -> Result<Vec<Member>> {
    let mut out = Vec::new();
    let mut rest = image;
    loop {
        let Some(off) = read_archives(rest, &mut out)? else {
            return Ok(out);
        };
        rest = &rest[off as usize..];
        let decoded: Box<dyn Read> = if rest.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::read::MultiGzDecoder::new(rest))
        } else if rest.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Box::new(zstd::stream::read::Decoder::new(rest)?)
        } else {
            let magic: Vec<String> = rest.iter().take(6).map(|b| format!("{b:02x}")).collect();
            bail!(
                "unsupported initramfs compression (magic {}); only gzip and zstd are read",
                magic.join(" ")
            );
        };
        // A compressed archive runs to the end of the image.
        read_archives(decoded, &mut out).context("Reading the compressed archive")?;
        return Ok(out);
    }
}

/// Build a `newc` archive of `(name, mode, data)` (for tests, here and in
/// the checks' tests).
#[cfg(test)]
pub(crate) fn build(members: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut push = |name: &str, mode: u32, data: &[u8]| {
        let namesize = name.len() + 1;
        out.extend_from_slice(
            format!(
                "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
                1, mode, 0, 0, 1, 0, data.len(), 0, 0, 0, 0, namesize, 0
            )
            .as_bytes(),
        );
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    };
    for (n, m, d) in members {
        push(n, *m, d);
    }
    push(TRAILER, 0, b"");
    while out.len() % 512 != 0 {
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn names(m: &[Member]) -> Vec<&str> {
        m.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn early_uncompressed_then_zstd_and_gzip() {
        let early = build(&[("kernel/x86/microcode/GenuineIntel.bin", 0o100644, b"ucode")]);
        let main = build(&[
            (".", 0o40755, b""),
            ("./usr/bin/bootc-initramfs-setup", 0o100755, b"\x7fELF..."),
            (
                "usr/lib/systemd/system/x.target.requires/y.service",
                0o120777,
                b"../y.service",
            ),
        ]);
        let mut img = early.clone();
        img.extend(zstd::encode_all(&main[..], 3).unwrap());
        let m = members(&img).unwrap();
        assert_eq!(
            names(&m),
            [
                "kernel/x86/microcode/GenuineIntel.bin",
                "usr/bin/bootc-initramfs-setup",
                "usr/lib/systemd/system/x.target.requires/y.service"
            ]
        );
        assert!(m[2].is_symlink() && !m[1].is_symlink());

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&main).unwrap();
        let m = members(&gz.finish().unwrap()).unwrap();
        assert_eq!(m.len(), 2);
        // Uncompressed only.
        assert_eq!(members(&main).unwrap().len(), 2);
    }

    #[test]
    fn unknown_compression_and_truncation() {
        let e = members(b"\xfd7zXZ\0rest").unwrap_err();
        assert!(format!("{e:#}").contains("fd 37 7a"), "{e:#}");
        let main = build(&[("usr/bin/a", 0o100755, &[1u8; 100])]);
        assert!(members(&main[..150]).is_err());
    }
}
