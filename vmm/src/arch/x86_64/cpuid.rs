//! Per-vCPU CPUID: KVM's supported CPUID, normalised so each vCPU reports its own APIC id
//! and a consistent topology (leaves 0x1, 0x4, 0xB, 0x1F; AMD's 0x80000008/0x8000001E),
//! the hypervisor bit and KVM's signature at 0x40000000, no PMU (leaf 0xA), then masked by
//! the CPU template ([`super::cpu_templates`]).
//!
//! Topology: `vcpu_count` logical processors in one package; with `smt` they are paired into
//! cores of two threads. APIC id = vCPU index.

use super::cpu_templates::{self, Reg};
use crate::resources::CpuTemplate;
use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

pub const LEAF_VENDOR: u32 = 0;
pub const LEAF_FEATURES: u32 = 1;
pub const LEAF_CACHE_PARAMS: u32 = 4;
pub const LEAF_PMU: u32 = 0xa;
pub const LEAF_TOPOLOGY: u32 = 0xb;
pub const LEAF_XSAVE: u32 = 0xd;
pub const LEAF_TOPOLOGY_V2: u32 = 0x1f;
pub const LEAF_HYPERVISOR: u32 = 0x4000_0000;
pub const LEAF_AMD_SIZES: u32 = 0x8000_0008;
pub const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
pub const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];
const INTEL: [u32; 3] = [0x756e_6547, 0x6c65_746e, 0x4965_6e69]; // EBX, ECX, EDX
const AMD: [u32; 3] = [0x6874_7541, 0x444d_4163, 0x6974_6e65];

/// Level types of leaf 0xB/0x1F ECX[15:8].
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0}")]
    GetSupported(kvm_ioctls::Error),
    #[error("the normalised CPUID has {0} entries, more than KVM accepts")]
    TooManyEntries(usize),
    #[error("KVM_SET_CPUID2 failed on vCPU {index}: {source}")]
    Set {
        index: u8,
        source: kvm_ioctls::Error,
    },
}

/// The guest's CPU topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    pub vcpu_count: u8,
    pub smt: bool,
}

