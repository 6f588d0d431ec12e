//! One vsock connection: a guest `(cid, port)` on one side, a host Unix stream on the other,
//! its state machine and both directions' credit accounting.
//!
//! **States**: `LocalInit` (the host connected to `uds_path` and sent `CONNECT <port>`; a
//! REQUEST goes to the guest, whose RESPONSE makes the muxer-visible answer `OK <host_port>`
//! appear on the host stream), `PeerInit` (the guest sent a REQUEST and the host socket
//! `<uds_path>_<port>` accepted; our RESPONSE is pending), `Established`, and two ends:
//! `Killed` (the muxer removes the connection, closing the host stream, and sends the guest an
//! RST) and `Closed` (removed without a word: the guest sent the RST).
//!
//! **Guest → host** (the guest's RW packets): written straight to the host stream; what the
//! stream does not take waits in a buffer of at most [`BUF_ALLOC`] bytes, the `buf_alloc` we
//! advertise. `fwd_cnt` counts bytes written to the host stream and goes to the guest in every
//! packet's header; a CREDIT_UPDATE is sent on its own when the guest's last view of our free
//! space drops under [`CREDIT_UPDATE_THRESHOLD`] and we have freed some since. A host peer
//! that never reads therefore makes the guest run out of credit, nothing more; a guest that
//! sends beyond its credit is reset.
//!
//! **Host → guest**: read from the host stream only when the guest has given a receive buffer,
//! and never more than its credit: `peer_buf_alloc - (rx_cnt - peer_fwd_cnt)`, from the
//! guest's latest header. With no credit left, one CREDIT_REQUEST is sent. End of file on the
//! host stream becomes a SHUTDOWN (send only when the host merely shut down its writing side,
//! both directions when it hung up, with a [`SHUTDOWN_TIMEOUT`] for the guest's RST).
//!
//! **Shutdown from the guest**: SEND shuts down the host stream's writing side once the buffer
//! is written (the host reads end of file); both directions end the connection once the buffer
//! is written (or after [`SHUTDOWN_TIMEOUT`]).

use super::packet::{
    Header, Op, TxPacket, HOST_CID, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::unix::Stream;
use crate::metrics::METRICS;
use std::collections::VecDeque;
use std::io::ErrorKind;
use std::num::Wrapping;
use std::time::{Duration, Instant};

/// Our receive buffer per connection (guest → host bytes waiting for the host peer).
pub const BUF_ALLOC: u32 = 64 * 1024;
/// Send a CREDIT_UPDATE when the guest believes we have less free space than this.
pub const CREDIT_UPDATE_THRESHOLD: u32 = 16 * 1024;
/// How long the guest has to answer a host-initiated REQUEST.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection shutting down in both directions may take to finish.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    LocalInit,
    PeerInit,
    Established,
    /// To be removed, with an RST to the guest.
    Killed,
    /// To be removed silently.
    Closed,
}

/// Control packets waiting for a guest receive buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Pending {
    request: bool,
    response: bool,
    /// SHUTDOWN flags to send (0: none).
    shutdown: u32,
    credit_update: bool,
}

impl Pending {
    fn any(&self) -> bool {
        self.request || self.response || self.shutdown != 0 || self.credit_update
    }
}

/// Why a connection was killed (for the log and the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    /// The guest sent more than the credit we gave it.
    CreditViolation,
    /// A packet the state does not allow (RW before the handshake, a second REQUEST, ...).
    Protocol,
    /// Reading or writing the host stream failed.
    HostIo,
    /// A REQUEST, SHUTDOWN or buffer flush took too long.
    Timeout,
    /// The guest shut down both directions and everything was written.
    Finished,
}

#[derive(Debug)]
pub struct Connection {
    stream: Stream,
    guest_cid: u64,
    pub local_port: u32,
    pub peer_port: u32,
    /// Made by the host through `uds_path` (its local port was allocated by the muxer).
    pub host_initiated: bool,
    state: State,
    pending: Pending,
    deadline: Option<Instant>,
    kill_reason: Option<KillReason>,
    // Host → guest.
    /// The host stream has data (or end of file) the guest has not been given yet.
    readable: bool,
    /// The host stream hung up (both directions), as epoll reported.
    host_hup: bool,
    /// End of file was read from the host stream.
    host_eof: bool,
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    credit_requested: bool,
    // Guest → host.
    tx_buf: VecDeque<u8>,
    recv_cnt: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    /// SHUTDOWN flags the guest sent.
    peer_shutdown: u32,
    host_write_shut: bool,
    // Muxer bookkeeping.
    /// In the muxer's receive work queue.
    pub(super) queued: bool,
    /// What the muxer's epoll watches for this stream: (readable, writable).
    pub(super) registered: (bool, bool),
}

impl Connection {
    fn new(stream: Stream, guest_cid: u64, local_port: u32, peer_port: u32, state: State) -> Self {
        Connection {
            stream,
            guest_cid,
            local_port,
            peer_port,
            host_initiated: state == State::LocalInit,
            state,
            pending: Pending::default(),
            deadline: None,
            kill_reason: None,
            readable: false,
            host_hup: false,
            host_eof: false,
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            credit_requested: false,
            tx_buf: VecDeque::new(),
            recv_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            peer_shutdown: 0,
            host_write_shut: false,
            queued: false,
            registered: (false, false),
        }
    }

