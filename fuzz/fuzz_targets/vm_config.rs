//! The VM config (JSON) deserialisation and validation, as `--config-file` and the API use it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        // Any input must give Ok or a typed error, never a panic.
        let _ = vmm::resources::VmResources::from_json(text);
    }
});
