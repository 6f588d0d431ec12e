//! How Kiln's freestanding guests get in and what they are told at boot, written once for the
//! tiny test guest (guest/tiny) and the function runtime (guest/runtime).
//!
//! * [`entry`]: the two ways in ([`Entry`]: Linux 64-bit and PVH, and the raw kinds the
//!   entry stubs pass) and [`entry_asm!`], the assembly both guests' entry stubs are built
//!   from: the PVH switch to long mode, the identity page tables of [0, 4 GiB) and the PVH
//!   ELF note.
//! * [`phys`]: [`IdentityMap`], checked reads of physical memory the guest does not own.
//! * [`info`]: [`BootInfo`], the command line and memory map of either protocol, with every
//!   problem found reported to the caller ([`Problem`]).
//! * [`cmdline`]: the command line's `key=value` words and numbers.
//!
//! Nothing here knows a VMM: the guests are tests and clients of VMMs, never built on one.
//! The crate is `no_std`, allocation-free and has no dependencies; it is compiled with the
//! guests' rustflags (no SSE) by their nested cargo (guest/builder).

#![no_std]

pub mod cmdline;
pub mod entry;
pub mod info;
pub mod phys;

pub use entry::{Entry, ENTRY_LINUX64, ENTRY_PVH, IDENTITY_MAP_END, MMIO_GAP_START};
pub use info::{BootInfo, MemRegion, Problem, E820_RAM};
pub use phys::IdentityMap;
