//! Creating and configuring one vCPU: its normalised CPUID, boot MSRs, registers for the
//! boot entry, FPU, and LAPIC LINT pins. Running it is [`super::vcpu_thread`]'s job.

use super::vm::Vm;
use crate::arch::x86_64::cpuid::{self, CpuidError, Topology};
use crate::arch::x86_64::custom_template::{self, CustomTemplateError};
use crate::arch::x86_64::lapic::{self, LapicError};
use crate::arch::x86_64::msr::{self, MsrError};
use crate::arch::x86_64::regs::{self, BootEntry, BootTables, RegsError};
use crate::resources::{CpuTemplate, MsrModifier};
use kvm_bindings::CpuId;
use kvm_ioctls::VcpuFd;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("KVM_CREATE_VCPU failed for vCPU {index}: {source}")]
    Create {
        index: u8,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: {source}")]
    Cpuid { index: u8, source: CpuidError },
    #[error("vCPU {index}: {source}")]
    Msrs { index: u8, source: MsrError },
    #[error("vCPU {index}: {source}")]
    Template {
        index: u8,
        source: CustomTemplateError,
    },
    #[error("vCPU {index}: {source}")]
    Regs { index: u8, source: RegsError },
    #[error("vCPU {index}: {source}")]
    Lapic { index: u8, source: LapicError },
}

/// What every vCPU's CPU is configured from (all but the boot entry's registers).
#[derive(Debug, Clone, Copy)]
pub struct CpuSetup<'a> {
    pub topology: Topology,
    /// The CPUID each vCPU's is normalised from: KVM's supported one, or a custom
    /// template's result ([`custom_template::templated_cpuid`]).
    pub cpuid: &'a CpuId,
    pub template: CpuTemplate,
    /// A custom template's MSR modifiers.
    pub msr_modifiers: &'a [MsrModifier],
}

/// What every vCPU is configured from.
#[derive(Debug, Clone, Copy)]
pub struct VcpuConfig<'a> {
    pub cpu: CpuSetup<'a>,
    pub entry: BootEntry,
    pub tables: &'a BootTables,
}

/// A created vCPU, not running yet.
pub struct Vcpu {
    pub index: u8,
    pub fd: VcpuFd,
}

impl Vcpu {
    /// Creates vCPU `index`; its KVM id, and so its APIC id, is `index`.
    pub fn new(vm: &Vm, index: u8) -> Result<Vcpu, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Create { index, source })?;
        Ok(Vcpu { index, fd })
    }

    /// Loads CPUID, MSRs, registers and LAPIC state for the boot entry. Every vCPU gets the
    /// boot registers; with the in-kernel LAPIC the others then wait for the guest's
    /// INIT/SIPI, which resets them.
    pub fn configure(&self, cfg: &VcpuConfig<'_>) -> Result<(), VcpuError> {
        self.configure_cpu(&cfg.cpu)?;
        self.set_boot_regs(cfg.entry, cfg.tables)
    }

    /// Loads what does not depend on the guest's kernel: CPUID, MSRs and the LAPIC's LINT
    /// pins (`--prepare-vm` does this before the boot source is known).
    pub fn configure_cpu(&self, cpu: &CpuSetup<'_>) -> Result<(), VcpuError> {
        let index = self.index;
        let cpuid = cpuid::vcpu_cpuid(cpu.cpuid, index, cpu.topology, cpu.template)
            .map_err(|source| VcpuError::Cpuid { index, source })?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|source| VcpuError::Cpuid {
                index,
                source: CpuidError::Set { index, source },
            })?;
        custom_template::apply_msrs(&self.fd, cpu.msr_modifiers)
            .map_err(|source| VcpuError::Template { index, source })?;
        msr::setup_msrs(&self.fd).map_err(|source| VcpuError::Msrs { index, source })?;
        lapic::setup_lint(&self.fd).map_err(|source| VcpuError::Lapic { index, source })
    }

    /// Loads the registers of the boot entry `entry`, whose tables are `tables`.
    pub fn set_boot_regs(&self, entry: BootEntry, tables: &BootTables) -> Result<(), VcpuError> {
        regs::setup_vcpu_regs(&self.fd, entry, tables).map_err(|source| VcpuError::Regs {
            index: self.index,
            source,
        })
    }
}
