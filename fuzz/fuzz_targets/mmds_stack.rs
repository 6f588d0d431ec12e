//! The MMDS network endpoint (`vmm/src/mmds/stack/`): what a guest's frames do to it and
//! what it sends back. `MmdsStack::detour` takes every frame; after each, every reply is
//! drained with `MmdsStack::next_frame`.
//!
//! Input: u8 options (bit 0: MMDS V2), then records until the input ends, each starting
//! with a u8 kind:
//! - 0: a raw frame: u16 length (at most 1600), the bytes;
//! - 1: a TCP segment to the MMDS address and port, checksums right: u8 guest port (one of
//!   4), u8 flags, u8 sequence choice (0: the next the connection expects, else a u32 that
//!   follows), the same for the acknowledgement, u8 (odd: an MSS option, a u16 follows),
//!   u16 payload length (at most 600), the payload, then u8: when not 0, the byte at that
//!   offset (modulo the frame's length) is flipped;
//! - 2: an ARP request for the MMDS address;
//! - 3: a canned HTTP request on a port's connection (u8 port, u8 which: GET, GET as JSON,
//!   token PUT, GET with the last token, garbage).
//!
//! Besides "no panic": every reply comes from MMDS's MAC and is a well-formed ARP reply or a TCP segment from port 80
//! with correct IPv4 and TCP checksums and at most one MSS of payload; the replies to one
//! frame are bounded; the connection table never passes its bound.
#![no_main]

use kiln_fuzz::Input;
use libfuzzer_sys::fuzz_target;
use vmm::mmds::stack::frame::{
    parse_ipv4, parse_tcp, write_tcp, OutSegment, Route, ACK, ETH_LEN, FIN, PSH, SYN,
};
use vmm::mmds::stack::tcp::{MAX_IN_FLIGHT, OUR_MSS};
use vmm::mmds::stack::{MmdsStack, MAX_CONNECTIONS, MAX_CONTROL, MMDS_MAC, PORT};
use vmm::mmds::{shared, MmdsVersion};

const GUEST_MAC: [u8; 6] = [6, 0, 0xac, 0x10, 0, 2];
const GUEST_IP: [u8; 4] = [10, 0, 0, 2];
const MMDS_IP: [u8; 4] = [169, 254, 169, 254];
const PORTS: [u16; 4] = [40000, 40001, 40002, 40003];
/// More replies to one frame than this would mean the stack does not stop.
const MAX_REPLIES: usize = MAX_CONTROL + MAX_CONNECTIONS * (MAX_IN_FLIGHT as usize / 64 + 4);

/// What the guest knows of each port's connection: (its next seq, MMDS's next seq).
#[derive(Default, Clone, Copy)]
struct Track {
    seq: u32,
    ack: u32,
}

fn segment(port: u16, seq: u32, ack: u32, flags: u8, mss: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let route = Route {
        our_mac: GUEST_MAC,
        our_ip: GUEST_IP,
        peer_mac: MMDS_MAC,
        peer_ip: MMDS_IP,
    };
    let s = OutSegment {
        src_port: port,
        dst_port: PORT,
        seq,
        ack,
        flags,
        window: 65535,
        mss,
        payload,
    };
    let mut out = vec![0u8; 2048];
    let n = write_tcp(&mut out, &route, 1, &s).expect("fits");
    out.truncate(n);
    out
}

