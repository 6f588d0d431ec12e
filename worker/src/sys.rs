//! The few system calls the worker makes that std does not wrap: process file descriptors
//! (`pidfd_open`, `pidfd_send_signal`), `poll`, `kill`, `flock`, and the signal mask. Each
//! libc call is wrapped once here, with its own error variant.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    pub fn signal(&self, signal: i32) -> Result<(), SysError> {
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
        Ok(poll_readable(&[self.fd.as_raw_fd()], timeout)?.first() == Some(&true))
    }

    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Waits up to `timeout` for any of `fds` to become readable (or hung up); returns which are.
pub fn poll_readable(fds: &[RawFd], timeout: Duration) -> Result<Vec<bool>, SysError> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    loop {
        let nfds = libc::nfds_t::try_from(pfds.len()).unwrap_or(libc::nfds_t::MAX);
        // SAFETY: `pfds` is a valid array of `nfds` pollfd structures that lives across the
        // call; poll only writes their `revents`.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), nfds, ms) };
        if rc >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(SysError::Poll(e));
        }
    }
    Ok(pfds.iter().map(|p| p.revents != 0).collect())
}

/// True when the peer of a connected stream socket has closed or shut down its side (or
/// the socket has an error): nothing more will come from it.
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
pub fn kill(pid: i32, signal: i32) -> Result<(), SysError> {
    // SAFETY: kill takes two integers; no memory is involved.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc < 0 {
        let source = io::Error::last_os_error();
        if source.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(SysError::Kill {
            pid,
            signal,
            source,
        });
    }
    Ok(())
}

/// An exclusive `flock` held for as long as the value lives (released on drop, or by the
/// kernel when the process dies).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Takes the lock on `path` (created if missing). `blocking: false` returns `Ok(None)`
    /// when another process or descriptor holds it.
    pub fn acquire(path: &Path, blocking: bool) -> Result<Option<FileLock>, SysError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| SysError::LockOpen {
                path: path.to_path_buf(),
                source,
            })?;
        let op = if blocking {
            libc::LOCK_EX
        } else {
            libc::LOCK_EX | libc::LOCK_NB
        };
        loop {
            // SAFETY: flock on a descriptor owned by `file`, which outlives the call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
            if rc == 0 {
                return Ok(Some(FileLock { _file: file }));
            }
            let source = io::Error::last_os_error();
            match source.raw_os_error() {
                Some(libc::EWOULDBLOCK) => return Ok(None),
                Some(libc::EINTR) => continue,
                _ => {
                    return Err(SysError::Flock {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        }
    }
}

fn termination_set() -> libc::sigset_t {
    // SAFETY: an all-zero sigset_t is a valid value to hand to sigemptyset, which
    // initialises it; sigaddset only writes into it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and every thread it spawns
/// afterwards), so that one thread can take them with [`wait_termination_signal`].
pub fn block_termination_signals() -> Result<(), SysError> {
    let set = termination_set();
    // SAFETY: `set` is an initialised sigset_t; the old mask is not asked for (null).
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(SysError::SigMask(io::Error::from_raw_os_error(rc)));
    }
    Ok(())
}

/// Waits for one of the signals blocked by [`block_termination_signals`]; returns it.
pub fn wait_termination_signal() -> Result<i32, SysError> {
    let set = termination_set();
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is initialised and `sig` is a valid place for the result.
    let rc = unsafe { libc::sigwait(&set, &mut sig) };
    if rc != 0 {
        return Err(SysError::SigWait(io::Error::from_raw_os_error(rc)));
    }
    Ok(sig)
}

/// For `Command::pre_exec`, in the forked child: an empty signal mask (ours blocks the
/// termination signals), SIGTERM when the thread that spawned it dies, and a check that
/// the parent did not die before that was set. Only async-signal-safe calls.
pub fn child_pre_exec(parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: these calls only take integers or an initialised local sigset_t, and are
    // async-signal-safe, as required between fork and exec.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
            return Err(io::Error::other("pthread_sigmask in the child failed"));
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() != parent {
            return Err(io::Error::other(
                "the worker exited while spawning the jailer",
            ));
        }
    }
    Ok(())
}

/// This process's pid.
pub fn getpid() -> libc::pid_t {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() }
}
