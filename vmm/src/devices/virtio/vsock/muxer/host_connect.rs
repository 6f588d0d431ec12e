//! Host connections until their first line: a host process connects to `uds_path` and must
//! write `CONNECT <port>\n` (the word in any case, the port in decimal; at most
//! [`MAX_CONNECT_LINE`] bytes with the newline, within [`CONNECT_TIMEOUT`]). Until then the
//! connection is pending; with the line it becomes a host-initiated vsock connection, and
//! anything else (other words, a bad port, too long, end of file, the timeout) closes it.

use super::{Muxer, MAX_CONNECTIONS, MAX_PENDING_CONNECTS};
use crate::devices::virtio::vsock::connection::Connection;
use crate::devices::virtio::vsock::unix::Stream;
use crate::metrics::METRICS;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::{ControlOperation, EventSet};

/// Longest `CONNECT <port>\n` line, newline included (Firecracker reads at most 32 bytes).
pub const MAX_CONNECT_LINE: usize = 32;
/// How long a host connection has to send its line.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// New host connections accepted per readiness of the listening socket.
pub const ACCEPTS_PER_EVENT: usize = 16;

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

/// A host connection that has not sent its `CONNECT` line yet.
#[derive(Debug)]
pub(super) struct PendingConnect {
    pub(super) stream: Stream,
    pub(super) line: Vec<u8>,
    pub(super) deadline: Instant,
}

impl Muxer {
    /// New host connections: each must send its `CONNECT` line next.
    pub(super) fn accept(&mut self, now: Instant) {
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

    pub(super) fn drop_pending(&mut self, fd: RawFd, why: &ConnectLineError) {
        if self.pending.remove(&fd).is_some() {
            let _ = self.ctl(ControlOperation::Delete, fd, EventSet::empty());
            METRICS.vsock.host_connects_rejected.inc();
            crate::log_debug!("vsock: host connection closed: {why}");
        }
    }

    /// Reads what there is of a host connection's first line, without taking any byte after
    /// its newline.
    pub(super) fn read_connect_line(&mut self, fd: RawFd) {
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
