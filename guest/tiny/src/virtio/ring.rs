//! The guest's rings: [`RINGS`] split virtqueues of [`QUEUE_SIZE`] entries in static memory
//! inside the image (kiln-guest-virtio's [`RingMem`]), and what the test guest adds to the
//! shared [`Queue`]: waiting for a used entry by polling the TSC, and writing any available
//! index (hostile scenarios).

use crate::arch::rdtsc;
use core::ptr::{addr_of_mut, write_volatile};
use kiln_guest_virtio::ring::{DeviceShared, Queue, RingMem, UsedElem};

pub use kiln_guest_virtio::ring::{DESC_F_NEXT, DESC_F_WRITE};

/// Entries per ring, as the 16-bit queue-size registers take it.
pub const QUEUE_SIZE_U16: u16 = 8;
/// Entries per ring.
pub const QUEUE_SIZE: usize = QUEUE_SIZE_U16 as usize;
/// Rings available to the scenarios (virtio-blk uses one, virtio-net two, virtio-vsock three,
/// virtio-balloon up to five).
pub const RINGS: usize = 5;

/// The driver's side of one of the guest's rings.
pub type Ring = Queue<QUEUE_SIZE>;

static RING_MEM: [DeviceShared<RingMem<QUEUE_SIZE>>; RINGS] =
    [const { DeviceShared::new(RingMem::EMPTY) }; RINGS];

/// Ring number `n` (modulo [`RINGS`]), emptied.
pub fn ring(n: usize) -> Ring {
    let mut r = Queue::new(&RING_MEM[n % RINGS]);
    r.clear();
    r
}

/// The test guest's additions to a queue.
pub trait RingExt {
    /// Waits (polling, at most `cycles` TSC cycles) for the next used entry.
    fn wait_used(&mut self, cycles: u64) -> Option<UsedElem>;
    /// Writes any available index, without an entry behind it (hostile scenarios).
    fn set_avail_idx(&mut self, idx: u16);
}

impl<const N: usize> RingExt for Queue<N> {
    fn wait_used(&mut self, cycles: u64) -> Option<UsedElem> {
        let start = rdtsc();
        loop {
            if let Some(used) = self.pop_used() {
                return Some(used);
            }
            if rdtsc().wrapping_sub(start) > cycles {
                return None;
            }
        }
    }

    fn set_avail_idx(&mut self, idx: u16) {
        // SAFETY: in bounds of the queue's static ring memory, reached through its raw
        // pointer only.
        unsafe { write_volatile(addr_of_mut!((*self.mem()).avail.idx), idx) }
    }
}
