//! The CPUID KVM can give guests, before per-vCPU normalisation (`KVM_GET_SUPPORTED_CPUID`):
//! the slowest of the host queries. On the development hosts it takes 0.7-1 ms (every CPUID
//! instruction the kernel runs for it traps to the outer hypervisor), and a `KVM_CREATE_VM`
//! issued meanwhile waits for it, so overlapping the two on two threads gains little
//! (measured with a two-thread C program: the VM is created only once the query is done).
//!
//! So the answer is asked for ahead where it can be:
//!
//! - Under Kiln's jailer, the jailer asks on a thread of its own beside its steps 1 to 3
//!   and hands the answer over in the VMM's environment, as [`HANDED_OVER_ENV`] (the
//!   entries as kvm-bindings serialises them: a JSON array of each `kvm_cpuid_entry2`'s
//!   bytes); [`receive_handed_over`] reads it at start-up. This is what takes the query off
//!   a jailed config-file boot's path.
//! - In API mode without one, the VMM asks on a thread of its own ([`prefetch`], started
//!   once the API has answered its first requests).
//!
//! By the time `InstanceStart` (or the config file's boot) builds the VM or `PUT
//! /snapshot/load` restores one, the answer is there. The first build or restore takes it;
//! any later one queries again. The answer depends on the host's kernel and CPU, not on
//! anything the VMM is told — nor on the process that asks, as long as the VMM requests no
//! extended-state permission (`ARCH_REQ_XCOMP_GUEST_PERM`, which AMX guests would need and
//! which changes leaf 0xD for the asking process only): a VMM that ever does must ignore a
//! handed-over answer. Otherwise the build queries it beside the VM's creation.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;
use zerocopy::FromBytes;

/// The environment variable in which the jailer hands over its answer (docs/jailer.md,
/// step 9).
pub const HANDED_OVER_ENV: &str = "KILN_HOST_CPUID";
/// Longest value read: KVM's most entries, each 40 numbers of up to 3 digits and their
/// separators.
const MAX_HANDED_OVER_BYTES: usize = KVM_MAX_CPUID_ENTRIES * (40 * 4 + 2) + 2;

#[derive(Debug, thiserror::Error)]
pub enum HostCpuidError {
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0}")]
    Query(kvm_ioctls::Error),
    #[error("{HANDED_OVER_ENV}: {0}")]
    HandedOver(String),
}

type Answer = Result<CpuId, HostCpuidError>;

/// The answers asked for ahead, until the first build or restore takes one.
static AHEAD: Mutex<Ahead> = Mutex::new(Ahead {
    handed_over: None,
    prefetched: None,
});

struct Ahead {
    /// The jailer's answer ([`receive_handed_over`]).
    handed_over: Option<CpuId>,
    /// The query started by [`prefetch`].
    prefetched: Option<JoinHandle<Answer>>,
}

/// What [`Ahead::take`] gives: an answer, or the thread that will have it.
enum Taken {
    Ready(CpuId),
    Thread(JoinHandle<Answer>),
}

impl Ahead {
    /// The jailer's answer first, else the prefetching thread (waited for without the
    /// lock); each once.
    fn take(&mut self) -> Option<Taken> {
        match self.handed_over.take() {
            Some(cpuid) => Some(Taken::Ready(cpuid)),
            None => self.prefetched.take().map(Taken::Thread),
        }
    }
}

fn ahead() -> std::sync::MutexGuard<'static, Ahead> {
    AHEAD.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Takes the answer the jailer handed over in [`HANDED_OVER_ENV`], kept for the first build
/// or restore. `Ok(false)` without one; an error names what was wrong (the caller logs it,
/// and the VMM queries KVM itself).
pub fn receive_handed_over() -> Result<bool, HostCpuidError> {
    let Some(value) = std::env::var_os(HANDED_OVER_ENV) else {
        return Ok(false);
    };
    let cpuid = decode(value.as_encoded_bytes())?;
    ahead().handed_over = Some(cpuid);
    Ok(true)
}

/// Whether an answer handed over by the jailer is waiting (so nothing need be prefetched).
pub fn handed_over() -> bool {
    ahead().handed_over.is_some()
}

