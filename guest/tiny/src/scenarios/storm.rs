//! `irq-storm` (the security suite): a vCPU in an interrupt storm.
//!
//! The guest installs an IDT of its own (every vector handled: exceptions print an error
//! line and halt, vector 0x40 is the first virtio-blk device's interrupt, 0x41 a self-IPI,
//! 0xff the spurious vector), masks the 8259s and LINT0, software-enables its local APIC and
//! routes the device's IOAPIC pin to vector 0x40. Then:
//!
//! 1. **Device storm**: it posts a request (an unsupported type: UNSUPP, no disk I/O) and
//!    kicks; each completion interrupt acknowledges the device, sends EOI, posts the request
//!    again and kicks again, until `kiln.irqs=N` (default 1000) interrupts were taken (the
//!    main code waits in `sti; hlt`, with a one-shot APIC timer as a wake-up, vector 0x42):
//!    `storm device start irq=N`, then `storm device irqs=N cycles=N` (or an error line after
//!    about 5 s).
//! 2. **IPI storm**: `storm ipi start`, then a self-IPI whose handler sends the next one:
//!    the vCPU does nothing but take interrupts, forever (IF is set only by `iretq`), printing
//!    `storm ipi n=N` every 256 interrupts. No `done`: the host stops the VM.
//!
//! Interrupts are enabled only inside `asm!` blocks that the compiler treats as using the
//! stack (no `nostack`), so the interrupt frame never lands in a red zone in use.

// Register values are cut to their width; the state is single-vCPU.
#![allow(clippy::cast_possible_truncation)]

use core::arch::{asm, global_asm};
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use super::blk::open;
use crate::arch::outb;
use crate::arch::rdtsc;
use crate::boot_info::BootInfo;
use crate::serial::Console;
use crate::virtio::blk::Blk;
use crate::virtio::ring::{DESC_F_NEXT, DESC_F_WRITE};
use crate::virtio::{REG_INTERRUPT_ACK, REG_INTERRUPT_STATUS};
use kiln_guest_boot::cmdline::param_num;
use kiln_guest_virtio::DeviceShared;

const VEC_DEVICE: u8 = 0x40;
const VEC_IPI: u8 = 0x41;
const VEC_SPURIOUS: u8 = 0xff;
const IOAPIC: u64 = 0xfec0_0000;
const LAPIC_DEFAULT: u64 = 0xfee0_0000;
const LAPIC_TPR: u64 = 0x80;
const LAPIC_EOI: u64 = 0xb0;
const LAPIC_SVR: u64 = 0xf0;
const LAPIC_ICR_LOW: u64 = 0x300;
const LAPIC_ICR_HIGH: u64 = 0x310;
const LAPIC_LVT_TIMER: u64 = 0x320;
const LAPIC_LVT_LINT0: u64 = 0x350;
const LAPIC_TIMER_INITIAL: u64 = 0x380;
const LAPIC_TIMER_DIVIDE: u64 = 0x3e0;
const VEC_TIMER: u8 = 0x42;
/// Fixed delivery, level assert, destination shorthand "self".
const ICR_SELF: u32 = 0x4_4000;
/// About 5 s at 2-3 GHz.
const DEVICE_WAIT: u64 = 12_500_000_000;

struct State {
    blk: Option<Blk>,
    lapic: u64,
    target: u64,
    device: u64,
    ipis: u64,
    other: u64,
}

static STATE: DeviceShared<State> = DeviceShared::new(State {
    blk: None,
    lapic: LAPIC_DEFAULT,
    target: 0,
    device: 0,
    ipis: 0,
    other: 0,
});

/// 256 interrupt gates of 16 bytes.
static IDT: DeviceShared<[u64; 512]> = DeviceShared::new([0; 512]);

global_asm!(
    r#"
    .macro KILN_STORM_STUB name, kind
    .global \name
\name:
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    mov edi, \kind
    call {handler}
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    iretq
    .endm

    KILN_STORM_STUB kiln_storm_device, 0
    KILN_STORM_STUB kiln_storm_ipi, 1
    KILN_STORM_STUB kiln_storm_other, 2

    .global kiln_storm_spurious
kiln_storm_spurious:
    iretq

    .global kiln_storm_exception
kiln_storm_exception:
    cli
    lea rsi, [rip + kiln_storm_exception_msg]
    mov dx, 0x3f8
2:
    lodsb
    test al, al
    jz 3f
    out dx, al
    jmp 2b
3:
    hlt
    jmp 3b

    .section .rodata
kiln_storm_exception_msg:
    .asciz "KILN-TINY: error storm exception\n"
    .text
"#,
    handler = sym kiln_storm_irq,
);

