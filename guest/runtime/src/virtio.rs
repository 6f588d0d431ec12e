//! A minimal virtio-mmio (version 2) transport and split virtqueue, polled from ring 3 with
//! the device's interrupt used only to wake the vCPU.
//!
//! Devices are found from the command line's `virtio_mmio.device=<size>@<base>:<irq>` entries
//! (the VMM adds one per device). Each register access is one MMIO exit, the dominant cost of
//! bringing a device up, so only the registers that must be written are (queue addresses'
//! high halves stay at their reset value 0: every ring lies below 4 GiB).

// Register values are deliberately cut to the 32 or 16 bits the register or ring field has.
#![allow(clippy::cast_possible_truncation)]

use crate::boot::parse_num;
use core::cell::UnsafeCell;
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

pub const MAGIC: u32 = 0x7472_6976;
pub const DEVICE_VSOCK: u32 = 19;

const REG_MAGIC: u64 = 0x000;
const REG_DEVICE_ID: u64 = 0x008;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_AVAIL_LOW: u64 = 0x090;
const REG_QUEUE_USED_LOW: u64 = 0x0a0;
const REG_CONFIG: u64 = 0x100;

pub const STATUS_ACK: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;

/// VIRTIO_F_VERSION_1 is bit 32: bit 0 of the second feature word.
const F_VERSION_1_HIGH: u32 = 1;

/// Entries of every virtqueue.
pub const QUEUE_SIZE: usize = 32;
pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
/// VIRTQ_AVAIL_F_NO_INTERRUPT.
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// One device window.
#[derive(Clone, Copy)]
pub struct Mmio {
    pub base: u64,
    pub irq: u32,
}

impl Mmio {
    fn read(&self, offset: u64) -> u32 {
        // SAFETY: the window was found on the command line and checked to lie in the
        // identity map's uncached MMIO range; an aligned 32-bit access is an MMIO exit.
        unsafe { read_volatile((self.base + offset) as *const u32) }
    }

    fn write(&self, offset: u64, value: u32) {
        // SAFETY: as for `read`.
        unsafe { write_volatile((self.base + offset) as *mut u32, value) }
    }

    pub fn status(&self) -> u32 {
        self.read(REG_STATUS)
    }

    pub fn set_status(&self, status: u32) {
        self.write(REG_STATUS, status);
    }

    /// ACKNOWLEDGE, DRIVER, VERSION_1 as the only feature, FEATURES_OK; returns the status
    /// read back (FEATURES_OK is clear when the device refused). The device is fresh from
    /// the VMM (status 0: reset), so no reset is written first.
    pub fn negotiate(&self) -> u32 {
        self.set_status(STATUS_ACK);
        self.set_status(STATUS_ACK | STATUS_DRIVER);
        // Feature word 0 stays 0 (its reset value): no device-specific feature is used.
        self.write(REG_DRIVER_FEATURES_SEL, 1);
        self.write(REG_DRIVER_FEATURES, F_VERSION_1_HIGH);
        self.set_status(STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK);
        self.status()
    }

    /// Configures queue `index` on `q` and enables it. Its maximum size is not read (one exit
    /// saved per queue): a device whose queue is smaller than [`QUEUE_SIZE`] refuses
    /// DRIVER_OK, which the driver reports.
    pub fn setup_queue(&self, index: u32, q: &Queue) {
        self.write(REG_QUEUE_SEL, index);
        let (desc, avail, used) = q.addresses();
        self.write(REG_QUEUE_NUM, QUEUE_SIZE as u32);
        self.write(REG_QUEUE_DESC_LOW, desc as u32);
        self.write(REG_QUEUE_AVAIL_LOW, avail as u32);
        self.write(REG_QUEUE_USED_LOW, used as u32);
        self.write(REG_QUEUE_READY, 1);
    }

    pub fn config_u32(&self, offset: u64) -> u32 {
        self.read(REG_CONFIG + offset)
    }

    pub fn notify(&self, queue: u32) {
        self.write(REG_QUEUE_NOTIFY, queue);
    }
}

/// The first device of type `device_id` among the command line's `virtio_mmio.device=`
/// entries that answers with the magic value (the version is not read: a version-1 device
/// refuses VERSION_1, which the driver reports).
pub fn find(cmdline: &[u8], device_id: u32) -> Option<Mmio> {
    cmdline
        .split(|b| matches!(b, b' ' | b'\t' | b'\n'))
        .take(4096)
        .filter_map(|w| w.strip_prefix(b"virtio_mmio.device="))
        .filter_map(parse_entry)
        .take(32)
        .find(|d| d.read(REG_DEVICE_ID) == device_id && d.read(REG_MAGIC) == MAGIC)
}

