//! Emulated devices and how guest accesses reach them.
//!
//! - [`bus`]: port-I/O and MMIO address spaces mapping guest accesses to devices.
//! - [`legacy`]: the 8250 UART (COM1) and the i8042 controller (reset + keyboard).
//! - [`manager`]: wires devices to the buses and to IRQs, allocates virtio-mmio windows and
//!   IRQs, and adds their `virtio_mmio.device=` entries to the kernel command line.
//! - [`pci`]: the PCI bus of `--enable-pci` (configuration space, BARs, MSI-X).
//! - [`rate_limiter`]: token buckets limiting a device's bytes and operations (block, net,
//!   entropy), and the serial output's bucket.
//! - [`timer`]: the one-shot timerfd devices wait on.
//! - [`virtio`]: the virtio-mmio and virtio-pci transports, the virtqueue mechanics, and
//!   the virtio devices.

pub mod bus;
pub mod legacy;
pub mod manager;
pub mod pci;
pub mod rate_limiter;
pub mod timer;
pub mod virtio;