extern "C" {
    fn kiln_storm_device();
    fn kiln_storm_ipi();
    fn kiln_storm_other();
    fn kiln_storm_spurious();
    fn kiln_storm_exception();
}

fn state() -> *mut State {
    STATE.ptr()
}

fn lapic_write(reg: u64, value: u32) {
    // SAFETY: the local APIC page (in the uncached 3-4 GiB part of the identity map); an
    // aligned 32-bit write is handled by KVM's in-kernel APIC.
    unsafe {
        write_volatile(
            (read_volatile(addr_of!((*state()).lapic)) + reg) as *mut u32,
            value,
        )
    }
}

fn ioapic_write(reg: u32, value: u32) {
    // SAFETY: IOREGSEL and IOWIN of the IOAPIC (KVM's, in-kernel), in the uncached part of
    // the identity map.
    unsafe {
        write_volatile(IOAPIC as *mut u32, reg);
        write_volatile((IOAPIC + 0x10) as *mut u32, value);
    }
}

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reading IA32_APIC_BASE has no side effect.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Every interrupt of the scenario (called by the stubs, interrupts off).
#[no_mangle]
extern "C" fn kiln_storm_irq(kind: u64) {
    let s = state();
    match kind {
        0 => {
            // SAFETY: the state is only touched with interrupts off (here, or by the main
            // code outside its sti windows), on one vCPU.
            unsafe {
                let n = read_volatile(addr_of!((*s).device)) + 1;
                write_volatile(addr_of_mut!((*s).device), n);
                if let Some(b) = (*s).blk.as_mut() {
                    let pending = b.mmio.read(REG_INTERRUPT_STATUS);
                    b.mmio.write(REG_INTERRUPT_ACK, pending);
                    if n < read_volatile(addr_of!((*s).target)) {
                        b.ring.push(0);
                        b.mmio.notify(0);
                    }
                }
            }
            lapic_write(LAPIC_EOI, 0);
        }
        1 => {
            // SAFETY: as above.
            let n = unsafe {
                let n = read_volatile(addr_of!((*s).ipis)) + 1;
                write_volatile(addr_of_mut!((*s).ipis), n);
                n
            };
            if n % 256 == 0 {
                Console::new().line().s("storm ipi n=").dec(n).end();
            }
            lapic_write(LAPIC_EOI, 0);
            lapic_write(LAPIC_ICR_HIGH, 0);
            lapic_write(LAPIC_ICR_LOW, ICR_SELF | u32::from(VEC_IPI));
        }
        _ => {
            // SAFETY: as above.
            unsafe {
                let n = read_volatile(addr_of!((*s).other)) + 1;
                write_volatile(addr_of_mut!((*s).other), n);
            }
            lapic_write(LAPIC_EOI, 0);
        }
    }
}

fn set_gate(vector: usize, handler: unsafe extern "C" fn()) {
    let addr = handler as usize as u64;
    let low = (addr & 0xffff) | (0x08 << 16) | (0x8e00u64 << 32) | ((addr >> 16) & 0xffff) << 48;
    let high = addr >> 32;
    let idt = IDT.ptr().cast::<u64>();
    // SAFETY: in bounds of the 512-word table; not loaded yet (or only read by the CPU on
    // interrupts, which are off).
    unsafe {
        write_volatile(idt.add(vector * 2), low);
        write_volatile(idt.add(vector * 2 + 1), high);
    }
}

fn load_idt() {
    let base = IDT.ptr() as u64;
    let mut descriptor = [0u16; 5];
    descriptor[0] = 256 * 16 - 1;
    descriptor[1] = base as u16;
    descriptor[2] = (base >> 16) as u16;
    descriptor[3] = (base >> 32) as u16;
    descriptor[4] = (base >> 48) as u16;
    // SAFETY: `lidt` reads the 10-byte descriptor; the table it names is static and
    // complete (every vector has a gate).
    unsafe {
        asm!("lidt [{}]", in(reg) descriptor.as_ptr(), options(readonly, nostack, preserves_flags))
    }
}

