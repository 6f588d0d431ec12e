//! The worker's side of a jailed VMM's API (Firecracker's HTTP API on a Unix socket in the
//! jail's `/run`): waiting for the socket to come up, and one request at a time
//! (`Connection: close`, the answer bounded). Used by snapshot start (pause, create, load)
//! and by the blank pool (machine-config ahead of demand; boot-source, vsock and
//! `InstanceStart` once a function is assigned).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The VMM's API socket inside the jail (its `/run` is the VMM's own tmpfs).
pub(super) const JAIL_API_SOCK: &str = "/run/api.sock";
/// Largest API answer read.
const MAX_ANSWER: u64 = 64 * 1024;

/// Why an API request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{request}: cannot reach the VMM's API socket {path}: {source}")]
    Connect {
        request: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{request}: {source}")]
    Io {
        request: String,
        source: std::io::Error,
    },
    #[error("{request}: the VMM answered {answer}")]
    Refused { request: String, answer: String },
    #[error("the VMM's API did not come up within {} ms", .after.as_millis())]
    NotUp { after: Duration },
    #[error("the VMM exited before its API came up")]
    Exited,
}

/// Waits until the VMM accepts connections on its API socket `sock` (or `exited()` says
/// it is gone, or the deadline passes).
pub(super) fn wait_up(
    sock: &Path,
    started: Instant,
    deadline: Instant,
    mut exited: impl FnMut() -> bool,
) -> Result<(), ApiError> {
    while UnixStream::connect(sock).is_err() {
        if exited() {
            return Err(ApiError::Exited);
        }
        if Instant::now() >= deadline {
            return Err(ApiError::NotUp {
                after: started.elapsed(),
            });
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// One request to the VMM's API at `sock`; anything but 204 is an error carrying the VMM's
/// fault message.
pub(super) fn request(
    sock: &Path,
    method: &str,
    path: &str,
    body: &str,
    deadline: Instant,
) -> Result<(), ApiError> {
    let answer = exchange(sock, method, path, body, deadline)?;
    if answer.starts_with("HTTP/1.1 204") {
        return Ok(());
    }
    let fault = answer.split("\r\n\r\n").nth(1).unwrap_or(&answer);
    Err(ApiError::Refused {
        request: format!("{method} {path}"),
        answer: fault.trim().chars().take(500).collect(),
    })
}

fn exchange(
    sock: &Path,
    method: &str,
    path: &str,
    body: &str,
    deadline: Instant,
) -> Result<String, ApiError> {
    let request = format!("{method} {path}");
    let io = |source| ApiError::Io {
        request: request.clone(),
        source,
    };
    let mut s = UnixStream::connect(sock).map_err(|source| ApiError::Connect {
        request: request.clone(),
        path: sock.to_path_buf(),
        source,
    })?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    s.set_read_timeout(Some(left)).map_err(io)?;
    s.set_write_timeout(Some(left)).map_err(io)?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(io)?;
    let mut answer = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut answer).map_err(io)?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}
