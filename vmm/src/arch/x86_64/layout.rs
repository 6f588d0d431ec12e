//! Guest-physical addresses of everything the VMM places in the guest.
//!
//! Below 1 MiB, in this order: the boot GDT and IDT, the PVH start info (with its module list
//! and memory map), the Linux zero page, the boot stack, the identity-map page tables, the
//! kernel command line and the MP table (in the last KiB of base memory, where an SMP guest
//! looks for it). The kernel is loaded at 1 MiB ([`HIMEM_START`]); the initrd goes as high as
//! the kernel accepts. Nothing else of the VMM's lives at or above 1 MiB: a freestanding guest
//! loaded there may use the memory after its image freely.
//!
//! RAM is split around the 32-bit MMIO gap `[MMIO_GAP_START, 4 GiB)`, which holds the
//! virtio-mmio device windows, the PCI window, the IOAPIC, the LAPIC and KVM's TSS/identity-map pages.

/// Boot GDT: 5 descriptors (null, null, code, data, TSS); see [`super::gdt`].
pub const GDT_ADDR: u64 = 0x500;
/// Boot IDT: a single empty descriptor (the guest loads its own before enabling interrupts).
pub const IDT_ADDR: u64 = 0x540;

/// PVH `hvm_start_info`, passed in EBX to a PVH entry point.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH module list (one entry: the initrd).
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// PVH memory map (`hvm_memmap_table_entry` array).
pub const PVH_MEMMAP_ADDR: u64 = 0x6080;
/// Room for the PVH memory map: up to the zero page.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = ((ZERO_PAGE_ADDR - PVH_MEMMAP_ADDR) / 24) as usize;

/// Linux `boot_params` ("zero page"), passed in RSI to the 64-bit Linux entry.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;

/// Initial stack pointer of the boot vCPU for the 64-bit Linux entry (grows down to 0x8000).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;

/// Top-level page table (PML4) of the boot identity map.
pub const PML4_ADDR: u64 = 0x9000;
/// Page-directory-pointer table of the boot identity map.
pub const PDPT_ADDR: u64 = 0xa000;
/// First of [`IDENTITY_MAP_GIB`] page directories (2 MiB pages), one page each.
pub const PD_ADDR: u64 = 0xb000;
/// How much of the guest-physical space the boot page tables identity-map.
pub const IDENTITY_MAP_GIB: u64 = 4;

/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Longest command line, including its NUL (x86 Linux's COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;

/// MP floating pointer + configuration table: the last KiB of base memory (640 KiB), one of
/// the places the MP specification tells an OS to search.
pub const MPTABLE_ADDR: u64 = 0x9fc00;
/// End of the MP table area (start of the legacy VGA/BIOS hole).
pub const MPTABLE_END: u64 = 0xa0000;

/// Where the kernel is loaded and where "high memory" starts.
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO gap: no RAM between here and 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the 32-bit MMIO gap (exclusive): RAM continues here.
pub const MMIO_GAP_END: u64 = 1 << 32;

/// First virtio-mmio device window; each device gets [`MMIO_SLOT_SIZE`] bytes.
pub const MMIO_DEVICES_START: u64 = MMIO_GAP_START;
/// One virtio-mmio device window.
pub const MMIO_SLOT_SIZE: u64 = 0x1000;
/// End of the device windows: the PCI window.
pub const MMIO_DEVICES_END: u64 = PCI_MMIO_START;

/// The PCI window (`--enable-pci`): where the BARs of the PCI functions are placed, and
/// the only place they decode; up to the IOAPIC's page.
pub const PCI_MMIO_START: u64 = 0xe000_0000;
pub const PCI_MMIO_END: u64 = IOAPIC_ADDR;

/// A virtio-mmio device's window (from [`MMIO_DEVICES_START`]) and its IRQ (from
/// [`IRQ_DEVICES_START`]), as the device manager hands them out and the kernel command line
/// announces them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

/// In-kernel IOAPIC (KVM's default).
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// In-kernel LAPIC (architectural default).
pub const LAPIC_ADDR: u64 = 0xfee0_0000;

/// Start of device memory, past Firecracker's 64-bit MMIO window, at 512 GiB (its
/// `FIRST_ADDR_PAST_64BITS_MMIO`, so that a guest sees the same physical addresses on both
/// VMMs): the virtio-mem hot-plug region, then each virtio-pmem device's region (aligned to
/// [`PMEM_ALIGNMENT`], in configuration order). None of it is in the e820 map: the drivers
/// find it in their device's configuration space.
pub const DEVICE_MEMORY_START: u64 = 512 << 30;
/// Alignment of a virtio-pmem region's address and size (2 MiB, as Linux's pmem driver
/// needs for huge-page DAX mappings and Firecracker uses).
pub const PMEM_ALIGNMENT: u64 = 2 << 20;

/// KVM's identity-map page (needed by KVM for real-mode guests on Intel), inside the gap.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
/// KVM's three TSS pages, right after the identity-map page.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;

/// Legacy IRQ (= GSI on the in-kernel IOAPIC) of the i8042 keyboard controller.
pub const IRQ_I8042: u32 = 1;
/// Legacy IRQ of COM1.
pub const IRQ_COM1: u32 = 4;
/// First IRQ handed to virtio-mmio devices.
pub const IRQ_DEVICES_START: u32 = 5;
/// Last IRQ handed to virtio-mmio devices (the IOAPIC has 24 pins).
pub const IRQ_DEVICES_END: u32 = 23;

/// COM1's I/O ports.
pub const COM1_PORT: u16 = 0x3f8;
/// i8042 data port; the command/status port is [`I8042_COMMAND_PORT`].
pub const I8042_DATA_PORT: u16 = 0x60;
/// i8042 command/status port.
pub const I8042_COMMAND_PORT: u16 = 0x64;

/// `addr` as a 32-bit value, for the boot structures' 32-bit fields. Used on constants in
/// `const` context, so a layout change that moves one above 4 GiB fails the build.
#[allow(clippy::cast_possible_truncation)]
pub const fn addr32(addr: u64) -> u32 {
    assert!(addr <= u32::MAX as u64, "address does not fit in 32 bits");
    addr as u32
}

/// The RAM ranges `(start, length)` of a guest with `mem_size` bytes: one range below the
/// MMIO gap, and a second one from 4 GiB when the memory does not fit below it.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    let low = mem_size.min(MMIO_GAP_START);
    let mut ranges = vec![(0, low)];
    if mem_size > low {
        ranges.push((MMIO_GAP_END, mem_size - low));
    }
    ranges
}

