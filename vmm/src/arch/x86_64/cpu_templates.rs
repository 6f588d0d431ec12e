//! Static CPU templates: CPUID feature bits hidden from the guest, so that a guest sees the
//! same CPU on different hosts (Firecracker's `C3`, `T2`, `T2S`, `T2CL`, `T2A`) or avoids
//! features a host cannot run (`Baseline`, for hosts whose KVM emulates guest ring 0
//! instruction by instruction and fails on CMPXCHG16B and the XSAVE family; see
//! docs/vmm.md).
//!
//! A template only clears bits; it never advertises a feature KVM does not support, and it
//! applies on any host vendor (Firecracker also sets some bits, rewrites the family and
//! model, masks `IA32_ARCH_CAPABILITIES`, and accepts each template only on the CPU models
//! it was made for). Hiding XSAVE also empties leaf 0xD, whose contents describe the XSAVE
//! state components.

use crate::resources::CpuTemplate;

/// A CPUID output register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// Bits to clear in one register of one (sub)leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mask {
    pub leaf: u32,
    pub subleaf: u32,
    pub reg: Reg,
    pub clear: u32,
}

const fn m(leaf: u32, subleaf: u32, reg: Reg, clear: u32) -> Mask {
    Mask {
        leaf,
        subleaf,
        reg,
        clear,
    }
}

const fn bits(list: &[u32]) -> u32 {
    let mut out = 0;
    let mut i = 0;
    while i < list.len() {
        out |= 1 << list[i];
        i += 1;
    }
    out
}

/// Leaf 1 ECX bits.
pub mod l1_ecx {
    pub const DTES64: u32 = 2;
    pub const MONITOR: u32 = 3;
    pub const DS_CPL: u32 = 4;
    pub const VMX: u32 = 5;
    pub const SMX: u32 = 6;
    pub const EIST: u32 = 7;
    pub const TM2: u32 = 8;
    pub const CNXT_ID: u32 = 10;
    pub const SDBG: u32 = 11;
    pub const FMA: u32 = 12;
    pub const CX16: u32 = 13;
    pub const XTPR: u32 = 14;
    pub const PDCM: u32 = 15;
    pub const PCID: u32 = 17;
    pub const DCA: u32 = 18;
    pub const POPCNT: u32 = 23;
    pub const XSAVE: u32 = 26;
    pub const OSXSAVE: u32 = 27;
    pub const AVX: u32 = 28;
    pub const F16C: u32 = 29;
    pub const RDRAND: u32 = 30;
    pub const HYPERVISOR: u32 = 31;
}

/// Leaf 1 EDX bits.
pub mod l1_edx {
    pub const PSN: u32 = 18;
    pub const DS: u32 = 21;
    pub const ACPI: u32 = 22;
    pub const SS: u32 = 27;
    pub const HTT: u32 = 28;
    pub const TM: u32 = 29;
    pub const IA64: u32 = 30;
    pub const PBE: u32 = 31;
}

/// Leaf 7 subleaf 0 EBX bits.
pub mod l7_ebx {
    pub const FSGSBASE: u32 = 0;
    pub const SGX: u32 = 2;
    pub const BMI1: u32 = 3;
    pub const HLE: u32 = 4;
    pub const AVX2: u32 = 5;
    pub const BMI2: u32 = 8;
    pub const INVPCID: u32 = 10;
    pub const RTM: u32 = 11;
    pub const RDT_M: u32 = 12;
    pub const MPX: u32 = 14;
    pub const RDT_A: u32 = 15;
    pub const AVX512F: u32 = 16;
    pub const AVX512DQ: u32 = 17;
    pub const RDSEED: u32 = 18;
    pub const ADX: u32 = 19;
    pub const SMAP: u32 = 20;
    pub const AVX512_IFMA: u32 = 21;
    pub const CLFLUSHOPT: u32 = 23;
    pub const CLWB: u32 = 24;
    pub const PT: u32 = 25;
    pub const AVX512PF: u32 = 26;
    pub const AVX512ER: u32 = 27;
    pub const AVX512CD: u32 = 28;
    pub const SHA: u32 = 29;
    pub const AVX512BW: u32 = 30;
    pub const AVX512VL: u32 = 31;
}

