//! Fast tier: virtio-vsock with Firecracker's host side (Unix sockets), with the tiny test
//! guest.
//!
//! Each test runs the VMM with `"vsock": {"guest_cid": 3, "uds_path": "<dir>/v.sock"}`:
//!
//! - guest → host: the test listens on `<uds_path>_<port>` before the VM boots; the guest
//!   (`vsock-connect`) connects, sends a message, prints the answer and shuts down;
//! - host → guest: the test connects to `uds_path`, writes `CONNECT <port>\n`, expects
//!   `OK <host port>\n`, and the guest (`vsock-listen`) echoes a message in upper case;
//! - hostile: `vsock-bad`'s packets get RSTs or nothing, the VMM stays up, counters move;
//! - host peers that send garbage, nothing at all, or ask for a port nobody listens on are
//!   closed, and the device serves the next connection.
//!
//! The VMM runs under the built-in seccomp policies (policies/seccomp/) with the vsock
//! device's rules ([`VSOCK_SECCOMP_RULES`]) added to the `vmm` filter wherever it has no rule
//! for that syscall yet, through `--seccomp-filter`: the tests fail if the device needs a
//! syscall outside that list.
//!
//! Needs /dev/kvm and the `vmm` binary. Round-trip times are printed (`--nocapture`).

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_tests::metrics::Metrics;
use kiln_tests::process::Followed;
use kiln_tests::tiny::{self, TinyOutput};
use kiln_tests::{require_bin, require_kvm, ScratchDir};

const TIMEOUT: Duration = Duration::from_secs(40);
/// What the guest's `vsock-connect` sends (guest/tiny/src/scenarios/vsock.rs).
const GUEST_MESSAGE: &[u8] = b"KILN-TINY-VSOCK hello from the guest";
const HOST_REPLY: &[u8] = b"KILN-HOST reply to the guest";
const HOST_MESSAGE: &[u8] = b"hello from the host, kiln";
/// The first host port the VMM gives host-initiated connections (as Firecracker).
const FIRST_HOST_PORT: u32 = 1 << 30;

/// What the vsock device does on the VMM thread beyond the run loop's `epoll_wait`,
/// `epoll_ctl`, `read`, `write` and `close`: (syscall, [(argument index, value)]) — each entry
/// one rule, the arguments all equal.
pub const VSOCK_SECCOMP_RULES: &[(&str, &[(u32, u64)])] = &[
    // Guest connections to <uds_path>_<port>: AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK |
    // SOCK_CLOEXEC; connect never blocks.
    ("socket", &[(0, 1), (1, 0x80801)]),
    ("connect", &[]),
    // Host connections on uds_path: SOCK_NONBLOCK | SOCK_CLOEXEC.
    ("accept4", &[(3, 0x80800)]),
    // MSG_DONTWAIT | MSG_NOSIGNAL.
    ("sendto", &[(3, 0x4040)]),
    // MSG_DONTWAIT; MSG_DONTWAIT | MSG_PEEK (the CONNECT line).
    ("recvfrom", &[(3, 0x40)]),
    ("recvfrom", &[(3, 0x42)]),
    // The guest's SHUTDOWN(SEND): SHUT_WR.
    ("shutdown", &[(1, 1)]),
    // The timeouts' timerfd: relative, one-shot.
    ("timerfd_settime", &[(1, 0)]),
];

