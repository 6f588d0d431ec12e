//! A minimal writer of uncompressed `newc` cpio archives (the format Linux unpacks as an
//! initramfs): directories, regular files and symbolic links, owned by root, mtime 0, one
//! inode number each; and its reader ([`read_newc`], for checks and tests).
//! See the kernel's Documentation/driver-api/early-userspace/buffer-format.rst.

use std::io::{self, Write};

/// File type bits of `mode`.
pub const S_IFDIR: u32 = 0o040_000;
pub const S_IFREG: u32 = 0o100_000;
pub const S_IFLNK: u32 = 0o120_000;
/// The file type bits of `mode`.
pub const S_IFMT: u32 = 0o170_000;

/// One member of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioEntry {
    /// Path inside the archive, without a leading `/` (`init`, `fn/handler`).
    pub name: String,
    /// Type and permission bits (`S_IFREG | 0o755`).
    pub mode: u32,
    /// The file's content (empty for a directory).
    pub data: Vec<u8>,
}

impl CpioEntry {
    pub fn dir(name: &str) -> CpioEntry {
        CpioEntry {
            name: name.into(),
            mode: S_IFDIR | 0o755,
            data: Vec::new(),
        }
    }

    pub fn file(name: &str, perm: u32, data: Vec<u8>) -> CpioEntry {
        CpioEntry {
            name: name.into(),
            mode: S_IFREG | (perm & 0o7777),
            data,
        }
    }

    /// A directory with permission bits `perm` (`tmp`: 0o1777).
    pub fn dir_with(name: &str, perm: u32) -> CpioEntry {
        CpioEntry {
            name: name.into(),
            mode: S_IFDIR | (perm & 0o7777),
            data: Vec::new(),
        }
    }

    /// A symbolic link to `target`.
    pub fn symlink(name: &str, target: &str) -> CpioEntry {
        CpioEntry {
            name: name.into(),
            mode: S_IFLNK | 0o777,
            data: target.as_bytes().to_vec(),
        }
    }
}

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

fn pad4(out: &mut impl Write, len: usize) -> io::Result<()> {
    out.write_all(&[0u8; 3][..(4 - len % 4) % 4])
}

fn field(value: usize, what: &str) -> io::Result<u32> {
    u32::try_from(value).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cpio: {what} {value} does not fit in 32 bits"),
        )
    })
}

fn write_member(out: &mut impl Write, ino: u32, nlink: u32, e: &CpioEntry) -> io::Result<()> {
    let namesize = field(e.name.len() + 1, "name length")?;
    let filesize = field(e.data.len(), "file size")?;
    // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
    let fields = [
        ino, e.mode, 0, 0, nlink, 0, filesize, 0, 0, 0, 0, namesize, 0,
    ];
    out.write_all(MAGIC)?;
    for f in fields {
        write!(out, "{f:08X}")?;
    }
    out.write_all(e.name.as_bytes())?;
    out.write_all(&[0])?;
    pad4(out, HEADER_LEN + e.name.len() + 1)?;
    out.write_all(&e.data)?;
    pad4(out, e.data.len())
}

/// Writes `entries` in order (parents before their children), then the trailer.
pub fn write_newc(out: &mut impl Write, entries: &[CpioEntry]) -> io::Result<()> {
    for (i, e) in entries.iter().enumerate() {
        if e.name.is_empty() || e.name.starts_with('/') || e.name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpio: bad member name {:?}", e.name),
            ));
        }
        let nlink = if e.mode & S_IFMT == S_IFDIR { 2 } else { 1 };
        write_member(out, field(i + 1, "member count")?, nlink, e)?;
    }
    write_member(
        out,
        0,
        1,
        &CpioEntry::file(TRAILER, 0, Vec::new()).with_mode(0),
    )
}

impl CpioEntry {
    fn with_mode(mut self, mode: u32) -> CpioEntry {
        self.mode = mode;
        self
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("cpio: {what}"))
}