/// Leaf 7 subleaf 0 ECX bits.
pub mod l7_ecx {
    pub const AVX512_VBMI: u32 = 1;
    pub const UMIP: u32 = 2;
    pub const PKU: u32 = 3;
    pub const OSPKE: u32 = 4;
    pub const AVX512_VBMI2: u32 = 6;
    pub const GFNI: u32 = 8;
    pub const VAES: u32 = 9;
    pub const VPCLMULQDQ: u32 = 10;
    pub const AVX512_VNNI: u32 = 11;
    pub const AVX512_BITALG: u32 = 12;
    pub const AVX512_VPOPCNTDQ: u32 = 14;
    pub const LA57: u32 = 16;
    pub const RDPID: u32 = 22;
    pub const SGX_LC: u32 = 30;
}

/// Leaf 7 subleaf 0 EDX bits.
pub mod l7_edx {
    pub const AVX512_4VNNIW: u32 = 2;
    pub const AVX512_4FMAPS: u32 = 3;
    pub const FSRM: u32 = 4;
    pub const AVX512_VP2INTERSECT: u32 = 8;
    pub const ARCH_CAPABILITIES: u32 = 29;
    pub const CORE_CAPABILITIES: u32 = 30;
    /// Speculation-control bits (IBRS/IBPB, STIBP, L1D_FLUSH, SSBD) and MD_CLEAR: kept by
    /// every template, guests need them for their mitigations.
    pub const SPECULATION: &[u32] = &[10, 26, 27, 28, 31];
}

/// Leaf 0x8000_0001 (extended features) ECX bits.
pub mod l81_ecx {
    pub const SVM: u32 = 2;
    pub const SSE4A: u32 = 6;
    pub const MISALIGN_SSE: u32 = 7;
    pub const PREFETCHW: u32 = 8;
    pub const MONITORX: u32 = 29;
}

/// Leaf 0x8000_0001 EDX bits.
pub mod l81_edx {
    pub const MMXEXT: u32 = 22;
    pub const FFXSR: u32 = 25;
    pub const PAGE1GB: u32 = 26;
}

/// Leaf 0x8000_0008 EBX bits.
pub mod l88_ebx {
    pub const CLZERO: u32 = 0;
    pub const WBNOINVD: u32 = 9;
}

pub const EXT_FEATURES_LEAF: u32 = 0x8000_0001;
pub const EXT_ADDRESS_LEAF: u32 = 0x8000_0008;

/// KVM's paravirtual feature leaf.
pub const KVM_FEATURES_LEAF: u32 = 0x4000_0001;

/// KVM paravirtual features that work through hypercalls (`vmcall`): PV unhalt (spinlock
/// kick), PV send-IPI, PV sched-yield. `Baseline` hides them: on hosts whose KVM emulates
/// guest ring 0, a guest hypercall never returns (a 2-vCPU Linux hung in `kvm_hypercall4`
/// sending its first PV IPI).
pub const KVM_HYPERCALL_FEATURES: u32 = bits(&[7, 11, 13]);

/// Leaf 0xD subleaf 0 EAX: XSAVE state components beyond x87/SSE/AVX (MPX, AVX-512, PKRU,
/// AMX).
const XCR0_BEYOND_AVX: u32 = bits(&[3, 4, 5, 6, 7, 9, 17, 18]);
/// Leaf 0xD subleaf 1 EAX: XSAVEC, XGETBV with ECX=1, XSAVES (XSAVEOPT kept).
const XSAVE_EXTENSIONS: u32 = bits(&[1, 2, 3]);

/// Every bit of a register.
const ALL: u32 = u32::MAX;

/// Leaf 1 bits every template hides: host-only facilities (debug store, thermal monitor,
/// SpeedStep, SMX/VMX, cache/APIC details a VM does not provide).
const L1_ECX_HOST_ONLY: u32 = bits(&[
    l1_ecx::DTES64,
    l1_ecx::MONITOR,
    l1_ecx::DS_CPL,
    l1_ecx::VMX,
    l1_ecx::SMX,
    l1_ecx::EIST,
    l1_ecx::TM2,
    l1_ecx::CNXT_ID,
    l1_ecx::SDBG,
    l1_ecx::XTPR,
    l1_ecx::PDCM,
    l1_ecx::DCA,
]);
const L1_EDX_HOST_ONLY: u32 = bits(&[l1_edx::DS, l1_edx::ACPI, l1_edx::TM, l1_edx::PBE]);

