//! The API thread end to end over a real Unix socket, with the controller on a stand-in VMM
//! thread and a fake microVM: keep-alive, pipelining, limits, slow and silent clients.

use super::stand_in::StandInVm;
use super::{Controller, Microvm, Outcome};
use crate::api::{start, Limits, RequestError};
use crate::resources::VmResources;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A test's API socket path, removed when the test is done (the server thread outlives it,
/// listening on a socket no one can reach any more).
struct SocketFile(PathBuf);

impl std::ops::Deref for SocketFile {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Starts an API server on a fresh socket, with a VMM thread answering through a controller.
fn serve(limits: Limits) -> SocketFile {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("kiln-api-unit-{}-{n}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let chan = start(&path, limits).unwrap();
    std::thread::spawn(move || {
        let mut c = Controller::new("unit", VmResources::default());
        let mut vm: Option<StandInVm> = None;
        loop {
            let _ = chan.wait(Duration::from_secs(1));
            let alive = chan.handle_pending(|r| {
                let reply = match c.handle(r, vm.as_mut().map(|v| v as &mut dyn Microvm)) {
                    Outcome::Reply(reply) => reply,
                    Outcome::Start => {
                        vm = Some(StandInVm::default());
                        c.finish_start(Ok(()))
                    }
                    Outcome::Load(_) => c.finish_load(Err("no snapshots here".into())),
                };
                reply.map_err(RequestError::from)
            });
            if !alive {
                return;
            }
        }
    });
    SocketFile(path)
}

fn connect(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads one response: (status, head, body). `None` on EOF before a status line.
fn read_response(s: &mut UnixStream) -> Option<(u16, String, String)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(0) | Err(_) => return None,
            Ok(_) => buf.push(byte[0]),
        }
    }
    let head = String::from_utf8(buf).unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .map(|v| v.trim().parse::<usize>().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    Some((status, head, String::from_utf8(body).unwrap()))
}

fn request(path: &Path, raw: &[u8]) -> (u16, String, String) {
    let mut s = connect(path);
    s.write_all(raw).unwrap();
    read_response(&mut s).expect("a response")
}

fn assert_alive(path: &Path) {
    let (status, _, body) = request(path, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"state\":\"Not started\""), "{body}");
}

fn assert_closed(s: &mut UnixStream) {
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "expected the server to close, got {:?}",
        String::from_utf8_lossy(&rest)
    );
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let path = serve(Limits::default());
    let mut s = connect(&path);
    for _ in 0..3 {
        s.write_all(b"GET /version HTTP/1.1\r\n\r\n").unwrap();
        let (status, _, body) = read_response(&mut s).unwrap();
        assert_eq!(status, 200);
        assert!(body.contains("firecracker_version"), "{body}");
    }
    s.write_all(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 37\r\n\r\n{\"vcpu_count\": 1, \"mem_size_mib\": 64}")
        .unwrap();
    let (status, head, body) = read_response(&mut s).unwrap();
    assert_eq!(status, 204, "{head}{body}");
    assert!(!head.contains("Content-Length"), "{head}");
    s.write_all(b"GET /machine-config HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (status, head, body) = read_response(&mut s).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"mem_size_mib\":64"), "{body}");
    assert!(head.contains("Connection: close"));
    assert_closed(&mut s);
}

#[test]
fn pipelined_requests_are_answered_in_order_and_garbage_closes() {
    let path = serve(Limits::default());
    let mut s = connect(&path);
    s.write_all(b"GET /version HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\nPATCH /vm HTTP/1.1\r\nContent-Length: 19\r\n\r\n{\"state\": \"Paused\"}GARBAGE \x01\x02\r\n\r\n")
        .unwrap();
    let (a, _, body_a) = read_response(&mut s).unwrap();
    let (b, _, body_b) = read_response(&mut s).unwrap();
    let (c, _, body_c) = read_response(&mut s).unwrap();
    let (d, head_d, _) = read_response(&mut s).unwrap();
    assert_eq!((a, b, c, d), (200, 200, 400, 400));
    assert!(body_a.contains("firecracker_version"));
    assert!(body_b.contains("Not started"));
    assert!(
        body_c.contains("only possible after InstanceStart"),
        "{body_c}"
    );
    assert!(head_d.contains("Connection: close"));
    assert_closed(&mut s);
    assert_alive(&path);
}

