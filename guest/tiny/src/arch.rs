//! Thin wrappers over the x86 instructions the guest uses: port I/O (both ways), CPUID, the TSC, MSRs,
//! halting, loading an IDT.
//!
//! Port I/O and CPUID cannot violate Rust's memory safety (they touch no memory the
//! compiler knows about), so these wrappers are safe functions.

use core::arch::asm;

/// Writes one byte to an I/O port.
#[inline(always)]
pub fn outb(port: u16, value: u8) {
    // SAFETY: `out` touches no memory; the guest runs at CPL 0 so it cannot fault.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Writes one 16-bit word to an I/O port.
#[inline(always)]
pub fn outw(port: u16, value: u16) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Writes one 32-bit double word to an I/O port.
#[inline(always)]
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads one byte from an I/O port.
#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: `in` touches no memory; the guest runs at CPL 0 so it cannot fault.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    }
    v
}

/// Reads one 16-bit word from an I/O port.
#[inline(always)]
pub fn inw(port: u16) -> u16 {
    let v: u16;
    // SAFETY: as for `inb`.
    unsafe {
        asm!("in ax, dx", in("dx") port, out("ax") v, options(nomem, nostack, preserves_flags))
    }
    v
}

/// Reads one 32-bit double word from an I/O port.
#[inline(always)]
pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as for `inb`.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags))
    }
    v
}

/// The four registers CPUID returns.
#[derive(Clone, Copy)]
pub struct CpuidResult {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// Executes CPUID for `leaf`/`subleaf`.
pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    let (eax, ebx, ecx, edx): (u32, u32, u32, u32);
    // SAFETY: CPUID has no memory effects. RBX is reserved by LLVM, so it is saved in a
    // scratch register around the instruction.
    unsafe {
        asm!(
            "mov {tmp:r}, rbx",
            "cpuid",
            "xchg {tmp:r}, rbx",
            tmp = out(reg) ebx,
            inout("eax") leaf => eax,
            inout("ecx") subleaf => ecx,
            out("edx") edx,
            options(nomem, nostack, preserves_flags)
        );
    }
    CpuidResult { eax, ebx, ecx, edx }
}

/// Disables interrupts and halts forever.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: `cli; hlt` touches no memory; with interrupts off the loop only resumes
        // on an NMI, after which it halts again.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

/// Disables interrupts and spins forever without halting (keeps the vCPU busy).
pub fn spin_forever() -> ! {
    // SAFETY: `cli` and a jump to itself touch no memory and never return.
    unsafe { asm!("cli", "2:", "jmp 2b", options(nomem, nostack, noreturn)) }
}

/// Loads an empty IDT (limit 0): from then on any exception escalates to a triple fault.
pub fn load_empty_idt() {
    let descriptor: [u16; 5] = [0; 5];
    // SAFETY: `lidt` reads the 10-byte descriptor, which lives on the stack for the
    // duration of the instruction. An empty IDT only changes what happens on an
    // exception (a shutdown), which is the caller's intent.
    unsafe {
        asm!("lidt [{}]", in(reg) descriptor.as_ptr(), options(readonly, nostack, preserves_flags))
    }
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: `rdtsc` reads the time-stamp counter into EDX:EAX; it touches no memory.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Reads model-specific register `index`.
///
/// # Safety
/// `index` must be an MSR the CPU (the VMM) has: reading another raises #GP, which this
/// guest (empty IDT) turns into a triple fault.
pub unsafe fn rdmsr(index: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: `rdmsr` reads the MSR into EDX:EAX and touches no memory; the caller vouches
    // for the index (the guest runs at CPL 0).
    unsafe {
        asm!("rdmsr", in("ecx") index, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    }
    (u64::from(hi) << 32) | u64::from(lo)
}
