//! Polling virtio-mmio drivers (interrupts stay off) on kiln-guest-virtio's transport
//! ([`Mmio`], whose registers, status bits and device ids are re-exported here) and split
//! virtqueues.
//!
//! - [`find`]: devices from the command line's `virtio_mmio.device=<size>@<base>:<irq>`
//!   entries.
//! - [`ring`]: the guest's three rings of [`ring::QUEUE_SIZE`] entries in static memory inside
//!   the image, and [`ring::RingExt`]: waiting for a used entry by polling, and writing any
//!   available index (hostile scenarios).
//! - [`pci`]: the same devices over PCI (`--enable-pci`): configuration mechanism #1, the
//!   capability walk, BAR sizing, the common configuration and MSI-X.
//! - [`blk`], [`net`], [`vsock`], [`rng`], [`balloon`], [`mem`], [`pmem`]: request
//!   helpers for virtio-blk, virtio-net, virtio-vsock, virtio-rng, virtio-balloon, virtio-mem
//!   and virtio-pmem.
//!
//! Every register access is a plain volatile access to the device window, which the image's
//! page tables map uncached (3-4 GiB).

pub mod balloon;
pub mod blk;
pub mod mem;
pub mod net;
pub mod pci;
pub mod pmem;
pub mod ring;
pub mod rng;
pub mod vsock;

use kiln_guest_boot::{IDENTITY_MAP_END, MMIO_GAP_START};
use kiln_guest_virtio::discover;

pub use kiln_guest_virtio::mmio::*;

/// Most devices of one type looked at on the command line.
const MAX_DEVICES: usize = 16;
/// TSC cycles to wait for the device before giving up (about a second at 2-3 GHz).
pub const WAIT_CYCLES: u64 = 3_000_000_000;

/// The `index`-th (from 0) device of type `device_id` among the command line's
/// `virtio_mmio.device=` entries whose registers lie in the uncached MMIO gap and that answer
/// with the magic value and version 2.
pub fn find(cmdline: &[u8], device_id: u32, index: u32) -> Option<Mmio> {
    let mut seen = 0u32;
    for entry in discover::entries(cmdline) {
        if !entry.registers_in(MMIO_GAP_START, IDENTITY_MAP_END) {
            continue;
        }
        // SAFETY: the window starts in [3 GiB, 4 GiB), which entry.rs's page tables map
        // uncached: no Rust object of the guest lives there (its image and stack are below
        // 2 MiB, the command line it borrows is in the VMM's RAM below the gap), and what
        // lies past 4 GiB is unmapped (an access faults).
        let dev = unsafe { Mmio::new(entry.base, entry.irq) };
        if dev.read(REG_MAGIC) != MAGIC
            || dev.read(REG_VERSION) != 2
            || dev.device_id() != device_id
        {
            continue;
        }
        if seen == index {
            return Some(dev);
        }
        seen += 1;
        if seen as usize >= MAX_DEVICES {
            break;
        }
    }
    None
}

/// FNV-1a (32 bits) of `data`: the checksum the tests compare with the host file's.
pub fn fnv1a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in data {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}
