//! virtio-mem: one request queue (ring 0), a request buffer and a response buffer in static
//! memory inside the image, the configuration space (`block_size` at 0, `addr` at 16,
//! `region_size` at 24, `usable_region_size` at 32, `plugged_size` at 40, `requested_size`
//! at 48), and [`map_region`]: the guest's page tables reaching the device's region (past
//! the identity map's 4 GiB, at 512 GiB).

// Lengths are cut to the width of their ring field; each is in range.
#![allow(clippy::cast_possible_truncation)]

use super::ring::{ring, Ring, RingExt, DESC_F_NEXT, DESC_F_WRITE, QUEUE_SIZE};
use super::{Mmio, REG_INTERRUPT_ACK, REG_INTERRUPT_STATUS, STATUS_DRIVER_OK, STATUS_NEEDS_RESET};
use core::arch::asm;
use core::ptr::{addr_of_mut, read_volatile, write_volatile};
use kiln_guest_virtio::{DeviceShared, UsedElem};

pub const DEVICE_MEM: u32 = 24;
pub const F_UNPLUGGED_INACCESSIBLE: u64 = 1 << 1;
pub const REQ_PLUG: u16 = 0;
pub const REQ_UNPLUG: u16 = 1;
pub const REQ_UNPLUG_ALL: u16 = 2;
pub const REQ_STATE: u16 = 3;
/// Bytes the request buffer has room for (a request is 24).
pub const REQ_LEN: usize = 32;
/// Bytes the response buffer has room for (a response is 10).
pub const RESP_LEN: usize = 16;

#[repr(C, align(16))]
pub struct Bufs {
    pub req: [u8; REQ_LEN],
    pub resp: [u8; RESP_LEN],
}

static BUFS: DeviceShared<Bufs> = DeviceShared::new(Bufs {
    req: [0; REQ_LEN],
    resp: [0; RESP_LEN],
});

/// One page-table page.
#[repr(C, align(4096))]
struct Table([u64; 512]);

/// The page-directory-pointer table and page directory that map 1 GiB of the region.
static HIGH_PDPT: DeviceShared<Table> = DeviceShared::new(Table([0; 512]));
static HIGH_PD: DeviceShared<Table> = DeviceShared::new(Table([0; 512]));

/// A device's answer: the response type (0 ACK, 1 NACK, 2 BUSY, 3 ERROR), the state field
/// and the used length.
#[derive(Clone, Copy)]
pub struct Answer {
    pub kind: u16,
    pub state: u16,
    pub len: u32,
}

/// A started virtio-mem device.
pub struct VirtioMem {
    pub mmio: Mmio,
    pub ring: Ring,
    pub features: u64,
}

impl VirtioMem {
    /// Finds the first virtio-mem device and starts it, accepting
    /// `VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE` when `inaccessible`. Err: the status register
    /// (0 when there is no device).
    pub fn open(cmdline: &[u8], inaccessible: bool) -> Result<VirtioMem, u32> {
        let mmio = super::find(cmdline, DEVICE_MEM, 0).ok_or(0u32)?;
        let wanted = if inaccessible {
            F_UNPLUGGED_INACCESSIBLE
        } else {
            0
        };
        let features = mmio.negotiate(wanted)?;
        let ring = ring(0);
        mmio.setup_queue(0, QUEUE_SIZE as u32, &ring);
        let status = mmio.driver_ok();
        if status & STATUS_DRIVER_OK == 0 || status & STATUS_NEEDS_RESET != 0 {
            return Err(status);
        }
        Ok(VirtioMem {
            mmio,
            ring,
            features,
        })
    }

    pub fn block_size(&self) -> u64 {
        self.mmio.config_u64(0)
    }
    pub fn addr(&self) -> u64 {
        self.mmio.config_u64(16)
    }
    pub fn region_size(&self) -> u64 {
        self.mmio.config_u64(24)
    }
    pub fn usable(&self) -> u64 {
        self.mmio.config_u64(32)
    }
    pub fn plugged(&self) -> u64 {
        self.mmio.config_u64(40)
    }
    pub fn requested(&self) -> u64 {
        self.mmio.config_u64(48)
    }

    /// Reads and acknowledges the interrupt status (bit 1: configuration change).
    pub fn take_interrupt(&self) -> u32 {
        let isr = self.mmio.read(REG_INTERRUPT_STATUS);
        if isr != 0 {
            self.mmio.write(REG_INTERRUPT_ACK, isr);
        }
        isr
    }

