//! The invocation protocol's frames (guest/protocol) on both ends of the vsock stream, with
//! a hostile peer on the other: the worker's frame reader (`worker/src/channel.rs`,
//! `Channel::read_frame` over a Unix socket pair, as the worker reads its guest: header
//! checks, the payload limit, a stream that ends mid-frame), the agent in a Linux guest
//! (`kiln_init::agent::serve`: Hello, `Context` and `Invoke` frames, oversized events
//! skipped, bad headers answered and ended on), and what the frames carry: `Error` payloads
//! (`decode_error`), `Context` payloads (`pairs`, `kiln_init::context::Context`), and the
//! worker's `InvocationContext::payload` read back by the agent.
//!
//! Input: byte 0 picks the receivers' payload limit (0 to 127 bytes, or the default 6 MiB),
//! the rest is the stream the peer sends (to the worker, and to the agent).
//!
//! Checks: every frame the worker reads has a valid header and a payload of its length
//! within the limit, and is exactly the next frame of the stream (a reference decoder);
//! the agent says Hello first, then answers each `Invoke` it accepts, in order, with its id
//! (an echo handler's `Response`, or `Error`), every frame it writes well formed; a context
//! the worker encodes reads back the same in the agent.
#![no_main]

use kiln_init::agent::{serve, Context, Handled, Handler};
use kiln_protocol::{decode_error, pairs, Header, Kind, DEFAULT_MAX_PAYLOAD, HEADER_LEN, MAGIC};
use kiln_worker::channel::{Channel, ChannelError};
use kiln_worker::context::InvocationContext;
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// The reference decoder: the next frame of `b` as the protocol's text defines it.
fn reference(b: &[u8], max: u32) -> Option<(u8, u32, &[u8])> {
    let head = b.get(..HEADER_LEN)?;
    let magic = u32::from_le_bytes(head[0..4].try_into().ok()?);
    let len = u32::from_le_bytes(head[12..16].try_into().ok()?);
    let ok = magic == MAGIC && (1..=6).contains(&head[4]) && head[5..8] == [0, 0, 0] && len <= max;
    if !ok {
        return None;
    }
    let id = u32::from_le_bytes(head[8..12].try_into().ok()?);
    let payload = b.get(HEADER_LEN..HEADER_LEN + len as usize)?;
    Some((head[4], id, payload))
}

/// Echoes the event, upper-cased; fails on an event starting with `!`.
struct Echo;

impl Handler for Echo {
    fn handle(&mut self, ctx: &Context, event: &[u8]) -> Handled {
        if event.first() == Some(&b'!') {
            return Err(kiln_init::agent::Failure {
                code: kiln_protocol::ErrorCode::Handler,
                message: format!("refused ({:?})", ctx.request_id),
            })
            .into();
        }
        Handled {
            result: Ok(event.to_ascii_uppercase()),
            logs: event.iter().take(8).copied().collect(),
        }
    }
}

/// The agent's stream: reads the input, keeps what it writes.
struct Pipe<'a> {
    input: &'a [u8],
    output: Vec<u8>,
}

impl Read for Pipe<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Pipe<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn worker_reads(stream: &[u8], max: u32) {
    let (mut peer, ours) = UnixStream::pair().expect("socketpair");
    peer.write_all(stream).expect("the stream fits the socket");
    drop(peer);
    let mut channel = Channel::new(ours, max);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut rest = stream;
    loop {
        match channel.read_frame(deadline) {
            Ok(f) => {
                let (kind, id, payload) =
                    reference(rest, max).expect("the worker read a frame the protocol refuses");
                assert_eq!((f.header.kind as u8, f.header.id), (kind, id));
                assert_eq!(f.payload, payload);
                rest = &rest[HEADER_LEN + payload.len()..];
                if f.header.kind == Kind::Error {
                    // The message, or a placeholder saying why there is none.
                    let (_, message) = decode_error(&f.payload);
                    let text = f.payload.get(2..).and_then(|m| std::str::from_utf8(m).ok());
                    assert!(
                        text == Some(message) || message.starts_with('<'),
                        "{message:?}"
                    );
                }
                if f.header.kind == Kind::Context {
                    let _ = Context::from_payload(&f.payload);
                }
            }
            Err(ChannelError::Closed) => {
                assert!(
                    reference(rest, max).is_none(),
                    "the worker stopped before a whole frame"
                );
                break;
            }
            Err(ChannelError::BadHeader(e)) => {
                assert!(reference(rest, max).is_none(), "refused a good header: {e}");
                break;
            }
            Err(e) => panic!("reading a stream in memory failed: {e}"),
        }
    }
}

