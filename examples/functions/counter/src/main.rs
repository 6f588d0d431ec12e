//! counter: answers `{"invocations":N,"bytes":B}`, where N counts the invocations this VM has
//! served (1 for the first) and B the event bytes it has seen. It shows that a warm VM keeps
//! the function's state (statics and heap) between invocations: a fresh VM starts again at 1.

#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use kiln_runtime::prelude::*;

kiln_runtime::function!(handle);

static INVOCATIONS: AtomicU64 = AtomicU64::new(0);

/// The sizes of the events seen so far, on the heap.
static mut SIZES: Vec<usize> = Vec::new();

fn handle(event: &[u8]) -> Result<Vec<u8>, String> {
    let n = INVOCATIONS.fetch_add(1, Ordering::Relaxed) + 1;
    // SAFETY: the runtime calls the handler on one vCPU, one invocation at a time, so nothing
    // else uses SIZES while this borrow lives.
    let sizes = unsafe { &mut *core::ptr::addr_of_mut!(SIZES) };
    sizes.push(event.len());
    let bytes: usize = sizes.iter().sum();
    Ok(format!("{{\"invocations\":{n},\"bytes\":{bytes}}}").into_bytes())
}