    fn bufs() -> *mut Bufs {
        BUFS.ptr()
    }

    /// Writes a request of `kind` for `nb_blocks` at `addr` into the request buffer.
    pub fn write_request(kind: u16, addr: u64, nb_blocks: u16) {
        let mut req = [0u8; REQ_LEN];
        req[..2].copy_from_slice(&kind.to_le_bytes());
        req[8..16].copy_from_slice(&addr.to_le_bytes());
        req[16..18].copy_from_slice(&nb_blocks.to_le_bytes());
        // SAFETY: the device reads the buffer only while a chain naming it is posted;
        // callers write it outside that window, on one vCPU.
        unsafe { write_volatile(addr_of_mut!((*Self::bufs()).req), req) }
    }

    /// Sends the request buffer (`req_len` bytes, device-readable) followed by the response
    /// buffer (`resp_len` bytes, device-writable; none when 0) and waits up to `cycles`.
    pub fn post(&mut self, req_len: u32, resp_len: u32, cycles: u64) -> Option<Answer> {
        let bufs = Self::bufs();
        // SAFETY: as in `write_request`: outside the device's window.
        unsafe { write_volatile(addr_of_mut!((*bufs).resp), [0xee; RESP_LEN]) };
        let req_addr = bufs as u64;
        let resp_addr = req_addr + REQ_LEN as u64;
        if resp_len == 0 {
            self.ring.set_desc(0, req_addr, req_len, 0, 0);
        } else {
            self.ring.set_desc(0, req_addr, req_len, DESC_F_NEXT, 1);
            self.ring
                .set_desc(1, resp_addr, resp_len.min(RESP_LEN as u32), DESC_F_WRITE, 0);
        }
        self.ring.push(0);
        self.mmio.notify(0);
        let used: UsedElem = self.ring.wait_used(cycles)?;
        // SAFETY: the device gave the buffer back (its used entry is there).
        let resp = unsafe { read_volatile(addr_of_mut!((*bufs).resp)) };
        Some(Answer {
            kind: u16::from_le_bytes([resp[0], resp[1]]),
            state: u16::from_le_bytes([resp[8], resp[9]]),
            len: used.len,
        })
    }

    /// One well-formed request, answered.
    pub fn request(&mut self, kind: u16, addr: u64, nb_blocks: u16, cycles: u64) -> Option<Answer> {
        Self::write_request(kind, addr, nb_blocks);
        self.post(24, 10, cycles)
    }
}

/// Maps the first GiB from `base` (1 GiB-aligned, at or past 512 GiB, below 1 TiB) into
/// the guest's page tables with 2 MiB pages, write-back cached.
pub fn map_region(base: u64) {
    const P_RW_A: u64 = 0x23;
    const LARGE_D: u64 = 0x80 | 0x40;
    let pml4_index = ((base >> 39) & 511) as usize;
    let pdpt_index = ((base >> 30) & 511) as usize;
    let pd = HIGH_PD.ptr();
    let pdpt = HIGH_PDPT.ptr();
    for i in 0..512usize {
        let pa = (base & !((1 << 30) - 1)) + ((i as u64) << 21);
        // SAFETY: the page directory is the image's own static table; the CPU reads it
        // only once it is linked below, and only this vCPU runs.
        unsafe { write_volatile(addr_of_mut!((*pd).0[i]), pa | P_RW_A | LARGE_D) };
    }
    // SAFETY: as above, for the image's own PDPT.
    unsafe { write_volatile(addr_of_mut!((*pdpt).0[pdpt_index]), pd as u64 | P_RW_A) };
    let cr3: u64;
    // SAFETY: reading CR3 has no side effect.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags)) };
    let pml4 = (cr3 & !0xfff) as *mut u64;
    // SAFETY: CR3 names the image's PML4 (identity-mapped, in the image's writable
    // page-table section); entry `pml4_index` (>= 1) is unused by the low 4 GiB map. Writing
    // CR3 back flushes the TLB.
    unsafe {
        write_volatile(pml4.add(pml4_index), pdpt as u64 | P_RW_A);
        asm!("mov cr3, {}", in(reg) cr3, options(nostack, preserves_flags));
    }
}