/// End (exclusive) of the RAM below the MMIO gap.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(low_ram_end(128 << 20), 128 << 20);
    }

    #[test]
    fn memory_up_to_the_gap_is_one_range() {
        assert_eq!(ram_ranges(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
    }

    #[test]
    fn large_memory_is_split_around_the_gap() {
        let size = 8u64 << 30;
        let r = ram_ranges(size);
        assert_eq!(
            r,
            vec![(0, MMIO_GAP_START), (1 << 32, size - MMIO_GAP_START)]
        );
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), size);
        assert_eq!(low_ram_end(size), MMIO_GAP_START);
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        // (start, end) of every fixed structure below 1 MiB, in address order.
        let areas = [
            (GDT_ADDR, GDT_ADDR + 5 * 8),
            (IDT_ADDR, IDT_ADDR + 8),
            (PVH_INFO_ADDR, PVH_MODLIST_ADDR),
            (PVH_MODLIST_ADDR, PVH_MEMMAP_ADDR),
            (
                PVH_MEMMAP_ADDR,
                PVH_MEMMAP_ADDR + 24 * PVH_MEMMAP_MAX_ENTRIES as u64,
            ),
            (ZERO_PAGE_ADDR, ZERO_PAGE_ADDR + 0x1000),
            (0x8000, BOOT_STACK_POINTER + 0x10),
            (PML4_ADDR, PML4_ADDR + 0x1000),
            (PDPT_ADDR, PDPT_ADDR + 0x1000),
            (PD_ADDR, PD_ADDR + IDENTITY_MAP_GIB * 0x1000),
            (CMDLINE_ADDR, CMDLINE_ADDR + CMDLINE_MAX_SIZE as u64),
            (MPTABLE_ADDR, MPTABLE_END),
        ];
        for w in areas.windows(2) {
            assert!(w[0].1 <= w[1].0, "{:#x?} overlaps {:#x?}", w[0], w[1]);
        }
        assert!(areas.iter().all(|a| a.1 <= HIMEM_START));
    }

    #[test]
    fn device_windows_and_kvm_pages_are_in_the_gap() {
        const {
            assert!(MMIO_DEVICES_START >= MMIO_GAP_START && MMIO_DEVICES_END <= MMIO_GAP_END);
            assert!(
                KVM_IDENTITY_MAP_ADDR >= MMIO_GAP_START && KVM_TSS_ADDR + 0x3000 <= MMIO_GAP_END
            );
            assert!(KVM_IDENTITY_MAP_ADDR + 0x1000 <= KVM_TSS_ADDR);
            assert!(LAPIC_ADDR > IOAPIC_ADDR && LAPIC_ADDR < KVM_IDENTITY_MAP_ADDR);
        }
    }
}