pub fn run(info: &BootInfo, con: &mut Console) {
    let Some(mut b) = open(info, con) else { return };
    let irq = b.mmio.irq();
    for v in 0..32 {
        set_gate(v, kiln_storm_exception);
    }
    for v in 32..256 {
        set_gate(v, kiln_storm_other);
    }
    set_gate(usize::from(VEC_DEVICE), kiln_storm_device);
    set_gate(usize::from(VEC_IPI), kiln_storm_ipi);
    set_gate(usize::from(VEC_SPURIOUS), kiln_storm_spurious);
    load_idt();
    // The 8259s and LINT0 stay out of it; the local APIC is switched on.
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    let s = state();
    let target = param_num(info.cmdline, b"kiln.irqs", 1000);
    // SAFETY: interrupts are off; the state is ours.
    unsafe {
        write_volatile(addr_of_mut!((*s).lapic), rdmsr(0x1b) & 0xf_ffff_f000);
        write_volatile(addr_of_mut!((*s).target), target);
    }
    lapic_write(LAPIC_SVR, 0x100 | u32::from(VEC_SPURIOUS));
    lapic_write(LAPIC_TPR, 0);
    lapic_write(LAPIC_LVT_LINT0, 0x1_0700);
    // The timer: one-shot, vector 0x42 (counted as "other"), divide by 1.
    lapic_write(LAPIC_TIMER_DIVIDE, 0xb);
    lapic_write(LAPIC_LVT_TIMER, u32::from(VEC_TIMER));
    // The device's pin: vector 0x40, fixed, physical destination APIC 0, edge, unmasked.
    ioapic_write(0x11 + 2 * irq, 0);
    ioapic_write(0x10 + 2 * irq, u32::from(VEC_DEVICE));

    // The request re-posted by every completion: an unsupported type (UNSUPP, no disk I/O).
    Blk::prepare(0x7f, 0);
    b.ring.set_desc(0, Blk::header_addr(), 16, DESC_F_NEXT, 2);
    b.ring.set_desc(2, Blk::status_addr(), 1, DESC_F_WRITE, 0);
    con.line()
        .s("storm device start irq=")
        .dec(irq.into())
        .end();
    b.ring.push(0);
    b.mmio.notify(0);
    // SAFETY: interrupts are off; from now on the handler owns the device.
    unsafe { (*s).blk = Some(b) };
    let start = rdtsc();
    // SAFETY: as above; read between sti windows.
    while unsafe { read_volatile(addr_of!((*s).device)) } < target {
        if rdtsc().wrapping_sub(start) > DEVICE_WAIT {
            break;
        }
        // A wake-up in case no interrupt comes (a one-shot timer, ~0.1 s), then wait for
        // the next interrupt: `sti; hlt` takes one that is already pending (sti's shadow
        // covers the hlt), and halting lets the vCPU sleep instead of spinning.
        lapic_write(LAPIC_TIMER_INITIAL, 100_000_000);
        // SAFETY: a window for interrupts; the asm uses the stack as far as the compiler
        // knows (no `nostack`), so no red zone is live while a frame is pushed.
        unsafe { asm!("sti", "hlt", "cli") };
    }
    let cycles = rdtsc().wrapping_sub(start);
    // SAFETY: interrupts are off.
    let (device, other) = unsafe {
        (
            read_volatile(addr_of!((*s).device)),
            read_volatile(addr_of!((*s).other)),
        )
    };
    // The timer and the pin masked again: nothing but the IPIs in the next phase.
    lapic_write(LAPIC_TIMER_INITIAL, 0);
    lapic_write(LAPIC_LVT_TIMER, 0x1_0000);
    ioapic_write(0x10 + 2 * irq, 0x1_0000 | u32::from(VEC_DEVICE));
    if device < target {
        con.error()
            .s("storm device irqs=")
            .dec(device)
            .s(" of ")
            .dec(target)
            .end();
        return;
    }
    con.line()
        .s("storm device irqs=")
        .dec(device)
        .s(" cycles=")
        .dec(cycles)
        .s(" other=")
        .dec(other)
        .end();
    con.line().s("storm ipi start").end();
    lapic_write(LAPIC_ICR_HIGH, 0);
    lapic_write(LAPIC_ICR_LOW, ICR_SELF | u32::from(VEC_IPI));
    // SAFETY: from here the vCPU only takes interrupts; the loop never returns.
    unsafe { asm!("sti", "2:", "jmp 2b", options(noreturn)) }
}
