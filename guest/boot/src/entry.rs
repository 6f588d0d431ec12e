//! The two ways into a freestanding guest, and the assembly its entry stubs share.
//!
//! * **Linux 64-bit entry** (the ELF's `e_entry`): long mode, paging on with an identity map
//!   set up by the VMM, `RSI` = physical address of the Linux `boot_params` zero page.
//! * **PVH entry** (declared by the `XEN_ELFNOTE_PHYS32_ENTRY` ELF note): 32-bit protected
//!   mode with paging off, flat segments, `EBX` = physical address of `struct
//!   hvm_start_info`.
//!
//! Each guest writes its own stubs (what they print, which rings they set up and where they
//! go differ), passes its Rust code the raw entry kind ([`ENTRY_LINUX64`] or [`ENTRY_PVH`]),
//! and builds the parts that are the same for every guest from [`entry_asm!`].

/// Raw entry kind the stubs pass for the Linux 64-bit entry.
pub const ENTRY_LINUX64: u32 = 0;
/// Raw entry kind the stubs pass for the PVH entry.
pub const ENTRY_PVH: u32 = 1;

/// End (exclusive) of the identity map built by [`entry_asm!`]'s page-table macros:
/// [0, 4 GiB).
pub const IDENTITY_MAP_END: u64 = 1 << 32;
/// Start of the 32-bit MMIO gap, which those page tables map uncached up to
/// [`IDENTITY_MAP_END`]: the place for device windows (virtio-mmio, IOAPIC, LAPIC); the VMMs
/// put no RAM there.
pub const MMIO_GAP_START: u64 = 0xc000_0000;

/// How the guest was entered.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Entry {
    Linux64,
    Pvh,
}

impl Entry {
    /// The entry's name, as the guests print it (`linux64`, `pvh`).
    pub fn name(self) -> &'static str {
        match self {
            Entry::Linux64 => "linux64",
            Entry::Pvh => "pvh",
        }
    }

    /// The entry of a raw kind passed by the stubs; `None` for any other value.
    pub fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            ENTRY_LINUX64 => Some(Entry::Linux64),
            ENTRY_PVH => Some(Entry::Pvh),
            _ => None,
        }
    }
}

