//! The VMM's full lifecycle with the tiny guest, shared by `seccomp.rs` (run under the
//! default filters: nothing may be killed) and `seccomp_audit.rs` (run under strace in
//! `--seccomp-log` mode: every syscall of every thread is recorded).
//!
//! One lifecycle is several VMM processes, because the tiny guest does one thing per boot:
//! configuration through the API with every device kind (two drives, a network interface on
//! a tap, vsock, entropy, serial output with a bucket, a custom CPU template, rate limiters),
//! API traffic of every kind (rate limiters patched after boot), pause/resume with two vCPUs
//! and, while paused, an authenticated full and diff snapshot (`PUT /snapshot/create`),
//! FlushMetrics, SIGTERM; two restores of that snapshot into new VMMs (`PUT /snapshot/load`
//! through the example page-fault handler, `Uffd`, and from the memory file, `File`), each
//! running on and taking a diff snapshot; then each virtio-blk and virtio-net scenario
//! (reads, writes, flush, id, read-only, out-of-range, the hostile ones, a backing-file swap
//! through `PATCH /drives`, frames both ways on a tap), a rate-limited drive and entropy
//! device (the limiters' timers), virtio-vsock both ways and with malformed packets, the
//! balloon, memory hot-plug (a KVM slot registered and removed, blocks given back), a
//! virtio-pmem device read, written and flushed, the
//! guest's i8042 reset with serial input on stdin, and a triple fault (the vCPU fault path).

#![allow(dead_code)]

use kiln_tests::netns::{tap_name, NetNs};
use kiln_tests::process::Followed;
use kiln_tests::tiny::{self, TinyOutput};
use kiln_tests::{require_bin, require_kvm, require_root, Finished, ScratchDir};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Keeps a VMM that a test kills with SIGSYS or SIGABRT from writing a core file into the
/// test's working directory (RLIMIT_CORE 0 in the child).
pub fn no_core_dumps(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls setrlimit,
    // which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let zero = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::setrlimit(libc::RLIMIT_CORE, &zero) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Longest a VMM of the lifecycle may run (generous: strace slows every exit down).
pub const TIMEOUT: Duration = Duration::from_secs(90);
/// Exit code of a guest crash (vmm/src/exit.rs).
pub const GUEST_CRASH: i32 = 2;

/// A scratch directory, removed when dropped.
pub struct Scratch(ScratchDir);

impl Scratch {
    pub fn new(prefix: &str) -> Scratch {
        Scratch(ScratchDir::new(prefix))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// A disk image of `sectors` 512-byte sectors with varied content.
    pub fn image(&self, name: &str, sectors: usize) -> PathBuf {
        let path = self.path(name);
        let data: Vec<u8> = (0..sectors * 512)
            .map(|i| u8::try_from(i % 251).unwrap_or(0))
            .collect();
        std::fs::write(&path, data).expect("write disk image");
        path
    }
}

/// How every VMM of the lifecycle is started.
#[derive(Clone, Default)]
pub struct Launch {
    /// Extra `vmm` flags (`--seccomp-log`, `--seccomp-filter FILE`, ...).
    pub vmm_args: Vec<String>,
    /// Audit: run each VMM under `strace -f -ff -X raw -o <dir>/<run>/t` (strace, dir).
    pub strace: Option<(PathBuf, PathBuf)>,
    /// Extra environment for the VMM.
    pub env: Vec<(String, String)>,
}

/// How a run of the lifecycle must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Exit with this code.
    Exit(i32),
    /// Killed by this signal.
    Signal(i32),
}

/// What one VMM of the lifecycle did.
pub struct Outcome {
    pub run: &'static str,
    pub finished: Finished,
    pub out: TinyOutput,
    /// How the run must end.
    pub expected: Expect,
    /// Whether the guest must print `done` without error lines.
    pub expect_done: bool,
    /// For the API run: every thread's name and `Seccomp:` mode (/proc), once running.
    pub threads: Vec<(String, String)>,
}

impl Outcome {
    /// Why the run is not what it must be, if it is not.
    pub fn problem(&self) -> Option<String> {
        let f = &self.finished;
        let why = match f.status {
            None => Some("did not end in time".to_string()),
            Some(s) => {
                use std::os::unix::process::ExitStatusExt;
                let got = match s.signal() {
                    Some(sig) => Expect::Signal(sig),
                    None => Expect::Exit(s.code().unwrap_or(-1)),
                };
                if got != self.expected {
                    let sys = if got == Expect::Signal(libc::SIGSYS) {
                        " (SIGSYS: seccomp)"
                    } else {
                        ""
                    };
                    Some(format!(
                        "ended with {got:?}{sys}, expected {:?}",
                        self.expected
                    ))
                } else if f.stderr.contains("panicked") {
                    Some("panicked".to_string())
                } else if self.expect_done && (!self.out.done || !self.out.errors().is_empty()) {
                    Some(format!(
                        "guest did not finish cleanly (done: {}, errors: {:?})",
                        self.out.done,
                        self.out.errors()
                    ))
                } else {
                    None
                }
            }
        };
        why.map(|w| format!("run {:?}: the VMM {w}\n{f}", self.run))
    }
}

/// A VMM being driven, its guest's lines followed.
struct Running(Followed);

impl Running {
    /// Waits until the guest prints a line ending with `needle`.
    fn wait_line(&mut self, needle: &str, timeout: Duration) -> bool {
        self.0.wait_line(needle, timeout)
    }

    fn wait_line_contains(&mut self, needle: &str) -> bool {
        self.wait_line_contains_for(needle, TIMEOUT)
    }

    /// Waits until the guest prints a line containing `needle`.
    fn wait_line_contains_for(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while let Some(line) = self
            .0
            .next_line(deadline.saturating_duration_since(Instant::now()))
        {
            if line.contains(needle) {
                return true;
            }
        }
        false
    }

    /// What the guest printed so far.
    fn seen(&self) -> &str {
        self.0.seen()
    }

    /// Whether the VMM (or strace around it) is still running.
    fn running(&mut self) -> bool {
        self.0.child().try_wait().ok().flatten().is_none()
    }

    /// Sends `sig` to the VMM process (not to strace or `ip netns exec` around it).
    fn signal(&mut self, sig: libc::c_int) {
        let pid = vmm_pid(self.0.child().id()).expect("the VMM process is running");
        // SAFETY: kill with a pid read from /proc and a valid signal number.
        unsafe { libc::kill(pid, sig) };
    }

    fn finish(self, run: &'static str, expected: Expect, expect_done: bool) -> Outcome {
        let finished = self.0.finish(TIMEOUT);
        let out = TinyOutput::parse(&finished.stdout);
        Outcome {
            run,
            finished,
            out,
            expected,
            expect_done,
            threads: Vec::new(),
        }
    }
}

/// The pid of the `vmm` process at or below `root` (strace and `ip netns exec` may wrap it).
pub fn vmm_pid(root: u32) -> Option<i32> {
    let vmm = std::fs::canonicalize(require_bin("vmm")).ok()?;
    let mut frontier = vec![i32::try_from(root).ok()?];
    let mut all: Vec<(i32, i32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // The fields after the command name, which is in parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
        if let Some(ppid) = ppid {
            all.push((pid, ppid));
        }
    }
    while let Some(pid) = frontier.pop() {
        if std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .as_deref()
            == Some(vmm.as_path())
        {
            return Some(pid);
        }
        frontier.extend(all.iter().filter(|(_, pp)| *pp == pid).map(|(p, _)| *p));
    }
    None
}

/// Every thread of process `pid`: (name, the `Seccomp:` field of its status).
pub fn threads(pid: i32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in dir.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .unwrap_or("?")
            .trim()
            .to_string();
        out.push((comm.trim().to_string(), mode));
    }
    out.sort();
    out
}

