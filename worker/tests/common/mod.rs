//! What the worker's integration tests share: a private environment per test (chroot base,
//! state and cache directories, parent cgroup, uid range), the `kiln` command for it, and
//! the check that nothing is left behind.
#![allow(dead_code)]

use kiln_tests::jail::HostSnapshot;
use kiln_tests::{require_bin, require_kvm, require_root, unique_id, ScratchDir};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// One test's private corner of the host.
pub struct Env {
    pub name: String,
    /// Removed, with everything in it, when the environment is dropped.
    pub root: ScratchDir,
    pub chroot_base: PathBuf,
    pub state_dir: PathBuf,
    pub parent_cgroup: String,
    pub uid_base: u32,
    pub jailer: PathBuf,
    pub vmm: PathBuf,
}

/// The parent cgroup the jailer made for this environment's jails goes with it.
impl Drop for Env {
    fn drop(&mut self) {
        kiln_tests::jail::remove_parent_cgroup(&self.parent_cgroup);
    }
}

impl Env {
    pub fn new(prefix: &str) -> Env {
        require_root();
        require_kvm();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = unique_id(prefix);
        // Short: the vsock socket path under the state directory must fit in 107 bytes.
        let root = ScratchDir::short("kw");
        let chroot_base = root.join("j");
        let state_dir = root.join("s");
        std::fs::create_dir_all(&chroot_base).expect("create the chroot base");
        std::fs::create_dir_all(&state_dir).expect("create the state dir");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Env {
            parent_cgroup: format!("kw-{name}"),
            uid_base: 40_000 + (std::process::id() % 100) * 200 + n * 20,
            name,
            root,
            chroot_base,
            state_dir,
            jailer: require_bin("jailer"),
            vmm: require_bin("vmm"),
        }
    }

    /// Everything that could be left behind by this environment's jails, `ids` naming them
    /// (instance ids, or prefixes such as `echo-`). Other tests — and other suites on the
    /// same host — run jails of the same functions meanwhile, so only what is this
    /// environment's counts: mounts under its chroot base, cgroups under its parent cgroup,
    /// files under its chroot base, its instance records and worker locks; network
    /// namespaces (and their mounts) by exact instance id only (an id ends with its worker's
    /// tag; a namespace outlives its jail's journal only if `jailer cleanup` is wrong, and
    /// that journal is under the chroot base).
    pub fn leftovers(&self, ids: &[String]) -> Vec<String> {
        let base = self.chroot_base.display().to_string();
        let mut needles: Vec<&str> = ids.iter().map(String::as_str).collect();
        needles.push(&self.parent_cgroup);
        needles.push(&base);
        let exact: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .filter(|i| kiln_worker::instance::tag_of(i).is_some())
            .collect();
        let snap = HostSnapshot::take(&needles, &self.chroot_base);
        let mut left = Vec::new();
        left.extend(
            snap.mounts
                .into_iter()
                .filter(|m| {
                    m.contains(&base)
                        || exact
                            .iter()
                            .any(|id| m.ends_with(&format!("/run/netns/{id}")))
                })
                .map(|m| format!("mount {m}")),
        );
        let parent = format!("/{}/", self.parent_cgroup);
        left.extend(
            snap.cgroups
                .into_iter()
                // The parent cgroup itself may stay (the jailer leaves parents it did not
                // create alone; the worker's parent is shared by its jails).
                .filter(|c| c.contains(&parent))
                .map(|c| format!("cgroup {c}")),
        );
        left.extend(
            snap.netns
                .into_iter()
                .filter(|n| exact.contains(&n.as_str()))
                .map(|n| format!("netns {n}")),
        );
        // `<base>/vmm` itself may stay when jails ran side by side (only the jail that
        // created it removes it, if it is empty then); what is in it may not.
        let exec_dir = self.chroot_base.join("vmm");
        left.extend(
            snap.files
                .into_iter()
                .filter(|f| Path::new(f) != self.chroot_base && Path::new(f) != exec_dir)
                .map(|f| format!("file {f}")),
        );
        if let Ok(entries) = std::fs::read_dir(self.state_dir.join("instances")) {
            left.extend(
                entries
                    .flatten()
                    .map(|e| format!("instance dir {}", e.path().display())),
            );
        }
        // A worker's lock file stays while it runs; one whose lock nobody holds is left
        // behind (after a SIGKILL, until the next worker's sweep; a worker that stopped
        // removes its own).
        if let Ok(entries) = std::fs::read_dir(self.state_dir.join("workers")) {
            left.extend(
                entries
                    .flatten()
                    .filter(|e| {
                        matches!(
                            kiln_worker::sys::FileLock::acquire(&e.path(), false),
                            Ok(Some(_))
                        )
                    })
                    .map(|e| format!("worker lock {}", e.path().display())),
            );
        }
        left
    }

