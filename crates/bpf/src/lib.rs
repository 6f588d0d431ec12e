//! Classic BPF programs as seccomp runs them.
//!
//! seccompiler, which compiles Kiln's seccomp policies, emits each syscall's test as a
//! comparison and two unconditional jumps, each argument rule as a fresh load of the
//! argument, and a return instruction per rule. The kernel's cost of installing a filter
//! (checking and converting it, JIT-compiling it, and emulating it for every syscall number to
//! fill its action cache) grows with the program's length, and a syscall walks the chain of
//! tests before its own. [`shrink`] rewrites a program into an equivalent shorter one;
//! [`run`] executes a program the way the kernel does, so that tests and the fuzz target can
//! check that both answer every input alike.
//!
//! Only control flow is rewritten, never what an instruction computes, by four rules, each
//! sound on its own because jumps and returns change no register or scratch word:
//!
//! - a jump to an unconditional jump goes straight to that jump's target, and an
//!   unconditional jump to a return becomes that return;
//! - a jump to a return may go to any identical return within its reach (a return gives the
//!   same answer from the same state, and a jump does not change the state);
//! - a jump to `ld [k]` from a point where the accumulator provably already holds word `k`
//!   of the (immutable) seccomp data skips that load;
//! - a conditional jump with both branches to one place becomes unconditional, and
//!   instructions no path reaches, or that jump to the next one, are dropped.
//!
//! Jumps in classic BPF only go forward and dropping instructions only shortens them, so a
//! conditional jump's 8-bit reach is checked once, when it is retargeted.

mod interpret;
mod shrink;

pub use interpret::{run, SeccompData};
pub use shrink::shrink;

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

impl Insn {
    pub const fn new(code: u16, jt: u8, jf: u8, k: u32) -> Self {
        Insn { code, jt, jf, k }
    }

    /// `(code, jt, jf, k)`, the order of `struct sock_filter`.
    pub const fn to_tuple(self) -> (u16, u8, u8, u32) {
        (self.code, self.jt, self.jf, self.k)
    }
}

impl From<(u16, u8, u8, u32)> for Insn {
    fn from((code, jt, jf, k): (u16, u8, u8, u32)) -> Self {
        Insn { code, jt, jf, k }
    }
}

/// [`shrink`] on `(code, jt, jf, k)` tuples, the form the filter builds store.
pub fn shrink_tuples(
    program: &[(u16, u8, u8, u32)],
) -> Result<Vec<(u16, u8, u8, u32)>, ProgramError> {
    let program: Vec<Insn> = program.iter().map(|&i| i.into()).collect();
    Ok(shrink(&program)?.into_iter().map(Insn::to_tuple).collect())
}

/// The kernel's longest program (`BPF_MAXINSNS`).
pub const MAX_LEN: usize = 4096;

/// Instruction classes and the opcodes the rewriter and the interpreter tell apart
/// (linux/bpf_common.h).
pub(crate) mod op {
    pub const CLASS: u16 = 0x07;
    pub const LD: u16 = 0x00;
    pub const LDX: u16 = 0x01;
    pub const ST: u16 = 0x02;
    pub const STX: u16 = 0x03;
    pub const ALU: u16 = 0x04;
    pub const JMP: u16 = 0x05;
    pub const RET: u16 = 0x06;
    pub const MISC: u16 = 0x07;

    pub const OP: u16 = 0xf0;
    pub const SRC_X: u16 = 0x08;

    /// `ld [k]`: a 32-bit word of the seccomp data.
    pub const LD_W_ABS: u16 = 0x20;
    pub const JA: u16 = 0x00;
    pub const JEQ: u16 = 0x10;
    pub const JGT: u16 = 0x20;
    pub const JGE: u16 = 0x30;
    pub const JSET: u16 = 0x40;
}

/// Why a program was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgramError {
    #[error("the program is empty")]
    Empty,
    #[error("the program has {0} instructions, more than the kernel's {MAX_LEN}")]
    TooLong(usize),
    #[error("instruction {at}: jumps past the end of the program")]
    JumpOut { at: usize },
    #[error("instruction {at}: the last instruction must return or jump")]
    FallsOff { at: usize },
    #[error("instruction {at}: opcode {code:#06x} is not one seccomp accepts")]
    BadOpcode { at: usize, code: u16 },
    #[error("instruction {at}: {k} is not a word of the seccomp data, a scratch word, a divisor or a shift it accepts")]
    BadOperand { at: usize, k: u32 },
}

