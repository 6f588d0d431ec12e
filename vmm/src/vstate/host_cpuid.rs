//! The CPUID KVM can give guests, before per-vCPU normalisation (`KVM_GET_SUPPORTED_CPUID`):
//! the slowest of the host queries. On the development hosts it takes 0.7-1 ms (every CPUID
//! instruction the kernel runs for it traps to the outer hypervisor), and a `KVM_CREATE_VM`
//! issued meanwhile waits for it, so overlapping the two on two threads gains little
//! (measured with a two-thread C program: the VM is created only once the query is done).
//!
//! So in API mode the VMM asks ahead, on a thread of its own ([`prefetch`], started once
//! the API has answered its first requests): by the time `InstanceStart` builds the VM or
//! `PUT /snapshot/load` restores one, the answer is there. The first build or restore takes
//! it; any later one queries again. The answer depends only on the host's kernel and CPU,
//! not on anything the VMM is told. Booted from `--config-file`, the build queries it
//! beside the VM's creation as before (nothing to overlap it with).

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum HostCpuidError {
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0}")]
    Query(kvm_ioctls::Error),
}

type Answer = Result<CpuId, HostCpuidError>;

/// The query started by [`prefetch`], until someone takes its answer.
static PREFETCHED: Mutex<Option<JoinHandle<Answer>>> = Mutex::new(None);

/// Starts the query on a thread of its own (`kiln_cpuid`, which ends once it has the
/// answer; it inherits the caller's signal mask). A second call replaces a first one's
/// answer not yet taken.
pub fn prefetch() -> std::io::Result<()> {
    let handle = std::thread::Builder::new()
        .name("kiln_cpuid".into())
        .spawn(|| query(&Kvm::new().map_err(HostCpuidError::OpenKvm)?))?;
    *PREFETCHED.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
    Ok(())
}

/// The prefetched answer if nobody has taken it yet, else a fresh query through a
/// `/dev/kvm` handle of its own.
pub fn host_supported_cpuid() -> Answer {
    match take_prefetched() {
        Some(cpuid) => Ok(cpuid),
        None => query(&Kvm::new().map_err(HostCpuidError::OpenKvm)?),
    }
}

/// The prefetched answer if nobody has taken it yet, else a fresh query through `kvm`.
pub fn supported_cpuid_through(kvm: &Kvm) -> Answer {
    take_prefetched().map_or_else(|| query(kvm), Ok)
}

/// Waits for the prefetching thread, if one was started and nobody took its answer. A
/// thread that failed (say `/dev/kvm` could not be opened just then) or panicked has no
/// answer: the caller queries again, and reports its own error.
fn take_prefetched() -> Option<CpuId> {
    let handle = PREFETCHED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()?;
    handle.join().ok()?.ok()
}

fn query(kvm: &Kvm) -> Answer {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(HostCpuidError::Query)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::cpuid::{normalize, Topology};
    use crate::resources::CpuTemplate;

    /// Needs /dev/kvm (as every KVM test of this crate): the prefetched answer is taken
    /// once, then queries are fresh, and both give a vCPU the same CPUID. (The raw answers
    /// differ in what depends on the host CPU the query ran on, such as its APIC id in leaf
    /// 1, which the VMM replaces for each vCPU.)
    #[test]
    fn the_prefetched_answer_is_taken_once_and_gives_the_vcpus_what_a_fresh_one_does() {
        assert!(
            std::path::Path::new("/dev/kvm").exists(),
            "this test needs /dev/kvm"
        );
        prefetch().expect("spawn");
        let first = host_supported_cpuid().expect("prefetched");
        assert!(PREFETCHED.lock().unwrap().is_none(), "taken");
        let kvm = Kvm::new().expect("/dev/kvm");
        let second = supported_cpuid_through(&kvm).expect("fresh");
        assert!(first.as_slice().len() > 8, "{:?}", first.as_slice());
        let topo = Topology {
            vcpu_count: 2,
            smt: false,
        };
        for index in 0..2 {
            assert_eq!(
                normalize(first.as_slice(), index, topo, CpuTemplate::None),
                normalize(second.as_slice(), index, topo, CpuTemplate::None),
                "vCPU {index}"
            );
        }
    }
}
