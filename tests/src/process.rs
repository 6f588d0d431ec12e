//! Child processes of a test: bounded runs ([`run_with_timeout`]), a child killed on every
//! way out of the test ([`KillOnDrop`]), a child whose stdout is followed line by line as it
//! comes ([`Followed`]: a VMM and its guest's serial console), stopping one with SIGTERM,
//! and what `/proc` says about a process.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

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
    let mut child = spawn(cmd.stdin(Stdio::null()));
    wait_with_timeout(&mut child, timeout, start)
}

/// Spawns `cmd` with stdout and stderr piped (stdin as `cmd` says), panicking with the
/// command when it cannot start.
pub fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"))
}

/// Waits for a spawned child whose stdout/stderr are piped, killing it at the deadline
/// (`timeout` after `start`).
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

/// Reads `r` to its end on a thread of its own.
fn drain<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// A child process killed (SIGKILL) and reaped when dropped: on every way out of a test,
/// a failed assertion included. Killing one that was already waited for does nothing.
pub struct KillOnDrop(Child);

impl KillOnDrop {
    pub fn new(child: Child) -> KillOnDrop {
        KillOnDrop(child)
    }
}

impl Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stops `child` with SIGTERM: its exit status when it ends within `timeout`, else `None`
/// and it is killed (SIGKILL) and reaped.
pub fn terminate(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    // SAFETY: kill(2) with a signal number, on our own child that has not been reaped (just
    // checked), so its pid cannot have been reused.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The lines of `r` as they come (read on a thread of its own; invalid UTF-8 replaced, the
/// line ending removed); the channel closes at end of file.
pub fn lines_of<R: Read + Send + 'static>(r: R) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(r);
        let mut buf = Vec::new();
        while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
            let text = String::from_utf8_lossy(&buf);
            let line = text.strip_suffix('\n').unwrap_or(&text);
            let line = line.strip_suffix('\r').unwrap_or(line);
            if tx.send(line.to_owned()).is_err() {
                break;
            }
            buf.clear();
        }
    });
    rx
}

/// Takes a child's piped stdout and reads its lines as they come (see [`lines_of`]).
pub fn line_reader(child: &mut Child) -> Receiver<String> {
    lines_of(child.stdout.take().expect("piped stdout"))
}

/// Takes a child's piped stderr and collects it in the background.
pub fn stderr_reader(child: &mut Child) -> std::thread::JoinHandle<String> {
    drain(child.stderr.take().expect("piped stderr"))
}

/// A spawned process whose stdout is followed line by line as it comes (a VMM and its
/// guest's serial console) and whose stderr is collected, killed when dropped.
pub struct Followed {
    child: KillOnDrop,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
    seen: String,
    start: Instant,
}

impl Followed {
    /// Spawns `cmd` with stdin on /dev/null, stdout followed and stderr collected.
    pub fn spawn(cmd: &mut Command) -> Followed {
        Followed::start(cmd.stdin(Stdio::null()))
    }

    /// Spawns `cmd` with a pipe on its stdin ([`Followed::stdin`]).
    pub fn spawn_with_stdin(cmd: &mut Command) -> Followed {
        Followed::start(cmd.stdin(Stdio::piped()))
    }

    fn start(cmd: &mut Command) -> Followed {
        let start = Instant::now();
        let mut child = spawn(cmd);
        Followed {
            stdin: child.stdin.take(),
            lines: line_reader(&mut child),
            stderr: stderr_reader(&mut child),
            child: KillOnDrop::new(child),
            seen: String::new(),
            start,
        }
    }

    /// The process (still running, or ended and not yet waited for).
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The write end of its stdin, when spawned with one and not closed yet.
    pub fn stdin(&mut self) -> Option<&mut ChildStdin> {
        self.stdin.as_mut()
    }

    /// When it was spawned.
    pub fn started(&self) -> Instant {
        self.start
    }

    /// The lines taken so far, each ending with a newline.
    pub fn seen(&self) -> &str {
        &self.seen
    }

    /// The next line, waiting at most `timeout`; `None` when none came or stdout closed.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        let line = self.lines.recv_timeout(timeout).ok()?;
        self.seen.push_str(&line);
        self.seen.push('\n');
        Some(line)
    }

    /// Takes lines until one ends with `suffix` (trailing white space aside): true, or false
    /// when `timeout` passes or stdout closes first.
    pub fn wait_line(&mut self, suffix: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while let Some(line) = self.next_line(deadline.saturating_duration_since(Instant::now())) {
            if line.trim_end().ends_with(suffix) {
                return true;
            }
        }
        false
    }

    /// Closes its stdin, waits for it to end (killing it once `timeout` has passed since it
    /// was spawned), and takes the rest of its lines: the result's `stdout` holds every line.
    pub fn finish(mut self, timeout: Duration) -> Finished {
        self.stdin.take();
        let mut finished = wait_with_timeout(&mut self.child, timeout, self.start);
        // The process has ended: the readers see end of file once the pipes are drained.
        while self.next_line(Duration::from_secs(2)).is_some() {}
        finished.stdout = std::mem::take(&mut self.seen);
        finished.stderr = self.stderr.join().unwrap_or_default();
        finished
    }
}

/// Waits until `path` holds a number (a pid file), up to `timeout`.
pub fn read_pid_file(path: &Path, timeout: Duration) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return pid;
        }
        assert!(start.elapsed() < timeout, "no pid in {}", path.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Fields of /proc/PID/status.
pub fn proc_status(pid: i32) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// Waits until process `pid` is gone (or a zombie), up to `timeout`.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(s)
                if s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')) =>
            {
                return true
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followed_lines_arrive_and_finish_keeps_them_all() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo one; printf 'two\\r\\n'; echo three; echo oops >&2",
        ]);
        let mut run = Followed::spawn(&mut cmd);
        assert!(
            run.wait_line("two", Duration::from_secs(10)),
            "{}",
            run.seen()
        );
        let f = run.finish(Duration::from_secs(10));
        assert_eq!(f.code(), 0, "{f}");
        assert_eq!(f.stdout, "one\ntwo\nthree\n");
        assert_eq!(f.stderr, "oops\n");
    }

    #[test]
    fn wait_line_is_false_when_the_output_ends_first() {
        let mut run = Followed::spawn(Command::new("true").arg("ignored"));
        assert!(!run.wait_line("never", Duration::from_secs(10)));
    }

    #[test]
    fn terminate_stops_a_process_with_sigterm() {
        use std::os::unix::process::ExitStatusExt;
        let mut child = KillOnDrop::new(spawn(Command::new("sleep").arg("600")));
        let status = terminate(&mut child, Duration::from_secs(10)).expect("ended");
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        // Already reaped: the status again, and no signal to a reused pid.
        assert_eq!(terminate(&mut child, Duration::ZERO), Some(status));
    }

    #[test]
    fn terminate_kills_a_process_that_ignores_sigterm() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "trap '' TERM; echo ready; exec sleep 600"]);
        let mut run = Followed::spawn(&mut cmd);
        assert!(run.wait_line("ready", Duration::from_secs(10)));
        assert_eq!(terminate(run.child(), Duration::from_millis(200)), None);
        assert!(run.child().try_wait().expect("reaped").is_some());
    }
}
