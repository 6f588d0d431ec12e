//! The MMDS network endpoint of one network interface: the frames the guest sends to the
//! MMDS address are taken out of its transmit path and answered here; the answers wait
//! to be put in its receive path. Everything else is left for the tap, unchanged.
//!
//! Taken: ARP packets asking for the MMDS address, and IPv4 TCP segments to the MMDS
//! address on port 80 (anything else to that address, such as ICMP, goes to the tap as
//! Firecracker leaves it). A taken frame that is malformed (lengths, checksums, options,
//! fragments, impossible flags) is dropped and counted.
//!
//! - [`frame`]: the wire formats, read with every length checked, written whole;
//! - [`tcp`]: one connection.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections (a SYN beyond evicts the one idle the
//! longest, with a reset); at most [`MAX_CONTROL`] small frames (ARP replies, resets, last
//! ACKs) waiting, beyond which more are dropped and counted; per connection, the bounds of
//! [`tcp`]. Replies are built when the receive path asks for one ([`MmdsStack::next_frame`]),
//! so nothing else queues up.

pub mod frame;
pub mod tcp;

use super::SharedMmds;
use crate::metrics::METRICS;
use crate::sync::lock;
use frame::{
    Ip, Mac, OutSegment, Route, Segment, ACK, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETH_LEN, RST,
};
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use tcp::{Conn, Outcome};

/// Most TCP connections at a time (Firecracker's default).
pub const MAX_CONNECTIONS: usize = 30;
/// Most ARP replies, resets and last ACKs waiting to be delivered.
pub const MAX_CONTROL: usize = 32;
/// The MMDS port.
pub const PORT: u16 = 80;
/// MMDS's own MAC address on the guest's link (locally administered, unicast).
pub const MMDS_MAC: Mac = [0x06, 0x4b, 0x49, 0x4c, 0x4e, 0x4d];

struct Peer {
    mac: Mac,
    ip: Ip,
    conn: Conn,
    /// When the connection last received a segment (the stack's own counter).
    last_seen: u64,
}

pub struct MmdsStack {
    ip: Ip,
    store: SharedMmds,
    peers: Vec<Peer>,
    control: VecDeque<Vec<u8>>,
    /// Which connection sends next (round robin).
    turn: usize,
    clock: u64,
    ip_id: u16,
    isn: u32,
}

impl MmdsStack {
    pub fn new(address: Ipv4Addr, store: SharedMmds) -> Self {
        let mut seed = [0u8; 4];
        // A predictable initial sequence number only matters against an off-path attacker,
        // and this link has none; the random one is a courtesy.
        let _ = crate::random::fill_random(&mut seed);
        MmdsStack {
            ip: address.octets(),
            store,
            peers: Vec::new(),
            control: VecDeque::new(),
            turn: 0,
            clock: 0,
            ip_id: 0,
            isn: u32::from_be_bytes(seed),
        }
    }

    /// Looks at a frame the guest sends (without the virtio-net header): true when it is
    /// for MMDS (taken: it must not reach the tap).
    pub fn detour(&mut self, frame: &[u8]) -> bool {
        let (Some(ethertype), Some(src_mac), Some(payload)) = (
            frame::be16(frame, 12),
            frame::array::<6>(frame, 6),
            frame.get(ETH_LEN..),
        ) else {
            METRICS.mmds.rx_bad_eth.inc();
            return false;
        };
        match ethertype {
            ETHERTYPE_ARP if frame::arp_target(payload) == Some(self.ip) => {
                METRICS.mmds.rx_accepted.inc();
                match frame::arp_request(payload) {
                    Some(req) => {
                        let mut out = vec![0u8; ETH_LEN + frame::ARP_LEN];
                        if frame::write_arp_reply(&mut out, MMDS_MAC, self.ip, &req).is_some() {
                            self.queue_control(out);
                        }
                    }
                    None => METRICS.mmds.rx_accepted_err.inc(),
                }
                true
            }
            ETHERTYPE_IPV4 if frame::is_tcp_to(payload, self.ip, PORT) => {
                METRICS.mmds.rx_accepted.inc();
                self.take_ipv4(src_mac, payload);
                true
            }
            _ => false,
        }
    }

    fn take_ipv4(&mut self, src_mac: Mac, packet: &[u8]) {
        let Ok(ip) = frame::parse_ipv4(packet) else {
            METRICS.mmds.rx_accepted_err.inc();
            return;
        };
        let Ok(seg) = frame::parse_tcp(ip.payload, ip.src, ip.dst) else {
            METRICS.mmds.rx_accepted_err.inc();
            return;
        };
        self.clock += 1;
        let found = self
            .peers
            .iter()
            .position(|p| p.ip == ip.src && p.conn.peer_port == seg.src_port);
        let route = Route {
            our_mac: MMDS_MAC,
            our_ip: self.ip,
            peer_mac: src_mac,
            peer_ip: ip.src,
        };
        if seg.has(frame::SYN) && !seg.has(ACK) {
            if let Some(i) = found {
                if self.peers.get(i).is_some_and(|p| p.conn.is_same_syn(&seg)) {
                    self.step(i, &seg);
                    return;
                }
                // The guest reuses the port: the old connection is over.
                self.peers.swap_remove(i);
            }
            self.accept(route, &seg);
            return;
        }
        match found {
            Some(i) => self.step(i, &seg),
            None => {
                METRICS.mmds.rx_accepted_unusual.inc();
                if !seg.has(RST) {
                    self.reset_for(&route, &seg);
                }
            }
        }
    }

