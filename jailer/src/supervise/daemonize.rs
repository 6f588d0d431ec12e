//! `--daemonize`, before any process layout: double fork, `setsid`, stdio to /dev/null. The
//! foreground jailer waits for the daemon's "ok" (the VMM was exec'd) or its error, so the
//! caller still gets an exit status and a message.

use std::fs::File;
use std::io::Write;

use super::keeper::{leave_cgroups, record_process};
use super::process::{devnull_stdio, exit_now, fork, pipe, read_all, waitpid};
use super::{Exit, SuperviseError};
use crate::cgroup::ForkInto;
use crate::clock::Clock;
use crate::state::Journal;

/// Detaches from the caller. Returns the report pipe in the daemon; in the foreground,
/// waits for the daemon's report and returns the jailer's exit. The foreground leaves the
/// jail's cgroups (it joined them before forking, like every process of the jailer) and
/// reaps the intermediate child before the daemon goes on.
pub fn daemonize(
    journal: &mut Journal,
    clock: &mut Clock,
    fork_into: Option<&ForkInto>,
) -> Result<Result<File, Exit>, SuperviseError> {
    let (report_r, report_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    if let Some(first) = fork(clock, None)? {
        drop(report_w);
        drop(go_r);
        leave_cgroups(journal, fork_into);
        waitpid(first, 0);
        drop(go_w);
        return Ok(Err(foreground_exit(&read_all(report_r))));
    }
    drop(report_r);
    drop(go_w);
    // The first child is not a group leader, so setsid succeeds.
    nix::unistd::setsid().map_err(|e| SuperviseError::Setsid(e.into()))?;
    if fork(clock, None)?.is_some() {
        exit_now(0);
    }
    // The grandchild: not a session leader, so it can never get a controlling terminal. It
    // goes on with the jail, so `jailer cleanup` must see it (the foreground writes no more).
    record_process(journal, "daemon", nix::unistd::getpid(), false);
    // Until the foreground has left the jail's cgroups.
    read_all(go_r);
    let mut report = File::from(report_w);
    if let Err(e) = devnull_stdio() {
        let _ = report.write_all(format!("error: {e}\n").as_bytes());
        return Err(e);
    }
    Ok(Ok(report))
}

/// The foreground jailer's exit, from the first line the daemon reported.
fn foreground_exit(text: &str) -> Exit {
    let line = text.lines().next().unwrap_or_default();
    if line == "ok" {
        Exit::Code(0)
    } else if let Some(message) = line.strip_prefix("error: ") {
        eprintln!("jailer: {message}");
        Exit::Code(1)
    } else {
        eprintln!("jailer: the daemonized jailer exited without reporting");
        Exit::Code(1)
    }
}
