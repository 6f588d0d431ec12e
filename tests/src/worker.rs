//! `kiln serve` as the worker suites run it (tests/tests/chaos.rs, blank_pool.rs): its own
//! scratch directories, parent cgroup and uid range; the check that nothing of it is left
//! (mounts, cgroups, network namespaces, files under its chroot base, instance records,
//! worker locks, processes); invocations over its Unix socket; and the pidfd-checked SIGKILL
//! the suites kill its processes with.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::jail::HostSnapshot;
use crate::{require_bin, require_kvm, ScratchDir};

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One `kiln serve` environment: its directories, parent cgroup and uids, and every worker
/// process started on them.
pub struct Worker {
    pub root: ScratchDir,
    pub chroot_base: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub parent_cgroup: String,
    pub uid_base: u32,
    pub kiln: PathBuf,
    pub cache: PathBuf,
    /// Every `kiln serve` started (their pids are in their instance ids).
    pub pids: Vec<u32>,
    /// The workers' stderr, one after the other, shown when the test fails.
    pub log: PathBuf,
}

/// The parent cgroup the jailer made for this worker's jails goes with the worker's scratch
/// directory even if a jail could not remove it (a test that failed while its jails ran):
/// nothing of a test is left on the host. A worker still running (a test that failed before stopping it) is stopped first, with
/// SIGTERM (it stops its instances), so that a failed test does not leave a `kiln serve`
/// re-making blank instances behind.
impl Drop for Worker {
    fn drop(&mut self) {
        let base = self.chroot_base.to_string_lossy().into_owned();
        let ours = |pid: u32| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&base))
        };
        let running: Vec<u32> = self.pids.iter().copied().filter(|&p| ours(p)).collect();
        for &pid in &running {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill takes plain integers; the pid was checked to be this worker.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while running.iter().any(|&p| ours(p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        crate::jail::remove_parent_cgroup(&self.parent_cgroup);
    }
}

impl Worker {
    // Not a `Default`: it checks /dev/kvm and builds echo.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Worker {
        require_kvm();
        let root = ScratchDir::short("kcw");
        let kiln = require_bin("kiln");
        let cache = crate::cache_dir().join("functions");
        let built = Command::new(&kiln)
            .args(["build"])
            .arg(repo().join("examples/functions/echo"))
            .arg("--cache-dir")
            .arg(&cache)
            .output()
            .expect("kiln build echo");
        assert!(built.status.success(), "kiln build echo: {built:?}");
        // Its own parent cgroup and uid range, also when several workers run at once in
        // one test process (the nanoseconds tell apart test processes of other PID
        // namespaces that share this host's cgroups).
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = root
            .path()
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "kcw".into());
        Worker {
            chroot_base: root.join("j"),
            state_dir: root.join("s"),
            socket: root.join("kiln.sock"),
            log: root.join("serve.log"),
            parent_cgroup: format!("{name}-{nanos:08x}"),
            uid_base: 20_000 + (std::process::id() % 50) * 600 + (n % 10) * 60,
            root,
            kiln,
            cache,
            pids: Vec::new(),
        }
    }

    /// Starts `kiln serve` and waits until it answers.
    pub fn start(&mut self) -> std::process::Child {
        self.start_with(&[])
    }

    /// Starts `kiln serve` with `extra` flags and waits until it answers.
    pub fn start_with(&mut self, extra: &[&str]) -> std::process::Child {
        let logged = std::fs::metadata(&self.log).map_or(0, |m| m.len());
        let mut child = Command::new(&self.kiln)
            .arg("serve")
            .arg("--functions-dir")
            .arg(repo().join("examples/functions"))
            .arg("--cache-dir")
            .arg(&self.cache)
            .arg("--jailer")
            .arg(require_bin("jailer"))
            .arg("--vmm")
            .arg(require_bin("vmm"))
            .arg("--profile")
            .arg(repo().join("policies/tenant/default.json"))
            .arg("--chroot-base-dir")
            .arg(&self.chroot_base)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args([
                "--uid-base",
                &self.uid_base.to_string(),
                "--uid-count",
                "60",
            ])
            .args(["--parent-cgroup", &self.parent_cgroup])
            .arg("--socket")
            .arg(&self.socket)
            .args([
                "--listen",
                "none",
                "--queue-timeout-ms",
                "20000",
                "--max-queue",
                "64",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log_file())
            .spawn()
            .expect("spawn kiln serve");
        self.pids.push(child.id());
        let t = Instant::now();
        // Its own socket, not the one its killed predecessor left (which a child that
        // predecessor forked may still hold open for a moment: see the clients' grace):
        // it says so on stderr once it listens.
        let ours = || {
            std::fs::read(&self.log).is_ok_and(|log| {
                let new = log.get(usize::try_from(logged).unwrap_or(0)..);
                String::from_utf8_lossy(new.unwrap_or_default()).contains("kiln: serving on")
            })
        };
        while !ours() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("kiln serve exited at start: {status}");
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "kiln serve did not listen"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        child
    }

    /// Where the next worker's stderr goes (after its predecessors').
    pub fn log_file(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("the workers' log")
    }

    /// The last lines the workers wrote to stderr.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    }

    /// Whether `text` names one of this environment's instances (`-<worker pid>-<tag>`).
    pub fn names_ours(&self, text: &str) -> bool {
        self.pids.iter().any(|p| text.contains(&format!("-{p}-")))
    }

    /// Pids of processes whose command line passes `filter`.
    pub fn pids_where(&self, filter: impl Fn(&str) -> bool) -> Vec<i32> {
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if cmdline_of(pid).is_some_and(|c| filter(&c)) {
                found.push(pid);
            }
        }
        found
    }

    /// What is left of this environment's jails, records and processes.
    pub fn leftovers(&self) -> Vec<String> {
        let base = self.chroot_base.display().to_string();
        // Instance ids (network namespaces) name their worker: `-<worker pid>-`.
        let ids: Vec<String> = self.pids.iter().map(|p| format!("-{p}-")).collect();
        let mut needles: Vec<&str> = vec![&base, &self.parent_cgroup];
        needles.extend(ids.iter().map(String::as_str));
        let snap = HostSnapshot::take(&needles, &self.chroot_base);
        let mut left = Vec::new();
        left.extend(
            snap.mounts
                .into_iter()
                .filter(|m| m.contains(&base) || self.names_ours(m))
                .map(|m| format!("mount {m}")),
        );
        let parent = format!("/{}/", self.parent_cgroup);
        left.extend(
            snap.cgroups
                .into_iter()
                .filter(|c| c.contains(&parent))
                .map(|c| format!("cgroup {c}")),
        );
        left.extend(
            snap.netns
                .into_iter()
                .filter(|n| self.names_ours(n))
                .map(|n| format!("netns {n}")),
        );
        let exec_dir = self.chroot_base.join("vmm").display().to_string();
        left.extend(
            snap.files
                .into_iter()
                .filter(|f| *f != base && *f != exec_dir)
                .map(|f| format!("file {f}")),
        );
        for dir in ["instances", "workers"] {
            for e in std::fs::read_dir(self.state_dir.join(dir))
                .into_iter()
                .flatten()
                .flatten()
            {
                left.push(format!("{dir}/{}", e.file_name().to_string_lossy()));
            }
        }
        for pid in self.pids_where(|c| c.contains(&base) || self.names_ours(c)) {
            left.push(format!("process {pid}"));
        }
        left
    }
}

