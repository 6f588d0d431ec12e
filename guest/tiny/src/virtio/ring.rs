//! Split virtqueues of [`QUEUE_SIZE`] entries in static memory inside the image (physical =
//! virtual), and the driver's side of them: descriptors, the available ring, polling the
//! used ring.
//!
//! Everything the device reads or writes is accessed with volatile operations; x86 keeps
//! stores in order, so a descriptor written before the available index it is published by is
//! seen first.

use core::cell::UnsafeCell;
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

pub const QUEUE_SIZE: usize = 8;
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
/// Rings available to the scenarios (virtio-blk uses one, virtio-net two).
pub const RINGS: usize = 3;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

#[repr(C)]
pub struct Avail {
    pub flags: u16,
    pub idx: u16,
    pub ring: [u16; QUEUE_SIZE],
    pub used_event: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct UsedElem {
    pub id: u32,
    pub len: u32,
}

#[repr(C, align(4))]
pub struct Used {
    pub flags: u16,
    pub idx: u16,
    pub ring: [UsedElem; QUEUE_SIZE],
    pub avail_event: u16,
}

/// One virtqueue's memory: descriptor table (16-byte aligned), available ring, used ring
/// (4-byte aligned).
#[repr(C, align(16))]
pub struct RingMem {
    pub desc: [Desc; QUEUE_SIZE],
    pub avail: Avail,
    pub used: Used,
}

/// Static memory the device may write: shared with it, so only reached through raw pointers.
pub struct DeviceShared<T>(UnsafeCell<T>);

// SAFETY: the guest runs on one vCPU without interrupts; the only other writer is the
// device, which Rust's model does not see, and all accesses go through volatile pointers.
unsafe impl<T> Sync for DeviceShared<T> {}

impl<T> DeviceShared<T> {
    pub const fn new(value: T) -> Self {
        DeviceShared(UnsafeCell::new(value))
    }

    pub fn get(&self) -> *mut T {
        self.0.get()
    }
}

const EMPTY_DESC: Desc = Desc {
    addr: 0,
    len: 0,
    flags: 0,
    next: 0,
};
const EMPTY_RING: RingMem = RingMem {
    desc: [EMPTY_DESC; QUEUE_SIZE],
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

static RING_MEM: DeviceShared<[RingMem; RINGS]> =
    DeviceShared::new([EMPTY_RING, EMPTY_RING, EMPTY_RING]);

/// The driver's view of one ring.
pub struct Ring {
    mem: *mut RingMem,
    /// The next available index the driver publishes.
    avail_idx: u16,
    /// The next used entry the driver expects.
    used_idx: u16,
}

impl Ring {
    /// Ring number `n` (0 .. RINGS), emptied.
    pub fn new(n: usize) -> Ring {
        let base = RING_MEM.get().cast::<RingMem>();
        let mut r = Ring {
            mem: base.wrapping_add(n % RINGS),
            avail_idx: 0,
            used_idx: 0,
        };
        r.clear();
        r
    }

    /// Zeroes the ring memory and the driver's indices (after a device reset).
    pub fn clear(&mut self) {
        // SAFETY: `mem` points at one of the static rings; the device does not use it
        // (the queue is not enabled, or the device was reset).
        unsafe {
            core::ptr::write_bytes(self.mem.cast::<u8>(), 0, core::mem::size_of::<RingMem>())
        };
        self.avail_idx = 0;
        self.used_idx = 0;
    }

    /// Physical addresses of the descriptor table, available ring and used ring.
    pub fn addresses(&self) -> (u64, u64, u64) {
        // SAFETY: only addresses are computed; nothing is read.
        unsafe {
            (
                addr_of!((*self.mem).desc) as u64,
                addr_of!((*self.mem).avail) as u64,
                addr_of!((*self.mem).used) as u64,
            )
        }
    }

    pub fn set_desc(&mut self, index: usize, addr: u64, len: u32, flags: u16, next: u16) {
        let d = Desc {
            addr,
            len,
            flags,
            next,
        };
        // SAFETY: in bounds (index modulo the table size) of the static ring.
        unsafe { write_volatile(addr_of_mut!((*self.mem).desc[index % QUEUE_SIZE]), d) }
    }

    /// Makes the chain starting at `head` available (any 16-bit value: hostile scenarios
    /// post heads outside the table).
    pub fn push(&mut self, head: u16) {
        let slot = usize::from(self.avail_idx) % QUEUE_SIZE;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // SAFETY: in bounds of the static ring; volatile so the device sees the entry before
        // the index (x86 does not reorder stores).
        unsafe {
            write_volatile(addr_of_mut!((*self.mem).avail.ring[slot]), head);
            write_volatile(addr_of_mut!((*self.mem).avail.idx), self.avail_idx);
        }
    }

    /// Writes any available index (hostile scenarios).
    pub fn set_avail_idx(&mut self, idx: u16) {
        // SAFETY: in bounds of the static ring.
        unsafe { write_volatile(addr_of_mut!((*self.mem).avail.idx), idx) }
    }

    /// The device's used index.
    pub fn used_idx(&self) -> u16 {
        // SAFETY: in bounds of the static ring; the device writes it.
        unsafe { read_volatile(addr_of!((*self.mem).used.idx)) }
    }

    /// Waits (polling, at most `cycles` TSC cycles) for the next used entry.
    pub fn wait_used(&mut self, cycles: u64) -> Option<UsedElem> {
        let start = super::rdtsc();
        while self.used_idx() == self.used_idx {
            if super::rdtsc().wrapping_sub(start) > cycles {
                return None;
            }
        }
        let slot = usize::from(self.used_idx) % QUEUE_SIZE;
        self.used_idx = self.used_idx.wrapping_add(1);
        // SAFETY: in bounds of the static ring; the device wrote it before the index.
        Some(unsafe { read_volatile(addr_of!((*self.mem).used.ring[slot])) })
    }
}
