//! The runtime's process: started in its own process group with the Lambda environment, its
//! stdout and stderr on one pipe (so their lines stay in order) whose last [`MAX_LOG`]
//! bytes are kept as the function's log, killed with its whole group.
//!
//! Exit statuses are collected by one reaper thread, which waits for every child (as PID 1 in
//! the guest, orphans included) and records the runtime's in the [`Exchange`]: waiting for
//! one pid here and for any pid there would lose statuses to whichever waits first.

use super::exchange::Exchange;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

/// How much of the runtime's output is kept between two invocations.
pub const MAX_LOG: usize = 64 * 1024;

/// The running runtime.
pub struct Runtime {
    pid: i32,
    output: Arc<Output>,
}

/// The read end of the runtime's output pipe (non-blocking) and what was read from it.
struct Output {
    pipe: OwnedFd,
    kept: Mutex<Vec<u8>>,
}

impl Output {
    /// Reads what the pipe holds now; false once it is closed (or broken).
    fn read_available(&self, kept: &mut Vec<u8>) -> bool {
        let mut chunk = [0u8; 8192];
        loop {
            // SAFETY: `chunk` is a valid writable buffer of its length; `pipe` is open for
            // as long as `self` lives.
            let n = unsafe {
                libc::read(
                    self.pipe.as_raw_fd(),
                    chunk.as_mut_ptr().cast(),
                    chunk.len(),
                )
            };
            match usize::try_from(n) {
                Ok(0) => return false,
                Ok(n) => {
                    kept.extend_from_slice(chunk.get(..n).unwrap_or_default());
                    let over = kept.len().saturating_sub(MAX_LOG);
                    kept.drain(..over);
                }
                Err(_) => {
                    let e = io::Error::last_os_error();
                    return match e.kind() {
                        io::ErrorKind::Interrupted => continue,
                        io::ErrorKind::WouldBlock => true,
                        _ => false,
                    };
                }
            }
        }
    }

    fn take(&self) -> Vec<u8> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        self.read_available(&mut kept);
        std::mem::take(&mut *kept)
    }
}

/// A pipe: (read end, non-blocking; write end), both close-on-exec.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both descriptors are new and owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    let rc = unsafe { libc::fcntl(r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((r, w))
}

impl Runtime {
    /// Starts `argv` in `cwd` with exactly `env`, recording its pid in `exchange` (under its
    /// lock, so the reaper cannot miss it).
    pub fn spawn(
        argv: &[String],
        env: &[(String, String)],
        cwd: &Path,
        exchange: &Arc<Exchange>,
    ) -> io::Result<Runtime> {
        start_reaper(exchange.clone());
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no program"))?;
        let (read, write) = pipe()?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::from(write.try_clone()?))
            .stderr(Stdio::from(write))
            .process_group(0);
        let mut st = exchange.lock();
        let child = cmd.spawn()?;
        let pid = i32::try_from(child.id())
            .map_err(|_| io::Error::other("the runtime's pid does not fit an i32"))?;
        st.pid = Some(pid);
        st.exited = None;
        drop(st);
        // The reaper collects its status; `child` is not waited for.
        drop(child);
        drop(cmd);
        let output = Arc::new(Output {
            pipe: read,
            kept: Mutex::new(Vec::new()),
        });
        let reader = output.clone();
        std::thread::Builder::new()
            .name("runtime-output".into())
            .spawn(move || drain(&reader))?;
        Ok(Runtime { pid, output })
    }

    /// What the runtime wrote since the last call (at most [`MAX_LOG`] bytes, the latest).
    pub fn take_logs(&self) -> Vec<u8> {
        self.output.take()
    }

    /// SIGKILL to the runtime's process group.
    pub fn kill(&self) {
        // SAFETY: kill(2) with integer arguments; a negative pid names the process group the
        // runtime leads (it was started with process_group(0)).
        unsafe { libc::kill(-self.pid, libc::SIGKILL) };
    }
}

/// Reads the pipe as data arrives, until every writer has closed it.
fn drain(output: &Output) {
    loop {
        let mut fd = libc::pollfd {
            fd: output.pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the length given.
        let rc = unsafe { libc::poll(&mut fd, 1, -1) };
        if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
        let mut kept = output.kept.lock().unwrap_or_else(|p| p.into_inner());
        if !output.read_available(&mut kept) {
            return;
        }
    }
}

/// Lambda's words for how a process ended (`exit status 1`, `signal: killed`).
pub fn describe(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exit status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        match libc::WTERMSIG(status) {
            libc::SIGKILL => "signal: killed".into(),
            libc::SIGSEGV => "signal: segmentation fault".into(),
            libc::SIGABRT => "signal: aborted".into(),
            libc::SIGTERM => "signal: terminated".into(),
            s => format!("signal: {s}"),
        }
    } else {
        format!("wait status {status:#x}")
    }
}

/// Starts the reaper thread once per process.
fn start_reaper(exchange: Arc<Exchange>) {
    static ONCE: Once = Once::new();
    ONCE.call_once(move || {
        let _ = std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || reap(&exchange));
    });
}

/// Waits for any child to end (without reaping it: `WNOWAIT`), then, under the exchange's
/// lock, reaps it and records the runtime's status. The runtime is spawned under that lock:
/// a child that std's `spawn` reaps itself (one that failed to exec) is gone by the time the
/// lock is free, and any other is known by its pid.
fn reap(exchange: &Exchange) {
    loop {
        // SAFETY: siginfo_t is plain data for which all-zero is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes into the valid `info`; WNOWAIT leaves the child waitable.
        let rc = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc != 0 {
            if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                // No children: wait for the next runtime (or a second, for orphans).
                let st = exchange.lock();
                if st.pid.is_none() {
                    drop(exchange.wait(st, Duration::from_secs(1)));
                }
            }
            continue;
        }
        // SAFETY: waitid filled `info` for an exited child, for which si_pid is valid.
        let pid = unsafe { info.si_pid() };
        let mut st = exchange.lock();
        let mut status = 0;
        // SAFETY: waitpid writes the status into the valid `status`; WNOHANG never blocks.
        let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if reaped == pid && st.pid == Some(pid) {
            st.pid = None;
            st.exited = Some(describe(status));
            drop(st);
            exchange.notify();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_described_as_lambda_does() {
        assert_eq!(describe(1 << 8), "exit status 1");
        assert_eq!(describe(0), "exit status 0");
        assert_eq!(describe(libc::SIGKILL), "signal: killed");
        assert_eq!(describe(7), "signal: 7");
    }
}
