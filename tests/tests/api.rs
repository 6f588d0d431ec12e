//! The HTTP API of the real `vmm --api-sock PATH`, driven over its Unix socket: raw HTTP
//! with std's `UnixStream` (to send malformed things), and docs/api.md's getting-started
//! sequence with the real `curl --unix-socket`, booting the tiny guest.
//!
//! Every bad request is followed by a check that the VMM still answers `GET /`.

use kiln_tests::{require_bin, require_kvm, tiny, unique_id};
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `vmm` with its API socket, output captured.
struct Vmm {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// From spawn to the first answered `GET /`.
    api_ready_after: Duration,
}

fn capture<R: Read + Send + 'static>(mut r: R) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let out = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            out.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

fn temp_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_id(prefix));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Vmm {
    /// Starts `vmm --api-sock <dir>/api.sock <extra...>` and waits until `GET /` answers.
    fn start(extra: &[&str]) -> Vmm {
        let dir = temp_dir("kiln-api");
        let sock = dir.join("api.sock");
        let spawned = Instant::now();
        let mut child = Command::new(require_bin("vmm"))
            .arg("--api-sock")
            .arg(&sock)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmm");
        let stdout = capture(child.stdout.take().unwrap());
        let stderr = capture(child.stderr.take().unwrap());
        let mut vmm = Vmm {
            child,
            dir,
            sock,
            stdout,
            stderr,
            api_ready_after: Duration::ZERO,
        };
        loop {
            if let Ok(mut s) = UnixStream::connect(&vmm.sock) {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
                if let Some((200, _, _)) = read_response(&mut s) {
                    vmm.api_ready_after = spawned.elapsed();
                    return vmm;
                }
            }
            if let Ok(Some(status)) = vmm.child.try_wait() {
                panic!(
                    "vmm exited with {status} before answering\n{}",
                    vmm.stderr()
                );
            }
            assert!(
                spawned.elapsed() < Duration::from_secs(10),
                "the API never answered\n{}",
                vmm.stderr()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn connect(&self) -> UnixStream {
        let s = UnixStream::connect(&self.sock).expect("connect to the API socket");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    /// Sends raw bytes on a new connection and reads one response.
    fn raw(&self, bytes: &[u8]) -> (u16, String, String) {
        let mut s = self.connect();
        // The server may answer and close before taking everything (413, 431): the answer is
        // still there to read.
        let _ = s.write_all(bytes);
        read_response(&mut s).unwrap_or_else(|| {
            panic!(
                "no response to {:?}\n{}",
                String::from_utf8_lossy(bytes),
                self.stderr()
            )
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let req = match body {
            Some(b) => format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()),
            None => format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        };
        let (status, _, body) = self.raw(req.as_bytes());
        (status, body)
    }

    fn get(&self, path: &str) -> Value {
        let (status, body) = self.call("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// A PUT or PATCH that must succeed with 204.
    fn ok(&self, method: &str, path: &str, body: &str) {
        let (status, answer) = self.call(method, path, Some(body));
        assert_eq!(
            status,
            204,
            "{method} {path} {body}: {answer}\n{}",
            self.stderr()
        );
        assert!(answer.is_empty());
    }

    /// A request that must fail with `status`; returns its fault message.
    fn fault(&self, method: &str, path: &str, body: Option<&str>, status: u16) -> String {
        let (got, answer) = self.call(method, path, body);
        assert_eq!(got, status, "{method} {path} {body:?}: {answer}");
        let v: Value =
            serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{answer:?} is not JSON: {e}"));
        v["fault_message"]
            .as_str()
            .expect("fault_message")
            .to_string()
    }

    fn state(&self) -> String {
        self.get("/")["state"].as_str().unwrap().to_string()
    }

    /// The VMM is up and answers `GET /`.
    fn assert_alive(&self, after: &str) {
        let (status, body) = self.call("GET", "/", None);
        assert_eq!(
            status,
            200,
            "GET / after {after}: {body}\n{}",
            self.stderr()
        );
    }

    fn serial(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    fn wait_for(&self, what: &str, timeout: Duration, cond: impl Fn(&Vmm) -> bool) {
        let t = Instant::now();
        while !cond(self) {
            assert!(
                t.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}\n--- serial:\n{}\n--- stderr:\n{}",
                self.serial(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads one HTTP response: (status, head, body); `None` on EOF or timeout first.
fn read_response(s: &mut UnixStream) -> Option<(u16, String, String)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8(head).ok()?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let len = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        })
        .map(|(_, v)| v.trim().parse::<usize>().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some((status, head, String::from_utf8(body).ok()?))
}

fn closed(s: &mut UnixStream) -> bool {
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).is_ok() && rest.is_empty()
}

/// A regular file to use as a kernel path or disk image in configuration-only tests.
fn scratch_file(dir: &Path, name: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, vec![0u8; 4096]).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn api_answers_instance_info_and_version_before_boot() {
    let vmm = Vmm::start(&[]);
    let info = vmm.get("/");
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["app_name"], "Kiln");
    assert!(
        info["id"].is_string() && info["vmm_version"].is_string(),
        "{info}"
    );
    assert!(vmm.get("/version")["firecracker_version"].is_string());
    let mc = vmm.get("/machine-config");
    assert_eq!(
        (mc["vcpu_count"].as_u64(), mc["mem_size_mib"].as_u64()),
        (Some(1), Some(128))
    );
    eprintln!("process spawn -> GET / answered: {:?}", vmm.api_ready_after);
    let (status, head, _) = vmm.raw(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 37\r\n\r\n{\"vcpu_count\": 2, \"mem_size_mib\": 64}");
    assert_eq!(status, 204, "{head}");
    assert!(head.starts_with("HTTP/1.1 204 No Content\r\n"), "{head}");
}

#[test]
fn table_of_endpoint_successes_before_boot() {
    let vmm = Vmm::start(&[]);
    let kernel = scratch_file(&vmm.dir, "vmlinux");
    let disk = scratch_file(&vmm.dir, "rootfs.ext4");
    let disk2 = scratch_file(&vmm.dir, "data.ext4");
    let log = vmm.dir.join("kiln.log");
    let metrics = vmm.dir.join("metrics.fifo-or-file");
    let cases: Vec<(&str, &str, String)> = vec![
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": false}"#.into(),
        ),
        ("PATCH", "/machine-config", r#"{"mem_size_mib": 64}"#.into()),
        (
            "PUT",
            "/boot-source",
            format!(
                r#"{{"kernel_image_path": "{kernel}", "boot_args": "console=ttyS0 reboot=k panic=1"}}"#
            ),
        ),
        (
            "PUT",
            "/drives/rootfs",
            format!(
                r#"{{"drive_id": "rootfs", "path_on_host": "{disk}", "is_root_device": true, "is_read_only": false}}"#
            ),
        ),
        (
            "PUT",
            "/drives/data",
            format!(
                r#"{{"drive_id": "data", "path_on_host": "{disk2}", "is_root_device": false, "is_read_only": true, "cache_type": "Writeback"}}"#
            ),
        ),
        (
            "PUT",
            "/drives/data",
            format!(
                r#"{{"drive_id": "data", "path_on_host": "{disk2}", "is_root_device": false}}"#
            ),
        ),
        (
            "PUT",
            "/network-interfaces/net1",
            r#"{"iface_id": "net1", "guest_mac": "06:00:AC:10:00:02", "host_dev_name": "tap0"}"#
                .into(),
        ),
        (
            "PUT",
            "/vsock",
            format!(
                r#"{{"guest_cid": 3, "uds_path": "{}/v.sock"}}"#,
                vmm.dir.display()
            ),
        ),
        (
            "PUT",
            "/logger",
            format!(
                r#"{{"log_path": "{}", "level": "Debug", "show_level": true, "show_log_origin": true}}"#,
                log.display()
            ),
        ),
        ("PUT", "/logger", r#"{"level": "info"}"#.into()),
        (
            "PUT",
            "/metrics",
            format!(r#"{{"metrics_path": "{}"}}"#, metrics.display()),
        ),
        (
            "PUT",
            "/actions",
            r#"{"action_type": "FlushMetrics"}"#.into(),
        ),
    ];
    for (method, path, body) in &cases {
        vmm.ok(method, path, body);
    }
    let cfg = vmm.get("/vm/config");
    assert_eq!(cfg["machine-config"]["vcpu_count"], 2);
    assert_eq!(cfg["machine-config"]["mem_size_mib"], 64);
    assert_eq!(cfg["boot-source"]["kernel_image_path"], kernel.as_str());
    assert_eq!(cfg["drives"].as_array().unwrap().len(), 2);
    assert_eq!(cfg["drives"][0]["drive_id"], "rootfs");
    assert_eq!(
        cfg["network-interfaces"][0]["guest_mac"],
        "06:00:ac:10:00:02"
    );
    assert_eq!(cfg["vsock"]["guest_cid"], 3);
    assert_eq!(cfg["logger"]["level"], "Info");
    assert_eq!(vmm.get("/machine-config")["mem_size_mib"], 64);

    // The logger file has the requests, with level and origin.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("[DEBUG]") || text.contains("[INFO]"),
        "{text}"
    );
    assert!(text.contains("PUT /metrics"), "{text}");
    // FlushMetrics wrote one JSON line counting the requests by endpoint.
    let lines = std::fs::read_to_string(&metrics).unwrap();
    let line: Value = serde_json::from_str(lines.lines().next().expect("a metrics line")).unwrap();
    assert_eq!(line["put_api_requests"]["drive_count"], 3);
    assert_eq!(line["patch_api_requests"]["machine_cfg_count"], 1);
    assert_eq!(line["put_api_requests"]["actions_count"], 1);
    assert!(line["utc_timestamp_ms"].as_u64().unwrap() > 0);
    assert!(
        line["api_server"]["process_startup_time_us"]
            .as_u64()
            .unwrap()
            > 0
    );
    vmm.ok("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#);
    let lines = std::fs::read_to_string(&metrics).unwrap();
    let second: Value = serde_json::from_str(lines.lines().nth(1).expect("a second line")).unwrap();
    assert_eq!(
        second["put_api_requests"]["drive_count"], 0,
        "counters restart at each line"
    );
    assert_eq!(second["put_api_requests"]["actions_count"], 1);
}

#[test]
fn table_of_endpoint_failures_before_boot() {
    let vmm = Vmm::start(&[]);
    let file = scratch_file(&vmm.dir, "file");
    let dir = vmm.dir.display().to_string();
    // (method, path, body, status, words the fault message contains)
    let cases: Vec<(&str, &str, Option<String>, u16, &str)> = vec![
        ("GET", "/nope", None, 404, "no such path"),
        ("GET", "/drives/a/b", None, 404, "no such path"),
        (
            "PUT",
            "/mmds",
            Some("{}".into()),
            404,
            "not implemented by Kiln",
        ),
        (
            "PUT",
            "/snapshot/create",
            Some("{}".into()),
            404,
            "not implemented by Kiln",
        ),
        ("POST", "/actions", Some("{}".into()), 405, "allowed: PUT"),
        ("DELETE", "/drives/rootfs", None, 405, "allowed: PUT, PATCH"),
        ("GET", "/boot-source", None, 405, "allowed: PUT"),
        ("PUT", "/", Some("{}".into()), 405, "allowed: GET"),
        ("PUT", "/vm", Some("{}".into()), 405, "allowed: PATCH"),
        ("PUT", "/actions", None, 400, "Content-Length"),
        ("PUT", "/actions", Some("{".into()), 400, "invalid JSON"),
        (
            "PUT",
            "/actions",
            Some(r#"{"action_type": "Reboot"}"#.into()),
            400,
            "unknown variant `Reboot`",
        ),
        (
            "PUT",
            "/actions",
            Some(r#"{"action_type": 3}"#.into()),
            400,
            "invalid JSON",
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 0, "mem_size_mib": 128}"#.into()),
            400,
            "vcpu_count 0 is out of range",
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 1, "mem_size_mib": 1}"#.into()),
            400,
            "mem_size_mib 1 is out of range",
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": "1", "mem_size_mib": 128}"#.into()),
            400,
            "invalid type",
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 1, "mem_size_mib": 128, "gpu": true}"#.into()),
            400,
            "unknown field `gpu`",
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 1}"#.into()),
            400,
            "missing field `mem_size_mib`",
        ),
        (
            "PATCH",
            "/machine-config",
            Some(r#"{"vcpu_count": 99}"#.into()),
            400,
            "out of range",
        ),
        (
            "PUT",
            "/boot-source",
            Some(r#"{"kernel_image_path": "/nonexistent/vmlinux"}"#.into()),
            400,
            "boot-source.kernel_image_path",
        ),
        (
            "PUT",
            "/boot-source",
            Some(format!(r#"{{"kernel_image_path": "{dir}"}}"#)),
            400,
            "not a regular file",
        ),
        (
            "PUT",
            "/drives/rootfs",
            Some(format!(
                r#"{{"drive_id": "other", "path_on_host": "{file}", "is_root_device": true}}"#
            )),
            400,
            "differs from the id in the body",
        ),
        (
            "PUT",
            "/drives/bad.id",
            Some(format!(
                r#"{{"drive_id": "bad.id", "path_on_host": "{file}", "is_root_device": true}}"#
            )),
            400,
            "is invalid",
        ),
        (
            "PUT",
            "/drives/rootfs",
            Some(
                r#"{"drive_id": "rootfs", "path_on_host": "/nope", "is_root_device": true}"#.into(),
            ),
            400,
            "drives.path_on_host",
        ),
        ("PUT", "/drives", Some("{}".into()), 400, "drive id"),
        (
            "PUT",
            "/network-interfaces/n",
            Some(r#"{"iface_id": "n", "host_dev_name": "tap0", "guest_mac": "zz"}"#.into()),
            400,
            "not a MAC address",
        ),
        (
            "PUT",
            "/network-interfaces/n",
            Some(r#"{"iface_id": "n", "host_dev_name": "a/b"}"#.into()),
            400,
            "host_dev_name",
        ),
        (
            "PUT",
            "/vsock",
            Some(r#"{"guest_cid": 2, "uds_path": "/tmp/v"}"#.into()),
            400,
            "guest_cid 2 is invalid",
        ),
        (
            "PUT",
            "/logger",
            Some(r#"{"level": "Loud"}"#.into()),
            400,
            "unknown variant `Loud`",
        ),
        (
            "PUT",
            "/logger",
            Some(r#"{"log_path": "/nonexistent-dir/log"}"#.into()),
            400,
            "cannot open log_path",
        ),
        (
            "PUT",
            "/metrics",
            Some(r#"{"metrics_path": "/nonexistent-dir/m"}"#.into()),
            400,
            "cannot open",
        ),
        (
            "PUT",
            "/metrics",
            Some("{}".into()),
            400,
            "missing field `metrics_path`",
        ),
        (
            "PATCH",
            "/vm",
            Some(r#"{"state": "Stopped"}"#.into()),
            400,
            "unknown variant `Stopped`",
        ),
        (
            "GET",
            "/machine-config",
            Some("{}".into()),
            400,
            "cannot have a body",
        ),
        (
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#.into()),
            400,
            "boot-source is missing",
        ),
    ];
    for (method, path, body, status, words) in &cases {
        let msg = vmm.fault(method, path, body.as_deref(), *status);
        assert!(
            msg.contains(words),
            "{method} {path}: {msg:?} lacks {words:?}"
        );
        vmm.assert_alive(&format!("{method} {path}"));
    }
    assert_eq!(vmm.state(), "Not started");
    // Refused requests changed nothing.
    let cfg = vmm.get("/vm/config");
    assert!(cfg.get("boot-source").is_none(), "{cfg}");
    assert_eq!(cfg["drives"].as_array().map(Vec::len), Some(0));
}

#[test]
fn runtime_only_requests_are_refused_before_instance_start() {
    let vmm = Vmm::start(&[]);
    for (method, path, body) in [
        ("PATCH", "/vm", r#"{"state": "Paused"}"#),
        ("PATCH", "/vm", r#"{"state": "Resumed"}"#),
        ("PUT", "/actions", r#"{"action_type": "SendCtrlAltDel"}"#),
        ("PATCH", "/drives/rootfs", r#"{"drive_id": "rootfs"}"#),
        (
            "PATCH",
            "/network-interfaces/net1",
            r#"{"iface_id": "net1"}"#,
        ),
    ] {
        let msg = vmm.fault(method, path, Some(body), 400);
        assert!(
            msg.contains("only possible after InstanceStart"),
            "{method} {path}: {msg}"
        );
        vmm.assert_alive(path);
    }
}

#[test]
fn malformed_oversized_and_slow_requests_never_take_the_vmm_down() {
    let vmm = Vmm::start(&[]);
    let huge_header = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    let many_headers: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let oversized = format!(
        "PUT /drives/x HTTP/1.1\r\nContent-Length: 51201\r\n\r\n{}",
        "x".repeat(51_201)
    );
    // (raw request, status, words in the fault message)
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"PUT /actions HTTP/1.1\r\nContent-Length: 30\r\n\r\n{\"action_type\": \"FlushMetrics\"".to_vec(), 400, "invalid JSON"),
        (b"PUT /actions HTTP/1.1\r\n\r\n{\"action_type\": \"FlushMetrics\"}".to_vec(), 400, "Content-Length"),
        (b"PUT /actions HTTP/1.1\r\nContent-Length: abc\r\n\r\n".to_vec(), 400, "Content-Length"),
        (b"PUT /actions HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n".to_vec(), 400, "Content-Length"),
        (b"PUT /actions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 501, "Transfer-Encoding"),
        (oversized.into_bytes(), 413, "larger than the limit of 51200"),
        (huge_header.into_bytes(), 431, "larger than"),
        (format!("GET / HTTP/1.1\r\n{many_headers}\r\n").into_bytes(), 431, "too many"),
        (b"\x00\xff\xfe garbage\r\n\r\n".to_vec(), 400, "malformed"),
        (b"GET / HTTP/2.0\r\n\r\n".to_vec(), 505, "HTTP version"),
        (b"GET /\xff HTTP/1.1\r\n\r\n".to_vec(), 400, "malformed"),
        (b"PATCH /vm HTTP/1.1\r\nContent-Length: 2\r\n\r\n\xff\xfe".to_vec(), 400, "UTF-8"),
    ];
    for (raw, status, words) in &cases {
        let (got, head, body) = vmm.raw(raw);
        let shown = String::from_utf8_lossy(&raw[..raw.len().min(50)]).into_owned();
        assert_eq!(got, *status, "{shown:?}: {head}{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let msg = v["fault_message"].as_str().unwrap();
        assert!(msg.contains(words), "{shown:?}: {msg:?} lacks {words:?}");
        vmm.assert_alive(&shown);
    }

    // Pipelined: two good requests, then garbage: two answers, a 400, and the close.
    let mut s = vmm.connect();
    s.write_all(b"GET /version HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\nNOT HTTP AT ALL\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s).unwrap().0, 200);
    assert_eq!(read_response(&mut s).unwrap().0, 200);
    let (status, head, _) = read_response(&mut s).unwrap();
    assert_eq!(status, 400);
    assert!(head.contains("Connection: close"), "{head}");
    assert!(closed(&mut s));
    vmm.assert_alive("pipelined garbage");

    // Clients that connect and send nothing, or stop half-way, block no one.
    let silent: Vec<UnixStream> = (0..8).map(|_| vmm.connect()).collect();
    let mut half = vmm.connect();
    half.write_all(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"vcpu")
        .unwrap();
    let t = Instant::now();
    vmm.assert_alive("silent clients");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "GET / took {:?} with silent clients",
        t.elapsed()
    );
    // The half-sent request times out with 408 and is closed; the VMM stays up.
    let (status, _, _) = read_response(&mut half).expect("408 for the stalled request");
    assert_eq!(status, 408);
    assert!(closed(&mut half));
    drop(silent);
    // A client that hangs up mid-request.
    let mut gone = vmm.connect();
    gone.write_all(b"PUT /boot-source HTTP/1.1\r\nContent-Length: 500\r\n\r\n{")
        .unwrap();
    drop(gone);
    vmm.assert_alive("a client that hung up mid-request");
    assert_eq!(vmm.state(), "Not started");
}

#[test]
fn payload_limit_follows_the_command_line_flag() {
    let vmm = Vmm::start(&["--http-api-max-payload-size", "100"]);
    let body = format!(
        r#"{{"vcpu_count": 1, "mem_size_mib": 128{}}}"#,
        " ".repeat(70)
    );
    assert!(body.len() > 100);
    let msg = vmm.fault("PUT", "/machine-config", Some(&body), 413);
    assert!(msg.contains("larger than the limit of 100 bytes"), "{msg}");
    vmm.assert_alive("an oversized body");
    vmm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 128}"#,
    );
}

#[test]
fn config_file_refuses_what_the_api_refuses_with_the_same_message() {
    let vmm = Vmm::start(&[]);
    let kernel = scratch_file(&vmm.dir, "vmlinux");
    // (config-file section, API path, body)
    let cases: Vec<(&str, &str, String)> = vec![
        (
            "machine-config",
            "/machine-config",
            r#"{"vcpu_count": 0, "mem_size_mib": 128}"#.into(),
        ),
        (
            "machine-config",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 128, "foo": 1}"#.into(),
        ),
        (
            "boot-source",
            "/boot-source",
            r#"{"kernel_image_path": "/nonexistent/vmlinux"}"#.into(),
        ),
        (
            "vsock",
            "/vsock",
            r#"{"guest_cid": 1, "uds_path": "/tmp/v.sock"}"#.into(),
        ),
    ];
    for (section, path, body) in &cases {
        let api_msg = vmm.fault("PUT", path, Some(body), 400);
        let boot = if *section == "boot-source" {
            body.clone()
        } else {
            format!(r#"{{"kernel_image_path": "{kernel}"}}"#)
        };
        let mut cfg = format!(r#"{{"boot-source": {boot}"#);
        if *section != "boot-source" {
            cfg.push_str(&format!(r#", "{section}": {body}"#));
        }
        cfg.push('}');
        let cfg_path = vmm.dir.join(format!("{}.json", unique_id("cfg")));
        std::fs::write(&cfg_path, &cfg).unwrap();
        let out = kiln_tests::run_with_timeout(
            Command::new(require_bin("vmm"))
                .arg("--config-file")
                .arg(&cfg_path),
            Duration::from_secs(20),
        );
        assert_ne!(out.code(), 0, "{cfg}\n{out}");
        let api_core = api_msg.replace("invalid JSON: ", "");
        let api_core = api_core.split(" at line ").next().unwrap();
        assert!(
            out.stderr.contains(api_core),
            "config file {cfg}\nAPI said: {api_msg}\n{out}"
        );
    }
}

/// docs/api.md's getting-started block, as the test runs it.
fn getting_started_script() -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.md")).unwrap();
    let start = doc
        .find("<!-- getting-started:begin -->")
        .expect("docs/api.md has the getting-started block");
    let end = doc
        .find("<!-- getting-started:end -->")
        .expect("end marker");
    let block = &doc[start..end];
    let code_start = block.find("```bash\n").expect("a bash block") + "```bash\n".len();
    let code_end = block[code_start..].find("```").unwrap() + code_start;
    block[code_start..code_end].to_string()
}

#[test]
fn getting_started_sequence_with_curl_boots_the_tiny_guest() {
    require_kvm();
    let curl = kiln_tests::assets::require_program("curl", "curl");
    assert!(curl.is_file());
    let kernel = tiny::tiny_guest();
    let vmm = Vmm::start(&[]);
    let script = getting_started_script();
    let rootfs = vmm.dir.join("rootfs.ext4");
    let out = kiln_tests::run_with_timeout(
        Command::new("bash")
            .arg("-euo")
            .arg("pipefail")
            .arg("-c")
            .arg(&script)
            .current_dir(&vmm.dir)
            .env("API_SOCKET", &vmm.sock)
            .env("KERNEL", &kernel)
            .env("ROOTFS", &rootfs)
            .env("LOGFILE", vmm.dir.join("kiln.log"))
            .env(
                "KERNEL_BOOT_ARGS",
                "console=ttyS0 reboot=k panic=1 kiln.test=halt",
            ),
        Duration::from_secs(60),
    );
    assert_eq!(out.code(), 0, "{script}\n{out}");
    // Every PUT answered 204 No Content: curl printed no fault message.
    assert!(!out.stdout.contains("fault_message"), "{out}");
    vmm.wait_for(
        "the tiny guest's first line",
        Duration::from_secs(30),
        |v| v.serial().contains(tiny::START_LINUX64) || v.serial().contains(tiny::START_PVH),
    );
    vmm.wait_for("the halt scenario", Duration::from_secs(30), |v| {
        v.serial().contains("KILN-TINY: halt")
    });
    assert_eq!(vmm.state(), "Running");
    let log = std::fs::read_to_string(vmm.dir.join("kiln.log")).unwrap_or_default();
    let all_logs = format!("{log}{}", vmm.stderr());
    vmm.wait_for("the boot-time line", Duration::from_secs(5), |v| {
        let log = std::fs::read_to_string(v.dir.join("kiln.log")).unwrap_or_default();
        log.contains("boot-time: first_serial_byte")
            || v.stderr().contains("boot-time: first_serial_byte")
    });
    eprintln!(
        "{}",
        all_logs
            .lines()
            .filter(|l| l.contains("boot-time:"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // After InstanceStart: pre-boot-only requests are refused, InstanceStart too.
    let kernel_s = kernel.display().to_string();
    for (method, path, body) in [
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 128}"#.to_string(),
        ),
        (
            "PATCH",
            "/machine-config",
            r#"{"mem_size_mib": 64}"#.to_string(),
        ),
        (
            "PUT",
            "/boot-source",
            format!(r#"{{"kernel_image_path": "{kernel_s}"}}"#),
        ),
        (
            "PUT",
            "/drives/rootfs",
            format!(
                r#"{{"drive_id": "rootfs", "path_on_host": "{kernel_s}", "is_root_device": true}}"#
            ),
        ),
        (
            "PUT",
            "/network-interfaces/n",
            r#"{"iface_id": "n", "host_dev_name": "tap9"}"#.to_string(),
        ),
        (
            "PUT",
            "/vsock",
            r#"{"guest_cid": 3, "uds_path": "/tmp/x.sock"}"#.to_string(),
        ),
        ("PUT", "/logger", r#"{"level": "Debug"}"#.to_string()),
        (
            "PUT",
            "/metrics",
            r#"{"metrics_path": "/tmp/m"}"#.to_string(),
        ),
    ] {
        let msg = vmm.fault(method, path, Some(&body), 400);
        assert!(
            msg.contains("only possible before InstanceStart"),
            "{method} {path}: {msg}"
        );
    }
    let msg = vmm.fault(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
        400,
    );
    assert!(msg.contains("already started"), "{msg}");
    // Runtime requests work; GET endpoints still answer.
    assert_eq!(vmm.get("/machine-config")["mem_size_mib"], 128);
    assert_eq!(vmm.get("/vm/config")["drives"][0]["drive_id"], "rootfs");
    vmm.ok("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#);
    vmm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(vmm.state(), "Paused");
    vmm.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    assert_eq!(vmm.state(), "Running");
    vmm.ok("PATCH", "/drives/rootfs", r#"{"drive_id": "rootfs"}"#);
    // Swapping the backing file of a running drive (virtio-blk): any regular file will do.
    vmm.ok(
        "PATCH",
        "/drives/rootfs",
        &format!(r#"{{"drive_id": "rootfs", "path_on_host": "{kernel_s}"}}"#),
    );
    let msg = vmm.fault(
        "PATCH",
        "/drives/nope",
        Some(r#"{"drive_id": "nope"}"#),
        400,
    );
    assert!(msg.contains("no drive with drive_id"), "{msg}");
    vmm.ok("PUT", "/actions", r#"{"action_type": "SendCtrlAltDel"}"#);
    vmm.assert_alive("SendCtrlAltDel");
}

#[test]
fn pause_and_resume_are_observed_on_the_serial_output() {
    require_kvm();
    let kernel = tiny::tiny_guest();
    let vmm = Vmm::start(&[]);
    vmm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
    );
    vmm.ok(
        "PUT",
        "/boot-source",
        &format!(
            r#"{{"kernel_image_path": "{}", "boot_args": "console=ttyS0 kiln.test=ticks"}}"#,
            kernel.display()
        ),
    );
    vmm.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    let ticks = |v: &Vmm| v.serial().matches("KILN-TINY: tick ").count();
    vmm.wait_for("two ticks", Duration::from_secs(30), |v| ticks(v) >= 2);

    vmm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(vmm.state(), "Paused");
    // A line being printed when the pause landed may finish: let it settle, then expect none.
    std::thread::sleep(Duration::from_millis(300));
    let at_pause = vmm.serial();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(vmm.serial(), at_pause, "the guest printed while paused");

    vmm.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    assert_eq!(vmm.state(), "Running");
    let paused_ticks = at_pause.matches("KILN-TINY: tick ").count();
    vmm.wait_for("a tick after resume", Duration::from_secs(30), |v| {
        ticks(v) > paused_ticks
    });
    // Pausing twice and resuming twice are accepted (idempotent), as in Firecracker.
    vmm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    vmm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    vmm.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    vmm.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
}

#[test]
fn metrics_after_boot_count_vcpu_exits_uart_bytes_and_boot_timing() {
    require_kvm();
    let kernel = tiny::tiny_guest();
    let vmm = Vmm::start(&[]);
    let metrics = vmm.dir.join("metrics.json");
    vmm.ok(
        "PUT",
        "/metrics",
        &format!(r#"{{"metrics_path": "{}"}}"#, metrics.display()),
    );
    vmm.ok(
        "PUT",
        "/boot-source",
        &format!(
            r#"{{"kernel_image_path": "{}", "boot_args": "kiln.test=halt"}}"#,
            kernel.display()
        ),
    );
    vmm.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    vmm.wait_for("the halt line", Duration::from_secs(30), |v| {
        v.serial().contains("KILN-TINY: halt")
    });
    vmm.ok("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#);
    let text = std::fs::read_to_string(&metrics).unwrap();
    let line: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(line["vcpu"]["exit_io_out"].as_u64().unwrap() > 10, "{line}");
    // "KILN-TINY: start entry=pvh\n" and "KILN-TINY: halt\n" at least.
    assert!(
        line["uart"]["write_count"].as_u64().unwrap() >= 40,
        "{line}"
    );
    assert!(
        line["boot_timing_us"]["first_serial_byte"]
            .as_u64()
            .unwrap()
            > 0,
        "{line}"
    );
    assert!(
        line["latencies_us"]["instance_start"].as_u64().unwrap() > 0,
        "{line}"
    );
    assert_eq!(line["put_api_requests"]["actions_count"], 2);
}

#[test]
fn logs_to_a_fifo_nobody_reads_never_block_the_vmm() {
    let vmm = Vmm::start(&[]);
    let fifo = vmm.dir.join("log.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    vmm.ok(
        "PUT",
        "/logger",
        &format!(r#"{{"log_path": "{}", "level": "Trace"}}"#, fifo.display()),
    );
    // Enough log lines to fill the pipe (64 KiB) many times over.
    let mut s = vmm.connect();
    let body = format!(
        r#"{{"vcpu_count": 1, "mem_size_mib": 128, "smt": false{}}}"#,
        " ".repeat(1000)
    );
    for _ in 0..300 {
        let req = format!(
            "PUT /machine-config HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        assert_eq!(read_response(&mut s).unwrap().0, 204);
    }
    let t = Instant::now();
    vmm.assert_alive("a full log FIFO");
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[test]
fn config_file_with_api_socket_boots_at_once_and_keeps_serving() {
    require_kvm();
    let kernel = tiny::tiny_guest();
    let dir = temp_dir("kiln-api-cfg");
    let cfg = dir.join("vm.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "kiln.test=ticks"}},
                "machine-config": {{"vcpu_count": 1, "mem_size_mib": 32}}}}"#,
            kernel.display()
        ),
    )
    .unwrap();
    let vmm = Vmm::start(&["--config-file", cfg.to_str().unwrap()]);
    assert_eq!(vmm.state(), "Running");
    assert_eq!(vmm.get("/vm/config")["machine-config"]["mem_size_mib"], 32);
    let msg = vmm.fault(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 1, "mem_size_mib": 64}"#),
        400,
    );
    assert!(msg.contains("only possible before InstanceStart"), "{msg}");
    vmm.wait_for("a tick", Duration::from_secs(30), |v| {
        v.serial().contains("KILN-TINY: tick 1")
    });
    vmm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(vmm.state(), "Paused");
    vmm.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_before_instance_start_ends_the_vmm_cleanly() {
    let mut vmm = Vmm::start(&[]);
    // SAFETY: kill(2) with a pid of a child this test spawned and still owns.
    let rc = unsafe { libc::kill(vmm.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let t = Instant::now();
    let status = loop {
        if let Some(s) = vmm.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the VMM ignored SIGTERM\n{}",
            vmm.stderr()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(status.code(), Some(0), "{}", vmm.stderr());
}

#[test]
fn a_failed_instance_start_is_reported_and_can_be_retried() {
    require_kvm();
    let vmm = Vmm::start(&[]);
    let not_a_kernel = scratch_file(&vmm.dir, "zeros.bin");
    vmm.ok(
        "PUT",
        "/boot-source",
        &format!(r#"{{"kernel_image_path": "{not_a_kernel}"}}"#),
    );
    let msg = vmm.fault(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
        400,
    );
    assert!(msg.starts_with("InstanceStart failed: "), "{msg}");
    assert_eq!(vmm.state(), "Not started");
    let kernel = tiny::tiny_guest();
    vmm.ok(
        "PUT",
        "/boot-source",
        &format!(
            r#"{{"kernel_image_path": "{}", "boot_args": "kiln.test=halt"}}"#,
            kernel.display()
        ),
    );
    vmm.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    vmm.wait_for("the halt line", Duration::from_secs(30), |v| {
        v.serial().contains("KILN-TINY: halt")
    });
    assert_eq!(vmm.state(), "Running");
}
