//! A vCPU's state for snapshots: everything KVM keeps of it that the guest can observe.
//!
//! Saved on the vCPU's own thread while the VM is paused ([`VcpuState::save`]; the thread
//! was stopped by an interrupted `KVM_RUN`, so any port or MMIO access it was serving has
//! completed), restored on a new vCPU before its thread starts ([`VcpuState::restore`]).
//!
//! The order follows what KVM requires (the same as Firecracker's, for the same reasons):
//! saving, MP state first (reading it may deliver pending INIT/SIPI into the LAPIC), vCPU
//! events last; restoring, CPUID first, registers before events (setting registers clears
//! pending exceptions, which the events bring back), special registers before the LAPIC
//! (they hold the APIC base), the LAPIC before the MSRs (the TSC deadline MSR is only
//! accepted once the LAPIC is in deadline mode), the MSRs in KVM's order (the TSC before
//! the TSC deadline). A TSC deadline of 0 is saved as the current TSC, so that a guest
//! waiting for a deadline interrupt lost on the way gets one at once after restore.

use crate::arch::x86_64::msr;
use crate::snapshot::{CodecError, Decoder, Encoder, Persist};
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
    KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::VcpuFd;

/// `IA32_TSC_DEADLINE`.
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// Most MSRs a vCPU state may hold (KVM saves a few dozen).
const MAX_MSRS: usize = 1024;
/// CPUID bits whose value KVM derives from the guest's own state (OSXSAVE follows CR4,
/// OSPKE follows CR4.PKE): not features, ignored when comparing CPUIDs. (leaf, register
/// index in eax/ebx/ecx/edx order, mask)
const DYNAMIC_BITS: &[(u32, usize, u32)] = &[(1, 2, 1 << 27), (7, 2, 1 << 4)];
/// The registers of leaves (subleaf 0) whose bits are CPU features, compared at restore:
/// (leaf, register indexes in eax/ebx/ecx/edx order).
const FEATURE_REGS: &[(u32, &[usize])] = &[(1, &[2, 3]), (7, &[1, 2, 3]), (0x8000_0001, &[2, 3])];
const REG_NAMES: [&str; 4] = ["eax", "ebx", "ecx", "edx"];

#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    #[error("vCPU {index}: {op} failed: {source}")]
    Ioctl {
        index: u8,
        op: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: KVM_SET_MSRS refused MSR {msr:#x} (set {done} of {total})")]
    MsrRefused {
        index: u8,
        msr: u32,
        done: usize,
        total: usize,
    },
    #[error("vCPU {index}: the saved CPUID has {0} entries, more than KVM accepts", .count)]
    CpuidEntries { index: u8, count: usize },
    #[error("vCPU {index}: the snapshot's CPU has features this host's KVM does not offer ({missing}); restore it on a host of the same CPU model, or take it with a CPU template both hosts support")]
    MissingFeatures { index: u8, missing: String },
}

/// Everything KVM holds of one vCPU, as the guest can observe it.
pub struct VcpuState {
    pub index: u8,
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub msrs: Vec<kvm_msr_entry>,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    pub events: kvm_vcpu_events,
    /// The TSC frequency the guest saw (`None` when KVM could not say).
    pub tsc_khz: Option<u32>,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("index", &self.index)
            .field("rip", &self.regs.rip)
            .field("msrs", &self.msrs.len())
            .field("tsc_khz", &self.tsc_khz)
            .finish_non_exhaustive()
    }
}

fn ioctl<T>(
    index: u8,
    op: &'static str,
    r: Result<T, kvm_ioctls::Error>,
) -> Result<T, VcpuStateError> {
    r.map_err(|source| VcpuStateError::Ioctl { index, op, source })
}

/// The MSRs to save: KVM's list (`KVM_GET_MSR_INDEX_LIST`), then the boot MSRs it lacks
/// (MTRR default type), without duplicates.
pub fn msrs_to_save(kvm_list: &[u32]) -> Vec<u32> {
    let mut out: Vec<u32> = kvm_list.to_vec();
    for (index, _) in msr::boot_msrs() {
        if !out.contains(&index) {
            out.push(index);
        }
    }
    out
}

