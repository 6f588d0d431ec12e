//! Checking a shrunk seccomp program against its original (`kiln_bpf`): both run on inputs
//! built from given words and from the program's own constants.

use kiln_bpf::{run, Insn, SeccompData};

/// Asserts `shrunk` is valid, no longer than `original`, and returns what `original` returns
/// on up to 64 inputs made of `words` (e.g. from the fuzzer's bytes) and the programs'
/// constants.
pub fn assert_same_answers(original: &[Insn], shrunk: &[Insn], words: &[u32]) {
    assert!(shrunk.len() <= original.len());
    kiln_bpf::check(shrunk).expect("the shrunk program is valid");
    let mut words = words.to_vec();
    words.extend(original.iter().flat_map(|i| [i.k, i.k.wrapping_add(1)]));
    words.extend([0, 1, 2, 3, 4, 5, 6, 7, 0xc000_003e]);
    for start in 0..words.len().min(64) {
        let w = |i: usize| words[(start + i) % words.len()];
        let input = SeccompData {
            nr: i32::from_ne_bytes(w(0).to_ne_bytes()),
            arch: w(1),
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
