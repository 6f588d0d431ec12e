//! `pci-hostile`: a hostile driver of the PCI bus (`--enable-pci`), then proof that the
//! entropy device still works. Needs an entropy device and at least one other virtio
//! device on the bus.
//!
//! 1. Configuration space: byte and word accesses to the address register, misaligned
//!    and straddling data-port accesses, other buses and functions, absent slots, writes
//!    over the read-only identification: `pci hostile-ids kept=0|1 absent=0x..`.
//! 2. BARs: the entropy device's BAR sized, then moved over RAM (1 MiB, where this
//!    guest's image is): `pci hostile-ram old=0x.. image-ok=0|1`; then over the
//!    other device's BAR: `pci hostile-overlap here=0x.. other=0x..`; then back.
//! 3. MSI-X: entries pointed at garbage addresses, writes of 1 and 2 bytes, past the
//!    table, into the pending bits; common configuration writes of odd widths and at
//!    unknown offsets, a notification of a queue that does not exist, the ISR written:
//!    `pci hostile msix-junk=done`.
//! 4. The device restarted (polling): `pci hostile rng-used=N`.

// Register values are cut to the width of their field.
#![allow(clippy::cast_possible_truncation)]

use crate::arch::{inb, inl, inw, outb, outl, outw};
use crate::boot_info::BootInfo;
use crate::serial::Console;
use crate::virtio::pci::{self, lapic, PciDev};
use core::ptr::read_volatile;

use super::super::pci::{probe_bus, request, scan, start_rng, DEVICE_RNG};

/// Another virtio device than `not` on the bus.
fn other_device(not: u8) -> Option<PciDev> {
    (1..32u8).filter(|&s| s != not).find_map(PciDev::probe)
}

fn config_junk() -> (bool, u32) {
    outb(pci::CONFIG_ADDRESS, 0xff);
    outw(pci::CONFIG_ADDRESS + 2, 0xffff);
    let _ = inb(pci::CONFIG_ADDRESS + 1);
    let _ = inw(pci::CONFIG_ADDRESS + 2);
    for addr in [
        0x8001_0000u32,
        0x8000_0900,
        0x0000_0800,
        0xffff_ffff,
        0x8000_08fc,
    ] {
        outl(pci::CONFIG_ADDRESS, addr);
        let _ = inl(pci::CONFIG_DATA);
        outl(pci::CONFIG_DATA, 0xdead_beef);
        let _ = inw(pci::CONFIG_DATA + 1);
        let _ = inw(pci::CONFIG_DATA + 3);
        let _ = inl(pci::CONFIG_DATA + 2);
        outw(pci::CONFIG_DATA + 3, 0xffff);
        outl(pci::CONFIG_DATA + 1, 0xffff_ffff);
    }
    let before = pci::cfg_read32(1, 0);
    pci::cfg_write32(1, 0, 0);
    pci::cfg_write32(1, 0x08, 0);
    pci::cfg_write32(1, 0x34, 0);
    pci::cfg_write32(1, 0x2c, 0);
    let kept = pci::cfg_read32(1, 0) == before;
    (kept, pci::cfg_read32(31, 0))
}

pub fn run(info: &BootInfo, con: &mut Console) {
    if !probe_bus(info, con) {
        return;
    }
    let (kept, absent) = config_junk();
    con.line()
        .s("pci hostile-ids kept=")
        .dec(kept.into())
        .s(" absent=")
        .hex(absent.into())
        .end();
    let (_, rng) = scan(con, DEVICE_RNG);
    let Some(d) = rng.filter(PciDev::usable) else {
        con.error().s("no usable virtio-rng on PCI").end();
        return;
    };
    let Some(other) = other_device(d.slot).filter(PciDev::usable) else {
        con.error().s("no second virtio device on PCI").end();
        return;
    };
    d.enable();
    other.enable();
    let bar = pci::cfg_read32(d.slot, 0x10);
    // Over RAM: this guest's own image at 1 MiB keeps reading as RAM.
    pci::cfg_write32(d.slot, 0x10, 0x10_0000);
    // SAFETY: 1 MiB is inside this guest's image (loaded there), identity-mapped; a
    // 4-byte read of it touches no Rust object mutably.
    let image = unsafe { read_volatile(0x10_0000 as *const u32) };
    let old = d.cread(pci::C_NUM_QUEUES, 2);
    con.line()
        .s("pci hostile-ram old=")
        .hex(old)
        .s(" image-ok=")
        .dec(u64::from(image != u32::MAX))
        .end();
    // Over the other device's BAR: neither decodes there.
    pci::cfg_write32(d.slot, 0x10, other.bar as u32);
    let here = other.cread(pci::C_NUM_QUEUES, 2);
    pci::cfg_write32(d.slot, 0x10, bar);
    let back = other.cread(pci::C_NUM_QUEUES, 2);
    con.line()
        .s("pci hostile-overlap here=")
        .hex(here)
        .s(" other=")
        .hex(back)
        .end();
    // MSI-X and common configuration junk.
    for (i, addr) in [(0u64, 0x1234_5678u64), (1, 0xffff_fff0), (2, 0)] {
        d.write(d.msix_table + i * 16, 4, addr);
        d.write(d.msix_table + i * 16 + 4, 4, 0xffff_ffff);
        d.write(d.msix_table + i * 16 + 8, 4, 0xffff_ffff);
        d.write(d.msix_table + i * 16 + 12, 4, 0);
    }
    pci::cfg_write16(d.slot, d.msix_cap + 2, 0xffff);
    d.write(d.msix_table + 1, 1, 0xff);
    d.write(d.msix_table + 2, 2, 0xffff);
    d.write(d.msix_table + 16 * u64::from(d.msix_size), 4, 0xfee0_0000);
    d.write(d.msix_pba, 8, u64::MAX);
    d.write(d.msix_pba + 0x800, 4, 1);
    let _ = d.read(d.msix_table + 3, 4);
    d.cwrite(pci::C_STATUS, 4, 0xffff_ffff);
    d.cwrite(pci::C_Q_SELECT, 1, 0xff);
    d.cwrite(0x3e, 4, 1);
    d.cwrite(0x7ff, 2, 1);
    d.cwrite(pci::C_Q_SELECT, 2, 0x7fff);
    d.cwrite(pci::C_Q_SIZE, 2, 3);
    d.cwrite(pci::C_Q_MSIX, 2, 0x7ff);
    d.write(d.notify.unwrap_or(0) + 4 * 100, 2, 100);
    d.write(d.notify.unwrap_or(0) + 1, 1, 0);
    d.write(d.isr.unwrap_or(0), 1, 0xff);
    let _ = d.read(d.device.unwrap_or(0) + 0xffe, 4);
    pci::cfg_write16(d.slot, d.msix_cap + 2, 0);
    con.line().s("pci hostile msix-junk=done").end();
    // Still works, polled.
    let apic = lapic::enable();
    let Some(mut r) = start_rng(con, &d, apic) else {
        con.error().s("virtio-rng over PCI refused to start").end();
        return;
    };
    let used = request(&d, &mut r).unwrap_or(0);
    con.line().s("pci hostile rng-used=").dec(used.into()).end();
}
