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

pub use interpret::{run, RunError, SeccompData};
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

    pub const SIZE_MODE: u16 = 0xf8;
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
    #[error("instruction {at}: jump opcode {code:#06x} is not a classic BPF jump")]
    BadJump { at: usize, code: u16 },
    #[error("instruction {at}: jumps past the end of the program")]
    JumpOut { at: usize },
    #[error("instruction {at}: the last instruction must return or jump")]
    FallsOff { at: usize },
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
                return Err(ProgramError::BadJump {
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

/// Checks that every instruction's control flow stays inside the program.
pub fn check(program: &[Insn]) -> Result<(), ProgramError> {
    if program.is_empty() {
        return Err(ProgramError::Empty);
    }
    if program.len() > MAX_LEN {
        return Err(ProgramError::TooLong(program.len()));
    }
    for (at, insn) in program.iter().enumerate() {
        flow(*insn, at, program.len())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