    fn accept(&mut self, route: Route, syn: &Segment) {
        if self.peers.len() >= MAX_CONNECTIONS {
            // Full: the connection idle the longest makes room, reset.
            METRICS.mmds.rx_accepted_unusual.inc();
            if let Some((i, _)) = self
                .peers
                .iter()
                .enumerate()
                .min_by_key(|(_, p)| p.last_seen)
            {
                let old = self.peers.swap_remove(i);
                let (seq, ack) = old.conn.reset_seq();
                let route = Route {
                    peer_mac: old.mac,
                    peer_ip: old.ip,
                    ..route
                };
                self.queue_segment(&route, old.conn.peer_port, seq, ack, RST | ACK);
            }
        }
        self.isn = self.isn.wrapping_add(0x9e37_79b9);
        self.peers.push(Peer {
            mac: route.peer_mac,
            ip: route.peer_ip,
            conn: Conn::accept(syn, self.isn),
            last_seen: self.clock,
        });
    }

    fn step(&mut self, i: usize, seg: &Segment) {
        let Some(peer) = self.peers.get_mut(i) else {
            return;
        };
        peer.last_seen = self.clock;
        let outcome = peer.conn.input(seg, &mut lock(&self.store));
        if let Outcome::Remove { ack } = outcome {
            let old = self.peers.swap_remove(i);
            if ack {
                let route = Route {
                    our_mac: MMDS_MAC,
                    our_ip: self.ip,
                    peer_mac: old.mac,
                    peer_ip: old.ip,
                };
                let (seq, ack) = old.conn.reset_seq();
                self.queue_segment(&route, old.conn.peer_port, seq, ack, ACK);
            }
        }
    }

    /// A reset for a segment of no connection (RFC 9293's rules for a closed port).
    fn reset_for(&mut self, route: &Route, seg: &Segment) {
        if seg.has(ACK) {
            self.queue_segment(route, seg.src_port, seg.ack, 0, RST);
        } else {
            let ack = seg.seq.wrapping_add(seg.seq_len());
            self.queue_segment(route, seg.src_port, 0, ack, RST | ACK);
        }
    }

    fn queue_segment(&mut self, route: &Route, port: u16, seq: u32, ack: u32, flags: u8) {
        let mut out = vec![0u8; ETH_LEN + frame::IPV4_LEN + frame::TCP_LEN];
        self.ip_id = self.ip_id.wrapping_add(1);
        let seg = OutSegment {
            src_port: PORT,
            dst_port: port,
            seq,
            ack,
            flags,
            window: 0,
            mss: None,
            payload: &[],
        };
        if frame::write_tcp(&mut out, route, self.ip_id, &seg).is_some() {
            self.queue_control(out);
        }
    }

    fn queue_control(&mut self, frame: Vec<u8>) {
        if self.control.len() >= MAX_CONTROL {
            METRICS.mmds.tx_errors.inc();
            return;
        }
        self.control.push_back(frame);
    }

    /// Whether a reply waits for the receive path.
    pub fn has_frames(&self) -> bool {
        !self.control.is_empty() || self.peers.iter().any(|p| p.conn.wants_output())
    }

    /// Writes the next reply into `out`; returns its length (`None`: nothing to send).
    pub fn next_frame(&mut self, out: &mut [u8]) -> Option<usize> {
        let n = self.build_next(out)?;
        METRICS.mmds.tx_frames.inc();
        METRICS.mmds.tx_bytes.add(n as u64);
        Some(n)
    }

    fn build_next(&mut self, out: &mut [u8]) -> Option<usize> {
        if let Some(f) = self.control.pop_front() {
            let dst = out.get_mut(..f.len())?;
            dst.copy_from_slice(&f);
            return Some(f.len());
        }
        let count = self.peers.len();
        for k in 0..count {
            let i = (self.turn + k) % count;
            let Some(peer) = self.peers.get_mut(i) else {
                continue;
            };
            let Some(o) = peer.conn.output() else {
                continue;
            };
            self.turn = i + 1;
            self.ip_id = self.ip_id.wrapping_add(1);
            let route = Route {
                our_mac: MMDS_MAC,
                our_ip: self.ip,
                peer_mac: peer.mac,
                peer_ip: peer.ip,
            };
            let seg = OutSegment {
                src_port: PORT,
                dst_port: peer.conn.peer_port,
                seq: o.seq,
                ack: o.ack,
                flags: o.flags,
                window: o.window,
                mss: o.mss,
                payload: peer.conn.data(o.data),
            };
            return frame::write_tcp(out, &route, self.ip_id, &seg);
        }
        None
    }

    /// Forgets every connection and waiting reply (the driver reset the device: the guest's
    /// side of them is gone).
    pub fn reset(&mut self) {
        self.peers.clear();
        self.control.clear();
        self.turn = 0;
    }

    /// The number of open connections.
    pub fn connections(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests;
