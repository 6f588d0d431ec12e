//! `ticks`: prints `KILN-TINY: tick N` (N = 0, 1, 2, ...) forever, one line every
//! [`TICK_CYCLES`] time-stamp-counter cycles (about 0.1 s at 2-3 GHz), so a test can see the
//! guest run, stop while the VM is paused, and run again once resumed.
//!
//! The wait reads the TSC in a loop (a handful of instructions per iteration), so its
//! length does not depend on how fast guest instructions execute, emulated or not.

use crate::boot_info::BootInfo;
use crate::serial::Console;
use core::arch::asm;

/// TSC cycles between two ticks.
pub const TICK_CYCLES: u64 = 250_000_000;

fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: `rdtsc` reads the time-stamp counter into EDX:EAX; it touches no memory.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

pub fn run(_info: &BootInfo, con: &mut Console) {
    let mut n: u64 = 0;
    loop {
        con.line().s("tick ").dec(n).end();
        n = n.wrapping_add(1);
        let start = rdtsc();
        while rdtsc().wrapping_sub(start) < TICK_CYCLES {}
    }
}