    pub fn assert_nothing_left(&self, ids: &[String]) {
        let left = self.leftovers(ids);
        assert!(left.is_empty(), "left behind: {left:#?}");
    }
}

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

impl Env {
    /// `kiln COMMAND` with this environment's jail settings.
    pub fn kiln(&self, command: &str) -> Command {
        self.kiln_with_functions(command, &repo().join("examples/functions"))
    }

    pub fn kiln_with_functions(&self, command: &str, functions: &Path) -> Command {
        prebuild_examples();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.arg(command)
            .arg("--functions-dir")
            .arg(functions)
            .arg("--cache-dir")
            .arg(kiln_tests::cache_dir().join("functions"))
            .arg("--jailer")
            .arg(&self.jailer)
            .arg("--vmm")
            .arg(&self.vmm)
            .arg("--profile")
            .arg(repo().join("policies/tenant/default.json"))
            .arg("--chroot-base-dir")
            .arg(&self.chroot_base)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--uid-base")
            .arg(self.uid_base.to_string())
            .args(["--uid-count", "20"])
            .arg("--parent-cgroup")
            .arg(&self.parent_cgroup);
        cmd
    }
}

/// Builds every example function once per test binary, before any test's worker needs one:
/// on a fresh machine the first build of a function takes far longer than a request's
/// deadline.
pub fn prebuild_examples() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dir = repo().join("examples/functions");
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("examples/functions")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("kiln.json").is_file())
            // Linux functions (linux-echo) boot a kernel: tests/tests/slow_worker_linux.rs.
            .filter(|p| {
                kiln_guest_builder::Manifest::load(p)
                    .is_ok_and(|m| m.kind != kiln_guest_builder::Kind::Linux)
            })
            .collect();
        names.sort();
        for f in names {
            let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
                .arg("build")
                .arg(&f)
                .arg("--cache-dir")
                .arg(kiln_tests::cache_dir().join("functions"))
                .output()
                .expect("run kiln build");
            assert!(
                out.status.success(),
                "kiln build {} failed: {}",
                f.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
}

/// The memory limit of jail `id`'s cgroup (v1 `memory.limit_in_bytes` or v2 `memory.max`).
pub fn jail_memory_limit(id: &str) -> Option<u64> {
    fn walk(dir: &Path, id: &str, depth: usize) -> Option<u64> {
        if depth > 8 {
            return None;
        }
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let p = e.path();
            if e.file_name() == id {
                for f in ["memory.limit_in_bytes", "memory.max"] {
                    if let Some(v) = std::fs::read_to_string(p.join(f))
                        .ok()
                        .and_then(|t| t.trim().parse().ok())
                    {
                        return Some(v);
                    }
                }
            }
            if let Some(v) = walk(&p, id, depth + 1) {
                return Some(v);
            }
        }
        None
    }
    walk(Path::new("/sys/fs/cgroup"), id, 0)
}

/// A function's manifest (with its defaults), read by the test to know its limits.
pub fn manifest(function: &str) -> kiln_guest_builder::Manifest {
    let dir = repo().join("examples/functions").join(function);
    kiln_guest_builder::Manifest::load(&dir)
        .unwrap_or_else(|e| panic!("MISSING PRECONDITION: example function {function}: {e}"))
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn vm_id(&self) -> String {
        self.header("X-Kiln-Vm-Id")
            .map(str::to_string)
            .or_else(|| self.json()["error"]["vm_id"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("no VM id in {self}"))
    }

    pub fn cold(&self) -> bool {
        self.header("X-Kiln-Cold-Start") == Some("true")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The error code of a JSON error answer.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?} {}", self.status, self.headers, self.text())
    }
}

