//! A pmem device's backing file mapped into the VMM, as the guest's memory slot sees it.
//!
//! The slot's size is the file's size rounded up to [`PMEM_ALIGNMENT`] (2 MiB), as
//! Firecracker makes it: the whole range is first reserved with private anonymous memory,
//! then the file is mapped over its beginning (`MAP_SHARED | MAP_FIXED`), so that the part
//! past the file's end is zero-filled memory that never reaches the file. Both mappings
//! are read-only for a read-only device (the KVM slot is read-only too). `MAP_NORESERVE`:
//! nothing is charged until the guest touches it.

use crate::arch::x86_64::layout::PMEM_ALIGNMENT;
use crate::vstate::vm::SlotMemory;
use std::fs::File;
use std::os::fd::AsRawFd;

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("the backing file cannot be read: {0}")]
    Metadata(std::io::Error),
    #[error("the backing file is empty")]
    Empty,
    #[error("the backing file is too large to map ({0} bytes)")]
    TooLarge(u64),
    #[error("mmap of {len} bytes failed: {source}")]
    Mmap { len: u64, source: std::io::Error },
}

/// The mapping; unmapped when dropped.
#[derive(Debug)]
pub struct PmemMapping {
    addr: usize,
    /// The slot's size: the file's, rounded up to [`PMEM_ALIGNMENT`].
    len: usize,
    file_len: usize,
}

impl PmemMapping {
    /// Maps `file` (opened read-write unless `read_only`).
    pub fn new(file: &File, read_only: bool) -> Result<PmemMapping, MappingError> {
        let file_len = file.metadata().map_err(MappingError::Metadata)?.len();
        if file_len == 0 {
            return Err(MappingError::Empty);
        }
        let aligned = file_len
            .checked_next_multiple_of(PMEM_ALIGNMENT)
            .ok_or(MappingError::TooLarge(file_len))?;
        let too_large = || MappingError::TooLarge(file_len);
        let len = usize::try_from(aligned).map_err(|_| too_large())?;
        let file_len = usize::try_from(file_len).map_err(|_| too_large())?;
        let prot = if read_only {
            libc::PROT_READ
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        let failed = |len: usize| MappingError::Mmap {
            len: len as u64,
            source: std::io::Error::last_os_error(),
        };
        // SAFETY: a new private anonymous mapping at an address the kernel picks: it
        // aliases nothing.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(failed(len));
        }
        let mapping = PmemMapping {
            addr: addr as usize,
            len,
            file_len,
        };
        // SAFETY: MAP_FIXED replaces the first `file_len` bytes of the reservation just
        // made, which this function owns and nothing references yet; `file` is a valid
        // open descriptor.
        let over = unsafe {
            libc::mmap(
                addr,
                file_len,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED | libc::MAP_NORESERVE,
                file.as_raw_fd(),
                0,
            )
        };
        if over == libc::MAP_FAILED {
            // `mapping` unmaps the reservation when dropped.
            return Err(failed(file_len));
        }
        Ok(mapping)
    }

    /// The file's size in bytes.
    pub fn file_len(&self) -> u64 {
        self.file_len as u64
    }

    /// Makes what the guest wrote durable in the file (`msync(MS_SYNC)` of the file's
    /// part of the mapping).
    pub fn sync(&self) -> std::io::Result<()> {
        // SAFETY: msync only flushes the pages of the live shared mapping owned by `self`;
        // it reads and writes no memory of the process.
        let r =
            unsafe { libc::msync(self.addr as *mut libc::c_void, self.file_len, libc::MS_SYNC) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

impl Drop for PmemMapping {
    fn drop(&mut self) {
        // SAFETY: `addr..addr + len` is the mapping `new` made, owned by `self` alone; the VM
        // that points a memory slot at it holds it (an `Arc`) until its descriptor is closed.
        unsafe {
            libc::munmap(self.addr as *mut libc::c_void, self.len);
        }
    }
}

// SAFETY: `addr..addr + len` is one live mapping for as long as `self` exists (unmapped only
// by `Drop`), readable, writable unless the device is read-only (its slot is then
// registered read-only), `len` a multiple of 2 MiB, and the VMM makes no Rust reference into
// it (it only calls msync on it).
unsafe impl SlotMemory for PmemMapping {
    fn host_addr(&self) -> u64 {
        self.addr as u64
    }
    fn size(&self) -> u64 {
        self.len as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(bytes: &[u8]) -> (std::path::PathBuf, File) {
        let p = crate::test_scratch::dir("kiln-pmem-map").join(bytes.len().to_string());
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        f.write_all(bytes).unwrap();
        (p, f)
    }

    #[test]
    fn the_slot_is_the_file_rounded_up_and_writes_reach_the_file_after_sync() {
        let (p, f) = file(b"hello pmem");
        let m = PmemMapping::new(&f, false).unwrap();
        assert_eq!(m.file_len(), 10);
        assert_eq!(m.size(), PMEM_ALIGNMENT);
        // SAFETY: the test writes one byte of the file's part of the live mapping, which
        // nothing else uses.
        unsafe { *(m.host_addr() as *mut u8) = b'J' };
        // The zero-filled tail is writable and does not grow the file.
        // SAFETY: as above, in the anonymous tail.
        unsafe { *((m.host_addr() + 4096) as *mut u8) = 1 };
        m.sync().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"Jello pmem");
        drop(m);
        assert!(matches!(
            PmemMapping::new(&file(b"").1, false),
            Err(MappingError::Empty)
        ));
        let _ = std::fs::remove_file(p);
    }
}