impl Topology {
    pub fn threads_per_core(self) -> u32 {
        if self.smt && self.vcpu_count > 1 {
            2
        } else {
            1
        }
    }
    /// Bits of the APIC id that select the thread within a core.
    pub fn smt_shift(self) -> u32 {
        self.threads_per_core().trailing_zeros()
    }
    /// Bits of the APIC id that select the logical processor within the package.
    pub fn package_shift(self) -> u32 {
        let n = u32::from(self.vcpu_count.max(1));
        n.next_power_of_two().trailing_zeros().max(self.smt_shift())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vendor {
    Intel,
    Amd,
    Other,
}

fn vendor(entries: &[kvm_cpuid_entry2]) -> Vendor {
    match entries.iter().find(|e| e.function == LEAF_VENDOR) {
        Some(e) if [e.ebx, e.ecx, e.edx] == INTEL => Vendor::Intel,
        Some(e) if [e.ebx, e.ecx, e.edx] == AMD => Vendor::Amd,
        _ => Vendor::Other,
    }
}

fn topology_entries(function: u32, apic_id: u32, topo: Topology) -> Vec<kvm_cpuid_entry2> {
    let levels = [
        (topo.smt_shift(), topo.threads_per_core(), LEVEL_SMT),
        (topo.package_shift(), u32::from(topo.vcpu_count), LEVEL_CORE),
        (0, 0, 0),
    ];
    (0u32..)
        .zip(levels)
        .map(|(index, (shift, count, level))| kvm_cpuid_entry2 {
            function,
            index,
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            eax: shift,
            ebx: count,
            ecx: (level << 8) | index,
            edx: apic_id,
            ..Default::default()
        })
        .collect()
}

fn reg_mut(e: &mut kvm_cpuid_entry2, reg: Reg) -> &mut u32 {
    match reg {
        Reg::Eax => &mut e.eax,
        Reg::Ebx => &mut e.ebx,
        Reg::Ecx => &mut e.ecx,
        Reg::Edx => &mut e.edx,
    }
}

/// The CPUID of vCPU `index`, from the list KVM supports.
pub fn normalize(
    supported: &[kvm_cpuid_entry2],
    index: u8,
    topo: Topology,
    template: CpuTemplate,
) -> Vec<kvm_cpuid_entry2> {
    let apic_id = u32::from(index);
    let vendor = vendor(supported);
    let max_basic = supported
        .iter()
        .find(|e| e.function == LEAF_VENDOR)
        .map_or(0, |e| e.eax);
    let has_v2_topology = supported.iter().any(|e| e.function == LEAF_TOPOLOGY_V2);
    let mut out: Vec<kvm_cpuid_entry2> = supported
        .iter()
        .filter(|e| e.function != LEAF_TOPOLOGY && e.function != LEAF_TOPOLOGY_V2)
        .copied()
        .collect();
    if max_basic >= LEAF_TOPOLOGY {
        out.extend(topology_entries(LEAF_TOPOLOGY, apic_id, topo));
    }
    if has_v2_topology && max_basic >= LEAF_TOPOLOGY_V2 {
        out.extend(topology_entries(LEAF_TOPOLOGY_V2, apic_id, topo));
    }
    let logical_per_package = 1u32 << topo.package_shift();
    let cores_per_package = 1u32 << (topo.package_shift() - topo.smt_shift());

    for e in out.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                // EBX: CLFLUSH line size (8 x 8 bytes), addressable logical processors,
                // initial APIC id.
                e.ebx = (e.ebx & 0xff)
                    | (8 << 8)
                    | ((logical_per_package & 0xff) << 16)
                    | (apic_id << 24);
                e.ecx |= 1 << cpu_templates::l1_ecx::HYPERVISOR;
                // OSXSAVE mirrors CR4.OSXSAVE, which KVM tracks at run time.
                e.ecx &= !(1 << cpu_templates::l1_ecx::OSXSAVE);
                if topo.vcpu_count > 1 {
                    e.edx |= 1 << cpu_templates::l1_edx::HTT;
                } else {
                    e.edx &= !(1 << cpu_templates::l1_edx::HTT);
                }
            }
            LEAF_CACHE_PARAMS if vendor == Vendor::Intel && e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level <= 2 {
                    topo.threads_per_core()
                } else {
                    logical_per_package
                };
                e.eax = (e.eax & 0x3fff)
                    | (((sharing - 1) & 0xfff) << 14)
                    | (((cores_per_package - 1) & 0x3f) << 26);
            }
            LEAF_PMU => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_HYPERVISOR => {
                e.eax = e.eax.max(LEAF_HYPERVISOR + 1);
                [e.ebx, e.ecx, e.edx] = KVM_SIGNATURE;
            }
            LEAF_AMD_SIZES if vendor == Vendor::Amd => {
                let nc = u32::from(topo.vcpu_count.max(1)) - 1;
                e.ecx = (e.ecx & !0xf0ff) | (topo.package_shift() << 12) | (nc & 0xff);
            }
            LEAF_AMD_TOPOLOGY if vendor == Vendor::Amd => {
                e.eax = apic_id;
                e.ebx = ((topo.threads_per_core() - 1) << 8) | (apic_id >> topo.smt_shift());
                e.ecx = 0;
            }
            _ => {}
        }
    }
    if !out.iter().any(|e| e.function == LEAF_HYPERVISOR) {
        out.push(kvm_cpuid_entry2 {
            function: LEAF_HYPERVISOR,
            eax: LEAF_HYPERVISOR + 1,
            ebx: KVM_SIGNATURE[0],
            ecx: KVM_SIGNATURE[1],
            edx: KVM_SIGNATURE[2],
            ..Default::default()
        });
    }

    for mask in cpu_templates::masks(template) {
        for e in out
            .iter_mut()
            .filter(|e| e.function == mask.leaf && e.index == mask.subleaf)
        {
            *reg_mut(e, mask.reg) &= !mask.clear;
        }
    }
    if cpu_templates::hides_xsave(template) {
        for e in out.iter_mut().filter(|e| e.function == LEAF_XSAVE) {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
    }
    out
}

