//! `kiln_bpf::shrink` (crates/bpf): the rewriter that shortens every seccomp filter Kiln
//! installs.
//!
//! Input: a program built from the bytes, 8 per instruction, from the instructions seccomp
//! accepts (loads, scratch words, ALU, `tax`/`txa`, every jump, returns), every jump kept
//! inside the program and the last instruction a return; then seccomp inputs from the bytes
//! left and from the program's own constants.
//!
//! Checks: the shrunk program is valid, no longer, and returns what the original returns for
//! every input (both run by `kiln_bpf::run`); a program with a jump out of it is refused.
#![no_main]

use kiln_bpf::{shrink, Insn};
use libfuzzer_sys::fuzz_target;

const JUMPS: [u16; 4] = [0x10, 0x20, 0x30, 0x40]; // jeq, jgt, jge, jset
const OTHERS: [u16; 12] = [
    0x00, 0x01, 0x02, 0x03, 0x60, 0x61, // ld #k, ldx #k, st, stx, ld M[k], ldx M[k]
    0x04, 0x14, 0x44, 0x54, 0x07, 0x87, // add, sub, or, and, tax, txa
];

fn program(bytes: &[u8]) -> Vec<Insn> {
    let chunks: Vec<&[u8]> = bytes.chunks_exact(8).take(200).collect();
    let len = chunks.len();
    let mut p = Vec::with_capacity(len);
    for (at, c) in chunks.iter().enumerate() {
        let left = len - at - 1;
        let k = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        let reach = |b: u8| u8::try_from(usize::from(b) % left.clamp(1, 256)).unwrap_or(0);
        let insn = if left == 0 {
            Insn::new(if c[0] & 1 == 0 { 0x06 } else { 0x16 }, 0, 0, k)
        } else {
            match c[0] % 8 {
                0 | 1 => Insn::new(0x20, 0, 0, 4 * (k % 16)),
                2 | 3 => {
                    let code = 0x05 | JUMPS[usize::from(c[1] % 4)] | u16::from(c[1] & 0x08);
                    Insn::new(code, reach(c[2]), reach(c[3]), k % 8)
                }
                4 => Insn::new(0x05, 0, 0, u32::from(reach(c[2]))),
                5 => Insn::new(0x06, 0, 0, k % 4),
                6 => Insn::new(OTHERS[usize::from(c[1]) % OTHERS.len()], 0, 0, k % 16),
                _ => Insn::new(0x16, 0, 0, 0),
            }
        };
        p.push(insn);
    }
    p
}

fuzz_target!(|data: &[u8]| {
    let split = data.len().min(8 * 200) / 8 * 8;
    let (code, rest) = data.split_at(split);
    let prog = program(code);
    if prog.is_empty() {
        assert!(shrink(&prog).is_err());
        return;
    }
    let shrunk = shrink(&prog).expect("a program built inside its bounds is valid");
    kiln_fuzz::bpf::assert_same_answers(&prog, &shrunk, &kiln_fuzz::bpf::words(rest));
    // A jump out of the program is refused, not followed.
    let mut out = prog.clone();
    out[0] = Insn::new(0x05, 0, 0, u32::try_from(prog.len()).unwrap_or(u32::MAX));
    assert!(shrink(&out).is_err());
});
