//! `pci-scan`: the virtio devices over PCI (`--enable-pci`), found as a firmware-less OS
//! finds them, then the entropy device driven with MSI-X.
//!
//! 1. `pci bus conf1=0|1 mmio-entries=N`: whether 0xCF8 reads back what was written, and how
//!    many `virtio_mmio.device=` entries the command line has. Without conf1 the scenario
//!    prints an error line `no PCI bus` and stops.
//! 2. `pci bridge id=0x.. class=0x..`: slot 0 (vendor/device and class/revision dwords).
//! 3. For each virtio function on bus 0: `pci dev slot=N device=0x10xx bar=0x.. size=0x..
//!    caps=N common=0x.. notify=0x.. mult=N isr=0x.. devcfg=0x.. msix=N table=0x..
//!    pba=0x..` (its BAR sized by writing all ones, its capabilities walked), then `pci
//!    devices n=N`.
//! 4. The first virtio-rng (0x1044), started with MSI-X on (the local APIC software-enabled,
//!    interrupts off: an MSI lands in the IRR, where it is seen without being taken):
//!    entry 0 (configuration) and entry 1 (queue 0) programmed, `pci start status=0x..
//!    queues=N vector=1`, then
//!    - a request with vector 1 unmasked (to APIC vector 0x50): `pci read used=N
//!      nonzero=N irr=0|1`;
//!    - the entry masked and pointed at 0x52, another request: `pci masked used=N irr=0|1
//!      pending=0|1`; unmasked: `pci unmasked irr=0|1 pending=0|1`.
//!
//! `pci-snap`: the same up to the masked request, with the entropy device's BAR first moved
//! 1 MiB up (where the firmware did not put it); then `pci snap ready bar=0x..` and a wait
//! of `kiln.wait=S` seconds (default 3) in which the host snapshots the VM and restores it
//! in another VMM; then what the restored VM shows: `pci snap resumed bar=0x.. cmd=0x..
//! msix=0x.. pending=0|1 irr=0|1` (BAR, command and MSI-X Message Control read back, the
//! masked vector's pending bit and whether 0x52 was requested), `pci snap unmasked irr=0|1
//! pending=0|1` (the vector unmasked: the pending interrupt delivered through the restored
//! route), and a request with the vector pointed at 0x53: `pci snap read used=N nonzero=N
//! irr=0|1`.

// Register values are cut to the width of their field.
#![allow(clippy::cast_possible_truncation)]

use crate::arch::rdtsc;
use crate::boot_info::BootInfo;
use crate::serial::Console;
use crate::virtio::pci::{self, lapic, PciDev, C_NUM_QUEUES};
use crate::virtio::ring::{ring, RingExt, DESC_F_WRITE, QUEUE_SIZE_U16};
use crate::virtio::rng::{Rng, BUF_LEN};
use crate::virtio::{STATUS_DRIVER_OK, WAIT_CYCLES};
use kiln_guest_boot::cmdline;

pub const DEVICE_RNG: u16 = pci::DEVICE_BASE + 4;
const VEC_QUEUE: u8 = 0x50;
const VEC_CONFIG: u8 = 0x51;
const VEC_MASKED: u8 = 0x52;
const VEC_AFTER: u8 = 0x53;
/// How far `pci-snap` moves the BAR (still in the PCI window and the uncached 3-4 GiB).
const BAR_MOVE: u64 = 0x10_0000;
/// TSC cycles to let an MSI arrive after the used entry (it is written before the
/// interrupt is raised).
const SETTLE: u64 = 50_000_000;

