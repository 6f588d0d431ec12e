//! KVM state of the microVM, built before it runs:
//!
//! - [`vm`]: the KVM VM (irqchip, PIT, TSS, memory slots).
//! - [`host_cpuid`]: the CPUID the host's KVM supports, asked for ahead of the build in API
//!   mode.
//! - [`memory`]: guest RAM, sized from the config and split around the MMIO gap.
//! - [`vcpu`]: creating and configuring one vCPU (CPUID, MSRs, registers, LAPIC).
//! - [`vcpu_thread`]: the thread that runs a vCPU, handles its exits and obeys
//!   pause/resume/stop (and saves the vCPU's state for a snapshot).
//! - [`coalesced`]: KVM's coalesced MMIO ring for the virtio-mmio set-up registers, which
//!   the vCPU threads drain.
//! - For snapshots: [`vcpu_state`] and [`vm_state`] (what KVM holds of a vCPU and of the
//!   VM, saved and restored), [`dirty`] (the pages the VMM itself wrote, for diff
//!   snapshots; KVM logs the guest's).

pub mod coalesced;
pub mod dirty;
pub mod host_cpuid;
pub mod memory;
pub mod vcpu;
pub mod vcpu_state;
pub mod vcpu_thread;
pub mod vm;
pub mod vm_state;
