//! spin: loops forever on every event, so that the worker has to stop it at its timeout
//! (`timeout_ms` in kiln.json). It spins at CPL 3, where the development hosts run guest
//! code natively: it costs the host a core until it is killed.

#![no_std]
#![no_main]

use kiln_runtime::prelude::*;

kiln_runtime::function!(handle);

fn handle(_event: &[u8]) -> Result<Vec<u8>, String> {
    loop {
        core::hint::spin_loop();
    }
}
