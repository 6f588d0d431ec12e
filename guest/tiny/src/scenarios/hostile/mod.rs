//! Hostile virtio scenarios (the security suite, `tests/tests/security_guest.rs`): what a
//! broken or malicious driver would do to a device, each printing what the device answered
//! and then showing that the device (and the VMM) still work.
//!
//! * [`blk`]: on the first virtio-blk device: looping and out-of-bounds chains, bad queue
//!   sizes and indices, a flood of notifications, junk register accesses (`virtio-loop`,
//!   `virtio-oob`, `virtio-qsize`, `virtio-kicks`, `virtio-mmio-junk`).
//! * [`giant`]: giant lengths (`virtio-giant`).
//! * [`wrap`]: a real 16-bit index wrap on a 256-entry queue (`virtio-wrap`).
//! * [`config`]: configuration-space writes to every device (`virtio-config`).
//! * [`net`]: a hostile driver of virtio-net (`net-hostile`).
//! * [`rng`]: a hostile driver of virtio-rng (`rng-hostile`).
//! * [`balloon`]: a hostile driver of virtio-balloon (`balloon-hostile`).
//! * [`pci`]: a hostile driver of the PCI bus, its BARs and MSI-X tables (`pci-hostile`).
//! * [`vmem`]: a hostile driver of virtio-mem (`vmem-hostile`).
//! * [`pmem`]: a hostile driver of virtio-pmem (`pmem-hostile`).
//!
//! Each module's header lists the lines its scenarios print.

pub mod balloon;
pub mod balloon_free;
pub mod blk;
pub mod config;
pub mod giant;
pub mod net;
pub mod pci;
pub mod pmem;
pub mod rng;
pub mod vmem;
pub mod wrap;

use crate::arch::rdtsc;
use crate::boot_info::BootInfo;
use crate::phys;
use crate::serial::Console;
use crate::virtio::blk::Blk;
use crate::virtio::ring::RingExt;
use crate::virtio::{Mmio, STATUS_NEEDS_RESET, WAIT_CYCLES};

/// Guest RAM the giant requests and frames point into, from 4 MiB (free: the image ends below
/// 2 MiB and the VMM keeps nothing above 1 MiB).
const BIG_BASE: u64 = 0x40_0000;

/// Waits (bounded) for the device to report DEVICE_NEEDS_RESET; returns the status.
fn wait_needs_reset(mmio: &Mmio) -> u32 {
    let start = rdtsc();
    loop {
        let s = mmio.status();
        if s & STATUS_NEEDS_RESET != 0 || rdtsc().wrapping_sub(start) > WAIT_CYCLES {
            return s;
        }
    }
}

/// Posts the chain at `head` on the device's queue, notifies it and prints `WHAT used id=N
/// len=N` (then ` status=N`, the request's status byte, when `with_status`), or an error line
/// when the chain never comes back.
fn post_and_report(b: &mut Blk, con: &mut Console, what: &str, head: u16, with_status: bool) {
    b.ring.push(head);
    b.mmio.notify(0);
    let Some(u) = b.ring.wait_used(WAIT_CYCLES) else {
        con.error().s(what).s(" chain never returned").end();
        return;
    };
    let line = con
        .line()
        .s(what)
        .s(" used id=")
        .dec(u.id.into())
        .s(" len=")
        .dec(u.len.into());
    if with_status {
        line.s(" status=").dec(Blk::status_byte().into()).end();
    } else {
        line.end();
    }
}

/// End of the RAM region that holds 1 MiB, from the memory map (0 when unknown).
fn ram_end(info: &BootInfo) -> u64 {
    info.ram_end_containing(0x10_0000, phys::MAPPED_LIMIT)
        .unwrap_or(0)
}
