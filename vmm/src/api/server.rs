//! The API thread's connection loop: one `poll(2)` over the listening socket and every
//! client, all non-blocking.
//!
//! - Each connection has a bounded input buffer (headers + payload limit) and at most one
//!   response waiting to be written; nothing more is read from it until that is written, so
//!   a client that does not read cannot make the server buffer without bound.
//! - One request at a time per connection: pipelined requests are answered in order.
//! - A request that has begun must be complete (and its answer written) within
//!   [`Limits::request_timeout`], else the client gets 408 and is closed: a trickling or
//!   stalled client costs a slot, never the loop.
//! - Idle keep-alive connections are kept; at [`Limits::max_connections`], the oldest idle
//!   one is closed to admit a new client.
//! - Malformed HTTP is answered with its status and the connection closed.
//!
//! Requests that parse are handed to the `dispatch` function (which forwards them to the
//! VMM thread and waits for the answer); the VMM thread never waits for this thread.

use crate::metrics::METRICS;
use kiln_http::{self as http, HttpError, Parsed, Response};
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body (`--http-api-max-payload-size`).
    pub max_payload_size: usize,
    /// Most clients connected at once.
    pub max_connections: usize,
    /// Time allowed from a request's first byte to its answer being written.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_size: http::DEFAULT_MAX_PAYLOAD_SIZE,
            max_connections: 64,
            request_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("api: poll on the API socket failed: {0}")]
    Poll(io::Error),
    #[error("api: accept on the API socket failed: {0}")]
    Accept(io::Error),
}

/// One client.
struct Conn {
    stream: UnixStream,
    /// Received, not yet consumed.
    input: Vec<u8>,
    /// To write; `written` bytes of it are already sent.
    output: Vec<u8>,
    written: usize,
    /// Deadline of the request in progress (set on its first byte, or while an answer
    /// waits to be written); `None` while idle.
    deadline: Option<Instant>,
    /// When it was accepted or last became idle: eviction picks the longest idle.
    since: Instant,
    sent_continue: bool,
    /// Close once `output` is written.
    closing: bool,
    /// The client closed its side: answer what is complete, then close.
    eof: bool,
    dead: bool,
}

impl Conn {
    fn new(stream: UnixStream, now: Instant) -> Self {
        Conn {
            stream,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            deadline: None,
            since: now,
            sent_continue: false,
            closing: false,
            eof: false,
            dead: false,
        }
    }

    fn pending_output(&self) -> bool {
        self.written < self.output.len()
    }

    fn idle(&self) -> bool {
        self.input.is_empty() && !self.pending_output()
    }

    fn wants_read(&self, cap: usize) -> bool {
        !self.closing && !self.eof && !self.pending_output() && self.input.len() < cap
    }

    /// Reads what is available, up to the buffer's cap.
    /// Starts the deadline when the connection becomes busy (a request's first byte, or an
    /// answer waiting to be written) and clears it when it is idle again.
    fn track_deadline(&mut self, limits: &Limits, now: Instant) {
        let busy = !self.input.is_empty() || self.pending_output();
        match (busy, self.deadline) {
            (true, None) => self.deadline = Some(now + limits.request_timeout),
            (false, Some(_)) => {
                self.deadline = None;
                self.since = now;
            }
            _ => {}
        }
    }

    fn read_some(&mut self, cap: usize, limits: &Limits, now: Instant) {
        let mut chunk = [0u8; 16 * 1024];
        while self.input.len() < cap {
            let room = (cap - self.input.len()).min(chunk.len());
            let Some(buf) = chunk.get_mut(..room) else {
                break;
            };
            match self.stream.read(buf) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => {
                    self.input
                        .extend_from_slice(buf.get(..n).unwrap_or_default());
                    self.track_deadline(limits, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.dead = true;
                    break;
                }
            }
        }
    }

