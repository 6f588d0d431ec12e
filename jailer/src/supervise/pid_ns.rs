//! `--new-pid-ns` without a supervisor (Firecracker's layout): the jailer forks the VMM as
//! PID 1 of a new PID namespace, writes the pid file, waits for the exec, reports, and exits
//! 0.

use super::keeper::{abort, leave_cgroups, record_process, undo_text, write_pid_file};
use super::pipes::{exec_outcome, join, with_status, JailSide, Report};
use super::process::{fork_into_new_pid_ns, pipe, waitpid};
use super::terminal::Terminals;
use super::{Exit, Role, SuperviseError};
use crate::args::Config;
use crate::cgroup::ForkInto;
use crate::clock::Clock;
use crate::state::Journal;

/// Forks the jail process into the new namespace; this process is its keeper until exec.
pub fn pid_ns_keeper(
    config: &Config,
    journal: &mut Journal,
    clock: &mut Clock,
    mut report: Report,
    terminals: Terminals,
    fork_into: Option<&ForkInto>,
) -> Result<Role, SuperviseError> {
    let (exec_r, exec_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let Some(child) = fork_into_new_pid_ns(clock, fork_into.map(|f| &f.fd))? else {
        drop(exec_r);
        drop(report);
        drop(go_w);
        return Ok(Role::Jail(JailSide::new(
            exec_w,
            go_r,
            None,
            None,
            terminals.into_jail_side(),
        )));
    };
    drop(terminals);
    drop(exec_w);
    drop(go_r);
    leave_cgroups(journal, fork_into);
    record_process(journal, "vmm", child, true);
    if let Err(e) = write_pid_file(config, child) {
        return Ok(abort(journal, child, report, &e.to_string()));
    }
    drop(go_w);
    match exec_outcome(exec_r) {
        Ok(()) => {
            report.ok();
            Ok(Role::Done(Exit::Code(0)))
        }
        Err(message) => {
            let status = waitpid(child, 0).map(|(_, st)| st);
            let undo = undo_text(journal);
            report.error(&join(&with_status(message, status), &undo));
            Ok(Role::Done(Exit::Code(1)))
        }
    }
}
