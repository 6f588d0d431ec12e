//! Process primitives of the keepers: pipes, fork, wait, kill, exit, stdio to /dev/null, and
//! forking into a new PID namespace.
//!
//! Raw calls: `waitpid` (nix's `WaitStatus` cannot hold a death by a real-time signal: its
//! `waitpid` would reap the child and return EINVAL) and `_exit` (nix has no wrapper).
//! `fork` is nix's, still `unsafe`.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;

use nix::fcntl::OFlag;
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::Signal;
use nix::unistd::{ForkResult, Pid};

use super::SuperviseError;
use crate::clock::Clock;

/// A pipe, both ends close-on-exec: (read end, write end).
pub fn pipe() -> Result<(OwnedFd, OwnedFd), SuperviseError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| SuperviseError::Pipe(e.into()))
}

/// Reads until EOF (or an error): what the other end wrote before closing it.
pub fn read_all(fd: OwnedFd) -> String {
    let mut s = String::new();
    let _ = File::from(fd).read_to_string(&mut s);
    s
}

/// fork(2); the child's pid in the parent, `None` in the child. The process is
/// single-threaded, so the child may go on running ordinary Rust code.
pub fn fork_raw() -> Result<Option<Pid>, SuperviseError> {
    // SAFETY: the jailer is single-threaded: no lock can be held by another thread, so the
    // child may allocate and run any code.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { child }) => Ok(Some(child)),
        Ok(ForkResult::Child) => Ok(None),
        Err(e) => Err(SuperviseError::Fork(e.into())),
    }
}

/// [`fork_raw`] for a child that goes on towards the VMM: its CPU clock restarts at zero,
/// so the time spent so far is added to what the VMM is told its ancestors used.
pub fn fork(clock: &mut Clock) -> Result<Option<Pid>, SuperviseError> {
    clock.before_fork();
    fork_raw()
}

/// Leaves the process without running exit handlers (the forked copies of stdio buffers
/// and destructors belong to the parent).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// waitpid(2), retried on EINTR: the pid reaped and its raw wait status, or `None` (no such
/// child, or none ready with WNOHANG).
pub fn waitpid(pid: Pid, flags: libc::c_int) -> Option<(Pid, libc::c_int)> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into `status`, which lives for the call.
        let ret = unsafe { libc::waitpid(pid.as_raw(), &mut status, flags) };
        if ret > 0 {
            return Some((Pid::from_raw(ret), status));
        }
        if ret == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return None;
    }
}

/// Sends `signal`; a target that is already gone is not an error.
pub fn kill(pid: Pid, signal: Signal) {
    let _ = nix::sys::signal::kill(pid, signal);
}

/// Points stdin, stdout and stderr at /dev/null.
pub fn devnull_stdio() -> Result<(), SuperviseError> {
    let null = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/null")
        .map_err(SuperviseError::DevNull)?;
    let dup = |e: nix::errno::Errno| SuperviseError::DevNull(e.into());
    nix::unistd::dup2_stdin(&null).map_err(dup)?;
    nix::unistd::dup2_stdout(&null).map_err(dup)?;
    nix::unistd::dup2_stderr(&null).map_err(dup)
}

/// Forks the jail's first process into a new PID namespace; the parent keeps its own
/// namespace for any later child (nft during an undo).
pub fn fork_into_new_pid_ns(clock: &mut Clock) -> Result<Option<Pid>, SuperviseError> {
    let own = File::options()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/proc/self/ns/pid")
        .map_err(|source| SuperviseError::PidNamespace {
            what: "opening /proc/self/ns/pid",
            source,
        })?;
    // CLONE_NEWPID only affects children forked later.
    unshare(CloneFlags::CLONE_NEWPID).map_err(|e| SuperviseError::PidNamespace {
        what: "unshare(CLONE_NEWPID)",
        source: e.into(),
    })?;
    let child = fork(clock)?;
    if let Some(pid) = child {
        if let Err(e) = setns(&own, CloneFlags::CLONE_NEWPID) {
            // The caller undoes the jail: its first process must not outlive the error.
            kill(pid, Signal::SIGKILL);
            waitpid(pid, 0);
            return Err(SuperviseError::PidNamespace {
                what: "returning to the jailer's PID namespace",
                source: e.into(),
            });
        }
    }
    Ok(child)
}
