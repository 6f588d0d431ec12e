//! `ticks`: prints `KILN-TINY: tick N` (N = 0, 1, 2, ...) forever, one line every
//! [`TICK_CYCLES`] time-stamp-counter cycles (about 0.1 s at 2-3 GHz), so a test can see the
//! guest run, stop while the VM is paused, and run again once resumed.
//!
//! The wait reads the TSC in a loop (a handful of instructions per iteration), so its
//! length does not depend on how fast guest instructions execute, emulated or not.

use crate::arch::rdtsc;
use crate::boot_info::BootInfo;
use crate::serial::Console;

/// TSC cycles between two ticks.
pub const TICK_CYCLES: u64 = 250_000_000;

pub fn run(_info: &BootInfo, con: &mut Console) {
    let mut n: u64 = 0;
    loop {
        con.line().s("tick ").dec(n).end();
        n = n.wrapping_add(1);
        let start = rdtsc();
        while rdtsc().wrapping_sub(start) < TICK_CYCLES {}
    }
}
