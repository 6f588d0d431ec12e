//! The few x86 instructions the runtime uses outside ordinary Rust, all executed at CPL 3.
//!
//! Port I/O works at CPL 3 because the TSS's I/O permission bitmap allows every port (the
//! VMM, not the guest, decides what a port does). `hlt` is privileged: at CPL 3 it raises
//! `#GP`, which the ring-0 handler in entry.rs turns into "enable interrupts, halt, return
//! after the `hlt`": that is [`wait_for_interrupt`]. `cli` at CPL 3 raises `#GP` too; the
//! handler turns it into "perform this batch of register accesses in ring 0": that is
//! [`perform_in_ring0`].

use core::arch::asm;
use kiln_guest_virtio::RegOp;

/// i8042 command port; writing [`RESET_VALUE`] asks for a CPU reset, which Kiln's VMM and
/// Firecracker turn into a clean stop of the VM.
pub const RESET_PORT: u16 = 0x64;
pub const RESET_VALUE: u8 = 0xfe;

/// Writes one byte to an I/O port.
#[inline(always)]
pub fn outb(port: u16, value: u8) {
    // SAFETY: `out` touches no memory the program owns; at CPL 3 it is allowed by the TSS's
    // I/O permission bitmap (every port), so it cannot fault.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// The time-stamp counter (CR4.TSD is clear: allowed at CPL 3).
#[inline(always)]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: `rdtsc` only writes EDX:EAX.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Sleeps until the next interrupt (device or LAPIC timer). Returns at once if one is
/// already pending: interrupts are off at CPL 3, so one that arrived since the caller last
/// looked is still pending in the LAPIC, and the ring-0 `sti; hlt` takes it immediately.
#[inline(always)]
pub fn wait_for_interrupt() {
    // SAFETY: at CPL 3 `hlt` raises #GP; the ring-0 handler (entry.rs) recognises the 0xf4
    // opcode, halts with interrupts enabled and resumes here after the instruction. Memory
    // may have been written by the device meanwhile, hence no `nomem`.
    unsafe { asm!("hlt", options(nostack, preserves_flags)) }
}

/// What EDX holds for a `cli` that asks for a register batch ("KBAT"): a `cli` the
/// function's own code executes is reported as the fault it is.
pub const BATCH_MAGIC: u32 = 0x5441_424b;

/// Performs `ops` in ring 0 (kiln-guest-virtio's batch contract: in order, stopping after a
/// failed check) and returns how many were performed.
///
/// On hosts whose KVM runs ring 3 natively and emulates ring 0 (the development hosts), an
/// MMIO access from ring 3 is a full exit (~30 µs when KVM serves it, ~85 µs when the VMM
/// does), while the emulator performs one from ring 0 in well under a microsecond (~10 µs
/// with the VMM): a start-up's ~35 register accesses cost one `#GP` and ~15 emulated
/// instructions each instead of ~35 exits. On other hosts it costs one trap more than the
/// accesses themselves.
///
/// # Safety
/// Every operation's `addr` is a 4-byte aligned device register that holds no Rust object or
/// other memory the program uses (an unmapped one faults in ring 0, which resets the VM).
pub unsafe fn perform_in_ring0(ops: &mut [RegOp]) -> usize {
    let done: usize;
    // SAFETY: at CPL 3 `cli` raises #GP; the ring-0 handler (entry.rs) recognises the 0xfa
    // opcode with EDX = BATCH_MAGIC, performs the operations at RDI (RSI of them; their layout is RegOp's, fixed by
    // `repr(C)`), writes the values read into them, preserves every register but RAX (the
    // count performed) and resumes after the instruction with RFLAGS as they were. The
    // registers are devices (the caller's contract), so no Rust memory but `ops` changes.
    unsafe {
        asm!(
            "cli",
            in("rdi") ops.as_mut_ptr(),
            in("rsi") ops.len(),
            in("edx") BATCH_MAGIC,
            lateout("rax") done,
            options(nostack, preserves_flags)
        );
    }
    done
}

/// Asks the VMM to stop the VM (i8042 reset), then spins forever should it not.
pub fn reset() -> ! {
    outb(RESET_PORT, RESET_VALUE);
    loop {
        wait_for_interrupt();
    }
}
