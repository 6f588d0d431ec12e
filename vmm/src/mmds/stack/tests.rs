use super::frame::{parse_ipv4, parse_tcp, write_tcp, FIN, PSH, SYN};
use super::*;
use crate::mmds::{shared, MmdsVersion};
use serde_json::json;

const GUEST_MAC: Mac = [6, 0, 0xac, 0x10, 0, 2];
const GUEST_IP: Ip = [10, 0, 0, 2];
const MMDS_IP: Ip = [169, 254, 169, 254];

fn stack(version: MmdsVersion) -> MmdsStack {
    let store = shared(4096);
    {
        let mut s = lock(&store);
        s.put(json!({"latest": {"meta-data": {"ami-id": "ami-1"}}, "big": "x".repeat(3000)}))
            .unwrap();
        s.configure(version, false);
    }
    MmdsStack::new(Ipv4Addr::from(MMDS_IP), store)
}

fn guest_route() -> Route {
    Route {
        our_mac: GUEST_MAC,
        our_ip: GUEST_IP,
        peer_mac: MMDS_MAC,
        peer_ip: MMDS_IP,
    }
}

/// A segment from the guest's port `port`.
fn seg(port: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    seg_with(port, seq, ack, flags, None, payload)
}

fn seg_with(port: u16, seq: u32, ack: u32, flags: u8, mss: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 2000];
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
    let n = write_tcp(&mut out, &guest_route(), 1, &s).unwrap();
    out.truncate(n);
    out
}

#[derive(Debug)]
struct Reply {
    seq: u32,
    ack: u32,
    flags: u8,
    payload: Vec<u8>,
}

fn replies(st: &mut MmdsStack) -> Vec<Reply> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 2000];
    while let Some(n) = st.next_frame(&mut buf) {
        assert!(out.len() < 1000, "the stack never stops sending");
        let f = &buf[..n];
        assert_eq!(&f[..6], &GUEST_MAC);
        let ip = parse_ipv4(&f[ETH_LEN..]).unwrap_or_else(|e| panic!("{e:?}"));
        let s = parse_tcp(ip.payload, ip.src, ip.dst).expect("valid TCP");
        out.push(Reply {
            seq: s.seq,
            ack: s.ack,
            flags: s.flags,
            payload: s.payload.to_vec(),
        });
    }
    out
}

/// Handshake from `port`; returns (our next seq, MMDS's next seq).
fn connect(st: &mut MmdsStack, port: u16) -> (u32, u32) {
    assert!(st.detour(&seg_with(port, 1000, 0, SYN, Some(1460), &[])));
    let r = replies(st);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].flags, SYN | ACK);
    assert_eq!(r[0].ack, 1001);
    let theirs = r[0].seq.wrapping_add(1);
    assert!(st.detour(&seg(port, 1001, theirs, ACK, &[])));
    assert!(replies(st).is_empty());
    (1001, theirs)
}

/// Sends `request` and collects the response until MMDS stops sending, ACKing each
/// segment; returns the response and whether MMDS sent FIN.
fn exchange(
    st: &mut MmdsStack,
    port: u16,
    seqs: (u32, u32),
    request: &[u8],
) -> (String, bool, (u32, u32)) {
    let (mut ours, mut theirs) = seqs;
    assert!(st.detour(&seg(port, ours, theirs, ACK | PSH, request)));
    ours = ours.wrapping_add(request.len() as u32);
    let mut body = Vec::new();
    let mut fin = false;
    for _ in 0..100 {
        let r = replies(st);
        if r.is_empty() {
            break;
        }
        for x in &r {
            assert_eq!(x.seq, theirs, "{r:?}");
            body.extend_from_slice(&x.payload);
            theirs = theirs.wrapping_add(x.payload.len() as u32);
            if x.flags & FIN != 0 {
                fin = true;
                theirs = theirs.wrapping_add(1);
            }
        }
        st.detour(&seg(port, ours, theirs, ACK, &[]));
    }
    (String::from_utf8(body).unwrap(), fin, (ours, theirs))
}

