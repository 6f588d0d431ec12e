//! `mmds`: reads the microVM metadata service over the first virtio-net device, as a guest
//! would with its own small network stack: ARP for 169.254.169.254 (`mmds arp mac=..`), the
//! TCP handshake to port 80 (`mmds tcp connected`), then HTTP/1.1 requests on that one
//! connection, each printed as `mmds http <name> status=N body=<escaped body>`:
//!
//! * `kiln.mmds=1` (default, V1): `text` (`GET /latest/meta-data/ami-id`) and `json` (the
//!   same directory with `Accept: application/json`);
//! * `kiln.mmds=2` (V2): `token` (`PUT /latest/api/token`, TTL 60 s), `with-token` (the
//!   GET with `X-metadata-token`), `no-token` (the GET without).
//!
//! Then it closes the connection (`mmds closed`). Every wait is bounded (about 10 s).

// Lengths are cut to the width of their header fields; every one is in range by
// construction (frames are at most 1536 bytes).
#![allow(clippy::cast_possible_truncation)]

use crate::boot_info::BootInfo;
use crate::serial::Console;
use crate::virtio::net::{Net, HDR, RX_BUFS, RX_BUF_LEN};
use crate::virtio::WAIT_CYCLES;
use kiln_guest_boot::cmdline::param_num;

const MMDS_IP: [u8; 4] = [169, 254, 169, 254];
const GUEST_IP: [u8; 4] = [10, 0, 0, 2];
const GUEST_PORT: u16 = 49152;
const FALLBACK_MAC: [u8; 6] = [0x02, 0x4b, 0x49, 0x4c, 0x4e, 0x01];
/// About 10 s at 2-3 GHz.
const RX_WAIT_CYCLES: u64 = 25_000_000_000;
/// Frames looked at while waiting for one answer.
const MAX_FRAMES: usize = 64;
const RESPONSE_MAX: usize = 2048;

struct Link {
    n: Net,
    mac: [u8; 6],
    frame: [u8; RX_BUF_LEN],
    len: usize,
    mmds_mac: [u8; 6],
    seq: u32,
    ack: u32,
    /// Our port of the connection being read.
    port: u16,
}

