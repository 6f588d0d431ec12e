// The generator narrows random words on purpose.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use super::*;
use std::collections::BTreeSet;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const ALLOW: u32 = 0x7fff_0000;
const KILL: u32 = 0x8000_0000;

fn ld(k: u32) -> Insn {
    Insn::new(op::LD_W_ABS, 0, 0, k)
}
fn jeq(k: u32, jt: u8, jf: u8) -> Insn {
    Insn::new(op::JMP | op::JEQ, jt, jf, k)
}
fn ja(k: u32) -> Insn {
    Insn::new(op::JMP | op::JA, 0, 0, k)
}
fn ret(k: u32) -> Insn {
    Insn::new(op::RET, 0, 0, k)
}

/// A small deterministic generator (xorshift64*): the tests are reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// Inputs that exercise `program`: every constant it compares with (and its neighbours) in
/// every field it loads, mixed at random with random words.
fn inputs(program: &[Insn], rng: &mut Rng, count: usize) -> Vec<SeccompData> {
    let mut words: BTreeSet<u32> = [0, 1, u32::MAX, AUDIT_ARCH_X86_64].into();
    for insn in program {
        for w in [insn.k.wrapping_sub(1), insn.k, insn.k.wrapping_add(1)] {
            words.insert(w);
        }
    }
    let words: Vec<u32> = words.into_iter().collect();
    let word = |rng: &mut Rng| match rng.below(4) {
        0 => rng.next() as u32,
        _ => rng.pick(&words),
    };
    (0..count)
        .map(|_| {
            let mut d = SeccompData {
                nr: word(rng) as i32,
                arch: if rng.below(8) == 0 {
                    word(rng)
                } else {
                    AUDIT_ARCH_X86_64
                },
                instruction_pointer: u64::from(word(rng)),
                args: [0; 6],
            };
            for arg in &mut d.args {
                *arg = u64::from(word(rng))
                    | u64::from(if rng.below(3) == 0 { word(rng) } else { 0 }) << 32;
            }
            d
        })
        .collect()
}

/// `shrink(program)` answers as `program` on every syscall number with zeroed arguments and
/// on `count` inputs built from its constants.
fn assert_equivalent(program: &[Insn], count: usize, seed: u64) -> Vec<Insn> {
    let shrunk = shrink(program).expect("a valid program");
    assert!(shrunk.len() <= program.len());
    check(&shrunk).expect("the shrunk program is valid");
    let mut rng = Rng(seed | 1);
    let mut all = inputs(program, &mut rng, count);
    all.extend((-2..500).map(|nr| SeccompData {
        nr,
        arch: AUDIT_ARCH_X86_64,
        ..SeccompData::default()
    }));
    for data in &all {
        let want = run(program, data);
        let got = run(&shrunk, data);
        assert_eq!(
            got, want,
            "input {data:?}\noriginal {program:?}\nshrunk {shrunk:?}"
        );
    }
    shrunk
}