/// Writes the built-in filter set with [`VSOCK_SECCOMP_RULES`] added; returns its path.
fn seccomp_filter(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .join("policies/seccomp");
    let load = |kind: &str| {
        let path = root.join(format!("{kind}.json"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        v[kind].clone()
    };
    let mut vmm = load("vmm");
    let rules = vmm["filter"].as_array_mut().expect("a filter list");
    let known: Vec<String> = rules
        .iter()
        .filter_map(|r| r["syscall"].as_str().map(str::to_string))
        .collect();
    for (syscall, args) in VSOCK_SECCOMP_RULES {
        if known.iter().any(|k| k == syscall) {
            continue;
        }
        let mut rule = serde_json::json!({ "syscall": syscall });
        if !args.is_empty() {
            rule["args"] = args
                .iter()
                .map(|(index, val)| {
                    serde_json::json!({"index": index, "type": "dword", "op": "eq", "val": val})
                })
                .collect();
        }
        rules.push(rule);
    }
    let set = serde_json::json!({"api": load("api"), "vmm": vmm, "vcpu": load("vcpu")});
    let path = dir.join("seccomp.json");
    std::fs::write(&path, set.to_string()).expect("write the filter set");
    path
}

/// The test's scratch directory, which holds the VMM's vsock sockets.
struct Scratch(ScratchDir);

impl Scratch {
    fn new() -> Self {
        // Short: a Unix socket path holds 107 bytes.
        Scratch(ScratchDir::short("kvs"))
    }

    fn uds(&self) -> PathBuf {
        self.0.join("v.sock")
    }

    /// `<uds_path>_<port>`.
    fn port_path(&self, port: u32) -> PathBuf {
        self.0.join(format!("v.sock_{port}"))
    }
}

/// The running VMM, its guest's lines followed.
struct Run(Followed);

impl Run {
    fn start(dir: &Scratch, boot_args: &str) -> Run {
        require_kvm();
        let text = format!(
            "{{\"boot-source\": {{\"kernel_image_path\": {:?}, \"boot_args\": {boot_args:?}}},\n \"machine-config\": {{\"vcpu_count\": 1, \"mem_size_mib\": 32}},\n \"vsock\": {{\"guest_cid\": 3, \"uds_path\": {:?}}}}}\n",
            tiny::tiny_guest().to_str().expect("utf-8 path"),
            dir.uds().to_str().expect("utf-8 path"),
        );
        let cfg = dir.0.write("vm.json", text);
        let mut cmd = std::process::Command::new(require_bin("vmm"));
        cmd.arg("--config-file")
            .arg(&cfg)
            .arg("--no-api")
            .arg("--seccomp-filter")
            .arg(seccomp_filter(dir.0.path()))
            .arg("--metrics-path")
            .arg(dir.0.join("metrics.json"));
        Run(Followed::spawn(&mut cmd))
    }

    /// Waits for a guest line ending with `suffix`.
    fn wait_line(&mut self, suffix: &str) {
        let left = TIMEOUT.saturating_sub(self.0.started().elapsed());
        assert!(
            self.0.wait_line(suffix, left),
            "the guest never printed `{suffix}`; output:\n{}",
            self.0.seen()
        );
    }

    /// Waits for the VMM to end; returns the guest's output and everything seen, for
    /// messages.
    fn finish(self) -> (TinyOutput, String) {
        let f = self.0.finish(TIMEOUT);
        (tiny::assert_clean_run(&f), f.to_string())
    }
}

fn metric(dir: &Scratch, name: &str) -> u64 {
    Metrics::read(&dir.0.join("metrics.json")).sum(name)
}

/// Accepts one connection within the timeout.
fn accept(l: &UnixListener) -> UnixStream {
    l.set_nonblocking(true).expect("nonblocking listener");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).expect("blocking stream");
                s.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
                return s;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("no guest connection: {e}"),
        }
    }
}

/// True when the peer closed `s` (end of file, or a reset) without sending anything more.
fn closed(s: &mut UnixStream) -> bool {
    let mut buf = [0u8; 64];
    match kiln_tests::io::read_some(s, &mut buf) {
        Ok(0) => true,
        Ok(n) => panic!("expected the stream closed, got {:?}", &buf[..n]),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
        Err(e) => panic!("expected the stream closed, got {e}"),
    }
}

/// Connects to the VMM's socket and sends `line`.
fn host_connect(dir: &Scratch, line: &[u8]) -> UnixStream {
    let mut s = UnixStream::connect(dir.uds()).expect("connect to uds_path");
    s.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
    s.write_all(line).expect("write");
    s
}

/// Reads up to and including a newline (at most 64 bytes).
fn read_line(s: &mut UnixStream) -> Option<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 64 {
        match kiln_tests::io::read_some(s, &mut b) {
            Ok(1) => {
                line.push(b[0]);
                if b[0] == b'\n' {
                    return Some(String::from_utf8_lossy(&line).into_owned());
                }
            }
            _ => return None,
        }
    }
    None
}

/// The host side of a `vsock-listen` exchange on port `port`: CONNECT, OK, message, echo,
/// end of file. Returns (CONNECT → OK, message → echo) times.
fn talk_to_listener(dir: &Scratch, port: u32) -> (Duration, Duration) {
    let t0 = Instant::now();
    let mut s = host_connect(dir, format!("CONNECT {port}\n").as_bytes());
    let ok = read_line(&mut s).expect("an OK line");
    let connected = t0.elapsed();
    let host_port: u32 = ok
        .strip_prefix("OK ")
        .and_then(|p| p.strip_suffix('\n'))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not an OK line: {ok:?}"));
    assert!(host_port >= FIRST_HOST_PORT, "{ok:?}");
    let t1 = Instant::now();
    s.write_all(HOST_MESSAGE).expect("write the message");
    let mut echo = vec![0u8; HOST_MESSAGE.len()];
    s.read_exact(&mut echo).expect("the echo");
    let echoed = t1.elapsed();
    assert_eq!(echo, HOST_MESSAGE.to_ascii_uppercase());
    assert!(closed(&mut s), "the guest's shutdown closes the stream");
    (connected, echoed)
}

