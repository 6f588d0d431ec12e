//! The worker's side of a jailed VMM's API (Firecracker's HTTP API on a Unix socket in the
//! jail's `/run`): waiting for the socket to come up, one request at a time on a connection
//! of its own (`Connection: close`, the answer bounded; snapshot start: pause, create, load),
//! and [`ApiConnection`], a kept-alive connection on which requests written together are
//! answered in order (HTTP/1.1 pipelining, which the VMM's API serves like Firecracker's):
//! the blank pool's (machine-config and vsock ahead of demand; boot-source and
//! `InstanceStart` in one write once a function is assigned, so that the VMM starts
//! loading the function without waiting for the worker between requests).

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
    #[error("{request}: the VMM's answer is not HTTP ({reason}): {answer}")]
    Malformed {
        request: String,
        reason: String,
        answer: String,
    },
}

/// Waits until the VMM accepts connections on its API socket `sock` (or `exited()` says
/// it is gone, or the deadline passes); returns the first connection made.
pub(super) fn wait_up(
    sock: &Path,
    started: Instant,
    deadline: Instant,
    mut exited: impl FnMut() -> bool,
) -> Result<UnixStream, ApiError> {
    loop {
        if let Ok(stream) = UnixStream::connect(sock) {
            return Ok(stream);
        }
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
    let request = format!("{method} {path}");
    let answer = exchange(sock, method, path, body, deadline)?;
    match parse_answer(&request, &answer, true)? {
        Some((answer, _)) => accepted(&request, answer),
        None => Err(malformed(&request, "incomplete", &answer)),
    }
}

/// An answer the VMM's API gave: its status and body.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

/// The first answer in `input` (the project's one HTTP layer, `kiln_http`) and the bytes it
/// took; `None` while incomplete.
fn parse_answer(
    request: &str,
    input: &[u8],
    at_eof: bool,
) -> Result<Option<(Answer, usize)>, ApiError> {
    let max = usize::try_from(MAX_ANSWER).unwrap_or(usize::MAX);
    match kiln_http::parse_response(input, max, at_eof) {
        Ok(kiln_http::ParsedResponse::Complete {
            status,
            body,
            consumed,
        }) => Ok(Some((Answer { status, body }, consumed))),
        Ok(kiln_http::ParsedResponse::Incomplete) => Ok(None),
        Err(e) => Err(malformed(request, &e.to_string(), input)),
    }
}

fn malformed(request: &str, reason: &str, input: &[u8]) -> ApiError {
    ApiError::Malformed {
        request: request.to_string(),
        reason: reason.to_string(),
        answer: String::from_utf8_lossy(input).chars().take(500).collect(),
    }
}

/// `Ok` for a 204 answer; else the error carrying the VMM's fault message.
fn accepted(request: &str, answer: Answer) -> Result<(), ApiError> {
    if answer.status == 204 {
        return Ok(());
    }
    Err(ApiError::Refused {
        request: request.to_string(),
        answer: String::from_utf8_lossy(&answer.body)
            .trim()
            .chars()
            .take(500)
            .collect(),
    })
}

/// One request's bytes.
fn encode(method: &str, path: &str, body: &str, close: bool) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{body}",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
}

fn exchange(
    sock: &Path,
    method: &str,
    path: &str,
    body: &str,
    deadline: Instant,
) -> Result<Vec<u8>, ApiError> {
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
    s.set_read_timeout(Some(left(deadline))).map_err(io)?;
    s.set_write_timeout(Some(left(deadline))).map_err(io)?;
    s.write_all(encode(method, path, body, true).as_bytes())
        .map_err(io)?;
    // One byte more than an answer may have: a longer one is refused, not cut short.
    let mut answer = Vec::new();
    s.take(MAX_ANSWER + 1)
        .read_to_end(&mut answer)
        .map_err(io)?;
    if answer.len() as u64 > MAX_ANSWER {
        return Err(malformed(
            &request,
            &format!("longer than {MAX_ANSWER} bytes"),
            &answer,
        ));
    }
    Ok(answer)
}

/// A kept-alive connection to a VMM's API: [`ApiConnection::send`] writes requests in one
/// go, [`ApiConnection::answers`] reads their answers, in order.
pub(super) struct ApiConnection {
    stream: UnixStream,
    /// Bytes read past the last answer taken.
    input: Vec<u8>,
    /// The requests sent and not answered yet (`METHOD /path`), oldest first.
    unanswered: std::collections::VecDeque<String>,
}

impl ApiConnection {
    pub(super) fn new(stream: UnixStream) -> ApiConnection {
        ApiConnection {
            stream,
            input: Vec::new(),
            unanswered: std::collections::VecDeque::new(),
        }
    }

