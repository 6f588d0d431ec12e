//! kiln-runtime: the runtime of Kiln function images with no guest OS.
//!
//! A function is a `no_std`, `no_main` binary crate that depends on this library and names
//! its handler:
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! use kiln_runtime::prelude::*;
//!
//! kiln_runtime::function!(handle);
//!
//! fn handle(event: &[u8]) -> Result<Vec<u8>, String> {
//!     Ok(event.to_vec())
//! }
//! ```
//!
//! The image boots through the Linux 64-bit or PVH entry (entry.rs), switches to CPL 3 at once,
//! fills the IDT (idt.rs), reads the boot information (start.rs, boot.rs), sets up a heap over
//! the RAM from 4 MiB (heap.rs), connects to the host worker over virtio-vsock (vsock/, on
//! virtio.rs's device discovery; irq.rs wakes it) and serves invocations with the protocol of
//! `kiln-protocol` (invoke_loop.rs): one Invoke frame, one call of the handler, one Response
//! or Error frame. State in statics and on the heap survives between invocations of a warm
//! VM. A panic or a CPU exception is reported as an Error frame through the connected driver
//! (fault.rs, driver.rs) and stops the VM.
//!
//! Shared with the tiny test guest: the entry building blocks, boot information and command
//! line (kiln-guest-boot), the virtio-mmio transport and rings (kiln-guest-virtio), the C
//! memory routines (kiln-guest-mem).
//!
//! See README.md for the memory layout, the rings and the measured costs.

#![no_std]

extern crate alloc;

mod arch;
mod boot;
mod driver;
mod entry;
mod fault;
mod fixed;
mod global;
mod heap;
mod idt;
mod invoke_loop;
mod irq;
mod layout;
// The C memory routines the compiler calls (no libc here).
use kiln_guest_mem as _;
#[doc(hidden)]
pub mod serial;
mod start;
mod virtio;
mod vsock;

pub use invoke_loop::{serve, FunctionConfig, MAX_RESPONSE_BYTES};
pub use kiln_protocol as protocol;

/// What most functions need: `Vec`, `String`, `Box`, `format!`, `vec!`, `ToString`.
pub mod prelude {
    pub use alloc::borrow::ToOwned;
    pub use alloc::boxed::Box;
    pub use alloc::string::{String, ToString};
    pub use alloc::vec::Vec;
    pub use alloc::{format, vec};
}

#[global_allocator]
static HEAP: heap::KilnHeap = heap::KilnHeap::new();

/// Bytes of heap in use and the heap's size.
pub fn heap_usage() -> (usize, usize) {
    HEAP.usage()
}

/// Parses a decimal `u32` at compile time (the builder passes the manifest's limits as
/// environment variables); `default` when absent or not a number.
#[doc(hidden)]
pub const fn parse_u32_or(value: Option<&str>, default: u32) -> u32 {
    let Some(s) = value else { return default };
    let b = s.as_bytes();
    if b.is_empty() {
        return default;
    }
    let mut v: u64 = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c < b'0' || c > b'9' {
            return default;
        }
        v = v * 10 + (c - b'0') as u64;
        if v > u32::MAX as u64 {
            return default;
        }
        i += 1;
    }
    #[allow(clippy::cast_possible_truncation)] // v <= u32::MAX, checked in the loop
    let v = v as u32;
    v
}

/// Declares the function's handler and generates the image's entry glue.
///
/// `$handler` is anything callable as `FnMut(&[u8]) -> Result<Vec<u8>, E>` with
/// `E: Display`: a function, or a closure that owns the function's state. The name sent in
/// Hello and the event limit come from the builder (`KILN_FUNCTION_NAME`,
/// `KILN_MAX_EVENT_BYTES`, set from the manifest at build time), else the package name and
/// the protocol's default limit.
#[macro_export]
macro_rules! function {
    ($handler:expr) => {
        #[no_mangle]
        pub extern "Rust" fn __kiln_function_main() -> ! {
            const CONFIG: $crate::FunctionConfig = $crate::FunctionConfig {
                name: match option_env!("KILN_FUNCTION_NAME") {
                    Some(name) => name,
                    None => env!("CARGO_PKG_NAME"),
                },
                max_event_bytes: $crate::parse_u32_or(
                    option_env!("KILN_MAX_EVENT_BYTES"),
                    $crate::protocol::DEFAULT_MAX_PAYLOAD,
                ),
            };
            $crate::serve(&CONFIG, $handler)
        }
    };
}
