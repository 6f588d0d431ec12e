//! The snapshot loader's parsing (`vmm/src/snapshot/`, `vmm/src/persist/state.rs`): a state
//! file's envelope (`format::open`: magic, version, flags, lengths, checksum or MAC), the
//! bounded decoding of its body into a `MicrovmState` (every vCPU's KVM state, the VM's,
//! every device's), and the checks a load makes before anything reaches KVM (the saved
//! configuration parsed, the parts consistent with it).
//!
//! Input: u8 mode, then the bytes. Mode % 3: 0, the bytes are a whole state file opened
//! without a key (its SHA-256 must match, so mutations mostly stop at the envelope); 1, the
//! same with a fixed key (the MAC path); 2, the bytes are a body, decoded directly (what a
//! file with a valid tag would carry: this is where the decoder meets arbitrary input).
//!
//! Besides "no panic" and no allocation beyond the input's size (counts are checked against
//! the bytes left before anything is allocated): a decoded body of this VMM's format
//! version encodes back to exactly the same bytes (the encoding is canonical; an older minor
//! version, read as the loader reads it, is re-encoded in the current one), and an envelope
//! that opens has the declared length.
#![no_main]

use kiln_fuzz::Input;
use libfuzzer_sys::fuzz_target;
use vmm::persist::state::MicrovmState;
use vmm::snapshot::format::{self, HEADER_LEN, TAG_LEN};
use vmm::snapshot::{Decoder, Encoder, SnapshotKey, VERSION};

fuzz_target!(|data: &[u8]| {
    kiln_fuzz::setup();
    let mut input = Input::new(data);
    let mode = input.u8() % 3;
    let bytes = input.rest();
    // The body's format minor version: the header's, or (a bare body) this VMM's.
    let (body, minor) = match mode {
        0 | 1 => {
            let key = (mode == 1).then(|| SnapshotKey::from_bytes(vec![0x4b; 32], "fuzz").unwrap());
            match format::open(bytes, key.as_ref()) {
                Ok(opened) => {
                    assert_eq!(opened.body.len() + HEADER_LEN + TAG_LEN, bytes.len());
                    assert_eq!(opened.header.authenticated, mode == 1);
                    (opened.body, opened.header.version.minor)
                }
                Err(e) => {
                    kiln_fuzz::debug(|| format!("envelope: {e}"));
                    return;
                }
            }
        }
        _ => (bytes, VERSION.minor),
    };
    let state = match Decoder::with_minor(body, minor).get::<MicrovmState>() {
        Ok(s) => s,
        Err(e) => {
            kiln_fuzz::debug(|| format!("decode: {e}"));
            return;
        }
    };
    // An older minor version is re-encoded in this VMM's: only this one's must come back
    // byte for byte.
    if minor == VERSION.minor {
        let mut e = Encoder::new();
        e.put(&state);
        assert_eq!(e.into_bytes(), body, "the encoding is not canonical");
    }
    match state.parse_config() {
        Ok(config) => {
            let checked = state.check(&config);
            kiln_fuzz::debug(|| format!("check: {checked:?}"));
        }
        Err(e) => kiln_fuzz::debug(|| format!("config: {e}")),
    }
});