    /// The host connected and asked for guest port `peer_port`; it is `local_port` here.
    pub fn host_initiated(stream: Stream, guest_cid: u64, local_port: u32, peer_port: u32) -> Self {
        let mut c = Self::new(stream, guest_cid, local_port, peer_port, State::LocalInit);
        c.pending.request = true;
        c
    }

    /// The guest's REQUEST `req` was accepted by the host socket `stream`.
    pub fn guest_initiated(stream: Stream, guest_cid: u64, req: &Header) -> Self {
        let mut c = Self::new(
            stream,
            guest_cid,
            req.dst_port,
            req.src_port,
            State::PeerInit,
        );
        c.peer_buf_alloc = req.buf_alloc;
        c.peer_fwd_cnt = Wrapping(req.fwd_cnt);
        c.pending.response = true;
        c
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    pub fn kill_reason(&self) -> Option<KillReason> {
        self.kill_reason
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// True once the muxer must remove it (with an RST for `Killed`).
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Killed | State::Closed)
    }

    pub fn kill(&mut self, reason: KillReason) {
        if self.is_done() {
            return;
        }
        self.state = State::Killed;
        self.kill_reason = Some(reason);
        self.pending = Pending::default();
        self.tx_buf = VecDeque::new();
        self.readable = false;
        self.deadline = None;
    }

    /// What the guest can still receive from us.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Free space the guest last heard of from us.
    fn credit_seen_by_peer(&self) -> u32 {
        let in_flight = (self.recv_cnt - self.last_fwd_cnt_sent).0;
        BUF_ALLOC.saturating_sub(in_flight)
    }

    fn may_send_data(&self) -> bool {
        self.state == State::Established && !self.host_eof && self.peer_shutdown & SHUTDOWN_RCV == 0
    }

    /// True when [`Self::next_packet`] has something to say.
    pub fn has_rx_work(&self) -> bool {
        if self.is_done() {
            return false;
        }
        self.pending.any()
            || (self.readable
                && self.may_send_data()
                && (self.peer_credit() > 0 || !self.credit_requested))
    }

    /// What the muxer's epoll should watch: (readable, writable).
    pub fn interest(&self) -> (bool, bool) {
        if self.is_done() {
            return (false, false);
        }
        (
            self.may_send_data() && !self.readable,
            !self.tx_buf.is_empty(),
        )
    }

    /// epoll said the host stream is readable (or hung up).
    pub fn on_readable(&mut self, hup: bool) {
        self.host_hup |= hup;
        if !self.is_done() {
            self.readable = true;
        }
    }

    /// Bytes buffered for the host peer.
    pub fn buffered(&self) -> usize {
        self.tx_buf.len()
    }

    fn check_credit_update(&mut self) {
        if self.fwd_cnt != self.last_fwd_cnt_sent
            && self.credit_seen_by_peer() < CREDIT_UPDATE_THRESHOLD
        {
            self.pending.credit_update = true;
        }
    }

