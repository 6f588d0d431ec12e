//! The agent of Linux function images: kiln-init's side of the invocation protocol
//! (guest/protocol), run over any `Read + Write` stream.
//!
//! In the guest the stream is AF_VSOCK to the host (CID 2, port
//! [`kiln_protocol::GUEST_CONNECT_PORT`]), and the handler is the function's executable
//! (`kiln.exec=PATH` on the kernel command line): for each `Invoke`, the agent runs it with the
//! event on stdin and answers with its stdout (`Response`), or with `Error` (`handler_error`
//! and the exit status and stderr) when it fails. On a host, `kiln-init agent --unix PATH
//! --exec PATH` runs the same code over a Unix socket: that is how it is tested, since guest
//! user space cannot run on hosts whose KVM emulates guest kernel code.
//!
//! Flow: `Hello` with the function's name, then one answer per `Invoke`, in order, with the
//! invocation's id; what the handler logged goes first, in a `Log` frame. A `Context` frame
//! before an `Invoke` with the same id gives the handler the invocation's Lambda context
//! ([`Context`]; the Lambda runtime of `crate::lambda` uses it). An event over the limit is
//! read and dropped, and answered with `event_too_large`; the stream stays in step. A header that is not understood (bad magic,
//! kind or reserved bits) is answered with `protocol_error` and ends the session: where the
//! next frame starts is unknown. The session ends normally when the host closes the stream.

pub use crate::context::Context;
use kiln_protocol::{error_code_bytes, ErrorCode, Header, HeaderError, Kind, HEADER_LEN};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Most bytes of a handler's stderr quoted in an error.
pub const MAX_STDERR: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("stream I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("the host sent a frame that is not understood: {0}")]
    Header(HeaderError),
    #[error("the stream ended in the middle of a frame")]
    Truncated,
}

/// Why a handler failed, as sent in an `Error` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
}

/// What a handler made of an event: its response or failure, and what it logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    pub result: Result<Vec<u8>, Failure>,
    /// Sent to the host in a `Log` frame before the answer (when not empty).
    pub logs: Vec<u8>,
}

impl From<Result<Vec<u8>, Failure>> for Handled {
    fn from(result: Result<Vec<u8>, Failure>) -> Handled {
        Handled {
            result,
            logs: Vec::new(),
        }
    }
}

/// What runs an event.
pub trait Handler {
    fn handle(&mut self, ctx: &Context, event: &[u8]) -> Handled;
}

/// Runs an executable per event: the event on stdin, the response from stdout.
pub struct Exec {
    pub path: PathBuf,
    /// Output longer than this fails the invocation (the handler is killed).
    pub max_output: usize,
}

fn read_bounded(r: &mut impl Read, limit: usize) -> io::Result<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut over = false;
    loop {
        let n = match r.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let data = chunk.get(..n).unwrap_or_default();
        let room = limit.saturating_sub(out.len());
        if data.len() > room {
            out.extend_from_slice(data.get(..room).unwrap_or_default());
            over = true;
            break;
        }
        out.extend_from_slice(data);
    }
    Ok((out, over))
}

impl Handler for Exec {
    fn handle(&mut self, _ctx: &Context, event: &[u8]) -> Handled {
        self.run(event).into()
    }
}

impl Exec {
    /// Runs the executable on `event`.
    fn run(&mut self, event: &[u8]) -> Result<Vec<u8>, Failure> {
        let fail = |message: String| Failure {
            code: ErrorCode::Handler,
            message,
        };
        let mut child = Command::new(&self.path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot run {}: {e}", self.path.display())))?;
        // Feed stdin and drain stderr on their own threads: a handler may write before it
        // has read everything.
        let writer = child.stdin.take().map(|mut stdin| {
            let event = event.to_vec();
            std::thread::spawn(move || {
                let _ = stdin.write_all(&event);
            })
        });
        let errors = child.stderr.take().map(|mut stderr| {
            std::thread::spawn(move || {
                let (text, _) = read_bounded(&mut stderr, MAX_STDERR).unwrap_or_default();
                // Keep draining so that the handler never blocks on a full pipe.
                let _ = io::copy(&mut stderr, &mut io::sink());
                text
            })
        });
        let out = match child.stdout.as_mut() {
            Some(stdout) => read_bounded(stdout, self.max_output),
            None => Ok((Vec::new(), false)),
        };
        let flooded = matches!(out, Ok((_, true)));
        if flooded {
            let _ = child.kill();
        }
        let status = child.wait();
        if let Some(w) = writer {
            let _ = w.join();
        }
        let stderr = errors
            .and_then(|e| e.join().ok())
            .map(|b| String::from_utf8_lossy(&b).trim_end().to_string())
            .unwrap_or_default();
        let (stdout, _) = out.map_err(|e| fail(format!("reading the handler's output: {e}")))?;
        if flooded {
            return Err(fail(format!(
                "the handler's output is over the limit of {} bytes; it was killed",
                self.max_output
            )));
        }
        match status {
            Ok(s) if s.success() => Ok(stdout),
            Ok(s) => Err(fail(format!(
                "{} failed ({s}){}{stderr}",
                self.path.display(),
                if stderr.is_empty() { "" } else { ": " }
            ))),
            Err(e) => Err(fail(format!("waiting for {}: {e}", self.path.display()))),
        }
    }
}

fn send(stream: &mut impl Write, kind: Kind, id: u32, payload: &[u8]) -> Result<(), AgentError> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
    buf.extend_from_slice(&Header::new(kind, id, len).encode());
    buf.extend_from_slice(
        payload
            .get(..usize::try_from(len).unwrap_or(0))
            .unwrap_or_default(),
    );
    stream.write_all(&buf)?;
    stream.flush()?;
    Ok(())
}

