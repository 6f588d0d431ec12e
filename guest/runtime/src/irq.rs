//! Interrupts: the in-kernel LAPIC and IOAPIC of KVM, programmed once at start (recorded into
//! the start-up [`Batch`] that the ring-0 handler performs with the vsock device's set-up),
//! so that the vsock device's interrupt and the LAPIC timer wake the driver's sleeps. The
//! timer is armed and disarmed in the ring-0 batch of each timed sleep.
//!
//! Interrupts stay masked (`IF = 0`) everywhere except inside the ring-0 wait, so no Rust code
//! is ever interrupted: a device interrupt that arrives while the runtime works stays pending
//! in the LAPIC and ends the next wait at once.

use crate::idt::{VECTOR_DEVICE, VECTOR_SPURIOUS};
use kiln_guest_virtio::Batch;

const LAPIC: u64 = 0xfee0_0000;
const LAPIC_SVR: u64 = 0xf0;
const LAPIC_LVT_TIMER: u64 = 0x320;
const LAPIC_LVT_LINT0: u64 = 0x350;
const LAPIC_LVT_MASKED: u32 = 0x1_0000;
const LAPIC_TIMER_INITIAL: u64 = 0x380;
const LAPIC_TIMER_DIVIDE: u64 = 0x3e0;
const LAPIC_SVR_ENABLE: u32 = 0x100;
/// Divide by 1: KVM's LAPIC timer then counts nanoseconds (its bus runs at 1 GHz).
const LAPIC_DIVIDE_1: u32 = 0xb;

const IOAPIC: u64 = 0xfec0_0000;
const IOAPIC_REGSEL: u64 = 0x00;
const IOAPIC_WINDOW: u64 = 0x10;
const IOAPIC_REDIRECTION: u32 = 0x10;
/// The IOAPIC's pins (KVM's has 24).
pub const IOAPIC_PINS: u32 = 24;

/// Records the LAPIC's enabling (spurious vector 0xff) and its timer's divider, and masks
/// LINT0: VMMs (Kiln's, Firecracker) wire it to the legacy PIC as ExtINT, whose uninitialised
/// vector base would deliver the device's IRQ n as exception vector n.
pub fn init<const B: usize>(batch: &mut Batch<B>) {
    batch.write(
        LAPIC + LAPIC_SVR,
        LAPIC_SVR_ENABLE | u32::from(VECTOR_SPURIOUS),
    );
    batch.write(LAPIC + LAPIC_LVT_LINT0, LAPIC_LVT_MASKED);
    batch.write(LAPIC + LAPIC_TIMER_DIVIDE, LAPIC_DIVIDE_1);
    batch.write(LAPIC + LAPIC_LVT_TIMER, u32::from(VECTOR_DEVICE));
}

/// Records the routing of IOAPIC pin `irq` to the device vector on vCPU 0: fixed delivery,
/// physical destination APIC ID 0 (the reset value of the entry's high half),
/// edge-triggered, active high, unmasked. Returns false (recording nothing) for a pin the
/// IOAPIC does not have.
pub fn route<const B: usize>(batch: &mut Batch<B>, irq: u32) -> bool {
    if irq >= IOAPIC_PINS {
        return false;
    }
    batch.write(IOAPIC + IOAPIC_REGSEL, IOAPIC_REDIRECTION + 2 * irq);
    batch.write(IOAPIC + IOAPIC_WINDOW, u32::from(VECTOR_DEVICE));
    true
}

/// Records arming the LAPIC timer to interrupt after `ns` nanoseconds (one shot; 0 disarms
/// it).
pub fn timer<const B: usize>(batch: &mut Batch<B>, ns: u32) {
    batch.write(LAPIC + LAPIC_TIMER_INITIAL, ns);
}