fn check_listener_lines(out: &TinyOutput, port: u32, all: &str) {
    let accepted = out.topic("vsock accepted");
    assert_eq!(accepted.len(), 1, "{all}");
    assert_eq!(
        tiny::field(&accepted[0], "port"),
        Some(port.to_string().as_str()),
        "{all}"
    );
    let got = out.value("vsock got len").unwrap_or_default();
    assert!(
        got.ends_with(&format!("data={}", String::from_utf8_lossy(HOST_MESSAGE))),
        "{all}"
    );
    assert!(out.lines.iter().any(|l| l == "vsock closed op=3"), "{all}");
}

#[test]
fn guest_to_host_round_trip() {
    let dir = Scratch::new();
    // The host worker listens before the VM boots.
    let listener = UnixListener::bind(dir.port_path(1234)).expect("bind <uds>_1234");
    let run = Run::start(&dir, "kiln.test=vsock-connect kiln.port=1234");
    let mut s = accept(&listener);
    let mut msg = vec![0u8; GUEST_MESSAGE.len()];
    s.read_exact(&mut msg).expect("the guest's message");
    assert_eq!(msg, GUEST_MESSAGE);
    let t = Instant::now();
    s.write_all(HOST_REPLY).expect("reply");
    assert!(closed(&mut s), "the guest's shutdown closes the stream");
    let reply_to_close = t.elapsed();
    let (out, all) = run.finish();
    let connected = out.topic("vsock connected");
    assert_eq!(connected.len(), 1, "{all}");
    let reply = out.value("vsock reply len").unwrap_or_default();
    assert!(
        reply.ends_with(&format!("data={}", String::from_utf8_lossy(HOST_REPLY))),
        "{all}"
    );
    assert!(out.lines.iter().any(|l| l == "vsock closed op=3"), "{all}");
    assert_eq!(
        metric(&dir, "vsock.tx_bytes_count"),
        GUEST_MESSAGE.len() as u64,
        "{all}"
    );
    assert_eq!(
        metric(&dir, "vsock.rx_bytes_count"),
        HOST_REPLY.len() as u64,
        "{all}"
    );
    assert_eq!(metric(&dir, "vsock.conns_added"), 1, "{all}");
    assert_eq!(metric(&dir, "vsock.conns_removed"), 1, "{all}");
    eprintln!(
        "guest->host: connect {} cycles, message->reply {} cycles (guest TSC); host reply->close {:?}",
        tiny::field(&connected[0], "cycles").unwrap_or("?"),
        out.topic("vsock reply")
            .first()
            .and_then(|f| tiny::field(f, "cycles"))
            .unwrap_or("?"),
        reply_to_close
    );
}

#[test]
fn host_to_guest_round_trip() {
    let dir = Scratch::new();
    let mut run = Run::start(&dir, "kiln.test=vsock-listen kiln.port=5000");
    run.wait_line("vsock listen port=5000");
    let (connected, echoed) = talk_to_listener(&dir, 5000);
    let (out, all) = run.finish();
    check_listener_lines(&out, 5000, &all);
    assert_eq!(
        metric(&dir, "vsock.tx_bytes_count"),
        HOST_MESSAGE.len() as u64,
        "{all}"
    );
    assert_eq!(
        metric(&dir, "vsock.rx_bytes_count"),
        HOST_MESSAGE.len() as u64,
        "{all}"
    );
    eprintln!("host->guest: CONNECT->OK {connected:?}, message->echo {echoed:?}");
}

