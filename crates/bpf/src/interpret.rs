//! [`run`]: a classic BPF program executed on one seccomp input, as the kernel would (the
//! instructions seccomp accepts: loads of the seccomp data, immediates and scratch words,
//! ALU, jumps, returns, `tax`/`txa`: what [`check`] accepts). What checks [`crate::shrink`];
//! not used to filter.

use crate::{check, flow, op, Flow, Insn, ProgramError};

/// `struct seccomp_data`: what a filter reads with `ld [k]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SeccompData {
    pub nr: i32,
    pub arch: u32,
    pub instruction_pointer: u64,
    pub args: [u64; 6],
}

impl SeccompData {
    /// Its size in bytes (what `ld len` loads).
    pub const SIZE: u32 = 64;

    /// The 32-bit word at byte offset `k` (native byte order, as the kernel lays it out).
    fn word(&self, k: u32) -> Option<u32> {
        let mut bytes = [0u8; Self::SIZE as usize];
        bytes[0..4].copy_from_slice(&self.nr.to_ne_bytes());
        bytes[4..8].copy_from_slice(&self.arch.to_ne_bytes());
        bytes[8..16].copy_from_slice(&self.instruction_pointer.to_ne_bytes());
        for (i, arg) in self.args.iter().enumerate() {
            bytes[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_ne_bytes());
        }
        let at = usize::try_from(k).ok()?;
        if at % 4 != 0 {
            return None;
        }
        let word = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_ne_bytes([word[0], word[1], word[2], word[3]]))
    }
}

/// The value `program` returns for `data`; a program [`check`] refuses is not run.
pub fn run(program: &[Insn], data: &SeccompData) -> Result<u32, ProgramError> {
    check(program)?;
    let len = program.len();
    let (mut a, mut x) = (0u32, 0u32);
    let mut mem = [0u32; 16];
    let mut at = 0;
    loop {
        let insn = *program.get(at).ok_or(ProgramError::JumpOut { at })?;
        // `check` accepted the opcode and its operand; these only keep the match total.
        let bad_opcode = ProgramError::BadOpcode {
            at,
            code: insn.code,
        };
        let bad_operand = ProgramError::BadOperand { at, k: insn.k };
        let scratch = |k: u32| usize::try_from(k).ok().filter(|&i| i < 16);
        let flow = flow(insn, at, len)?;
        match insn.code & op::CLASS {
            op::LD => {
                a = match insn.code {
                    op::LD_W_ABS => data.word(insn.k).ok_or(bad_operand)?,
                    0x80 => SeccompData::SIZE, // ld len
                    0x00 => insn.k,            // ld #k
                    0x60 => mem[scratch(insn.k).ok_or(bad_operand)?],
                    _ => return Err(bad_opcode),
                }
            }
            op::LDX => {
                x = match insn.code {
                    0x81 => SeccompData::SIZE,
                    0x01 => insn.k,
                    0x61 => mem[scratch(insn.k).ok_or(bad_operand)?],
                    _ => return Err(bad_opcode),
                }
            }
            op::ST | op::STX => {
                mem[scratch(insn.k).ok_or(bad_operand)?] = if insn.code == op::ST { a } else { x };
            }
            op::ALU => {
                let operand = if insn.code & op::SRC_X != 0 {
                    x
                } else {
                    insn.k
                };
                a = match insn.code & op::OP {
                    0x00 => a.wrapping_add(operand),
                    0x10 => a.wrapping_sub(operand),
                    0x20 => a.wrapping_mul(operand),
                    // Division by zero (x = 0) ends the program with 0, as in the kernel.
                    0x30 => match a.checked_div(operand) {
                        Some(q) => q,
                        None => return Ok(0),
                    },
                    0x40 => a | operand,
                    0x50 => a & operand,
                    0xa0 => a ^ operand,
                    0x60 => a.checked_shl(operand).unwrap_or(0),
                    0x70 => a.checked_shr(operand).unwrap_or(0),
                    0x80 => a.wrapping_neg(),
                    _ => return Err(bad_opcode),
                }
            }
            op::RET => return Ok(if insn.code == 0x16 { a } else { insn.k }),
            op::MISC => match insn.code {
                0x07 => x = a, // tax
                _ => a = x,    // txa
            },
            _ => {} // jumps: below
        }
        at = match flow {
            Flow::Ja(t) => t,
            Flow::Cond(t, f) => {
                let operand = if insn.code & op::SRC_X != 0 {
                    x
                } else {
                    insn.k
                };
                let taken = match insn.code & op::OP {
                    op::JEQ => a == operand,
                    op::JGT => a > operand,
                    op::JGE => a >= operand,
                    _ => a & operand != 0, // JSET
                };
                if taken {
                    t
                } else {
                    f
                }
            }
            Flow::Next | Flow::Ret => at + 1,
        };
    }
}