    /// Writes as much of the pending output as the socket takes.
    fn flush(&mut self) {
        while self.pending_output() {
            let Some(rest) = self.output.get(self.written..) else {
                break;
            };
            match self.stream.write(rest) {
                Ok(0) => {
                    self.dead = true;
                    return;
                }
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.dead = true;
                    return;
                }
            }
        }
        self.output.clear();
        self.written = 0;
        if self.closing {
            self.dead = true;
        }
    }

    fn queue(&mut self, bytes: &[u8]) {
        self.output.extend_from_slice(bytes);
    }

    /// Answers every complete request in the input, one at a time, stopping while an answer
    /// is still being written.
    fn process(
        &mut self,
        limits: &Limits,
        now: Instant,
        dispatch: &mut dyn FnMut(http::Request) -> Response,
    ) {
        while !self.dead && !self.closing && !self.pending_output() {
            if self.input.is_empty() {
                break;
            }
            match http::parse_request(&self.input, limits.max_payload_size) {
                Ok(Parsed::Complete { request, consumed }) => {
                    self.input.drain(..consumed.min(self.input.len()));
                    self.sent_continue = false;
                    let keep_alive = request.keep_alive;
                    let response = dispatch(request);
                    self.queue(&response.encode(!keep_alive));
                    self.closing = !keep_alive;
                    self.flush();
                    // The next pipelined request, or the unwritten answer, gets its own deadline.
                    self.deadline = None;
                    self.track_deadline(limits, now);
                }
                Ok(Parsed::Incomplete { send_continue }) => {
                    if send_continue && !self.sent_continue {
                        self.sent_continue = true;
                        self.queue(http::CONTINUE);
                        self.flush();
                    }
                    break;
                }
                Err(e) => {
                    self.refuse(&e);
                    break;
                }
            }
        }
        if self.eof && !self.pending_output() {
            // The client will send nothing more: an incomplete request never completes.
            self.dead = true;
        }
    }

    /// Answers a protocol error and closes.
    fn refuse(&mut self, e: &HttpError) {
        METRICS.api_server.requests.inc();
        match e {
            HttpError::PayloadTooLarge { .. } => METRICS.api_server.oversized_requests.inc(),
            HttpError::Timeout(_) => METRICS.api_server.request_timeouts.inc(),
            _ => METRICS.api_server.bad_requests.inc(),
        }
        let status = http_error_status(e);
        crate::log_warn!("API: refused a request ({status}): {e}");
        self.input.clear();
        self.closing = true;
        self.queue(&Response::fault(status, &e.to_string()).encode(true));
        self.flush();
    }
}

/// The status of a request the HTTP layer refused: 400 for every malformed or oversized
/// request, as Firecracker answers them (its clients see no 413, 431, 501 or 505); 408 for
/// a request not completed in time, which Firecracker has no limit for (a slow client
/// must not hold a connection slot forever).
pub fn http_error_status(e: &HttpError) -> u16 {
    match e {
        HttpError::Timeout(_) => e.status(),
        HttpError::Malformed(_)
        | HttpError::TooManyHeaders
        | HttpError::HeadersTooLarge
        | HttpError::BadContentLength(_)
        | HttpError::PayloadTooLarge { .. }
        | HttpError::TransferEncoding
        | HttpError::Version => 400,
    }
}

fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    let n = libc::nfds_t::try_from(fds.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `fds` is a valid, writable array of `n` pollfd structures for the whole call;
    // poll only writes their `revents` fields.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), n, timeout_ms) };
    usize::try_from(rc).map_err(|_| io::Error::last_os_error())
}