fn agent_answers(stream: &[u8], max: u32) {
    let mut pipe = Pipe {
        input: stream,
        output: Vec::new(),
    };
    let result = serve(&mut pipe, "fuzz", max, &mut Echo);
    kiln_fuzz::debug(|| format!("agent: {result:?}, {} bytes out", pipe.output.len()));
    // The answers the agent owes, in order: one per whole frame but a Context (an Invoke's
    // Response or Error; an event too large, or another kind, an Error), and one for a
    // header it does not understand, which ends the session.
    let mut expected = Vec::new();
    let mut rest = stream;
    while let Some(head) = rest.get(..HEADER_LEN) {
        let head: &[u8; HEADER_LEN] = head.try_into().unwrap();
        let id = u32::from_le_bytes(head[8..12].try_into().unwrap());
        let len = u32::from_le_bytes(head[12..16].try_into().unwrap()) as usize;
        let whole = rest.len() >= HEADER_LEN + len;
        match Header::decode(head, max) {
            Ok(h) if whole => {
                if h.kind != Kind::Context {
                    expected.push(id);
                }
            }
            Err(kiln_protocol::HeaderError::TooLong { .. }) if whole => {
                if head[4] != Kind::Context as u8 {
                    expected.push(id);
                }
            }
            Ok(_) | Err(kiln_protocol::HeaderError::TooLong { .. }) => break,
            Err(_) => {
                expected.push(id);
                break;
            }
        }
        rest = &rest[HEADER_LEN + len..];
    }
    // What the agent wrote: Hello, then per answer (a Log, and) a Response or an Error.
    let mut out = &pipe.output[..];
    let mut hello = false;
    let mut answers = Vec::new();
    while !out.is_empty() {
        let (kind, id, payload) = reference(out, u32::MAX).expect("the agent wrote a bad frame");
        if !hello {
            assert_eq!((kind, payload), (Kind::Hello as u8, &b"fuzz"[..]));
            hello = true;
        } else if kind != Kind::Log as u8 {
            assert!(kind == Kind::Response as u8 || kind == Kind::Error as u8);
            answers.push(id);
        }
        out = &out[HEADER_LEN + payload.len()..];
    }
    assert!(hello, "no Hello");
    assert_eq!(answers, expected, "the agent's answers");
}

/// The worker's context, read back by the agent.
fn context_round_trip(stream: &[u8]) {
    let text = String::from_utf8_lossy(stream);
    let mut parts = text.split('\n');
    let mut next = || parts.next().map(str::to_string);
    let ctx = InvocationContext {
        request_id: next().unwrap_or_default(),
        function_arn: next().unwrap_or_default(),
        trace_id: next(),
        client_context: next(),
        cognito_identity: next(),
    };
    let payload = ctx.payload(Duration::from_millis(1234));
    let back = Context::from_payload(&payload);
    let same = |a: Option<&str>, b: Option<&String>| match b {
        Some(v) if !v.contains('\0') => assert_eq!(a, Some(v.as_str())),
        _ => assert_eq!(a, None),
    };
    same(back.request_id.as_deref(), Some(&ctx.request_id));
    same(back.function_arn.as_deref(), Some(&ctx.function_arn));
    same(back.trace_id.as_deref(), ctx.trace_id.as_ref());
    same(back.client_context.as_deref(), ctx.client_context.as_ref());
    same(
        back.cognito_identity.as_deref(),
        ctx.cognito_identity.as_ref(),
    );
    assert_eq!(back.remaining, Some(Duration::from_millis(1234)));
    for pair in pairs::iter(stream) {
        if pair.is_err() {
            break;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    kiln_fuzz::setup();
    let Some((&knob, stream)) = data.split_first() else {
        return;
    };
    let max = if knob & 0x80 != 0 {
        u32::from(knob & 0x7f)
    } else {
        DEFAULT_MAX_PAYLOAD
    };
    worker_reads(stream, max);
    agent_answers(stream, max);
    context_round_trip(stream);
});