fn send_error(
    stream: &mut impl Write,
    id: u32,
    code: ErrorCode,
    message: &str,
) -> Result<(), AgentError> {
    let mut payload = error_code_bytes(code).to_vec();
    payload.extend_from_slice(message.as_bytes());
    send(stream, Kind::Error, id, &payload)
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` when the stream ended before the first one.
fn read_frame_part(stream: &mut impl Read, buf: &mut [u8]) -> Result<bool, AgentError> {
    let mut got = 0;
    while got < buf.len() {
        let Some(rest) = buf.get_mut(got..) else {
            break;
        };
        match stream.read(rest) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(AgentError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// Reads and drops `len` bytes.
fn skip(stream: &mut impl Read, len: u32) -> Result<(), AgentError> {
    let copied = io::copy(&mut stream.take(u64::from(len)), &mut io::sink())?;
    if copied < u64::from(len) {
        return Err(AgentError::Truncated);
    }
    Ok(())
}

/// Serves one session: `Hello` with `name`, then answers invocations until the host closes
/// the stream (`Ok`) or breaks the protocol (`Err`).
pub fn serve<S: Read + Write>(
    stream: &mut S,
    name: &str,
    max_event: u32,
    handler: &mut dyn Handler,
) -> Result<(), AgentError> {
    send(stream, Kind::Hello, 0, name.as_bytes())?;
    let mut context: Option<(u32, Context)> = None;
    loop {
        let mut head = [0u8; HEADER_LEN];
        if !read_frame_part(stream, &mut head)? {
            return Ok(());
        }
        let header = match Header::decode(&head, max_event) {
            Ok(h) => h,
            Err(HeaderError::TooLong { len, max }) => {
                let id = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
                skip(stream, len)?;
                if head[4] == Kind::Context as u8 {
                    // A context too large to keep: its invocation runs without one.
                    context = None;
                    continue;
                }
                send_error(
                    stream,
                    id,
                    ErrorCode::EventTooLarge,
                    &format!("event of {len} bytes is over the agent's limit of {max} bytes"),
                )?;
                continue;
            }
            Err(e) => {
                let id = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
                let _ = send_error(stream, id, ErrorCode::Protocol, &e.to_string());
                return Err(AgentError::Header(e));
            }
        };
        let mut payload = vec![0u8; usize::try_from(header.len).unwrap_or(0)];
        if !payload.is_empty() && !read_frame_part(stream, &mut payload)? {
            return Err(AgentError::Truncated);
        }
        if header.kind == Kind::Context {
            context = Some((header.id, Context::from_payload(&payload)));
            continue;
        }
        if header.kind != Kind::Invoke {
            send_error(
                stream,
                header.id,
                ErrorCode::Protocol,
                &format!(
                    "the agent only accepts Context and Invoke frames, not {:?}",
                    header.kind
                ),
            )?;
            continue;
        }
        let ctx = match context.take() {
            Some((id, ctx)) if id == header.id => ctx,
            _ => Context::empty(),
        };
        let handled = handler.handle(&ctx, &payload);
        if !handled.logs.is_empty() {
            send(stream, Kind::Log, header.id, &handled.logs)?;
        }
        match handled.result {
            Ok(out) => send(stream, Kind::Response, header.id, &out)?,
            Err(f) => send_error(stream, header.id, f.code, &f.message)?,
        }
    }
}

/// What the agent serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serve {
    /// `kiln.exec=PATH`: the executable, run once per event.
    Exec(PathBuf),
    /// `kiln.lambda=PATH`: a Lambda function, configured by the file at PATH
    /// (`crate::lambda`).
    Lambda(PathBuf),
}

/// The agent's settings from the kernel command line: `kiln.exec=PATH` or
/// `kiln.lambda=PATH` (one is required for agent mode; `kiln.exec` wins), and
/// `kiln.name=NAME` (default: the executable's file name, or `function`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    pub serve: Serve,
    pub name: String,
}

impl AgentConfig {
    pub fn from_cmdline(cmdline: &str) -> Option<AgentConfig> {
        let value = |key: &str| {
            cmdline
                .split_ascii_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .filter(|v| !v.is_empty())
        };
        let serve = match (value("kiln.exec="), value("kiln.lambda=")) {
            (Some(exec), _) => Serve::Exec(PathBuf::from(exec)),
            (None, Some(config)) => Serve::Lambda(PathBuf::from(config)),
            (None, None) => return None,
        };
        let name = match (value("kiln.name="), &serve) {
            (Some(n), _) => n.to_string(),
            (None, Serve::Exec(exec)) => exec.file_name()?.to_string_lossy().into_owned(),
            (None, Serve::Lambda(_)) => "function".to_string(),
        };
        Some(AgentConfig { serve, name })
    }
}

/// AF_VSOCK stream to `cid`:`port` (the host is CID 2).
pub fn connect_vsock(cid: u32, port: u32) -> io::Result<std::fs::File> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: socket(2) takes integers and returns a new descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data for which all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::sa_family_t::try_from(libc::AF_VSOCK)
        .map_err(|_| io::Error::other("AF_VSOCK does not fit sa_family_t"))?;
    addr.svm_cid = cid;
    addr.svm_port = port;
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_vm>())
        .map_err(|_| io::Error::other("sockaddr_vm is too large"))?;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes that outlives the call; connect
    // only reads it.
    let rc = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_vm).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(std::fs::File::from(owned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::decode_error;
    use std::os::unix::net::UnixStream;

    struct Upper;
    impl Handler for Upper {
        fn handle(&mut self, ctx: &Context, event: &[u8]) -> Handled {
            if event == b"fail" {
                return Handled {
                    result: Err(Failure {
                        code: ErrorCode::Handler,
                        message: "asked to fail".into(),
                    }),
                    logs: b"failing as asked".to_vec(),
                };
            }
            if event == b"who" {
                return Ok(ctx.request_id.clone().unwrap_or_default().into_bytes()).into();
            }
            Ok(event.to_ascii_uppercase()).into()
        }
    }

    fn frame(s: &mut UnixStream) -> (Header, Vec<u8>) {
        let mut head = [0u8; HEADER_LEN];
        s.read_exact(&mut head).unwrap();
        let h = Header::decode(&head, u32::MAX).unwrap();
        let mut p = vec![0u8; usize::try_from(h.len).unwrap()];
        s.read_exact(&mut p).unwrap();
        (h, p)
    }

    fn put(s: &mut UnixStream, kind: Kind, id: u32, payload: &[u8]) {
        send(s, kind, id, payload).unwrap();
    }

    #[test]
    fn hello_then_answers_in_order_until_the_host_closes() {
        let (mut host, mut guest) = UnixStream::pair().unwrap();
        let agent = std::thread::spawn(move || serve(&mut guest, "upper", 8, &mut Upper));
        let (h, p) = frame(&mut host);
        assert_eq!((h.kind, p.as_slice()), (Kind::Hello, &b"upper"[..]));
        put(&mut host, Kind::Invoke, 1, b"abc");
        let (h, p) = frame(&mut host);
        assert_eq!(
            (h.kind, h.id, p.as_slice()),
            (Kind::Response, 1, &b"ABC"[..])
        );
        put(&mut host, Kind::Invoke, 2, b"fail");
        let (h, p) = frame(&mut host);
        assert_eq!(
            (h.kind, p.as_slice()),
            (Kind::Log, &b"failing as asked"[..])
        );
        let (h, p) = frame(&mut host);
        assert_eq!((h.kind, h.id), (Kind::Error, 2));
        assert_eq!(decode_error(&p), (ErrorCode::Handler, "asked to fail"));
        // Over the limit: dropped and refused, and the stream stays in step.
        put(&mut host, Kind::Invoke, 3, b"123456789");
        let (h, p) = frame(&mut host);
        assert_eq!((h.kind, h.id), (Kind::Error, 3));
        assert_eq!(decode_error(&p).0, ErrorCode::EventTooLarge);
        put(&mut host, Kind::Response, 4, b"");
        let (h, p) = frame(&mut host);
        assert_eq!(decode_error(&p).0, ErrorCode::Protocol, "{h:?}");
        put(&mut host, Kind::Invoke, 5, b"");
        assert_eq!(frame(&mut host).0, Header::new(Kind::Response, 5, 0));
        // A Context over the limit is dropped without an answer.
        put(&mut host, Kind::Context, 6, &[b'x'; 9]);
        put(&mut host, Kind::Invoke, 6, b"who");
        assert_eq!(
            frame(&mut host),
            (Header::new(Kind::Response, 6, 0), Vec::new())
        );
        drop(host);
        assert!(agent.join().unwrap().is_ok());
    }

    #[test]
    fn a_context_goes_with_the_invoke_of_its_id() {
        let (mut host, mut guest) = UnixStream::pair().unwrap();
        let agent = std::thread::spawn(move || serve(&mut guest, "x", 64, &mut Upper));
        frame(&mut host);
        let mut ctx = Vec::new();
        kiln_protocol::pairs::put(&mut ctx, kiln_protocol::context::REQUEST_ID, "req-1").unwrap();
        put(&mut host, Kind::Context, 1, &ctx);
        put(&mut host, Kind::Invoke, 1, b"who");
        assert_eq!(
            frame(&mut host),
            (Header::new(Kind::Response, 1, 5), b"req-1".to_vec())
        );
        put(&mut host, Kind::Context, 99, &ctx);
        put(&mut host, Kind::Invoke, 2, b"who");
        assert_eq!(
            frame(&mut host),
            (Header::new(Kind::Response, 2, 0), Vec::new())
        );
        put(&mut host, Kind::Invoke, 3, b"who");
        assert_eq!(frame(&mut host).1, b"", "a context is used once");
        drop(host);
        assert!(agent.join().unwrap().is_ok());
    }

    #[test]
    fn a_garbled_header_ends_the_session_with_a_protocol_error() {
        let (mut host, mut guest) = UnixStream::pair().unwrap();
        let agent = std::thread::spawn(move || serve(&mut guest, "x", 8, &mut Upper));
        frame(&mut host);
        host.write_all(&[0xAB; HEADER_LEN]).unwrap();
        let (h, p) = frame(&mut host);
        assert_eq!(h.kind, Kind::Error);
        assert_eq!(decode_error(&p).0, ErrorCode::Protocol);
        assert!(matches!(
            agent.join().unwrap(),
            Err(AgentError::Header(HeaderError::BadMagic(_)))
        ));
    }

    #[test]
    fn exec_runs_the_handler_with_the_event_on_stdin() {
        let mut cat = Exec {
            path: "/bin/cat".into(),
            max_output: 1024,
        };
        let handled = cat.handle(&Context::empty(), b"{\"a\":1}");
        assert_eq!(handled.result.unwrap(), b"{\"a\":1}");
        assert!(handled.logs.is_empty());
        let mut small = Exec {
            path: "/bin/cat".into(),
            max_output: 4,
        };
        let f = small.run(b"0123456789").unwrap_err();
        assert!(f.message.contains("over the limit of 4 bytes"), "{f:?}");
        let mut missing = Exec {
            path: "/nonexistent/handler".into(),
            max_output: 4,
        };
        let f = missing.run(b"").unwrap_err();
        assert_eq!(f.code, ErrorCode::Handler);
        assert!(
            f.message.contains("cannot run /nonexistent/handler"),
            "{f:?}"
        );
        let mut fails = Exec {
            path: "/bin/false".into(),
            max_output: 4,
        };
        assert!(fails
            .run(b"")
            .unwrap_err()
            .message
            .contains("failed (exit status: 1)"));
    }

    #[test]
    fn the_command_line_names_the_executable_and_the_function() {
        assert_eq!(
            AgentConfig::from_cmdline("console=ttyS0 kiln.exec=/fn/handler quiet"),
            Some(AgentConfig {
                serve: Serve::Exec("/fn/handler".into()),
                name: "handler".into()
            })
        );
        assert_eq!(
            AgentConfig::from_cmdline("kiln.name=echo kiln.exec=/fn/run\n"),
            Some(AgentConfig {
                serve: Serve::Exec("/fn/run".into()),
                name: "echo".into()
            })
        );
        assert_eq!(
            AgentConfig::from_cmdline("kiln.lambda=/fn/lambda.conf kiln.name=py quiet"),
            Some(AgentConfig {
                serve: Serve::Lambda("/fn/lambda.conf".into()),
                name: "py".into()
            })
        );
        assert_eq!(
            AgentConfig::from_cmdline("kiln.lambda=/fn/lambda.conf"),
            Some(AgentConfig {
                serve: Serve::Lambda("/fn/lambda.conf".into()),
                name: "function".into()
            })
        );
        assert_eq!(AgentConfig::from_cmdline("console=ttyS0 kiln.exec="), None);
        assert_eq!(AgentConfig::from_cmdline("kiln.lambda="), None);
        assert_eq!(AgentConfig::from_cmdline(""), None);
    }
}
