//! A custom CPU template (`cpu-config`) applied as Firecracker applies it, when the microVM
//! is built:
//!
//! 1. `kvm_capabilities`: each capability added must be one the host's KVM has
//!    (`KVM_CHECK_EXTENSION`). Removing one (`"!N"`) is accepted and changes nothing: the
//!    capabilities Kiln itself needs stay required.
//! 2. `cpuid_modifiers` change KVM's supported CPUID before the per-vCPU normalisation
//!    ([`super::cpuid::normalize`], which still sets the topology, APIC ids, the hypervisor
//!    bit and KVM's signature). Each modified (leaf, subleaf) must be in KVM's list; its
//!    KVM flags become the template's.
//! 3. `msr_modifiers`: on each vCPU, once its CPUID is set (KVM decides from it which MSRs
//!    exist), the MSRs are read (`KVM_GET_MSRS`), changed by their bitmaps and written back
//!    (`KVM_SET_MSRS`); an MSR KVM does not have, or a value it refuses, is an error naming
//!    it. The boot MSRs ([`super::msr`]) are set afterwards and win where both name one.
//!
//! Every check fails `InstanceStart` with a message naming the leaf, MSR or capability.

use crate::resources::{CpuConfig, CpuidRegister, KvmCapability, MsrModifier};
use kvm_bindings::{kvm_cpuid_entry2, kvm_msr_entry, CpuId, Msrs};
use kvm_ioctls::VcpuFd;

#[derive(Debug, thiserror::Error)]
pub enum CustomTemplateError {
    #[error("cpu-config: the host's KVM does not have capability {0} (kvm_capabilities)")]
    MissingCapability(u32),
    #[error(
        "cpu-config: CPUID leaf {leaf:#x} subleaf {subleaf:#x} is not one KVM supports on this \
         host (cpuid_modifiers)"
    )]
    CpuidNotSupported { leaf: u32, subleaf: u32 },
    #[error("cpu-config: the templated CPUID has {0} entries, more than KVM accepts")]
    TooManyEntries(usize),
    #[error("cpu-config: cannot build the list of {0} MSRs")]
    MsrList(usize),
    #[error("cpu-config: KVM_GET_MSRS failed: {0}")]
    GetMsrs(kvm_ioctls::Error),
    #[error("cpu-config: MSR {0:#x} is not one KVM supports for this vCPU (msr_modifiers)")]
    MsrNotSupported(u32),
    #[error("cpu-config: KVM_SET_MSRS failed: {0}")]
    SetMsrs(kvm_ioctls::Error),
    #[error("cpu-config: KVM refused the value {value:#x} for MSR {addr:#x} (msr_modifiers)")]
    MsrRefused { addr: u32, value: u64 },
}

/// Checks the capabilities the template adds against the host's KVM (`has`).
pub fn check_capabilities(
    cfg: &CpuConfig,
    has: impl Fn(u32) -> bool,
) -> Result<(), CustomTemplateError> {
    for cap in cfg.kvm_capabilities() {
        if let KvmCapability::Add(n) = cap {
            if !has(*n) {
                return Err(CustomTemplateError::MissingCapability(*n));
            }
        }
    }
    Ok(())
}

/// KVM's supported CPUID with the template's modifiers applied, in order.
pub fn apply_cpuid(
    supported: &[kvm_cpuid_entry2],
    cfg: &CpuConfig,
) -> Result<Vec<kvm_cpuid_entry2>, CustomTemplateError> {
    let mut out = supported.to_vec();
    for m in cfg.cpuid_modifiers() {
        let entry = out
            .iter_mut()
            .find(|e| e.function == m.leaf && e.index == m.subleaf)
            .ok_or(CustomTemplateError::CpuidNotSupported {
                leaf: m.leaf,
                subleaf: m.subleaf,
            })?;
        entry.flags = m.flags;
        for r in &m.modifiers {
            let reg = match r.register {
                CpuidRegister::Eax => &mut entry.eax,
                CpuidRegister::Ebx => &mut entry.ebx,
                CpuidRegister::Ecx => &mut entry.ecx,
                CpuidRegister::Edx => &mut entry.edx,
            };
            // A 32-bit bitmap keeps the value within 32 bits.
            *reg = u32::try_from(r.bitmap.apply(u64::from(*reg))).unwrap_or(*reg);
        }
    }
    Ok(out)
}

