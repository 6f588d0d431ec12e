//! PCI (`--enable-pci`): bus 0 with a host bridge, reached by the guest through
//! configuration mechanism #1 (ports 0xCF8/0xCFC) and, for BARs, through a window of the
//! MMIO bus. No ACPI is needed: Linux finds the bus by probing the ports.
//!
//! - [`config`]: one function's configuration space (header, BAR, capability list, write
//!   masks), the guest-facing part every function shares.
//! - [`root`]: the bus: the host bridge, the address/data ports, the BAR window.
//! - [`msix`]: MSI-X tables, pending bits and interrupt delivery through irqfds.
//! - [`platform`]: what the functions ask of KVM at run time (MSI routes, ioeventfds
//!   that follow a moved BAR).
//! - [`persist`]: the bus's and the functions' state in a snapshot.
//!
//! What sits on the bus is up to its users: the virtio-pci transport
//! ([`crate::devices::virtio::pci`]) puts one function per virtio device there.

pub mod config;
pub mod msix;
pub mod persist;
pub mod platform;
pub mod root;
