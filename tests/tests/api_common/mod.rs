//! The API suites' harness (`api.rs`, `api_errors.rs`): a real `vmm --api-sock PATH`
//! driven over its Unix socket with raw HTTP (std's `UnixStream`, to send malformed
//! things), its serial output and stderr captured.

#![allow(dead_code)]

use kiln_tests::process::spawn;
use kiln_tests::{require_bin, tiny, KillOnDrop, ScratchDir};
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `vmm` with its API socket, output captured; killed, and its directory
/// removed, when dropped.
pub struct Vmm {
    pub child: KillOnDrop,
    pub dir: ScratchDir,
    pub sock: PathBuf,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// From spawn to the first answered `GET /`.
    pub api_ready_after: Duration,
}

fn capture<R: Read + Send + 'static>(mut r: R) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let out = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = kiln_tests::io::read_some(&mut r, &mut chunk) {
            if n == 0 {
                break;
            }
            out.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

impl Vmm {
    /// Starts `vmm --api-sock <dir>/api.sock <extra...>` and waits until `GET /` answers.
    pub fn start(extra: &[&str]) -> Vmm {
        Vmm::start_command(Command::new(require_bin("vmm")), extra)
    }

    /// [`Vmm::start`] with `vmm` (the binary) run by `cmd`: `NetNs::command`'s, to run it
    /// in a network namespace.
    pub fn start_command(mut cmd: Command, extra: &[&str]) -> Vmm {
        let dir = ScratchDir::new("kiln-api");
        let sock = dir.join("api.sock");
        let spawned = Instant::now();
        let mut child = spawn(
            cmd.arg("--api-sock")
                .arg(&sock)
                .args(extra)
                .stdin(Stdio::null()),
        );
        let stdout = capture(child.stdout.take().unwrap());
        let stderr = capture(child.stderr.take().unwrap());
        let mut vmm = Vmm {
            child: KillOnDrop::new(child),
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

    pub fn connect(&self) -> UnixStream {
        let s = UnixStream::connect(&self.sock).expect("connect to the API socket");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    /// Sends raw bytes on a new connection and reads one response.
    pub fn raw(&self, bytes: &[u8]) -> (u16, String, String) {
        let mut s = self.connect();
        // The server may answer and close before taking everything (413, 431): the answer is
        // still there to read.
        let _ = s.write_all(bytes);
        read_response(&mut s).unwrap_or_else(|| {
            // The VMM may have just ended: its last lines reach the capture a moment later.
            std::thread::sleep(Duration::from_millis(300));
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()));
            let state = stat.ok().and_then(|s| {
                let after = s.rsplit_once(')')?.1.trim_start().chars().next()?;
                Some(match after {
                    'Z' => "exited (a zombie: its status in its stderr above, or a signal)",
                    _ => "still running",
                })
            });
            panic!(
                "no response to {:?}; the VMM: {}\n{}",
                String::from_utf8_lossy(bytes),
                state.unwrap_or("gone"),
                self.stderr()
            )
        })
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let req = match body {
            Some(b) => format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()),
            None => format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        };
        let (status, _, body) = self.raw(req.as_bytes());
        (status, body)
    }

    pub fn get(&self, path: &str) -> Value {
        let (status, body) = self.call("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// A PUT or PATCH that must succeed with 204.
    pub fn ok(&self, method: &str, path: &str, body: &str) {
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
    pub fn fault(&self, method: &str, path: &str, body: Option<&str>, status: u16) -> String {
        let (got, answer) = self.call(method, path, body);
        assert_eq!(got, status, "{method} {path} {body:?}: {answer}");
        let v: Value =
            serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{answer:?} is not JSON: {e}"));
        v["fault_message"]
            .as_str()
            .expect("fault_message")
            .to_string()
    }

    /// A request that must fail with `status` and a fault message containing `words`.
    pub fn refuses(&self, method: &str, path: &str, body: Option<&str>, status: u16, words: &str) {
        let msg = self.fault(method, path, body, status);
        assert!(
            msg.contains(words),
            "{method} {path}: {msg:?} lacks {words:?}"
        );
    }

    pub fn state(&self) -> String {
        self.get("/")["state"].as_str().unwrap().to_string()
    }

    /// The VMM is up and answers `GET /`.
    pub fn assert_alive(&self, after: &str) {
        let (status, body) = self.call("GET", "/", None);
        assert_eq!(
            status,
            200,
            "GET / after {after}: {body}\n{}",
            self.stderr()
        );
    }

    pub fn serial(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// `PUT /boot-source`: the tiny guest with `boot_args`.
    pub fn boot_tiny_guest(&self, boot_args: &str) {
        self.ok(
            "PUT",
            "/boot-source",
            &format!(
                r#"{{"kernel_image_path": "{}", "boot_args": "{boot_args}"}}"#,
                tiny::tiny_guest().display()
            ),
        );
    }

    /// `PUT /actions` with `action_type` (`InstanceStart`, `FlushMetrics`, ...).
    pub fn action(&self, action_type: &str) {
        self.ok(
            "PUT",
            "/actions",
            &format!(r#"{{"action_type": "{action_type}"}}"#),
        );
    }

    /// `PATCH /vm` to `state` (`Paused`, `Resumed`).
    pub fn set_state(&self, state: &str) {
        self.ok("PATCH", "/vm", &format!(r#"{{"state": "{state}"}}"#));
    }

    /// Waits up to 30 s for `text` on the guest's serial output.
    pub fn wait_serial(&self, what: &str, text: &str) {
        self.wait_for(what, Duration::from_secs(30), |v| v.serial().contains(text));
    }

    /// For a Linux guest: waits until `cond` holds on the serial output, failing at once on a
    /// kernel panic, a dead init or a VMM that exited, and after `timeout`.
    pub fn wait_linux(&mut self, what: &str, timeout: Duration, cond: impl Fn(&str) -> bool) {
        let t = Instant::now();
        loop {
            let serial = self.serial();
            if cond(&serial) {
                return;
            }
            for fatal in ["Kernel panic", "Attempted to kill init"] {
                assert!(
                    !serial.contains(fatal),
                    "the guest printed {fatal:?}\n--- serial:\n{serial}\n--- stderr:\n{}",
                    self.stderr()
                );
            }
            assert!(
                self.child.try_wait().is_ok_and(|s| s.is_none()),
                "the VMM exited\n--- serial:\n{serial}\n--- stderr:\n{}",
                self.stderr()
            );
            assert!(
                t.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}\n--- serial:\n{serial}\n--- stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `cond` holds, panicking with the VMM's output after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, cond: impl Fn(&Vmm) -> bool) {
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

/// Reads one HTTP response: (status, head, body); `None` on EOF or timeout first.
pub fn read_response(s: &mut UnixStream) -> Option<(u16, String, String)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match kiln_tests::io::read_some(s, &mut byte) {
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

/// The server closed the connection without sending anything more.
pub fn closed(s: &mut UnixStream) -> bool {
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).is_ok() && rest.is_empty()
}

/// A regular file to use as a kernel path or disk image in configuration-only tests.
pub fn scratch_file(dir: &ScratchDir, name: &str) -> String {
    dir.write(name, vec![0u8; 4096])
        .to_string_lossy()
        .into_owned()
}
