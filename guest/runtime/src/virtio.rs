//! Which virtio-mmio devices the runtime drives: kiln-guest-virtio's transport, on the
//! command line's `virtio_mmio.device=<size>@<base>:<irq>` entries (the VMM adds one per
//! device) whose registers lie in the uncached MMIO gap. Polled from ring 3, with the
//! device's interrupt used only to wake the vCPU. Each register access is one MMIO exit, the
//! dominant cost of bringing a device up, so the driver uses the transport's short
//! hand-shake for a device fresh from the VMM, performed in one ring-0 batch
//! ([`crate::arch::perform_in_ring0`]) that starts by checking the device id.

use crate::layout::{MAPPED_LIMIT, MMIO_GAP_START};
use kiln_guest_virtio::{discover, Mmio};

/// Most acceptable device entries looked at.
const MAX_DEVICES: usize = 32;

/// The command line's acceptable device windows, in order, at most [`MAX_DEVICES`]: no
/// register is read here. The driver checks the device id as the first access of its
/// start-up batch (neither the magic value nor the version is read: the VMM's command line
/// names the windows, a window with no device reads 0, and a version-1 device refuses
/// VERSION_1, which the driver reports).
pub fn candidates(cmdline: &[u8]) -> impl Iterator<Item = Mmio> + '_ {
    discover::entries(cmdline)
        .filter(|e| e.registers_in(MMIO_GAP_START, MAPPED_LIMIT))
        .take(MAX_DEVICES)
        // SAFETY: the window starts in the MMIO gap [3 GiB, 4 GiB), which entry.rs's page
        // tables map uncached and where no RAM the runtime uses lies (the heap ends below
        // MMIO_GAP_START, the image and stacks below 4 MiB); past 4 GiB nothing is mapped (an
        // access faults).
        .map(|e| unsafe { Mmio::new(e.base, e.irq) })
}