    /// Writes the `PUT` requests `(path, body)` in one write, before any answer is read.
    pub(super) fn send(
        &mut self,
        requests: &[(&str, String)],
        deadline: Instant,
    ) -> Result<(), ApiError> {
        let mut bytes = String::new();
        for (path, body) in requests {
            bytes.push_str(&encode("PUT", path, body, false));
        }
        let first = requests
            .first()
            .map_or_else(String::new, |(p, _)| format!("PUT {p}"));
        let io = |source| ApiError::Io {
            request: first.clone(),
            source,
        };
        self.stream
            .set_write_timeout(Some(left(deadline)))
            .map_err(io)?;
        self.stream.write_all(bytes.as_bytes()).map_err(io)?;
        self.unanswered
            .extend(requests.iter().map(|(p, _)| format!("PUT {p}")));
        Ok(())
    }

    /// Reads the answers of every request sent and not answered yet; the first that is not
    /// 204 is the error (the answers after it are not read).
    pub(super) fn answers(&mut self, deadline: Instant) -> Result<(), ApiError> {
        while let Some(request) = self.unanswered.pop_front() {
            let answer = self.answer(&request, deadline)?;
            accepted(&request, answer)?;
        }
        Ok(())
    }

    /// The next whole answer (its head and `Content-Length` bytes of body), at most
    /// [`MAX_ANSWER`] bytes of body.
    fn answer(&mut self, request: &str, deadline: Instant) -> Result<Answer, ApiError> {
        let io = |source| ApiError::Io {
            request: request.to_string(),
            source,
        };
        loop {
            if let Some((answer, consumed)) = parse_answer(request, &self.input, false)? {
                self.input.drain(..consumed);
                return Ok(answer);
            }
            self.stream
                .set_read_timeout(Some(left(deadline)))
                .map_err(io)?;
            let mut buf = [0u8; 4096];
            let n = match self.stream.read(&mut buf) {
                Ok(0) => {
                    return Err(io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the VMM closed its API connection before answering",
                    )));
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io(e)),
            };
            self.input
                .extend_from_slice(buf.get(..n).unwrap_or_default());
        }
    }
}

/// What is left of `deadline` (at least 1 ms: a zero timeout means none to the socket).
fn left(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelined_answers_are_read_in_order_and_the_first_refusal_is_the_error() {
        let (ours, mut vmm) = UnixStream::pair().unwrap();
        let mut c = ApiConnection::new(ours);
        let deadline = Instant::now() + Duration::from_secs(5);
        c.send(&[("/a", "{}".into()), ("/b", "{\"x\":1}".into())], deadline)
            .unwrap();
        let mut got = vec![0u8; 4096];
        let n = vmm.read(&mut got).unwrap();
        let got = String::from_utf8_lossy(&got[..n]).into_owned();
        assert_eq!(got.matches("PUT /").count(), 2, "{got}");
        assert!(got.find("PUT /a").unwrap() < got.find("PUT /b").unwrap());
        assert!(!got.contains("Connection: close"), "{got}");
        // Both answers in pieces, the second split across reads.
        vmm.write_all(b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 204 No")
            .unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            vmm.write_all(b" Content\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
            vmm
        });
        c.answers(deadline).unwrap();
        let mut vmm = writer.join().unwrap();

        c.send(&[("/c", "{}".into()), ("/d", "{}".into())], deadline)
            .unwrap();
        let body = r#"{"fault_message":"no such thing"}"#;
        vmm.write_all(
            format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .unwrap();
        match c.answers(deadline) {
            Err(ApiError::Refused { request, answer }) => {
                assert_eq!((request.as_str(), answer.as_str()), ("PUT /c", body));
            }
            other => panic!("{other:?}"),
        }
        drop(vmm);
    }

    #[test]
    fn a_one_shot_answer_longer_than_allowed_is_refused_not_cut_short() {
        let dir = std::env::temp_dir().join(format!("kiln-api-long-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("api.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let vmm = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req);
            let body = vec![b'x'; usize::try_from(MAX_ANSWER).unwrap()];
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
            let _ = s.write_all(&body);
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let got = request(&sock, "PUT", "/a", "{}", deadline);
        vmm.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        match got {
            Err(ApiError::Malformed { reason, .. }) => {
                assert!(reason.contains("longer than"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_closed_connection_or_a_garbled_answer_is_an_error() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let (ours, vmm) = UnixStream::pair().unwrap();
        let mut c = ApiConnection::new(ours);
        c.send(&[("/a", "{}".into())], deadline).unwrap();
        drop(vmm);
        assert!(matches!(c.answers(deadline), Err(ApiError::Io { .. })));

        let (ours, mut vmm) = UnixStream::pair().unwrap();
        let mut c = ApiConnection::new(ours);
        c.send(&[("/a", "{}".into())], deadline).unwrap();
        vmm.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: lots\r\n\r\n")
            .unwrap();
        assert!(matches!(
            c.answers(deadline),
            Err(ApiError::Malformed { .. })
        ));
    }
}
