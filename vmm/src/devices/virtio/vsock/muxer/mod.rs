//! The host side of virtio-vsock, as Firecracker defines it: Unix sockets.
//!
//! - **Host → guest**: the VMM listens on `uds_path`. A host process connects and writes
//!   `CONNECT <port>\n` (the word in any case, the port in decimal; at most
//!   [`MAX_CONNECT_LINE`] bytes with the newline, within [`CONNECT_TIMEOUT`]); the muxer gives
//!   the connection a host port (counting up from 2^30, as Firecracker does) and sends the
//!   guest a REQUEST from it. When the guest answers RESPONSE the host reads `OK <host
//!   port>\n` and the stream carries data; when the guest answers RST (nobody listens on that
//!   port), or does not answer within [`super::connection::REQUEST_TIMEOUT`], the host
//!   stream is closed. Anything else instead of the line (other words, a bad port, too long,
//!   end of file, the timeout) closes it too. Bytes the host sends after the line wait in the
//!   socket and go to the guest once connected.
//! - **Guest → host**: a REQUEST to port P connects (without blocking) to `<uds_path>_P`; if
//!   that succeeds the guest gets a RESPONSE, otherwise an RST.
//! - **Routing**: a connection is (host port, guest port). Packets for an unknown connection
//!   are answered with an RST (except an RST); a packet [`super::packet::check_tx`] refuses
//!   resets the connection it names.
//! - **Limits**: [`MAX_CONNECTIONS`] connections, [`MAX_PENDING_CONNECTS`] host connections
//!   that have not sent their line yet (more are accepted and closed at once),
//!   [`MAX_QUEUED_RSTS`] RSTs waiting for guest receive buffers (more are dropped and
//!   counted).
//!
//! Code: here the muxer itself (its sockets, the routing of guest packets, the receive work
//! queue, events and timeouts); `table`: the connection table (adding, updating and
//! removing connections, host ports); `host_connect`: host connections until their
//! `CONNECT` line.
//!
//! Everything is nonblocking and runs on the VMM thread. The muxer's sockets sit in its own
//! epoll set, which the device's event loop watches as one descriptor; each call of
//! [`Muxer::process_events`] handles at most [`EVENTS_PER_CALL`] readiness events, and a
//! connection whose data the guest cannot take yet (no receive buffer, no credit) is not
//! watched for readability until it can, so nothing spins. Timeouts run on a timerfd that
//! ticks every [`TICK`] while any deadline is pending.

mod host_connect;
mod table;

pub use host_connect::{
    parse_connect_line, ConnectLineError, ACCEPTS_PER_EVENT, CONNECT_TIMEOUT, MAX_CONNECT_LINE,
};
pub use table::ConnKey;

use super::connection::{Connection, KillReason};
use super::packet::{Header, Op, TxPacket, HOST_CID, TYPE_STREAM};
use super::unix::{Listener, Stream, UnixError};
use crate::devices::timer::{Timer, TimerError};
use crate::metrics::METRICS;
use host_connect::PendingConnect;
use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Connections at once (either direction).
pub const MAX_CONNECTIONS: usize = 1024;
/// Host connections still to send `CONNECT <port>\n`.
pub const MAX_PENDING_CONNECTS: usize = 64;
/// RSTs that may wait for guest receive buffers.
pub const MAX_QUEUED_RSTS: usize = 256;
/// Readiness events handled per call.
pub const EVENTS_PER_CALL: usize = 32;
/// Resolution of the timeouts.
pub const TICK: Duration = Duration::from_millis(250);
/// First host port given to host-initiated connections (Firecracker's range: [2^30, 2^31)).
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    #[error(
        "cannot listen on the vsock host socket {path:?}: a file already exists there; remove \
         it first (as Firecracker, the VMM never replaces an existing file)"
    )]
    SocketExists { path: String },
    #[error("cannot listen on the vsock host socket: {0}")]
    Listen(UnixError),
    #[error("cannot create the vsock timer: {0}")]
    Timer(TimerError),
    #[error("cannot create the vsock epoll set: {0}")]
    Epoll(std::io::Error),
    #[error("cannot create the vsock eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot watch descriptor {fd} in the vsock epoll set: {source}")]
    Watch { fd: RawFd, source: std::io::Error },
}

/// Work for the guest's receive queue, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RxItem {
    Conn(ConnKey),
    Rst(ConnKey),
}

pub struct Muxer {
    guest_cid: u64,
    uds_path: String,
    listener: Listener,
    listener_watched: bool,
    epoll: Epoll,
    /// Readable when the device wants another turn (see [`Muxer::request_turn`]).
    kick: EventFd,
    timer: Timer,
    timer_armed: bool,
    pending: HashMap<RawFd, PendingConnect>,
    conns: HashMap<ConnKey, Connection>,
    by_fd: HashMap<RawFd, ConnKey>,
    rxq: VecDeque<RxItem>,
    queued_rsts: usize,
    local_ports: HashSet<u32>,
    next_local_port: u32,
}