/// The members of a `newc` archive, up to its trailer (which is not returned).
pub fn read_newc(mut b: &[u8]) -> io::Result<Vec<CpioEntry>> {
    let mut out = Vec::new();
    loop {
        let head = b.get(..HEADER_LEN).ok_or_else(|| bad("truncated header"))?;
        if head.get(..6) != Some(&MAGIC[..]) {
            return Err(bad("bad magic"));
        }
        let field = |i: usize| -> io::Result<usize> {
            let hex = head
                .get(6 + 8 * i..14 + 8 * i)
                .and_then(|h| std::str::from_utf8(h).ok())
                .ok_or_else(|| bad("bad header field"))?;
            let v = u32::from_str_radix(hex, 16).map_err(|_| bad("bad header field"))?;
            usize::try_from(v).map_err(|_| bad("header field too large"))
        };
        let (mode, size, namesize) = (field(1)?, field(6)?, field(11)?);
        let name = b
            .get(HEADER_LEN..HEADER_LEN + namesize.saturating_sub(1))
            .ok_or_else(|| bad("truncated name"))?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| bad("name is not UTF-8"))?;
        let data_at = (HEADER_LEN + namesize).next_multiple_of(4);
        let data = b
            .get(data_at..data_at + size)
            .ok_or_else(|| bad("truncated data"))?
            .to_vec();
        b = b
            .get((data_at + size).next_multiple_of(4)..)
            .unwrap_or_default();
        if name == TRAILER {
            return Ok(out);
        }
        out.push(CpioEntry {
            name,
            mode: u32::try_from(mode).map_err(|_| bad("bad mode"))?,
            data,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (header fields, name, data) of each member, trailer included.
    fn read_newc(mut b: &[u8]) -> Vec<([u32; 13], String, Vec<u8>)> {
        let mut out = Vec::new();
        let total = b.len();
        loop {
            assert_eq!(&b[..6], MAGIC);
            let mut f = [0u32; 13];
            for (i, v) in f.iter_mut().enumerate() {
                let hex = std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap();
                *v = u32::from_str_radix(hex, 16).unwrap();
            }
            let namesize = f[11] as usize;
            let name =
                String::from_utf8(b[HEADER_LEN..HEADER_LEN + namesize - 1].to_vec()).unwrap();
            assert_eq!(b[HEADER_LEN + namesize - 1], 0);
            let data_at = (HEADER_LEN + namesize).next_multiple_of(4);
            let size = f[6] as usize;
            let data = b[data_at..data_at + size].to_vec();
            b = &b[(data_at + size).next_multiple_of(4)..];
            let done = name == TRAILER;
            out.push((f, name, data));
            if done {
                assert!(b.is_empty(), "bytes after the trailer");
                assert_eq!(total % 4, 0);
                return out;
            }
        }
    }

    #[test]
    fn round_trip() {
        let entries = vec![
            CpioEntry::dir("dev"),
            CpioEntry::dir("fn"),
            CpioEntry::file("init", 0o755, b"\x7fELF....".to_vec()),
            CpioEntry::file("fn/handler", 0o755, vec![7u8; 13]),
            CpioEntry::file("empty", 0o644, Vec::new()),
            CpioEntry::symlink("lib64", "usr/lib64"),
            CpioEntry::dir_with("tmp", 0o1777),
        ];
        let mut bytes = Vec::new();
        write_newc(&mut bytes, &entries).unwrap();
        let members = read_newc(&bytes);
        assert_eq!(members.len(), entries.len() + 1);
        for (i, (e, (f, name, data))) in entries.iter().zip(&members).enumerate() {
            assert_eq!(name, &e.name);
            assert_eq!(data, &e.data);
            assert_eq!(f[0] as usize, i + 1, "ino");
            assert_eq!(f[1], e.mode, "mode");
            assert_eq!((f[2], f[3], f[5]), (0, 0, 0), "uid, gid, mtime");
            assert_eq!(
                f[4],
                if e.mode & S_IFMT == S_IFDIR { 2 } else { 1 },
                "nlink"
            );
            assert_eq!(f[6] as usize, e.data.len(), "filesize");
            assert_eq!(f[11] as usize, e.name.len() + 1, "namesize");
        }
        let (f, name, data) = members.last().unwrap();
        assert_eq!((name.as_str(), f[0], f[1], data.len()), (TRAILER, 0, 0, 0));
        // The header of the first member, byte for byte.
        let expected = [
            "070701", "00000001", "000041ED", "00000000", "00000000", "00000002", "00000000",
            "00000000", "00000000", "00000000", "00000000", "00000000", "00000004", "00000000",
        ]
        .concat();
        assert_eq!(&bytes[..HEADER_LEN], expected.as_bytes());
        assert_eq!(&bytes[HEADER_LEN..HEADER_LEN + 4], b"dev\0");
        assert_eq!(super::read_newc(&bytes).unwrap(), entries);
        assert_eq!(entries[5].mode, 0o120_777);
        for cut in [0, 50, HEADER_LEN + 2, bytes.len() - 10] {
            assert!(super::read_newc(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn bad_names_are_refused() {
        for name in ["", "/init", "a\0b"] {
            let e = write_newc(&mut Vec::new(), &[CpioEntry::dir(name)]).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
    }
}
