//! The memory file: guest RAM, region after region, then (a microVM with virtio-mem) the
//! hot-plug region, written at snapshot creation and hashed (authenticated snapshots) when
//! written and when loaded. The hot-plug region's unplugged blocks are the image's holes
//! ([`Image::holes`]): read as zeros without touching their memory (never backed, and
//! never faulted in by a snapshot), so they stay holes of the file.
//!
//! - **Full**: the file is truncated and every page that is not all zeros is written at its
//!   offset; zero pages stay holes (the file's size is the guest's memory size, its disk
//!   usage what the guest used).
//! - **Diff**: only the pages written since the last snapshot (KVM's dirty log for the
//!   guest's writes, [`crate::vstate::dirty`] for the VMM's) are written at their offsets,
//!   into the file as it is: given the previous snapshot's memory file, it becomes the
//!   current memory (loadable at once); given a new path, it is a sparse layer, to be
//!   copied over its base in order (what Firecracker's `snapshot-editor edit-memory rebase`
//!   does).
//!
//! The image's digests are of 2 MiB chunks of the file's contents
//! ([`crate::snapshot::digest`]); a diff rehashes only the chunks it touched.

use crate::snapshot::digest::{
    chunk_count, chunk_digest, chunk_range, is_zero, zero_chunk_digest, Chunk, MemoryDigest, CHUNK,
    CHUNK_BYTES,
};
use crate::vstate::vm_state::{PAGE_BYTES, PAGE_SIZE};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    #[error("mem_file_path {path:?}: {what}: {source}")]
    Io {
        path: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot read guest memory at {addr:#x}: {reason}")]
    Guest { addr: u64, reason: String },
    #[error("mem_file_path {path:?} is {len} bytes, the guest memory {size}: a diff snapshot is written into the previous snapshot's memory file, or into a new file")]
    DiffTarget { path: String, len: u64, size: u64 },
}

/// Where the memory image's bytes live in guest memory: each region's (guest address,
/// length), one after the other in the image; `holes` are ranges of the image (offset,
/// length; sorted, apart) that are zeros whatever the memory holds (unplugged hot-plug
/// blocks).
#[derive(Debug, Clone)]
pub struct Image<'a> {
    pub mem: &'a GuestMemoryMmap,
    pub regions: &'a [(u64, u64)],
    pub holes: &'a [(u64, u64)],
}

impl Image<'_> {
    pub fn size(&self) -> u64 {
        self.regions.iter().map(|r| r.1).sum()
    }

    /// True when `[offset, offset + len)` lies inside one hole.
    pub fn is_hole(&self, offset: u64, len: u64) -> bool {
        let i = self.holes.partition_point(|&(at, l)| at + l <= offset);
        self.holes
            .get(i)
            .is_some_and(|&(at, l)| at <= offset && offset + len <= at + l)
    }

    /// Copies the image's bytes at `offset` into `buf`: zeros in the holes, guest memory
    /// elsewhere.
    pub fn read(&self, mut offset: u64, mut buf: &mut [u8]) -> Result<(), MemoryFileError> {
        while !buf.is_empty() {
            let i = self.holes.partition_point(|&(at, l)| at + l <= offset);
            let (n, hole) = match self.holes.get(i) {
                Some(&(at, l)) if at <= offset => (at + l - offset, true),
                Some(&(at, _)) => (at - offset, false),
                None => (u64::MAX, false),
            };
            let n = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
            let (now, rest) = buf.split_at_mut(n);
            if hole {
                now.fill(0);
            } else {
                self.read_memory(offset, now)?;
            }
            buf = rest;
            offset += n as u64;
        }
        Ok(())
    }

    /// Copies the guest memory at image offset `offset` into `buf` (across regions if need
    /// be).
    fn read_memory(&self, mut offset: u64, mut buf: &mut [u8]) -> Result<(), MemoryFileError> {
        let mut base = 0u64;
        for &(addr, len) in self.regions {
            if buf.is_empty() {
                break;
            }
            if offset >= base + len {
                base += len;
                continue;
            }
            let within = offset - base;
            let n = usize::try_from((len - within).min(buf.len() as u64)).unwrap_or(0);
            let (now, rest) = buf.split_at_mut(n);
            let at = GuestAddress(addr + within);
            self.mem
                .read_slice(now, at)
                .map_err(|e| MemoryFileError::Guest {
                    addr: at.0,
                    reason: e.to_string(),
                })?;
            buf = rest;
            offset += n as u64;
            base += len;
        }
        Ok(())
    }
}

