//! KVM state of the microVM, built before it runs:
//!
//! - [`vm`]: the KVM VM (irqchip, PIT, TSS, memory slots).
//! - [`memory`]: guest RAM, sized from the config and split around the MMIO gap.
//! - [`vcpu`]: creating and configuring one vCPU (CPUID, MSRs, registers, LAPIC).
//! - [`vcpu_thread`]: the thread that runs a vCPU, handles its exits and obeys
//!   pause/resume/stop.

pub mod memory;
pub mod vcpu;
pub mod vcpu_thread;
pub mod vm;
