//! Test kit shared by Kiln's workspace-level suites.
//!
//! Every precondition a test needs (root, `/dev/kvm`, a built binary, a guest asset) is
//! checked by a `require_*` function that panics with a message naming what is missing and
//! how to get it: a test never passes silently because its environment was incomplete.

pub mod assets;
pub mod jail;
pub mod netns;
pub mod security;
pub mod tiny;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Panics unless the test runs as root (euid 0).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "MISSING PRECONDITION: this test needs root (euid is {euid}); run the README's test command as root"
    );
}

/// Panics unless `/dev/kvm` exists and can be opened read-write.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("MISSING PRECONDITION: this test needs a usable /dev/kvm ({e})");
    }
}

/// True on hosts where KVM is provided by `kvm_pvm` (guest ring 0 emulated, guest user
/// space cannot run); see shared/notes/host-kvm.md.
pub fn is_pvm_host() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// The directory holding the workspace's binaries for the profile this test was built with
/// (`target/<triple>/<profile>/`); test executables live in its `deps/` subdirectory.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test executable has a directory");
    deps.parent().expect("deps/ has a parent").to_path_buf()
}

/// Path of a workspace binary (`vmm`, `jailer`, ...), panicking with a clear message when it
/// has not been built.
pub fn require_bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "MISSING PRECONDITION: binary {} is not built; run `cargo build --workspace` (the README's test command does)",
        path.display()
    );
    path
}

/// Where the set-up keeps built guest assets (outside the repo): `$KILN_CACHE`, else
/// `$XDG_CACHE_HOME/kiln`, else `$HOME/.cache/kiln`. Mirrors scripts/lib.sh.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("kiln");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache").join("kiln")
}

/// A unique, short name for jails, sockets and namespaces made by one test.
pub fn unique_id(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// What a bounded run of a child process produced.
#[derive(Debug)]
pub struct Finished {
    /// `None` when the process was killed at the deadline.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    /// The exit code, panicking with the whole output when the process timed out or was
    /// killed by a signal.
    pub fn code(&self) -> i32 {
        match self.status.and_then(|s| s.code()) {
            Some(c) => c,
            None => panic!(
                "process did not exit normally (status {:?})\n{}",
                self.status, self
            ),
        }
    }
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--- status: {:?} after {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.status, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` with stdout and stderr captured, killing it (SIGKILL) if it has not exited
/// after `timeout`. Stdin is /dev/null.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Finished {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    wait_with_timeout(&mut child, timeout, start)
}

/// Waits for a spawned child whose stdout/stderr are piped, killing it at the deadline.
pub fn wait_with_timeout(child: &mut Child, timeout: Duration, start: Instant) -> Finished {
    let out = child.stdout.take().map(drain);
    let err = child.stderr.take().map(drain);
    let status = loop {
        match child.try_wait().expect("try_wait") {
            Some(s) => break Some(s),
            None if start.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let stdout = out
        .map(|h| h.join().unwrap_or_default())
        .unwrap_or_default();
    let stderr = err
        .map(|h| h.join().unwrap_or_default())
        .unwrap_or_default();
    Finished {
        status,
        stdout,
        stderr,
        elapsed: start.elapsed(),
    }
}

fn drain<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}
