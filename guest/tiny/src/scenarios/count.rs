//! `count` (needs 9 MiB of RAM): counts in memory, for snapshot tests. Every
//! `kiln.period=CYCLES` TSC cycles (default [`PERIOD`], ~0.1 s) it reads the counter from
//! RAM at [`COUNTER`], adds one, writes it back, stores the new value N in slot N % 16 of a
//! ring of [`SLOTS`] words one page apart (so each tick dirties a different page), and
//! prints `count N mem=S`, S being the sum of the 16 slots (the last 16 values). Forever;
//! no `done`. With `kiln.cpu=1` each line also says what the vCPU has as the guest sees it,
//! CPUID leaf 1's ECX (a leaf CPU templates change that reaches the guest on every host)
//! and IA32_PAT: `count N mem=S leaf1.ecx=0x.. pat=0x..` (a restored VM must have the
//! snapshot's CPU template).
//!
//! Nothing lives in registers across ticks: a VM restored from a snapshot goes on from the
//! count and the slots its memory holds, so the lines after a restore continue the ones
//! before (N + 1, and S of the last 16 values) only if guest memory was restored.

use core::ptr::{read_volatile, write_volatile};

use crate::arch::{cpuid, rdmsr, rdtsc};
use crate::boot_info::BootInfo;
use crate::phys;
use crate::serial::Console;
use kiln_guest_boot::cmdline::param_num;

/// TSC cycles between two ticks by default (as `ticks`).
pub const PERIOD: u64 = 250_000_000;
/// The counter's physical (= virtual) address: 8 MiB, above the image.
const COUNTER: u64 = 8 << 20;
/// Slots of the ring, one per page after the counter's page.
const SLOTS: u64 = 16;
const PAGE: u64 = 4096;
/// IA32_PAT.
const PAT: u32 = 0x277;

fn slot(i: u64) -> *mut u64 {
    (COUNTER + PAGE * (1 + i % SLOTS)) as *mut u64
}

pub fn run(info: &BootInfo, con: &mut Console) {
    let end = info
        .ram_end_containing(0x10_0000, phys::MAPPED_LIMIT)
        .unwrap_or(0);
    if end < COUNTER + PAGE * (SLOTS + 1) {
        con.error()
            .s("count needs RAM up to ")
            .hex(COUNTER + PAGE * (SLOTS + 1))
            .end();
        return;
    }
    let period = param_num(info.cmdline, b"kiln.period", PERIOD);
    let show_cpu = param_num(info.cmdline, b"kiln.cpu", 0) != 0;
    loop {
        // SAFETY: the counter and the slots are inside guest RAM above the image (checked
        // against the memory map above), identity-mapped, and used by nothing else.
        let (n, sum) = unsafe {
            let n = read_volatile(COUNTER as *const u64).wrapping_add(1);
            write_volatile(COUNTER as *mut u64, n);
            write_volatile(slot(n), n);
            let sum = (0..SLOTS).fold(0u64, |s, i| s.wrapping_add(read_volatile(slot(i))));
            (n, sum)
        };
        let line = con.line().s("count ").dec(n).s(" mem=").dec(sum);
        if show_cpu {
            // SAFETY: IA32_PAT is architectural on x86-64: every VMM gives it to the guest.
            let pat = unsafe { rdmsr(PAT) };
            line.s(" leaf1.ecx=")
                .hex(cpuid(1, 0).ecx.into())
                .s(" pat=")
                .hex(pat)
                .end();
        } else {
            line.end();
        }
        let start = rdtsc();
        while rdtsc().wrapping_sub(start) < period {}
    }
}
