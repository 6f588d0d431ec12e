//! `--cleanup-on-exit`: the jailer stays as the VMM's *supervisor*. It forks the VMM,
//! forwards SIGTERM/INT/HUP/QUIT to it, and when the VMM exits, however it exits, removes
//! the jail and exits with the VMM's status. With `--new-pid-ns` the supervisor's *init*
//! half is PID 1 of the new PID namespace: it starts the VMM as PID 2, reaps, forwards
//! signals, and when the VMM exits the whole namespace is killed.
//!
//! The signal handlers of init are installed with nix's `signal`, which stays `unsafe`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use nix::sys::prctl;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::Pid;

use super::keeper::write_pid_file;
use super::keeper::{abort, empty_cgroups, leave_cgroups, record_processes, undo_text};
use super::pipes::{exec_outcome, join, with_status, JailSide, Report};
use super::process::{exit_now, fork, fork_into_new_pid_ns, kill, pipe, waitpid};
use super::terminal::Terminals;
use super::{Exit, Role, SuperviseError};
use crate::args::Config;
use crate::cgroup::ForkInto;
use crate::clock::Clock;
use crate::sanitize;
use crate::state::Journal;

/// Signals the supervisor (and init) pass on to the VMM.
const FORWARDED: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// What the supervisor blocks and takes with sigwait: the forwarded signals and SIGCHLD.
fn waited_signals() -> Vec<Signal> {
    let mut v = FORWARDED.to_vec();
    v.push(Signal::SIGCHLD);
    v
}

/// Waits for `child`, forwarding termination signals to it and reaping every other child
/// (orphans come to a subreaper); returns its wait status.
fn wait_forwarding(child: Pid) -> libc::c_int {
    let set: SigSet = waited_signals().into_iter().collect();
    loop {
        // Only fails for an invalid set; the signals in it are blocked.
        let Ok(sig) = set.wait() else { continue };
        if sig != Signal::SIGCHLD {
            kill(child, sig);
            continue;
        }
        let mut result = None;
        while let Some((pid, status)) = waitpid(Pid::from_raw(-1), libc::WNOHANG) {
            if pid == child {
                result = Some(status);
            }
        }
        if let Some(status) = result {
            return status;
        }
    }
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// PID 1 of the jail's PID namespace: a signal can only reach it if it has a handler.
fn install_forwarding_handlers() {
    for sig in FORWARDED {
        // SAFETY: installs a handler that does nothing (async-signal-safe); the signals are
        // blocked and taken with sigwait anyway.
        let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::Handler(ignore_signal)) };
    }
}

