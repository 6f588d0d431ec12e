//! What the VMM told the guest at boot: the command line and the memory map, read from
//! either boot protocol (the same fields as guest/tiny reads; see its README).
//!
//! * Linux 64-bit: `boot_params` at RSI: `hdr.header` (0x202) must be "HdrS", command line
//!   at `hdr.cmd_line_ptr` (0x228) | `ext_cmd_line_ptr` (0x0c8) << 32, `e820_entries` (0x1e8,
//!   at most 128) entries of 20 bytes at `e820_table` (0x2d0).
//! * PVH: `hvm_start_info` at EBX: magic 0x336ec578, version (0x04), `cmdline_paddr` (0x18),
//!   and for version >= 1 `memmap_paddr` (0x28) and `memmap_entries` (0x30), 24-byte entries.
//!
//! Every pointer from the VMM is checked to lie in the identity map before it is followed;
//! what is wrong makes the field absent.

use crate::entry::ENTRY_PVH;
use crate::layout::{MAPPED_LIMIT, STACK_GUARD};

/// Longest command line read (bytes, without the NUL).
pub const CMDLINE_MAX: usize = 4096;
/// Most memory-map entries read.
pub const MEMMAP_MAX: u32 = 128;
/// E820 type of usable RAM.
pub const E820_RAM: u32 = 1;

/// True when `[addr, addr + len)` is mapped and readable: inside the identity map, not the
/// null page, not the stack guard page.
pub fn is_mapped(addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    addr >= 0x1000 && end <= MAPPED_LIMIT && (end <= STACK_GUARD || addr >= STACK_GUARD + 0x1000)
}

macro_rules! reader {
    ($name:ident, $ty:ty) => {
        /// Reads a little-endian value (any alignment) at physical `addr`, or `None` when it
        /// is not mapped.
        pub fn $name(addr: u64) -> Option<$ty> {
            if !is_mapped(addr, core::mem::size_of::<$ty>() as u64) {
                return None;
            }
            // SAFETY: the range is mapped (checked above) and holds RAM or MMIO that the VMM
            // answers; nothing in the guest writes the boot structures; no alignment needed.
            Some(unsafe { core::ptr::read_unaligned(addr as *const $ty) })
        }
    };
}

reader!(read_u8, u8);
reader!(read_u32, u32);
reader!(read_u64, u64);

/// One memory-map entry.
#[derive(Clone, Copy, Debug)]
pub struct MemRegion {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The boot information of either entry.
pub struct BootInfo {
    pub pvh: bool,
    /// The command line, without its NUL (empty when absent or unreadable).
    pub cmdline: &'static [u8],
    memmap_addr: u64,
    memmap_count: u32,
    memmap_stride: u64,
}

const HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const HVM_START_MAGIC: u32 = 0x336e_c578;

impl BootInfo {
    /// Reads the boot information at `info` for entry kind `entry`.
    pub fn parse(entry: u32, info: u64) -> BootInfo {
        let mut b = BootInfo {
            pvh: entry == ENTRY_PVH,
            cmdline: &[],
            memmap_addr: 0,
            memmap_count: 0,
            memmap_stride: 0,
        };
        if b.pvh {
            if read_u32(info) != Some(HVM_START_MAGIC) {
                return b;
            }
            b.cmdline = c_string(read_u64(info + 0x18).unwrap_or(0));
            if read_u32(info + 0x04).unwrap_or(0) >= 1 {
                b.memmap_addr = read_u64(info + 0x28).unwrap_or(0);
                b.memmap_count = read_u32(info + 0x30).unwrap_or(0).min(MEMMAP_MAX);
                b.memmap_stride = 24;
            }
        } else {
            if read_u32(info + 0x202) != Some(HDR_MAGIC) {
                return b;
            }
            let low = read_u32(info + 0x228).unwrap_or(0);
            let high = read_u32(info + 0x0c8).unwrap_or(0);
            b.cmdline = c_string(u64::from(high) << 32 | u64::from(low));
            b.memmap_addr = info + 0x2d0;
            b.memmap_count = u32::from(read_u8(info + 0x1e8).unwrap_or(0)).min(MEMMAP_MAX);
            b.memmap_stride = 20;
        }
        b
    }

    /// Memory-map entry `index` (`None` past the end or when unreadable).
    pub fn memmap_entry(&self, index: u32) -> Option<MemRegion> {
        if index >= self.memmap_count {
            return None;
        }
        let at = self.memmap_addr + u64::from(index) * self.memmap_stride;
        Some(MemRegion {
            addr: read_u64(at)?,
            size: read_u64(at + 8)?,
            kind: read_u32(at + 16)?,
        })
    }

    /// The end (exclusive) of the RAM region of the memory map that contains `addr`, capped
    /// at the identity map's end.
    pub fn ram_end_containing(&self, addr: u64) -> Option<u64> {
        (0..self.memmap_count)
            .filter_map(|i| self.memmap_entry(i))
            .filter(|r| r.kind == E820_RAM && r.addr <= addr)
            .map(|r| {
                r.addr
                    .saturating_add(r.size)
                    .min(crate::layout::MMIO_GAP_START)
            })
            .find(|&end| end > addr)
    }

    /// Value of the last `key=value` word of the command line, `Some(b"")` for a bare `key`.
    pub fn param(&self, key: &[u8]) -> Option<&'static [u8]> {
        param(self.cmdline, key)
    }
}

/// A NUL-terminated string at a physical address (at most [`CMDLINE_MAX`] bytes, and only
/// what is mapped); empty when the address is 0 or unmapped.
fn c_string(addr: u64) -> &'static [u8] {
    let mut len = 0usize;
    while len < CMDLINE_MAX {
        match read_u8(addr.wrapping_add(len as u64)) {
            Some(0) | None => break,
            Some(_) => len += 1,
        }
    }
    if len == 0 {
        return &[];
    }
    // SAFETY: `[addr, addr + len)` was just read byte by byte, so it is mapped and non-null;
    // nothing in the guest writes it and the VMM does not change it while the guest runs.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
}

/// Value of the last `key=value` word of `cmdline`, `Some(b"")` for a bare `key`.
pub fn param<'a>(cmdline: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut found = None;
    for word in cmdline.split(|b| matches!(b, b' ' | b'\t' | b'\n')) {
        if let Some(rest) = word.strip_prefix(key) {
            match rest.split_first() {
                None => found = Some(rest),
                Some((b'=', value)) => found = Some(value),
                Some(_) => {}
            }
        }
    }
    found
}

/// Decimal, or hex with `0x`.
pub fn parse_num(s: &[u8]) -> Option<u64> {
    let (digits, radix) = match s {
        [b'0', b'x' | b'X', rest @ ..] => (rest, 16),
        _ => (s, 10),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &c in digits {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' if radix == 16 => c - b'a' + 10,
            b'A'..=b'F' if radix == 16 => c - b'A' + 10,
            _ => return None,
        };
        v = v.checked_mul(radix)?.checked_add(u64::from(d))?;
    }
    Some(v)
}
