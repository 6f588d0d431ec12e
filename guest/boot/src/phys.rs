//! Reads of guest-physical memory that the guest did not allocate: boot information, the
//! command line, firmware tables.
//!
//! The guests' page tables identity-map physical memory (physical = virtual), so an address
//! the map covers is also a valid pointer. An [`IdentityMap`] says which range that is (and
//! the one hole in it a guest may leave, such as a stack guard page); every read is checked
//! against it and returns `None` instead of faulting. Values written by the VMM are data to
//! be checked, not trusted.

use core::ops::Range;

/// The part of physical memory a guest's page tables map at the same virtual address.
#[derive(Clone, Debug)]
pub struct IdentityMap {
    /// First mapped address (at least 1: address 0 means "absent" in the boot protocols).
    start: u64,
    /// End (exclusive) of the map.
    end: u64,
    /// A range inside it that is not mapped (empty for none).
    hole: Range<u64>,
}

impl IdentityMap {
    /// The map `[start, end)` without `hole` (pass an empty range for none).
    ///
    /// # Safety
    /// The guest's page tables map every address of `[start, end)` outside `hole` to the same
    /// physical address, readable, for as long as the guest runs; that memory is RAM or MMIO
    /// that the VMM answers, and no Rust object the reads could race with lives there (the
    /// guest runs on one vCPU, and what it reads this way are the VMM's structures). `start`
    /// is at least 1.
    pub const unsafe fn new(start: u64, end: u64, hole: Range<u64>) -> IdentityMap {
        IdentityMap { start, end, hole }
    }

    /// End (exclusive) of the map: nothing at or above it is reachable.
    pub const fn end(&self) -> u64 {
        self.end
    }

    /// True when `[addr, addr + len)` is mapped: inside the map, not in its hole.
    pub fn is_mapped(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        addr >= self.start && end <= self.end && (end <= self.hole.start || addr >= self.hole.end)
    }

    /// Reads a little-endian `T` (any alignment) at physical `addr`, or `None` when it is not
    /// mapped.
    fn read<T: Copy>(&self, addr: u64) -> Option<T> {
        if !self.is_mapped(addr, core::mem::size_of::<T>() as u64) {
            return None;
        }
        // SAFETY: the range is mapped, readable and holds RAM or MMIO the VMM answers (the
        // contract of `new`); nothing in the guest writes it meanwhile; `read_unaligned` has
        // no alignment requirement, and `T` is one of the integer types below (every bit
        // pattern valid).
        Some(unsafe { core::ptr::read_unaligned(addr as *const T) })
    }

    /// The byte at physical `addr`.
    pub fn read_u8(&self, addr: u64) -> Option<u8> {
        self.read(addr)
    }

    /// The little-endian `u16` at physical `addr`.
    pub fn read_u16(&self, addr: u64) -> Option<u16> {
        self.read(addr)
    }

    /// The little-endian `u32` at physical `addr`.
    pub fn read_u32(&self, addr: u64) -> Option<u32> {
        self.read(addr)
    }

    /// The little-endian `u64` at physical `addr`.
    pub fn read_u64(&self, addr: u64) -> Option<u64> {
        self.read(addr)
    }

    /// A byte string at physical `addr` of at most `max` bytes: up to (not including) its
    /// first NUL. `None` when the start is not mapped; the bool is false when no NUL was found
    /// within `max` bytes (or before the end of the map) and the string was cut.
    pub fn c_string(&self, addr: u64, max: usize) -> Option<(&'static [u8], bool)> {
        if !self.is_mapped(addr, 1) {
            return None;
        }
        let mut len = 0usize;
        let mut terminated = false;
        while len < max {
            match self.read_u8(addr + len as u64) {
                Some(0) => {
                    terminated = true;
                    break;
                }
                Some(_) => len += 1,
                None => break,
            }
        }
        // SAFETY: `[addr, addr + len)` was just read byte by byte, so it is mapped and
        // non-null; the VMM does not change it while the guest runs and nothing in the guest
        // writes it, so a shared `'static` slice over it is sound.
        let bytes = unsafe { core::slice::from_raw_parts(addr as *const u8, len) };
        Some((bytes, terminated))
    }

    /// First address in `[start, end)`, stepping by `step` from `start`, holding the u32
    /// `value`; `None` if there is none or the range is not mapped. `start` and `step` must
    /// keep the reads 4-byte aligned. One range check, then a tight loop: cheap where guest
    /// code is emulated.
    pub fn find_u32(&self, start: u64, end: u64, step: u64, value: u32) -> Option<u64> {
        if end <= start
            || step < 4
            || start & 3 != 0
            || step & 3 != 0
            || !self.is_mapped(start, end - start)
        {
            return None;
        }
        let mut addr = start;
        while addr + 4 <= end {
            // SAFETY: `[start, end)` is mapped (checked above), `addr + 4 <= end`, and `addr`
            // is 4-byte aligned; see `read` for why reading memory the guest does not own is
            // sound.
            if unsafe { core::ptr::read_volatile(addr as *const u32) } == value {
                return Some(addr);
            }
            addr += step;
        }
        None
    }
}