#[test]
fn arp_for_the_mmds_address_is_answered() {
    let mut st = stack(MmdsVersion::V1);
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&GUEST_IP);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&MMDS_IP);
    assert!(st.detour(&f));
    let mut out = [0u8; 100];
    let n = st.next_frame(&mut out).unwrap();
    assert_eq!(n, 42);
    assert_eq!(&out[..6], &GUEST_MAC);
    assert_eq!(&out[20..22], &[0, 2], "an ARP reply");
    assert_eq!(&out[22..28], &MMDS_MAC);
    assert_eq!(&out[28..32], &MMDS_IP);
    // ARP for another address is the tap's.
    let mut other = f.clone();
    other[38..42].copy_from_slice(&[10, 0, 0, 1]);
    assert!(!st.detour(&other));
    // An ARP reply (not a request) for the address is taken and dropped.
    let mut reply = f.clone();
    reply[21] = 2;
    assert!(st.detour(&reply));
    assert!(st.next_frame(&mut out).is_none());
}

#[test]
fn v1_get_over_tcp() {
    let mut st = stack(MmdsVersion::V1);
    let seqs = connect(&mut st, 4000);
    let (resp, fin, seqs) = exchange(
        &mut st,
        4000,
        seqs,
        b"GET /latest/meta-data/ami-id HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(resp.ends_with("\r\n\r\nami-1"), "{resp}");
    assert!(!fin);
    // A second request on the same connection, larger than a segment, then close.
    let (resp, fin, _) = exchange(
        &mut st,
        4000,
        seqs,
        b"GET /big HTTP/1.1\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.contains("Content-Length: 3002"), "{resp}");
    assert!(resp.ends_with(&format!("\"{}\"", "x".repeat(3000))));
    assert!(fin);
}

#[test]
fn v2_token_flow() {
    let mut st = stack(MmdsVersion::V2);
    let seqs = connect(&mut st, 4001);
    let (resp, _, seqs) = exchange(
        &mut st,
        4001,
        seqs,
        b"GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    let (resp, _, seqs) = exchange(
        &mut st,
        4001,
        seqs,
        b"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n",
    );
    let token = resp.split_once("\r\n\r\n").unwrap().1.to_string();
    assert_eq!(token.len(), crate::mmds::token::TOKEN_LEN, "{resp}");
    let req = format!("GET /latest/meta-data/ami-id HTTP/1.1\r\nX-metadata-token: {token}\r\n\r\n");
    let (resp, _, _) = exchange(&mut st, 4001, seqs, req.as_bytes());
    assert!(resp.ends_with("ami-1"), "{resp}");
}

#[test]
fn a_reset_forgets_connections_and_replies() {
    let mut st = stack(MmdsVersion::V1);
    for port in 0..3 {
        st.detour(&seg(6000 + port, 1, 0, SYN, &[]));
    }
    assert_eq!(st.connections(), 3);
    assert!(st.has_frames());
    st.reset();
    assert_eq!(st.connections(), 0);
    assert!(!st.has_frames());
    // A segment of a forgotten connection is reset.
    st.detour(&seg(6000, 2, 5, ACK, &[]));
    assert_eq!(replies(&mut st)[0].flags, RST);
}

#[test]
fn frames_not_for_mmds_go_to_the_tap() {
    let mut st = stack(MmdsVersion::V1);
    let mut other_port = seg(4000, 1, 0, SYN, &[]);
    // Destination port 81 (the checksum is not looked at for what is not taken).
    other_port[ETH_LEN + 20 + 3] = 81;
    assert!(!st.detour(&other_port));
    let mut other_ip = seg(4000, 1, 0, SYN, &[]);
    other_ip[ETH_LEN + 19] = 253;
    assert!(!st.detour(&other_ip));
    assert!(!st.detour(&[0u8; 10]), "too short for Ethernet");
    assert!(!st.detour(&[0u8; 60]));
    assert!(st.next_frame(&mut [0u8; 100]).is_none());
}

#[test]
fn malformed_segments_are_dropped() {
    let mut st = stack(MmdsVersion::V1);
    let good = seg_with(4000, 1, 0, SYN, Some(1460), &[]);
    let mut cases: Vec<Vec<u8>> = Vec::new();
    let mut bad_sum = good.clone();
    bad_sum[ETH_LEN + 20 + 16] ^= 0xff;
    cases.push(bad_sum);
    let mut bad_ip_sum = good.clone();
    bad_ip_sum[ETH_LEN + 10] ^= 0xff;
    cases.push(bad_ip_sum);
    let mut long_total = good.clone();
    long_total[ETH_LEN + 3] = 200;
    cases.push(long_total);
    let mut truncated = good.clone();
    truncated.truncate(ETH_LEN + 20 + 10);
    cases.push(truncated);
    let mut fragment = good.clone();
    fragment[ETH_LEN + 6] = 0x20; // more fragments
    cases.push(fragment);
    cases.push(seg(4000, 1, 0, SYN | FIN, &[]));
    for (i, c) in cases.iter().enumerate() {
        assert!(st.detour(c), "case {i} is for MMDS");
    }
    assert!(replies(&mut st).is_empty());
    assert_eq!(st.connections(), 0);
    // A segment for no connection is reset.
    assert!(st.detour(&seg(4002, 5, 77, ACK, b"x")));
    let r = replies(&mut st);
    assert_eq!((r.len(), r[0].flags, r[0].seq), (1, RST, 77));
}

#[test]
fn connections_are_bounded() {
    let mut st = stack(MmdsVersion::V1);
    for port in 0..(MAX_CONNECTIONS as u16 + 5) {
        assert!(st.detour(&seg(5000 + port, 1, 0, SYN, &[])));
    }
    assert_eq!(st.connections(), MAX_CONNECTIONS);
    let r = replies(&mut st);
    let resets = r.iter().filter(|x| x.flags & RST != 0).count();
    assert_eq!(resets, 5, "{r:?}");
    // The newest still complete their handshake and are served.
    let (resp, _, _) = {
        let port = 5000 + MAX_CONNECTIONS as u16 + 4;
        let synack = r.iter().rfind(|x| x.flags == SYN | ACK).unwrap();
        let theirs = synack.seq.wrapping_add(1);
        st.detour(&seg(port, 2, theirs, ACK, &[]));
        exchange(&mut st, port, (2, theirs), b"GET /latest/ HTTP/1.1\r\n\r\n")
    };
    assert!(resp.ends_with("meta-data/"), "{resp}");
}

#[test]
fn a_huge_request_is_refused_and_closed() {
    let mut st = stack(MmdsVersion::V1);
    let (mut ours, theirs) = connect(&mut st, 4003);
    let chunk = vec![b'a'; 1000];
    let mut sent = 0;
    // Headers that never end: more than the connection takes.
    let head = b"GET / HTTP/1.1\r\nX: ";
    st.detour(&seg(4003, ours, theirs, ACK, head));
    ours += head.len() as u32;
    while sent < 8 {
        st.detour(&seg(4003, ours, theirs, ACK, &chunk));
        ours = ours.wrapping_add(1000);
        sent += 1;
    }
    let r = replies(&mut st);
    let data: Vec<u8> = r.iter().flat_map(|x| x.payload.clone()).collect();
    let text = String::from_utf8_lossy(&data);
    assert!(text.starts_with("HTTP/1.1 4"), "{text}");
    assert!(text.contains("Connection: close"), "{text}");
    assert!(r.iter().any(|x| x.flags & FIN != 0), "{r:?}");
}

/// Random bytes and random mutations of valid frames never panic, and what is sent back
/// stays bounded.
#[test]
fn noise_never_panics() {
    let mut st = stack(MmdsVersion::V2);
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let good = [
        seg_with(4000, 1, 0, SYN, Some(1460), &[]),
        seg(4000, 2, 0, ACK | PSH, b"GET / HTTP/1.1\r\n\r\n"),
        seg(4000, 2, 0, FIN | ACK, &[]),
    ];
    let mut buf = vec![0u8; 2000];
    for i in 0..20_000 {
        let mut f = good[i % good.len()].clone();
        let flips = rnd() % 4;
        for _ in 0..flips {
            let at = (rnd() as usize) % f.len();
            f[at] = rnd() as u8;
        }
        if rnd() % 8 == 0 {
            f.truncate((rnd() as usize) % f.len());
        }
        st.detour(&f);
        let mut sent = 0;
        while st.next_frame(&mut buf).is_some() {
            sent += 1;
            assert!(sent < 200);
        }
        assert!(st.connections() <= MAX_CONNECTIONS);
    }
}

/// Sequence rules: data out of order is not taken (an ACK says what is expected), an
/// acknowledgement of what was never sent is answered and ignored, a duplicate ACK makes
/// MMDS send again from what was acknowledged, a reset off the expected number is ignored.
#[test]
fn sequence_numbers_are_checked() {
    let mut st = stack(MmdsVersion::V1);
    let (ours, theirs) = connect(&mut st, 4100);
    let req = b"GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n";
    // Ahead of the expected sequence number: not taken.
    st.detour(&seg(4100, ours + 5, theirs, ACK | PSH, req));
    let r = replies(&mut st);
    assert_eq!((r.len(), r[0].flags, r[0].ack), (1, ACK, ours), "{r:?}");
    assert!(r[0].payload.is_empty());
    // Acknowledging what was never sent: answered with an ACK, the data not taken.
    st.detour(&seg(4100, ours, theirs + 1000, ACK | PSH, req));
    let r = replies(&mut st);
    assert_eq!((r.len(), r[0].ack), (1, ours), "{r:?}");
    // A reset off the expected number changes nothing.
    st.detour(&seg(4100, ours + 7, 0, RST, &[]));
    assert_eq!(st.connections(), 1);
    // The request at the right number is answered.
    st.detour(&seg(4100, ours, theirs, ACK | PSH, req));
    let first = replies(&mut st);
    let data: Vec<u8> = first.iter().flat_map(|x| x.payload.clone()).collect();
    assert!(data.ends_with(b"ami-1"), "{first:?}");
    // A duplicate ACK (nothing acknowledged): the same bytes come again.
    let ours = ours + req.len() as u32;
    st.detour(&seg(4100, ours, theirs, ACK, &[]));
    let again = replies(&mut st);
    let data2: Vec<u8> = again.iter().flat_map(|x| x.payload.clone()).collect();
    assert_eq!(data, data2);
    assert_eq!(again[0].seq, theirs);
    // Acknowledged: nothing more to send; a reset at the right number ends it.
    st.detour(&seg(4100, ours, theirs + data.len() as u32, ACK, &[]));
    assert!(replies(&mut st).is_empty());
    st.detour(&seg(4100, ours, 0, RST, &[]));
    assert_eq!(st.connections(), 0);
}

/// Segments are at most the guest's MSS, and no more than its window is in flight.
#[test]
fn the_guests_mss_and_window_are_kept() {
    let mut st = stack(MmdsVersion::V1);
    assert!(st.detour(&seg_with(4200, 1000, 0, SYN, Some(500), &[])));
    let synack = replies(&mut st);
    let theirs = synack[0].seq.wrapping_add(1);
    st.detour(&seg(4200, 1001, theirs, ACK, &[]));
    let req = b"GET /big HTTP/1.1\r\n\r\n";
    st.detour(&seg(4200, 1001, theirs, ACK | PSH, req));
    let r = replies(&mut st);
    assert!(r.iter().all(|x| x.payload.len() <= 500), "{r:?}");
    let sent: usize = r.iter().map(|x| x.payload.len()).sum();
    assert!(
        sent > 3000,
        "the whole response fits the 65535-byte window: {sent}"
    );
}
