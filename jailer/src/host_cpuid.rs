//! KVM's supported CPUID (`KVM_GET_SUPPORTED_CPUID`), asked for by the jailer on its VMM's
//! behalf. The query is the slowest part of a VM's creation on the development hosts
//! (0.7–1 ms: each CPUID instruction the kernel runs for it traps to the outer hypervisor)
//! and holds up the VM's creation in the VMM. The jailer asks on a thread of its own started
//! in step 1, beside its own steps (on two CPUs they leave room for it: the main thread waits
//! for its helper threads after step 3), and joins it once steps 2 to 4 are done.
//!
//! In step 9 the answer goes to the VMM in its environment, as [`ENV`] — the only variable
//! there —, the entries as kvm-bindings serialises them (a JSON array of each
//! `kvm_cpuid_entry2`'s bytes, as the kernel lays them out; the VMM's side:
//! `vmm/src/vstate/host_cpuid.rs`). No descriptor is handed over: the VMM still starts with
//! only 0, 1 and 2 open. A VMM that is not Kiln's ignores the variable.
//!
//! Nothing here fails a jail: without an answer (no `/dev/kvm`, a failed query) there is
//! nothing to hand over, and the VMM asks KVM itself, reporting what is wrong.

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;

/// The VMM's environment variable (as the VMM spells it).
pub const ENV: &str = "KILN_HOST_CPUID";

/// Starts [`query`] on a thread of its own (`None` if it cannot be started).
pub fn start() -> Option<std::thread::JoinHandle<Option<String>>> {
    std::thread::Builder::new()
        .name("host cpuid".into())
        .spawn(query)
        .ok()
}

/// The entries KVM supports, as [`ENV`]'s value; `None` when KVM cannot be asked.
fn query() -> Option<String> {
    let kvm = kvm_ioctls::Kvm::new().ok()?;
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).ok()?;
    serde_json::to_string(cpuid.as_slice()).ok()
}
