//! `kiln serve`: HTTP/1.1 on a Unix socket and on a TCP address (loopback by default), one
//! thread per connection, at most `max_connections` at once over both.
//!
//! Two APIs on each: Kiln's own ([`kiln`]: `POST /functions/NAME/invocations`,
//! `GET /functions`) and AWS Lambda's Invoke API ([`lambda`]: `POST
//! /2015-03-31/functions/NAME/invocations`), chosen by the path. Kiln's errors get their
//! status in [`status`], Lambda's in `lambda::errors`; [`response`] writes Kiln's answers.
//! Requests are parsed by the project's HTTP/1.1 layer, shared with the VMM's API
//! (`kiln_http::parse_request`: httparse, `Content-Length` bodies only, at most 32
//! headers in 8 KiB); keep-alive and `Expect: 100-continue` are honoured.

mod kiln;
pub mod lambda;
mod response;
mod status;

pub use response::error_response;

use crate::pool::Pools;
use kiln_http::{parse_request, HttpError, Parsed, Request, CONTINUE};
use lambda::LambdaApi;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest request body: the protocol's largest payload, Lambda's 6 MB (a function's own
/// limit is checked after routing).
pub const MAX_BODY: usize = kiln_protocol::DEFAULT_MAX_PAYLOAD as usize;
/// How long the body of a refused oversized request is read (and dropped) before the
/// connection closes, so that a client that sends the whole body first reads the answer.
const DRAIN_TIME: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0} exists and is not a socket: refusing to replace it")]
    NotASocket(PathBuf),
    #[error("another server is listening on {0}")]
    InUse(PathBuf),
    #[error("cannot remove the stale socket {path}: {source}")]
    Stale {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} (--listen): {source}")]
    BindTcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// How the server treats its clients.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub socket: PathBuf,
    /// Over both listeners.
    pub max_connections: usize,
    /// A request must be complete within this time of its first byte.
    pub request_timeout: Duration,
    /// An idle keep-alive connection is closed after this time.
    pub idle_timeout: Duration,
}

/// Binds the socket (replacing a stale one, never a live one or a non-socket).
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ServerError::NotASocket(path.to_path_buf()));
        }
        if still_listening(path) {
            return Err(ServerError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(|source| ServerError::Stale {
            path: path.to_path_buf(),
            source,
        })?;
    }
    UnixListener::bind(path).map_err(|source| ServerError::Bind {
        path: path.to_path_buf(),
        source,
    })
}

/// How long [`still_listening`] waits for a queued connection to be reset.
const STALE_PROBE: Duration = Duration::from_millis(200);

/// Whether a process still listens on the socket at `path`. That a connection is queued is
/// not enough: a worker killed while it forked a jailer leaves the child holding its
/// listener until the child execs or exits, and the kernel then resets what was queued. A
/// live listener holds (or answers) the probe; a dying one resets it within [`STALE_PROBE`].
fn still_listening(path: &Path) -> bool {
    let Ok(mut probe) = UnixStream::connect(path) else {
        return false;
    };
    if probe.set_read_timeout(Some(STALE_PROBE)).is_err() {
        return true;
    }
    let mut byte = [0u8; 1];
    !matches!(probe.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
}

/// Listens on `addr` (TCP).
pub fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr).map_err(|source| ServerError::BindTcp { addr, source })
}

/// What every connection shares.
struct Shared {
    cfg: ServerConfig,
    pools: Arc<Pools>,
    lambda: Arc<LambdaApi>,
    active: AtomicUsize,
}

/// A connection's stream: a Unix or a TCP socket (or, in the fuzz target, bytes in memory).
#[doc(hidden)]
pub trait Conn: Read + Write + Send + 'static {
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()>;
}

impl Conn for UnixStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        UnixStream::set_read_timeout(self, t)
    }
}

impl Conn for TcpStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        TcpStream::set_read_timeout(self, t)
    }
}

/// Serves both listeners until `stop` is set and the Unix listener's accept loop wakes
/// (`sys::stop_accepting` on the socket, or a connection; the TCP loop is woken here).
pub fn serve(
    unix: UnixListener,
    tcp: Option<TcpListener>,
    cfg: ServerConfig,
    pools: Arc<Pools>,
    lambda: Arc<LambdaApi>,
    stop: Arc<AtomicBool>,
) {
    let shared = Arc::new(Shared {
        cfg,
        pools,
        lambda,
        active: AtomicUsize::new(0),
    });
    let tcp_loop = tcp.and_then(|listener| {
        let addr = listener.local_addr().ok()?;
        let (shared, stop) = (shared.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("kiln-tcp".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    if let Ok(stream) = conn {
                        let _ = stream.set_nodelay(true);
                        accept(stream, &shared);
                    }
                }
            })
            .ok()?;
        Some((addr, handle))
    });
    for conn in unix.incoming() {
        if stop.load(Ordering::Acquire) {
            break;
        }
        if let Ok(stream) = conn {
            accept(stream, &shared);
        }
    }
    if let Some((addr, handle)) = tcp_loop {
        // Wake the TCP accept loop, which then sees `stop`.
        let _ = TcpStream::connect(addr);
        let _ = handle.join();
    }
    shared.lambda.stop();
}