fn io<'a>(path: &'a str, what: &'static str) -> impl Fn(std::io::Error) -> MemoryFileError + 'a {
    move |source| MemoryFileError::Io {
        path: path.to_string(),
        what,
        source,
    }
}

/// Writes the pages of `buf` (the image at `offset`) that are not all zeros, joining
/// neighbours into one write.
fn write_nonzero(file: &File, offset: u64, buf: &[u8], path: &str) -> Result<(), MemoryFileError> {
    let page = PAGE_BYTES;
    let mut run: Option<usize> = None;
    let pages = buf.len().div_ceil(page);
    for i in 0..=pages {
        let p = buf.get(i * page..((i + 1) * page).min(buf.len()));
        let nonzero = p.is_some_and(|p| !is_zero(p));
        match (nonzero, run) {
            (true, None) => run = Some(i),
            (false, Some(start)) => {
                let bytes = buf
                    .get(start * page..(i * page).min(buf.len()))
                    .unwrap_or(&[]);
                file.write_all_at(bytes, offset + (start * page) as u64)
                    .map_err(io(path, "writing"))?;
                run = None;
            }
            _ => {}
        }
    }
    Ok(())
}

/// A full memory file: truncated, then every non-zero page written. Returns the image's
/// digests when `hash` (authenticated snapshots).
pub fn write_full(
    image: &Image<'_>,
    file: &File,
    path: &str,
    hash: bool,
) -> Result<Option<MemoryDigest>, MemoryFileError> {
    let size = image.size();
    file.set_len(0).map_err(io(path, "truncating"))?;
    file.set_len(size).map_err(io(path, "sizing"))?;
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut digest = hash.then(MemoryDigest::default);
    for i in 0..chunk_count(size) {
        let (start, len) = chunk_range(i, size);
        if len == CHUNK_BYTES && image.is_hole(start, len as u64) {
            // Nothing to read nor write: the file is a hole there already.
            if let Some(d) = digest.as_mut() {
                d.chunks.push(zero_chunk_digest());
            }
            continue;
        }
        let b = buf.get_mut(..len).unwrap_or_default();
        image.read(start, b)?;
        write_nonzero(file, start, b, path)?;
        if let Some(d) = digest.as_mut() {
            d.chunks.push(chunk_digest(b));
        }
    }
    Ok(digest)
}

/// A diff: the pages set in `dirty` (one bitmap of 64-page words per region, KVM's
/// layout) written at their offsets into `file`, which is the previous memory file (the
/// guest's size) or new (empty: made sparse at the guest's size). With `digest` (the
/// previous snapshot's digests, or the whole image's when there is none) the chunks holding
/// dirty pages are rehashed. Returns the pages written.
pub fn write_diff(
    image: &Image<'_>,
    file: &File,
    path: &str,
    dirty: &[Vec<u64>],
    digest: Option<&mut MemoryDigest>,
) -> Result<u64, MemoryFileError> {
    let size = image.size();
    let len = file.metadata().map_err(io(path, "reading its size"))?.len();
    if len == 0 {
        file.set_len(size).map_err(io(path, "sizing"))?;
    } else if len != size {
        return Err(MemoryFileError::DiffTarget {
            path: path.to_string(),
            len,
            size,
        });
    }
    let mut page = vec![0u8; PAGE_BYTES];
    let mut touched_chunks = std::collections::BTreeSet::new();
    let mut written = 0u64;
    let mut base = 0u64;
    for (&(_, region_len), bitmap) in image.regions.iter().zip(dirty) {
        for (w, word) in bitmap.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let bit = u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                let off_in_region = (w as u64 * 64 + bit) * PAGE_SIZE;
                if off_in_region >= region_len {
                    continue;
                }
                let offset = base + off_in_region;
                image.read(offset, &mut page)?;
                file.write_all_at(&page, offset)
                    .map_err(io(path, "writing"))?;
                touched_chunks.insert(offset / CHUNK);
                written += 1;
            }
        }
        base += region_len;
    }
    if let Some(d) = digest {
        let mut buf = vec![0u8; CHUNK_BYTES];
        for i in touched_chunks {
            let (start, len) = chunk_range(i, size);
            let b = buf.get_mut(..len).unwrap_or_default();
            image.read(start, b)?;
            if let Some(slot) = usize::try_from(i).ok().and_then(|i| d.chunks.get_mut(i)) {
                *slot = chunk_digest(b);
            }
        }
    }
    Ok(written)
}

