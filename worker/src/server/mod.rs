//! `kiln serve`: HTTP/1.1 on a Unix socket, one thread per connection.
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /functions/NAME/invocations` with the event as body | 200 with the function's response as body, `X-Kiln-Vm-Id`, `X-Kiln-Cold-Start`, `X-Kiln-Timings` |
//! | `GET /functions` | 200, `{"functions": [{"name", "instances": [{"id", "uid", "vmm_pid", "state", ...}]}]}` |
//!
//! Every error is `{"error": {"code": "...", "message": "..."}}` with a 4xx/5xx status (see
//! docs/worker.md for the codes), decided in [`status`]; [`response`] writes the bytes.
//! Requests are parsed by the project's HTTP/1.1 layer, shared with the VMM's API
//! (`kiln_http::parse_request`: httparse, `Content-Length` bodies only, at most 32
//! headers in 8 KiB); keep-alive and `Expect: 100-continue` are honoured.

mod response;
mod status;

pub use response::error_response;

use crate::pool::{Invocation, PoolError, Pools};
use kiln_http::{parse_request, HttpError, Method, Parsed, Request, CONTINUE};
use response::{json_response, method_not_allowed, response};
use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest request body: the protocol's largest payload (a function's own limit is checked
/// after routing).
pub const MAX_BODY: usize = kiln_protocol::DEFAULT_MAX_PAYLOAD as usize;

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
}

/// How the server treats its clients.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub socket: PathBuf,
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
        if UnixStream::connect(path).is_ok() {
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

/// Serves until `stop` is set (and something connects to wake the accept loop).
pub fn serve(listener: UnixListener, cfg: ServerConfig, pools: Arc<Pools>, stop: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let Ok(mut stream) = conn else { continue };
        if active.load(Ordering::Acquire) >= cfg.max_connections {
            let _ = stream.write_all(&error_response(
                503,
                "too_many_connections",
                &format!(
                    "the worker serves at most {} connections at once",
                    cfg.max_connections
                ),
                None,
                true,
            ));
            continue;
        }
        active.fetch_add(1, Ordering::AcqRel);
        let (pools, cfg, active2) = (pools.clone(), cfg.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("kiln-conn".into())
            .spawn(move || {
                connection(stream, &cfg, &pools);
                active2.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn connection(mut stream: UnixStream, cfg: &ServerConfig, pools: &Pools) {
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
                let keep = request.keep_alive && !pools.is_shutting_down();
                let answer = route(&request, pools, !keep);
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
                let _ = stream.write_all(&http_error(&e));
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

fn http_error(e: &HttpError) -> Vec<u8> {
    let message = match e {
        HttpError::PayloadTooLarge { len, limit } => format!(
            "request body of {len} bytes is larger than the worker's limit of {limit} bytes"
        ),
        other => other.to_string(),
    };
    let (status, code) = status::of_http_error(e);
    error_response(status, code, &message, None, true)
}

/// Routes one request; returns the bytes of the answer.
fn route(req: &Request, pools: &Pools, close: bool) -> Vec<u8> {
    let segments: Vec<&str> = req.path.trim_end_matches('/').split('/').skip(1).collect();
    match segments.as_slice() {
        ["functions"] => match req.method {
            Method::Get => json_response(200, &list(pools), close),
            _ => method_not_allowed("GET", &req.path, close),
        },
        ["functions", name, "invocations"] => match &req.method {
            Method::Other(m) if m == "POST" => {
                let event = req.body.as_deref().unwrap_or_default();
                match pools.invoke(name, event) {
                    Ok(inv) => success(&inv, close),
                    Err(e) => {
                        eprintln!("kiln: {name}: {} ({})", e, e.code());
                        pool_error(&e, close)
                    }
                }
            }
            _ => method_not_allowed("POST", &req.path, close),
        },
        _ => error_response(
            404,
            "not_found",
            &format!(
                "no such path {:?}: use POST /functions/NAME/invocations or GET /functions",
                req.path
            ),
            None,
            close,
        ),
    }
}

fn list(pools: &Pools) -> serde_json::Value {
    let mut instances: std::collections::HashMap<String, serde_json::Value> = pools
        .list()
        .into_iter()
        .map(|(name, infos)| (name, serde_json::to_value(infos).unwrap_or_default()))
        .collect();
    let names = pools.registry().names().unwrap_or_default();
    let mut functions: Vec<serde_json::Value> = names
        .iter()
        .map(|n| {
            serde_json::json!({
                "name": n,
                "instances": instances.remove(n).unwrap_or_else(|| serde_json::json!([])),
            })
        })
        .collect();
    // Pools of functions whose directory has gone meanwhile.
    for (n, i) in instances {
        functions.push(serde_json::json!({ "name": n, "instances": i }));
    }
    serde_json::json!({ "functions": functions })
}

fn success(inv: &Invocation, close: bool) -> Vec<u8> {
    if !inv.output.logs.is_empty() {
        eprintln!(
            "kiln: [{}] {}",
            inv.vm_id,
            String::from_utf8_lossy(&inv.output.logs).trim_end()
        );
    }
    let headers = [
        ("X-Kiln-Vm-Id", inv.vm_id.clone()),
        ("X-Kiln-Cold-Start", inv.cold.to_string()),
        ("X-Kiln-Timings", inv.timings.header()),
    ];
    response(
        200,
        &headers,
        "application/octet-stream",
        &inv.output.body,
        close,
    )
}

fn pool_error(e: &PoolError, close: bool) -> Vec<u8> {
    let (status, code) = status::of_pool_error(e);
    error_response(status, code, &e.to_string(), e.vm_id(), close)
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
        assert!(bind(&sock).is_ok(), "a stale socket is replaced");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