/// Leaf 7 EBX features newer than Skylake client or not virtualisable, hidden by T2.
const L7_EBX_T2: u32 = bits(&[
    l7_ebx::SGX,
    l7_ebx::HLE,
    l7_ebx::RTM,
    l7_ebx::RDT_M,
    l7_ebx::MPX,
    l7_ebx::RDT_A,
    l7_ebx::AVX512F,
    l7_ebx::AVX512DQ,
    l7_ebx::AVX512_IFMA,
    l7_ebx::CLWB,
    l7_ebx::PT,
    l7_ebx::AVX512PF,
    l7_ebx::AVX512ER,
    l7_ebx::AVX512CD,
    l7_ebx::SHA,
    l7_ebx::AVX512BW,
    l7_ebx::AVX512VL,
]);
/// C3 keeps the Cascade Lake AVX-512 subset (F, DQ, CD, BW, VL) and CLWB.
const L7_EBX_C3: u32 = L7_EBX_T2
    & !bits(&[
        l7_ebx::AVX512F,
        l7_ebx::AVX512DQ,
        l7_ebx::AVX512CD,
        l7_ebx::AVX512BW,
        l7_ebx::AVX512VL,
        l7_ebx::CLWB,
    ]);
/// Leaf 7 EDX: everything but the speculation controls.
const L7_EDX_HIDE: u32 = !bits(l7_edx::SPECULATION);

fn common(ecx7: u32, ebx7: u32, xcr0: u32) -> Vec<Mask> {
    vec![
        m(1, 0, Reg::Ecx, L1_ECX_HOST_ONLY),
        m(1, 0, Reg::Edx, L1_EDX_HOST_ONLY),
        m(7, 0, Reg::Ebx, ebx7),
        m(7, 0, Reg::Ecx, ecx7),
        m(7, 0, Reg::Edx, L7_EDX_HIDE),
        m(7, 1, Reg::Eax, ALL),
        m(0xd, 0, Reg::Eax, xcr0),
        m(0xd, 1, Reg::Eax, XSAVE_EXTENSIONS),
    ]
}

