//! virtio-blk requests: a 16-byte header, up to [`MAX_SECTORS`] sectors of data and a status
//! byte, in static buffers inside the image, one request at a time on queue 0.

// Lengths and counts are cut to the width of their ring field; each is in range.
#![allow(clippy::cast_possible_truncation)]

use super::ring::{ring, Ring, RingExt, DESC_F_NEXT, DESC_F_WRITE, QUEUE_SIZE};
use super::{Mmio, DEVICE_BLK, STATUS_DRIVER_OK, STATUS_NEEDS_RESET, WAIT_CYCLES};
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{compiler_fence, Ordering};
use kiln_guest_virtio::DeviceShared;

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const F_RO: u64 = 1 << 5;
pub const F_FLUSH: u64 = 1 << 9;
pub const SECTOR: usize = 512;
pub const MAX_SECTORS: usize = 2;
/// Status byte value before the device answers.
pub const NO_STATUS: u8 = 0xff;

#[repr(C, align(16))]
pub struct Buffers {
    pub header: [u8; 16],
    pub data: [u8; SECTOR * MAX_SECTORS],
    pub status: [u8; 16],
}

static BUFFERS: DeviceShared<Buffers> = DeviceShared::new(Buffers {
    header: [0; 16],
    data: [0; SECTOR * MAX_SECTORS],
    status: [0; 16],
});

/// Why a device could not be started.
pub enum StartError {
    NotFound,
    /// The status register after the failed step.
    Refused(u32),
}

/// A started virtio-blk device.
pub struct Blk {
    pub mmio: Mmio,
    pub ring: Ring,
    pub features: u64,
}

impl Blk {
    /// Finds the `index`-th virtio-blk device on the command line and starts it.
    pub fn open(cmdline: &[u8], index: u32) -> Result<Blk, StartError> {
        let mmio = super::find(cmdline, DEVICE_BLK, index).ok_or(StartError::NotFound)?;
        Blk::start(mmio, QUEUE_SIZE as u32)
    }

    /// Resets and starts the device with a queue of `size` entries.
    pub fn start(mmio: Mmio, size: u32) -> Result<Blk, StartError> {
        let features = mmio
            .negotiate(F_RO | F_FLUSH)
            .map_err(StartError::Refused)?;
        let ring = ring(0);
        mmio.setup_queue(0, size, &ring);
        let status = mmio.driver_ok();
        if status & STATUS_DRIVER_OK == 0 || status & STATUS_NEEDS_RESET != 0 {
            return Err(StartError::Refused(status));
        }
        Ok(Blk {
            mmio,
            ring,
            features,
        })
    }

    /// Capacity in sectors (config space offset 0).
    pub fn capacity(&self) -> u64 {
        self.mmio.config_u64(0)
    }

    pub fn buffers() -> *mut Buffers {
        BUFFERS.ptr()
    }

    pub fn header_addr() -> u64 {
        // SAFETY: only the address is computed.
        unsafe { addr_of!((*Self::buffers()).header) as u64 }
    }

    pub fn data_addr() -> u64 {
        // SAFETY: only the address is computed.
        unsafe { addr_of!((*Self::buffers()).data) as u64 }
    }

    pub fn status_addr() -> u64 {
        // SAFETY: only the address is computed.
        unsafe { addr_of!((*Self::buffers()).status) as u64 }
    }

    /// Fills the header and presets the status byte.
    pub fn prepare(kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        // SAFETY: the static buffers are not in use by the device (one request at a time).
        unsafe {
            write_volatile(addr_of_mut!((*Self::buffers()).header), h);
            write_volatile(addr_of_mut!((*Self::buffers()).status[0]), NO_STATUS);
        }
        compiler_fence(Ordering::SeqCst);
    }

    /// The status byte.
    pub fn status_byte() -> u8 {
        // SAFETY: in bounds of the static buffers; the device may have written it.
        unsafe { read_volatile(addr_of!((*Self::buffers()).status[0])) }
    }

    /// The data buffer, once the device is done with it.
    pub fn data() -> &'static mut [u8; SECTOR * MAX_SECTORS] {
        // SAFETY: the device writes the buffer only between a kick and its used entry;
        // callers use this after the used entry (or before the kick), on one vCPU.
        unsafe { &mut *addr_of_mut!((*Self::buffers()).data) }
    }

    /// Sends one request with `len` bytes of data (device-writable unless `kind` is `OUT`)
    /// and waits for it. Returns (status byte, used length), or `None` on timeout.
    pub fn request(&mut self, kind: u32, sector: u64, len: u32) -> Option<(u8, u32)> {
        self.request_wait(kind, sector, len, WAIT_CYCLES)
    }

    /// [`Blk::request`], waiting at most `cycles` TSC cycles.
    pub fn request_wait(
        &mut self,
        kind: u32,
        sector: u64,
        len: u32,
        cycles: u64,
    ) -> Option<(u8, u32)> {
        Self::prepare(kind, sector);
        let data_flags = if kind == T_OUT {
            DESC_F_NEXT
        } else {
            DESC_F_NEXT | DESC_F_WRITE
        };
        if len > 0 {
            self.ring
                .set_desc(0, Self::header_addr(), 16, DESC_F_NEXT, 1);
            self.ring.set_desc(1, Self::data_addr(), len, data_flags, 2);
        } else {
            self.ring
                .set_desc(0, Self::header_addr(), 16, DESC_F_NEXT, 2);
        }
        self.ring
            .set_desc(2, Self::status_addr(), 1, DESC_F_WRITE, 0);
        self.ring.push(0);
        self.mmio.notify(0);
        let used = self.ring.wait_used(cycles)?;
        Some((Self::status_byte(), used.len))
    }
}
