//! Split virtqueues (virtio 1.2, section 2.7) of `N` entries in static memory (physical =
//! virtual), and the driver's side of one: descriptors, the available ring, the used ring.
//!
//! Everything the device reads or writes is reached through raw pointers and volatile
//! accesses, never through a Rust reference; x86 keeps stores in order, so a descriptor or
//! ring entry written before the available index that publishes it is seen first.

use core::cell::UnsafeCell;
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

/// VIRTQ_DESC_F_NEXT: the chain goes on at `next`.
pub const DESC_F_NEXT: u16 = 1;
/// VIRTQ_DESC_F_WRITE: the device writes this buffer.
pub const DESC_F_WRITE: u16 = 2;
/// VIRTQ_AVAIL_F_NO_INTERRUPT: the driver needs no interrupt for used buffers (a hint).
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// A descriptor.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

/// The available ring.
#[repr(C)]
pub struct Avail<const N: usize> {
    pub flags: u16,
    pub idx: u16,
    pub ring: [u16; N],
    pub used_event: u16,
}

/// An entry of the used ring: the head of a chain and how many bytes the device wrote.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UsedElem {
    pub id: u32,
    pub len: u32,
}

/// The used ring (4-byte aligned).
#[repr(C, align(4))]
pub struct Used<const N: usize> {
    pub flags: u16,
    pub idx: u16,
    pub ring: [UsedElem; N],
    pub avail_event: u16,
}

/// One virtqueue's memory: descriptor table (16-byte aligned), available ring, used ring.
#[repr(C, align(16))]
pub struct RingMem<const N: usize> {
    pub desc: [Desc; N],
    pub avail: Avail<N>,
    pub used: Used<N>,
}

impl<const N: usize> RingMem<N> {
    /// Zeroed ring memory, for a static.
    pub const EMPTY: RingMem<N> = RingMem {
        desc: [Desc {
            addr: 0,
            len: 0,
            flags: 0,
            next: 0,
        }; N],
        avail: Avail {
            flags: 0,
            idx: 0,
            ring: [0; N],
            used_event: 0,
        },
        used: Used {
            flags: 0,
            idx: 0,
            ring: [UsedElem { id: 0, len: 0 }; N],
            avail_event: 0,
        },
    };
}

/// Static memory the device may write (rings, buffers): shared with it, so only reached
/// through the raw pointer [`DeviceShared::ptr`].
pub struct DeviceShared<T>(UnsafeCell<T>);

// SAFETY: the guests run their drivers on one vCPU with no Rust code in interrupt context;
// the only other writer is the device, which Rust's model does not see, and every access goes
// through volatile raw-pointer operations, never a reference.
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

/// The driver's side of one split virtqueue of `N` entries.
pub struct Queue<const N: usize> {
    mem: *mut RingMem<N>,
    /// The next available index the driver publishes.
    avail_idx: u16,
    /// The next used entry the driver expects.
    used_idx: u16,
}

impl<const N: usize> Queue<N> {
    /// A queue over `mem`, with both indices at 0 (the memory is not cleared: see
    /// [`Queue::clear`]). Nothing else should drive a queue over the same memory.
    pub fn new(mem: &'static DeviceShared<RingMem<N>>) -> Self {
        Queue {
            mem: mem.ptr(),
            avail_idx: 0,
            used_idx: 0,
        }
    }

    /// The ring memory, for drivers that write a ring by hand (tests of a device's checks).
    pub fn mem(&self) -> *mut RingMem<N> {
        self.mem
    }

    /// Zeroes the ring memory and the driver's indices; the device must not be using the
    /// queue (not enabled yet, or the device reset).
    pub fn clear(&mut self) {
        // SAFETY: `mem` is static ring memory (`new`), reached only through raw pointers; the
        // device does not use it now (the caller's obligation above, a device's contract).
        unsafe { core::ptr::write_bytes(self.mem, 0, 1) };
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

    /// Writes descriptor `index` (modulo the table size).
    pub fn set_desc(&mut self, index: usize, addr: u64, len: u32, flags: u16, next: u16) {
        let d = Desc {
            addr,
            len,
            flags,
            next,
        };
        // SAFETY: in bounds (index modulo the table size) of the static ring memory.
        unsafe { write_volatile(addr_of_mut!((*self.mem).desc[index % N]), d) }
    }

    /// Makes the chain at `head` available (any 16-bit value: a test may post heads outside
    /// the table); the caller notifies the device.
    pub fn push(&mut self, head: u16) {
        let slot = usize::from(self.avail_idx) % N;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // SAFETY: in bounds of the static ring memory; the entry is written before the index
        // that publishes it (x86 keeps stores in order; volatile keeps the compiler from
        // reordering them).
        unsafe {
            write_volatile(addr_of_mut!((*self.mem).avail.ring[slot]), head);
            write_volatile(addr_of_mut!((*self.mem).avail.idx), self.avail_idx);
        }
    }

    /// Asks the device not to interrupt for this queue (a hint it may ignore).
    pub fn set_no_interrupt(&mut self, on: bool) {
        let flags = if on { AVAIL_F_NO_INTERRUPT } else { 0 };
        // SAFETY: in bounds of the static ring memory.
        unsafe { write_volatile(addr_of_mut!((*self.mem).avail.flags), flags) }
    }

    /// The device's used index.
    pub fn used_idx(&self) -> u16 {
        // SAFETY: in bounds of the static ring memory; the device writes it.
        unsafe { read_volatile(addr_of!((*self.mem).used.idx)) }
    }

    /// True when the device has returned a chain the driver has not taken yet.
    pub fn has_used(&self) -> bool {
        self.used_idx() != self.used_idx
    }

    /// The next used chain, if the device has returned one.
    pub fn pop_used(&mut self) -> Option<UsedElem> {
        if !self.has_used() {
            return None;
        }
        let slot = usize::from(self.used_idx) % N;
        self.used_idx = self.used_idx.wrapping_add(1);
        // SAFETY: in bounds of the static ring memory; the device wrote the element before
        // the index.
        Some(unsafe { read_volatile(addr_of!((*self.mem).used.ring[slot])) })
    }
}