/// Whether seccomp accepts instruction `insn` (what `seccomp_check_filter` and
/// `bpf_check_classic` let through): the seccomp data's aligned words, immediates and lengths,
/// the 16 scratch words, ALU operations but `mod`, no division by a zero constant or shift
/// by 32 or more, the jumps, returns of a constant or the accumulator, `tax`/`txa`.
fn accepted(insn: Insn, at: usize) -> Result<(), ProgramError> {
    let operand_ok = match insn.code {
        // ld [k]: an aligned word of the 64-byte seccomp data.
        op::LD_W_ABS => insn.k.is_multiple_of(4) && insn.k < 64,
        // ld/ldx #k, ld/ldx len.
        0x00 | 0x01 | 0x80 | 0x81 => true,
        // ld/ldx M[k], st/stx M[k].
        0x60 | 0x61 | 0x02 | 0x03 => insn.k < 16,
        // div #k; lsh/rsh #k.
        0x34 => insn.k != 0,
        0x64 | 0x74 => insn.k < 32,
        // The other ALU operations (add sub mul div or and lsh rsh xor; #k or x), neg.
        c if c == 0x84
            || (matches!(c & op::OP, 0x00..=0x70 | 0xa0)
                && c & !(op::OP | op::SRC_X) == op::ALU) =>
        {
            true
        }
        // ja; jeq jgt jge jset, #k or x (the jump opcodes `flow` accepts).
        0x05 | 0x15 | 0x25 | 0x35 | 0x45 | 0x1d | 0x2d | 0x3d | 0x4d => true,
        // ret #k, ret a; tax, txa.
        0x06 | 0x16 | 0x07 | 0x87 => true,
        code => return Err(ProgramError::BadOpcode { at, code }),
    };
    match operand_ok {
        true => Ok(()),
        false => Err(ProgramError::BadOperand { at, k: insn.k }),
    }
}

/// Where control goes after an instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Returns: the program ends.
    Ret,
    /// Unconditional jump to an absolute index.
    Ja(usize),
    /// Conditional jump: absolute indices if true and if false.
    Cond(usize, usize),
    /// Any other instruction: the next one.
    Next,
}

/// The control flow of instruction `at`, with absolute targets checked to be in `len`.
pub(crate) fn flow(insn: Insn, at: usize, len: usize) -> Result<Flow, ProgramError> {
    let next = at + 1;
    let flow = match insn.code & op::CLASS {
        op::RET => return Ok(Flow::Ret),
        op::JMP => match insn.code & op::OP {
            op::JA => Flow::Ja(next.saturating_add(insn.k as usize)),
            op::JEQ | op::JGT | op::JGE | op::JSET => {
                Flow::Cond(next + usize::from(insn.jt), next + usize::from(insn.jf))
            }
            _ => {
                return Err(ProgramError::BadOpcode {
                    at,
                    code: insn.code,
                })
            }
        },
        _ => Flow::Next,
    };
    let in_range = match flow {
        Flow::Ja(t) => t < len,
        Flow::Cond(t, f) => t < len && f < len,
        Flow::Next => next < len,
        Flow::Ret => true,
    };
    match (in_range, flow) {
        (true, _) => Ok(flow),
        (false, Flow::Next) => Err(ProgramError::FallsOff { at }),
        (false, _) => Err(ProgramError::JumpOut { at }),
    }
}

/// Checks that seccomp accepts every instruction and that control flow stays inside the
/// program.
pub fn check(program: &[Insn]) -> Result<(), ProgramError> {
    if program.is_empty() {
        return Err(ProgramError::Empty);
    }
    if program.len() > MAX_LEN {
        return Err(ProgramError::TooLong(program.len()));
    }
    for (at, insn) in program.iter().enumerate() {
        accepted(*insn, at)?;
        flow(*insn, at, program.len())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
