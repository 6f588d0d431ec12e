//! The model-specific registers every vCPU boots with: SYSENTER/SYSCALL MSRs cleared, the
//! TSC at zero, fast strings on, MTRRs enabled with write-back as the default type.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

pub const MSR_IA32_TSC: u32 = 0x10;
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
pub const MSR_STAR: u32 = 0xc000_0081;
pub const MSR_LSTAR: u32 = 0xc000_0082;
pub const MSR_CSTAR: u32 = 0xc000_0083;
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_TYPE_WRITE_BACK: u64 = 6;

#[derive(Debug, thiserror::Error)]
pub enum MsrError {
    #[error("cannot build the MSR list")]
    Build,
    #[error("KVM_SET_MSRS failed: {0}")]
    Set(kvm_ioctls::Error),
    #[error("KVM_SET_MSRS refused MSR {index:#x} (set {done} of {total})")]
    Refused {
        index: u32,
        done: usize,
        total: usize,
    },
}

/// `(index, value)` of every boot MSR.
pub fn boot_msrs() -> Vec<(u32, u64)> {
    vec![
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WRITE_BACK),
    ]
}

/// Sets [`boot_msrs`] on a vCPU; an MSR KVM refuses is an error naming it.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), MsrError> {
    let list = boot_msrs();
    let entries: Vec<kvm_msr_entry> = list
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| MsrError::Build)?;
    let done = vcpu.set_msrs(&msrs).map_err(MsrError::Set)?;
    if done != list.len() {
        let index = list.get(done).map_or(0, |m| m.0);
        return Err(MsrError::Refused {
            index,
            done,
            total: list.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_msrs_enable_mtrrs_and_fast_strings() {
        let l = boot_msrs();
        assert!(l.contains(&(MSR_MTRR_DEF_TYPE, (1 << 11) | 6)));
        assert!(l.contains(&(MSR_IA32_MISC_ENABLE, 1)));
        let mut idx: Vec<u32> = l.iter().map(|m| m.0).collect();
        idx.sort_unstable();
        idx.dedup();
        assert_eq!(idx.len(), l.len(), "no MSR listed twice");
    }
}
