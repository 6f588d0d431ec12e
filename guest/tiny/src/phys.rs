//! The guest's view of physical memory: entry.rs's page tables identity-map [0, 4 GiB), so a
//! physical address below [`MAPPED_LIMIT`] is also a valid virtual address. Reads of memory
//! the guest did not allocate (boot information, the command line, firmware tables) go
//! through [`MAP`], which checks each against that range (and against address 0, which the
//! boot protocols use for "absent") and returns `None` instead of faulting.

use kiln_guest_boot::IdentityMap;

/// End (exclusive) of the identity map built by `entry.rs`.
pub const MAPPED_LIMIT: u64 = 1 << 32;

/// Everything but address 0 below [`MAPPED_LIMIT`].
// SAFETY: entry.rs's page tables map [0, 4 GiB) at the same address, readable, for as long as
// the guest runs (it never changes them); what the guest reads through the map is the VMM's
// boot structures and firmware tables, RAM or MMIO that no Rust object of the guest lives in
// (the image's statics are never the target of these reads); the guest runs on one vCPU.
pub const MAP: IdentityMap = unsafe { IdentityMap::new(1, MAPPED_LIMIT, 0..0) };
