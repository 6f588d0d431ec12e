//! Process primitives of the keepers: pipes, fork, wait, kill, exit, stdio to /dev/null, and
//! forking into a new PID namespace.
//!
//! Raw calls: `waitpid` (nix's `WaitStatus` cannot hold a death by a real-time signal: its
//! `waitpid` would reap the child and return EINVAL), `_exit` (nix has no wrapper) and
//! `clone3` (a fork whose child is born in a cgroup: `CLONE_INTO_CGROUP`, Linux 5.7; the
//! jailer needs 5.9 for close_range anyway), `pidfd_open` and `pidfd_send_signal` (signals that
//! cannot reach a recycled pid; nix has no wrappers). `fork` is nix's, still `unsafe`.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
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
/// single-threaded by then, so the child may go on running ordinary Rust code.
pub fn fork_raw() -> Result<Option<Pid>, SuperviseError> {
    // SAFETY: the jailer is single-threaded at the split (its host-side network thread is
    // joined before, `main.rs`): no lock can be held by another thread, so the child may
    // allocate and run any code.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { child }) => Ok(Some(child)),
        Ok(ForkResult::Child) => Ok(None),
        Err(e) => Err(SuperviseError::Fork(e.into())),
    }
}

/// `struct clone_args` of clone3, up to its `cgroup` field (Linux 5.7).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// [`fork_raw`] whose child is born in the cgroup `into` (its directory's descriptor).
fn fork_into_cgroup(into: &OwnedFd) -> Result<Option<Pid>, SuperviseError> {
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: u64::from(libc::SIGCHLD.unsigned_abs()),
        cgroup: u64::from(into.as_raw_fd().unsigned_abs()),
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM and without a stack is fork: the child gets a copy of
    // this process and returns 0 on a copy of this stack. The jailer is single-threaded at
    // the split (its network thread is joined before), so no lock is held by another thread; the C library's fork bookkeeping skipped here is
    // for threads (its own thread id, which `raise` does not rely on, and atfork handlers,
    // none registered). `args` outlives the call, its size is given.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        0 => Ok(None),
        n if n > 0 => Ok(Some(Pid::from_raw(i32::try_from(n).unwrap_or(-1)))),
        _ => Err(SuperviseError::Fork(io::Error::last_os_error())),
    }
}

/// [`fork_raw`] for a child that goes on towards the VMM: its CPU clock restarts at zero,
/// so the time spent so far is added to what the VMM is told its ancestors used. With
/// `into`, the child is born in that cgroup.
pub fn fork(clock: &mut Clock, into: Option<&OwnedFd>) -> Result<Option<Pid>, SuperviseError> {
    clock.before_fork();
    match into {
        Some(cgroup) => fork_into_cgroup(cgroup),
        None => fork_raw(),
    }
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

/// A descriptor of the process that has `pid` now, if there is one.
pub fn pidfd_open(pid: Pid) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no memory
    // is passed.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    let raw = i32::try_from(rc).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: `raw` is a descriptor the kernel just returned and nothing else owns.
    Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
}

/// Sends `signal` to the process `pidfd` names, however its pid was reused since; one that
/// has exited is not an error.
pub fn pidfd_kill(pidfd: &OwnedFd, signal: Signal) {
    // SAFETY: `pidfd` is a valid pidfd for the call's duration; a null siginfo is allowed
    // (the kernel fills it as for kill(2)); no other memory is passed.
    let _ = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal as i32,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
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

/// Forks the jail's first process into a new PID namespace (and into the cgroup `into`);
/// the parent keeps its own namespace for any later child (e.g. during an undo).
pub fn fork_into_new_pid_ns(
    clock: &mut Clock,
    into: Option<&OwnedFd>,
) -> Result<Option<Pid>, SuperviseError> {
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
    let child = fork(clock, into)?;
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