/// `T2CL` and `T2A`: the instruction set Intel Cascade Lake and AMD Milan have in common, so
/// that a guest may move between the two. What either CPU lacks, or a VM does not
/// provide, is hidden; the speculation controls are kept.
fn t2_common_x86() -> Vec<Mask> {
    vec![
        m(1, 0, Reg::Ecx, L1_ECX_HOST_ONLY),
        m(
            1,
            0,
            Reg::Edx,
            L1_EDX_HOST_ONLY | bits(&[l1_edx::PSN, l1_edx::SS, l1_edx::IA64]),
        ),
        m(
            7,
            0,
            Reg::Ebx,
            bits(&[
                l7_ebx::SGX,
                l7_ebx::HLE,
                l7_ebx::RTM,
                l7_ebx::RDT_M,
                l7_ebx::MPX,
                l7_ebx::RDT_A,
                l7_ebx::AVX512F,
                l7_ebx::AVX512DQ,
                l7_ebx::RDSEED,
                l7_ebx::ADX,
                l7_ebx::AVX512_IFMA,
                // RDPID on some AMD parts (Intel reports it in ECX).
                22,
                l7_ebx::CLFLUSHOPT,
                l7_ebx::CLWB,
                l7_ebx::PT,
                l7_ebx::AVX512PF,
                l7_ebx::AVX512ER,
                l7_ebx::AVX512CD,
                l7_ebx::SHA,
                l7_ebx::AVX512BW,
                l7_ebx::AVX512VL,
            ]),
        ),
        m(
            7,
            0,
            Reg::Ecx,
            bits(&[
                l7_ecx::AVX512_VBMI,
                l7_ecx::UMIP,
                l7_ecx::PKU,
                l7_ecx::OSPKE,
                l7_ecx::AVX512_VBMI2,
                l7_ecx::GFNI,
                l7_ecx::VAES,
                l7_ecx::VPCLMULQDQ,
                l7_ecx::AVX512_VNNI,
                l7_ecx::AVX512_BITALG,
                l7_ecx::AVX512_VPOPCNTDQ,
                l7_ecx::LA57,
                l7_ecx::RDPID,
                l7_ecx::SGX_LC,
            ]),
        ),
        m(
            7,
            0,
            Reg::Edx,
            bits(&[
                l7_edx::AVX512_4VNNIW,
                l7_edx::AVX512_4FMAPS,
                l7_edx::FSRM,
                l7_edx::AVX512_VP2INTERSECT,
            ]),
        ),
        // MPX, AVX-512 and PKRU state components.
        m(0xd, 0, Reg::Eax, bits(&[3, 4, 5, 6, 7, 9])),
        m(0xd, 1, Reg::Eax, XSAVE_EXTENSIONS),
        m(
            EXT_FEATURES_LEAF,
            0,
            Reg::Ecx,
            bits(&[
                l81_ecx::SVM,
                l81_ecx::SSE4A,
                l81_ecx::MISALIGN_SSE,
                l81_ecx::PREFETCHW,
                l81_ecx::MONITORX,
            ]),
        ),
        m(
            EXT_FEATURES_LEAF,
            0,
            Reg::Edx,
            bits(&[l81_edx::MMXEXT, l81_edx::FFXSR, l81_edx::PAGE1GB]),
        ),
        m(
            EXT_ADDRESS_LEAF,
            0,
            Reg::Ebx,
            bits(&[l88_ebx::CLZERO, l88_ebx::WBNOINVD]),
        ),
    ]
}

/// The masks of a template, applied after the per-vCPU normalisation.
pub fn masks(template: CpuTemplate) -> Vec<Mask> {
    match template {
        CpuTemplate::None => Vec::new(),
        CpuTemplate::T2 => common(ALL, L7_EBX_T2, XCR0_BEYOND_AVX),
        CpuTemplate::T2S => {
            let mut v = common(ALL, L7_EBX_T2, XCR0_BEYOND_AVX);
            v.push(m(
                7,
                0,
                Reg::Edx,
                bits(&[l7_edx::ARCH_CAPABILITIES, l7_edx::CORE_CAPABILITIES]),
            ));
            v
        }
        CpuTemplate::C3 => {
            // Keep the AVX-512 state components (opmask, ZMM_Hi256, Hi16_ZMM).
            common(
                !bits(&[l7_ecx::AVX512_VNNI]),
                L7_EBX_C3,
                XCR0_BEYOND_AVX & !bits(&[5, 6, 7]),
            )
        }
        CpuTemplate::T2CL | CpuTemplate::T2A => t2_common_x86(),
        CpuTemplate::Baseline => {
            let mut v = common(ALL, ALL, ALL);
            v.push(m(
                1,
                0,
                Reg::Ecx,
                bits(&[
                    l1_ecx::FMA,
                    l1_ecx::CX16,
                    l1_ecx::PCID,
                    l1_ecx::POPCNT,
                    l1_ecx::XSAVE,
                    l1_ecx::OSXSAVE,
                    l1_ecx::AVX,
                    l1_ecx::F16C,
                    l1_ecx::RDRAND,
                ]),
            ));
            v.push(m(
                7,
                0,
                Reg::Edx,
                bits(&[l7_edx::ARCH_CAPABILITIES, l7_edx::CORE_CAPABILITIES]),
            ));
            v.push(m(KVM_FEATURES_LEAF, 0, Reg::Eax, KVM_HYPERCALL_FEATURES));
            v
        }
    }
}

/// Whether the template hides XSAVE (then leaf 0xD is emptied too).
pub fn hides_xsave(template: CpuTemplate) -> bool {
    masks(template)
        .iter()
        .any(|m| m.leaf == 1 && m.reg == Reg::Ecx && m.clear & (1 << l1_ecx::XSAVE) != 0)
}