fn sum16(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for p in parts {
        let mut i = 0;
        while i + 1 < p.len() {
            sum += u32::from(u16::from_be_bytes([p[i], p[i + 1]]));
            i += 2;
        }
        if i < p.len() {
            sum += u32::from(p[i]) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl Link {
    /// Receives one frame into `frame` (the buffer is posted again).
    fn recv(&mut self) -> bool {
        let Some(used) = self.n.recv(RX_WAIT_CYCLES) else {
            return false;
        };
        let id = used.id as usize % RX_BUFS;
        let got = (used.len as usize).min(RX_BUF_LEN);
        let buf = Net::rx_buf(id);
        self.len = got.saturating_sub(HDR);
        self.frame[..self.len].copy_from_slice(&buf[HDR.min(got)..got]);
        self.n.post(id, RX_BUF_LEN as u32);
        self.n.kick_rx();
        true
    }

    fn send(&mut self, frame: &[u8]) -> bool {
        self.n.send_wait(frame, WAIT_CYCLES).is_some()
    }

    /// Sends a TCP segment to MMDS with the link's sequence numbers.
    fn segment(&mut self, flags: u8, payload: &[u8], mss: bool) -> bool {
        self.segment_from(GUEST_PORT, flags, payload, mss, |_| {})
    }

    /// [`Link::segment`] from `port`, the finished frame changed by `spoil` before it goes.
    fn segment_from(
        &mut self,
        port: u16,
        flags: u8,
        payload: &[u8],
        mss: bool,
        spoil: impl Fn(&mut [u8]),
    ) -> bool {
        let mut f = [0u8; 256];
        let tcp_len = if mss { 24 } else { 20 } + payload.len();
        let total = 14 + 20 + tcp_len;
        if total > f.len() - HDR {
            return false;
        }
        f[..6].copy_from_slice(&self.mmds_mac);
        f[6..12].copy_from_slice(&self.mac);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = 14;
        f[ip] = 0x45;
        f[ip + 2..ip + 4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
        f[ip + 6] = 0x40;
        f[ip + 8] = 64;
        f[ip + 9] = 6;
        f[ip + 12..ip + 16].copy_from_slice(&GUEST_IP);
        f[ip + 16..ip + 20].copy_from_slice(&MMDS_IP);
        let s = sum16(&[&f[ip..ip + 20]]);
        f[ip + 10..ip + 12].copy_from_slice(&s.to_be_bytes());
        let t = ip + 20;
        f[t..t + 2].copy_from_slice(&port.to_be_bytes());
        f[t + 2..t + 4].copy_from_slice(&80u16.to_be_bytes());
        f[t + 4..t + 8].copy_from_slice(&self.seq.to_be_bytes());
        f[t + 8..t + 12].copy_from_slice(&self.ack.to_be_bytes());
        f[t + 12] = if mss { 6 << 4 } else { 5 << 4 };
        f[t + 13] = flags;
        f[t + 14..t + 16].copy_from_slice(&8192u16.to_be_bytes());
        let data = if mss {
            f[t + 20..t + 24].copy_from_slice(&[2, 4, 0x05, 0xb4]);
            t + 24
        } else {
            t + 20
        };
        f[data..data + payload.len()].copy_from_slice(payload);
        let mut pseudo = [0u8; 12];
        pseudo[..4].copy_from_slice(&GUEST_IP);
        pseudo[4..8].copy_from_slice(&MMDS_IP);
        pseudo[9] = 6;
        pseudo[10..].copy_from_slice(&(tcp_len as u16).to_be_bytes());
        let s = sum16(&[&pseudo, &f[t..t + tcp_len]]);
        f[t + 16..t + 18].copy_from_slice(&s.to_be_bytes());
        spoil(&mut f[..total]);
        self.send(&f[..total])
    }

    /// Receives what MMDS sends within about `cycles`; returns (frames, SYN-ACKs, resets,
    /// FINs) of TCP frames from MMDS.
    fn drain(&mut self, cycles: u64) -> (u64, u64, u64, u64) {
        let mut counts = (0, 0, 0, 0);
        while let Some(used) = self.n.recv(cycles) {
            let id = used.id as usize % RX_BUFS;
            let got = (used.len as usize).min(RX_BUF_LEN);
            self.len = got.saturating_sub(HDR);
            self.frame[..self.len].copy_from_slice(&Net::rx_buf(id)[HDR.min(got)..got]);
            self.n.post(id, RX_BUF_LEN as u32);
            self.n.kick_rx();
            counts.0 += 1;
            if let Some((_, _, flags, _, _)) = self.tcp_from_any_port() {
                counts.1 += u64::from(flags & (SYN | ACK) == SYN | ACK);
                counts.2 += u64::from(flags & RST != 0);
                counts.3 += u64::from(flags & FIN != 0);
            }
        }
        counts
    }

    /// Any TCP segment from MMDS in `frame` (whatever our port).
    fn tcp_from_any_port(&mut self) -> Option<(u32, u32, u8, usize, usize)> {
        let keep = self.port;
        let f = &self.frame;
        let t = 14 + usize::from(f[14] & 0xf) * 4;
        self.port =
            u16::from_be_bytes([f[t.min(RX_BUF_LEN - 4) + 2], f[t.min(RX_BUF_LEN - 4) + 3]]);
        let seg = self.tcp_from_mmds();
        self.port = keep;
        seg
    }

    /// The TCP segment in `frame` if it is one from MMDS to our port: (seq, ack, flags,
    /// payload range).
    fn tcp_from_mmds(&self) -> Option<(u32, u32, u8, usize, usize)> {
        let f = &self.frame[..self.len];
        if f.len() < 54 || f[12..14] != [0x08, 0x00] || f[23] != 6 || f[26..30] != MMDS_IP {
            return None;
        }
        let ihl = usize::from(f[14] & 0xf) * 4;
        let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
        let t = 14 + ihl;
        if t + 20 > f.len() || 14 + total > f.len() {
            return None;
        }
        if u16::from_be_bytes([f[t + 2], f[t + 3]]) != self.port {
            return None;
        }
        let seq = u32::from_be_bytes([f[t + 4], f[t + 5], f[t + 6], f[t + 7]]);
        let ack = u32::from_be_bytes([f[t + 8], f[t + 9], f[t + 10], f[t + 11]]);
        let off = usize::from(f[t + 12] >> 4) * 4;
        Some((seq, ack, f[t + 13], (t + off).min(14 + total), 14 + total))
    }
}

fn arp(l: &mut Link, con: &mut Console) -> bool {
    let mut f = [0u8; 42];
    f[..6].fill(0xff);
    f[6..12].copy_from_slice(&l.mac);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&l.mac);
    f[28..32].copy_from_slice(&GUEST_IP);
    f[38..42].copy_from_slice(&MMDS_IP);
    if !l.send(&f) {
        con.error().s("mmds arp request not sent").end();
        return false;
    }
    for _ in 0..MAX_FRAMES {
        if !l.recv() {
            break;
        }
        let r = &l.frame[..l.len];
        if r.len() >= 42 && r[12..14] == [0x08, 0x06] && r[20..22] == [0, 2] && r[28..32] == MMDS_IP
        {
            l.mmds_mac.copy_from_slice(&r[22..28]);
            let mut line = con.line().s("mmds arp mac=");
            for (i, b) in l.mmds_mac.iter().enumerate() {
                if i > 0 {
                    line = line.s(":");
                }
                line = super::blk::hex_bytes(line, &[*b]);
            }
            line.end();
            return true;
        }
    }
    con.error().s("mmds arp: no reply").end();
    false
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;

fn connect(l: &mut Link, con: &mut Console) -> bool {
    l.seq = 1000;
    if !l.segment(SYN, &[], true) {
        con.error().s("mmds syn not sent").end();
        return false;
    }
    for _ in 0..MAX_FRAMES {
        if !l.recv() {
            break;
        }
        if let Some((seq, ack, flags, _, _)) = l.tcp_from_mmds() {
            if flags & (SYN | ACK) == SYN | ACK && ack == 1001 {
                l.seq = 1001;
                l.ack = seq.wrapping_add(1);
                l.segment(ACK, &[], false);
                con.line().s("mmds tcp connected").end();
                return true;
            }
        }
    }
    con.error().s("mmds tcp: no SYN-ACK").end();
    false
}

/// Sends `request`, reads the whole response (by its Content-Length), prints it as `name`.
fn request(
    l: &mut Link,
    con: &mut Console,
    name: &str,
    request: &[u8],
    out: &mut [u8],
) -> Option<usize> {
    if !l.segment(ACK | PSH, request, false) {
        con.error().s("mmds request not sent").end();
        return None;
    }
    l.seq = l.seq.wrapping_add(request.len() as u32);
    let mut resp = [0u8; RESPONSE_MAX];
    let mut have = 0;
    for _ in 0..MAX_FRAMES {
        if !l.recv() {
            break;
        }
        let Some((seq, _, _, from, to)) = l.tcp_from_mmds() else {
            continue;
        };
        if seq != l.ack || from >= to {
            continue;
        }
        let part = (to - from).min(RESPONSE_MAX - have);
        resp[have..have + part].copy_from_slice(&l.frame[from..from + part]);
        have += part;
        l.ack = l.ack.wrapping_add((to - from) as u32);
        l.segment(ACK, &[], false);
        if let Some(body) = complete(&resp[..have]) {
            let status = &resp[9..12.min(have)];
            let body = &resp[body..have];
            con.line()
                .s("mmds http ")
                .s(name)
                .s(" status=")
                .escaped(status)
                .s(" body=")
                .escaped(&body[..body.len().min(200)])
                .end();
            let n = body.len().min(out.len());
            out[..n].copy_from_slice(&body[..n]);
            return Some(n);
        }
    }
    con.error()
        .s("mmds http ")
        .s(name)
        .s(": no complete response")
        .end();
    None
}

/// Where the body starts, once the headers and `Content-Length` bytes of body are in.
fn complete(r: &[u8]) -> Option<usize> {
    let end = r.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let mut len = 0usize;
    for line in r[..end].split(|&b| b == b'\n') {
        let lower = |b: &u8| b.to_ascii_lowercase();
        let l: [u8; 16] = core::array::from_fn(|i| line.get(i).map_or(0, lower));
        if &l[..15] == b"content-length:" {
            for &b in &line[15..] {
                if b.is_ascii_digit() {
                    len = len * 10 + usize::from(b - b'0');
                }
            }
        }
    }
    (r.len() >= end + len).then_some(end)
}

fn open(info: &BootInfo, con: &mut Console) -> Option<Link> {
    let n = match Net::open(info.cmdline, 0, false) {
        Ok(n) => n,
        Err(status) => {
            con.error()
                .s("mmds: virtio-net did not start status=")
                .hex(status.into())
                .end();
            return None;
        }
    };
    let mut mac = n.mac();
    if mac == [0; 6] {
        mac = FALLBACK_MAC;
    }
    let mut l = Link {
        n,
        mac,
        frame: [0; RX_BUF_LEN],
        len: 0,
        mmds_mac: [0; 6],
        seq: 0,
        ack: 0,
        port: GUEST_PORT,
    };
    for i in 0..RX_BUFS {
        l.n.post(i, RX_BUF_LEN as u32);
    }
    l.n.kick_rx();
    Some(l)
}

pub fn run(info: &BootInfo, con: &mut Console) {
    let Some(mut l) = open(info, con) else {
        return;
    };
    if !arp(&mut l, con) || !connect(&mut l, con) {
        return;
    }
    let get = b"GET /latest/meta-data/ami-id HTTP/1.1\r\nHost: 169.254.169.254\r\n";
    let mut token = [0u8; 64];
    if param_num(info.cmdline, b"kiln.mmds", 1) == 2 {
        let put = b"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n";
        let Some(t) = request(&mut l, con, "token", put, &mut token) else {
            return;
        };
        let mut with = [0u8; 200];
        let head = b"X-metadata-token: ";
        let mut at = get.len();
        with[..at].copy_from_slice(get);
        with[at..at + head.len()].copy_from_slice(head);
        at += head.len();
        with[at..at + t].copy_from_slice(&token[..t]);
        at += t;
        with[at..at + 4].copy_from_slice(b"\r\n\r\n");
        at += 4;
        request(&mut l, con, "with-token", &with[..at], &mut []);
        let mut without = [0u8; 200];
        without[..get.len()].copy_from_slice(get);
        without[get.len()..get.len() + 2].copy_from_slice(b"\r\n");
        request(&mut l, con, "no-token", &without[..get.len() + 2], &mut []);
    } else {
        let mut text = [0u8; 200];
        text[..get.len()].copy_from_slice(get);
        text[get.len()..get.len() + 2].copy_from_slice(b"\r\n");
        request(&mut l, con, "text", &text[..get.len() + 2], &mut []);
        let json = b"GET /latest/meta-data/ HTTP/1.1\r\nAccept: application/json\r\n\r\n";
        request(&mut l, con, "json", json, &mut []);
    }
    // Close: our FIN, then MMDS's.
    l.segment(FIN | ACK, &[], false);
    l.seq = l.seq.wrapping_add(1);
    for _ in 0..MAX_FRAMES {
        if !l.recv() {
            break;
        }
        if let Some((seq, _, flags, _, _)) = l.tcp_from_mmds() {
            if flags & FIN != 0 {
                l.ack = seq.wrapping_add(1);
                l.segment(ACK, &[], false);
                con.line().s("mmds closed").end();
                return;
            }
        }
    }
    con.error().s("mmds: no FIN from MMDS").end();
}

/// Puts the IPv4 and TCP checksums of a frame from [`Link::segment_from`] right again.
fn fix_sums(f: &mut [u8]) {
    f[24..26].fill(0);
    let s = sum16(&[&f[14..34]]);
    f[24..26].copy_from_slice(&s.to_be_bytes());
    let tcp_len = f.len() - 34;
    f[50..52].fill(0);
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&GUEST_IP);
    pseudo[4..8].copy_from_slice(&MMDS_IP);
    pseudo[9] = 6;
    pseudo[10..].copy_from_slice(&(tcp_len as u16).to_be_bytes());
    let s = sum16(&[&pseudo, &f[34..]]);
    f[50..52].copy_from_slice(&s.to_be_bytes());
}

/// `mmds-hostile`: what a hostile guest sends MMDS, each answer counted, then a proper
/// request that must still be served:
///
/// * `mmds-hostile malformed replies=N`: a SYN with a bad TCP checksum, one with a bad IPv4
///   checksum, one whose IPv4 total length passes the frame, one whose TCP header length
///   passes the segment, one with an option of length 0, SYN with FIN, a fragment, and an
///   ARP packet for the MMDS address that is no request: nothing is answered (N=0);
/// * `mmds-hostile flood synacks=S resets=R`: 40 SYNs from 40 ports (the connection table
///   holds 30: the oldest are reset);
/// * `mmds-hostile huge status=N fin=F`: a request whose headers never end, 150 bytes a
///   segment until MMDS refuses it (`400`, and closes: F=1);
/// * then the `mmds` scenario's V1 requests (`kiln.mmds` is ignored).
pub fn run_hostile(info: &BootInfo, con: &mut Console) {
    let Some(mut l) = open(info, con) else {
        return;
    };
    let short = WAIT_CYCLES / 10;
    l.mmds_mac = [0xff; 6];
    l.seq = 7;
    // Each spoils one thing; those after the checksums' own case put the checksums right,
    // so that the check they are for is the one that refuses them.
    let spoilers: [fn(&mut [u8]); 7] = [
        |f| f[50] ^= 0xff,
        |f| f[24] ^= 0xff,
        |f| {
            f[17] = 0xff; // IPv4 total length past the frame
            fix_sums(f);
        },
        |f| {
            f[46] = 0xf0; // TCP header length 60, past the segment
            fix_sums(f);
        },
        |f| {
            f[54..58].copy_from_slice(&[8, 0, 1, 1]); // an option of length 0
            fix_sums(f);
        },
        |f| {
            f[47] |= FIN; // SYN with FIN
            fix_sums(f);
        },
        |f| {
            f[20] = 0x20; // more fragments
            fix_sums(f);
        },
    ];
    let mut sent = 0;
    for (i, spoil) in spoilers.iter().enumerate() {
        sent += u64::from(l.segment_from(40000 + i as u16, SYN, &[], true, spoil));
    }
    let mut not_request = [0u8; 42];
    not_request[..6].fill(0xff);
    not_request[6..12].copy_from_slice(&l.mac);
    not_request[12..14].copy_from_slice(&[0x08, 0x06]);
    not_request[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    not_request[38..42].copy_from_slice(&MMDS_IP);
    // For MMDS, but operation 3 (not a request): taken, not answered.
    not_request[21] = 3;
    sent += u64::from(l.send(&not_request));
    let (replies, ..) = l.drain(short);
    con.line()
        .s("mmds-hostile malformed sent=")
        .dec(sent)
        .s(" replies=")
        .dec(replies)
        .end();
    let (mut synacks, mut resets) = (0, 0);
    for port in 0..40u16 {
        l.seq = 100;
        l.segment_from(41000 + port, SYN, &[], true, |_| {});
        let (_, s, r, _) = l.drain(short);
        synacks += s;
        resets += r;
    }
    con.line()
        .s("mmds-hostile flood synacks=")
        .dec(synacks)
        .s(" resets=")
        .dec(resets)
        .end();
    // A request that never ends, on a connection of its own.
    l.port = 42000;
    l.seq = 1000;
    l.segment_from(42000, SYN, &[], true, |_| {});
    let mut connected = false;
    for _ in 0..MAX_FRAMES {
        if !l.recv() {
            break;
        }
        if let Some((seq, ack, flags, _, _)) = l.tcp_from_mmds() {
            if flags & (SYN | ACK) == SYN | ACK && ack == 1001 {
                l.seq = 1001;
                l.ack = seq.wrapping_add(1);
                l.segment_from(42000, ACK, &[], false, |_| {});
                connected = true;
                break;
            }
        }
    }
    if !connected {
        con.error()
            .s("mmds-hostile: no SYN-ACK for the huge request")
            .end();
        return;
    }
    let mut chunk = [b'a'; 150];
    chunk[..19].copy_from_slice(b"GET / HTTP/1.1\r\nX: ");
    let (mut status, mut fin) = ([b'?'; 3], 0);
    'sending: for _ in 0..40 {
        l.segment_from(42000, ACK | PSH, &chunk, false, |_| {});
        l.seq = l.seq.wrapping_add(chunk.len() as u32);
        chunk[..19].fill(b'a');
        while let Some(used) = l.n.recv(short) {
            let id = used.id as usize % RX_BUFS;
            let got = (used.len as usize).min(RX_BUF_LEN);
            l.len = got.saturating_sub(HDR);
            l.frame[..l.len].copy_from_slice(&Net::rx_buf(id)[HDR.min(got)..got]);
            l.n.post(id, RX_BUF_LEN as u32);
            l.n.kick_rx();
            if let Some((_, _, flags, from, to)) = l.tcp_from_mmds() {
                if to - from > 12 && &l.frame[from..from + 5] == b"HTTP/" {
                    status.copy_from_slice(&l.frame[from + 9..from + 12]);
                }
                if flags & FIN != 0 {
                    fin = 1;
                    break 'sending;
                }
            }
        }
    }
    con.line()
        .s("mmds-hostile huge status=")
        .escaped(&status)
        .s(" fin=")
        .dec(fin)
        .end();
    // MMDS still serves a well-behaved request.
    l.port = GUEST_PORT;
    if !arp(&mut l, con) || !connect(&mut l, con) {
        return;
    }
    let get = b"GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n";
    request(&mut l, con, "text", get, &mut []);
}
