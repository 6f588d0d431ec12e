//! A minimal virtio-mmio (version 2) driver: finds devices from the command line's
//! `virtio_mmio.device=<size>@<base>:<irq>` entries, negotiates features, sets up split
//! virtqueues of [`ring::QUEUE_SIZE`] entries in static memory inside the image, and polls
//! used rings (interrupts stay off).
//!
//! - [`ring`]: the virtqueue memory and the driver's side of it.
//! - [`blk`], [`net`], [`vsock`]: request helpers for virtio-blk, virtio-net and virtio-vsock.
//!
//! Every register access is a plain 32-bit volatile access to the device window, which the
//! image's page tables map uncached (3-4 GiB).

// Register values, sector numbers and lengths are deliberately cut to the width the device
// or the ring field has (32, 16 or 8 bits); every such value is in range by construction.
#![allow(clippy::cast_possible_truncation)]

pub mod blk;
pub mod net;
pub mod ring;
pub mod vsock;

use crate::cmdline;
use core::arch::asm;

pub const MAGIC: u32 = 0x7472_6976;
pub const DEVICE_NET: u32 = 1;
pub const DEVICE_BLK: u32 = 2;

pub const REG_MAGIC: u32 = 0x000;
pub const REG_VERSION: u32 = 0x004;
pub const REG_DEVICE_ID: u32 = 0x008;
pub const REG_DEVICE_FEATURES: u32 = 0x010;
pub const REG_DEVICE_FEATURES_SEL: u32 = 0x014;
pub const REG_DRIVER_FEATURES: u32 = 0x020;
pub const REG_DRIVER_FEATURES_SEL: u32 = 0x024;
pub const REG_QUEUE_SEL: u32 = 0x030;
pub const REG_QUEUE_NUM_MAX: u32 = 0x034;
pub const REG_QUEUE_NUM: u32 = 0x038;
pub const REG_QUEUE_READY: u32 = 0x044;
pub const REG_QUEUE_NOTIFY: u32 = 0x050;
pub const REG_INTERRUPT_STATUS: u32 = 0x060;
pub const REG_INTERRUPT_ACK: u32 = 0x064;
pub const REG_STATUS: u32 = 0x070;
pub const REG_QUEUE_DESC_LOW: u32 = 0x080;
pub const REG_QUEUE_DESC_HIGH: u32 = 0x084;
pub const REG_QUEUE_AVAIL_LOW: u32 = 0x090;
pub const REG_QUEUE_AVAIL_HIGH: u32 = 0x094;
pub const REG_QUEUE_USED_LOW: u32 = 0x0a0;
pub const REG_QUEUE_USED_HIGH: u32 = 0x0a4;
pub const REG_CONFIG_GENERATION: u32 = 0x0fc;
pub const REG_CONFIG: u32 = 0x100;

pub const STATUS_ACK: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;

/// VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;

/// Most devices looked at on the command line.
const MAX_DEVICES: usize = 16;
/// TSC cycles to wait for the device before giving up (about a second at 2-3 GHz).
pub const WAIT_CYCLES: u64 = 3_000_000_000;

/// One device window.
#[derive(Clone, Copy)]
pub struct Mmio {
    pub base: u64,
    pub irq: u32,
}

impl Mmio {
    fn reg(&self, offset: u32) -> *mut u32 {
        (self.base + u64::from(offset)) as *mut u32
    }

    pub fn read(&self, offset: u32) -> u32 {
        // SAFETY: the window was found on the command line, checked to lie in [1, 4 GiB)
        // (identity-mapped, uncached), and answered the magic value; an aligned 32-bit
        // access there is an MMIO exit to the VMM.
        unsafe { core::ptr::read_volatile(self.reg(offset)) }
    }

    pub fn write(&self, offset: u32, value: u32) {
        // SAFETY: as for `read`.
        unsafe { core::ptr::write_volatile(self.reg(offset), value) }
    }

    /// A write of `N` bytes of `value` (little endian), for tests of wrong access widths.
    pub fn write_width(&self, offset: u32, width: u32, value: u64) {
        let p = self.base + u64::from(offset);
        // SAFETY: as for `read`; the VMM sees an access of this width at this address.
        unsafe {
            match width {
                1 => core::ptr::write_volatile(p as *mut u8, value as u8),
                2 => core::ptr::write_volatile(p as *mut u16, value as u16),
                8 => core::ptr::write_volatile(p as *mut u64, value),
                _ => core::ptr::write_volatile(p as *mut u32, value as u32),
            }
        }
    }

    /// A read of `width` bytes (1, 2, 4 or 8).
    pub fn read_width(&self, offset: u32, width: u32) -> u64 {
        let p = self.base + u64::from(offset);
        // SAFETY: as for `read`.
        unsafe {
            match width {
                1 => u64::from(core::ptr::read_volatile(p as *const u8)),
                2 => u64::from(core::ptr::read_volatile(p as *const u16)),
                8 => core::ptr::read_volatile(p as *const u64),
                _ => u64::from(core::ptr::read_volatile(p as *const u32)),
            }
        }
    }

    pub fn device_id(&self) -> u32 {
        self.read(REG_DEVICE_ID)
    }

    pub fn status(&self) -> u32 {
        self.read(REG_STATUS)
    }

