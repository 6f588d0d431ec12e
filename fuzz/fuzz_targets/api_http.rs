//! The API as a client reaches it (`vmm/src/api/`): bytes on a connection go through the
//! server's connection handling (`server::ManualConn`: the same input buffer cap, HTTP
//! parser `http::parse_request` with its limits, pipelining, `Expect: 100-continue`, close
//! rules as `serve`), every parsed request is routed (`router::route`), and every routed
//! request is applied to the VMM thread's `controller::Controller` (the same resource setters
//! as the config file), with a stand-in microVM after `InstanceStart`.
//!
//! Input: byte 0 picks the payload limit (`--http-api-max-payload-size`: 0 to 255 bytes or
//! the default) and seeds the split of the rest into chunks, which the client sends one after
//! another (a request cut anywhere, or several in one read); bytes 1.. are the stream.
//!
//! Besides "no panic", every answer must be an HTTP/1.1 response line.
#![no_main]

use kiln_fuzz::Input;
use kiln_http::{self as http, Response};
use libfuzzer_sys::fuzz_target;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use vmm::api::server::ManualConn;
use vmm::api::{router, Action, ApiRequest, Limits, VmmData};
use vmm::controller::{Controller, Microvm, Outcome};
use vmm::resources::VmResources;

/// The microVM the controller sees after `InstanceStart`: runtime operations do nothing and
/// succeed, except every fifth, which fails.
struct StandIn(u32);

impl StandIn {
    fn op(&mut self) -> Result<(), String> {
        self.0 += 1;
        if self.0.is_multiple_of(5) {
            Err("stand-in failure".into())
        } else {
            Ok(())
        }
    }
}

impl Microvm for StandIn {
    fn pause(&mut self) -> Result<(), String> {
        self.op()
    }
    fn resume(&mut self) -> Result<(), String> {
        self.op()
    }
    fn send_ctrl_alt_del(&mut self) -> Result<(), String> {
        self.op()
    }
    fn update_drive(&mut self, _drive_id: &str, _path_on_host: &str) -> Result<(), String> {
        self.op()
    }
    fn update_drive_rate_limiter(
        &mut self,
        _drive_id: &str,
        _update: &vmm::resources::RateLimiterConfig,
    ) -> Result<(), String> {
        self.op()
    }
    fn update_net_rate_limiters(
        &mut self,
        _iface_id: &str,
        _rx: Option<&vmm::resources::RateLimiterConfig>,
        _tx: Option<&vmm::resources::RateLimiterConfig>,
    ) -> Result<(), String> {
        self.op()
    }
}

/// Applies a routed request as the VMM thread does (`VmmApi`), except that `PUT /logger`,
/// `PUT /metrics` and `FlushMetrics` are only validated: applying them opens files named by
/// the input.
fn apply(ctl: &mut Controller, vm: &mut StandIn, started: &mut bool, req: ApiRequest) -> Response {
    let reply = match req {
        ApiRequest::PutLogger(cfg) => cfg.validated().map(|_| VmmData::Empty).map_err(Into::into),
        ApiRequest::PutMetrics(cfg) => cfg.validated().map(|_| VmmData::Empty).map_err(Into::into),
        ApiRequest::Action(Action::FlushMetrics) => Ok(VmmData::Empty),
        req => {
            let running: Option<&mut dyn Microvm> = if *started { Some(vm) } else { None };
            match ctl.handle(req, running) {
                Outcome::Reply(r) => r,
                Outcome::Start => {
                    *started = true;
                    ctl.finish_start(Ok(()))
                }
                // A load would open the files the input names: refused as a failed load.
                Outcome::Load(_) => ctl.finish_load(Err("not loaded by the fuzz target".into())),
            }
        }
    };
    match reply {
        Ok(VmmData::Empty) => Response::no_content(),
        Ok(VmmData::Json(body)) => Response::json(body),
        Err(e) => Response::fault(400, &e.to_string()),
    }
}

/// Splits `data` into chunks whose sizes come from a small generator seeded by `seed`.
fn chunks(data: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut x = u32::from(seed) | 0x100;
    while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = if seed & 0x80 != 0 {
            1 + (x % 32) as usize
        } else {
            rest.len()
        };
        let (a, b) = rest.split_at(n.min(rest.len()));
        out.push(a);
        rest = b;
    }
    out
}

/// Reads every answer the server wrote so far and checks each starts as an HTTP/1.1 response.
fn drain(client: &mut UnixStream, answers: &mut Vec<u8>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answers.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    kiln_fuzz::setup();
    let mut input = Input::new(data);
    let knob = input.u8();
    let stream = input.rest();
    let limits = Limits {
        max_payload_size: if knob & 0x40 != 0 {
            usize::from(knob & 0x3f) * 4
        } else {
            http::DEFAULT_MAX_PAYLOAD_SIZE
        },
        ..Limits::default()
    };

    let (mut client, server) = UnixStream::pair().expect("socketpair");
    client.set_nonblocking(true).expect("nonblocking");
    let mut conn = ManualConn::new(server, limits).expect("the connection is set up");
    let mut ctl = Controller::new("fuzz", VmResources::default());
    let mut vm = StandIn(0);
    let mut started = false;
    let mut dispatch = |req: http::Request| {
        let (_, routed) = router::route(&req);
        match routed {
            Ok(api) => apply(&mut ctl, &mut vm, &mut started, api),
            Err(e) => {
                let mut r = Response::fault(e.status, &e.message);
                r.allow = e.allow;
                r
            }
        }
    };

    let mut answers = Vec::new();
    'send: for chunk in chunks(stream, knob) {
        let mut left = chunk;
        // A server that stopped reading (its buffer is full, or an answer waits) gets a
        // few turns; then the client gives up, as it would on a timeout.
        let mut stalls = 0;
        while !left.is_empty() {
            match client.write(left) {
                Ok(n) => left = &left[n..],
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    stalls += 1;
                    if stalls > 4 {
                        break 'send;
                    }
                }
                // The server closed the connection.
                Err(_) => break 'send,
            }
            conn.turn(&mut dispatch);
            drain(&mut client, &mut answers);
            if conn.is_closed() {
                break 'send;
            }
        }
    }
    let _ = client.shutdown(std::net::Shutdown::Write);
    for _ in 0..4 {
        if conn.is_closed() {
            break;
        }
        conn.turn(&mut dispatch);
        drain(&mut client, &mut answers);
    }
    drain(&mut client, &mut answers);

    kiln_fuzz::debug(|| String::from_utf8_lossy(&answers).into_owned());
    // Every answer is `HTTP/1.1 <status> ...`; walk them by their Content-Length.
    let mut rest = &answers[..];
    while !rest.is_empty() {
        assert!(
            rest.starts_with(b"HTTP/1.1 "),
            "not a response: {:?}",
            String::from_utf8_lossy(&rest[..rest.len().min(64)])
        );
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            panic!("a response without the end of its headers");
        };
        let head = std::str::from_utf8(&rest[..end]).expect("response headers are UTF-8");
        let body_len = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map(|v| v.parse::<usize>().expect("a numeric Content-Length"))
            .unwrap_or(0);
        let total = end + 4 + body_len;
        assert!(total <= rest.len(), "a response cut short");
        rest = &rest[total..];
    }
});