/// One request over the Unix socket (`Connection: close`).
pub fn request(socket: &Path, method: &str, path: &str, body: &[u8]) -> Reply {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    raw_request(socket, &req)
}

/// `bytes` sent as they are over the Unix socket; the answer, read until the server closes.
pub fn raw_request(socket: &Path, bytes: &[u8]) -> Reply {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    s.write_all(bytes).expect("send the request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the answer");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// A running `kiln serve`.
pub struct Server {
    pub socket: PathBuf,
    child: Option<std::process::Child>,
    stderr: Option<std::thread::JoinHandle<()>>,
    /// What it printed on stderr so far.
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    /// `kiln serve` on a socket in `env`, and on an ephemeral loopback TCP port unless
    /// `extra` says `--listen`.
    pub fn start(env: &Env, extra: &[&str]) -> Server {
        Self::start_with(env, env.kiln("serve"), extra)
    }

    pub fn start_with(env: &Env, mut cmd: Command, extra: &[&str]) -> Server {
        use std::io::BufRead;
        let socket = env.root.join("kiln.sock");
        if !extra.iter().any(|a| a.starts_with("--listen")) {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn kiln serve");
        let err = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        let stderr = std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut l = sink.lock().unwrap_or_else(|p| p.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
        });
        let t = std::time::Instant::now();
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let _ = stderr.join();
                panic!(
                    "kiln serve exited ({status}): {}",
                    log.lock().map(|l| l.clone()).unwrap_or_default()
                );
            }
            assert!(
                t.elapsed() < std::time::Duration::from_secs(30),
                "kiln serve did not listen"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Server {
            socket,
            child: Some(child),
            stderr: Some(stderr),
            log,
        }
    }

    /// The worker's tag, which ends every instance id it makes (`<state>/workers/<tag>.lock`).
    pub fn tag(&self, env: &Env) -> String {
        let names: Vec<String> = std::fs::read_dir(env.state_dir.join("workers"))
            .expect("the workers directory")
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".lock"))
                    .map(str::to_string)
            })
            .collect();
        assert_eq!(
            names.len(),
            1,
            "one worker runs on {}",
            env.state_dir.display()
        );
        names.into_iter().next().expect("one tag")
    }

    /// What the server printed on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Its TCP address (from its `listening on http://ADDR` line).
    pub fn tcp_addr(&self) -> std::net::SocketAddr {
        let mut found = None;
        wait_until(
            "kiln serve's TCP address",
            std::time::Duration::from_secs(10),
            || {
                found = self.log().lines().find_map(|l| {
                    l.split("listening on http://")
                        .nth(1)
                        .and_then(|rest| rest.split_whitespace().next())
                        .and_then(|a| a.parse().ok())
                });
                found.is_some()
            },
        );
        found.expect("address")
    }

    /// `http://ADDR` of its TCP listener.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.tcp_addr())
    }

    pub fn invoke(&self, function: &str, event: &[u8]) -> Reply {
        request(
            &self.socket,
            "POST",
            &format!("/functions/{function}/invocations"),
            event,
        )
    }

    /// `GET /functions`: function name → its instances.
    pub fn instances(&self) -> Vec<(String, serde_json::Value)> {
        let r = request(&self.socket, "GET", "/functions", b"");
        assert_eq!(r.status, 200, "{r}");
        r.json()["functions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .flat_map(|f| {
                let name = f["name"].as_str().unwrap_or("").to_string();
                f["instances"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |i| (name.clone(), i))
            })
            .collect()
    }

    /// SIGKILL: the worker gets no chance to clean up.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits; returns its stderr. It must exit 0 within 30 s.
    pub fn stop(mut self) -> String {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let t = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                break s;
            }
            if t.elapsed() > std::time::Duration::from_secs(30) {
                let _ = child.kill();
                panic!("kiln serve did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        if let Some(h) = self.stderr.take() {
            let _ = h.join();
        }
        let stderr = self.log();
        assert!(status.success(), "kiln serve: {status}\n{stderr}");
        assert!(!self.socket.exists(), "the socket is removed at exit");
        stderr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

/// Waits until `cond` holds (checked every 20 ms) or panics after `timeout`.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !cond() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