impl Muxer {
    /// Listens on `uds_path` (which must not exist) for a guest of CID `guest_cid`.
    pub fn new(guest_cid: u64, uds_path: &str) -> Result<Muxer, MuxerError> {
        let listener = Listener::bind(uds_path).map_err(|e| match e {
            UnixError::Bind { ref source, .. }
                if source.raw_os_error() == Some(libc::EADDRINUSE) =>
            {
                MuxerError::SocketExists {
                    path: uds_path.to_string(),
                }
            }
            e => MuxerError::Listen(e),
        })?;
        let epoll = Epoll::new().map_err(MuxerError::Epoll)?;
        let kick = EventFd::new(libc::EFD_NONBLOCK).map_err(MuxerError::EventFd)?;
        let timer = Timer::new().map_err(MuxerError::Timer)?;
        let mut m = Muxer {
            guest_cid,
            uds_path: uds_path.to_string(),
            listener,
            listener_watched: false,
            epoll,
            kick,
            timer,
            timer_armed: false,
            pending: HashMap::new(),
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            rxq: VecDeque::new(),
            queued_rsts: 0,
            local_ports: HashSet::new(),
            next_local_port: FIRST_LOCAL_PORT,
        };
        for fd in [m.kick.as_raw_fd(), m.timer.as_raw_fd()] {
            m.ctl(ControlOperation::Add, fd, EventSet::IN)
                .map_err(|source| MuxerError::Watch { fd, source })?;
        }
        let fd = m.listener.as_raw_fd();
        m.ctl(ControlOperation::Add, fd, EventSet::IN)
            .map_err(|source| MuxerError::Watch { fd, source })?;
        m.listener_watched = true;
        Ok(m)
    }

    /// The descriptor the device's event loop watches.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    pub fn uds_path(&self) -> &str {
        &self.uds_path
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn ctl(&self, op: ControlOperation, fd: RawFd, events: EventSet) -> std::io::Result<()> {
        let data = u64::try_from(fd).unwrap_or(u64::MAX);
        self.epoll.ctl(op, fd, EpollEvent::new(events, data))
    }

    /// Makes the muxer's epoll descriptor readable so that the device gets another turn after
    /// the other event sources had theirs. Safe from any thread (one eventfd write).
    pub fn request_turn(&self) {
        if self.kick.write(1).is_err() {
            METRICS.vsock.conn_event_fails.inc();
        }
    }

