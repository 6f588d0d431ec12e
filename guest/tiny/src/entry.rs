//! The two ways in, the static page tables, the GDT, the stack and the PVH ELF note.
//!
//! * **Linux 64-bit entry** (`kiln_linux64_entry`, the ELF's `e_entry`): 64-bit long mode,
//!   paging on with an identity map set up by the VMM, `RSI` = physical address of the
//!   Linux `boot_params` zero page.
//! * **PVH entry** (`kiln_pvh_entry`, declared by the `XEN_ELFNOTE_PHYS32_ENTRY` note):
//!   32-bit protected mode with paging off, flat segments, `EBX` = physical address of
//!   `struct hvm_start_info`.
//!
//! Both print the start marker before anything else (a handful of instructions: the
//! serial port is written with plain `out`, no UART set-up), then switch onto the image's
//! own page tables (identity map of the low 4 GiB with 2 MiB pages, built at assembly
//! time, so no instruction is spent building them), its own GDT (0x08 = 64-bit code,
//! 0x10 = data) and its own stack, and call [`crate::kiln_tiny_main`] with the entry kind
//! and the boot-information pointer. Neither path writes memory outside the image.
//!
//! The guest is compiled without SSE (`-sse,-sse2`: the instruction emulator of some hosts
//! fails on SSE arithmetic such as `xorps`), and tests/build.rs audits the ELF for it. SSE
//! is nevertheless enabled on both paths (CR0.EM clear, CR0.MP, CR4.OSFXSR,
//! CR4.OSXMMEXCPT; three instructions) so that code built with SSE moves would still run.
//! CR0.CD and CR0.NW are cleared too (caching on), in case a VMM left their reset values.
//!
//! The long-mode switch of the PVH path, the page tables and the PVH note are built from
//! kiln-guest-boot's [`kiln_guest_boot::entry_asm!`], shared with the function runtime.

use core::arch::global_asm;
use kiln_guest_boot::{ENTRY_LINUX64, ENTRY_PVH};

/// Size of the guest's stack, inside the image.
pub const STACK_SIZE: usize = 16 * 1024;

// The selectors of the image's GDT.
// 0x08: 64-bit code, DPL 0 (accessed bit preset so that loading it writes nothing).
// 0x10: flat data, DPL 0.
global_asm!(
    kiln_guest_boot::entry_asm!(),
    r#"
    .set KILN_COM1, 0x3f8
    .set KILN_CS, 0x08
    .set KILN_DS, 0x10
    .set KILN_CR0_MP, 0x2
    .set KILN_CR0_EM_NW_CD, 0x60000004
    .set KILN_CR4_PAE_OSFXSR_OSXMMEXCPT, 0x620

    /* Writes the NUL-terminated string at \msg to COM1, one `out` per byte.
       Clobbers eax/rax, edx, esi/rsi. Works in 32- and 64-bit mode alike. */
    .macro KILN_EARLY_PUTS msg
        movl $\msg, %esi
        movw $KILN_COM1, %dx
    2:
        lodsb
        testb %al, %al
        jz 3f
        outb %al, %dx
        jmp 2b
    3:
    .endm

    .section .text.entry, "ax", @progbits

    /* ---- PVH entry: 32-bit protected mode, paging off, EBX = hvm_start_info ---- */
    .code32
    .globl kiln_pvh_entry
    .type kiln_pvh_entry, @function
kiln_pvh_entry:
    cld
    movl %ebx, %ebp
    KILN_EARLY_PUTS kiln_msg_start_pvh
    KILN_PVH_LONG_MODE kiln_pml4, kiln_gdt_ptr, KILN_CS, ebp, {entry_pvh}, kiln_common64, KILN_CR4_PAE_OSFXSR_OSXMMEXCPT, KILN_CR0_MP, KILN_CR0_EM_NW_CD
    .size kiln_pvh_entry, . - kiln_pvh_entry

    /* ---- Linux 64-bit entry: long mode, VMM's identity map, RSI = boot_params ---- */
    .globl kiln_linux64_entry
    .type kiln_linux64_entry, @function
kiln_linux64_entry:
    cld
    movq %rsi, %rbp
    KILN_EARLY_PUTS kiln_msg_start_linux64
    movq %cr4, %rax
    orq $KILN_CR4_PAE_OSFXSR_OSXMMEXCPT, %rax
    movq %rax, %cr4
    movl $kiln_pml4, %eax
    movq %rax, %cr3
    movq %cr0, %rax
    andq $~KILN_CR0_EM_NW_CD, %rax
    orq $KILN_CR0_MP, %rax
    movq %rax, %cr0
    lgdt kiln_gdt_ptr
    movq %rbp, %rsi
    movl ${entry_linux64}, %edi
    jmp kiln_common64
    .size kiln_linux64_entry, . - kiln_linux64_entry

    /* ---- common 64-bit path: EDI = entry kind, RSI = boot info pointer (the SysV
       argument registers of kiln_tiny_main) ---- */
kiln_common64:
    movl $kiln_stack_top, %esp
    pushq $KILN_CS
    pushq $4f
    lretq
4:
    movl $KILN_DS, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    xorl %eax, %eax
    movl %eax, %fs
    movl %eax, %gs
    call {main}
5:
    cli
    hlt
    jmp 5b

    .section .rodata.kiln_entry, "a", @progbits
kiln_msg_start_pvh:
    .asciz "KILN-TINY: start entry=pvh\n"
kiln_msg_start_linux64:
    .asciz "KILN-TINY: start entry=linux64\n"

    /* ---- GDT (in .data: the CPU may set accessed bits) ---- */
    .section .data.kiln_gdt, "aw", @progbits
    .p2align 4
kiln_gdt:
    .quad 0
    .quad KILN_GDT_CODE64
    .quad KILN_GDT_DATA
kiln_gdt_end:
    .p2align 3
kiln_gdt_ptr:
    .word kiln_gdt_end - kiln_gdt - 1
    .quad kiln_gdt

    /* ---- identity map of [0, 4 GiB) with 2 MiB pages ----
       Accessed/dirty bits are preset so that the CPU never writes the tables.
       The last GiB (0xC0000000..4 GiB: the 32-bit MMIO gap where virtio-mmio lives)
       is mapped PCD|PWT (uncached). */
    .section .data.pagetables, "aw", @progbits
    .globl kiln_pml4
    KILN_PAGE_ROOT kiln_pml4, kiln_pdpt, kiln_pd, KILN_PTE_P|KILN_PTE_RW|KILN_PTE_A
kiln_pd:
    KILN_PD_2M 0, KILN_PTE_P|KILN_PTE_RW|KILN_PTE_A|KILN_PTE_D|KILN_PTE_PS

    /* ---- stack ---- */
    .section .data.stack, "aw", @progbits
    .p2align 4
    .globl kiln_stack_bottom
kiln_stack_bottom:
    .fill {stack_size}, 1, 0
    .globl kiln_stack_top
kiln_stack_top:

    KILN_PVH_NOTE kiln_pvh_entry

    .text
"#,
    main = sym crate::kiln_tiny_main,
    entry_pvh = const ENTRY_PVH,
    entry_linux64 = const ENTRY_LINUX64,
    stack_size = const STACK_SIZE,
    options(att_syntax)
);
