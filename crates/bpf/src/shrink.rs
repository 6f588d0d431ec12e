//! [`shrink`]: the rewrite rules of the crate's documentation, applied until the program no
//! longer changes.

use std::collections::HashMap;

use crate::{check, flow, op, Flow, Insn, ProgramError};

/// A conditional jump's longest reach: 8-bit offsets, counted from the next instruction.
const COND_REACH: usize = u8::MAX as usize;
/// Passes before giving up on a fixed point (each one only shortens the program; real
/// filters settle in three or four).
const MAX_PASSES: usize = 32;

/// `program` rewritten to an equivalent program no longer than it: for every seccomp input
/// both return the same action. A program whose control flow leaves it is refused.
pub fn shrink(program: &[Insn]) -> Result<Vec<Insn>, ProgramError> {
    check(program)?;
    let mut current = program.to_vec();
    for _ in 0..MAX_PASSES {
        match pass(&current) {
            Some(next) if next != current => current = next,
            _ => break,
        }
    }
    // The rules keep every jump inside the program; should that ever fail, the original is
    // the safe answer (and the tests, built with debug assertions, fail loudly).
    let kept = check(&current).is_ok() && current.len() <= program.len();
    debug_assert!(
        kept,
        "shrink made an invalid or longer program: {current:?}"
    );
    match kept {
        true => Ok(current),
        false => Ok(program.to_vec()),
    }
}

/// One pass: retarget every jump, then drop what no path reaches. `None` if an offset would
/// not fit (it cannot, as dropping instructions only shortens forward jumps).
fn pass(prog: &[Insn]) -> Option<Vec<Insn>> {
    let len = prog.len();
    let flows: Vec<Flow> = prog
        .iter()
        .enumerate()
        .map(|(at, insn)| flow(*insn, at, len))
        .collect::<Result<_, _>>()
        .ok()?;
    let known = known_accumulator(prog, &flows);

    let mut code = prog.to_vec();
    let mut targets = flows.clone();
    let mut shared = SharedReturns::default();
    for at in 0..len {
        match flows[at] {
            Flow::Ja(t) => {
                let end = *equivalents(prog, &flows, t, known[at]).last()?;
                if prog[end].code & op::CLASS == op::RET {
                    code[at] = prog[end];
                    targets[at] = Flow::Ret;
                } else {
                    targets[at] = Flow::Ja(end);
                }
            }
            Flow::Cond(t, f) => {
                let t = retarget(prog, &flows, &mut shared, at, t, known[at]);
                let f = retarget(prog, &flows, &mut shared, at, f, known[at]);
                if t == f {
                    code[at] = Insn::new(op::JMP | op::JA, 0, 0, 0);
                    targets[at] = Flow::Ja(t);
                } else {
                    targets[at] = Flow::Cond(t, f);
                }
            }
            Flow::Ret | Flow::Next => {}
        }
    }
    compact(&code, &targets)
}

/// For each instruction, the word of the seccomp data the accumulator holds on every path
/// into it (`Some(k)`: the value `ld [k]` loads), if one is certain. Only `ld [k]` sets it;
/// jumps and returns keep it; any other instruction may change it.
fn known_accumulator(prog: &[Insn], flows: &[Flow]) -> Vec<Option<u32>> {
    // Per instruction: `None` until a predecessor is seen, then the meet of what they give.
    let mut incoming: Vec<Option<Option<u32>>> = vec![None; prog.len()];
    let mut known = vec![None; prog.len()];
    for at in 0..prog.len() {
        // The entry (and anything no path reaches) starts with nothing known.
        let a = incoming[at].unwrap_or(None);
        known[at] = a;
        let out = match prog[at].code & op::CLASS {
            _ if prog[at].code == op::LD_W_ABS => Some(prog[at].k),
            op::JMP | op::RET => a,
            _ => None,
        };
        for next in successors(flows[at], at) {
            let slot = &mut incoming[next];
            *slot = Some(match *slot {
                None => out,
                Some(seen) if seen == out => seen,
                Some(_) => None,
            });
        }
    }
    known
}

