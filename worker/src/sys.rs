//! The few system calls the worker makes that std does not wrap, each wrapped once here with
//! its own error variant: `kill`, `poll`, `flock`, the signal mask and `sigwait`,
//! `PR_SET_PDEATHSIG` and `getppid` through `nix`'s safe wrappers. Raw `libc` calls remain
//! only where nix (0.31) has no wrapper: process file descriptors (`pidfd_open`,
//! `pidfd_send_signal`, which std's unstable `PidFd` would cover), the `poll` of
//! [`peer_closed`] (nix's `PollFlags` has no `POLLRDHUP`) and the `shutdown` of a listening
//! socket ([`stop_accepting`]; without nix's `socket` feature).

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::unistd::Pid;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use nix::sys::signal::Signal;

#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("pidfd_open({pid}) failed: {source}")]
    PidfdOpen { pid: i32, source: io::Error },
    #[error("pidfd_send_signal(pid {pid}, signal {signal}) failed: {source}")]
    PidfdSignal {
        pid: i32,
        signal: i32,
        source: io::Error,
    },
    #[error("kill(pid {pid}, signal {signal}) failed: {source}")]
    Kill {
        pid: i32,
        signal: i32,
        source: io::Error,
    },
    #[error("poll failed: {0}")]
    Poll(io::Error),
    #[error("cannot open the lock file {path}: {source}")]
    LockOpen { path: PathBuf, source: io::Error },
    #[error("flock of {path} failed: {source}")]
    Flock { path: PathBuf, source: io::Error },
    #[error("pthread_sigmask failed: {0}")]
    SigMask(io::Error),
    #[error("sigwait failed: {0}")]
    SigWait(io::Error),
}

/// A process file descriptor: signals and waits that cannot hit a recycled pid.
#[derive(Debug)]
pub struct PidFd {
    pid: i32,
    fd: OwnedFd,
}

impl PidFd {
    pub fn open(pid: i32) -> Result<PidFd, SysError> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no
        // memory is passed.
        let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if rc < 0 {
            return Err(SysError::PidfdOpen {
                pid,
                source: io::Error::last_os_error(),
            });
        }
        let raw = RawFd::try_from(rc).map_err(|_| SysError::PidfdOpen {
            pid,
            source: io::Error::other("descriptor out of range"),
        })?;
        // SAFETY: `raw` is a descriptor the kernel just returned to us and nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(PidFd { pid, fd })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `signal`; a process that has already exited is not an error.
    pub fn signal(&self, signal: Signal) -> Result<(), SysError> {
        let signal = signal as i32;
        // SAFETY: the descriptor is a valid pidfd owned by `self`; a null siginfo is allowed
        // (the kernel fills it as for kill(2)).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            let source = io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::ESRCH) {
                return Ok(());
            }
            return Err(SysError::PidfdSignal {
                pid: self.pid,
                signal,
                source,
            });
        }
        Ok(())
    }

    /// True once the process has exited (the pidfd becomes readable).
    pub fn wait_exit(&self, timeout: Duration) -> Result<bool, SysError> {
        Ok(poll_readable(&[self.fd.as_fd()], timeout)?.first() == Some(&true))
    }
}

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Waits up to `timeout` for any of `fds` to become readable (or hung up); returns which are.
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout: Duration) -> Result<Vec<bool>, SysError> {
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|&fd| PollFd::new(fd, PollFlags::POLLIN))
        .collect();
    let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    loop {
        match nix::poll::poll(&mut pfds, timeout) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(SysError::Poll(e.into())),
        }
    }
    // Any event counts, even one nix has no name for.
    Ok(pfds.iter().map(|p| p.any().unwrap_or(true)).collect())
}

/// True when the peer of a connected stream socket has closed or shut down its side (or
/// the socket has an error): nothing more will come from it. A raw `poll`: nix's `PollFlags`
/// has no `POLLRDHUP`.
pub fn peer_closed(fd: BorrowedFd<'_>) -> Result<bool, SysError> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, a zero timeout; poll only writes `revents`.
    let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
    if rc < 0 {
        return Err(SysError::Poll(io::Error::last_os_error()));
    }
    Ok(pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0)
}

/// kill(2), for a child process we have not reaped yet (so its pid cannot be recycled).
/// A process that has already exited is not an error.
pub fn kill(pid: i32, signal: Signal) -> Result<(), SysError> {
    match nix::sys::signal::kill(Pid::from_raw(pid), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(SysError::Kill {
            pid,
            signal: signal as i32,
            source: e.into(),
        }),
    }
}

/// An exclusive `flock` held for as long as the value lives (released on drop, or by the
/// kernel when the process dies).
#[derive(Debug)]
pub struct FileLock {
    lock: Option<Flock<File>>,
}

impl FileLock {
    /// Takes the lock on `path` (created if missing). `blocking: false` returns `Ok(None)`
    /// when another process or descriptor holds it.
    pub fn acquire(path: &Path, blocking: bool) -> Result<Option<FileLock>, SysError> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| SysError::LockOpen {
                path: path.to_path_buf(),
                source,
            })?;
        let how = if blocking {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockExclusiveNonblock
        };
        loop {
            match Flock::lock(file, how) {
                Ok(lock) => return Ok(Some(FileLock { lock: Some(lock) })),
                Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
                Err((f, Errno::EINTR)) => file = f,
                Err((_, e)) => {
                    return Err(SysError::Flock {
                        path: path.to_path_buf(),
                        source: e.into(),
                    })
                }
            }
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Unlock, then close. (`Flock`'s own drop would panic if unlocking failed; should it
        // ever fail, the descriptor is kept open instead, and the lock dies with the worker.)
        if let Some(lock) = self.lock.take() {
            if let Err((lock, _)) = lock.unlock() {
                std::mem::forget(lock);
            }
        }
    }
}

fn termination_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and every thread it spawns
/// afterwards), so that one thread can take them with [`wait_termination_signal`].
pub fn block_termination_signals() -> Result<(), SysError> {
    termination_set()
        .thread_block()
        .map_err(|e| SysError::SigMask(e.into()))
}

/// Waits for one of the signals blocked by [`block_termination_signals`]; returns its
/// number.
pub fn wait_termination_signal() -> Result<i32, SysError> {
    termination_set()
        .wait()
        .map(|s| s as i32)
        .map_err(|e| SysError::SigWait(e.into()))
}

/// For `Command::pre_exec`, in the forked child: an empty signal mask (ours blocks the
/// termination signals), SIGTERM when the thread that spawned it dies, and a check that
/// the parent did not die before that was set. Only async-signal-safe calls, and no
/// allocation (std passes only the errno of a failure to the parent).
pub fn child_pre_exec(parent: i32) -> io::Result<()> {
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
    if nix::unistd::getppid() != Pid::from_raw(parent) {
        // The worker exited while spawning the jailer.
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(())
}

/// This process's pid.
pub fn getpid() -> i32 {
    nix::unistd::getpid().as_raw()
}

/// Makes every `accept` on `listener` (this descriptor or another of the same socket) return
/// an error from now on, a blocked one at once: how `kiln serve` leaves its accept loop on
/// SIGTERM, whatever became of its socket's path (removed, or another socket bound there).
pub fn stop_accepting(listener: &std::os::unix::net::UnixListener) -> io::Result<()> {
    // SAFETY: shutdown(2) on a descriptor `listener` owns and keeps open for the call; no
    // memory is passed.
    let rc = unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RD) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