impl Launch {
    /// Starts the VMM with `args` (inside `ns` when given) as run `run`.
    fn start(&self, run: &str, ns: Option<&NetNs>, args: &[OsString], stdin: bool) -> Running {
        require_kvm();
        let vmm = require_bin("vmm");
        let mut argv: Vec<OsString> = Vec::new();
        let program: OsString = match &self.strace {
            Some((strace, dir)) => {
                let out = dir.join(run);
                std::fs::create_dir_all(&out).expect("create the trace directory");
                argv.extend(
                    ["-f", "-ff", "-qq", "-X", "raw", "-s", "64", "-o"].map(OsString::from),
                );
                argv.push(out.join("t").into_os_string());
                argv.push(vmm.into_os_string());
                strace.clone().into_os_string()
            }
            None => vmm.into_os_string(),
        };
        argv.extend(self.vmm_args.iter().map(OsString::from));
        argv.extend(args.iter().cloned());
        let mut cmd = match ns {
            Some(ns) => ns.command(&program),
            None => Command::new(&program),
        };
        cmd.args(&argv)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        no_core_dumps(&mut cmd);
        Running(if stdin {
            Followed::spawn_with_stdin(&mut cmd)
        } else {
            Followed::spawn(&mut cmd)
        })
    }
}

/// One HTTP request on the API socket; returns (status, body). A connection per request.
pub fn api(sock: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s =
        UnixStream::connect(sock).unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
    s.set_read_timeout(Some(TIMEOUT)).expect("set_read_timeout");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send request");
    raw_answer(&mut s)
}

/// Sends `bytes` as they are (malformed requests) and reads the answer.
pub fn api_raw(sock: &Path, bytes: &[u8]) -> (u16, String) {
    let mut s =
        UnixStream::connect(sock).unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
    s.set_read_timeout(Some(TIMEOUT)).expect("set_read_timeout");
    s.write_all(bytes).expect("send request");
    raw_answer(&mut s)
}