/// Starts a connection's thread, or refuses it when `max_connections` are open.
fn accept<S: Conn>(mut stream: S, shared: &Arc<Shared>) {
    let max = shared.cfg.max_connections;
    if shared.active.load(Ordering::Acquire) >= max {
        let _ = stream.write_all(&error_response(
            503,
            "too_many_connections",
            &format!("the worker serves at most {max} connections at once"),
            None,
            true,
        ));
        return;
    }
    shared.active.fetch_add(1, Ordering::AcqRel);
    let s = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("kiln-conn".into())
        .spawn(move || {
            connection(stream, &s);
            s.active.fetch_sub(1, Ordering::AcqRel);
        });
    if spawned.is_err() {
        shared.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one connection to its end on the calling thread, as `serve` does on the
/// connection's own thread: the worker's connection handling, both APIs' routing and their
/// answers, without a listener (the `worker_http` fuzz target; with a registry whose
/// functions cannot start, no VM is ever started).
#[doc(hidden)]
pub fn serve_connection<S: Conn>(
    stream: S,
    cfg: ServerConfig,
    pools: Arc<Pools>,
    lambda: Arc<LambdaApi>,
) {
    let shared = Shared {
        cfg,
        pools,
        lambda,
        active: AtomicUsize::new(1),
    };
    connection(stream, &shared);
}

fn connection<S: Conn>(mut stream: S, shared: &Shared) {
    let cfg = &shared.cfg;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut first_byte: Option<Instant> = None;
    let mut sent_continue = false;
    loop {
        match parse_request(&buf, MAX_BODY) {
            Ok(Parsed::Complete { request, consumed }) => {
                buf.drain(..consumed.min(buf.len()));
                first_byte = (!buf.is_empty()).then(Instant::now);
                sent_continue = false;
                let keep = request.keep_alive && !shared.pools.is_shutting_down();
                let answer = route(&request, shared, !keep);
                if stream.write_all(&answer).is_err() || !keep {
                    return;
                }
                continue;
            }
            Ok(Parsed::Incomplete { send_continue }) => {
                if send_continue && !sent_continue {
                    if stream.write_all(CONTINUE).is_err() {
                        return;
                    }
                    sent_continue = true;
                }
            }
            Err(e) => {
                let lambda_413 = matches!(&e, HttpError::PayloadTooLarge { path, .. } if LambdaApi::serves(path));
                let answer = if lambda_413 {
                    shared.lambda.too_large(true)
                } else {
                    http_error(&e)
                };
                let _ = stream.write_all(&answer);
                if let HttpError::PayloadTooLarge { len, .. } = e {
                    drain_body(&mut stream, &buf, len);
                }
                return;
            }
        }
        let timeout = match first_byte {
            None => cfg.idle_timeout,
            Some(t) => match cfg.request_timeout.checked_sub(t.elapsed()) {
                Some(left) if !left.is_zero() => left,
                _ => {
                    let _ = stream.write_all(&http_error(&HttpError::Timeout(
                        cfg.request_timeout.as_millis(),
                    )));
                    return;
                }
            },
        };
        if stream.set_read_timeout(Some(timeout)).is_err() {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => {
                if first_byte.is_none() {
                    first_byte = Some(Instant::now());
                }
                buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if first_byte.is_some() {
                    let _ = stream.write_all(&http_error(&HttpError::Timeout(
                        cfg.request_timeout.as_millis(),
                    )));
                }
                return;
            }
            Err(_) => return,
        }
    }
}

/// Reads and drops what is left of a refused body of `len` bytes (some of it already in
/// `buf`, after the headers) for at most [`DRAIN_TIME`], or until the client stops sending
/// for a second: closing a socket with unread data resets the connection, and the client
/// would never read the answer.
fn drain_body<S: Conn>(stream: &mut S, buf: &[u8], len: usize) {
    let head = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(buf.len(), |p| p + 4);
    let mut left = len.saturating_sub(buf.len() - head);
    let until = Instant::now() + DRAIN_TIME;
    let mut chunk = vec![0u8; 64 * 1024];
    while left > 0 && Instant::now() < until {
        if stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .is_err()
        {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => left = left.saturating_sub(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn http_error(e: &HttpError) -> Vec<u8> {
    let message = match e {
        HttpError::PayloadTooLarge { len, limit, .. } => format!(
            "request body of {len} bytes is larger than the worker's limit of {limit} bytes"
        ),
        other => other.to_string(),
    };
    let (status, code) = status::of_http_error(e);
    error_response(status, code, &message, None, true)
}

/// Routes one request to Lambda's API or Kiln's; returns the bytes of the answer.
fn route(req: &Request, shared: &Shared, close: bool) -> Vec<u8> {
    if LambdaApi::serves(&req.path) {
        shared.lambda.route(req, &shared.pools, close)
    } else {
        kiln::route(req, &shared.pools, shared.lambda.identity(), close)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_refuses_files_and_live_sockets_and_replaces_stale_ones() {
        let dir = std::env::temp_dir().join(format!("kiln-srv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(matches!(bind(&file), Err(ServerError::NotASocket(_))));
        let sock = dir.join("s");
        let live = bind(&sock).unwrap();
        assert!(matches!(bind(&sock), Err(ServerError::InUse(_))));
        drop(live);
        let replaced = bind(&sock).expect("a stale socket is replaced");
        // A listener that goes away while it is probed (a killed worker's forked child
        // that execs) is stale too: the kernel resets the queued probe.
        let dying = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(replaced);
        });
        let t = Instant::now();
        assert!(
            bind(&sock).is_ok(),
            "a socket whose listener closes is replaced"
        );
        assert!(
            t.elapsed() >= Duration::from_millis(50),
            "{:?}",
            t.elapsed()
        );
        dying.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