impl VcpuState {
    /// Reads the state of the (stopped) vCPU `fd`; `msrs` are the MSRs to save. An MSR KVM
    /// lists but cannot read on this vCPU (its CPUID hides the feature) is left out.
    pub fn save(fd: &VcpuFd, index: u8, msrs: &[u32]) -> Result<VcpuState, VcpuStateError> {
        let mp_state = ioctl(index, "KVM_GET_MP_STATE", fd.get_mp_state())?;
        let regs = ioctl(index, "KVM_GET_REGS", fd.get_regs())?;
        let sregs = ioctl(index, "KVM_GET_SREGS", fd.get_sregs())?;
        let xsave = ioctl(index, "KVM_GET_XSAVE", fd.get_xsave())?;
        let xcrs = ioctl(index, "KVM_GET_XCRS", fd.get_xcrs())?;
        let debugregs = ioctl(index, "KVM_GET_DEBUGREGS", fd.get_debug_regs())?;
        let lapic = ioctl(index, "KVM_GET_LAPIC", fd.get_lapic())?;
        let tsc_khz = fd.get_tsc_khz().ok();
        let cpuid = ioctl(
            index,
            "KVM_GET_CPUID2",
            fd.get_cpuid2(KVM_MAX_CPUID_ENTRIES),
        )?
        .as_slice()
        .to_vec();
        let mut msrs = read_msrs(fd, index, msrs)?;
        let tsc = msrs
            .iter()
            .find(|m| m.index == msr::MSR_IA32_TSC)
            .map(|m| m.data);
        if let (Some(tsc), Some(deadline)) = (
            tsc,
            msrs.iter_mut()
                .find(|m| m.index == MSR_IA32_TSC_DEADLINE && m.data == 0),
        ) {
            deadline.data = tsc;
        }
        let events = ioctl(index, "KVM_GET_VCPU_EVENTS", fd.get_vcpu_events())?;
        Ok(VcpuState {
            index,
            cpuid,
            msrs,
            regs,
            sregs,
            xsave,
            xcrs,
            debugregs,
            lapic,
            mp_state,
            events,
            tsc_khz,
        })
    }

    /// Loads this state into the new vCPU `fd` (not running yet).
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), VcpuStateError> {
        let index = self.index;
        let cpuid = CpuId::from_entries(&self.cpuid).map_err(|_| VcpuStateError::CpuidEntries {
            index,
            count: self.cpuid.len(),
        })?;
        ioctl(index, "KVM_SET_CPUID2", fd.set_cpuid2(&cpuid))?;
        ioctl(index, "KVM_SET_MP_STATE", fd.set_mp_state(self.mp_state))?;
        ioctl(index, "KVM_SET_REGS", fd.set_regs(&self.regs))?;
        ioctl(index, "KVM_SET_SREGS", fd.set_sregs(&self.sregs))?;
        // SAFETY: KVM_SET_XSAVE reads a kvm_xsave (4 KiB) from the reference, which is
        // exactly one; the VM refuses snapshots on hosts whose XSAVE state is larger
        // (`Vm::xsave_fits`), where the kernel would read beyond it.
        ioctl(index, "KVM_SET_XSAVE", unsafe { fd.set_xsave(&self.xsave) })?;
        ioctl(index, "KVM_SET_XCRS", fd.set_xcrs(&self.xcrs))?;
        ioctl(
            index,
            "KVM_SET_DEBUGREGS",
            fd.set_debug_regs(&self.debugregs),
        )?;
        ioctl(index, "KVM_SET_LAPIC", fd.set_lapic(&self.lapic))?;
        let msrs = Msrs::from_entries(&self.msrs).map_err(|_| VcpuStateError::MsrRefused {
            index,
            msr: 0,
            done: 0,
            total: self.msrs.len(),
        })?;
        let done = ioctl(index, "KVM_SET_MSRS", fd.set_msrs(&msrs))?;
        if done < self.msrs.len() {
            return Err(VcpuStateError::MsrRefused {
                index,
                msr: self.msrs.get(done).map_or(0, |m| m.index),
                done,
                total: self.msrs.len(),
            });
        }
        ioctl(
            index,
            "KVM_SET_VCPU_EVENTS",
            fd.set_vcpu_events(&self.events),
        )?;
        // Tells a guest using kvmclock that it was stopped (so it does not report a soft
        // lockup); KVM refuses it when the guest has not set kvmclock up, which is fine.
        let _ = fd.kvmclock_ctrl();
        Ok(())
    }

    /// Refuses a state whose CPU features this host cannot offer: each feature bit of
    /// leaves 1, 7 and 0x80000001 the snapshot's vCPU saw must be in `host` (the CPUID
    /// this host would give the same vCPU).
    pub fn check_cpuid(&self, host: &[kvm_cpuid_entry2]) -> Result<(), VcpuStateError> {
        let mut missing = Vec::new();
        let regs_of = |e: &kvm_cpuid_entry2| [e.eax, e.ebx, e.ecx, e.edx];
        for &(leaf, regs) in FEATURE_REGS {
            // Subleaf 0; the index only counts for leaves KVM flags as indexed.
            let find = |list: &[kvm_cpuid_entry2]| {
                list.iter()
                    .find(|e| {
                        e.function == leaf
                            && (e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || e.index == 0)
                    })
                    .map(regs_of)
            };
            let Some(saved) = find(&self.cpuid) else {
                continue;
            };
            let here = find(host).unwrap_or([0; 4]);
            for &reg in regs {
                let dynamic = DYNAMIC_BITS
                    .iter()
                    .filter(|(l, r, _)| *l == leaf && *r == reg)
                    .fold(0, |a, (_, _, m)| a | m);
                let extra = saved.get(reg).copied().unwrap_or(0)
                    & !here.get(reg).copied().unwrap_or(0)
                    & !dynamic;
                if extra != 0 {
                    let name = REG_NAMES.get(reg).copied().unwrap_or("?");
                    missing.push(format!("leaf {leaf:#x} {name} bits {extra:#x}"));
                }
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(VcpuStateError::MissingFeatures {
                index: self.index,
                missing: missing.join(", "),
            })
        }
    }
}