/// An answer of `kiln serve`: status, head (status line and headers) and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// `method path` with `body` over the worker's socket; `None` when the worker does not
/// listen.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: &str,
) -> Option<Result<Answer, String>> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: k\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = s.write_all(req.as_bytes()) {
        return Some(Err(format!("send: {e}")));
    }
    let mut raw = Vec::new();
    if let Err(e) = s.read_to_end(&mut raw) {
        return Some(Err(format!("read: {e}")));
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Some(Err(format!("no answer: {text:?}")));
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Some(Ok(Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }))
}

/// One invocation of `function` with `event`; `None` when the worker does not listen.
pub fn invoke(socket: &Path, function: &str, event: &str) -> Option<Result<Answer, String>> {
    request(
        socket,
        "POST",
        &format!("/functions/{function}/invocations"),
        event,
    )
}

/// The command line of `pid`, its arguments joined by spaces.
pub fn cmdline_of(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// SIGKILL for a process found in /proc earlier, only if its command line still passes
/// `filter`: checked and signalled through a pidfd, so that a pid recycled since it was
/// listed (`kernel.pid_max` is 32768 on the development host, and this test makes processes
/// by the thousand) is never hit — a read of the command line made while the pidfd's
/// process still lived is that process's own.
pub fn kill_if(pid: i32, filter: &dyn Fn(&str) -> bool) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no
    // memory is passed.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let Ok(raw) = i32::try_from(rc) else {
        return false;
    };
    if raw < 0 {
        return false;
    }
    // SAFETY: `raw` is a descriptor the kernel just returned and nothing else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    if !cmdline_of(pid).is_some_and(|c| filter(&c)) {
        return false;
    }
    // SAFETY: `fd` is a valid pidfd; a null siginfo is allowed. ESRCH when the process the
    // pidfd names has exited (then the command line read may have been another's).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    rc == 0
}
