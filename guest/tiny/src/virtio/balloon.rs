//! virtio-balloon: the inflate (ring 0), deflate (ring 1) and stats (ring 2) queues, one
//! buffer of up to [`PFNS`] page frame numbers and one statistics buffer in static memory
//! inside the image, and the configuration space's `num_pages` (offset 0, the host's
//! target) and `actual` (offset 4, the driver's).

// Lengths are cut to the width of their ring field; each is in range.
#![allow(clippy::cast_possible_truncation)]

use super::ring::{ring, Ring, RingExt, QUEUE_SIZE};
use super::{Mmio, DEVICE_BALLOON, REG_CONFIG, STATUS_DRIVER_OK, STATUS_NEEDS_RESET};
use core::ptr::addr_of_mut;
use kiln_guest_virtio::{DeviceShared, UsedElem};

/// Frame numbers in one inflate or deflate request (Linux's driver sends as many).
pub const PFNS: usize = 256;
/// Statistics entries in the stats buffer (`u16` tag, `u64` value: 10 bytes each).
pub const STATS: usize = 4;
pub const F_STATS_VQ: u64 = 1 << 1;
pub const F_DEFLATE_ON_OOM: u64 = 1 << 2;

#[repr(C, align(16))]
pub struct Pfns(pub [u32; PFNS]);

#[repr(C, align(16))]
pub struct StatsBuf(pub [u8; STATS * 10]);

static PFN_BUF: DeviceShared<Pfns> = DeviceShared::new(Pfns([0; PFNS]));
static STATS_BUF: DeviceShared<StatsBuf> = DeviceShared::new(StatsBuf([0; STATS * 10]));

/// A started virtio-balloon device.
pub struct Balloon {
    pub mmio: Mmio,
    pub inflate: Ring,
    pub deflate: Ring,
    /// With `VIRTIO_BALLOON_F_STATS_VQ` negotiated.
    pub stats: Option<Ring>,
    pub features: u64,
}

impl Balloon {
    /// Finds the first virtio-balloon device and starts it, with the statistics queue when
    /// the device offers it. Err: the status register (0 when there is no device).
    pub fn open(cmdline: &[u8]) -> Result<Balloon, u32> {
        let mmio = super::find(cmdline, DEVICE_BALLOON, 0).ok_or(0u32)?;
        let features = mmio.negotiate(F_STATS_VQ | F_DEFLATE_ON_OOM)?;
        let (inflate, deflate) = (ring(0), ring(1));
        mmio.setup_queue(0, QUEUE_SIZE as u32, &inflate);
        mmio.setup_queue(1, QUEUE_SIZE as u32, &deflate);
        let stats = (features & F_STATS_VQ != 0).then(|| {
            let s = ring(2);
            mmio.setup_queue(2, QUEUE_SIZE as u32, &s);
            s
        });
        let status = mmio.driver_ok();
        if status & STATUS_DRIVER_OK == 0 || status & STATUS_NEEDS_RESET != 0 {
            return Err(status);
        }
        Ok(Balloon {
            mmio,
            inflate,
            deflate,
            stats,
            features,
        })
    }

    /// The host's target, in 4 KiB pages.
    pub fn num_pages(&self) -> u32 {
        self.mmio.config_u32(0)
    }

    pub fn actual(&self) -> u32 {
        self.mmio.config_u32(4)
    }

    pub fn set_actual(&self, pages: u32) {
        self.mmio.write(REG_CONFIG + 4, pages);
    }

    pub fn pfn_addr() -> u64 {
        PFN_BUF.ptr() as u64
    }

    pub fn stats_addr() -> u64 {
        STATS_BUF.ptr() as u64
    }

    /// The frame number buffer, while the device does not hold it.
    pub fn pfns() -> &'static mut [u32; PFNS] {
        // SAFETY: the device reads the buffer only between a notification and the used
        // entry; callers use it outside that window, on one vCPU.
        unsafe { &mut (*addr_of_mut!((*PFN_BUF.ptr()).0)) }
    }

    /// The statistics buffer, while the device does not hold it.
    pub fn stats_buf() -> &'static mut [u8; STATS * 10] {
        // SAFETY: as for `pfns`: the device reads it only while it holds it.
        unsafe { &mut (*addr_of_mut!((*STATS_BUF.ptr()).0)) }
    }

    /// Sends the first `n` frame numbers of the buffer on queue `q` (0 inflate, 1 deflate)
    /// and waits up to `cycles` for the device to take them.
    pub fn send(&mut self, q: u32, n: usize, cycles: u64) -> Option<UsedElem> {
        let ring = if q == 0 {
            &mut self.inflate
        } else {
            &mut self.deflate
        };
        ring.set_desc(0, Self::pfn_addr(), (n.min(PFNS) * 4) as u32, 0, 0);
        ring.push(0);
        self.mmio.notify(q);
        ring.wait_used(cycles)
    }
}