fn exit_of(status: libc::c_int) -> Exit {
    if libc::WIFEXITED(status) {
        Exit::Code(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Exit::Signal(libc::WTERMSIG(status))
    } else {
        Exit::Code(1)
    }
}

/// The init half of the supervisor (PID 1 of the jail's PID namespace).
fn init(vmm: Pid, status_w: OwnedFd) -> ! {
    let status = wait_forwarding(vmm);
    // Everything else in the namespace dies with the VMM.
    kill(Pid::from_raw(-1), Signal::SIGKILL);
    while waitpid(Pid::from_raw(-1), 0).is_some() {}
    let _ = File::from(status_w).write_all(&status.to_ne_bytes());
    exit_now(0);
}

/// The (host) pid of the first child of `pid`: the VMM, which init forks at once. `None`
/// if init is gone or takes more than a second.
fn first_child(pid: Pid) -> Option<Pid> {
    for _ in 0..20_000 {
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
        if let Some(first) = children.split_whitespace().next() {
            return first.parse().ok().map(Pid::from_raw);
        }
        std::thread::sleep(std::time::Duration::from_micros(50));
    }
    None
}

/// Stays as the supervisor of the jail process (and, with `new_pid_ns`, of its init).
pub fn supervised(
    config: &Config,
    journal: &mut Journal,
    clock: &mut Clock,
    mut report: Report,
    new_pid_ns: bool,
    terminals: Terminals,
    fork_into: Option<&ForkInto>,
) -> Result<Role, SuperviseError> {
    let (exec_r, exec_w) = pipe()?;
    let (status_r, status_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    sanitize::set_signal_mask(SigmaskHow::SIG_BLOCK, &waited_signals())?;
    prctl::set_child_subreaper(true).map_err(|e| SuperviseError::Subreaper(e.into()))?;
    // This process is in the journal since it was started (as the jailer).
    let me = nix::unistd::getpid();
    journal.record_process("supervisor", me.as_raw(), false)?;
    // An error from here on (before the fork) is undone by the caller; after the fork the
    // keeper handles its own failures.
    let into = fork_into.map(|f| &f.fd);
    let child = if new_pid_ns {
        fork_into_new_pid_ns(clock, into)?
    } else {
        fork(clock, into)?
    };
    let Some(child) = child else {
        drop(exec_r);
        drop(status_r);
        drop(report);
        drop(go_w);
        if !new_pid_ns {
            drop(status_w);
            return Ok(Role::Jail(JailSide::new(
                exec_w,
                go_r,
                None,
                Some(me),
                terminals.into_jail_side(),
            )));
        }
        // PID 1 of the new namespace: it dies with the supervisor, and the kernel then
        // kills the whole namespace.
        let _ = prctl::set_pdeathsig(Signal::SIGKILL);
        install_forwarding_handlers();
        // A failed fork here ends init, which the supervisor sees as a failed start.
        return match fork(clock, None).unwrap_or_else(|_| exit_now(1)) {
            None => {
                drop(status_w);
                Ok(Role::Jail(JailSide::new(
                    exec_w,
                    go_r,
                    None,
                    Some(Pid::from_raw(1)),
                    terminals.into_jail_side(),
                )))
            }
            Some(vmm) => {
                drop(exec_w);
                drop(go_r);
                // init keeps no end of the console pipes: the supervisor sees EOF when the
                // VMM is gone.
                drop(terminals);
                init(vmm, status_w)
            }
        };
    };
    drop(exec_w);
    drop(status_w);
    drop(go_r);
    let relays = terminals.start_relays();
    leave_cgroups(journal, fork_into);
    // Init (PID 1 of the new namespace) dies with this process, and both are in the jail's
    // cgroups: journaled with the VMM, in one write.
    let vmm = if new_pid_ns {
        first_child(child)
    } else {
        Some(child)
    };
    let Some(vmm) = vmm else {
        record_processes(journal, &[("init", child)], false);
        return Ok(abort(
            journal,
            child,
            report,
            "--new-pid-ns: init did not start the VMM",
        ));
    };
    if new_pid_ns {
        record_processes(journal, &[("init", child), ("vmm", vmm)], true);
    } else {
        record_processes(journal, &[("vmm", vmm)], true);
    }
    if let Err(e) = write_pid_file(config, vmm) {
        return Ok(abort(journal, child, report, &e.to_string()));
    }
    drop(go_w);
    let outcome = exec_outcome(exec_r);
    if outcome.is_ok() {
        report.ok();
    }
    let mut status = wait_forwarding(child);
    if new_pid_ns {
        let mut buf = [0u8; 4];
        if File::from(status_r).read_exact(&mut buf).is_ok() {
            status = libc::c_int::from_ne_bytes(buf);
        }
    }
    // The VMM's last console lines reach the terminal before anything else is reported.
    relays.drain();
    empty_cgroups(journal, me);
    let undo = undo_text(journal);
    if let Err(message) = outcome {
        report.error(&join(&with_status(message, Some(status)), &undo));
        return Ok(Role::Done(Exit::Code(1)));
    }
    if !undo.is_empty() {
        report.error(&format!("cleanup after the VMM exited: {undo}"));
    }
    Ok(Role::Done(exit_of(status)))
}
