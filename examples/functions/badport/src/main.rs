//! badport: writes to I/O port 0x1234, where no device lives. A VMM in strict-I/O mode
//! (`vmm --strict-io`, as the worker runs function images) stops the VM there; a lenient VMM
//! ignores the write, and the function then answers `{"survived":true}`.
//!
//! The runtime allows every port at CPL 3 (its TSS I/O permission bitmap is all zeros), so the
//! write reaches the VMM instead of faulting in the guest: the VMM, not the guest, is what
//! enforces the policy.

#![no_std]
#![no_main]

use core::arch::asm;
use kiln_runtime::prelude::*;

kiln_runtime::function!(handle);

/// A port no Kiln, Firecracker or QEMU device answers.
const PORT: u16 = 0x1234;

fn handle(_event: &[u8]) -> Result<Vec<u8>, String> {
    // SAFETY: `out` touches no memory; at CPL 3 it is allowed by the runtime's I/O permission
    // bitmap, so the only effect is the VMM's response to the write.
    unsafe { asm!("out dx, al", in("dx") PORT, in("al") 0x4bu8, options(nomem, nostack)) };
    Ok(b"{\"survived\":true}".to_vec())
}
