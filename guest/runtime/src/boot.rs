//! What the runtime learned at start, for the invocation loop: the boot information
//! (kiln-guest-boot's [`BootInfo`], read through [`crate::layout::IDENTITY_MAP`]) and the
//! TSC when ring 3 was entered. Both are written once by [`crate::start`] before the
//! function's glue runs, and only read afterwards.

use crate::global::Global;
use kiln_guest_boot::BootInfo;

/// TSC when ring 3 was entered (for `kiln.verbose` timings).
pub static START_TSC: Global<u64> = Global::new(0);

/// The boot information, read once at start.
pub static BOOT: Global<Option<BootInfo>> = Global::new(None);