#[test]
fn table_of_bad_requests_gets_status_and_fault_message() {
    let path = serve(Limits {
        max_payload_size: 1000,
        ..Limits::default()
    });
    let big_header = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(10_000));
    let many: String = (0..40).map(|i| format!("X-{i}: 1\r\n")).collect();
    // Every refusal is 400, as Firecracker answers (a wrong verb also gets `Allow`).
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"GET /nope HTTP/1.1\r\n\r\n".to_vec(), 400, "no such path"),
        (
            b"GET /boot-source HTTP/1.1\r\n\r\n".to_vec(),
            400,
            "allowed: PUT",
        ),
        (
            b"DELETE /drives/x HTTP/1.1\r\n\r\n".to_vec(),
            400,
            "hot-unplugging devices is not supported by Kiln yet",
        ),
        (
            b"PUT /actions HTTP/1.1\r\n\r\n".to_vec(),
            400,
            "Content-Length",
        ),
        (
            b"PUT /actions HTTP/1.1\r\nContent-Length: 3\r\n\r\n{x}".to_vec(),
            400,
            "invalid JSON",
        ),
        (
            b"PUT /actions HTTP/1.1\r\nContent-Length: 1001\r\n\r\n".to_vec(),
            400,
            "larger than the limit of 1000",
        ),
        (
            b"PUT /actions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            400,
            "Transfer-Encoding",
        ),
        (big_header.into_bytes(), 400, "larger than"),
        (
            format!("GET / HTTP/1.1\r\n{many}\r\n").into_bytes(),
            400,
            "too many",
        ),
        (
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec(),
            400,
            "malformed",
        ),
        (b"GET / HTTP/3.0\r\n\r\n".to_vec(), 400, "version"),
    ];
    for (raw, status, word) in cases {
        let (got, head, body) = request(&path, &raw);
        assert_eq!(
            got,
            status,
            "{:?}: {head}{body}",
            String::from_utf8_lossy(&raw[..raw.len().min(60)])
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let msg = v["fault_message"].as_str().unwrap();
        assert!(msg.contains(word), "{msg:?} lacks {word:?}");
        if msg.contains("allowed: PUT") {
            assert!(head.contains("Allow: PUT\r\n"), "{head}");
        }
        assert_alive(&path);
    }
}

#[test]
fn silent_and_trickling_clients_block_no_one_and_time_out() {
    let path = serve(Limits {
        request_timeout: Duration::from_millis(300),
        ..Limits::default()
    });
    let _silent = connect(&path);
    let mut partial = connect(&path);
    partial
        .write_all(b"PUT /actions HTTP/1.1\r\nContent-Len")
        .unwrap();
    let t = Instant::now();
    assert_alive(&path);
    assert!(
        t.elapsed() < Duration::from_millis(250),
        "served in {:?}",
        t.elapsed()
    );
    // The partial request gets 408 at its deadline and is closed.
    let (status, _, body) = read_response(&mut partial).expect("a 408");
    assert_eq!(status, 408, "{body}");
    assert_closed(&mut partial);
    // The silent client is idle, not mid-request: it is kept and can still talk.
    let mut silent = _silent;
    silent.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut silent).unwrap().0, 200);
}

#[test]
fn a_client_that_does_not_read_its_answers_blocks_no_one() {
    let path = serve(Limits {
        request_timeout: Duration::from_millis(500),
        ..Limits::default()
    });
    let mut greedy = connect(&path);
    greedy.set_nonblocking(true).unwrap();
    let req = b"GET /vm/config HTTP/1.1\r\n\r\n".repeat(1000);
    let mut sent = 0;
    let t = Instant::now();
    while sent < req.len() && t.elapsed() < Duration::from_secs(2) {
        match greedy.write(&req[sent..]) {
            Ok(n) => sent += n,
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    assert_alive(&path);
    // After its deadline the non-reading client is dropped; the server still answers.
    std::thread::sleep(Duration::from_millis(700));
    assert_alive(&path);
}

#[test]
fn connection_limit_evicts_the_longest_idle_client() {
    let path = serve(Limits {
        max_connections: 2,
        ..Limits::default()
    });
    let mut first = connect(&path);
    first.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut first).unwrap().0, 200);
    let _second = connect(&path);
    std::thread::sleep(Duration::from_millis(50));
    assert_alive(&path); // a third client: the first (longest idle) makes room
    assert_closed(&mut first);
}

#[test]
fn expect_100_continue_gets_an_interim_answer() {
    let path = serve(Limits::default());
    let mut s = connect(&path);
    s.write_all(
        b"PATCH /machine-config HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 19\r\n\r\n",
    )
    .unwrap();
    let (status, _, _) = read_response(&mut s).unwrap();
    assert_eq!(status, 100);
    s.write_all(b"{\"mem_size_mib\": 32}"[..19].as_ref())
        .unwrap();
    // 19 bytes: `{"mem_size_mib": 32` — invalid JSON, answered 400 on the same connection.
    let (status, _, body) = read_response(&mut s).unwrap();
    assert_eq!(status, 400, "{body}");
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s).unwrap().0, 200);
}

#[test]
fn http_1_0_closes_after_the_answer() {
    let path = serve(Limits::default());
    let mut s = connect(&path);
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let (status, head, _) = read_response(&mut s).unwrap();
    assert_eq!(status, 200);
    assert!(head.contains("Connection: close"));
    assert_closed(&mut s);
}