/// Every virtio function on bus 0, printed; returns how many and the first of `device`.
pub fn scan(con: &mut Console, device: u16) -> (u32, Option<PciDev>) {
    let mut n = 0;
    let mut found = None;
    for slot in 1..32u8 {
        let Some(d) = PciDev::probe(slot) else {
            continue;
        };
        n += 1;
        con.line()
            .s("pci dev slot=")
            .dec(slot.into())
            .s(" device=")
            .hex(d.device_id.into())
            .s(" bar=")
            .hex(d.bar)
            .s(" size=")
            .hex(d.bar_size)
            .s(" caps=")
            .dec(d.caps.into())
            .s(" common=")
            .hex(d.common.unwrap_or(u64::MAX))
            .s(" notify=")
            .hex(d.notify.unwrap_or(u64::MAX))
            .s(" mult=")
            .dec(d.notify_mult.into())
            .s(" isr=")
            .hex(d.isr.unwrap_or(u64::MAX))
            .s(" devcfg=")
            .hex(d.device.unwrap_or(u64::MAX))
            .s(" msix=")
            .dec(d.msix_size.into())
            .s(" table=")
            .hex(d.msix_table)
            .s(" pba=")
            .hex(d.msix_pba)
            .end();
        if d.device_id == device && found.is_none() {
            found = Some(d);
        }
    }
    con.line().s("pci devices n=").dec(n.into()).end();
    (n, found)
}

/// Steps 1 and 2; false when there is no bus.
pub fn probe_bus(info: &BootInfo, con: &mut Console) -> bool {
    let conf1 = pci::conf1_present();
    let entries = cmdline::words(info.cmdline)
        .filter(|w| w.starts_with(b"virtio_mmio.device="))
        .count();
    con.line()
        .s("pci bus conf1=")
        .dec(conf1.into())
        .s(" mmio-entries=")
        .dec(entries as u64)
        .end();
    if !conf1 {
        con.error().s("no PCI bus").end();
        return false;
    }
    con.line()
        .s("pci bridge id=")
        .hex(pci::cfg_read32(0, 0).into())
        .s(" class=")
        .hex(pci::cfg_read32(0, 8).into())
        .end();
    true
}

/// Starts `d` as an entropy device with MSI-X entries 0 (configuration) and 1 (queue 0);
/// returns the status after DRIVER_OK.
pub fn start_rng(con: &mut Console, d: &PciDev, apic: u32) -> Option<crate::virtio::ring::Ring> {
    d.enable();
    d.msix_entry(0, apic, VEC_CONFIG, false);
    d.msix_entry(1, apic, VEC_QUEUE, false);
    d.msix_enable(true);
    d.negotiate();
    d.cwrite(pci::C_MSIX_CONFIG, 2, 0);
    let r = ring(0);
    let vector = d.setup_queue(0, &r, QUEUE_SIZE_U16, 1);
    let status = d.driver_ok();
    con.line()
        .s("pci start status=")
        .hex(status.into())
        .s(" queues=")
        .dec(d.cread(C_NUM_QUEUES, 2))
        .s(" vector=")
        .dec(vector.into())
        .end();
    (status & STATUS_DRIVER_OK != 0).then_some(r)
}

/// One 64-byte request on queue 0, waited for by polling: the used length.
pub fn request(d: &PciDev, r: &mut crate::virtio::ring::Ring) -> Option<u32> {
    Rng::buf().fill(0);
    r.set_desc(0, Rng::buf_addr(), 64, DESC_F_WRITE, 0);
    r.push(0);
    d.notify(0);
    let used = r.wait_used(WAIT_CYCLES)?;
    let start = rdtsc();
    while rdtsc().wrapping_sub(start) < SETTLE {}
    Some(used.len)
}

