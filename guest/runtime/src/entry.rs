//! The ring-0 part of the runtime: the two boot entries, the static page tables, GDT, TSS and
//! IDT stubs, and the switch to ring 3. Everything here is assembly and runs emulated on hosts
//! whose KVM emulates guest ring 0 (~1 µs per instruction), so it is kept to a few dozen
//! instructions per boot and per wait.
//!
//! * **Linux 64-bit entry** (`kiln_linux64_entry`, the ELF's `e_entry`): long mode, the VMM's
//!   identity map, `RSI` = physical address of `boot_params`.
//! * **PVH entry** (`kiln_pvh_entry`, `XEN_ELFNOTE_PHYS32_ENTRY` note): 32-bit protected mode,
//!   paging off, `EBX` = physical address of `hvm_start_info`; it enables PAE, long mode and
//!   paging first.
//!
//! Both then load the image's page tables, GDT, IDT and TSS and `iretq` to
//! [`crate::start::kiln_user_start`] at CPL 3 with `IF = 0`, `IOPL = 0`: from then on the
//! runtime and the function run in ring 3, natively. Port I/O works there through the TSS's
//! I/O permission bitmap (every port allowed: the VMM decides what a port write does), MMIO is
//! an ordinary memory access that exits to the VMM. Ring 0 is entered again only through the
//! IDT:
//!
//! * `#GP` on a `hlt` at CPL 3 is the runtime's "wait for an interrupt" call: the handler
//!   does `sti; hlt; cli` and returns after the `hlt` (12 instructions, plus 5 for the
//!   interrupt's own handler, which sends the LAPIC an EOI).
//! * `#GP` on a `cli` at CPL 3 is the runtime's "perform these register accesses" call
//!   ([`crate::arch::perform_in_ring0`]): the start-up's LAPIC, IOAPIC and virtio-vsock
//!   set-up, ~15 emulated instructions per access instead of one exit from ring 3 each; and
//!   the driver's sleeps (a notification, the LAPIC timer armed, the wait, the timer
//!   disarmed) in one trap.
//! * Any other CPU exception at CPL 3 returns to ring 3 at [`crate::fault::kiln_user_fault`]
//!   on the fault stack, with the vector, error code, RIP and CR2 as arguments, so that it is
//!   reported to the host as a structured error. A second one while that runs, or an
//!   exception in ring 0, resets the VM (i8042).
//!
//! GDT: 0x08 64-bit code DPL 0, 0x10 data DPL 0, 0x18 data DPL 3, 0x20 64-bit code DPL 3,
//! 0x28 the 64-bit TSS (16 bytes; its base is filled in by the linker, see link.ld).
//!
//! Page tables (built at assembly time, accessed/dirty bits preset so that the CPU never
//! writes them): identity map of [0, 4 GiB), every page user-accessible, 2 MiB pages except
//! [0, 2 MiB) and [2 MiB, 4 MiB), which use 4 KiB pages so that page 0 (null) and the stack
//! guard page at 2 MiB can be left out; 3-4 GiB (MMIO) is uncached.
//!
//! The long-mode switch of the PVH path, the page directories and the PVH note are built
//! from kiln-guest-boot's [`kiln_guest_boot::entry_asm!`], shared with the tiny test guest.
//! The symbols the IDT is filled with are declared in [`crate::idt`].

use crate::layout::{FAULT_STACK_TOP, STACK_GUARD, STACK_TOP};
use core::arch::global_asm;
use kiln_guest_boot::{ENTRY_LINUX64, ENTRY_PVH};

