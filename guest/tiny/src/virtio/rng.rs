//! virtio-rng: one queue (ring 0) whose requests are device-writable buffers the device
//! fills with random bytes; a [`BUF_LEN`]-byte buffer in static memory inside the image.

// Lengths are cut to the width of their ring field; each is in range.
#![allow(clippy::cast_possible_truncation)]

use super::ring::{ring, Ring, RingExt, DESC_F_WRITE, QUEUE_SIZE};
use super::{Mmio, DEVICE_RNG, STATUS_DRIVER_OK, STATUS_NEEDS_RESET};
use core::ptr::addr_of_mut;
use kiln_guest_virtio::{DeviceShared, UsedElem};

pub const BUF_LEN: usize = 4096;

#[repr(C, align(16))]
struct Buffer([u8; BUF_LEN]);

static BUFFER: DeviceShared<Buffer> = DeviceShared::new(Buffer([0; BUF_LEN]));

/// A started virtio-rng device.
pub struct Rng {
    pub mmio: Mmio,
    pub ring: Ring,
    pub features: u64,
}

impl Rng {
    /// Finds the `index`-th virtio-rng device and starts it. Err: the status register (0
    /// when there is no device).
    pub fn open(cmdline: &[u8], index: u32) -> Result<Rng, u32> {
        let mmio = super::find(cmdline, DEVICE_RNG, index).ok_or(0u32)?;
        Rng::start(mmio)
    }

    /// Resets and starts the device.
    pub fn start(mmio: Mmio) -> Result<Rng, u32> {
        let features = mmio.negotiate(0)?;
        let ring = ring(0);
        mmio.setup_queue(0, QUEUE_SIZE as u32, &ring);
        let status = mmio.driver_ok();
        if status & STATUS_DRIVER_OK == 0 || status & STATUS_NEEDS_RESET != 0 {
            return Err(status);
        }
        Ok(Rng {
            mmio,
            ring,
            features,
        })
    }

    pub fn buf_addr() -> u64 {
        BUFFER.ptr() as u64
    }

    /// The buffer, while the device does not hold it (before a request or after its used
    /// entry).
    pub fn buf() -> &'static mut [u8; BUF_LEN] {
        // SAFETY: the device writes the buffer only between a notification and the used
        // entry; callers use it outside that window, on one vCPU.
        unsafe { &mut (*addr_of_mut!((*BUFFER.ptr()).0)) }
    }

    /// Asks for `len` (at most [`BUF_LEN`]) random bytes in the buffer and waits up to
    /// `cycles` TSC cycles for them: the used entry, or `None` on timeout.
    pub fn request(&mut self, len: u32, cycles: u64) -> Option<UsedElem> {
        let len = len.min(BUF_LEN as u32);
        self.ring
            .set_desc(0, Self::buf_addr(), len, DESC_F_WRITE, 0);
        self.post(0, cycles)
    }

    /// Makes the chain at `head` available, notifies, and waits up to `cycles`.
    pub fn post(&mut self, head: u16, cycles: u64) -> Option<UsedElem> {
        self.ring.push(head);
        self.mmio.notify(0);
        self.ring.wait_used(cycles)
    }
}