/// `<size>@<base>:<irq>`, size with an optional K/M/G suffix; the register file must lie in
/// the uncached MMIO part of the identity map (3-4 GiB).
fn parse_entry(value: &[u8]) -> Option<Mmio> {
    let at = value.iter().position(|&b| b == b'@')?;
    let (size, rest) = (value.get(..at)?, value.get(at + 1..)?);
    let colon = rest.iter().position(|&b| b == b':')?;
    let (base, irq) = (rest.get(..colon)?, rest.get(colon + 1..)?);
    let (digits, shift) = match size.last()? {
        b'K' | b'k' => (size.get(..size.len() - 1)?, 10),
        b'M' | b'm' => (size.get(..size.len() - 1)?, 20),
        b'G' | b'g' => (size.get(..size.len() - 1)?, 30),
        _ => (size, 0),
    };
    let size = parse_num(digits)?.checked_mul(1 << shift)?;
    let base = parse_num(base)?;
    let irq = u32::try_from(parse_num(irq)?).ok()?;
    let in_mmio = base >= 0xc000_0000 && base.checked_add(0x200).is_some_and(|e| e <= 1 << 32);
    if size < 0x200 || base & 3 != 0 || !in_mmio {
        return None;
    }
    Some(Mmio { base, irq })
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[repr(C)]
struct Avail {
    flags: u16,
    idx: u16,
    ring: [u16; QUEUE_SIZE],
    used_event: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UsedElem {
    id: u32,
    len: u32,
}

#[repr(C, align(4))]
struct Used {
    flags: u16,
    idx: u16,
    ring: [UsedElem; QUEUE_SIZE],
    avail_event: u16,
}

/// One virtqueue's memory (descriptor table 16-byte aligned).
#[repr(C, align(16))]
pub struct RingMem {
    desc: [Desc; QUEUE_SIZE],
    avail: Avail,
    used: Used,
}

/// Memory the device writes: only reached through raw pointers and volatile accesses.
pub struct DeviceShared<T>(UnsafeCell<T>);

// SAFETY: one vCPU, no Rust code in interrupt context; the device is the only other writer,
// and every access goes through volatile raw-pointer operations.
unsafe impl<T> Sync for DeviceShared<T> {}

impl<T> DeviceShared<T> {
    pub const fn new(value: T) -> Self {
        DeviceShared(UnsafeCell::new(value))
    }

    /// The value's address (for the device and for volatile accesses).
    pub fn ptr(&self) -> *mut T {
        self.0.get()
    }
}

pub const EMPTY_RING: RingMem = RingMem {
    desc: [Desc {
        addr: 0,
        len: 0,
        flags: 0,
        next: 0,
    }; QUEUE_SIZE],
    avail: Avail {
        flags: 0,
        idx: 0,
        ring: [0; QUEUE_SIZE],
        used_event: 0,
    },
    used: Used {
        flags: 0,
        idx: 0,
        ring: [UsedElem { id: 0, len: 0 }; QUEUE_SIZE],
        avail_event: 0,
    },
};

/// The driver's side of one split virtqueue.
pub struct Queue {
    mem: *mut RingMem,
    avail_idx: u16,
    used_idx: u16,
}

impl Queue {
    /// A queue over `mem`, which must not be used by anything else.
    pub fn new(mem: &'static DeviceShared<RingMem>) -> Queue {
        Queue {
            mem: mem.ptr(),
            avail_idx: 0,
            used_idx: 0,
        }
    }

    fn addresses(&self) -> (u64, u64, u64) {
        // SAFETY: only addresses are computed.
        unsafe {
            (
                addr_of!((*self.mem).desc) as u64,
                addr_of!((*self.mem).avail) as u64,
                addr_of!((*self.mem).used) as u64,
            )
        }
    }

    /// Writes descriptor `index` (modulo the table size).
    pub fn set_desc(&mut self, index: usize, addr: u64, len: u32, flags: u16, next: u16) {
        let d = Desc {
            addr,
            len,
            flags,
            next,
        };
        // SAFETY: in bounds of this queue's static ring memory.
        unsafe { write_volatile(addr_of_mut!((*self.mem).desc[index % QUEUE_SIZE]), d) }
    }

    /// Makes the chain at `head` available (the caller notifies the device).
    pub fn push(&mut self, head: u16) {
        let slot = usize::from(self.avail_idx) % QUEUE_SIZE;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // SAFETY: in bounds; the entry is written before the index that publishes it (x86
        // keeps stores in order; volatile keeps the compiler from reordering them).
        unsafe {
            write_volatile(addr_of_mut!((*self.mem).avail.ring[slot]), head);
            write_volatile(addr_of_mut!((*self.mem).avail.idx), self.avail_idx);
        }
    }

    /// Asks the device not to interrupt for this queue (a hint it may ignore).
    pub fn set_no_interrupt(&mut self, on: bool) {
        let flags = if on { AVAIL_F_NO_INTERRUPT } else { 0 };
        // SAFETY: in bounds.
        unsafe { write_volatile(addr_of_mut!((*self.mem).avail.flags), flags) }
    }

    /// True when the device has returned a chain the driver has not taken yet.
    pub fn has_used(&self) -> bool {
        // SAFETY: in bounds; the device writes it.
        unsafe { read_volatile(addr_of!((*self.mem).used.idx)) != self.used_idx }
    }

    /// The next used chain: (head, bytes written).
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        if !self.has_used() {
            return None;
        }
        let slot = usize::from(self.used_idx) % QUEUE_SIZE;
        self.used_idx = self.used_idx.wrapping_add(1);
        // SAFETY: in bounds; the device wrote the element before the index.
        let e = unsafe { read_volatile(addr_of!((*self.mem).used.ring[slot])) };
        Some((e.id, e.len))
    }
}