/// [`apply_cpuid`] into the FAM structure the vCPUs' normalisation starts from.
pub fn templated_cpuid(supported: &CpuId, cfg: &CpuConfig) -> Result<CpuId, CustomTemplateError> {
    let entries = apply_cpuid(supported.as_slice(), cfg)?;
    CpuId::from_entries(&entries).map_err(|_| CustomTemplateError::TooManyEntries(entries.len()))
}

/// Reads the template's MSRs from `vcpu`, applies the bitmaps and writes them back.
pub fn apply_msrs(vcpu: &VcpuFd, modifiers: &[MsrModifier]) -> Result<(), CustomTemplateError> {
    if modifiers.is_empty() {
        return Ok(());
    }
    let entries: Vec<kvm_msr_entry> = modifiers
        .iter()
        .map(|m| kvm_msr_entry {
            index: m.addr,
            ..Default::default()
        })
        .collect();
    let mut msrs =
        Msrs::from_entries(&entries).map_err(|_| CustomTemplateError::MsrList(entries.len()))?;
    let read = vcpu
        .get_msrs(&mut msrs)
        .map_err(CustomTemplateError::GetMsrs)?;
    if let Some(missing) = modifiers.get(read) {
        return Err(CustomTemplateError::MsrNotSupported(missing.addr));
    }
    for (e, m) in msrs.as_mut_slice().iter_mut().zip(modifiers) {
        e.data = m.bitmap.apply(e.data);
    }
    let written = vcpu.set_msrs(&msrs).map_err(CustomTemplateError::SetMsrs)?;
    if let Some(refused) = msrs.as_slice().get(written) {
        return Err(CustomTemplateError::MsrRefused {
            addr: refused.index,
            value: refused.data,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::parse_json;

    fn e(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    #[test]
    fn cpuid_modifiers_change_the_named_registers_in_order() {
        let host = [
            e(0, 0, 0xd, 1, 2, 3),
            e(1, 0, 0x806f8, 0, 0xffff_ffff, 0xffff_ffff),
            e(7, 0, 0, 0xffff_ffff, 0, 0),
            e(7, 1, 0, 0, 0, 0),
        ];
        let cfg: CpuConfig = parse_json(
            r#"{"cpuid_modifiers": [
                {"leaf": "0x1", "subleaf": "0x0", "flags": 0, "modifiers": [
                    {"register": "ecx", "bitmap": "0bxxxxxxxxxxxxxxxxxx0xxxxxxxxxxxxx"},
                    {"register": "eax", "bitmap": "0b1111"},
                    {"register": "eax", "bitmap": "0b0xxx"}]},
                {"leaf": "7", "subleaf": "1", "flags": 1, "modifiers": [
                    {"register": "edx", "bitmap": "0b1x1"}]}
            ]}"#,
        )
        .unwrap();
        let out = apply_cpuid(&host, &cfg).unwrap();
        assert_eq!(out[1].ecx, 0xffff_dfff, "CX16 cleared");
        assert_eq!(out[1].eax, 0x806f7, "both eax modifiers, in order");
        assert_eq!(out[1].edx, 0xffff_ffff, "untouched");
        assert_eq!((out[3].edx, out[3].flags), (0b101, 1));
        assert_eq!(out[2], host[2]);
        assert_eq!(out.len(), host.len());
    }

    #[test]
    fn a_leaf_kvm_does_not_have_is_an_error_naming_it() {
        let host = [e(0, 0, 0xd, 1, 2, 3), e(7, 0, 0, 0, 0, 0)];
        let cfg: CpuConfig = parse_json(
            r#"{"cpuid_modifiers": [{"leaf": "0x7", "subleaf": "0x3", "flags": 1, "modifiers": []}]}"#,
        )
        .unwrap();
        let err = apply_cpuid(&host, &cfg).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cpu-config: CPUID leaf 0x7 subleaf 0x3 is not one KVM supports on this host (cpuid_modifiers)"
        );
    }

    #[test]
    fn capabilities_added_must_exist_removed_ones_are_fine() {
        let cfg: CpuConfig = parse_json(r#"{"kvm_capabilities": ["1", "!2", "3"]}"#).unwrap();
        assert!(check_capabilities(&cfg, |c| c == 1 || c == 3).is_ok());
        let err = check_capabilities(&cfg, |c| c == 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cpu-config: the host's KVM does not have capability 3 (kvm_capabilities)"
        );
    }
}