#[test]
fn hostile_packets_get_rsts_and_the_vmm_survives() {
    let dir = Scratch::new();
    let listener = UnixListener::bind(dir.port_path(1234)).expect("bind <uds>_1234");
    // Nobody listens on 1235: the `refused` case.
    let run = Run::start(&dir, "kiln.test=vsock-bad kiln.port=1234");
    let mut s = accept(&listener);
    let mut msg = vec![0u8; GUEST_MESSAGE.len()];
    s.read_exact(&mut msg).expect("the guest's message");
    s.write_all(HOST_REPLY).expect("reply");
    assert!(closed(&mut s));
    let (out, all) = run.finish();
    let answers: Vec<(String, String)> = out
        .topic("vsock bad")
        .iter()
        .map(|f| {
            (
                tiny::field(f, "case").unwrap_or("").to_string(),
                tiny::field(f, "answer").unwrap_or("").to_string(),
            )
        })
        .collect();
    let want = [
        ("src_cid", "none"),
        ("dst_cid", "none"),
        ("short", "none"),
        ("op", "rst"),
        ("type", "rst"),
        ("len", "rst"),
        ("unknown", "rst"),
        ("refused", "rst"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(c, a)| (c.to_string(), a.to_string()))
        .collect();
    assert_eq!(answers, want, "{all}");
    // ... and a normal connection afterwards.
    assert_eq!(out.topic("vsock connected").len(), 1, "{all}");
    assert!(out.value("vsock reply len").is_some(), "{all}");
    assert!(metric(&dir, "vsock.bad_cid_packets") >= 2, "{all}");
    assert!(metric(&dir, "vsock.bad_packets") >= 3, "{all}");
    assert!(metric(&dir, "vsock.malformed_packets") >= 1, "{all}");
    assert!(metric(&dir, "vsock.unknown_conn_packets") >= 1, "{all}");
    assert!(metric(&dir, "vsock.conns_refused") >= 1, "{all}");
    assert!(metric(&dir, "vsock.rst_sent") >= 6, "{all}");
}

#[test]
fn garbage_silence_and_overlong_lines_are_closed() {
    let dir = Scratch::new();
    let mut run = Run::start(&dir, "kiln.test=vsock-listen kiln.port=5000");
    run.wait_line("vsock listen port=5000");
    let mut silent = host_connect(&dir, b"");
    let mut garbage = host_connect(&dir, b"GET / HTTP/1.1\r\n\r\n");
    let mut long = host_connect(&dir, &[b'7'; 200]);
    let mut bad_port = host_connect(&dir, b"CONNECT 99999999999\n");
    for s in [&mut garbage, &mut long, &mut bad_port] {
        assert!(closed(s));
    }
    // No line at all: closed after the timeout (5 s, checked every 250 ms).
    let t = Instant::now();
    assert!(closed(&mut silent));
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(8),
        "{waited:?}"
    );
    // The device still serves the next host.
    talk_to_listener(&dir, 5000);
    let (out, all) = run.finish();
    check_listener_lines(&out, 5000, &all);
    assert!(metric(&dir, "vsock.host_connects_rejected") >= 4, "{all}");
}

#[test]
fn connect_to_a_port_nobody_listens_on_closes_the_host_socket() {
    let dir = Scratch::new();
    let mut run = Run::start(&dir, "kiln.test=vsock-listen kiln.port=5000");
    run.wait_line("vsock listen port=5000");
    // The guest answers the REQUEST for 6000 with an RST: no OK, the stream is closed.
    let mut s = host_connect(&dir, b"CONNECT 6000\n");
    assert!(closed(&mut s));
    talk_to_listener(&dir, 5000);
    let (out, all) = run.finish();
    assert_eq!(out.value("vsock refused port"), Some("6000"), "{all}");
    check_listener_lines(&out, 5000, &all);
}

#[test]
fn an_existing_socket_file_is_a_clear_error() {
    require_kvm();
    let dir = Scratch::new();
    std::fs::write(dir.uds(), b"stale").expect("write a stale file");
    let cfg = dir.0.join("vm.json");
    let text = format!(
        "{{\"boot-source\": {{\"kernel_image_path\": {:?}, \"boot_args\": \"kiln.test=print\"}},\n \"vsock\": {{\"guest_cid\": 3, \"uds_path\": {:?}}}}}\n",
        tiny::tiny_guest().to_str().expect("utf-8 path"),
        dir.uds().to_str().expect("utf-8 path"),
    );
    std::fs::write(&cfg, text).expect("write config");
    let f = kiln_tests::run_with_timeout(
        std::process::Command::new(require_bin("vmm"))
            .arg("--config-file")
            .arg(&cfg)
            .arg("--no-api"),
        TIMEOUT,
    );
    assert_ne!(f.code(), 0, "{f}");
    assert!(f.stderr.contains("already exists"), "{f}");
    assert!(!f.stdout.contains("KILN-TINY: start"), "never booted\n{f}");
}