/// Copies `ranges` of `file` (file offset, guest address, length) into guest memory `mem`,
/// page by page, writing only the pages that are not all zeros (the memory is fresh: its
/// zero pages stay unbacked). A range that is a hole of the file is not read.
pub fn fill_guest(
    file: &File,
    path: &str,
    mem: &GuestMemoryMmap,
    ranges: &[(u64, u64, u64)],
) -> Result<(), MemoryFileError> {
    let mut buf = vec![0u8; CHUNK_BYTES];
    for &(file_offset, addr, len) in ranges {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK);
            let at = file_offset + done;
            done += n;
            if is_hole(file, at, n) {
                continue;
            }
            let b = buf
                .get_mut(..usize::try_from(n).unwrap_or(CHUNK_BYTES))
                .unwrap_or_default();
            file.read_exact_at(b, at).map_err(io(path, "reading"))?;
            for (i, page) in b.chunks(PAGE_BYTES).enumerate() {
                if is_zero(page) {
                    continue;
                }
                let to = GuestAddress(addr + (done - n) + (i * PAGE_BYTES) as u64);
                mem.write_slice(page, to)
                    .map_err(|e| MemoryFileError::Guest {
                        addr: to.0,
                        reason: e.to_string(),
                    })?;
            }
        }
    }
    Ok(())
}

/// The digests of the image in guest memory, on `threads` threads.
pub fn digest_guest(image: &Image<'_>, threads: usize) -> Result<MemoryDigest, MemoryFileError> {
    MemoryDigest::compute(image.size(), threads, |off, buf| {
        image.read(off, buf).map(|()| Chunk::Read)
    })
}

/// The digests of a memory file of `size` bytes, on `threads` threads. A chunk that is a
/// hole of the file (`SEEK_DATA` finds no data in it) is zeros, without being read.
pub fn digest_file(
    file: &File,
    path: &str,
    size: u64,
    threads: usize,
) -> Result<MemoryDigest, MemoryFileError> {
    MemoryDigest::compute(size, threads, |off, buf| {
        if is_hole(file, off, buf.len() as u64) {
            return Ok(Chunk::Zeros);
        }
        file.read_exact_at(buf, off)
            .map(|()| Chunk::Read)
            .map_err(io(path, "reading"))
    })
}

