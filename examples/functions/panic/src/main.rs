//! panic: fails on every event. The runtime reports the failure to the worker as an Error
//! frame (`ErrorCode::Panic`) and stops the VM.
//!
//! - `null`: reads through a null pointer: a page fault, reported as
//!   `CPU exception 14 (#PF page fault) at rip=... address=0x0 ...: null pointer`;
//! - `overflow`: recurses until the stack's guard page: `...: stack overflow`;
//! - `cli`: a privileged instruction in the function's own code (ring 3):
//!   `CPU exception 13 (#GP general protection) at rip=...` — the runtime's own `cli` (its
//!   ring-0 register batch) carries a marker in EDX that this one lacks;
//! - anything else: `panic!`, reported with its location and message.

#![no_std]
#![no_main]

use kiln_runtime::prelude::*;

kiln_runtime::function!(handle);

fn handle(event: &[u8]) -> Result<Vec<u8>, String> {
    match event {
        b"null" => {
            let p = core::hint::black_box(0usize) as *const u64;
            // SAFETY: not sound, on purpose: the read faults (page 0 is not mapped) and the
            // runtime reports the fault; the value is never used.
            let v = unsafe { p.read_volatile() };
            Ok(format!("{v}").into_bytes())
        }
        b"overflow" => Ok(format!("{}", recurse(0)).into_bytes()),
        b"cli" => {
            // SAFETY: not sound, on purpose: `cli` at CPL 3 raises #GP, which the runtime
            // reports; RDI and RSI hold what a careless batch call would (a null list).
            unsafe {
                core::arch::asm!("cli", in("rdi") 0usize, in("rsi") 1usize, in("edx") 0u32);
            }
            Ok(Vec::new())
        }
        _ => panic!(
            "the panic function panics on every event ({} bytes)",
            event.len()
        ),
    }
}

/// Does not return in practice: each call keeps 512 bytes of stack alive until the guard page
/// is hit (the depth test only keeps the compiler from proving the recursion endless).
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if core::hint::black_box(depth) == u64::MAX {
        return 0;
    }
    let mut frame = [0u8; 512];
    frame[0] = depth.to_le_bytes()[0];
    core::hint::black_box(&mut frame);
    recurse(depth + 1) + u64::from(frame[1])
}
