//! `pit`: programs channel 0 of an i8254 PIT (ports 0x40-0x43: mode 2, reload 0xffff),
//! then forever, every [`TICK_CYCLES`] TSC cycles, latches channel 0 and reads its count:
//! `KILN-TINY: pit count=0xNNNN`. With KVM's in-kernel PIT the count moves (it runs at
//! 1.193182 MHz); a VM without one (machine-config `"pit": false`) has nothing at those
//! ports and the VMM answers each read with all ones: `0xffff` every time. The guest runs
//! with interrupts off, so the PIT's IRQ 0 is never taken.

use crate::arch::inb;
use crate::arch::{outb, rdtsc};
use crate::boot_info::BootInfo;
use crate::serial::Console;

/// TSC cycles between two reads (~0.04 s at 2-3 GHz).
const TICK_CYCLES: u64 = 100_000_000;
/// Channel 0's data port.
const CHANNEL0: u16 = 0x40;
/// The mode/command register.
const COMMAND: u16 = 0x43;
/// Channel 0, low byte then high byte, mode 2 (rate generator), binary.
const CH0_LOHI_MODE2: u8 = 0x34;
/// Channel 0, counter latch command.
const CH0_LATCH: u8 = 0x00;

pub fn run(_info: &BootInfo, con: &mut Console) {
    outb(COMMAND, CH0_LOHI_MODE2);
    outb(CHANNEL0, 0xff);
    outb(CHANNEL0, 0xff);
    loop {
        outb(COMMAND, CH0_LATCH);
        let lo = u64::from(inb(CHANNEL0));
        let hi = u64::from(inb(CHANNEL0));
        con.line().s("pit count=").hex(hi << 8 | lo).end();
        let start = rdtsc();
        while rdtsc().wrapping_sub(start) < TICK_CYCLES {}
    }
}
