//! Hostile accesses to the buses and the legacy devices (the security suite).
//!
//! * `bus-junk`: port I/O all over the port space (reads and writes of 1, 2 and 4 bytes,
//!   every 0x13th port from 0x100, and the usual suspects below: CMOS, POST, A20, debug
//!   ports; COM1 and the i8042, which the guest needs, are left alone), MMIO in every 4 KiB
//!   slot of the virtio-mmio area (inside device windows past their registers, and in empty
//!   slots), straddling two windows, in the gap between RAM and the MMIO area, and where a
//!   PC has an HPET: `bus pio=N mmio=N`, then a `blk read` of sector 0 when there is a drive.
//! * `legacy-junk`: the serial port reprogrammed every way (divisor latch, divisor 0, FIFO,
//!   interrupts on, loopback), then restored: `legacy serial survived` (a line that only
//!   arrives if the VMM's serial still works); the i8042 given every command but a reset
//!   (self tests, controller and output-port writes that keep the reset line high, buffer
//!   writes, keyboard commands, unknown commands, odd "pulse" commands), its data port read
//!   dry: `legacy i8042 survived reads=N`.

// Port numbers and values are deliberately cut to the width of the access.
#![allow(clippy::cast_possible_truncation)]

use super::blk::read;
use crate::arch::{inb, inl, inw, outb, outl, outw};
use crate::boot_info::BootInfo;
use crate::serial::Console;
use crate::virtio::DEVICE_BLK;

/// Ports the guest must not touch here: COM1 (its output), the i8042 (0x64 is the reset
/// command port), the PICs and the PIT and their edge/level registers (in-kernel devices
/// that would start raising interrupts).
fn spared(port: u16) -> bool {
    matches!(port, 0x20..=0x21 | 0x40..=0x43 | 0x60..=0x64 | 0xa0..=0xa1 | 0x3f8..=0x3ff | 0x4d0..=0x4d1)
}

fn mmio_read(addr: u64) -> u32 {
    // SAFETY: an address in the uncached 3-4 GiB part of the identity map (or RAM): an
    // aligned 32-bit access is an MMIO exit (or a RAM read).
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

fn mmio_write(addr: u64, value: u32) {
    // SAFETY: as for `mmio_read`; nothing of the guest lives there.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
}

pub fn run_junk(info: &BootInfo, con: &mut Console) {
    let mut pio = 0u64;
    for port in [0x70u16, 0x71, 0x80, 0x92, 0xe9, 0xed, 0xcf9] {
        let _ = inb(port);
        outb(port, 0);
        pio += 2;
    }
    let mut port: u32 = 0x100;
    while port <= 0xffff {
        let p = port as u16;
        if !spared(p) {
            let _ = inb(p);
            outb(p, 0xa5);
            pio += 2;
            if p & 1 == 0 {
                let _ = inw(p);
                outw(p, 0xa5a5);
                pio += 2;
            }
            if p & 3 == 0 {
                let _ = inl(p);
                outl(p, 0xa5a5_a5a5);
                pio += 2;
            }
        }
        port += 0x13;
    }
    // PCI configuration mechanism #1: nothing answers.
    outl(0xcf8, 0x8000_0000);
    let _ = inl(0xcfc);
    pio += 2;

    let mut mmio = 0u64;
    // Every slot of the virtio-mmio area: past the registers of a device, or an empty slot.
    for slot in 0..32u64 {
        let base = 0xd000_0000 + slot * 0x1000;
        for off in [0x200u64, 0xf00, 0xffc] {
            let _ = mmio_read(base + off);
            mmio_write(base + off, 0xdead_beef);
            mmio += 2;
        }
    }
    // Straddling two windows (8 bytes at the last 4 of one).
    // SAFETY: as for `mmio_write`.
    unsafe { core::ptr::write_volatile(0xd000_0ffc as *mut u64, u64::MAX) };
    mmio += 1;
    // The gap between RAM and the MMIO area, and an HPET's address.
    for addr in [0x0800_0000u64, 0xcfff_f000, 0xfed0_0000, 0xfed0_00f0] {
        let _ = mmio_read(addr);
        mmio_write(addr, 0x1234_5678);
        mmio += 2;
    }
    con.line()
        .s("bus pio=")
        .dec(pio)
        .s(" mmio=")
        .dec(mmio)
        .end();
    if crate::virtio::find(info.cmdline, DEVICE_BLK, 0).is_some() {
        if let Some(mut b) = super::blk::open(info, con) {
            read(&mut b, con, 0, 1);
        }
    }
}

const COM1: u16 = 0x3f8;
const I8042_DATA: u16 = 0x60;
const I8042_CMD: u16 = 0x64;

pub fn run_legacy(_info: &BootInfo, con: &mut Console) {
    // Serial: divisor latch with divisor 0, junk line control, FIFO, every interrupt, modem
    // control with loopback, writes in loopback, reads of every register.
    outb(COM1 + 3, 0x80);
    outb(COM1, 0);
    outb(COM1 + 1, 0);
    outb(COM1 + 3, 0xff);
    outb(COM1 + 3, 0x03);
    outb(COM1 + 1, 0x0f);
    outb(COM1 + 2, 0xc7);
    outb(COM1 + 4, 0x1f);
    for b in 0..32u8 {
        outb(COM1, b);
    }
    for r in 0..8u16 {
        let _ = inb(COM1 + r);
    }
    outb(COM1 + 5, 0xff);
    outb(COM1 + 6, 0xff);
    outb(COM1 + 7, 0x5a);
    // Restore what the console needs: no loopback, no interrupts, DLAB clear.
    outb(COM1 + 4, 0);
    outb(COM1 + 1, 0);
    outb(COM1 + 3, 0x03);
    con.line().s("legacy serial survived").end();

    // i8042: everything but a reset (an output-port write with bit 0 clear, or an even
    // "pulse" command 0xf0..0xfe, would reset: the VM would end, as documented).
    let cmds: &[(u8, Option<u8>)] = &[
        (0xaa, None),
        (0xab, None),
        (0xa9, None),
        (0x20, None),
        (0x60, Some(0xff)),
        (0xd0, None),
        (0xd1, Some(0x03)),
        (0xd2, Some(0x1c)),
        (0xd3, Some(0x1c)),
        (0xd4, Some(0xff)),
        (0xad, None),
        (0xae, None),
        (0xa7, None),
        (0xa8, None),
        (0xc0, None),
        (0x00, None),
        (0x01, None),
        (0x99, None),
        (0xc8, None),
        (0xff, None),
        (0xf1, None),
        (0xf3, None),
        (0xfd, None),
    ];
    for &(cmd, data) in cmds {
        outb(I8042_CMD, cmd);
        if let Some(d) = data {
            outb(I8042_DATA, d);
        }
    }
    // Keyboard commands and junk on the data port.
    for b in [
        0xedu8, 0x07, 0xf0, 0x99, 0xf2, 0xf3, 0xff, 0xee, 0xff, 0x00, 0x42,
    ] {
        outb(I8042_DATA, b);
    }
    let mut reads = 0u64;
    for _ in 0..64 {
        let _ = inb(I8042_DATA);
        let _ = inb(I8042_CMD);
        reads += 2;
    }
    con.line()
        .s("legacy i8042 survived reads=")
        .dec(reads)
        .end();
}