pub fn run_scan(info: &BootInfo, con: &mut Console) {
    if !probe_bus(info, con) {
        return;
    }
    let (_, rng) = scan(con, DEVICE_RNG);
    let Some(d) = rng.filter(PciDev::usable) else {
        con.error().s("no usable virtio-rng on PCI").end();
        return;
    };
    let apic = lapic::enable();
    let Some(mut r) = start_rng(con, &d, apic) else {
        con.error().s("virtio-rng over PCI refused to start").end();
        return;
    };
    let Some(used) = request(&d, &mut r) else {
        con.error().s("pci rng request timed out").end();
        return;
    };
    let got = &Rng::buf()[..(used as usize).min(BUF_LEN)];
    con.line()
        .s("pci read used=")
        .dec(used.into())
        .s(" nonzero=")
        .dec(got.iter().filter(|&&b| b != 0).count() as u64)
        .s(" irr=")
        .dec(lapic::requested(VEC_QUEUE).into())
        .end();
    // Masked: the interrupt waits in the pending bits.
    d.msix_mask(1, true);
    d.msix_entry(1, apic, VEC_MASKED, true);
    let used = request(&d, &mut r).unwrap_or(0);
    con.line()
        .s("pci masked used=")
        .dec(used.into())
        .s(" irr=")
        .dec(lapic::requested(VEC_MASKED).into())
        .s(" pending=")
        .dec(d.pending(1).into())
        .end();
    d.msix_mask(1, false);
    let start = rdtsc();
    while rdtsc().wrapping_sub(start) < SETTLE {}
    con.line()
        .s("pci unmasked irr=")
        .dec(lapic::requested(VEC_MASKED).into())
        .s(" pending=")
        .dec(d.pending(1).into())
        .end();
}

/// Waits `cycles` TSC cycles.
fn settle(cycles: u64) {
    let start = rdtsc();
    while rdtsc().wrapping_sub(start) < cycles {}
}

pub fn run_snap(info: &BootInfo, con: &mut Console) {
    if !probe_bus(info, con) {
        return;
    }
    let (_, rng) = scan(con, DEVICE_RNG);
    let Some(mut d) = rng.filter(PciDev::usable) else {
        con.error().s("no usable virtio-rng on PCI").end();
        return;
    };
    // Moved before decoding is on: a restore must decode it here, not at the firmware's.
    d.bar += BAR_MOVE;
    pci::cfg_write32(d.slot, 0x10, d.bar as u32);
    if !d.usable() {
        con.error().s("the moved BAR is not usable").end();
        return;
    }
    let apic = lapic::enable();
    let Some(mut r) = start_rng(con, &d, apic) else {
        con.error().s("virtio-rng over PCI refused to start").end();
        return;
    };
    let used = request(&d, &mut r).unwrap_or(0);
    con.line()
        .s("pci read used=")
        .dec(used.into())
        .s(" irr=")
        .dec(lapic::requested(VEC_QUEUE).into())
        .end();
    d.msix_mask(1, true);
    d.msix_entry(1, apic, VEC_MASKED, true);
    let used = request(&d, &mut r).unwrap_or(0);
    con.line()
        .s("pci masked used=")
        .dec(used.into())
        .s(" irr=")
        .dec(lapic::requested(VEC_MASKED).into())
        .s(" pending=")
        .dec(d.pending(1).into())
        .end();
    con.line().s("pci snap ready bar=").hex(d.bar).end();
    let wait = cmdline::param_num(info.cmdline, b"kiln.wait", 3).clamp(1, 60);
    settle(wait * WAIT_CYCLES);
    con.line()
        .s("pci snap resumed bar=")
        .hex(pci::cfg_read32(d.slot, 0x10).into())
        .s(" cmd=")
        .hex(pci::cfg_read16(d.slot, 0x04).into())
        .s(" msix=")
        .hex(pci::cfg_read16(d.slot, d.msix_cap + 2).into())
        .s(" pending=")
        .dec(d.pending(1).into())
        .s(" irr=")
        .dec(lapic::requested(VEC_MASKED).into())
        .end();
    d.msix_mask(1, false);
    settle(SETTLE);
    con.line()
        .s("pci snap unmasked irr=")
        .dec(lapic::requested(VEC_MASKED).into())
        .s(" pending=")
        .dec(d.pending(1).into())
        .end();
    d.msix_entry(1, apic, VEC_AFTER, false);
    let Some(used) = request(&d, &mut r) else {
        con.error()
            .s("pci rng request timed out after the restore")
            .end();
        return;
    };
    let got = &Rng::buf()[..(used as usize).min(BUF_LEN)];
    con.line()
        .s("pci snap read used=")
        .dec(used.into())
        .s(" nonzero=")
        .dec(got.iter().filter(|&&b| b != 0).count() as u64)
        .s(" irr=")
        .dec(lapic::requested(VEC_AFTER).into())
        .end();
}