/// [`normalize`] into the FAM structure `KVM_SET_CPUID2` takes.
pub fn vcpu_cpuid(
    supported: &CpuId,
    index: u8,
    topo: Topology,
    template: CpuTemplate,
) -> Result<CpuId, CpuidError> {
    let entries = normalize(supported.as_slice(), index, topo, template);
    CpuId::from_entries(&entries).map_err(|_| CpuidError::TooManyEntries(entries.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::cpu_templates::{l1_ecx, l7_ebx};

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

    /// A small Intel-like supported list.
    fn host() -> Vec<kvm_cpuid_entry2> {
        vec![
            e(0, 0, 0x1f, INTEL[0], INTEL[1], INTEL[2]),
            e(
                1,
                0,
                0x806f8,
                0x0010_0800,
                0xf7fa_3203 | (1 << l1_ecx::XSAVE) | (1 << l1_ecx::CX16),
                0x178b_fbff,
            ),
            e(4, 0, 0x1c00_4121, 0, 0, 0),
            e(4, 3, 0x1c03_c163, 0, 0, 0),
            e(
                7,
                0,
                0,
                (1 << l7_ebx::AVX512F) | (1 << l7_ebx::SMAP) | (1 << 9),
                0xffff,
                0,
            ),
            e(0xa, 0, 0x0704_0302, 0, 0, 0x603),
            e(0xb, 0, 1, 2, 0x100, 7),
            e(0xd, 0, 0x2e7, 0x340, 0xa88, 0),
            e(0x1f, 0, 1, 2, 0x100, 7),
            e(0x4000_0000, 0, 0x4000_0001, 0, 0, 0),
        ]
    }

    fn find(v: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *v.iter()
            .find(|x| x.function == f && x.index == i)
            .unwrap_or_else(|| panic!("leaf {f:#x}.{i}"))
    }

    #[test]
    fn apic_id_and_topology_per_vcpu() {
        let topo = Topology {
            vcpu_count: 3,
            smt: false,
        };
        for idx in 0..3u8 {
            let v = normalize(&host(), idx, topo, CpuTemplate::None);
            let l1 = find(&v, 1, 0);
            assert_eq!(l1.ebx >> 24, u32::from(idx));
            assert_eq!(
                (l1.ebx >> 16) & 0xff,
                4,
                "logical processors rounded to a power of two"
            );
            assert_ne!(l1.edx & (1 << 28), 0, "HTT with several vCPUs");
            assert_ne!(l1.ecx & (1 << 31), 0, "hypervisor bit");
            for leaf in [0xb, 0x1f] {
                let smt = find(&v, leaf, 0);
                let core = find(&v, leaf, 1);
                let end = find(&v, leaf, 2);
                assert_eq!(
                    (smt.eax, smt.ebx, smt.ecx, smt.edx),
                    (0, 1, 0x100, u32::from(idx))
                );
                assert_eq!(
                    (core.eax, core.ebx, core.ecx, core.edx),
                    (2, 3, 0x201, u32::from(idx))
                );
                assert_eq!((end.ebx, (end.ecx >> 8) & 0xff, end.ecx & 0xff), (0, 0, 2));
                assert_eq!(v.iter().filter(|x| x.function == leaf).count(), 3);
            }
        }
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let v = normalize(
            &host(),
            0,
            Topology {
                vcpu_count: 1,
                smt: false,
            },
            CpuTemplate::None,
        );
        let l1 = find(&v, 1, 0);
        assert_eq!(l1.edx & (1 << 28), 0);
        assert_eq!((l1.ebx >> 16) & 0xff, 1);
    }

    #[test]
    fn smt_pairs_threads() {
        let topo = Topology {
            vcpu_count: 4,
            smt: true,
        };
        let v = normalize(&host(), 3, topo, CpuTemplate::None);
        let smt = find(&v, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx), (1, 2));
        let l1d = find(&v, 4, 0);
        assert_eq!(
            (l1d.eax >> 14) & 0xfff,
            1,
            "L1 shared by the two threads of a core"
        );
        assert_eq!(l1d.eax >> 26, 1, "two cores");
        let l3 = find(&v, 4, 3);
        assert_eq!((l3.eax >> 14) & 0xfff, 3, "L3 shared by the package");
    }

    #[test]
    fn hypervisor_leaf_has_kvm_signature_and_pmu_is_hidden() {
        let v = normalize(
            &host(),
            0,
            Topology {
                vcpu_count: 1,
                smt: false,
            },
            CpuTemplate::None,
        );
        let h = find(&v, LEAF_HYPERVISOR, 0);
        assert_eq!([h.ebx, h.ecx, h.edx], KVM_SIGNATURE);
        let bytes: Vec<u8> = [h.ebx, h.ecx, h.edx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        assert_eq!(&bytes[..9], b"KVMKVMKVM");
        let pmu = find(&v, LEAF_PMU, 0);
        assert_eq!((pmu.eax, pmu.edx), (0, 0));
    }

    #[test]
    fn baseline_template_hides_cx16_xsave_and_leaf_7() {
        let v = normalize(
            &host(),
            0,
            Topology {
                vcpu_count: 1,
                smt: false,
            },
            CpuTemplate::Baseline,
        );
        let l1 = find(&v, 1, 0);
        assert_eq!(l1.ecx & (1 << l1_ecx::CX16), 0);
        assert_eq!(l1.ecx & (1 << l1_ecx::XSAVE), 0);
        let l7 = find(&v, 7, 0);
        assert_eq!(l7.ebx & (1 << l7_ebx::AVX512F), 0);
        assert_eq!(l7.ebx & (1 << l7_ebx::SMAP), 0);
        let xs = find(&v, 0xd, 0);
        assert_eq!((xs.eax, xs.ebx, xs.ecx), (0, 0, 0));
    }

    #[test]
    fn template_none_keeps_host_features() {
        let v = normalize(
            &host(),
            0,
            Topology {
                vcpu_count: 1,
                smt: false,
            },
            CpuTemplate::None,
        );
        assert_ne!(find(&v, 1, 0).ecx & (1 << l1_ecx::CX16), 0);
        assert_ne!(find(&v, 7, 0).ebx & (1 << l7_ebx::AVX512F), 0);
        let t2 = normalize(
            &host(),
            0,
            Topology {
                vcpu_count: 1,
                smt: false,
            },
            CpuTemplate::T2,
        );
        assert_eq!(find(&t2, 7, 0).ebx & (1 << l7_ebx::AVX512F), 0);
        assert_ne!(find(&t2, 1, 0).ecx & (1 << l1_ecx::CX16), 0);
    }
}
