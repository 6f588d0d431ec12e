//! The seccomp policy loaders, on the same file:
//!
//! - the VMM's `--seccomp-filter FILE` (`vmm/src/seccomp/`, `FilterSet::from_file`): a JSON
//!   filter set (seccompiler's format, one filter per thread kind) or a compiled one
//!   (`format::decode`), with Kiln's checks of the programs;
//! - the jailer's `--seccomp-policy FILE` (`jailer/src/seccomp.rs`, `seccomp::compile`).
//!
//! Input: the file's bytes (a compiled set starts with `KILN-BPF`).
//!
//! Besides "Ok or a typed error, never a panic": an accepted filter set round-trips through
//! the compiled format unchanged, log mode changes no program's length, and every program
//! seccompiler compiles from the file answers as its `kiln_bpf::shrink` form does.
#![no_main]

use kiln_fuzz::MemFile;
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::path::Path;
use vmm::seccomp::{FilterSet, ThreadKind};

thread_local! {
    static POLICY: RefCell<MemFile> = RefCell::new(MemFile::new("kiln-fuzz-seccomp"));
}

fuzz_target!(|data: &[u8]| {
    kiln_fuzz::setup();
    POLICY.with(|p| {
        let mut p = p.borrow_mut();
        let path = p.set(data).to_string();
        let loaded = FilterSet::from_file(Path::new(&path));
        kiln_fuzz::debug(|| match &loaded {
            Ok(_) => "the VMM accepted the filter set".into(),
            Err(e) => format!("the VMM refused it: {e}"),
        });
        if let Ok(set) = loaded {
            let compiled = set.to_compiled();
            let back = FilterSet::from_compiled("round trip", &compiled)
                .expect("an accepted filter set reloads from its compiled form");
            assert!(back == set, "the compiled form changed the filters");
            let logged = set.clone().into_log_mode();
            for kind in ThreadKind::ALL {
                assert!(!set.get(kind).is_empty());
                assert_eq!(logged.get(kind).len(), set.get(kind).len());
            }
        }
        let jail = jailer::seccomp::compile(Some(Path::new(&path)));
        kiln_fuzz::debug(|| match &jail {
            Ok(_) => "the jailer accepted the policy".into(),
            Err(e) => format!("the jailer refused it: {e}"),
        });
        // Both loaders install seccompiler's programs shrunk by kiln-bpf: each shrunk
        // program answers as seccompiler's own.
        if let Ok(map) = seccompiler::compile_from_json(data, seccompiler::TargetArch::x86_64) {
            for program in map.values() {
                let original: Vec<kiln_bpf::Insn> = program
                    .iter()
                    .map(|i| kiln_bpf::Insn::new(i.code, i.jt, i.jf, i.k))
                    .collect();
                let shrunk = kiln_bpf::shrink(&original).expect("seccompiler's programs are valid");
                kiln_fuzz::bpf::assert_same_answers(
                    &original,
                    &shrunk,
                    &kiln_fuzz::bpf::words(data),
                );
            }
        }
    });
});
