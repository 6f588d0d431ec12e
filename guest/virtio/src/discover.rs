//! The command line's virtio-mmio device entries, `virtio_mmio.device=<size>@<base>:<irq>`
//! (Linux's syntax; the VMM adds one per device): size and base decimal or `0x` hex, size
//! with an optional K/M/G suffix.
//!
//! This only parses: whether a window may be used (where it lies, what answers there) is the
//! guest's decision, made before it builds an [`crate::Mmio`] on it.

use crate::mmio::REGISTERS_SIZE;
use kiln_guest_boot::cmdline::{parse_num, words};

/// Most command-line words looked at.
pub const MAX_WORDS: usize = 4096;

/// One device entry of the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceEntry {
    /// Size of the window in bytes (at least the register file's 0x200).
    pub size: u64,
    /// Physical address of the window.
    pub base: u64,
    pub irq: u32,
}

impl DeviceEntry {
    /// True when the register file lies in `[start, end)` and is 4-byte aligned: the guests
    /// accept only windows in the part of their identity map that is mapped uncached.
    pub fn registers_in(&self, start: u64, end: u64) -> bool {
        self.base >= start
            && self.base & 3 == 0
            && self
                .base
                .checked_add(REGISTERS_SIZE)
                .is_some_and(|e| e <= end)
    }
}

/// The well-formed `virtio_mmio.device=` entries among the first [`MAX_WORDS`] words of
/// `cmdline`, in order; malformed ones and windows smaller than the register file are
/// skipped.
pub fn entries(cmdline: &[u8]) -> impl Iterator<Item = DeviceEntry> + '_ {
    words(cmdline)
        .take(MAX_WORDS)
        .filter_map(|w| w.strip_prefix(b"virtio_mmio.device="))
        .filter_map(parse_entry)
}

/// `<size>@<base>:<irq>`.
fn parse_entry(value: &[u8]) -> Option<DeviceEntry> {
    let at = value.iter().position(|&b| b == b'@')?;
    let (size, rest) = (value.get(..at)?, value.get(at + 1..)?);
    let colon = rest.iter().position(|&b| b == b':')?;
    let (base, irq) = (rest.get(..colon)?, rest.get(colon + 1..)?);
    let size = parse_size(size)?;
    let base = parse_num(base)?;
    let irq = u32::try_from(parse_num(irq)?).ok()?;
    if size < REGISTERS_SIZE {
        return None;
    }
    Some(DeviceEntry { size, base, irq })
}

fn parse_size(s: &[u8]) -> Option<u64> {
    let (digits, shift) = match s.last()? {
        b'K' | b'k' => (s.get(..s.len() - 1)?, 10),
        b'M' | b'm' => (s.get(..s.len() - 1)?, 20),
        b'G' | b'g' => (s.get(..s.len() - 1)?, 30),
        _ => (s, 0),
    };
    parse_num(digits)?.checked_mul(1 << shift)
}