/// The targets after `at` that behave exactly as `at` from a jump made with accumulator
/// `known`, nearest first: through unconditional jumps, and over a load of the word the
/// accumulator already holds.
fn equivalents(prog: &[Insn], flows: &[Flow], mut at: usize, known: Option<u32>) -> Vec<usize> {
    let mut chain = vec![at];
    loop {
        at = match flows[at] {
            Flow::Ja(t) => t,
            Flow::Next if prog[at].code == op::LD_W_ABS && known == Some(prog[at].k) => at + 1,
            _ => return chain,
        };
        chain.push(at);
    }
}

/// Where a conditional jump at `from` to `to` may go instead: a shared return when `to`
/// leads to one, else the farthest place within its reach that behaves as `to`.
fn retarget(
    prog: &[Insn],
    flows: &[Flow],
    shared: &mut SharedReturns,
    from: usize,
    to: usize,
    known: Option<u32>,
) -> usize {
    let reach = from + 1 + COND_REACH;
    let chain = equivalents(prog, flows, to, known);
    if let Some(&end) = chain.last() {
        if prog[end].code & op::CLASS == op::RET {
            if let Some(at) = shared.pick(prog, from, reach, prog[end]) {
                return at;
            }
        }
    }
    chain
        .iter()
        .copied()
        .filter(|&t| t <= reach)
        .max()
        .unwrap_or(to)
}

/// The returns conditional jumps are sent to, per distinct return instruction: as few as
/// cover every jump's reach. Jumps are visited in program order, so each one's window ends
/// after the previous one's; the classic greedy cover (take the farthest candidate when no
/// chosen one is in reach) is then minimal.
#[derive(Default)]
struct SharedReturns(HashMap<Insn, Vec<usize>>);

impl SharedReturns {
    fn pick(&mut self, prog: &[Insn], from: usize, reach: usize, ret: Insn) -> Option<usize> {
        let chosen = self.0.entry(ret).or_default();
        // Chosen points are ascending and none lies beyond this window (see above).
        if let Some(&at) = chosen.last() {
            if at > from {
                return Some(at);
            }
        }
        let last = reach.min(prog.len() - 1);
        let at = (from + 1..=last).rev().find(|&j| prog[j] == ret)?;
        chosen.push(at);
        Some(at)
    }
}

/// The instructions control may go to from `at`.
fn successors(flow: Flow, at: usize) -> impl Iterator<Item = usize> {
    let (a, b) = match flow {
        Flow::Ret => (None, None),
        Flow::Ja(t) => (Some(t), None),
        Flow::Cond(t, f) => (Some(t), Some(f)),
        Flow::Next => (Some(at + 1), None),
    };
    a.into_iter().chain(b)
}

/// Drops the instructions no path reaches and the jumps to the next instruction, and
/// re-encodes every jump's offsets.
fn compact(code: &[Insn], targets: &[Flow]) -> Option<Vec<Insn>> {
    let len = code.len();
    let mut reachable = vec![false; len];
    reachable[0] = true;
    for at in 0..len {
        if reachable[at] {
            for next in successors(targets[at], at) {
                reachable[next] = true;
            }
        }
    }
    let kept: Vec<bool> = (0..len)
        .map(|at| reachable[at] && targets[at] != Flow::Ja(at + 1))
        .collect();
    // New index of each kept instruction; a dropped jump-to-next maps to the next kept one.
    let mut new_index = vec![0usize; len + 1];
    let mut count = 0;
    for at in 0..len {
        new_index[at] = count;
        count += usize::from(kept[at]);
    }
    new_index[len] = count;
    let resolve = |mut t: usize| {
        while t < len && !kept[t] {
            t += 1;
        }
        new_index[t]
    };
    let mut out = Vec::with_capacity(count);
    for at in (0..len).filter(|&at| kept[at]) {
        let here = new_index[at];
        let offset = |t: usize| resolve(t).checked_sub(here + 1);
        let mut insn = code[at];
        match targets[at] {
            Flow::Ja(t) => insn.k = u32::try_from(offset(t)?).ok()?,
            Flow::Cond(t, f) => {
                insn.jt = u8::try_from(offset(t)?).ok()?;
                insn.jf = u8::try_from(offset(f)?).ok()?;
            }
            Flow::Ret | Flow::Next => {}
        }
        out.push(insn);
    }
    Some(out)
}
