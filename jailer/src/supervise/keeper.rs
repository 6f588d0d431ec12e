//! What every keeper does for the jail, whatever the process layout: journal the jail's
//! processes, write the pid file, leave the jail's cgroups, and when the jail fails or ends,
//! kill what is left in them and undo the set-up.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::pipes::{join, Report};
use super::process::{kill, pidfd_kill, pidfd_open, waitpid};
use super::{Exit, Role, SuperviseError};
use crate::args::Config;
use crate::cgroup::{self, ForkInto};
use crate::cleanup;
use crate::state::Journal;

/// Moves this process out of the jail's cgroups (but `never_joined`, the one the jail's
/// first process is born in). A failure only means this process keeps counting against the
/// jail's limits until it exits: warned about, not fatal (after a fork the keeper must go on
/// to undo or supervise the jail).
pub fn leave_cgroups(journal: &Journal, never_joined: Option<&ForkInto>) {
    for record in &journal.state.cgroups {
        if never_joined.is_some_and(|f| f.dir == record.dir) {
            continue;
        }
        if let Err(e) = cgroup::evacuate(record, std::process::id()) {
            eprintln!("jailer: warning: leaving the jail's cgroup: {e}");
        }
    }
}

/// Records a process in the journal (`complete`: the last of the jail's). After a fork a
/// failure to write the journal is not fatal either: the jail's cgroups still show its
/// processes to `jailer cleanup`.
pub fn record_process(journal: &mut Journal, role: &str, pid: Pid, complete: bool) {
    record_processes(journal, &[(role, pid)], complete);
}

/// [`record_process`] for several processes, in one journal write.
pub fn record_processes(journal: &mut Journal, processes: &[(&str, Pid)], complete: bool) {
    let raw: Vec<(&str, i32)> = processes.iter().map(|&(r, p)| (r, p.as_raw())).collect();
    if let Err(e) = journal.record_processes(&raw, complete) {
        eprintln!("jailer: warning: {e}");
    }
}

/// `<chroot>/<exec-name>.pid`: the VMM's host pid, written before the VMM starts.
pub fn write_pid_file(config: &Config, pid: Pid) -> Result<(), SuperviseError> {
    let path = config
        .chroot_dir()
        .join(format!("{}.pid", config.exec_name));
    let err = |source| SuperviseError::PidFile {
        path: path.display().to_string(),
        source,
    };
    // Root only (0600): the VMM may read what is staged in its root, not its host pid.
    let mut f = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(err)?;
    f.write_all(pid.to_string().as_bytes()).map_err(err)
}

/// Removes the jail; returns "" or what went wrong.
pub fn undo_text(journal: &Journal) -> String {
    match cleanup::remove(
        &journal.state,
        std::time::Instant::now() + cleanup::REAP_WAIT,
    ) {
        Ok(()) => String::new(),
        Err(e) => format!("undoing the set-up also failed: {e}"),
    }
}

/// A keeper-side failure after the fork: stop the jail (its process, or its PID
/// namespace's init), undo, report.
pub fn abort(journal: &Journal, child: Pid, mut report: Report, message: &str) -> Role {
    kill(child, Signal::SIGKILL);
    waitpid(child, 0);
    empty_cgroups(journal, nix::unistd::getpid());
    report.error(&join(message, &undo_text(journal)));
    Role::Done(Exit::Code(1))
}

/// Kills whatever is left in the jail's cgroups and waits (up to ~2 s) until they are
/// empty, reaping what comes to this subreaper. A listed process is signalled through a
/// pidfd opened before its cgroup is read again: a pid still listed then belongs to the
/// process the pidfd names (or that process has exited, and the signal goes nowhere), so a
/// pid recycled by a host process after the first read is never hit.
pub fn empty_cgroups(journal: &Journal, me: Pid) {
    for _ in 0..400 {
        while waitpid(Pid::from_raw(-1), libc::WNOHANG).is_some() {}
        let mut left = false;
        for record in &journal.state.cgroups {
            let listed = |p: &u32| i32::try_from(*p).is_ok_and(|p| p != me.as_raw());
            let first: Vec<u32> = cgroup::procs(&record.dir)
                .unwrap_or_default()
                .into_iter()
                .filter(listed)
                .collect();
            if first.is_empty() {
                continue;
            }
            left = true;
            let held: Vec<(u32, OwnedFd)> = first
                .iter()
                .filter_map(|&p| {
                    let pid = Pid::from_raw(i32::try_from(p).ok()?);
                    Some((p, pidfd_open(pid)?))
                })
                .collect();
            let again = cgroup::procs(&record.dir).unwrap_or_default();
            for (p, fd) in &held {
                if again.contains(p) {
                    pidfd_kill(fd, Signal::SIGKILL);
                }
            }
        }
        if !left {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
