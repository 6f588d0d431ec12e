//! x86_64: where things live in guest memory, and how a vCPU is put in the state a kernel
//! entry point expects.
//!
//! - [`layout`]: fixed guest-physical addresses (boot structures, MMIO gap, APICs).
//! - [`e820`]: the guest's memory map, shared by the zero page and PVH start info.
//! - [`boot_params`]: the Linux zero page and the PVH `hvm_start_info`.
//! - [`paging`]: the identity-mapped page tables of the 64-bit Linux entry.
//! - [`gdt`]: boot GDT/IDT and the segment registers built from them.
//! - [`regs`]: general, special and FPU registers per boot entry.
//! - [`mptable`]: the Intel MP table that tells an SMP guest about its CPUs and IOAPIC.
//! - [`cpuid`]: per-vCPU CPUID normalisation; [`cpu_templates`]: features hidden by templates;
//!   [`custom_template`]: a custom template's CPUID and MSR modifiers (`cpu-config`).
//! - [`msr`]: the MSRs every vCPU boots with.
//! - [`lapic`]: LAPIC LINT0/LINT1 as Linux expects them.

pub mod boot_params;
pub mod cpu_templates;
pub mod cpuid;
pub mod custom_template;
pub mod e820;
pub mod gdt;
pub mod lapic;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod paging;
pub mod regs;