fn drain(st: &mut MmdsStack, track: &mut [Track; 4], token: &mut Vec<u8>) {
    let mut buf = vec![0u8; 2048];
    let mut replies = 0;
    while let Some(n) = st.next_frame(&mut buf) {
        replies += 1;
        assert!(replies <= MAX_REPLIES, "the stack does not stop sending");
        let f = &buf[..n];
        // Replies go to the MAC the frame came from (raw frames may have any).
        assert_eq!(&f[6..12], &MMDS_MAC[..]);
        match [f[12], f[13]] {
            [0x08, 0x06] => {
                assert_eq!(n, 42);
                assert_eq!(&f[20..22], &[0, 2], "an ARP reply");
                assert_eq!(&f[28..32], &MMDS_IP[..]);
            }
            [0x08, 0x00] => {
                let ip = parse_ipv4(&f[ETH_LEN..]).unwrap_or_else(|e| panic!("reply IPv4: {e:?}"));
                assert_eq!((ip.src, ip.dst), (MMDS_IP, GUEST_IP));
                let seg = parse_tcp(ip.payload, ip.src, ip.dst)
                    .unwrap_or_else(|e| panic!("reply TCP: {e:?}"));
                assert_eq!(seg.src_port, PORT);
                assert!(seg.payload.len() <= usize::from(OUR_MSS));
                if let Some(i) = PORTS.iter().position(|&p| p == seg.dst_port) {
                    let t = &mut track[i];
                    if seg.has(ACK) {
                        t.seq = seg.ack;
                    }
                    t.ack = seg.seq.wrapping_add(seg.seq_len());
                    // A token answer: 48 hex digits after the headers.
                    if let Some(at) = seg.payload.windows(4).position(|w| w == b"\r\n\r\n") {
                        let body = &seg.payload[at + 4..];
                        if body.len() == 48 && body.iter().all(u8::is_ascii_hexdigit) {
                            *token = body.to_vec();
                        }
                    }
                }
            }
            other => panic!("a reply of EtherType {other:x?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    kiln_fuzz::setup();
    let mut input = Input::new(data);
    let opts = input.u8();
    let store = shared(4096);
    {
        let mut s = store.lock().unwrap();
        s.put(serde_json::json!({"latest": {"meta-data": {"ami-id": "ami-1"}}, "big": "x".repeat(3000)}))
            .unwrap();
        let version = if opts & 1 == 1 {
            MmdsVersion::V2
        } else {
            MmdsVersion::V1
        };
        s.configure(version, false);
    }
    let mut st = MmdsStack::new(MMDS_IP.into(), store);
    let mut track = [Track::default(); 4];
    let mut token = Vec::new();
    let mut records = 0;
    while !input.is_empty() && records < 256 {
        records += 1;
        let frame = match input.u8() % 4 {
            0 => {
                let len = usize::from(input.u16()) % 1601;
                input.bytes(len).to_vec()
            }
            1 => {
                let i = usize::from(input.u8() % 4);
                let flags = input.u8();
                let seq = match input.u8() {
                    0 => track[i].seq,
                    _ => input.u32(),
                };
                let ack = match input.u8() {
                    0 => track[i].ack,
                    _ => input.u32(),
                };
                let mss = (input.u8() % 2 == 1).then(|| input.u16());
                let len = usize::from(input.u16()) % 601;
                let payload = input.bytes(len).to_vec();
                let mut f = segment(PORTS[i], seq, ack, flags, mss, &payload);
                let flip = usize::from(input.u8());
                if flip != 0 {
                    let at = flip % f.len();
                    f[at] ^= 0xff;
                }
                f
            }
            2 => {
                let mut f = vec![0xff; 6];
                f.extend_from_slice(&GUEST_MAC);
                f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
                f.extend_from_slice(&GUEST_MAC);
                f.extend_from_slice(&GUEST_IP);
                f.extend_from_slice(&[0; 6]);
                f.extend_from_slice(&MMDS_IP);
                f
            }
            _ => {
                let i = usize::from(input.u8() % 4);
                let request: Vec<u8> = match input.u8() % 5 {
                    0 => b"GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n".to_vec(),
                    1 => b"GET /big HTTP/1.1\r\nAccept: application/json\r\n\r\n".to_vec(),
                    2 => b"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n"
                        .to_vec(),
                    3 => [
                        &b"GET /latest/ HTTP/1.1\r\nX-metadata-token: "[..],
                        &token,
                        b"\r\n\r\n",
                    ]
                    .concat(),
                    _ => b"\x00\x01 garbage \r\n\r\n".to_vec(),
                };
                let t = track[i];
                track[i].seq = t.seq.wrapping_add(request.len() as u32);
                segment(PORTS[i], t.seq, t.ack, ACK | PSH, None, &request)
            }
        };
        st.detour(&frame);
        drain(&mut st, &mut track, &mut token);
        assert!(st.connections() <= MAX_CONNECTIONS);
    }
    // Each port connects and says goodbye, for the paths that end connections.
    for (i, &port) in PORTS.iter().enumerate() {
        st.detour(&segment(port, track[i].seq, 0, SYN, Some(1460), &[]));
        drain(&mut st, &mut track, &mut token);
        let t = track[i];
        st.detour(&segment(
            port,
            t.seq.wrapping_add(1),
            t.ack,
            FIN | ACK,
            None,
            &[],
        ));
        drain(&mut st, &mut track, &mut token);
    }
});
