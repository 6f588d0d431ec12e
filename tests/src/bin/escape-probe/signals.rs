//! Signals and tracing: a host process the test started (`--victim`, running as the jail's
//! own uid, the worst case), the PID namespace's init, every process at once, ptrace and
//! reading another process's memory.

use crate::sys::{long, verdict};
use crate::{Attempt, Ctx, Outcome};

fn victim(ctx: &Ctx) -> Result<i32, Outcome> {
    ctx.victim
        .ok_or_else(|| Outcome::Error("no --victim".into()))
}

pub const ATTEMPTS: &[Attempt] = &[
    Attempt {
        name: "signals.kill-victim",
        what: "SIGKILL a host process by its host pid (kill)",
        run: |ctx| {
            let pid = match victim(ctx) {
                Ok(p) => p,
                Err(o) => return o,
            };
            // SAFETY: plain integers.
            let ret = unsafe { libc::syscall(libc::SYS_kill, pid, libc::SIGKILL) };
            verdict(ret, false, "signalled a host process")
        },
    },
    Attempt {
        name: "signals.tkill-victim",
        what: "SIGKILL a host process by its host pid (tkill, which the filter allows)",
        run: |ctx| {
            let pid = match victim(ctx) {
                Ok(p) => p,
                Err(o) => return o,
            };
            // SAFETY: plain integers.
            let ret = unsafe { libc::syscall(libc::SYS_tkill, pid, libc::SIGKILL) };
            verdict(ret, false, "signalled a host process")
        },
    },
    Attempt {
        name: "signals.tkill-init",
        what: "SIGKILL pid 1 (tkill)",
        run: |_| {
            // SAFETY: plain integers.
            let ret = unsafe { libc::syscall(libc::SYS_tkill, 1, libc::SIGKILL) };
            verdict(ret, false, "signalled pid 1")
        },
    },
    Attempt {
        name: "signals.kill-all",
        what: "SIGKILL every process it may signal (kill -1)",
        run: |_| {
            // SAFETY: plain integers. (The caller itself is never signalled by kill(-1).)
            let ret = unsafe { libc::syscall(libc::SYS_kill, -1, libc::SIGKILL) };
            verdict(ret, false, "signalled other processes with kill(-1)")
        },
    },
    Attempt {
        name: "signals.pid-scan",
        what: "see other processes: probe pids 1..32768 with signal 0 (no /proc to list them)",
        run: |_| pid_scan(),
    },
    Attempt {
        name: "signals.ptrace-victim",
        what: "ptrace-attach to a host process",
        run: |ctx| {
            let pid = match victim(ctx) {
                Ok(p) => p,
                Err(o) => return o,
            };
            // SAFETY: plain integers.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_ptrace,
                    long(libc::PTRACE_ATTACH),
                    long(pid),
                    0 as libc::c_long,
                    0 as libc::c_long,
                )
            };
            verdict(ret, false, "attached to a host process")
        },
    },
    Attempt {
        name: "signals.ptrace-init",
        what: "ptrace-attach to pid 1",
        run: |_| {
            // SAFETY: plain integers.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_ptrace,
                    long(libc::PTRACE_ATTACH),
                    1 as libc::c_long,
                    0 as libc::c_long,
                    0 as libc::c_long,
                )
            };
            verdict(ret, false, "attached to pid 1")
        },
    },
    Attempt {
        name: "signals.process-vm-readv",
        what: "read a host process's memory (process_vm_readv)",
        run: |ctx| {
            let pid = match victim(ctx) {
                Ok(p) => p,
                Err(o) => return o,
            };
            let mut buf = [0u8; 16];
            let local = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            let remote = libc::iovec {
                iov_base: 0x40_0000 as *mut libc::c_void,
                iov_len: buf.len(),
            };
            // SAFETY: one local iovec into `buf`; the remote one is only read by the kernel
            // in the other process.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_process_vm_readv,
                    long(pid),
                    &local,
                    1 as libc::c_long,
                    &remote,
                    1 as libc::c_long,
                    0 as libc::c_long,
                )
            };
            verdict(ret, false, "read a host process's memory")
        },
    },
];

fn pid_scan() -> Outcome {
    // The main thread's id is the process id (gettid: the VMM's filter has no getpid).
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::syscall(libc::SYS_gettid) };
    let mut seen = Vec::new();
    for pid in 2..=32768 {
        if libc::c_long::from(pid) == me {
            continue;
        }
        // SAFETY: signal 0 only checks that the process exists and may be signalled.
        let ret = unsafe { libc::syscall(libc::SYS_tkill, long(pid), long(0)) };
        // 0: exists and may be signalled; EPERM: exists.
        if ret == 0 || crate::sys::errno() == libc::EPERM {
            seen.push(pid);
        }
    }
    if seen.is_empty() {
        Outcome::Blocked("ESRCH for every pid but 1 and its own".into())
    } else {
        let first: Vec<String> = seen.iter().take(8).map(ToString::to_string).collect();
        Outcome::Escaped(format!(
            "sees {} other processes ({}, ...)",
            seen.len(),
            first.join(", ")
        ))
    }
}
