//! The vsock packets a guest transmits, from their validation to the muxer
//! (`vmm/src/devices/virtio/vsock/`): `packet::check_tx` (the 44-byte header, how many
//! payload bytes the chain holds after it, the guest's CID), `Header::from_bytes` /
//! `to_bytes`, then, as the device does with each verdict, `Muxer::on_guest_packet` (an
//! accepted packet: routing by connection, REQUESTs connecting to `<uds_path>_<port>`, RSTs
//! for unknown connections, each connection's state machine) or `Muxer::reject` (a packet
//! answered with an RST), the muxer's events (`process_events`: the connections' host
//! sockets), and what it answers (`next_rx_packet`); and the host side's first line
//! (`muxer::parse_connect_line`, `CONNECT <port>`) on every packet's bytes.
//!
//! Input, little endian, zeros past the end:
//!
//! ```text
//! u8   guest CID - 3
//! then packets until the input ends:
//!   u16  n % 2048: bytes of the chain's readable stream, taken from the input
//!   u8   short: the chain claims (n - 44) - short payload bytes after the header (a chain
//!        shorter than its header's length)
//!   n    the bytes: a header (fewer than 44 is a short chain) and its payload
//! ```
//!
//! The host listens at `<uds_path>_52` and `<uds_path>_1024` (and reads what arrives).
//!
//! Checks, besides "no panic": the verdict follows the documented rules (wrong CIDs
//! dropped, an RST never answered with an RST, an accepted packet's payload within the limit
//! and the chain), the header round-trips through its encoding, every packet the muxer has
//! for the guest is from the host to the guest's CID, of type STREAM, a known op, its
//! payload within the room it was given and only in RW packets.
#![no_main]

use kiln_fuzz::host::vsock_dir;
use kiln_fuzz::Input;
use libfuzzer_sys::fuzz_target;
use std::io::Read;
use std::os::unix::net::UnixListener;
use std::time::Instant;
use vmm::devices::virtio::vsock::muxer::{parse_connect_line, Muxer};
use vmm::devices::virtio::vsock::packet::{
    check_tx, Header, Op, PacketError, Verdict, HDR_LEN, HOST_CID, MAX_PAYLOAD, TYPE_STREAM,
};

const PORTS: [u32; 2] = [52, 1024];
const ROOM: usize = 4096;

fn check_verdict(bytes: &[u8], available: u64, cid: u64, verdict: &Verdict) {
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
                    assert_eq!(*hdr, h);
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
}

fn check_connect_line(bytes: &[u8]) {
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
}

fuzz_target!(|data: &[u8]| {
    kiln_fuzz::setup();
    let mut input = Input::new(data);
    let cid = 3 + u64::from(input.u8());
    let dir = vsock_dir();
    let uds = dir.join("v.sock");
    let uds = uds.to_str().expect("a UTF-8 path");
    let listeners: Vec<UnixListener> = PORTS
        .iter()
        .map(|p| {
            let l = UnixListener::bind(format!("{uds}_{p}")).expect("a listener binds");
            l.set_nonblocking(true).expect("nonblocking");
            l
        })
        .collect();
    let mut muxer = Muxer::new(cid, uds).expect("the muxer binds");
    let mut accepted = Vec::new();
    let mut room = vec![0u8; ROOM];
    let now = Instant::now();
    let mut packets = 0;

    while !input.is_empty() {
        let n = usize::from(input.u16() % 2048);
        let short = u64::from(input.u8());
        let bytes = input.bytes(n);
        let available = (bytes.len() as u64)
            .saturating_sub(HDR_LEN as u64)
            .saturating_sub(short);
        let head = &bytes[..bytes.len().min(HDR_LEN)];
        let verdict = check_tx(head, available, cid);
        kiln_fuzz::debug(|| format!("{verdict:?}"));
        check_verdict(head, available, cid, &verdict);
        check_connect_line(bytes);
        packets += 1;
        match verdict {
            Verdict::Accept(pkt) => {
                let payload = if pkt.op == Op::Rw {
                    bytes
                        .get(HDR_LEN..HDR_LEN + pkt.hdr.len as usize)
                        .unwrap_or(&[])
                } else {
                    &[]
                };
                muxer.on_guest_packet(&pkt, payload, now);
            }
            Verdict::Reset { hdr, .. } => muxer.reject(&hdr),
            Verdict::Drop(_) => {}
        }
        // The host: new connections, and what they were sent.
        for l in &listeners {
            while let Ok((s, _)) = l.accept() {
                s.set_nonblocking(true).expect("nonblocking");
                accepted.push(s);
            }
        }
        for s in &mut accepted {
            let mut buf = [0u8; 4096];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        }
        muxer.process_events(now);
        // What the guest gets back, as its receive buffers allow.
        let len = (packets * 997) % (ROOM + 1);
        for _ in 0..8 {
            let Some(h) = muxer.next_rx_packet(&mut room[..len], now) else {
                break;
            };
            assert_eq!((h.src_cid, h.dst_cid), (HOST_CID, cid), "{h:?}");
            assert_eq!(h.type_, TYPE_STREAM);
            let op = Op::from_raw(h.op).expect("a known op");
            if op == Op::Rw {
                assert!(h.len > 0 && h.len as usize <= len, "{h:?} in {len} bytes");
            } else {
                assert_eq!(h.len, 0, "{h:?}");
            }
        }
    }
    kiln_fuzz::debug(|| format!("{} connections", muxer.connection_count()));
});