/// Assembly (AT&T syntax) shared by the guests' entry stubs: constants and GNU-as macros,
/// as one string literal to put first in the guest's `global_asm!` (which takes several
/// template strings). It defines no symbol and emits nothing by itself:
///
/// * `KILN_PVH_LONG_MODE pml4, gdt_ptr, cs, info, kind, common, cr4_set, cr0_set,
///   cr0_clear=0` — from 32-bit protected mode with paging off (the PVH entry) to 64-bit
///   code: CR4 |= PAE | `cr4_set`, CR3 = `pml4`, EFER.LME, CR0 &= ~`cr0_clear` (no
///   instruction when 0), CR0 |= PG | PE | `cr0_set`, `lgdt gdt_ptr`, a far jump into code
///   segment `cs` (label `kiln_pvh_long`), then ESI = the 32-bit register `info` (where the
///   stub kept `hvm_start_info`; 32-bit moves clear the upper halves, which are undefined
///   after the switch), EDI = `kind` and a jump to `common`, the guest's 64-bit path.
///   Clobbers EAX, ECX, EDX.
/// * `KILN_PAGE_ROOT pml4, pdpt, pd, flags` — the root of an identity map of [0, 4 GiB): a
///   page-aligned PML4 at label `pml4` whose first entry points to a PDPT at label `pdpt`,
///   whose four entries point to four page directories from `pd` (4 KiB apart; the caller
///   defines them right after), every entry with `flags`.
/// * `KILN_PD_2M first, flags` — page-directory entries `first` to 2047 of that map: 2 MiB
///   pages with `flags` (which must include `KILN_PTE_PS`), write-back below 3 GiB and
///   uncached (PCD | PWT) from 3 GiB, the MMIO gap of virtio-mmio windows, IOAPIC and
///   LAPIC. Entries below `first` are the caller's (4 KiB page tables).
/// * `KILN_PVH_NOTE entry` — the ELF note that makes `entry` the PVH entry (owner "Xen",
///   type `XEN_ELFNOTE_PHYS32_ENTRY` = 18) in section `.note.Xen`, with an 8-byte
///   descriptor like Linux's: QEMU 7.2 reads a `size_t` there, newer QEMU and linux-loader
///   the low 4 bytes.
/// * Constants: `KILN_MSR_EFER`, `KILN_EFER_LME`, `KILN_CR4_PAE`, `KILN_CR0_PE`,
///   `KILN_CR0_PG`, the page-table entry bits `KILN_PTE_{P,RW,US,PWT,PCD,A,D,PS}`, and the
///   flat GDT descriptors `KILN_GDT_CODE64` (64-bit code, DPL 0) and `KILN_GDT_DATA` (data,
///   DPL 0), both with the accessed bit preset so that loading them writes nothing.
///
/// Accessed and dirty bits are preset in the page tables built from these macros, so the
/// CPU never writes them.
#[macro_export]
macro_rules! entry_asm {
    () => {
        r#"
    .set KILN_MSR_EFER, 0xc0000080
    .set KILN_EFER_LME, 0x100
    .set KILN_CR4_PAE, 0x20
    .set KILN_CR0_PE, 0x1
    .set KILN_CR0_PG, 0x80000000

    .set KILN_PTE_P, 0x1
    .set KILN_PTE_RW, 0x2
    .set KILN_PTE_US, 0x4
    .set KILN_PTE_PWT, 0x8
    .set KILN_PTE_PCD, 0x10
    .set KILN_PTE_A, 0x20
    .set KILN_PTE_D, 0x40
    .set KILN_PTE_PS, 0x80

    .set KILN_GDT_CODE64, 0x00af9b000000ffff
    .set KILN_GDT_DATA, 0x00cf93000000ffff

    .macro KILN_PVH_LONG_MODE pml4, gdt_ptr, cs, info, kind, common, cr4_set, cr0_set, cr0_clear=0
    movl %cr4, %eax
    orl $(KILN_CR4_PAE | (\cr4_set)), %eax
    movl %eax, %cr4
    movl $\pml4, %eax
    movl %eax, %cr3
    movl $KILN_MSR_EFER, %ecx
    rdmsr
    orl $KILN_EFER_LME, %eax
    wrmsr
    movl %cr0, %eax
    .if \cr0_clear
    andl $~(\cr0_clear), %eax
    .endif
    orl $(KILN_CR0_PG | KILN_CR0_PE | (\cr0_set)), %eax
    movl %eax, %cr0
    lgdt \gdt_ptr
    ljmp $\cs, $kiln_pvh_long
    .code64
kiln_pvh_long:
    movl %\info, %esi
    movl $\kind, %edi
    jmp \common
    .endm

    .macro KILN_PAGE_ROOT pml4, pdpt, pd, flags
    .p2align 12
\pml4:
    .quad \pdpt + (\flags)
    .fill 511, 8, 0
\pdpt:
    .quad \pd + 0x0000 + (\flags)
    .quad \pd + 0x1000 + (\flags)
    .quad \pd + 0x2000 + (\flags)
    .quad \pd + 0x3000 + (\flags)
    .fill 508, 8, 0
    .endm

    .macro KILN_PD_2M first, flags
    .set kiln_pa, (\first) * 0x200000
    .rept 1536 - (\first)
    .quad kiln_pa + (\flags)
    .set kiln_pa, kiln_pa + 0x200000
    .endr
    .rept 512
    .quad kiln_pa + (\flags) + KILN_PTE_PCD + KILN_PTE_PWT
    .set kiln_pa, kiln_pa + 0x200000
    .endr
    .endm

    .macro KILN_PVH_NOTE entry
    .pushsection .note.Xen, "a", @note
    .p2align 2
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .p2align 2
    .quad \entry
    .p2align 2
    .popsection
    .endm
"#
    };
}
