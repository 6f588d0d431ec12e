//! Why the vsock stream could not be used.

use super::QUEUE_SIZE;
use core::fmt;

/// Why the vsock stream could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VsockError {
    /// No `virtio_mmio.device=` entry answers as a virtio-vsock device.
    NoDevice,
    /// The device's IRQ is not an IOAPIC pin.
    BadIrq(u32),
    /// The heap could not hold the buffers.
    NoMemory,
    /// The device refused VIRTIO_F_VERSION_1 (status read back).
    FeaturesRefused(u32),
    /// DRIVER_OK did not stick (status read back).
    DeviceFailed(u32),
    /// The start-up's register accesses were not all performed (more than the batch holds,
    /// or the ring-0 handler stopped early without a failed check).
    StartUp,
    /// The host refused the connection (RST): nobody listens on the port.
    Refused { port: u32 },
    /// No answer from the host in time.
    Timeout,
    /// The host closed the connection (SHUTDOWN or RST) or the transport was reset.
    Closed,
}

impl fmt::Display for VsockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VsockError::NoDevice => write!(f, "no virtio-vsock device on the command line"),
            VsockError::BadIrq(irq) => write!(f, "virtio-vsock irq {irq} is not an IOAPIC pin"),
            VsockError::NoMemory => write!(f, "no memory for the vsock buffers"),
            VsockError::FeaturesRefused(s) => {
                write!(f, "virtio-vsock refused VERSION_1 (status {s:#x})")
            }
            VsockError::DeviceFailed(s) => write!(
                f,
                "virtio-vsock did not start (status {s:#x}; its queues must hold {QUEUE_SIZE} entries)"
            ),
            VsockError::StartUp => write!(f, "the device's start-up was not performed in full"),
            VsockError::Refused { port } => {
                write!(f, "the host refused the connection to port {port}")
            }
            VsockError::Timeout => write!(f, "no answer from the host"),
            VsockError::Closed => write!(f, "the host closed the connection"),
        }
    }
}
