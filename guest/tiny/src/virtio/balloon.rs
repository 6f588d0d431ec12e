//! virtio-balloon: the inflate (ring 0), deflate (ring 1), stats (ring 2), free page
//! hinting (ring 3) and free page reporting (ring 4) queues — the queue numbers follow the
//! negotiated features, in the spec's order —, one buffer of up to [`PFNS`] page frame
//! numbers, one statistics buffer and one of command ids in static memory inside the
//! image, and the configuration space's `num_pages` (offset 0, the host's target), `actual`
//! (offset 4, the driver's) and `free_page_hint_cmd_id` (offset 8, the host's).

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
pub const F_FREE_PAGE_HINT: u64 = 1 << 3;
pub const F_REPORTING: u64 = 1 << 5;
/// Free page hinting's ids: the end of a run (the driver's and the host's) and the host's
/// "done, take the pages back".
pub const CMD_ID_STOP: u32 = 0;
pub const CMD_ID_DONE: u32 = 1;
/// Command id slots in the id buffer.
pub const CMD_IDS: usize = 8;

#[repr(C, align(16))]
pub struct Pfns(pub [u32; PFNS]);

#[repr(C, align(16))]
pub struct StatsBuf(pub [u8; STATS * 10]);

static PFN_BUF: DeviceShared<Pfns> = DeviceShared::new(Pfns([0; PFNS]));
static STATS_BUF: DeviceShared<StatsBuf> = DeviceShared::new(StatsBuf([0; STATS * 10]));

#[repr(C, align(16))]
pub struct CmdIds(pub [u32; CMD_IDS]);

static CMD_BUF: DeviceShared<CmdIds> = DeviceShared::new(CmdIds([0; CMD_IDS]));

/// A queue of a negotiated feature: its number and ring.
pub struct FeatureQueue {
    pub index: u32,
    pub ring: Ring,
}

/// A started virtio-balloon device.
pub struct Balloon {
    pub mmio: Mmio,
    pub inflate: Ring,
    pub deflate: Ring,
    /// With `VIRTIO_BALLOON_F_STATS_VQ` negotiated.
    pub stats: Option<Ring>,
    /// With `VIRTIO_BALLOON_F_FREE_PAGE_HINT` negotiated.
    pub hint: Option<FeatureQueue>,
    /// With `VIRTIO_BALLOON_F_REPORTING` negotiated.
    pub report: Option<FeatureQueue>,
    pub features: u64,
}

impl Balloon {
    /// Finds the first virtio-balloon device and starts it, with the statistics, hinting
    /// and reporting queues the device offers. Err: the status register (0 when there is no
    /// device).
    pub fn open(cmdline: &[u8]) -> Result<Balloon, u32> {
        let mmio = super::find(cmdline, DEVICE_BALLOON, 0).ok_or(0u32)?;
        let features =
            mmio.negotiate(F_STATS_VQ | F_DEFLATE_ON_OOM | F_FREE_PAGE_HINT | F_REPORTING)?;
        let (inflate, deflate) = (ring(0), ring(1));
        mmio.setup_queue(0, QUEUE_SIZE as u32, &inflate);
        mmio.setup_queue(1, QUEUE_SIZE as u32, &deflate);
        let mut next = 2u32;
        let mut queue = |bit: u64, ring_no: usize| {
            (features & bit != 0).then(|| {
                let r = ring(ring_no);
                mmio.setup_queue(next, QUEUE_SIZE as u32, &r);
                next += 1;
                FeatureQueue {
                    index: next - 1,
                    ring: r,
                }
            })
        };
        let stats = queue(F_STATS_VQ, 2).map(|q| q.ring);
        let hint = queue(F_FREE_PAGE_HINT, 3);
        let report = queue(F_REPORTING, 4);
        let status = mmio.driver_ok();
        if status & STATUS_DRIVER_OK == 0 || status & STATUS_NEEDS_RESET != 0 {
            return Err(status);
        }
        Ok(Balloon {
            mmio,
            inflate,
            deflate,
            stats,
            hint,
            report,
            features,
        })
    }

    /// The host's free page hinting id.
    pub fn hint_cmd(&self) -> u32 {
        self.mmio.config_u32(8)
    }

    /// Guest address of command id slot `i` (of [`CMD_IDS`]), after writing `id` there.
    pub fn cmd_id_addr(i: usize, id: u32) -> u64 {
        let slot = i % CMD_IDS;
        // SAFETY: the device reads a slot only while a chain naming it is posted; callers
        // use each slot for one chain at a time, on one vCPU.
        unsafe { (*addr_of_mut!((*CMD_BUF.ptr()).0))[slot] = id };
        CMD_BUF.ptr() as u64 + 4 * slot as u64
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
