//! Legacy PC devices: COM1 ([`serial`]) and the i8042 controller ([`i8042`]).

pub mod i8042;
pub mod serial;

use vmm_sys_util::eventfd::EventFd;

/// An edge on an IRQ line: an eventfd registered with KVM as an irqfd.
pub struct IrqLine(pub EventFd);

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
