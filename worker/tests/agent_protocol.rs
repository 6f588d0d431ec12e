//! The Linux agent's invocation protocol, end to end on the host: `kiln-init agent --unix`
//! (the guest's agent code as a host process) against the worker's own channel code, over a
//! Unix socket instead of vsock. Guest user space cannot run on hosts whose KVM emulates
//! guest kernel code, so this is as far as Linux functions are tested there.

use kiln_protocol::{decode_error, ErrorCode, Kind, DEFAULT_MAX_PAYLOAD};
use kiln_tests::{require_bin, KillOnDrop, ScratchDir};
use kiln_worker::channel::{Channel, ChannelError};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The agent process, killed first when dropped, then its directory removed.
struct Agent {
    child: KillOnDrop,
    channel: Channel,
    _dir: ScratchDir,
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Starts the agent for `exec` (a script body, or an absolute program path) and takes its
/// Hello.
fn agent(name: &str, exec: &str) -> Agent {
    let dir = ScratchDir::new("kiln-agent");
    let exec = if exec.starts_with('/') {
        PathBuf::from(exec)
    } else {
        script(dir.path(), "handler", exec)
    };
    let sock = dir.join("v.sock_1024");
    let listener = UnixListener::bind(&sock).unwrap();
    let child = Command::new(require_bin("kiln-init"))
        .args(["agent", "--unix"])
        .arg(&sock)
        .arg("--exec")
        .arg(&exec)
        .args(["--name", name])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn kiln-init agent");
    let (stream, _) = listener.accept().unwrap();
    let mut channel = Channel::new(stream, DEFAULT_MAX_PAYLOAD);
    let hello = channel.read_frame(soon()).expect("hello");
    assert_eq!(hello.header.kind, Kind::Hello);
    assert_eq!(hello.payload, name.as_bytes());
    Agent {
        child: KillOnDrop::new(child),
        channel,
        _dir: dir,
    }
}

fn invoke(
    a: &mut Agent,
    id: u32,
    event: &[u8],
    deadline: Instant,
) -> Result<(Kind, Vec<u8>), ChannelError> {
    a.channel.send(Kind::Invoke, id, event, deadline)?;
    let f = a.channel.read_frame(deadline)?;
    assert_eq!(f.header.id, id, "answers carry the invocation's id");
    Ok((f.header.kind, f.payload))
}

#[test]
fn the_agent_answers_each_invocation_with_the_handlers_stdout() {
    let mut a = agent("echo", "/bin/cat");
    for (id, event) in [
        (1, &b"{\"hello\":\"world\"}"[..]),
        (2, b""),
        (3, &[0u8, 255, 10][..]),
    ] {
        let (kind, body) = invoke(&mut a, id, event, soon()).unwrap();
        assert_eq!((kind, body.as_slice()), (Kind::Response, event));
    }
    // A large event goes through whole.
    let big = vec![b'x'; 1 << 20];
    let (kind, body) = invoke(&mut a, 4, &big, soon()).unwrap();
    assert_eq!((kind, body.len()), (Kind::Response, big.len()));
    // The host hangs up: the agent ends cleanly.
    drop(std::mem::replace(
        &mut a.channel,
        Channel::new(std::os::unix::net::UnixStream::pair().unwrap().0, 1),
    ));
    let status = a.child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn a_failing_handler_is_a_handler_error_with_its_stderr_and_the_agent_goes_on() {
    let mut a = agent("fails", "cat >/dev/null; echo 'no such user' >&2; exit 3");
    let (kind, body) = invoke(&mut a, 1, b"{}", soon()).unwrap();
    assert_eq!(kind, Kind::Error);
    let (code, message) = decode_error(&body);
    assert_eq!(code, ErrorCode::Handler);
    assert!(
        message.contains("exit status: 3") && message.contains("no such user"),
        "{message}"
    );
    let (kind, _) = invoke(&mut a, 2, b"{}", soon()).unwrap();
    assert_eq!(kind, Kind::Error, "the next invocation is served too");
}

#[test]
fn a_handler_that_floods_its_output_is_killed_and_reported() {
    let mut a = agent("flood", "exec yes flood");
    let t = Instant::now();
    let (kind, body) = invoke(&mut a, 1, b"", soon()).unwrap();
    assert_eq!(kind, Kind::Error);
    let (code, message) = decode_error(&body);
    assert_eq!(code, ErrorCode::Handler);
    assert!(message.contains("over the limit"), "{message}");
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_hanging_handler_runs_into_the_workers_deadline() {
    let mut a = agent("hang", "exec sleep 3");
    let t = Instant::now();
    let err = invoke(&mut a, 1, b"", Instant::now() + Duration::from_millis(300)).unwrap_err();
    assert!(matches!(err, ChannelError::Timeout), "{err}");
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn an_event_over_the_agents_limit_is_refused_and_the_stream_stays_in_step() {
    let mut a = agent("big", "/bin/cat");
    let too_big = vec![0u8; DEFAULT_MAX_PAYLOAD as usize + 1];
    let (kind, body) = invoke(&mut a, 1, &too_big, soon()).unwrap();
    assert_eq!(kind, Kind::Error);
    assert_eq!(decode_error(&body).0, ErrorCode::EventTooLarge);
    let (kind, body) = invoke(&mut a, 2, b"after", soon()).unwrap();
    assert_eq!((kind, body.as_slice()), (Kind::Response, &b"after"[..]));
}