/// Serves the API on `listener` forever (until the process exits). `dispatch` answers one
/// parsed request.
pub fn serve(
    listener: UnixListener,
    limits: Limits,
    mut dispatch: impl FnMut(http::Request) -> Response,
) -> Result<(), ServerError> {
    listener
        .set_nonblocking(true)
        .map_err(ServerError::Accept)?;
    let cap = http::MAX_HEADER_BYTES.saturating_add(limits.max_payload_size);
    let mut conns: Vec<Conn> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    loop {
        let now = Instant::now();
        fds.clear();
        fds.push(libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        for c in &conns {
            let events = if c.pending_output() {
                libc::POLLOUT
            } else if c.wants_read(cap) {
                libc::POLLIN
            } else {
                0
            };
            fds.push(libc::pollfd {
                fd: c.stream.as_raw_fd(),
                events,
                revents: 0,
            });
        }
        let timeout_ms = conns
            .iter()
            .filter_map(|c| c.deadline)
            .min()
            .map(|d| {
                i32::try_from(
                    d.saturating_duration_since(now)
                        .as_millis()
                        .saturating_add(1),
                )
                .unwrap_or(i32::MAX)
            })
            .unwrap_or(-1);
        match poll(&mut fds, timeout_ms) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ServerError::Poll(e)),
        }
        let now = Instant::now();

        for (c, fd) in conns.iter_mut().zip(fds.iter().skip(1)) {
            if fd.revents & libc::POLLOUT != 0 {
                c.flush();
                if !c.pending_output() && !c.dead {
                    // The answer is out: the next pipelined request, if any, is served.
                    c.deadline = None;
                    c.process(&limits, now, &mut dispatch);
                }
            }
            if fd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 && c.wants_read(cap)
            {
                c.read_some(cap, &limits, now);
                c.process(&limits, now, &mut dispatch);
            } else if fd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
                && !c.pending_output()
            {
                c.dead = true;
            }
            c.track_deadline(&limits, now);
        }

        for c in conns.iter_mut().filter(|c| !c.dead) {
            if c.deadline.is_some_and(|d| now >= d) {
                if c.pending_output() {
                    // The client does not read its answer.
                    METRICS.api_server.request_timeouts.inc();
                    c.dead = true;
                } else {
                    c.refuse(&HttpError::Timeout(limits.request_timeout.as_millis()));
                    // Whatever was not written at once is abandoned.
                    c.dead = true;
                }
            }
        }
        conns.retain(|c| !c.dead);

        if fds.first().is_some_and(|l| l.revents & libc::POLLIN != 0) {
            accept_all(&listener, &mut conns, &limits, now)?;
        }
    }
}

fn accept_all(
    listener: &UnixListener,
    conns: &mut Vec<Conn>,
    limits: &Limits,
    now: Instant,
) -> Result<(), ServerError> {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Out of file descriptors or a client that vanished: keep serving the others.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(
                        libc::EMFILE
                            | libc::ENFILE
                            | libc::ECONNABORTED
                            | libc::ENOBUFS
                            | libc::ENOMEM
                    )
                ) =>
            {
                crate::log_warn!("API: accept failed: {e}");
                return Ok(());
            }
            Err(e) => return Err(ServerError::Accept(e)),
        };
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        if conns.len() >= limits.max_connections {
            let oldest_idle = conns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.idle())
                .min_by_key(|(_, c)| c.since)
                .map(|(i, _)| i);
            METRICS.api_server.connections_dropped.inc();
            match oldest_idle {
                Some(i) => {
                    conns.swap_remove(i);
                }
                None => continue, // every slot is mid-request: refuse the newcomer
            }
        }
        METRICS.api_server.connections_accepted.inc();
        conns.push(Conn::new(stream, now));
    }
}

/// One connection served by hand, without [`serve`]'s poll loop, for the API fuzz target
/// (`fuzz/fuzz_targets/api_http.rs`): the caller writes a client's bytes to the other end of
/// `stream` and calls [`ManualConn::turn`], which does what one turn of [`serve`]'s loop does
/// for a connection that is readable and writable (same buffer cap, parser, limits and
/// answers).
pub struct ManualConn {
    conn: Conn,
    limits: Limits,
}

impl ManualConn {
    pub fn new(stream: UnixStream, limits: Limits) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(ManualConn {
            conn: Conn::new(stream, Instant::now()),
            limits,
        })
    }

    /// Writes pending answers, reads what the client sent (up to the buffer cap) and answers
    /// every complete request with `dispatch`.
    pub fn turn(&mut self, dispatch: &mut dyn FnMut(http::Request) -> Response) {
        let now = Instant::now();
        let cap = http::MAX_HEADER_BYTES.saturating_add(self.limits.max_payload_size);
        let c = &mut self.conn;
        if c.pending_output() {
            c.flush();
            if !c.pending_output() && !c.dead {
                c.deadline = None;
                c.process(&self.limits, now, dispatch);
            }
        }
        if c.wants_read(cap) {
            c.read_some(cap, &self.limits, now);
            c.process(&self.limits, now, dispatch);
        }
        c.track_deadline(&self.limits, now);
    }

    /// True once the server would close the connection.
    pub fn is_closed(&self) -> bool {
        self.conn.dead
    }
}
