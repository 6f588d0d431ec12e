//! Spawning and watching the measured processes: the first byte of the guest's serial
//! output (stdout), stderr collected on a thread, waits with a deadline, signals, and the
//! CPU time of a live process from its CPU-time clock.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long any one step may take (a process start, a first byte, an exit).
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// A duration in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// CPU time (ms) of the process `pid` so far: its CPU-time clock (`clock_getcpuclockid`),
/// the scheduler's run time of every thread it has had, those that have ended included, in
/// nanoseconds. 0 when the process is gone.
pub fn cpu_ms(pid: u32) -> f64 {
    let Ok(pid) = i32::try_from(pid) else {
        return 0.0;
    };
    nix::time::clock_getcpuclockid(Pid::from_raw(pid))
        .and_then(nix::time::clock_gettime)
        .map_or(0.0, |t| Duration::from(t).as_secs_f64() * 1e3)
}

/// kill(2) on a pid this process spawned and has not reaped yet (so it is still ours).
pub fn signal(pid: u32, sig: Signal) {
    let Ok(pid) = i32::try_from(pid) else { return };
    let _ = kill(Pid::from_raw(pid), sig);
}

/// Waits for `child` with a deadline, killing it if it overstays; returns the exit code.
fn wait_deadline(child: &mut Child, timeout: Duration) -> Result<Option<i32>, String> {
    let t0 = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Ok(st.code()),
            Ok(None) if t0.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "pid {} did not exit within {timeout:?}",
                    child.id()
                ));
            }
            Ok(None) => thread::sleep(Duration::from_micros(200)),
            Err(e) => return Err(format!("wait: {e}")),
        }
    }
}

/// Reads the first byte of `out` on a thread (then drains it to EOF) and reports its time.
fn first_byte_watch(mut out: ChildStdout) -> mpsc::Receiver<Instant> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut b = [0u8; 4096];
        let mut sent = false;
        while let Ok(n) = out.read(&mut b) {
            if n == 0 {
                break;
            }
            if !sent {
                let _ = tx.send(Instant::now());
                sent = true;
            }
        }
    });
    rx
}

/// Collects stderr lines on a thread.
fn stderr_collect(err: ChildStderr) -> thread::JoinHandle<Vec<String>> {
    thread::spawn(move || BufReader::new(err).lines().map_while(Result::ok).collect())
}

/// A spawned process with its serial (stdout) first-byte watch.
pub struct Started {
    pub child: Child,
    pub t0: Instant,
    first: mpsc::Receiver<Instant>,
    stderr: Option<thread::JoinHandle<Vec<String>>>,
}

pub fn start(mut cmd: Command, keep_stderr: bool) -> Result<Started, String> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    cmd.stderr(if keep_stderr {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("spawn {:?}: {e}", cmd.get_program()))?;
    let first = first_byte_watch(child.stdout.take().ok_or("no stdout")?);
    let stderr = child.stderr.take().map(stderr_collect);
    Ok(Started {
        child,
        t0,
        first,
        stderr,
    })
}

/// Spawns `cmds` at once (one after the other, their stderr dropped) and waits for each one's
/// first serial byte. Returns every process started — also when one failed, so that the
/// caller can stop them — with the time from the first spawn to the last first byte, or the
/// first failure.
pub fn burst(cmds: impl IntoIterator<Item = Command>) -> (Vec<Started>, Result<Duration, String>) {
    let t0 = Instant::now();
    let mut started = Vec::new();
    for cmd in cmds {
        match start(cmd, false) {
            Ok(s) => started.push(s),
            Err(e) => return (started, Err(e)),
        }
    }
    let mut last = t0;
    for s in &mut started {
        match s.first_byte() {
            Ok(at) => last = last.max(at),
            Err(e) => return (started, Err(e)),
        }
    }
    (started, Ok(last - t0))
}

impl Started {
    /// Time to the first serial byte.
    pub fn first_byte(&mut self) -> Result<Instant, String> {
        self.first.recv_timeout(TIMEOUT).map_err(|_| {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let err = self
                .stderr
                .take()
                .and_then(|h| h.join().ok())
                .unwrap_or_default();
            format!(
                "no serial byte from {:?} within {TIMEOUT:?}; stderr:\n{}",
                self.child.id(),
                err.join("\n")
            )
        })
    }

    pub fn finish(mut self, timeout: Duration) -> Result<(Option<i32>, Vec<String>), String> {
        let code = wait_deadline(&mut self.child, timeout)?;
        let err = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Ok((code, err))
    }
}