fn compile_policy(name: &str) -> Vec<(String, Vec<Insn>)> {
    let path = format!(
        "{}/../../policies/seccomp/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read(&path).expect("read the policy");
    let map = seccompiler::compile_from_json(text.as_slice(), seccompiler::TargetArch::x86_64)
        .expect("compile the policy");
    let mut filters: Vec<(String, Vec<Insn>)> = map
        .into_iter()
        .map(|(n, p)| {
            (
                n,
                p.iter()
                    .map(|i| Insn::new(i.code, i.jt, i.jf, i.k))
                    .collect(),
            )
        })
        .collect();
    filters.sort_by(|a, b| a.0.cmp(&b.0));
    filters
}

#[test]
fn kiln_policies_shrink_to_equivalent_programs_less_than_half_as_long() {
    let mut seed = 7;
    for policy in ["api", "vmm", "vcpu", "jail"] {
        for (name, program) in compile_policy(policy) {
            seed += 1;
            let shrunk = assert_equivalent(&program, 20_000, seed);
            eprintln!(
                "{policy}/{name}: {} -> {} instructions",
                program.len(),
                shrunk.len()
            );
            if program.len() > 100 {
                assert!(
                    shrunk.len() * 2 < program.len(),
                    "{policy}/{name}: {} -> {}",
                    program.len(),
                    shrunk.len()
                );
            }
        }
    }
}

#[test]
fn a_syscall_test_becomes_one_jump_to_a_shared_return() {
    // seccompiler's shape: per syscall a comparison, two jumps and the rule's return.
    let mut program = vec![ld(4), jeq(AUDIT_ARCH_X86_64, 1, 0), ret(KILL), ld(0)];
    for nr in 0..3 {
        program.extend([jeq(nr, 0, 1), ja(1), ja(2), ret(ALLOW), ret(KILL)]);
    }
    program.push(ret(KILL));
    let shrunk = assert_equivalent(&program, 1000, 3);
    assert_eq!(
        shrunk,
        [
            ld(4),
            // The arch check's own return is shared with the default's.
            jeq(AUDIT_ARCH_X86_64, 0, 5),
            ld(0),
            jeq(0, 2, 0),
            jeq(1, 1, 0),
            jeq(2, 0, 1),
            ret(ALLOW),
            ret(KILL),
        ]
    );
}

#[test]
fn a_load_is_skipped_only_where_the_accumulator_surely_holds_it() {
    // A syscall test, then two argument rules; another number jumps `other` ahead (6: to the
    // final kill; 1: past the first load, straight to the first rule's comparison).
    let rules = |nr: u32, other: u8, a: u32, b: u32| {
        [
            ld(0),
            jeq(nr, 0, other),
            ld(16),
            jeq(a, 0, 1),
            ret(ALLOW),
            ld(16),
            jeq(b, 0, 1),
            ret(ALLOW),
            ret(KILL),
        ]
    };
    let count_loads = |p: &[Insn]| p.iter().filter(|i| **i == ld(16)).count();

    // Rule chains reload the argument: the second `ld [16]` is skipped from the first rule.
    let shrunk = assert_equivalent(&rules(16, 6, 5, 6), 2000, 5);
    assert_eq!(count_loads(&shrunk), 1, "{shrunk:?}");

    // Here the accumulator at the comparison holds either the number or the argument: the
    // load it jumps to must stay.
    let shrunk = assert_equivalent(&rules(1, 1, 7, 9), 2000, 9);
    assert_eq!(count_loads(&shrunk), 2, "{shrunk:?}");
}

#[test]
fn far_jumps_stay_within_a_conditional_jumps_reach() {
    // 300 syscall tests: no return is within 255 of all of them; two shared ones serve all.
    let mut program = vec![ld(0)];
    for nr in 0..300 {
        program.extend([jeq(nr, 0, 1), ja(1), ja(2), ret(ALLOW), ret(KILL)]);
    }
    program.push(ret(KILL));
    let shrunk = assert_equivalent(&program, 2000, 11);
    assert!(shrunk.len() <= 300 + 1 + 3, "{}", shrunk.len());
}

#[test]
fn invalid_programs_are_refused_with_the_instruction() {
    assert_eq!(shrink(&[]), Err(ProgramError::Empty));
    assert_eq!(shrink(&[ld(0)]), Err(ProgramError::FallsOff { at: 0 }));
    assert_eq!(
        shrink(&[jeq(1, 0, 1), ret(0)]),
        Err(ProgramError::JumpOut { at: 0 })
    );
    assert_eq!(
        shrink(&[ja(5), ret(0)]),
        Err(ProgramError::JumpOut { at: 0 })
    );
    assert_eq!(
        shrink(&[ja(u32::MAX), ret(0)]),
        Err(ProgramError::JumpOut { at: 0 })
    );
    // What seccomp refuses: unknown jumps, `ja x`, `ret x`, `mod`, byte loads.
    for code in [0x55, 0x0d, 0x0e, 0x94, 0x9c, 0x30, 0x28] {
        assert_eq!(
            shrink(&[Insn::new(code, 0, 0, 0), ret(0)]),
            Err(ProgramError::BadOpcode { at: 0, code }),
            "{code:#x}"
        );
    }
    // Operands it refuses: unaligned or outside the data, scratch word 16, `div #0`, shifts
    // of 32.
    for (code, k) in [
        (0x20, 3),
        (0x20, 64),
        (0x60, 16),
        (0x02, 16),
        (0x34, 0),
        (0x64, 32),
    ] {
        assert_eq!(
            shrink(&[Insn::new(code, 0, 0, k), ret(0)]),
            Err(ProgramError::BadOperand { at: 0, k }),
            "{code:#x} {k}"
        );
    }
    assert_eq!(
        shrink(&vec![ret(0); MAX_LEN + 1]),
        Err(ProgramError::TooLong(MAX_LEN + 1))
    );
}

/// A random valid program of the instructions seccomp accepts, every path ending in a return.
fn random_program(rng: &mut Rng) -> Vec<Insn> {
    let len = 2 + rng.below(60);
    let consts = [0, 1, 2, 5, 16, 0x7fff_0000, 0x8000_0000, u32::MAX];
    let mut p = Vec::with_capacity(len);
    for at in 0..len {
        let left = len - at - 1; // instructions after this one
        if left == 0 {
            p.push(if rng.below(2) == 0 {
                ret(rng.pick(&consts))
            } else {
                Insn::new(0x16, 0, 0, 0)
            });
            break;
        }
        let reach = |rng: &mut Rng| rng.below(left.min(256)) as u8;
        let insn = match rng.below(12) {
            0..=2 => ld(4 * rng.below(16) as u32),
            3..=5 => {
                let code = op::JMP
                    | rng.pick(&[op::JEQ, op::JGT, op::JGE, op::JSET])
                    | rng.pick(&[0, op::SRC_X]);
                Insn::new(code, reach(rng), reach(rng), rng.pick(&consts))
            }
            6 => ja(u32::from(reach(rng))),
            7 => ret(rng.pick(&consts)),
            8 => Insn::new(0x16, 0, 0, 0),
            9 => Insn::new(
                rng.pick(&[0x02, 0x03, 0x60, 0x61]),
                0,
                0,
                rng.below(16) as u32,
            ),
            10 => Insn::new(
                rng.pick(&[0x04, 0x14, 0x44, 0x54, 0x0c, 0x07, 0x87, 0x00, 0x01]),
                0,
                0,
                rng.pick(&consts),
            ),
            _ => Insn::new(0x54, 0, 0, rng.pick(&consts)),
        };
        p.push(insn);
    }
    p
}

#[test]
fn random_programs_keep_their_answers() {
    let mut rng = Rng(0x5eed);
    for round in 0..3000 {
        let program = random_program(&mut rng);
        assert_equivalent(&program, 64, round);
    }
}