global_asm!(
    kiln_guest_boot::entry_asm!(),
    kiln_guest_virtio::batch_asm!(),
    r#"
    .set KILN_KCODE, 0x08
    .set KILN_UDATA, 0x1b
    .set KILN_UCODE, 0x23
    .set KILN_TSS_SEL, 0x28
    .set KILN_RFLAGS_USER, 0x2
    .set KILN_LAPIC_EOI, 0xfee000b0

    .section .text.entry, "ax", @progbits

    /* ---- PVH entry: 32-bit protected mode, paging off, EBX = hvm_start_info ---- */
    .code32
    .globl kiln_pvh_entry
    .type kiln_pvh_entry, @function
kiln_pvh_entry:
    movl %ebx, %esi
    KILN_PVH_LONG_MODE kiln_pml4, kiln_gdt_ptr, KILN_KCODE, esi, {entry_pvh}, kiln_common64, 0, 0
    .size kiln_pvh_entry, . - kiln_pvh_entry

    /* ---- Linux 64-bit entry: long mode, VMM's identity map, RSI = boot_params ---- */
    .globl kiln_linux64_entry
    .type kiln_linux64_entry, @function
kiln_linux64_entry:
    movl $kiln_pml4, %eax
    movq %rax, %cr3
    lgdt kiln_gdt_ptr
    movl ${entry_linux64}, %edi

    /* ---- both: IDT, TSS, then ring 3 with EDI = entry kind, RSI = boot information ---- */
kiln_common64:
    lidt kiln_idt_ptr
    movl $KILN_TSS_SEL, %eax
    ltr %ax
    movl $kiln_stack0_top, %esp
    pushq $KILN_UDATA
    pushq ${stack_top}
    pushq $KILN_RFLAGS_USER
    pushq $KILN_UCODE
    pushq ${user_start}
    iretq
    .size kiln_linux64_entry, . - kiln_linux64_entry

    /* ---- #GP (vector 13). Frame: error code, RIP, CS, RFLAGS, RSP, SS. Two privileged
       instructions executed at CPL 3 are calls into ring 0; anything else is a fault.
       `hlt` (0xf4): wait for an interrupt: enable interrupts and halt (the interrupt's
       handler runs and returns after the `hlt`), then return after the guest's `hlt`,
       interrupts off again.
       `cli` (0xfa) with EDX = KILN_BATCH_MAGIC: perform the batch of register accesses at
       RDI (RSI entries of 24 bytes; kiln-guest-virtio's `kiln_perform_regops`: write, read,
       read and check, wait as above), return after the `cli` with RAX = how many were
       performed, every other register preserved. A `cli` without the magic (the
       function's own code) is a fault like any other. ---- */
    .p2align 4
    .globl kiln_isr_gp
kiln_isr_gp:
    pushq %rax
    movq 16(%rsp), %rax
    cmpb $0xf4, (%rax)
    je kiln_gp_wait
    cmpb $0xfa, (%rax)
    jne 1f
    cmpl ${batch_magic}, %edx
    jne 1f
    incq %rax
    movq %rax, 16(%rsp)
    addq $16, %rsp
    call kiln_perform_regops
    iretq
kiln_gp_wait:
    incq %rax
    movq %rax, 16(%rsp)
    popq %rax
    addq $8, %rsp
    sti
    hlt
    cli
    iretq
1:
    popq %rax
    pushq $13
    jmp kiln_fault_common

    /* ---- device / timer interrupt: EOI, return ---- */
    .p2align 4
    .globl kiln_isr_eoi
kiln_isr_eoi:
    pushq %rax
    movl $KILN_LAPIC_EOI, %eax
    movl $0, (%rax)
    popq %rax
    iretq

    .p2align 4
    .globl kiln_isr_spurious
kiln_isr_spurious:
    iretq

    /* ---- exceptions 0-31 (13 has its own handler above): push a zero error code when the
       CPU pushes none, push the vector, go to the common path. Each stub is 16 bytes. ---- */
    .p2align 4
    .globl kiln_exception_stubs
kiln_exception_stubs:
    .set kiln_vec, 0
    .rept 32
    .p2align 4
    .if (kiln_vec == 8) || (kiln_vec == 10) || (kiln_vec == 11) || (kiln_vec == 12) || (kiln_vec == 13) || (kiln_vec == 14) || (kiln_vec == 17) || (kiln_vec == 21) || (kiln_vec == 29) || (kiln_vec == 30)
    pushq $kiln_vec
    .else
    pushq $0
    pushq $kiln_vec
    .endif
    jmp kiln_fault_common
    .set kiln_vec, kiln_vec + 1
    .endr

    /* Frame: vector, error code, RIP, CS, RFLAGS, RSP, SS. From CPL 3 (the first time):
       return to ring 3 at the fault reporter, on the fault stack, with
       (vector, error code, RIP, CR2) as its arguments. */
kiln_fault_common:
    testb $3, 24(%rsp)
    jz kiln_fault_fatal
    cmpb $0, kiln_faulting
    jne kiln_fault_fatal
    movb $1, kiln_faulting
    popq %rdi
    popq %rsi
    popq %rdx
    movq %cr2, %rcx
    movl $kiln_stack0_top, %esp
    pushq $KILN_UDATA
    pushq ${fault_stack_top}
    pushq $KILN_RFLAGS_USER
    pushq $KILN_UCODE
    pushq ${user_fault}
    iretq

    /* An exception in ring 0, or while a fault is being reported: nothing can be reported
       safely. i8042 reset (the VMM stops the VM), then halt forever. */
kiln_fault_fatal:
    movl $kiln_msg_fatal, %esi
    movw $0x3f8, %dx
3:
    lodsb
    testb %al, %al
    jz 4f
    outb %al, %dx
    jmp 3b
4:
    /* the vector, two hex digits, and a newline */
    movq (%rsp), %rcx
    movl %ecx, %eax
    shrb $4, %al
    call kiln_put_hex
    movl %ecx, %eax
    call kiln_put_hex
    movb $0x0a, %al
    outb %al, %dx
    movb $0xfe, %al
    outb %al, $0x64
2:
    cli
    hlt
    jmp 2b

    /* ---- GDT, GDT pointer, IDT pointer, TSS with its I/O permission bitmap ---- */
kiln_put_hex:
    andb $0xf, %al
    addb $0x30, %al
    cmpb $0x39, %al
    jbe 5f
    addb $0x27, %al
5:
    outb %al, %dx
    ret

    .section .rodata.kiln_entry, "a", @progbits
kiln_msg_fatal:
    .asciz "KILN-RT: error exception in ring 0 or while reporting a fault, vector=0x"

    .section .data.kiln_tables, "aw", @progbits
    .p2align 4
kiln_gdt:
    .quad 0
    .quad KILN_GDT_CODE64       /* 0x08 code, DPL 0, long mode */
    .quad KILN_GDT_DATA         /* 0x10 data, DPL 0 */
    .quad 0x00cff3000000ffff    /* 0x18 data, DPL 3 */
    .quad 0x00affb000000ffff    /* 0x20 code, DPL 3, long mode */
    /* 0x28: available 64-bit TSS, base from the linker (link.ld) */
    .word kiln_tss_end - kiln_tss - 1
    .word kiln_tss_base_0_15
    .byte kiln_tss_base_16_23
    .byte 0x89
    .byte 0x00
    .byte kiln_tss_base_24_31
    .long 0
    .long 0
kiln_gdt_end:
    .p2align 3
kiln_gdt_ptr:
    .word kiln_gdt_end - kiln_gdt - 1
    .quad kiln_gdt
    .p2align 3
kiln_idt_ptr:
    .word 4095
    .quad kiln_idt

    .p2align 4
    .globl kiln_tss
kiln_tss:
    .long 0
    .quad kiln_stack0_top       /* RSP0: the stack of every ring-3 -> ring-0 transition */
    .fill 88, 1, 0
    .word 0
    .word kiln_iomap - kiln_tss /* I/O permission bitmap offset */
kiln_iomap:
    .fill 8192, 1, 0            /* every port allowed at CPL 3 */
    .byte 0xff
kiln_tss_end:

    /* Set by the fault path; a second exception while it is set resets the VM. */
    .globl kiln_faulting
kiln_faulting:
    .byte 0

    .p2align 12
    .globl kiln_idt
kiln_idt:
    .fill 4096, 1, 0

    /* ---- page tables ---- */
    .section .data.kiln_pagetables, "aw", @progbits
    .set KILN_TABLE, KILN_PTE_P|KILN_PTE_RW|KILN_PTE_US|KILN_PTE_A
    KILN_PAGE_ROOT kiln_pml4, kiln_pdpt, kiln_pd, KILN_TABLE
kiln_pd:
    .quad kiln_pt_low + KILN_TABLE
    .quad kiln_pt_stack + KILN_TABLE
    KILN_PD_2M 2, KILN_TABLE|KILN_PTE_D|KILN_PTE_PS
    /* [0, 2 MiB) in 4 KiB pages, page 0 absent */
kiln_pt_low:
    .quad 0
    .set kiln_pa, 0x1000
    .rept 511
    .quad kiln_pa + (KILN_TABLE|KILN_PTE_D)
    .set kiln_pa, kiln_pa + 0x1000
    .endr
    /* [2 MiB, 4 MiB) in 4 KiB pages, the guard page at 2 MiB absent */
kiln_pt_stack:
    .quad 0
    .set kiln_pa, {stack_guard} + 0x1000
    .rept 511
    .quad kiln_pa + (KILN_TABLE|KILN_PTE_D)
    .set kiln_pa, kiln_pa + 0x1000
    .endr

    /* ---- ring-0 stack (interrupt and exception frames only) ---- */
    .section .data.kiln_stack0, "aw", @progbits
    .p2align 4
kiln_stack0:
    .fill 4096, 1, 0
kiln_stack0_top:

    KILN_PVH_NOTE kiln_pvh_entry

    .text
"#,
    user_start = sym crate::start::kiln_user_start,
    batch_magic = const crate::arch::BATCH_MAGIC,
    user_fault = sym crate::fault::kiln_user_fault,
    entry_pvh = const ENTRY_PVH,
    entry_linux64 = const ENTRY_LINUX64,
    stack_top = const STACK_TOP,
    fault_stack_top = const FAULT_STACK_TOP,
    stack_guard = const STACK_GUARD,
    options(att_syntax)
);