/// The kernel command line that asks a Linux guest not to use what `Baseline` hides: the
/// fallback for hosts whose instruction emulator does not honour CPUID (see docs/vmm.md).
pub const BASELINE_LINUX_ARGS: &str =
    "noxsave clearcpuid=popcnt,cx16,smap,fsgsbase,rdpid,rdrand,rdseed,invpcid,pcid";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_hides_nothing() {
        assert!(masks(CpuTemplate::None).is_empty());
        assert!(!hides_xsave(CpuTemplate::None));
    }

    #[test]
    fn baseline_hides_what_the_emulator_fails_on() {
        let ms = masks(CpuTemplate::Baseline);
        let hidden = |leaf, sub, reg, bit: u32| {
            ms.iter().any(|m| {
                m.leaf == leaf && m.subleaf == sub && m.reg == reg && m.clear & (1 << bit) != 0
            })
        };
        assert!(hidden(1, 0, Reg::Ecx, l1_ecx::CX16));
        assert!(hidden(1, 0, Reg::Ecx, l1_ecx::XSAVE));
        assert!(hidden(1, 0, Reg::Ecx, l1_ecx::AVX));
        assert!(hidden(7, 0, Reg::Ebx, l7_ebx::AVX512F));
        assert!(hidden(7, 0, Reg::Ebx, l7_ebx::SMAP));
        assert!(hidden(7, 0, Reg::Ecx, l7_ecx::RDPID));
        assert!(hides_xsave(CpuTemplate::Baseline));
        assert!(!hidden(1, 0, Reg::Ecx, l1_ecx::HYPERVISOR));
    }

    #[test]
    fn c3_keeps_avx512_that_t2_hides() {
        let t2 = masks(CpuTemplate::T2);
        let c3 = masks(CpuTemplate::C3);
        let l7 = |v: &[Mask]| {
            v.iter()
                .find(|m| m.leaf == 7 && m.reg == Reg::Ebx)
                .unwrap()
                .clear
        };
        assert_ne!(l7(&t2) & (1 << l7_ebx::AVX512F), 0);
        assert_eq!(l7(&c3) & (1 << l7_ebx::AVX512F), 0);
        assert!(!hides_xsave(CpuTemplate::T2) && !hides_xsave(CpuTemplate::C3));
    }

    #[test]
    fn t2cl_and_t2a_share_one_instruction_set() {
        assert_eq!(masks(CpuTemplate::T2CL), masks(CpuTemplate::T2A));
        let ms = masks(CpuTemplate::T2CL);
        let hidden = |leaf, reg, bit: u32| {
            ms.iter().any(|m| {
                m.leaf == leaf && m.subleaf == 0 && m.reg == reg && m.clear & (1 << bit) != 0
            })
        };
        // Intel-only or AMD-only features, and what a VM lacks.
        assert!(hidden(7, Reg::Ebx, l7_ebx::AVX512F));
        assert!(hidden(7, Reg::Ecx, l7_ecx::VAES));
        assert!(hidden(EXT_FEATURES_LEAF, Reg::Ecx, l81_ecx::SSE4A));
        assert!(hidden(EXT_FEATURES_LEAF, Reg::Ecx, l81_ecx::SVM));
        assert!(hidden(EXT_ADDRESS_LEAF, Reg::Ebx, l88_ebx::CLZERO));
        assert!(hidden(1, Reg::Ecx, l1_ecx::VMX));
        // Both have AVX2 and keep the XSAVE family.
        assert!(!hidden(7, Reg::Ebx, l7_ebx::AVX2));
        assert!(!hides_xsave(CpuTemplate::T2CL));
    }

    #[test]
    fn speculation_controls_are_kept_by_all() {
        for t in [
            CpuTemplate::T2,
            CpuTemplate::T2S,
            CpuTemplate::C3,
            CpuTemplate::T2CL,
            CpuTemplate::T2A,
            CpuTemplate::Baseline,
        ] {
            for mk in masks(t)
                .iter()
                .filter(|m| m.leaf == 7 && m.subleaf == 0 && m.reg == Reg::Edx)
            {
                for b in l7_edx::SPECULATION {
                    assert_eq!(mk.clear & (1 << b), 0, "{t:?} hides speculation bit {b}");
                }
            }
        }
    }
}
