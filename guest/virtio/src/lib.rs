//! The virtio-mmio (version 2) transport and split virtqueues, for Kiln's freestanding guests:
//! polled drivers with their rings in static memory (physical = virtual), written once for
//! the tiny test guest (guest/tiny) and the function runtime's vsock driver (guest/runtime).
//!
//! * [`mmio`]: [`Mmio`], one device's register window: registers, status, feature
//!   negotiation, queue set-up, configuration space, notifications.
//! * [`batch`]: [`Batch`], register accesses recorded to be performed in one go (a driver's
//!   start-up), by whatever executor the guest has.
//! * [`discover`]: the command line's `virtio_mmio.device=<size>@<base>:<irq>` entries (the
//!   VMM adds one per device); which windows to trust is the guest's call.
//! * [`ring`]: the memory of a split virtqueue of `N` entries ([`RingMem`]), the wrapper for
//!   memory the device writes ([`DeviceShared`]) and the driver's side of a queue
//!   ([`Queue`]).
//! * [`vsock`]: the virtio-vsock packet header and its field values.
//!
//! Policy stays with the guests: how long to wait and how (busy polling or an interrupt),
//! which devices to accept, how many register accesses a start-up may cost. The test guest
//! keeps its hostile extras (malformed rings, wrong access widths) on top of these types.
//! Nothing here knows a VMM.

#![no_std]

pub mod batch;
pub mod discover;
pub mod mmio;
pub mod ring;
pub mod vsock;

pub use batch::{Batch, OpIndex, RegOp, Stopped};
pub use mmio::Mmio;
pub use ring::{DeviceShared, Queue, RingMem, UsedElem};
