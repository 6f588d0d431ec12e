//! Checking a shrunk seccomp program against its original (`kiln_bpf`): both run on inputs
//! built from given words and from the program's own constants.

use kiln_bpf::{run, Insn, SeccompData};

/// The architecture a policy's first test checks (x86_64): most inputs carry it, or every
/// run would stop at that test and never reach the rules behind it.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// Asserts `shrunk` is valid, no longer than `original`, and returns what `original` returns
/// on 64 inputs (fewer for fewer words) made of the programs' constants (first: the syscall numbers and
/// argument values its rules compare with) and `words` (e.g. from the fuzzer's bytes).
pub fn assert_same_answers(original: &[Insn], shrunk: &[Insn], words: &[u32]) {
    assert!(shrunk.len() <= original.len());
    kiln_bpf::check(shrunk).expect("the shrunk program is valid");
    let mut all: Vec<u32> = original
        .iter()
        .flat_map(|i| [i.k, i.k.wrapping_add(1)])
        .collect();
    all.extend_from_slice(words);
    all.extend([0, 1, 2, 3, 4, 5, 6, 7]);
    let words = all;
    // 64 starting points spread over all the words (a long program's last rules too).
    let n = words.len().min(64);
    for (i, start) in (0..n).map(|i| (i, i * words.len() / n)) {
        let w = |j: usize| words[(start + j) % words.len()];
        let input = SeccompData {
            nr: i32::from_ne_bytes(w(0).to_ne_bytes()),
            arch: if i % 8 == 7 { w(1) } else { AUDIT_ARCH_X86_64 },
            instruction_pointer: u64::from(w(2)),
            args: [0, 1, 2, 3, 4, 5].map(|i| u64::from(w(3 + i)) | u64::from(w(9 + i)) << 32),
        };
        assert_eq!(
            run(shrunk, &input),
            run(original, &input),
            "input {input:?}\noriginal {original:?}\nshrunk {shrunk:?}"
        );
    }
}

/// Big-endian words of `bytes`, 4 at a time (the last one shorter).
pub fn words(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks(4)
        .map(|c| c.iter().fold(0u32, |w, b| w << 8 | u32::from(*b)))
        .collect()
}