/// True when `file` has no data in `[off, off + len)` (a hole: it reads as zeros). False
/// when it cannot tell (a file system without `SEEK_DATA`), so the range is read.
fn is_hole(file: &File, off: u64, len: u64) -> bool {
    let Ok(at) = libc::off_t::try_from(off) else {
        return false;
    };
    // SAFETY: lseek on a descriptor `file` owns for the call; SEEK_DATA only reports (and
    // moves this description's offset, which every read here ignores: they are pread).
    let next = unsafe { libc::lseek(file.as_raw_fd(), at, libc::SEEK_DATA) };
    if next < 0 {
        // ENXIO: no data from `off` to the end of the file.
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO);
    }
    u64::try_from(next).is_ok_and(|n| n >= off.saturating_add(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn temp(name: &str) -> (File, String) {
        let p = std::env::temp_dir().join(format!("kiln-memfile-{name}-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        (f, p.to_string_lossy().into_owned())
    }

    #[test]
    fn full_and_diff_files_hold_the_image() {
        let regions = [(0u64, 3 << 20), (1u64 << 32, 1 << 20)];
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 3 << 20),
            (GuestAddress(1 << 32), 1 << 20),
        ])
        .unwrap();
        mem.write_slice(b"low", GuestAddress(0x1000)).unwrap();
        mem.write_slice(b"high", GuestAddress((1 << 32) + 0x2000))
            .unwrap();
        let image = Image {
            mem: &mem,
            regions: &regions,
            holes: &[],
        };
        let (f, p) = temp("full");
        let d = write_full(&image, &f, &p, true).unwrap().unwrap();
        assert_eq!(f.metadata().unwrap().len(), 4 << 20);
        assert!(
            f.metadata().unwrap().blocks() * 512 < 1 << 20,
            "zero pages are holes"
        );
        let mut b = [0u8; 4];
        f.read_exact_at(&mut b, (3 << 20) + 0x2000).unwrap();
        assert_eq!(&b, b"high");
        assert_eq!(d, digest_file(&f, &p, 4 << 20, 2).unwrap());
        assert_eq!(d, digest_guest(&image, 1).unwrap());
        // A diff of one page, in place: the file and the digest follow the memory.
        mem.write_slice(b"LOW", GuestAddress(0x1000)).unwrap();
        let mut dd = d.clone();
        let mut low = vec![0u64; 12];
        low[0] = 0b10;
        let dirty = vec![low, vec![0u64; 4]];
        assert_eq!(
            write_diff(&image, &f, &p, &dirty, Some(&mut dd)).unwrap(),
            1
        );
        f.read_exact_at(&mut b[..3], 0x1000).unwrap();
        assert_eq!(&b[..3], b"LOW");
        assert_eq!(dd, digest_file(&f, &p, 4 << 20, 1).unwrap());
        assert_ne!(dd, d);
        // A diff into a file of another size is refused.
        let (g, q) = temp("diff");
        g.set_len(5).unwrap();
        assert!(matches!(
            write_diff(&image, &g, &q, &dirty, None),
            Err(MemoryFileError::DiffTarget { .. })
        ));
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_file(&q);
    }

    #[test]
    fn holes_are_zeros_in_the_file_and_are_never_read_nor_filled() {
        // 2 MiB of RAM, then an 8 MiB "hot-plug" region whose [2 MiB, 6 MiB) is a hole.
        let regions = [(0u64, 2 << 20), (1u64 << 39, 8 << 20)];
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 2 << 20),
            (GuestAddress(1 << 39), 8 << 20),
        ])
        .unwrap();
        let plugged = (1u64 << 39) + 0x1000;
        let unplugged = (1u64 << 39) + (3 << 20);
        mem.write_slice(b"plugged", GuestAddress(plugged)).unwrap();
        mem.write_slice(b"stale", GuestAddress(unplugged)).unwrap();
        let holes = [((2 << 20) + (2 << 20), 4 << 20)];
        let image = Image {
            mem: &mem,
            regions: &regions,
            holes: &holes,
        };
        assert!(image.is_hole(4 << 20, 4 << 20));
        assert!(!image.is_hole(3 << 20, 2 << 20));
        let mut b = [1u8; 8];
        image.read((2 << 20) + (3 << 20), &mut b).unwrap();
        assert_eq!(b, [0; 8], "a hole reads as zeros");
        let (f, p) = temp("holes");
        let d = write_full(&image, &f, &p, true).unwrap().unwrap();
        assert_eq!(f.metadata().unwrap().len(), 10 << 20);
        assert!(is_hole(&f, 4 << 20, 4 << 20), "the hole stays a hole");
        assert_eq!(d, digest_file(&f, &p, 10 << 20, 1).unwrap());
        assert_eq!(d, digest_guest(&image, 1).unwrap());
        // Back into a fresh region: the plugged part only.
        let fresh =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(1 << 39), 8 << 20)]).unwrap();
        fill_guest(&f, &p, &fresh, &[(2 << 20, 1 << 39, 2 << 20)]).unwrap();
        let mut got = [0u8; 7];
        fresh.read_slice(&mut got, GuestAddress(plugged)).unwrap();
        assert_eq!(&got, b"plugged");
        fresh
            .read_slice(&mut got[..5], GuestAddress(unplugged))
            .unwrap();
        assert_eq!(&got[..5], &[0; 5]);
        let _ = std::fs::remove_file(&p);
    }
}
