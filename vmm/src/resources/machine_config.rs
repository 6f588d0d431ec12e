//! `machine-config`: vCPUs, memory, CPU template, and (Kiln) whether the VM has KVM's
//! in-kernel PIT.

use super::spec::null_as_default;
use super::ResourceError;
use serde::{Deserialize, Serialize};

pub const MAX_VCPUS: u8 = 32;
/// Smallest guest memory accepted (the tiny test guest fits in 2 MiB).
pub const MIN_MEM_MIB: u64 = 2;
/// Largest guest memory accepted: 256 GiB.
pub const MAX_MEM_MIB: u64 = 256 * 1024;

/// A static CPU template: a set of CPUID features hidden from the guest, as Firecracker's
/// templates do (every x86_64 template of its spec, plus Kiln's `Baseline`). `None` passes
/// the host's supported features through (normalised). Kiln's templates only hide
/// features, on any host vendor (`arch::x86_64::cpu_templates`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum CpuTemplate {
    #[default]
    None,
    /// Intel Cascade Lake-like baseline.
    C3,
    /// Intel Skylake-like baseline (T2).
    T2,
    /// T2 with the mitigations-related features also hidden.
    T2S,
    /// T2's instruction set, limited to what Intel Cascade Lake and AMD Milan share (pairs
    /// with `T2A`).
    T2CL,
    /// The same instruction set as `T2CL`, named for AMD hosts.
    T2A,
    /// Kiln: an x86-64 baseline that also hides CMPXCHG16B, the XSAVE family (and AVX*,
    /// FMA, F16C with it), POPCNT, PCID, RDRAND, and every leaf-7 feature. For hosts whose
    /// KVM emulates guest ring 0 and fails on those instructions (see docs/vmm.md).
    Baseline,
}

/// What backs guest memory.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum HugePages {
    /// Regular pages.
    #[default]
    None,
    /// Transparent huge pages where the host can give them (`madvise(MADV_HUGEPAGE)`).
    Transparent,
    /// 2 MiB hugetlbfs pages, reserved when the memory is mapped: a host without enough
    /// free huge pages refuses `InstanceStart` instead of failing a guest access later.
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub vcpu_count: u8,
    pub mem_size_mib: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub smt: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub track_dirty_pages: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub cpu_template: CpuTemplate,
    #[serde(default, deserialize_with = "null_as_default")]
    pub huge_pages: HugePages,
    /// Kiln: whether the VM gets KVM's in-kernel i8254 PIT (default `true`, as Firecracker
    /// gives every VM). A guest that keeps time without it (the TSC: Kiln's function images
    /// and the tiny test guest) is better off without: destroying a VM with a PIT waits for
    /// several SRCU grace periods and a kernel thread (~13 ms of a ~16 ms teardown,
    /// docs/benchmarks.md). Without one, ports 0x40-0x43 reach the VMM, which has no device
    /// there. Written back only when `false`, so a default configuration reads as before.
    #[serde(
        default = "with_pit",
        deserialize_with = "null_as_true",
        skip_serializing_if = "is_true"
    )]
    pub pit: bool,
}

fn with_pit() -> bool {
    true
}

fn is_true(v: &bool) -> bool {
    *v
}

/// `"pit": null` reads as the default (`true`), as if the field were absent.
fn null_as_true<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(true))
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            cpu_template: CpuTemplate::None,
            huge_pages: HugePages::None,
            pit: true,
        }
    }
}

/// `PATCH /machine-config`: only the fields present change.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    pub vcpu_count: Option<u8>,
    pub mem_size_mib: Option<u64>,
    pub smt: Option<bool>,
    pub track_dirty_pages: Option<bool>,
    pub cpu_template: Option<CpuTemplate>,
    pub huge_pages: Option<HugePages>,
    pub pit: Option<bool>,
}

impl MachineConfig {
    pub(super) fn apply(mut self, upd: MachineConfigUpdate) -> Self {
        if let Some(v) = upd.vcpu_count {
            self.vcpu_count = v;
        }
        if let Some(v) = upd.mem_size_mib {
            self.mem_size_mib = v;
        }
        if let Some(v) = upd.smt {
            self.smt = v;
        }
        if let Some(v) = upd.track_dirty_pages {
            self.track_dirty_pages = v;
        }
        if let Some(v) = upd.cpu_template {
            self.cpu_template = v;
        }
        if let Some(v) = upd.huge_pages {
            self.huge_pages = v;
        }
        if let Some(v) = upd.pit {
            self.pit = v;
        }
        self
    }

    pub(super) fn validated(self) -> Result<Self, ResourceError> {
        if self.vcpu_count == 0 || self.vcpu_count > MAX_VCPUS {
            return Err(ResourceError::VcpuCount(self.vcpu_count.into()));
        }
        if self.smt && self.vcpu_count > 1 && !self.vcpu_count.is_multiple_of(2) {
            return Err(ResourceError::SmtVcpuCount(self.vcpu_count.into()));
        }
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&self.mem_size_mib) {
            return Err(ResourceError::MemSize(self.mem_size_mib));
        }
        if self.huge_pages == HugePages::Hugetlbfs2M && !self.mem_size_mib.is_multiple_of(2) {
            return Err(ResourceError::HugePagesMemSize(self.mem_size_mib));
        }
        Ok(self)
    }

    /// Guest memory size in bytes (cannot overflow: bounded by [`MAX_MEM_MIB`]).
    pub fn mem_size_bytes(&self) -> u64 {
        self.mem_size_mib << 20
    }
}