fn raw_answer(s: &mut UnixStream) -> (u16, String) {
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Waits for the API socket to accept connections.
fn wait_for_socket(sock: &Path) {
    let deadline = Instant::now() + TIMEOUT;
    while UnixStream::connect(sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "the API socket {} never appeared",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ok(sock: &Path, method: &str, path: &str, body: &str) {
    let (status, answer) = api(sock, method, path, body);
    assert!(
        (200..300).contains(&status),
        "{method} {path} {body}: {status} {answer}"
    );
}

fn kernel() -> String {
    tiny::tiny_guest().to_str().expect("utf-8 path").to_string()
}

fn drive_json(id: &str, path: &Path, root: bool, read_only: bool) -> String {
    format!(
        "{{\"drive_id\": {id:?}, \"path_on_host\": {:?}, \"is_root_device\": {root}, \"is_read_only\": {read_only}, \"cache_type\": \"Writeback\"}}",
        path.to_str().expect("utf-8 path")
    )
}

/// A rate limiter that lets one request through per 20 ms.
const LIMITER: &str = r#"{"ops": {"size": 1, "refill_time": 20}, "bandwidth": {"size": 1048576, "refill_time": 100}}"#;

fn net_json(tap: &str) -> String {
    format!("{{\"iface_id\": \"eth0\", \"host_dev_name\": {tap:?}, \"guest_mac\": \"06:00:ac:10:00:02\"}}")
}

/// A config file booting the tiny guest with `boot_args`, `drives` and `nets`.
fn config(dir: &Scratch, boot_args: &str, drives: &[String], nets: &[String]) -> PathBuf {
    let path = dir.path("vm.json");
    let text = format!(
        "{{\"boot-source\": {{\"kernel_image_path\": {:?}, \"boot_args\": {boot_args:?}}},\n \"machine-config\": {{\"vcpu_count\": 1, \"mem_size_mib\": 32}},\n \"drives\": [{}],\n \"network-interfaces\": [{}]}}\n",
        kernel(),
        drives.join(", "),
        nets.join(", ")
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn path_arg(flag: &str, p: &Path) -> [OsString; 2] {
    [OsString::from(flag), p.as_os_str().to_owned()]
}

/// A config file booting `boot_args` with one drive "data" on `image`, and an API socket:
/// the VMM's arguments, and the socket.
fn data_drive_with_api(
    dir: &Scratch,
    boot_args: &str,
    image: &Path,
    read_only: bool,
) -> (Vec<OsString>, PathBuf) {
    let cfg = config(
        dir,
        boot_args,
        &[drive_json("data", image, false, read_only)],
        &[],
    );
    let sock = dir.path("api.sock");
    let args = [
        path_arg("--config-file", &cfg).to_vec(),
        path_arg("--api-sock", &sock).to_vec(),
    ]
    .concat();
    (args, sock)
}

/// The API run, then two restores of the snapshot it took (`Uffd`, then `File`), in the same
/// scratch directory and network namespace, every VMM with the same snapshot key.
fn api_and_restore_runs(launch: &Launch) -> Vec<Outcome> {
    let dir = Scratch::new("kiln-sc-api");
    let ns = NetNs::new("kiln-sc");
    let key = dir.path("snapshot.key");
    std::fs::write(&key, [0x4b; 32]).expect("write the snapshot key");
    let api = api_run(launch, &dir, &ns, &key);
    let uffd = restore_run(launch, &dir, &ns, &key, "restore-uffd");
    let file = restore_run(launch, &dir, &ns, &key, "restore-file");
    vec![api, uffd, file]
}

/// The API run: configure everything through the API, boot, exercise every request kind,
/// pause/resume, an authenticated full and diff snapshot (`vm.snap`, `vm.mem` in `dir`),
/// FlushMetrics, then SIGTERM.
fn api_run(launch: &Launch, dir: &Scratch, ns: &NetNs, key: &Path) -> Outcome {
    let tap = tap_name("a");
    ns.add_tap(&tap, None);
    let sock = dir.path("api.sock");
    let args = [
        path_arg("--api-sock", &sock).to_vec(),
        path_arg("--snapshot-key-file", key).to_vec(),
        os(&["--id", "audit-vm", "--http-api-max-payload-size", "1048576"]),
    ]
    .concat();
    let mut vm = launch.start("api", Some(ns), &args, false);
    wait_for_socket(&sock);
    let log = dir.path("vmm.log");
    let metrics = dir.path("metrics.json");
    ok(&sock, "PUT", "/logger", &format!("{{\"log_path\": {:?}, \"level\": \"Debug\", \"show_level\": true, \"show_log_origin\": true}}", log.to_str().expect("utf-8")));
    ok(
        &sock,
        "PUT",
        "/metrics",
        &format!(
            "{{\"metrics_path\": {:?}}}",
            metrics.to_str().expect("utf-8")
        ),
    );
    ok(
        &sock,
        "PUT",
        "/machine-config",
        "{\"vcpu_count\": 2, \"mem_size_mib\": 32, \"track_dirty_pages\": true}",
    );
    ok(&sock, "PATCH", "/machine-config", "{\"mem_size_mib\": 48}");
    // A large request (valid JSON padded with spaces): the API thread's buffers outgrow its
    // heap and are mapped on their own.
    ok(
        &sock,
        "PATCH",
        "/machine-config",
        &format!("{{\"mem_size_mib\": 48{}}}", " ".repeat(600_000)),
    );
    ok(
        &sock,
        "PUT",
        "/boot-source",
        &format!(
            "{{\"kernel_image_path\": {:?}, \"boot_args\": \"console=ttyS0 kiln.test=ticks\"}}",
            kernel()
        ),
    );
    let root = dir.image("root.img", 64);
    let data = dir.image("data.img", 16);
    ok(
        &sock,
        "PUT",
        "/drives/rootfs",
        &drive_json("rootfs", &root, true, false),
    );
    ok(
        &sock,
        "PUT",
        "/drives/data",
        &drive_json("data", &data, false, true),
    );
    ok(&sock, "PUT", "/network-interfaces/eth0", &net_json(&tap));
    let vsock = dir.path("v.sock");
    let vsock_body = format!(
        "{{\"guest_cid\": 3, \"uds_path\": {:?}}}",
        vsock.to_str().expect("utf-8")
    );
    ok(&sock, "PUT", "/vsock", &vsock_body);
    ok(
        &sock,
        "PUT",
        "/entropy",
        &format!("{{\"rate_limiter\": {LIMITER}}}"),
    );
    // The console stays on stdout (the run follows the guest's ticks there); a bucket.
    ok(
        &sock,
        "PUT",
        "/serial",
        "{\"rate_limiter\": {\"size\": 1048576, \"refill_time\": 1000}}",
    );
    ok(
        &sock,
        "PUT",
        "/cpu-config",
        r#"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0, "modifiers": [{"register": "ecx", "bitmap": "0bxxxxxxxxxxxxxxxxxx0xxxxxxxxxxxxx"}]}],
            "msr_modifiers": [{"addr": "0x277", "bitmap": "0b00000001xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}]}"#,
    );
    let _ = api(&sock, "GET", "/vm/config", "");
    let _ = api(&sock, "GET", "/", "");
    ok(
        &sock,
        "PUT",
        "/actions",
        "{\"action_type\": \"InstanceStart\"}",
    );
    vm.wait_line("tick 1", TIMEOUT);
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/version"),
        ("GET", "/machine-config"),
        ("GET", "/vm/config"),
    ] {
        ok(&sock, method, path, "");
    }
    let pid = vmm_pid(vm.0.child().id()).expect("the VMM process");
    let threads = threads(pid);
    ok(&sock, "PATCH", "/vm", "{\"state\": \"Paused\"}");
    ok(&sock, "PATCH", "/vm", "{\"state\": \"Paused\"}");
    // Snapshots of the paused microVM: full, then a diff into the same memory file.
    let (state, mem) = (dir.path("vm.snap"), dir.path("vm.mem"));
    for kind in ["Full", "Diff"] {
        ok(
            &sock,
            "PUT",
            "/snapshot/create",
            &format!(
                "{{\"snapshot_type\": \"{kind}\", \"snapshot_path\": {:?}, \"mem_file_path\": {:?}}}",
                state.to_str().expect("utf-8"),
                mem.to_str().expect("utf-8")
            ),
        );
    }
    ok(&sock, "PATCH", "/vm", "{\"state\": \"Resumed\"}");
    vm.wait_line("tick 3", TIMEOUT);
    ok(
        &sock,
        "PUT",
        "/actions",
        "{\"action_type\": \"FlushMetrics\"}",
    );
    // A host connection to the vsock device (whose guest has no driver): accepted, read,
    // refused.
    if let Ok(mut c) = UnixStream::connect(&vsock) {
        let _ = c.write_all(b"CONNECT 52\n");
        let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
        let mut answer = [0u8; 64];
        let _ = c.read(&mut answer);
    }
    ok(
        &sock,
        "PATCH",
        "/network-interfaces/eth0",
        "{\"iface_id\": \"eth0\"}",
    );
    ok(
        &sock,
        "PATCH",
        "/network-interfaces/eth0",
        &format!("{{\"iface_id\": \"eth0\", \"rx_rate_limiter\": {LIMITER}, \"tx_rate_limiter\": {LIMITER}}}"),
    );
    ok(
        &sock,
        "PATCH",
        "/drives/data",
        &format!("{{\"drive_id\": \"data\", \"rate_limiter\": {LIMITER}}}"),
    );
    // Refused requests: pre-boot only, unknown drive, unknown path, malformed HTTP.
    let _ = api(
        &sock,
        "PUT",
        "/machine-config",
        "{\"vcpu_count\": 1, \"mem_size_mib\": 32}",
    );
    let _ = api(&sock, "PATCH", "/drives/nope", "{\"drive_id\": \"nope\"}");
    let _ = api(&sock, "GET", "/snapshot/create", "");
    let _ = api_raw(&sock, b"BREW /coffee HTCPCP/1.0\r\n\r\n");
    ok(
        &sock,
        "PUT",
        "/actions",
        "{\"action_type\": \"SendCtrlAltDel\"}",
    );
    vm.signal(libc::SIGTERM);
    let mut outcome = vm.finish("api", Expect::Exit(0), false);
    outcome.threads = threads;
    outcome
}

/// A restore of the API run's snapshot into a new VMM (`run` `restore-uffd`: through the
/// example page-fault handler; `restore-file`: the memory file mapped), with the logger
/// and metrics set and a new tap and vsock socket: the guest ticks on; then a diff
/// snapshot of the restored microVM, and SIGTERM.
fn restore_run(
    launch: &Launch,
    dir: &Scratch,
    ns: &NetNs,
    key: &Path,
    run: &'static str,
) -> Outcome {
    let tap = tap_name("r");
    ns.add_tap(&tap, None);
    let sock = dir.path(&format!("{run}.sock"));
    let _ = std::fs::remove_file(&sock);
    let args = [
        path_arg("--api-sock", &sock).to_vec(),
        path_arg("--snapshot-key-file", key).to_vec(),
        os(&["--id", "audit-restored"]),
    ]
    .concat();
    let (state, mem) = (dir.path("vm.snap"), dir.path("vm.mem"));
    let _handler;
    let backend = if run == "restore-uffd" {
        let socket = dir.path("uffd.sock");
        _handler = uffd_handler(&socket, &mem);
        format!(
            "{{\"backend_type\": \"Uffd\", \"backend_path\": {:?}}}",
            utf8(&socket)
        )
    } else {
        format!(
            "{{\"backend_type\": \"File\", \"backend_path\": {:?}}}",
            utf8(&mem)
        )
    };
    let mut vm = launch.start(run, Some(ns), &args, false);
    wait_for_socket(&sock);
    let log = dir.path(&format!("{run}.log"));
    ok(
        &sock,
        "PUT",
        "/logger",
        &format!("{{\"log_path\": {:?}, \"level\": \"Debug\"}}", utf8(&log)),
    );
    let metrics = dir.path(&format!("{run}.metrics"));
    ok(
        &sock,
        "PUT",
        "/metrics",
        &format!("{{\"metrics_path\": {:?}}}", utf8(&metrics)),
    );
    let vsock = dir.path(&format!("{run}.vsock"));
    ok(
        &sock,
        "PUT",
        "/snapshot/load",
        &format!(
            "{{\"snapshot_path\": {:?}, \"mem_backend\": {backend}, \"track_dirty_pages\": true, \"resume_vm\": true, \"network_overrides\": [{{\"iface_id\": \"eth0\", \"host_dev_name\": {tap:?}}}], \"vsock_override\": {{\"uds_path\": {:?}}}}}",
            utf8(&state),
            utf8(&vsock)
        ),
    );
    // Two ticks of the restored guest (the ticks scenario of the API run goes on).
    assert!(
        vm.wait_line_contains("tick "),
        "{run}: no tick after the restore"
    );
    assert!(
        vm.wait_line_contains("tick "),
        "{run}: one tick after the restore"
    );
    ok(&sock, "PATCH", "/vm", "{\"state\": \"Paused\"}");
    ok(
        &sock,
        "PUT",
        "/snapshot/create",
        &format!(
            "{{\"snapshot_type\": \"Diff\", \"snapshot_path\": {:?}, \"mem_file_path\": {:?}}}",
            utf8(&dir.path(&format!("{run}.snap"))),
            utf8(&dir.path(&format!("{run}.mem")))
        ),
    );
    ok(&sock, "PATCH", "/vm", "{\"state\": \"Resumed\"}");
    ok(
        &sock,
        "PUT",
        "/actions",
        "{\"action_type\": \"FlushMetrics\"}",
    );
    vm.signal(libc::SIGTERM);
    vm.finish(run, Expect::Exit(0), false)
}

fn utf8(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The example page-fault handler serving `mem` on `socket` (not traced: it is not the
/// VMM), killed when dropped; it ends by itself when its VMM does.
fn uffd_handler(socket: &Path, mem: &Path) -> kiln_tests::KillOnDrop {
    use std::io::BufRead;
    let mut child = kiln_tests::process::spawn(
        Command::new(require_bin("kiln-uffd-handler"))
            .arg("--socket")
            .arg(socket)
            .arg("--mem-file")
            .arg(mem)
            .stdin(std::process::Stdio::null()),
    );
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("the handler's stdout"))
        .read_line(&mut line)
        .expect("the handler's ready line");
    assert_eq!(line, "ready\n", "the page-fault handler did not start");
    kiln_tests::KillOnDrop::new(child)
}

/// A config-file boot (`--no-api`) of `boot_args` with one drive "data".
fn blk_run(launch: &Launch, run: &'static str, boot_args: &str, read_only: bool) -> Outcome {
    let dir = Scratch::new("kiln-sc-blk");
    let img = dir.image("data.img", 16);
    let cfg = config(
        &dir,
        boot_args,
        &[drive_json("data", &img, false, read_only)],
        &[],
    );
    let metrics = dir.path("metrics.json");
    let args = [
        path_arg("--config-file", &cfg).to_vec(),
        os(&["--no-api"]),
        path_arg("--metrics-path", &metrics).to_vec(),
    ]
    .concat();
    launch
        .start(run, None, &args, false)
        .finish(run, Expect::Exit(0), true)
}

/// `blk-swap`: the guest waits while `PATCH /drives/data` swaps its backing file (opened
/// read-only for a read-only drive).
fn swap_run(launch: &Launch, run: &'static str, read_only: bool) -> Outcome {
    let dir = Scratch::new("kiln-sc-swap");
    let first = dir.image("first.img", 16);
    let second = dir.image("second.img", 40);
    let (args, sock) = data_drive_with_api(&dir, "kiln.test=blk-swap", &first, read_only);
    let mut vm = launch.start(run, None, &args, false);
    assert!(
        vm.wait_line_contains("blk waiting"),
        "the guest never waited for the swap:\n{}",
        vm.seen()
    );
    let body = format!(
        "{{\"drive_id\": \"data\", \"path_on_host\": {:?}}}",
        second.to_str().expect("utf-8")
    );
    ok(&sock, "PATCH", "/drives/data", &body);
    vm.finish(run, Expect::Exit(0), true)
}

/// `net-tx` and `net-rx` on a tap in a namespace of the test's own.
fn net_run(launch: &Launch, run: &'static str) -> Outcome {
    let dir = Scratch::new("kiln-sc-net");
    let ns = NetNs::new("kiln-sc");
    let tap = tap_name("n");
    ns.add_tap(&tap, None);
    let sock = ns.packet_socket(&tap);
    let cfg = config(&dir, &format!("kiln.test={run}"), &[], &[net_json(&tap)]);
    let args = [path_arg("--config-file", &cfg).to_vec(), os(&["--no-api"])].concat();
    let mut vm = launch.start(run, Some(&ns), &args, false);
    if run == "net-rx" {
        assert!(
            vm.wait_line_contains("net rx ready"),
            "the guest never got ready to receive:\n{}",
            vm.seen()
        );
        let mut frame = vec![
            0x06, 0x00, 0xac, 0x10, 0x00, 0x02, 0x02, 0x4b, 0x49, 0x4c, 0x4e, 0x02, 0x88, 0xb5,
        ];
        frame.extend(std::iter::repeat_n(0x4bu8, 100));
        // Sent again until the guest has it: the first may arrive before the device
        // watches the tap (this test is about syscalls, not that race).
        for _ in 0..8 {
            sock.send(&frame).expect("send a frame on the tap");
            if vm.wait_line_contains_for("net rx len", Duration::from_secs(1)) {
                break;
            }
        }
    } else {
        let _ = sock.recv_matching(TIMEOUT, |f| f.len() >= 14 && f[12..14] == [0x88, 0xb5]);
    }
    vm.finish(run, Expect::Exit(0), true)
}

/// MMDS V2 on the interface (`--metadata` at start): the guest's ARP, TCP, token and GETs
/// answered on the VMM thread (its session-token key comes from getrandom there).
fn mmds_run(launch: &Launch) -> Outcome {
    let dir = Scratch::new("kiln-sc-mmds");
    let ns = NetNs::new("kiln-sc");
    let tap = tap_name("m");
    ns.add_tap(&tap, None);
    let cfg = config(&dir, "kiln.test=mmds kiln.mmds=2", &[], &[net_json(&tap)]);
    let text = std::fs::read_to_string(&cfg).expect("read config");
    let mmds = ",\n \"mmds-config\": {\"version\": \"V2\", \"network_interfaces\": [\"eth0\"]}}\n";
    std::fs::write(
        &cfg,
        format!("{}{mmds}", text.trim_end().trim_end_matches('}')),
    )
    .expect("write config");
    let metadata = dir.path("metadata.json");
    std::fs::write(
        &metadata,
        r#"{"latest": {"meta-data": {"ami-id": "ami-1"}}}"#,
    )
    .expect("write metadata");
    let args = [
        path_arg("--config-file", &cfg).to_vec(),
        path_arg("--metadata", &metadata).to_vec(),
        os(&["--no-api"]),
    ]
    .concat();
    let vm = launch.start("mmds", Some(&ns), &args, false);
    vm.finish("mmds", Expect::Exit(0), true)
}

/// Rate limiters at work: `blk-burst` on a drive and `rng-read` on an entropy device, each
/// limited to one request per 20 ms (the limiter's timer, armed and read on the VMM thread).
fn limited_run(launch: &Launch, run: &'static str) -> Outcome {
    let dir = Scratch::new("kiln-sc-limit");
    let img = dir.image("data.img", 16);
    let drive = format!(
        "{{\"drive_id\": \"data\", \"path_on_host\": {:?}, \"is_root_device\": false, \"rate_limiter\": {LIMITER}}}",
        img.to_str().expect("utf-8 path")
    );
    let cfg = config(
        &dir,
        &format!("kiln.test={run} kiln.count=4"),
        &[drive],
        &[],
    );
    let text = std::fs::read_to_string(&cfg).expect("read config");
    let entropy = format!(",\n \"entropy\": {{\"rate_limiter\": {LIMITER}}}}}\n");
    std::fs::write(
        &cfg,
        format!("{}{entropy}", text.trim_end().trim_end_matches('}')),
    )
    .expect("write config");
    let args = [path_arg("--config-file", &cfg).to_vec(), os(&["--no-api"])].concat();
    launch
        .start(run, None, &args, false)
        .finish(run, Expect::Exit(0), true)
}

/// The balloon: the guest inflates by the configured target (the VMM thread gives the pages
/// back with `madvise`), then deflates when `PATCH /balloon` lowers it; statistics every
/// second (the timer armed on the VMM thread).
fn balloon_run(launch: &Launch) -> Outcome {
    let dir = Scratch::new("kiln-sc-balloon");
    let cfg = config(
        &dir,
        "kiln.test=balloon kiln.mib=8 kiln.base=16 kiln.ram=32",
        &[],
        &[],
    );
    let text = std::fs::read_to_string(&cfg).expect("read config");
    let balloon = ",\n \"balloon\": {\"amount_mib\": 8, \"deflate_on_oom\": true, \"stats_polling_interval_s\": 1}}\n";
    std::fs::write(
        &cfg,
        format!("{}{balloon}", text.trim_end().trim_end_matches('}')),
    )
    .expect("write config");
    let sock = dir.path("api.sock");
    let args = [
        path_arg("--config-file", &cfg).to_vec(),
        path_arg("--api-sock", &sock).to_vec(),
    ]
    .concat();
    let mut vm = launch.start("balloon", None, &args, false);
    assert!(
        vm.wait_line_contains("balloon inflated"),
        "the guest never inflated:\n{}",
        vm.seen()
    );
    ok(&sock, "PATCH", "/balloon", "{\"amount_mib\": 0}");
    vm.finish("balloon", Expect::Exit(0), true)
}

/// Memory hot-plug: the guest plugs what `PATCH /hotplug/memory` asks (the VMM thread
/// registers a KVM memory slot), writes it, and unplugs it when the request falls (the slot
/// removed, the blocks given back with `madvise`).
fn vmem_run(launch: &Launch) -> Outcome {
    let dir = Scratch::new("kiln-sc-vmem");
    let cfg = config(&dir, "kiln.test=vmem", &[], &[]);
    let text = std::fs::read_to_string(&cfg).expect("read config");
    let hotplug = ",\n \"memory-hotplug\": {\"total_size_mib\": 128}}\n";
    std::fs::write(
        &cfg,
        format!("{}{hotplug}", text.trim_end().trim_end_matches('}')),
    )
    .expect("write config");
    let sock = dir.path("api.sock");
    let args = [
        path_arg("--config-file", &cfg).to_vec(),
        path_arg("--api-sock", &sock).to_vec(),
    ]
    .concat();
    let mut vm = launch.start("vmem", None, &args, false);
    assert!(
        vm.wait_line_contains("vmem base="),
        "the guest never started virtio-mem:\n{}",
        vm.seen()
    );
    ok(
        &sock,
        "PATCH",
        "/hotplug/memory",
        "{\"requested_size_mib\": 4}",
    );
    assert!(
        vm.wait_line_contains("vmem wrote"),
        "the guest never plugged:\n{}",
        vm.seen()
    );
    ok(
        &sock,
        "PATCH",
        "/hotplug/memory",
        "{\"requested_size_mib\": 0}",
    );
    assert!(
        vm.wait_line_contains("vmem after-unplug"),
        "the guest never unplugged:\n{}",
        vm.seen()
    );
    ok(
        &sock,
        "PATCH",
        "/hotplug/memory",
        "{\"requested_size_mib\": 2}",
    );
    vm.finish("vmem", Expect::Exit(0), true)
}

/// virtio-pmem: the guest reads and writes the backing file through its window and sends a
/// flush (`msync` on the VMM thread).
fn pmem_run(launch: &Launch) -> Outcome {
    let dir = Scratch::new("kiln-sc-pmem");
    let cfg = config(&dir, "kiln.test=pmem", &[], &[]);
    let backing = dir.path("pmem.img");
    std::fs::write(&backing, vec![0x5au8; 8192]).expect("write the backing file");
    let text = std::fs::read_to_string(&cfg).expect("read config");
    let pmem = format!(
        ",\n \"pmem\": [{{\"id\": \"p0\", \"path_on_host\": {:?}}}]}}\n",
        backing.to_str().expect("utf-8 path")
    );
    std::fs::write(
        &cfg,
        format!("{}{pmem}", text.trim_end().trim_end_matches('}')),
    )
    .expect("write config");
    let args = [path_arg("--config-file", &cfg).to_vec(), os(&["--no-api"])].concat();
    let vm = launch.start("pmem", None, &args, false);
    vm.finish("pmem", Expect::Exit(0), true)
}

/// The balloon's free page reporting and hinting: the guest reports ranges on the host's
/// signal (a target), then hints in a run `PATCH /balloon/hinting/start` begins (the VMM
/// thread drops them with `madvise` and answers the guest's STOP with DONE).
fn balloon_free_run(launch: &Launch) -> Outcome {
    let dir = Scratch::new("kiln-sc-balloon-free");
    let cfg = config(
        &dir,
        "kiln.test=balloon-free kiln.mib=8 kiln.base=16",
        &[],
        &[],
    );
    let text = std::fs::read_to_string(&cfg).expect("read config");
    let balloon = ",\n \"balloon\": {\"amount_mib\": 0, \"deflate_on_oom\": false, \"free_page_hinting\": true, \"free_page_reporting\": true}}\n";
    std::fs::write(
        &cfg,
        format!("{}{balloon}", text.trim_end().trim_end_matches('}')),
    )
    .expect("write config");
    let sock = dir.path("api.sock");
    let args = [
        path_arg("--config-file", &cfg).to_vec(),
        path_arg("--api-sock", &sock).to_vec(),
    ]
    .concat();
    let mut vm = launch.start("balloon-free", None, &args, false);
    assert!(
        vm.wait_line_contains("balloon-free touched"),
        "the guest never touched its memory:\n{}",
        vm.seen()
    );
    ok(&sock, "PATCH", "/balloon", "{\"amount_mib\": 1}");
    assert!(
        vm.wait_line_contains("balloon-free reported"),
        "the guest never reported:\n{}",
        vm.seen()
    );
    ok(&sock, "PATCH", "/balloon/hinting/start", "{}");
    vm.finish("balloon-free", Expect::Exit(0), true)
}

/// The guest's i8042 reset, with serial input arriving on the VMM's stdin.
fn reset_run(launch: &Launch) -> Outcome {
    let dir = Scratch::new("kiln-sc-reset");
    let cfg = config(&dir, "console=ttyS0 kiln.test=reset", &[], &[]);
    let args = [path_arg("--config-file", &cfg).to_vec(), os(&["--no-api"])].concat();
    let mut vm = launch.start("reset", None, &args, true);
    if let Some(stdin) = vm.0.stdin() {
        let _ = stdin.write_all(b"typed on the serial console\n");
        let _ = stdin.flush();
    }
    // The reset scenario ends the VM without `done`.
    vm.finish("reset", Expect::Exit(0), false)
}

/// virtio-vsock with Firecracker's host side, each way and with a hostile guest
/// (`vsock-connect`: the guest connects to `<uds_path>_1234` where the test listens;
/// `vsock-listen`: the test connects to `uds_path` with `CONNECT 5000`, after a host peer that
/// sends garbage; `vsock-bad`: malformed packets, then a normal exchange).
fn vsock_run(launch: &Launch, run: &'static str) -> Outcome {
    let dir = Scratch::new("kiln-sc-vsock");
    let uds = dir.path("v.sock");
    let boot_args = match run {
        "vsock-listen" => "kiln.test=vsock-listen kiln.port=5000".to_string(),
        other => format!("kiln.test={other} kiln.port=1234"),
    };
    let cfg = config(&dir, &boot_args, &[], &[]);
    let text = std::fs::read_to_string(&cfg).expect("read config");
    let vsock = format!(
        ",\n \"vsock\": {{\"guest_cid\": 3, \"uds_path\": {:?}}}}}\n",
        uds.to_str().expect("utf-8")
    );
    std::fs::write(
        &cfg,
        format!("{}{vsock}", text.trim_end().trim_end_matches('}')),
    )
    .expect("write config");
    let listener = (run != "vsock-listen").then(|| {
        let l = std::os::unix::net::UnixListener::bind(dir.path("v.sock_1234"))
            .expect("bind <uds_path>_1234");
        l.set_nonblocking(true).expect("nonblocking listener");
        l
    });
    let args = [path_arg("--config-file", &cfg).to_vec(), os(&["--no-api"])].concat();
    let mut vm = launch.start(run, None, &args, false);
    let exchange = |s: &mut UnixStream, message: &[u8]| {
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let mut buf = [0u8; 256];
        if !message.is_empty() {
            let _ = s.write_all(message);
        }
        // Whatever comes, until the peer closes.
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    };
    match listener {
        Some(l) => {
            let deadline = Instant::now() + TIMEOUT;
            let mut stream = None;
            while stream.is_none() && Instant::now() < deadline {
                match l.accept() {
                    Ok((s, _)) => stream = Some(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            if let Some(mut s) = stream {
                let _ = s.set_nonblocking(false);
                let mut msg = [0u8; 36];
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = s.read_exact(&mut msg);
                exchange(&mut s, b"KILN-HOST reply to the guest");
            }
        }
        None => {
            assert!(
                vm.wait_line_contains("vsock listen port=5000"),
                "the guest never listened:\n{}",
                vm.seen()
            );
            if let Ok(mut garbage) = UnixStream::connect(&uds) {
                exchange(&mut garbage, b"HELLO VMM\n");
            }
            if let Ok(mut s) = UnixStream::connect(&uds) {
                let _ = s.write_all(b"CONNECT 5000\n");
                let mut ok = [0u8; 16];
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = s.read(&mut ok);
                exchange(&mut s, b"hello from the host, kiln");
            }
        }
    }
    vm.finish(run, Expect::Exit(0), true)
}

/// A triple fault: the vCPU thread's fault path (registers, translation), exit code 2.
fn triple_run(launch: &Launch) -> Outcome {
    let dir = Scratch::new("kiln-sc-triple");
    let cfg = config(&dir, "kiln.test=triple", &[], &[]);
    let args = [path_arg("--config-file", &cfg).to_vec(), os(&["--no-api"])].concat();
    launch
        .start("triple", None, &args, false)
        .finish("triple", Expect::Exit(GUEST_CRASH), false)
}

/// Every run of the lifecycle, in order. Needs root (namespaces, taps) and /dev/kvm.
pub fn lifecycle(launch: &Launch) -> Vec<Outcome> {
    require_root();
    require_kvm();
    let mut all = api_and_restore_runs(launch);
    for (run, args, ro) in [
        (
            "blk-write",
            "kiln.test=blk-write kiln.sector=3 kiln.count=2",
            false,
        ),
        ("blk-flush", "kiln.test=blk-flush", false),
        ("blk-id", "kiln.test=blk-id", false),
        ("blk-ro", "kiln.test=blk-ro", true),
        ("blk-oob", "kiln.test=blk-oob", false),
        ("virtio-loop", "kiln.test=virtio-loop", false),
        ("virtio-oob", "kiln.test=virtio-oob", false),
        ("virtio-qsize", "kiln.test=virtio-qsize", false),
        ("virtio-mmio-junk", "kiln.test=virtio-mmio-junk", false),
    ] {
        all.push(blk_run(launch, run, args, ro));
    }
    all.push(swap_run(launch, "blk-swap", false));
    all.push(swap_run(launch, "blk-swap-ro", true));
    all.push(net_run(launch, "net-tx"));
    all.push(net_run(launch, "net-rx"));
    all.push(mmds_run(launch));
    for run in ["vsock-connect", "vsock-listen", "vsock-bad"] {
        all.push(vsock_run(launch, run));
    }
    for run in ["blk-burst", "rng-read"] {
        all.push(limited_run(launch, run));
    }
    all.push(balloon_run(launch));
    all.push(balloon_free_run(launch));
    all.push(vmem_run(launch));
    all.push(pmem_run(launch));
    all.push(reset_run(launch));
    all.push(triple_run(launch));
    all
}

/// A VMM whose `target` threads call `abort()` right after installing their filter (the
/// debug-build hook `KILN_TEST_ABORT`; a release build's panic ends the same way): it must
/// end with SIGABRT, which needs the abort path in every filter. `target` is a thread kind
/// or name; the VMM boots the tiny guest (`halt`) with one drive, through a config file and
/// the API socket.
pub fn abort_run(launch: &Launch, run: &'static str, target: &str) -> Outcome {
    hook_run(
        launch,
        run,
        "KILN_TEST_ABORT",
        target,
        Expect::Signal(libc::SIGABRT),
    )
}

/// Like [`abort_run`], with the hook `KILN_TEST_FORBIDDEN_SYSCALL` (a syscall no filter
/// allows): the process must be killed with SIGSYS.
pub fn forbidden_run(launch: &Launch, run: &'static str, target: &str) -> Outcome {
    hook_run(
        launch,
        run,
        "KILN_TEST_FORBIDDEN_SYSCALL",
        target,
        Expect::Signal(libc::SIGSYS),
    )
}

fn hook_run(
    launch: &Launch,
    run: &'static str,
    hook: &str,
    target: &str,
    expected: Expect,
) -> Outcome {
    let dir = Scratch::new("kiln-sc-hook");
    let img = dir.image("data.img", 16);
    let (args, _sock) = data_drive_with_api(&dir, "kiln.test=halt", &img, false);
    let mut launch = launch.clone();
    launch.env.push((hook.to_string(), target.to_string()));
    let mut vm = launch.start(run, None, &args, false);
    // The API and metrics threads install their filters at once; the vCPU and main
    // threads once the guest is running: it is stopped by SIGTERM if nothing else ends it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && vm.running() {
        std::thread::sleep(Duration::from_millis(20));
    }
    if vm.running() {
        vm.signal(libc::SIGTERM);
    }
    vm.finish(run, expected, false)
}
