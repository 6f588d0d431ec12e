//! Where everything lives in guest memory (physical = virtual: the page tables identity-map
//! [0, 4 GiB)).
//!
//! ```text
//! 0x000000 .. 0x001000   not mapped: a null pointer faults
//! 0x001000 .. 0x100000   the VMM's boot structures (boot_params or hvm_start_info, command
//!                        line, memory map), read at start, never written
//! 0x100000 .. image end  the image (< 2 MiB): code, data, page tables, GDT, TSS, IDT,
//!                        ring-0 stack, virtqueue rings
//! 0x200000 .. 0x201000   not mapped: stack guard page (an overflow is a page fault)
//! 0x201000 .. 0x3f0000   ring-3 stack (~1.9 MiB), growing down from STACK_TOP
//! 0x3f0000 .. 0x400000   fault stack: where a CPU exception of the function is reported
//! 0x400000 .. RAM end    heap (every allocation, the vsock buffers included), up to the end
//!                        of the RAM region of the memory map that contains HEAP_START
//! 0xc0000000.. 4 GiB     mapped uncached: virtio-mmio windows, IOAPIC, LAPIC
//! ```

/// The stack guard page (not present in the page tables).
pub const STACK_GUARD: u64 = 0x20_0000;
/// Top of the ring-3 stack (grows down to `STACK_GUARD + 4 KiB`).
pub const STACK_TOP: u64 = 0x3f_0000;
/// Top of the stack CPU exceptions of the function are reported on.
pub const FAULT_STACK_TOP: u64 = 0x40_0000;
/// First byte of the heap.
pub const HEAP_START: u64 = 0x40_0000;
/// End (exclusive) of the identity map: nothing at or above it is reachable.
pub const MAPPED_LIMIT: u64 = 1 << 32;
/// Start of the 32-bit MMIO gap (device windows, IOAPIC, LAPIC): RAM never extends past it.
pub const MMIO_GAP_START: u64 = 0xc000_0000;

/// The kernel code selector of the GDT (entry.rs), for IDT gates.
pub const KERNEL_CS: u64 = 0x08;
