//! Reads of guest-physical memory that the guest did not allocate: boot information, the
//! command line, firmware tables.
//!
//! The image's page tables identity-map [0, 4 GiB), so a physical address below
//! [`MAPPED_LIMIT`] is also a valid virtual address. Every read is checked against that
//! range (and against address 0, which the boot protocols use for "absent") and returns
//! `None` instead of faulting. Values written by the VMM are data to be checked, not
//! trusted.

/// End (exclusive) of the identity map built by `entry.rs`.
pub const MAPPED_LIMIT: u64 = 1 << 32;

/// True when `[addr, addr + len)` is non-null and inside the identity map.
pub fn is_mapped(addr: u64, len: u64) -> bool {
    addr != 0 && addr.checked_add(len).is_some_and(|end| end <= MAPPED_LIMIT)
}

macro_rules! reader {
    ($name:ident, $ty:ty) => {
        /// Reads a little-endian value (any alignment) at physical `addr`, or `None` when the
        /// range is not mapped.
        pub fn $name(addr: u64) -> Option<$ty> {
            if !is_mapped(addr, core::mem::size_of::<$ty>() as u64) {
                return None;
            }
            // SAFETY: the range is non-null and below 4 GiB, which the image's page tables
            // map; no Rust object is written through another pointer meanwhile (one vCPU,
            // the guest's own statics are never the target of these reads' writers), and
            // `read_unaligned` has no alignment requirement. Memory there is either RAM or
            // MMIO that the VMM answers.
            Some(unsafe { core::ptr::read_unaligned(addr as *const $ty) })
        }
    };
}

reader!(read_u8, u8);
reader!(read_u16, u16);
reader!(read_u32, u32);
reader!(read_u64, u64);

/// A byte string at a physical address, of at most `max` bytes: up to (not including) its
/// first NUL. Returns `None` when the start is not mapped; the bool is false when no NUL was
/// found within `max` bytes (or before the end of the map) and the string was truncated.
pub fn c_string(addr: u64, max: usize) -> Option<(&'static [u8], bool)> {
    if !is_mapped(addr, 1) {
        return None;
    }
    let mut len = 0usize;
    let mut terminated = false;
    while len < max {
        match read_u8(addr + len as u64) {
            Some(0) => {
                terminated = true;
                break;
            }
            Some(_) => len += 1,
            None => break,
        }
    }
    // SAFETY: `[addr, addr + len)` was just read byte by byte, is non-null and mapped; the
    // VMM does not change the command line while the guest runs, and nothing in the guest
    // writes it, so a shared `'static` slice over it is sound.
    let bytes = unsafe { core::slice::from_raw_parts(addr as *const u8, len) };
    Some((bytes, terminated))
}

/// First address in `[start, end)`, stepping by `step` from `start`, holding the u32
/// `value`; `None` if there is none or the range is not mapped. `start` and `step` must keep
/// the reads 4-byte aligned. One range check, then a tight loop: cheap under emulation.
pub fn find_u32(start: u64, end: u64, step: u64, value: u32) -> Option<u64> {
    if end <= start || step < 4 || start & 3 != 0 || step & 3 != 0 || !is_mapped(start, end - start)
    {
        return None;
    }
    let mut addr = start;
    while addr + 4 <= end {
        // SAFETY: `[start, end)` is non-null and inside the identity map (checked above),
        // `addr + 4 <= end`, and `addr` is 4-byte aligned; see the readers above for why
        // reading memory the guest does not own is sound.
        if unsafe { core::ptr::read_volatile(addr as *const u32) } == value {
            return Some(addr);
        }
        addr += step;
    }
    None
}
