//! The interrupt descriptor table: which vector goes to which ring-0 handler of entry.rs's
//! assembly, filled once at CPL 3 by [`crate::start`] before any interrupt can be taken.
//!
//! Vectors 0-31 (CPU exceptions) go to the exception stubs (13, `#GP`, to its own handler:
//! a `hlt` at CPL 3 is the runtime's wait, a `cli` its register batch), [`VECTOR_DEVICE`] (the vsock device through the
//! IOAPIC, and the LAPIC timer) to a handler that sends the LAPIC an EOI, and
//! [`VECTOR_SPURIOUS`] to one that only returns.

// The runtime is x86-64 only: u64 addresses fit in usize.
#![allow(clippy::cast_possible_truncation)]

use core::ptr::addr_of_mut;

/// Interrupt vector of the vsock device (IOAPIC) and of the LAPIC timer.
pub const VECTOR_DEVICE: u8 = 0x30;
/// LAPIC spurious-interrupt vector.
pub const VECTOR_SPURIOUS: u8 = 0xff;
/// The kernel code selector of entry.rs's GDT, for the gates.
const KERNEL_CS: u64 = 0x08;
/// Size of each exception stub in `kiln_exception_stubs` (padded).
const STUB_SIZE: u64 = 16;
/// `#GP`, whose handler is the wait and the register batch.
const VECTOR_GP: u8 = 13;

// Defined by the assembly in entry.rs.
extern "C" {
    /// The IDT (256 gates of 16 bytes), in the image.
    static mut kiln_idt: [u64; 512];
    /// Stub of exception vector `n` is at `kiln_exception_stubs + n * STUB_SIZE`.
    fn kiln_exception_stubs();
    /// The `#GP` handler (vector 13): `hlt` at CPL 3 waits for an interrupt, `cli` performs
    /// a batch of register accesses.
    fn kiln_isr_gp();
    /// Device and timer interrupts: EOI to the LAPIC, return.
    fn kiln_isr_eoi();
    /// Spurious interrupts: return.
    fn kiln_isr_spurious();
}

/// An interrupt gate (DPL 0, interrupts off on entry) to `handler` in the kernel code
/// segment.
fn gate(handler: u64) -> (u64, u64) {
    let low = (handler & 0xffff) | KERNEL_CS << 16 | 0x8e << 40 | ((handler >> 16) & 0xffff) << 48;
    (low, handler >> 32)
}

fn set_gate(vector: u8, handler: u64) {
    let (low, high) = gate(handler);
    let i = usize::from(vector) * 2;
    // SAFETY: the IDT is 512 u64 in the image, written only here, before any interrupt can
    // be taken (interrupts are off and no exception is expected while it is filled).
    unsafe {
        let idt = addr_of_mut!(kiln_idt).cast::<u64>();
        idt.add(i).write_volatile(low);
        idt.add(i + 1).write_volatile(high);
    }
}

/// Fills the IDT (called once, at start).
pub fn fill() {
    let stubs = kiln_exception_stubs as *const () as u64;
    for v in 0..32u8 {
        set_gate(v, stubs + u64::from(v) * STUB_SIZE);
    }
    set_gate(VECTOR_GP, kiln_isr_gp as *const () as u64);
    set_gate(VECTOR_DEVICE, kiln_isr_eoi as *const () as u64);
    set_gate(VECTOR_SPURIOUS, kiln_isr_spurious as *const () as u64);
}