    /// Writes buffered guest data to the host stream (epoll said it is writable).
    pub fn on_writable(&mut self, now: Instant) {
        if self.is_done() {
            return;
        }
        let mut written = 0usize;
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match self.stream.send(front) {
                Ok(0) => break,
                Ok(n) => {
                    self.tx_buf.drain(..n.min(front.len()));
                    written += n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    METRICS.vsock.tx_write_fails.inc();
                    self.kill(KillReason::HostIo);
                    return;
                }
            }
        }
        self.forwarded(written);
        if self.tx_buf.is_empty() {
            // Give the memory back: most connections never need the buffer.
            self.tx_buf = VecDeque::new();
            self.after_drain(now);
        }
    }

    fn forwarded(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.fwd_cnt += Wrapping(u32::try_from(n).unwrap_or(u32::MAX));
        METRICS.vsock.tx_bytes_count.add(n as u64);
        self.check_credit_update();
    }

    /// The buffer is empty: carry out the guest's shutdown.
    fn after_drain(&mut self, _now: Instant) {
        if self.peer_shutdown & SHUTDOWN_SEND != 0 && !self.host_write_shut {
            self.host_write_shut = true;
            // The host peer may already be gone; it then reads nothing anyway.
            let _ = self.stream.shutdown_write();
        }
        if self.peer_shutdown == SHUTDOWN_BOTH {
            self.kill(KillReason::Finished);
        }
    }

    /// Writes the guest's payload to the host stream, buffering what does not fit.
    fn forward(&mut self, data: &[u8], now: Instant) {
        let in_flight = self.tx_buf.len().saturating_add(data.len());
        if in_flight > BUF_ALLOC as usize {
            METRICS.vsock.credit_violations.inc();
            self.kill(KillReason::CreditViolation);
            return;
        }
        self.recv_cnt += Wrapping(u32::try_from(data.len()).unwrap_or(u32::MAX));
        let mut sent = 0usize;
        if self.tx_buf.is_empty() {
            loop {
                match self.stream.send(data) {
                    Ok(n) => sent = n.min(data.len()),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        METRICS.vsock.tx_write_fails.inc();
                        self.kill(KillReason::HostIo);
                        return;
                    }
                }
                break;
            }
        }
        if let Some(rest) = data.get(sent..) {
            self.tx_buf.extend(rest);
        }
        self.forwarded(sent);
        if self.tx_buf.is_empty() {
            self.after_drain(now);
        }
    }

    /// A validated guest packet for this connection; `payload` is its `len` bytes.
    pub fn on_guest_packet(&mut self, pkt: &TxPacket, payload: &[u8], now: Instant) {
        if self.is_done() {
            return;
        }
        let hdr = &pkt.hdr;
        if pkt.op == Op::Rst {
            self.state = State::Closed;
            return;
        }
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
        match (self.state, pkt.op) {
            (State::LocalInit, Op::Response) if !self.pending.request => {
                let line = format!("OK {}\n", self.local_port);
                match self.stream.send(line.as_bytes()) {
                    Ok(n) if n == line.len() => {
                        self.state = State::Established;
                        self.deadline = None;
                    }
                    _ => {
                        METRICS.vsock.tx_write_fails.inc();
                        self.kill(KillReason::HostIo);
                    }
                }
            }
            (State::Established, Op::Rw) => {
                if self.peer_shutdown & SHUTDOWN_SEND != 0 {
                    METRICS.vsock.protocol_errors.inc();
                    self.kill(KillReason::Protocol);
                } else if !payload.is_empty() {
                    self.forward(payload, now);
                }
            }
            (State::Established, Op::Shutdown) => {
                self.peer_shutdown |= hdr.flags & SHUTDOWN_BOTH;
                if self.tx_buf.is_empty() {
                    self.after_drain(now);
                } else if self.peer_shutdown == SHUTDOWN_BOTH && self.deadline.is_none() {
                    self.deadline = Some(now + SHUTDOWN_TIMEOUT);
                }
            }
            (State::Established | State::PeerInit, Op::CreditUpdate) => {}
            (State::Established | State::PeerInit, Op::CreditRequest) => {
                self.pending.credit_update = true;
            }
            _ => {
                METRICS.vsock.protocol_errors.inc();
                self.kill(KillReason::Protocol);
            }
        }
    }

    /// The timer fired at `now`.
    pub fn on_tick(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| d <= now) {
            METRICS.vsock.conn_timeouts.inc();
            self.kill(KillReason::Timeout);
        }
    }

    fn header(&self, op: Op, flags: u32, len: usize) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: u32::try_from(len).unwrap_or(0),
            type_: TYPE_STREAM,
            op: op as u16,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    fn emit(&mut self, op: Op, flags: u32, len: usize) -> Header {
        // Every packet carries our credit: no separate update is needed after it.
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pending.credit_update = false;
        self.header(op, flags, len)
    }

    /// The next packet for the guest, its payload (if any) read into `buf` (the room the
    /// guest's receive buffer has), or `None` when there is nothing to say.
    pub fn next_packet(&mut self, buf: &mut [u8], now: Instant) -> Option<Header> {
        if self.is_done() {
            return None;
        }
        if self.pending.response {
            self.pending.response = false;
            self.state = State::Established;
            return Some(self.emit(Op::Response, 0, 0));
        }
        if self.pending.request {
            self.pending.request = false;
            self.deadline = Some(now + REQUEST_TIMEOUT);
            return Some(self.emit(Op::Request, 0, 0));
        }
        if self.pending.shutdown != 0 {
            let flags = std::mem::take(&mut self.pending.shutdown);
            return Some(self.emit(Op::Shutdown, flags, 0));
        }
        if self.readable && self.may_send_data() {
            let credit = self.peer_credit();
            if credit == 0 {
                if !self.credit_requested {
                    self.credit_requested = true;
                    return Some(self.emit(Op::CreditRequest, 0, 0));
                }
            } else {
                let room = buf.len().min(credit as usize);
                if let Some(dst) = buf.get_mut(..room).filter(|d| !d.is_empty()) {
                    match self.stream.recv(dst) {
                        Ok(0) => {
                            self.readable = false;
                            self.host_eof = true;
                            let flags = if self.host_hup {
                                self.deadline.get_or_insert(now + SHUTDOWN_TIMEOUT);
                                SHUTDOWN_BOTH
                            } else {
                                SHUTDOWN_SEND
                            };
                            return Some(self.emit(Op::Shutdown, flags, 0));
                        }
                        Ok(n) => {
                            let n = n.min(room);
                            self.rx_cnt += Wrapping(u32::try_from(n).unwrap_or(0));
                            METRICS.vsock.rx_bytes_count.add(n as u64);
                            return Some(self.emit(Op::Rw, 0, n));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => self.readable = false,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => {
                            METRICS.vsock.rx_read_fails.inc();
                            self.kill(KillReason::HostIo);
                            return None;
                        }
                    }
                }
            }
        }
        if self.pending.credit_update {
            return Some(self.emit(Op::CreditUpdate, 0, 0));
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests;
