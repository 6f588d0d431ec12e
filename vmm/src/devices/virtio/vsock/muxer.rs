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
//! Everything is nonblocking and runs on the VMM thread. The muxer's sockets sit in its own
//! epoll set, which the device's event loop watches as one descriptor; each call of
//! [`Muxer::process_events`] handles at most [`EVENTS_PER_CALL`] readiness events, and a
//! connection whose data the guest cannot take yet (no receive buffer, no credit) is not
//! watched for readability until it can, so nothing spins. Timeouts run on a timerfd that
//! ticks every [`TICK`] while any deadline is pending.

use super::connection::{Connection, KillReason, State};
use super::packet::{Header, Op, TxPacket, HOST_CID, TYPE_STREAM};
use super::unix::{Listener, Stream, Timer, UnixError};
use crate::metrics::METRICS;
use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Connections at once (either direction).
pub const MAX_CONNECTIONS: usize = 1024;
/// Host connections still to send `CONNECT <port>\n`.
pub const MAX_PENDING_CONNECTS: usize = 64;
/// Longest `CONNECT <port>\n` line, newline included (Firecracker reads at most 32 bytes).
pub const MAX_CONNECT_LINE: usize = 32;
/// How long a host connection has to send its line.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// RSTs that may wait for guest receive buffers.
pub const MAX_QUEUED_RSTS: usize = 256;
/// Readiness events handled per call.
pub const EVENTS_PER_CALL: usize = 32;
/// New host connections accepted per readiness of the listening socket.
pub const ACCEPTS_PER_EVENT: usize = 16;
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
    Timer(UnixError),
    #[error("cannot create the vsock epoll set: {0}")]
    Epoll(std::io::Error),
    #[error("cannot create the vsock eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot watch descriptor {fd} in the vsock epoll set: {source}")]
    Watch { fd: RawFd, source: std::io::Error },
}

/// Why a host connection's first line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectLineError {
    #[error("the line is not ASCII")]
    NotAscii,
    #[error("the line does not start with CONNECT")]
    NotConnect,
    #[error("the line has no port")]
    NoPort,
    #[error("{0:?} is not a port number (decimal, 0 to 4294967295)")]
    BadPort(String),
    #[error("the line has more than CONNECT and a port")]
    TrailingWords,
    #[error("no newline within {MAX_CONNECT_LINE} bytes")]
    TooLong,
    #[error("the host closed the connection before a whole line")]
    Eof,
    #[error("no line within {CONNECT_TIMEOUT:?}")]
    Timeout,
    #[error("reading the line failed: {0}")]
    Read(String),
}

/// Parses a host connection's first line (without its `\n`): `CONNECT <port>`, the word in any
/// case, the port in decimal, words separated by ASCII white space (a `\r` before the newline
/// is white space too).
pub fn parse_connect_line(line: &[u8]) -> Result<u32, ConnectLineError> {
    if !line.is_ascii() {
        return Err(ConnectLineError::NotAscii);
    }
    let text = std::str::from_utf8(line).map_err(|_| ConnectLineError::NotAscii)?;
    let mut words = text.split_ascii_whitespace();
    match words.next() {
        Some(w) if w.eq_ignore_ascii_case("connect") => {}
        _ => return Err(ConnectLineError::NotConnect),
    }
    let port = words.next().ok_or(ConnectLineError::NoPort)?;
    if port.is_empty() || port.len() > 10 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ConnectLineError::BadPort(port.to_string()));
    }
    let port = port
        .parse::<u32>()
        .map_err(|_| ConnectLineError::BadPort(port.to_string()))?;
    if words.next().is_some() {
        return Err(ConnectLineError::TrailingWords);
    }
    Ok(port)
}

/// A connection: (host port, guest port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

/// Work for the guest's receive queue, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RxItem {
    Conn(ConnKey),
    Rst(ConnKey),
}

/// A host connection that has not sent its `CONNECT` line yet.
#[derive(Debug)]
struct PendingConnect {
    stream: Stream,
    line: Vec<u8>,
    deadline: Instant,
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

