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

use kiln_guest_boot::IdentityMap;

/// The stack guard page (not present in the page tables).
pub const STACK_GUARD: u64 = 0x20_0000;
/// Top of the ring-3 stack (grows down to `STACK_GUARD + 4 KiB`).
pub const STACK_TOP: u64 = 0x3f_0000;
/// Top of the stack CPU exceptions of the function are reported on.
pub const FAULT_STACK_TOP: u64 = 0x40_0000;
/// First byte of the heap.
pub const HEAP_START: u64 = 0x40_0000;
/// End (exclusive) of the identity map: nothing at or above it is reachable.
pub const MAPPED_LIMIT: u64 = kiln_guest_boot::IDENTITY_MAP_END;
/// Start of the 32-bit MMIO gap (device windows, IOAPIC, LAPIC): RAM never extends past it.
pub const MMIO_GAP_START: u64 = kiln_guest_boot::MMIO_GAP_START;

/// What the page tables map, for reads of memory the runtime does not own (boot
/// information): [4 KiB, 4 GiB) without the stack guard page.
// SAFETY: entry.rs's page tables map exactly that at the same address, readable (every page
// is present and user-accessible but page 0 and the guard page), and never change; what the
// runtime reads through it is the VMM's boot structures below 1 MiB, which no Rust object
// lives in; the runtime runs on one vCPU.
pub const IDENTITY_MAP: IdentityMap =
    unsafe { IdentityMap::new(0x1000, MAPPED_LIMIT, STACK_GUARD..STACK_GUARD + 0x1000) };
