//! No supervisor (Firecracker's default layout): this process becomes the VMM (same pid); a
//! double-forked *guard* waits for the exec and undoes the jail if the jail process fails
//! before it.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;

use nix::unistd::Pid;

use super::keeper::{leave_cgroups, record_process, undo_text, write_pid_file};
use super::pipes::{exec_outcome, join, JailSide, Report};
use super::process::{devnull_stdio, exit_now, fork_raw, pipe, waitpid};
use super::terminal::Terminals;
use super::{Role, SuperviseError};
use crate::args::Config;
use crate::cgroup::{self, ForkInto};
use crate::state::Journal;

/// Starts the guard; this process goes on as the jail process.
pub fn guarded(
    config: &Config,
    journal: &mut Journal,
    report: Report,
    terminals: Terminals,
    fork_into: Option<&ForkInto>,
) -> Result<Role, SuperviseError> {
    // This process (the VMM to be) is in the journal since it was started (as the jailer
    // or, with --daemonize, the daemon).
    let me = nix::unistd::getpid();
    journal.record_process("vmm", me.as_raw(), false)?;
    write_pid_file(config, me)?;
    let (exec_r, exec_w) = pipe()?;
    let (undo_r, undo_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    // Not `fork(clock)`: this process stays the VMM, its CPU clock does not restart.
    let Some(first) = fork_raw()? else {
        match fork_raw() {
            Ok(None) => {
                drop(exec_w);
                drop(undo_r);
                drop(go_r);
                // Journaled before it leaves the jail's cgroups, so that `jailer cleanup`
                // always sees it (and waits for its undo). The jail process writes no more.
                let guard_pid = nix::unistd::getpid();
                record_process(journal, "guard", guard_pid, true);
                leave_cgroups(journal, fork_into);
                drop(go_w);
                let report = match report {
                    Report::Pipe(p) => Report::Pipe(p),
                    _ => Report::Silent,
                };
                guard(journal, me, exec_r, undo_w, report);
            }
            Ok(Some(_)) => exit_now(0),
            Err(_) => exit_now(1),
        }
    };
    let forked =
        waitpid(first, 0).is_some_and(|(_, st)| libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0);
    if !forked {
        return Err(SuperviseError::Fork(io::Error::other(
            "could not start the guard process",
        )));
    }
    drop(exec_r);
    drop(undo_w);
    drop(report);
    drop(go_w);
    // This process becomes the VMM: it joins the cgroup no process was born in (the guard,
    // forked before, never did).
    if let Some(f) = fork_into {
        f.join_self()?;
    }
    Ok(Role::Jail(JailSide::new(
        exec_w,
        go_r,
        Some(undo_r),
        None,
        terminals.into_jail_side(),
    )))
}

/// The guard: nothing to do once the VMM is exec'd; else undo, and hand the account of the
/// undo to the jail process (which prints it).
fn guard(
    journal: &Journal,
    jail_pid: Pid,
    exec_r: OwnedFd,
    undo_w: OwnedFd,
    mut report: Report,
) -> ! {
    let _ = devnull_stdio();
    let Err(message) = exec_outcome(exec_r) else {
        report.ok();
        exit_now(0);
    };
    // The jail process failed before exec and waits for this undo (or is dead): let its
    // cgroups go.
    for record in &journal.state.cgroups {
        let _ = cgroup::evacuate(record, u32::try_from(jail_pid.as_raw()).unwrap_or(0));
    }
    let undo = undo_text(journal);
    let mut pipe = File::from(undo_w);
    let _ = pipe.write_all(undo.as_bytes());
    drop(pipe);
    report.error(&join(&message, &undo));
    exit_now(0);
}