    /// Removes a connection (closing its host stream), with an RST to the guest if asked.
    fn remove(&mut self, key: ConnKey, rst: bool) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        let fd = conn.stream().as_raw_fd();
        self.by_fd.remove(&fd);
        if conn.registered != (false, false) {
            let _ = self.ctl(ControlOperation::Delete, fd, EventSet::empty());
        }
        if conn.host_initiated {
            self.local_ports.remove(&conn.local_port);
        }
        if conn.queued {
            self.rxq.retain(|i| *i != RxItem::Conn(key));
        }
        if rst {
            self.enq_rst(key);
        }
        if let Some(reason) = conn.kill_reason() {
            crate::log_debug!(
                "vsock: connection host port {} guest port {} reset: {reason:?}",
                key.local_port,
                key.peer_port
            );
        }
        METRICS.vsock.conns_removed.inc();
    }

    /// After anything happened to a connection: removes it when it ended, otherwise brings its
    /// epoll interest, its place in the receive work queue and the timer up to date.
    fn update(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        match conn.state() {
            State::Killed => return self.remove(key, true),
            State::Closed => return self.remove(key, false),
            _ => {}
        }
        let want = conn.interest();
        let fd = conn.stream().as_raw_fd();
        if want != conn.registered {
            let mut events = EventSet::empty();
            if want.0 {
                events |= EventSet::IN;
            }
            if want.1 {
                events |= EventSet::OUT;
            }
            let op = if want == (false, false) {
                ControlOperation::Delete
            } else if conn.registered == (false, false) {
                ControlOperation::Add
            } else {
                ControlOperation::Modify
            };
            let data = u64::try_from(fd).unwrap_or(u64::MAX);
            match self.epoll.ctl(op, fd, EpollEvent::new(events, data)) {
                Ok(()) => conn.registered = want,
                Err(e) => {
                    METRICS.vsock.conn_event_fails.inc();
                    crate::log_warn!("vsock: cannot watch a host connection: {e}");
                    conn.kill(KillReason::HostIo);
                    return self.remove(key, true);
                }
            }
        }
        if conn.has_rx_work() && !conn.queued {
            conn.queued = true;
            self.rxq.push_back(RxItem::Conn(key));
        }
        if conn.deadline().is_some() {
            self.ensure_timer();
        }
    }

    fn add(&mut self, conn: Connection) {
        let key = ConnKey {
            local_port: conn.local_port,
            peer_port: conn.peer_port,
        };
        if conn.host_initiated {
            self.local_ports.insert(conn.local_port);
        }
        self.by_fd.insert(conn.stream().as_raw_fd(), key);
        self.conns.insert(key, conn);
        METRICS.vsock.conns_added.inc();
        self.update(key);
    }

    /// The next free host port for a host-initiated connection.
    fn allocate_local_port(&mut self) -> u32 {
        // At most MAX_CONNECTIONS ports are taken, so this ends within that many steps.
        loop {
            let port = self.next_local_port;
            self.next_local_port = if port >= u32::MAX >> 1 {
                FIRST_LOCAL_PORT
            } else {
                port + 1
            };
            if !self.local_ports.contains(&port) {
                return port;
            }
        }
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

    /// New host connections: each must send its `CONNECT` line next.
    fn accept(&mut self, now: Instant) {
        for _ in 0..ACCEPTS_PER_EVENT {
            let stream = match self.listener.accept() {
                Ok(Some(s)) => s,
                Ok(None) => return,
                Err(e) => {
                    // Out of descriptors, say: stop listening for a tick instead of spinning
                    // on a listener that stays readable.
                    METRICS.vsock.conn_event_fails.inc();
                    crate::log_warn!("vsock: accepting a host connection failed: {e}");
                    let fd = self.listener.as_raw_fd();
                    if self
                        .ctl(ControlOperation::Delete, fd, EventSet::empty())
                        .is_ok()
                    {
                        self.listener_watched = false;
                    }
                    self.ensure_timer();
                    return;
                }
            };
            if self.pending.len() >= MAX_PENDING_CONNECTS || self.conns.len() >= MAX_CONNECTIONS {
                // Closed at once: the host sees end of file.
                METRICS.vsock.host_connects_rejected.inc();
                continue;
            }
            let fd = stream.as_raw_fd();
            if let Err(e) = self.ctl(ControlOperation::Add, fd, EventSet::IN) {
                METRICS.vsock.conn_event_fails.inc();
                crate::log_warn!("vsock: cannot watch a new host connection: {e}");
                continue;
            }
            self.pending.insert(
                fd,
                PendingConnect {
                    stream,
                    line: Vec::new(),
                    deadline: now + CONNECT_TIMEOUT,
                },
            );
            self.ensure_timer();
        }
    }

    fn drop_pending(&mut self, fd: RawFd, why: &ConnectLineError) {
        if self.pending.remove(&fd).is_some() {
            let _ = self.ctl(ControlOperation::Delete, fd, EventSet::empty());
            METRICS.vsock.host_connects_rejected.inc();
            crate::log_debug!("vsock: host connection closed: {why}");
        }
    }

    /// Reads what there is of a host connection's first line, without taking any byte after
    /// its newline.
    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        let mut buf = [0u8; MAX_CONNECT_LINE];
        let room = MAX_CONNECT_LINE.saturating_sub(p.line.len());
        let Some(window) = buf.get_mut(..room) else {
            return;
        };
        let seen = match p.stream.peek(window) {
            Ok(0) => return self.drop_pending(fd, &ConnectLineError::Eof),
            Ok(n) => n.min(room),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return,
            Err(e) => return self.drop_pending(fd, &ConnectLineError::Read(e.to_string())),
        };
        let newline = window
            .get(..seen)
            .and_then(|w| w.iter().position(|&b| b == b'\n'));
        // Take the line and its newline, or everything seen (no newline in it).
        let take = newline.map_or(seen, |i| i + 1);
        let got = match window.get_mut(..take).map(|w| p.stream.recv(w)) {
            Some(Ok(n)) if n == take => n,
            Some(Err(e)) => return self.drop_pending(fd, &ConnectLineError::Read(e.to_string())),
            _ => return self.drop_pending(fd, &ConnectLineError::Read("short read".into())),
        };
        p.line.extend_from_slice(window.get(..got).unwrap_or(&[]));
        if newline.is_none() {
            if p.line.len() >= MAX_CONNECT_LINE {
                self.drop_pending(fd, &ConnectLineError::TooLong);
            }
            return;
        }
        let Some(p) = self.pending.remove(&fd) else {
            return;
        };
        let _ = self.ctl(ControlOperation::Delete, fd, EventSet::empty());
        let text = p.line.strip_suffix(b"\n").unwrap_or(&p.line);
        let port = match parse_connect_line(text) {
            Ok(port) => port,
            Err(e) => {
                METRICS.vsock.host_connects_rejected.inc();
                crate::log_debug!("vsock: host connection closed: {e}");
                return;
            }
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            METRICS.vsock.host_connects_rejected.inc();
            return;
        }
        let local_port = self.allocate_local_port();
        self.add(Connection::host_initiated(
            p.stream,
            self.guest_cid,
            local_port,
            port,
        ));
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::devices::virtio::vsock::packet::{SHUTDOWN_BOTH, SHUTDOWN_SEND};
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::PathBuf;

    const CID: u64 = 3;

    #[test]
    fn connect_lines() {
        let ok: &[(&[u8], u32)] = &[
            (b"CONNECT 52", 52),
            (b"connect 0", 0),
            (b"Connect 4294967295", u32::MAX),
            (b"CONNECT 52\r", 52),
            (b"  CONNECT\t1234  ", 1234),
            (b"CONNECT 007", 7),
        ];
        for (line, port) in ok {
            assert_eq!(parse_connect_line(line), Ok(*port), "{line:?}");
        }
        let bad: &[(&[u8], ConnectLineError)] = &[
            (b"", ConnectLineError::NotConnect),
            (b"CONNECT", ConnectLineError::NoPort),
            (b"CONNECTX 5", ConnectLineError::NotConnect),
            (b"GET / HTTP/1.1", ConnectLineError::NotConnect),
            (b"CONNECT -1", ConnectLineError::BadPort("-1".into())),
            (b"CONNECT +5", ConnectLineError::BadPort("+5".into())),
            (b"CONNECT 0x10", ConnectLineError::BadPort("0x10".into())),
            (
                b"CONNECT 4294967296",
                ConnectLineError::BadPort("4294967296".into()),
            ),
            (
                b"CONNECT 99999999999",
                ConnectLineError::BadPort("99999999999".into()),
            ),
            (b"CONNECT 5 6", ConnectLineError::TrailingWords),
            (b"CONNECT \xff5", ConnectLineError::NotAscii),
            (b"\0\0\0", ConnectLineError::NotConnect),
        ];
        for (line, err) in bad {
            assert_eq!(parse_connect_line(line).as_ref(), Err(err), "{line:?}");
        }
    }

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let d = std::env::temp_dir().join(format!("kiln-vsock-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }

        fn path(&self, name: &str) -> String {
            self.0.join(name).to_str().unwrap().to_string()
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn guest_pkt(op: Op, src_port: u32, dst_port: u32, len: u32) -> TxPacket {
        TxPacket {
            hdr: Header {
                src_cid: CID,
                dst_cid: HOST_CID,
                src_port,
                dst_port,
                len,
                type_: TYPE_STREAM,
                op: op as u16,
                flags: 0,
                buf_alloc: 65536,
                fwd_cnt: 0,
            },
            op,
        }
    }

    fn drain(m: &mut Muxer) -> Vec<(Op, Header, Vec<u8>)> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 4096];
        let now = Instant::now();
        while let Some(h) = m.next_rx_packet(&mut buf, now) {
            let data = buf[..h.len as usize].to_vec();
            out.push((Op::from_raw(h.op).unwrap(), h, data));
        }
        out
    }

    /// Processes events until `cond` holds (at most ~2 s).
    fn pump(m: &mut Muxer, mut cond: impl FnMut(&mut Muxer) -> bool) {
        for _ in 0..400 {
            m.process_events(Instant::now());
            if cond(m) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("condition not reached");
    }

    #[test]
    fn an_existing_file_is_a_clear_error() {
        let d = Dir::new("exists");
        let p = d.path("v.sock");
        std::fs::write(&p, b"").unwrap();
        let err = Muxer::new(CID, &p).err().unwrap();
        assert!(matches!(err, MuxerError::SocketExists { .. }));
        assert!(err.to_string().contains("already exists"), "{err}");
    }

    #[test]
    fn guest_initiated_round_trip() {
        let d = Dir::new("g2h");
        let uds = d.path("v.sock");
        let mut m = Muxer::new(CID, &uds).unwrap();
        let host = UnixListener::bind(format!("{uds}_1234")).unwrap();
        let now = Instant::now();
        m.on_guest_packet(&guest_pkt(Op::Request, 5000, 1234, 0), &[], now);
        let got = drain(&mut m);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, Op::Response);
        assert_eq!((got[0].1.src_port, got[0].1.dst_port), (1234, 5000));
        let (mut s, _) = host.accept().unwrap();
        m.on_guest_packet(&guest_pkt(Op::Rw, 5000, 1234, 5), b"hello", now);
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        s.write_all(b"HELLO").unwrap();
        let mut data = Vec::new();
        pump(&mut m, |m| {
            data.extend(drain(m).into_iter().flat_map(|p| p.2));
            data.len() >= 5
        });
        assert_eq!(data, b"HELLO");
        // The guest closes: both directions, then an RST and the host stream is closed.
        let mut sd = guest_pkt(Op::Shutdown, 5000, 1234, 0);
        sd.hdr.flags = SHUTDOWN_BOTH;
        m.on_guest_packet(&sd, &[], now);
        let got = drain(&mut m);
        assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), [Op::Rst]);
        assert_eq!(m.connection_count(), 0);
        assert_eq!(s.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn nobody_listening_is_an_rst_and_unknown_packets_too() {
        let d = Dir::new("refused");
        let mut m = Muxer::new(CID, &d.path("v.sock")).unwrap();
        let now = Instant::now();
        m.on_guest_packet(&guest_pkt(Op::Request, 1, 9999, 0), &[], now);
        m.on_guest_packet(&guest_pkt(Op::Rw, 2, 9999, 1), b"x", now);
        m.on_guest_packet(&guest_pkt(Op::Rst, 3, 9999, 0), &[], now);
        let got = drain(&mut m);
        let ports: Vec<_> = got.iter().map(|p| (p.0, p.1.dst_port)).collect();
        assert_eq!(ports, [(Op::Rst, 1), (Op::Rst, 2)]);
        assert_eq!(m.connection_count(), 0);
    }

    #[test]
    fn queued_rsts_are_bounded() {
        let d = Dir::new("rstq");
        let mut m = Muxer::new(CID, &d.path("v.sock")).unwrap();
        let now = Instant::now();
        for port in 0..(MAX_QUEUED_RSTS as u32 + 50) {
            m.on_guest_packet(&guest_pkt(Op::Rw, port, 7, 0), &[], now);
        }
        assert_eq!(drain(&mut m).len(), MAX_QUEUED_RSTS);
    }

    fn host_connect(uds: &str, line: &[u8]) -> UnixStream {
        let mut s = UnixStream::connect(uds).unwrap();
        s.write_all(line).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    #[test]
    fn host_initiated_round_trip() {
        let d = Dir::new("h2g");
        let uds = d.path("v.sock");
        let mut m = Muxer::new(CID, &uds).unwrap();
        // The line and the first data in one write: the data must wait for the guest.
        let mut s = host_connect(&uds, b"CONNECT 52\nearly");
        let mut req = None;
        pump(&mut m, |m| {
            req = drain(m).into_iter().find(|p| p.0 == Op::Request);
            req.is_some()
        });
        let req = req.unwrap().1;
        assert_eq!(req.dst_port, 52);
        assert_eq!(req.src_port, FIRST_LOCAL_PORT);
        let mut resp = guest_pkt(Op::Response, 52, req.src_port, 0);
        resp.hdr.buf_alloc = 4096;
        m.on_guest_packet(&resp, &[], Instant::now());
        let mut line = [0u8; 14];
        s.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"OK 1073741824\n");
        let mut data = Vec::new();
        pump(&mut m, |m| {
            data.extend(drain(m).into_iter().flat_map(|p| p.2));
            data.len() >= 5
        });
        assert_eq!(data, b"early");
        // The host hangs up: SHUTDOWN both; the guest's RST removes it.
        drop(s);
        let mut sd = None;
        pump(&mut m, |m| {
            sd = drain(m).into_iter().find(|p| p.0 == Op::Shutdown);
            sd.is_some()
        });
        assert_eq!(sd.unwrap().1.flags, SHUTDOWN_BOTH);
        m.on_guest_packet(
            &guest_pkt(Op::Rst, 52, req.src_port, 0),
            &[],
            Instant::now(),
        );
        assert_eq!(m.connection_count(), 0);
        // A second connection gets the next port.
        let _s2 = host_connect(&uds, b"connect 53\n");
        let mut req2 = None;
        pump(&mut m, |m| {
            req2 = drain(m).into_iter().find(|p| p.0 == Op::Request);
            req2.is_some()
        });
        assert_eq!(req2.unwrap().1.src_port, FIRST_LOCAL_PORT + 1);
    }

    #[test]
    fn host_half_close_keeps_the_guest_direction() {
        let d = Dir::new("half");
        let uds = d.path("v.sock");
        let mut m = Muxer::new(CID, &uds).unwrap();
        let mut s = host_connect(&uds, b"CONNECT 52\n");
        let mut req = None;
        pump(&mut m, |m| {
            req = drain(m).into_iter().find(|p| p.0 == Op::Request);
            req.is_some()
        });
        let port = req.unwrap().1.src_port;
        m.on_guest_packet(&guest_pkt(Op::Response, 52, port, 0), &[], Instant::now());
        s.write_all(b"request").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        pump(&mut m, |m| {
            got.extend(drain(m));
            got.iter().any(|p| p.0 == Op::Shutdown)
        });
        let sd = got.iter().find(|p| p.0 == Op::Shutdown).unwrap();
        assert_eq!(sd.1.flags, SHUTDOWN_SEND);
        m.on_guest_packet(&guest_pkt(Op::Rw, 52, port, 5), b"reply", Instant::now());
        let mut buf = vec![0u8; 14 + 5];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf[14..], b"reply");
    }

    #[test]
    fn bad_connect_lines_close_the_host_connection() {
        let d = Dir::new("garbage");
        let uds = d.path("v.sock");
        let mut m = Muxer::new(CID, &uds).unwrap();
        let long = [b'7'; 100];
        let lines: Vec<&[u8]> = vec![
            b"GARBAGE\n",
            b"CONNECT x\n",
            b"CONNECT 1 2\n",
            &long,
            b"CONNECT 5", // then end of file
        ];
        let mut streams = Vec::new();
        for l in &lines {
            let s = host_connect(&uds, l);
            if l == b"CONNECT 5" {
                s.shutdown(std::net::Shutdown::Write).unwrap();
            }
            streams.push(s);
        }
        let before = METRICS.vsock.host_connects_rejected.total();
        pump(&mut m, |m| {
            m.pending.is_empty() && METRICS.vsock.host_connects_rejected.total() >= before + 5
        });
        for mut s in streams {
            // End of file, or a reset when the muxer left bytes unread.
            let mut buf = [0u8; 8];
            match s.read(&mut buf) {
                Ok(n) => assert_eq!(n, 0, "closed without an answer"),
                Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
            }
        }
        assert_eq!(m.connection_count(), 0);
        assert!(drain(&mut m).is_empty(), "the guest heard nothing");
    }

    #[test]
    fn a_split_connect_line_is_assembled() {
        let d = Dir::new("split");
        let uds = d.path("v.sock");
        let mut m = Muxer::new(CID, &uds).unwrap();
        let mut s = host_connect(&uds, b"CONN");
        pump(&mut m, |m| {
            !m.pending.is_empty() && m.pending.values().all(|p| p.line.len() == 4)
        });
        s.write_all(b"ECT 77\n").unwrap();
        let mut req = None;
        pump(&mut m, |m| {
            req = drain(m).into_iter().find(|p| p.0 == Op::Request);
            req.is_some()
        });
        assert_eq!(req.unwrap().1.dst_port, 77);
    }

    #[test]
    fn reset_drops_everything_but_keeps_listening() {
        let d = Dir::new("reset");
        let uds = d.path("v.sock");
        let mut m = Muxer::new(CID, &uds).unwrap();
        let mut s = host_connect(&uds, b"CONNECT 52\n");
        pump(&mut m, |m| m.connection_count() == 1);
        m.reset();
        assert_eq!(m.connection_count(), 0);
        assert!(!m.has_rx_work());
        let mut buf = [0u8; 4];
        assert_eq!(s.read(&mut buf).unwrap(), 0);
        let _s2 = host_connect(&uds, b"CONNECT 52\n");
        pump(&mut m, |m| m.connection_count() == 1);
    }

    #[test]
    fn a_refused_packet_resets_its_connection() {
        let d = Dir::new("reject");
        let uds = d.path("v.sock");
        let mut m = Muxer::new(CID, &uds).unwrap();
        let _host = UnixListener::bind(format!("{uds}_80")).unwrap();
        m.on_guest_packet(&guest_pkt(Op::Request, 9, 80, 0), &[], Instant::now());
        let _ = drain(&mut m);
        assert_eq!(m.connection_count(), 1);
        m.reject(&guest_pkt(Op::Rw, 9, 80, 99).hdr);
        assert_eq!(m.connection_count(), 0);
        let got = drain(&mut m);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, Op::Rst);
    }
}
