//! virtio-pmem (device id 27): the configuration space's `start` and `size`, the guest's
//! mapping of that window (the image's page tables map only the low 4 GiB: [`map_window`]
//! adds a page directory for the window), and flush requests on queue 0 (a 4-byte request
//! type, a 4-byte status) in static buffers inside the image.

// Lengths and indices are cut to the width of their ring field; each is in range.
#![allow(clippy::cast_possible_truncation)]

use super::ring::{ring, Ring, RingExt, DESC_F_NEXT, DESC_F_WRITE, QUEUE_SIZE};
use super::{Mmio, STATUS_DRIVER_OK, STATUS_NEEDS_RESET};
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use kiln_guest_virtio::{DeviceShared, UsedElem};

pub const DEVICE_PMEM: u32 = 27;
/// `VIRTIO_PMEM_REQ_TYPE_FLUSH`.
pub const REQ_FLUSH: u32 = 0;
/// Status value before the device answers.
pub const NO_STATUS: u32 = 0xdead_beef;

/// Request and status words: [0..4) requests, [4..8) statuses.
#[repr(C, align(16))]
pub struct Words(pub [u32; 8]);

static WORDS: DeviceShared<Words> = DeviceShared::new(Words([0; 8]));

#[repr(C, align(4096))]
struct Table([u64; 512]);

/// The page-directory-pointer table and the page directory of the window.
static TABLES: DeviceShared<[Table; 2]> = DeviceShared::new([Table([0; 512]), Table([0; 512])]);

extern "C" {
    /// entry.rs's top-level page table (in the image's writable data).
    static mut kiln_pml4: [u64; 512];
}

const PTE_P: u64 = 1;
const PTE_RW: u64 = 2;
const PTE_A: u64 = 1 << 5;
const PTE_D: u64 = 1 << 6;
const PTE_PS: u64 = 1 << 7;
const GIB: u64 = 1 << 30;
const PAGE_2M: u64 = 2 << 20;

/// A started virtio-pmem device.
pub struct Pmem {
    pub mmio: Mmio,
    pub ring: Ring,
    pub features: u64,
    pub start: u64,
    pub size: u64,
}

impl Pmem {
    /// Finds the first virtio-pmem device and starts it. Err: the status register (0 when
    /// there is no device).
    pub fn open(cmdline: &[u8]) -> Result<Pmem, u32> {
        let mmio = super::find(cmdline, DEVICE_PMEM, 0).ok_or(0u32)?;
        Pmem::start(mmio)
    }

    /// Resets and starts the device.
    pub fn start(mmio: Mmio) -> Result<Pmem, u32> {
        let features = mmio.negotiate(0)?;
        let ring = ring(0);
        mmio.setup_queue(0, QUEUE_SIZE as u32, &ring);
        let status = mmio.driver_ok();
        if status & STATUS_DRIVER_OK == 0 || status & STATUS_NEEDS_RESET != 0 {
            return Err(status);
        }
        let (start, size) = (mmio.config_u64(0), mmio.config_u64(8));
        Ok(Pmem {
            mmio,
            ring,
            features,
            start,
            size,
        })
    }

    /// The request word `i` (0..4) and the status word `i`'s addresses.
    pub fn word_addr(i: usize) -> u64 {
        // SAFETY: only the address is taken.
        unsafe { addr_of!((*WORDS.ptr()).0[i % 8]) as u64 }
    }

    pub fn set_word(i: usize, v: u32) {
        // SAFETY: the words are written only while the device does not hold them (before a
        // request is posted), on one vCPU.
        unsafe { write_volatile(addr_of_mut!((*WORDS.ptr()).0[i % 8]), v) }
    }

    pub fn word(i: usize) -> u32 {
        // SAFETY: a volatile read of the image's static words (the device wrote them).
        unsafe { read_volatile(addr_of!((*WORDS.ptr()).0[i % 8])) }
    }

    /// Makes the chain at `head` available, notifies, and waits up to `cycles`.
    pub fn post(&mut self, head: u16, cycles: u64) -> Option<UsedElem> {
        self.ring.push(head);
        self.mmio.notify(0);
        self.ring.wait_used(cycles)
    }
}

/// Writes a well-formed flush (request word 0, status word 4, reset to [`NO_STATUS`]) as
/// the chain at descriptor 0 of `ring`.
pub fn flush_chain(ring: &mut Ring) {
    Pmem::set_word(0, REQ_FLUSH);
    Pmem::set_word(4, NO_STATUS);
    ring.set_desc(0, Pmem::word_addr(0), 4, DESC_F_NEXT, 1);
    ring.set_desc(1, Pmem::word_addr(4), 4, DESC_F_WRITE, 0);
}

/// Maps the device's window `[start, start + len)` (2 MiB pages, write-back) into the
/// image's address space at the same address, for up to the rest of `start`'s GiB. Returns
/// the mapped length, or `None` when the window cannot be mapped (not 2 MiB aligned, in the
/// low 512 GiB the image's own tables cover, or mapped already).
pub fn map_window(start: u64, len: u64) -> Option<u64> {
    if !start.is_multiple_of(PAGE_2M) || start >> 39 == 0 || start >> 48 != 0 || len == 0 {
        return None;
    }
    let len = len.min(GIB - start % GIB).next_multiple_of(PAGE_2M);
    let (l4, l3, l2) = (
        (start >> 39) as usize & 511,
        (start >> 30) as usize & 511,
        (start >> 21) as usize & 511,
    );
    let tables = TABLES.ptr();
    // SAFETY: the image's PML4 is in its writable data and only this function writes an
    // entry other than 0 (checked empty first); the two tables are the image's statics,
    // used by nothing else; the guest runs on one vCPU, identity-mapped (a static's address
    // is its physical address); CR3 is reloaded afterwards so the new entries take effect.
    unsafe {
        let pml4 = addr_of_mut!(kiln_pml4);
        if read_volatile(addr_of!((*pml4)[l4])) & PTE_P != 0 {
            return None;
        }
        let pdpt = addr_of_mut!((*tables)[0].0);
        let pd = addr_of_mut!((*tables)[1].0);
        for i in 0..(len / PAGE_2M) as usize {
            let page = start + i as u64 * PAGE_2M;
            write_volatile(
                addr_of_mut!((*pd)[l2 + i]),
                page | PTE_P | PTE_RW | PTE_A | PTE_D | PTE_PS,
            );
        }
        write_volatile(
            addr_of_mut!((*pdpt)[l3]),
            pd as u64 | PTE_P | PTE_RW | PTE_A,
        );
        write_volatile(
            addr_of_mut!((*pml4)[l4]),
            pdpt as u64 | PTE_P | PTE_RW | PTE_A,
        );
        core::arch::asm!(
            "mov {t}, cr3",
            "mov cr3, {t}",
            t = out(reg) _,
            options(nostack, preserves_flags)
        );
    }
    Some(len)
}

/// Byte `offset` of the mapped window at `start`.
pub fn read_byte(start: u64, offset: u64) -> u8 {
    // SAFETY: the caller mapped [start, start + offset] with `map_window`; the window is
    // device memory no Rust object lives in; volatile, since the host changes it.
    unsafe { read_volatile((start + offset) as *const u8) }
}

/// Writes byte `offset` of the mapped window at `start` (a read-only device drops it).
pub fn write_byte(start: u64, offset: u64, v: u8) {
    // SAFETY: as for `read_byte`.
    unsafe { write_volatile((start + offset) as *mut u8, v) }
}
