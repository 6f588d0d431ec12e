//! The VM config (JSON) deserialisation and validation, as `--config-file` uses it
//! (`VmResources::from_json`: every section through the same setters as the API).
//!
//! Input: the config file's text (UTF-8; other bytes are refused before parsing, as reading
//! the file into a `String` does).
//!
//! Besides "Ok or a typed error, never a panic": a config that is accepted round-trips
//! through `GET /vm/config`'s shape (`to_config`, serialised, parsed again) to the same
//! resources.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::resources::VmResources;

fuzz_target!(|data: &[u8]| {
    kiln_fuzz::setup();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let res = match VmResources::from_json(text) {
        Ok(res) => res,
        Err(e) => {
            kiln_fuzz::debug(|| format!("refused: {e}"));
            return;
        }
    };
    kiln_fuzz::debug(|| format!("accepted: {res:?}"));
    let again = serde_json::to_string(&res.to_config()).expect("resources serialise");
    match VmResources::from_json(&again) {
        Ok(back) => assert_eq!(back, res, "round trip through {again}"),
        Err(e) => panic!("an accepted config does not round-trip: {e}\n{again}"),
    }
});