/// Reads `list`, leaving out the MSRs this vCPU cannot read (KVM_GET_MSRS stops at the
/// first one it refuses).
fn read_msrs(fd: &VcpuFd, index: u8, list: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut wanted: Vec<kvm_msr_entry> = list
        .iter()
        .map(|&i| kvm_msr_entry {
            index: i,
            ..Default::default()
        })
        .collect();
    let mut out = Vec::with_capacity(wanted.len());
    while !wanted.is_empty() {
        let mut msrs = Msrs::from_entries(&wanted).map_err(|_| VcpuStateError::MsrRefused {
            index,
            msr: 0,
            done: 0,
            total: wanted.len(),
        })?;
        let n = ioctl(index, "KVM_GET_MSRS", fd.get_msrs(&mut msrs))?;
        out.extend_from_slice(msrs.as_slice().get(..n).unwrap_or(&[]));
        if n < wanted.len() {
            crate::log_debug!(
                "vCPU {index}: MSR {:#x} cannot be read; it is not saved",
                wanted[n].index
            );
            wanted.drain(..=n);
        } else {
            wanted.clear();
        }
    }
    Ok(out)
}

impl Persist for kvm_cpuid_entry2 {
    fn encode(&self, e: &mut Encoder) {
        e.pod(self);
    }
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        d.pod("vCPU CPUID entry")
    }
}

impl Persist for kvm_msr_entry {
    fn encode(&self, e: &mut Encoder) {
        e.u32(self.index);
        e.u64(self.data);
    }
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        Ok(kvm_msr_entry {
            index: d.u32("vCPU MSR index")?,
            data: d.u64("vCPU MSR value")?,
            ..Default::default()
        })
    }
}

impl Persist for VcpuState {
    fn encode(&self, e: &mut Encoder) {
        e.u8(self.index);
        e.list(&self.cpuid);
        e.list(&self.msrs);
        e.pod(&self.regs);
        e.pod(&self.sregs);
        e.pod(&self.xsave);
        e.pod(&self.xcrs);
        e.pod(&self.debugregs);
        e.pod(&self.lapic);
        e.pod(&self.mp_state);
        e.pod(&self.events);
        e.bool(self.tsc_khz.is_some());
        e.u32(self.tsc_khz.unwrap_or(0));
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        let index = d.u8("vCPU index")?;
        let cpuid = d.list(
            "vCPU CPUID entries",
            KVM_MAX_CPUID_ENTRIES,
            std::mem::size_of::<kvm_cpuid_entry2>(),
        )?;
        let msrs = d.list("vCPU MSRs", MAX_MSRS, 12)?;
        let regs = d.pod("vCPU registers")?;
        let sregs = d.pod("vCPU special registers")?;
        let xsave = d.pod("vCPU XSAVE area")?;
        let xcrs = d.pod("vCPU XCRs")?;
        let debugregs = d.pod("vCPU debug registers")?;
        let lapic = d.pod("vCPU local APIC")?;
        let mp_state = d.pod("vCPU MP state")?;
        let events = d.pod("vCPU events")?;
        let has_khz = d.bool("vCPU TSC frequency")?;
        let khz = d.u32("vCPU TSC frequency")?;
        if !has_khz && khz != 0 {
            return Err(CodecError::Invalid {
                what: "vCPU TSC frequency",
                value: format!("{khz} where none is saved"),
            });
        }
        Ok(VcpuState {
            index,
            cpuid,
            msrs,
            regs,
            sregs,
            xsave,
            xcrs,
            debugregs,
            lapic,
            mp_state,
            events,
            tsc_khz: has_khz.then_some(khz),
        })
    }
}