/// [`HANDED_OVER_ENV`]'s value as entries: 1 to KVM's most, each exactly one entry's bytes.
fn decode(value: &[u8]) -> Answer {
    let bad = |why: String| HostCpuidError::HandedOver(why);
    if value.len() > MAX_HANDED_OVER_BYTES {
        return Err(bad(format!(
            "{} bytes (at most {MAX_HANDED_OVER_BYTES})",
            value.len()
        )));
    }
    // Each entry as its bytes (kvm-bindings' own deserialiser would pad a short one with
    // zeros), then exactly one entry's size each.
    // serde_json quotes what it did not expect: at most a line of it in the message.
    let raw: Vec<Vec<u8>> = serde_json::from_slice(value)
        .map_err(|e| bad(e.to_string().chars().take(120).collect()))?;
    if raw.is_empty() || raw.len() > KVM_MAX_CPUID_ENTRIES {
        return Err(bad(format!(
            "{} entries (1 to {KVM_MAX_CPUID_ENTRIES})",
            raw.len()
        )));
    }
    let entries = raw
        .iter()
        .map(|e| {
            kvm_cpuid_entry2::read_from_bytes(e).map_err(|_| {
                bad(format!(
                    "an entry of {} bytes (one is {})",
                    e.len(),
                    std::mem::size_of::<kvm_cpuid_entry2>()
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    CpuId::from_entries(&entries).map_err(|e| bad(format!("{e:?}")))
}

/// Starts the query on a thread of its own (`kiln_cpuid`, which ends once it has the
/// answer; it inherits the caller's signal mask). A second call replaces a first one's
/// answer not yet taken.
pub fn prefetch() -> std::io::Result<()> {
    let handle = std::thread::Builder::new()
        .name("kiln_cpuid".into())
        .spawn(|| query(&Kvm::new().map_err(HostCpuidError::OpenKvm)?))?;
    ahead().prefetched = Some(handle);
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

/// The answer handed over by the jailer if nobody took it yet; else waits for the
/// prefetching thread, if one was started and nobody took its answer. A thread that failed
/// (say `/dev/kvm` could not be opened just then) or panicked has no answer: the caller
/// queries again, and reports its own error.
fn take_prefetched() -> Option<CpuId> {
    let taken = ahead().take()?;
    match taken {
        Taken::Ready(cpuid) => Some(cpuid),
        Taken::Thread(handle) => handle.join().ok()?.ok(),
    }
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
        assert!(ahead().prefetched.is_none(), "taken");
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
    /// What the jailer hands over (KVM's answer as kvm-bindings serialises it, as
    /// jailer/src/host_cpuid.rs writes it) decodes to that answer; anything else is refused,
    /// named, without a panic.
    #[test]
    fn a_handed_over_answer_decodes_to_kvms_and_a_bad_one_is_named() {
        assert!(
            std::path::Path::new("/dev/kvm").exists(),
            "this test needs /dev/kvm"
        );
        let kvm = Kvm::new().expect("/dev/kvm");
        let answer = query(&kvm).expect("KVM_GET_SUPPORTED_CPUID");
        let value = serde_json::to_string(answer.as_slice()).expect("serialise");
        assert!(
            value.len() <= MAX_HANDED_OVER_BYTES,
            "{} bytes",
            value.len()
        );
        let decoded = decode(value.as_bytes()).expect("decode");
        assert_eq!(decoded.as_slice(), answer.as_slice());

        let zeros = |n: usize| format!("[{}]", vec!["0"; n].join(","));
        let entries = |n: usize, each: &str| format!("[{}]", vec![each; n].join(","));
        let cases = [
            (String::new(), "EOF"),
            ("not json".to_owned(), "expected"),
            ("[]".to_owned(), "0 entries"),
            (entries(1, &zeros(39)), "an entry of 39 bytes"),
            (entries(1, &zeros(41)), "an entry of 41 bytes"),
            (entries(1, "[256]"), "256"),
            (entries(1, "[-1]"), "-1"),
            (
                entries(KVM_MAX_CPUID_ENTRIES + 1, "[]"),
                "257 entries (1 to 256)",
            ),
            (" ".repeat(MAX_HANDED_OVER_BYTES + 1), "bytes (at most"),
            // A long bad value is quoted, but not whole.
            (format!("[[\"{}\"]]", "x".repeat(30_000)), "invalid type"),
        ];
        for (value, named) in cases {
            match decode(value.as_bytes()) {
                Err(e) => {
                    let e = e.to_string();
                    assert!(e.starts_with(HANDED_OVER_ENV), "{e}");
                    assert!(e.len() < 200, "{} bytes: {e:.200}", e.len());
                    assert!(e.contains(named), "{e:?} should name {named:?}");
                }
                Ok(c) => panic!("{value:.60} accepted: {:?}", c.as_slice()),
            }
        }
    }

    /// The jailer's answer is taken before a prefetched one, and each only once.
    #[test]
    fn the_jailers_answer_is_taken_first_and_each_answer_once() {
        let entry = |function| kvm_cpuid_entry2 {
            function,
            ..Default::default()
        };
        let handed = CpuId::from_entries(&[entry(1)]).expect("one entry");
        let fetched = CpuId::from_entries(&[entry(2)]).expect("one entry");
        let thread = std::thread::spawn(move || Ok(fetched));
        let mut ahead = Ahead {
            handed_over: Some(handed),
            prefetched: Some(thread),
        };
        let first = match ahead.take() {
            Some(Taken::Ready(c)) => c,
            _ => panic!("the jailer's answer first"),
        };
        assert_eq!(first.as_slice()[0].function, 1);
        let second = match ahead.take() {
            Some(Taken::Thread(t)) => t.join().expect("thread").expect("answer"),
            _ => panic!("then the prefetching thread"),
        };
        assert_eq!(second.as_slice()[0].function, 2);
        assert!(ahead.take().is_none(), "nothing left: a fresh query");
    }
}
