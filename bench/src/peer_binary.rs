//! Whether a Firecracker peer binary is built as Firecracker ships it. Its releases keep the
//! debug information apart (`tools/release.sh`: `objcopy --strip-debug`, the `.debug` file
//! beside the binary), while a plain `cargo build --release` of its tree keeps it in (its
//! release profile has `strip = "none"`): 5.6 MB instead of 3.6 MB for `firecracker`. Its
//! jailer copies the binary into every jail, so an unstripped peer starts its jailed rows
//! ~1 ms later on the development hosts (docs/benchmarks.md, tenth session) and flatters
//! every Kiln/Firecracker ratio there. The bench says so above the table rather than guess.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The section names' table is read only up to this size (an ELF's is a few KiB).
const MAX_NAMES: u64 = 1 << 20;
/// Section headers read at most (a static Rust binary has ~40).
const MAX_SECTIONS: u64 = 4096;

/// The bytes of `path`'s `.debug_*` sections; `None` when it is not a readable 64-bit
/// little-endian ELF file.
pub fn debug_info_bytes(path: &Path) -> Option<u64> {
    let mut f = File::open(path).ok()?;
    let mut ehdr = [0u8; 64];
    f.read_exact(&mut ehdr).ok()?;
    // Magic, ELFCLASS64, ELFDATA2LSB.
    if ehdr[..4] != *b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        return None;
    }
    let shoff = u64_at(&ehdr, 0x28)?;
    let shentsize = u64::from(u16_at(&ehdr, 0x3a)?);
    let shnum = u64::from(u16_at(&ehdr, 0x3c)?);
    let shstrndx = u64::from(u16_at(&ehdr, 0x3e)?);
    // An ELF64 section header is 64 bytes: a larger claimed size is not trusted (it would
    // size the read below).
    if shentsize != 64 || shnum > MAX_SECTIONS || shstrndx >= shnum {
        return None;
    }
    let mut headers = vec![0u8; usize::try_from(shentsize * shnum).ok()?];
    f.seek(SeekFrom::Start(shoff)).ok()?;
    f.read_exact(&mut headers).ok()?;
    let header = |i: u64| -> Option<&[u8]> {
        let at = usize::try_from(i * shentsize).ok()?;
        headers.get(at..at + 64)
    };
    // (name offset, file offset, size) of section `i`.
    let section = |i: u64| -> Option<(u32, u64, u64)> {
        let h = header(i)?;
        Some((u32_at(h, 0)?, u64_at(h, 24)?, u64_at(h, 32)?))
    };
    let (_, names_at, names_len) = section(shstrndx)?;
    if names_len > MAX_NAMES {
        return None;
    }
    let mut names = vec![0u8; usize::try_from(names_len).ok()?];
    f.seek(SeekFrom::Start(names_at)).ok()?;
    f.read_exact(&mut names).ok()?;
    let mut total = 0u64;
    for i in 0..shnum {
        let (name, _, size) = section(i)?;
        let name = names.get(usize::try_from(name).ok()?..)?;
        if name.starts_with(b".debug_") {
            total = total.saturating_add(size);
        }
    }
    Some(total)
}

/// The line printed above the table for a Firecracker peer binary that carries debug
/// information (`None` for one built as Firecracker ships it, or one that cannot be read).
pub fn note(what: &str, path: &Path) -> Option<String> {
    let bytes = debug_info_bytes(path).filter(|b| *b > 0)?;
    // Precision is irrelevant for a size shown in MB.
    #[allow(clippy::cast_precision_loss)]
    let mb = bytes as f64 / 1e6;
    Some(format!(
        "Note: the Firecracker peer's {what} ({}) carries {mb:.1} MB of debug information, which Firecracker's releases strip (`objcopy --strip-debug`, its tools/release.sh): not Firecracker as shipped (its jailer copies the VMM, debug information included, into every jail)",
        path.display()
    ))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 file: the header and `names.len()` section headers, the section names'
    /// table last (index `names.len() - 1`, named ".shstrtab").
    fn elf(sections: &[(&str, u64)]) -> Vec<u8> {
        let mut strtab = vec![0u8];
        let mut name_at = vec![];
        for (name, _) in sections.iter().chain([(".shstrtab", 0)].iter()) {
            name_at.push(u32::try_from(strtab.len()).unwrap());
            strtab.extend_from_slice(name.as_bytes());
            strtab.push(0);
        }
        let shnum = sections.len() + 1;
        let shoff = 64u64;
        let strtab_at = shoff + 64 * shnum as u64;
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&u16::try_from(shnum).unwrap().to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&u16::try_from(shnum - 1).unwrap().to_le_bytes());
        for (i, (_, size)) in sections.iter().enumerate() {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name_at[i].to_le_bytes());
            h[32..40].copy_from_slice(&size.to_le_bytes());
            f.extend_from_slice(&h);
        }
        let mut h = [0u8; 64];
        h[..4].copy_from_slice(&name_at[sections.len()].to_le_bytes());
        h[24..32].copy_from_slice(&strtab_at.to_le_bytes());
        h[32..40].copy_from_slice(&(strtab.len() as u64).to_le_bytes());
        f.extend_from_slice(&h);
        f.extend_from_slice(&strtab);
        f
    }

    fn write(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("kiln-bench-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn debug_sections_are_summed_and_others_are_not() {
        let p = write(
            "debug",
            &elf(&[
                (".text", 1000),
                (".debug_info", 300),
                (".debug_line", 20),
                (".rodata", 7),
            ]),
        );
        assert_eq!(debug_info_bytes(&p), Some(320));
        assert!(note("VMM", &p)
            .unwrap()
            .contains("0.0 MB of debug information"));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn a_stripped_binary_gets_no_note() {
        let p = write("stripped", &elf(&[(".text", 1000), (".symtab", 50)]));
        assert_eq!(debug_info_bytes(&p), Some(0));
        assert_eq!(note("VMM", &p), None);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn what_is_not_an_elf_file_is_unknown_not_a_panic() {
        let mut bad_index = elf(&[(".debug_info", 5)]);
        bad_index[0x3e] = 9; // the names' table index past the headers
        let mut huge_headers = elf(&[(".debug_info", 5)]);
        huge_headers[0x3a..0x3c].copy_from_slice(&u16::MAX.to_le_bytes());
        let mut truncated = elf(&[(".debug_info", 5)]);
        truncated.truncate(100);
        for (name, bytes) in [
            ("text", b"#!/bin/sh\n".to_vec()),
            ("empty", vec![]),
            ("index", bad_index),
            ("entsize", huge_headers),
            ("short", truncated),
        ] {
            let p = write(name, &bytes);
            assert_eq!(debug_info_bytes(&p), None, "{name}");
            std::fs::remove_file(p).unwrap();
        }
        assert_eq!(debug_info_bytes(Path::new("/nonexistent/fc")), None);
    }
}