    /// The device's feature bits.
    pub fn features(&self) -> u64 {
        self.write(REG_DEVICE_FEATURES_SEL, 1);
        let high = self.read(REG_DEVICE_FEATURES);
        self.write(REG_DEVICE_FEATURES_SEL, 0);
        u64::from(high) << 32 | u64::from(self.read(REG_DEVICE_FEATURES))
    }

    pub fn config_u32(&self, offset: u32) -> u32 {
        self.read(REG_CONFIG + offset)
    }

    pub fn config_u64(&self, offset: u32) -> u64 {
        u64::from(self.config_u32(offset + 4)) << 32 | u64::from(self.config_u32(offset))
    }

    pub fn config_u8(&self, offset: u32) -> u8 {
        self.read_width(REG_CONFIG + offset, 1) as u8
    }

    /// Status 0: the device forgets everything.
    pub fn reset(&self) {
        self.write(REG_STATUS, 0);
    }

    /// Reset, ACKNOWLEDGE, DRIVER, the driver's features (`wanted` & offered, plus
    /// VERSION_1), FEATURES_OK. Returns the accepted features, or the status read back when
    /// the device refused them.
    pub fn negotiate(&self, wanted: u64) -> Result<u64, u32> {
        self.reset();
        self.write(REG_STATUS, STATUS_ACK);
        self.write(REG_STATUS, STATUS_ACK | STATUS_DRIVER);
        let features = (self.features() & wanted) | F_VERSION_1;
        self.write(REG_DRIVER_FEATURES_SEL, 0);
        self.write(REG_DRIVER_FEATURES, features as u32);
        self.write(REG_DRIVER_FEATURES_SEL, 1);
        self.write(REG_DRIVER_FEATURES, (features >> 32) as u32);
        self.write(REG_STATUS, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK);
        let status = self.status();
        if status & STATUS_FEATURES_OK == 0 {
            return Err(status);
        }
        Ok(features)
    }

    /// Configures queue `index` with `size` entries in `ring`'s memory and enables it.
    pub fn setup_queue(&self, index: u32, size: u32, ring: &ring::Ring) {
        self.write(REG_QUEUE_SEL, index);
        self.write(REG_QUEUE_NUM, size);
        let (desc, avail, used) = ring.addresses();
        self.write(REG_QUEUE_DESC_LOW, desc as u32);
        self.write(REG_QUEUE_DESC_HIGH, (desc >> 32) as u32);
        self.write(REG_QUEUE_AVAIL_LOW, avail as u32);
        self.write(REG_QUEUE_AVAIL_HIGH, (avail >> 32) as u32);
        self.write(REG_QUEUE_USED_LOW, used as u32);
        self.write(REG_QUEUE_USED_HIGH, (used >> 32) as u32);
        self.write(REG_QUEUE_READY, 1);
    }

    /// Sets DRIVER_OK; returns the status read back.
    pub fn driver_ok(&self) -> u32 {
        self.write(
            REG_STATUS,
            STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        self.status()
    }

    pub fn notify(&self, queue: u32) {
        self.write(REG_QUEUE_NOTIFY, queue);
    }
}

/// Parses `<size>@<base>:<irq>` (size and base decimal or `0x` hex, size with an optional
/// K/M/G suffix).
fn parse_entry(value: &[u8]) -> Option<Mmio> {
    let at = value.iter().position(|&b| b == b'@')?;
    let (size, rest) = (value.get(..at)?, value.get(at + 1..)?);
    let colon = rest.iter().position(|&b| b == b':')?;
    let (base, irq) = (rest.get(..colon)?, rest.get(colon + 1..)?);
    let size = parse_size(size)?;
    let base = parse_num(base)?;
    let irq = u32::try_from(parse_num(irq)?).ok()?;
    // The whole register file must lie in the identity map, below 4 GiB.
    if size < 0x200 || !crate::phys::is_mapped(base, 0x200) {
        return None;
    }
    Some(Mmio { base, irq })
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

/// The `index`-th (from 0) device of type `device_id` among the command line's
/// `virtio_mmio.device=` entries that answer with the magic value and version 2.
pub fn find(cmdline: &[u8], device_id: u32, index: u32) -> Option<Mmio> {
    let mut seen = 0u32;
    for (n, word) in cmdline
        .split(|b| matches!(b, b' ' | b'\t' | b'\n'))
        .enumerate()
    {
        if n > 4096 {
            break;
        }
        let Some(value) = word.strip_prefix(b"virtio_mmio.device=") else {
            continue;
        };
        let Some(dev) = parse_entry(value) else {
            continue;
        };
        if dev.read(REG_MAGIC) != MAGIC
            || dev.read(REG_VERSION) != 2
            || dev.device_id() != device_id
        {
            continue;
        }
        if seen == index {
            return Some(dev);
        }
        seen += 1;
        if seen as usize >= MAX_DEVICES {
            break;
        }
    }
    None
}

/// `kiln.<key>=N` from the command line, or `default`.
pub fn param_num(cmdline: &[u8], key: &[u8], default: u64) -> u64 {
    cmdline::param(cmdline, key)
        .and_then(parse_num)
        .unwrap_or(default)
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: `rdtsc` reads the time-stamp counter into EDX:EAX; it touches no memory.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// FNV-1a (32 bits) of `data`: the checksum the tests compare with the host file's.
pub fn fnv1a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in data {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}
