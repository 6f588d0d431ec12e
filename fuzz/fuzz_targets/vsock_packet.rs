//! The vsock parsers (`vmm/src/devices/virtio/vsock/`): `packet::check_tx`, the whole
//! validation of a packet the guest transmits (44-byte header, how many payload bytes the
//! chain holds after it, the guest's CID), `Header::from_bytes`/`to_bytes`, and the host
//! side's first line (`muxer::parse_connect_line`, `CONNECT <port>`).
//!
//! Input: u8 guest CID (3 + b), u64 payload bytes the chain holds after the header, then the
//! header bytes as the chain's readable stream starts (fewer than 44 is a short chain); the
//! same bytes are also a host's first line.
//!
//! Besides "no panic": the verdict follows the documented rules (wrong CIDs dropped, an RST
//! always accepted, an accepted packet's payload within the limit and the chain), and the
//! header round-trips through its encoding.
#![no_main]

use kiln_fuzz::Input;
use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::vsock::muxer::parse_connect_line;
use vmm::devices::virtio::vsock::packet::{
    check_tx, Header, Op, PacketError, Verdict, HDR_LEN, HOST_CID, MAX_PAYLOAD, TYPE_STREAM,
};

fuzz_target!(|data: &[u8]| {
    kiln_fuzz::setup();
    let mut input = Input::new(data);
    let cid = 3 + u64::from(input.u8());
    let available = input.u64();
    let bytes = input.rest();

    let verdict = check_tx(bytes, available, cid);
    kiln_fuzz::debug(|| format!("{verdict:?}"));
    match Header::from_bytes(bytes) {
        None => {
            assert!(bytes.len() < HDR_LEN);
            assert!(matches!(
                verdict,
                Verdict::Drop(PacketError::ShortHeader { .. })
            ));
        }
        Some(h) => {
            let encoded = h.to_bytes();
            assert_eq!(&encoded[..], &bytes[..HDR_LEN], "header encoding differs");
            assert_eq!(Header::from_bytes(&encoded), Some(h));
            match verdict {
                Verdict::Accept(pkt) => {
                    assert_eq!(pkt.hdr, h);
                    assert_eq!(h.src_cid, cid);
                    assert_eq!(h.dst_cid, HOST_CID);
                    assert_eq!(pkt.op as u16, h.op);
                    if pkt.op != Op::Rst {
                        assert_eq!(h.type_, TYPE_STREAM);
                        assert!(h.len <= MAX_PAYLOAD && u64::from(h.len) <= available);
                    }
                }
                Verdict::Drop(e) => {
                    assert!(h.src_cid != cid || h.dst_cid != HOST_CID, "dropped: {e}");
                }
                Verdict::Reset { hdr, .. } => {
                    assert_eq!(hdr, h);
                    assert!(h.src_cid == cid && h.dst_cid == HOST_CID);
                    assert_ne!(
                        Op::from_raw(h.op),
                        Some(Op::Rst),
                        "an RST answered with an RST"
                    );
                }
            }
        }
    }

    // The host side's first line.
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    if let Ok(port) = parse_connect_line(line) {
        let text = std::str::from_utf8(line).expect("an accepted line is ASCII");
        let mut words = text.split_ascii_whitespace();
        assert!(words
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case("connect")));
        assert_eq!(words.next().map(str::parse::<u32>), Some(Ok(port)));
        assert!(words.next().is_none());
    }
});