    /// Drops every connection and pending host connection (device reset). The listening
    /// socket stays.
    pub fn reset(&mut self) {
        for p in std::mem::take(&mut self.pending).into_values() {
            let _ = self.ctl(
                ControlOperation::Delete,
                p.stream.as_raw_fd(),
                EventSet::empty(),
            );
        }
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key, false);
        }
        self.rxq.clear();
        self.queued_rsts = 0;
        self.local_ports.clear();
        self.next_local_port = FIRST_LOCAL_PORT;
    }

    /// True when the guest's receive queue has something to get.
    pub fn has_rx_work(&self) -> bool {
        !self.rxq.is_empty()
    }

    fn ensure_timer(&mut self) {
        if !self.timer_armed {
            match self.timer.arm(TICK) {
                Ok(()) => self.timer_armed = true,
                Err(e) => {
                    METRICS.vsock.conn_event_fails.inc();
                    crate::log_warn!("vsock: {e}; timeouts are not enforced until the next try");
                }
            }
        }
    }

    fn enq_rst(&mut self, key: ConnKey) {
        if self.queued_rsts >= MAX_QUEUED_RSTS {
            METRICS.vsock.rst_dropped.inc();
            return;
        }
        self.queued_rsts += 1;
        self.rxq.push_back(RxItem::Rst(key));
    }

    /// A validated packet from the guest, with its payload.
    pub fn on_guest_packet(&mut self, pkt: &TxPacket, payload: &[u8], now: Instant) {
        let key = ConnKey {
            local_port: pkt.hdr.dst_port,
            peer_port: pkt.hdr.src_port,
        };
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.on_guest_packet(pkt, payload, now);
            self.update(key);
            return;
        }
        match pkt.op {
            // Nothing to reset; never answered.
            Op::Rst => {}
            Op::Request => self.connect_to_host(&pkt.hdr, key),
            _ => {
                METRICS.vsock.unknown_conn_packets.inc();
                self.enq_rst(key);
            }
        }
    }

    /// A packet [`super::packet::check_tx`] refused: resets the connection it names.
    pub fn reject(&mut self, hdr: &Header) {
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.kill(KillReason::Protocol);
            self.remove(key, true);
        } else {
            self.enq_rst(key);
        }
    }

    /// The guest's REQUEST to host port `hdr.dst_port`: connect to `<uds_path>_<port>`.
    fn connect_to_host(&mut self, hdr: &Header, key: ConnKey) {
        if self.conns.len() >= MAX_CONNECTIONS {
            METRICS.vsock.conns_refused.inc();
            return self.enq_rst(key);
        }
        let path = format!("{}_{}", self.uds_path, hdr.dst_port);
        match Stream::connect(&path) {
            Ok(stream) => self.add(Connection::guest_initiated(stream, self.guest_cid, hdr)),
            Err(e) => {
                METRICS.vsock.conns_refused.inc();
                crate::log_debug!("vsock: guest connection to port {}: {e}", hdr.dst_port);
                self.enq_rst(key);
            }
        }
    }

    /// The next packet for the guest, its payload (if any) in `buf` (sized to the room the
    /// guest's receive buffer has after the header).
    pub fn next_rx_packet(&mut self, buf: &mut [u8], now: Instant) -> Option<Header> {
        // Bounded: a connection that has nothing to say is not queued again, one that is
        // (data but no room in `buf`) comes round at most once more, and an RST queued on
        // the way (a connection that failed) is reached within the budget.
        for _ in 0..self.rxq.len().saturating_mul(2).saturating_add(1) {
            match self.rxq.pop_front()? {
                RxItem::Rst(key) => {
                    self.queued_rsts = self.queued_rsts.saturating_sub(1);
                    METRICS.vsock.rst_sent.inc();
                    return Some(Header {
                        src_cid: HOST_CID,
                        dst_cid: self.guest_cid,
                        src_port: key.local_port,
                        dst_port: key.peer_port,
                        len: 0,
                        type_: TYPE_STREAM,
                        op: Op::Rst as u16,
                        flags: 0,
                        buf_alloc: 0,
                        fwd_cnt: 0,
                    });
                }
                RxItem::Conn(key) => {
                    let Some(conn) = self.conns.get_mut(&key) else {
                        continue;
                    };
                    conn.queued = false;
                    let pkt = conn.next_packet(buf, now);
                    self.update(key);
                    if pkt.is_some() {
                        return pkt;
                    }
                }
            }
        }
        None
    }

    /// Handles what the muxer's epoll set reports (at most [`EVENTS_PER_CALL`] events).
    pub fn process_events(&mut self, now: Instant) {
        let mut events = [EpollEvent::default(); EVENTS_PER_CALL];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    METRICS.vsock.conn_event_fails.inc();
                }
                return;
            }
        };
        for ev in events.iter().take(n) {
            let Ok(fd) = RawFd::try_from(ev.data()) else {
                continue;
            };
            let set = ev.event_set();
            if fd == self.kick.as_raw_fd() {
                let _ = self.kick.read();
            } else if fd == self.timer.as_raw_fd() {
                // One-shot: whatever the read says, the timer is no longer armed.
                let _ = self.timer.consume();
                self.timer_armed = false;
                self.on_tick(now);
            } else if fd == self.listener.as_raw_fd() {
                self.accept(now);
            } else if self.pending.contains_key(&fd) {
                self.read_connect_line(fd);
            } else if let Some(&key) = self.by_fd.get(&fd) {
                if let Some(conn) = self.conns.get_mut(&key) {
                    if set.contains(EventSet::OUT) {
                        conn.on_writable(now);
                    }
                    if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
                        conn.on_readable(set.contains(EventSet::HANG_UP));
                    }
                }
                self.update(key);
            } else {
                // A descriptor that is no longer ours: stop hearing about it.
                METRICS.vsock.conn_event_fails.inc();
                let _ = self.ctl(ControlOperation::Delete, fd, EventSet::empty());
            }
        }
    }

    fn on_tick(&mut self, now: Instant) {
        let expired: Vec<RawFd> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in expired {
            self.drop_pending(fd, &ConnectLineError::Timeout);
        }
        let timed: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline().is_some())
            .map(|(k, _)| *k)
            .collect();
        let mut more = !self.pending.is_empty();
        for key in timed {
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.on_tick(now);
                more |= conn.deadline().is_some() && !conn.is_done();
            }
            self.update(key);
        }
        if !self.listener_watched {
            let fd = self.listener.as_raw_fd();
            if self.ctl(ControlOperation::Add, fd, EventSet::IN).is_ok() {
                self.listener_watched = true;
            } else {
                more = true;
            }
        }
        if more {
            self.ensure_timer();
        }
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests;
