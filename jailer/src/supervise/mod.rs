//! The split: daemonizing, and which process stays outside the jail to undo it.
//!
//! Every jail has a *keeper*: a root process in the host's namespaces that learns whether the
//! jail process reached exec ([`pipes`]) and, if not, removes everything the journal records
//! ([`keeper`]). The jail process cannot: after pivot_root and the privilege drop it sees
//! neither the host's files nor its cgroups.
//!
//! | flags                              | processes                                           |
//! |------------------------------------|-----------------------------------------------------|
//! | (none)                             | the jailer becomes the VMM (same pid, as Firecracker); a double-forked *guard* is the keeper until exec ([`guard`]) |
//! | `--new-pid-ns`                     | the jailer forks the VMM as PID 1 of a new PID namespace, writes the pid file and exits 0 (as Firecracker) ([`pid_ns`]) |
//! | `--cleanup-on-exit`                | the jailer stays as *supervisor*: forks the VMM, forwards SIGTERM/INT/HUP/QUIT, and when the VMM exits, however it exits, removes the jail and exits with the VMM's status ([`supervisor`]) |
//! | `--cleanup-on-exit --new-pid-ns`   | as above, and the supervisor's *init* half is PID 1 of the new PID namespace: it starts the VMM as PID 2, reaps, forwards signals, and when the VMM exits the whole namespace is killed |
//!
//! `--daemonize` first double-forks ([`daemonize`]). Keepers journal the jail's processes,
//! write the pid file and leave the jail's cgroups right after forking, while the jail
//! process goes through steps 6 to 8 (which touch nothing on the host); it waits for that
//! before seccomp and exec ([`JailSide::wait_for_keeper`]): only jail processes count
//! against its limits. A terminal on the jailer's stdio is replaced in the jail process, by a pipe
//! the supervisor copies to it or by /dev/null ([`terminal`]). The process primitives they
//! share are in [`process`].

mod daemonize;
mod guard;
mod keeper;
mod pid_ns;
mod pipes;
mod process;
mod supervisor;
mod terminal;

use std::io;

pub use pipes::JailSide;

use crate::args::Config;
use crate::cgroup::{self, ForkInto};
use crate::clock::Clock;
use crate::sanitize;
use crate::state::{Journal, StateError};
use pipes::Report;

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("pipe2: {0}")]
    Pipe(#[source] io::Error),
    #[error("fork: {0}")]
    Fork(#[source] io::Error),
    #[error("--daemonize: setsid: {0}")]
    Setsid(#[source] io::Error),
    #[error("--daemonize: redirecting stdio to /dev/null: {0}")]
    DevNull(#[source] io::Error),
    #[error("replacing a terminal on stdio: {0}")]
    Terminal(#[source] io::Error),
    #[error("--new-pid-ns: {what}: {source}")]
    PidNamespace {
        what: &'static str,
        source: io::Error,
    },
    #[error("--cleanup-on-exit: prctl(PR_SET_CHILD_SUBREAPER): {0}")]
    Subreaper(#[source] io::Error),
    #[error("--cleanup-on-exit: {0}")]
    Signals(#[from] sanitize::SanitizeError),
    #[error("writing the pid file {path}: {source}")]
    PidFile { path: String, source: io::Error },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
}

/// How a process of the jailer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    /// Die of this signal (the VMM's fate, passed on by the supervisor).
    Signal(i32),
}

/// What the caller of [`launch`] does next.
pub enum Role {
    /// Build the jail and exec the VMM; report failures through the [`JailSide`].
    Jail(JailSide),
    /// This process is done.
    Done(Exit),
}

/// Splits the jailer into the jail process and its keeper, as the flags ask. The jail's
/// first process is born in the cgroup `fork_into` (or joins it, when the jailer becomes the
/// VMM itself).
pub fn launch(
    config: &Config,
    journal: &mut Journal,
    clock: &mut Clock,
    fork_into: Option<&ForkInto>,
) -> Result<Role, SuperviseError> {
    let report = if config.daemonize {
        match daemonize::daemonize(journal, clock, fork_into)? {
            Ok(pipe) => Report::Pipe(pipe),
            Err(exit) => return Ok(Role::Done(exit)),
        }
    } else {
        Report::Stderr
    };
    let terminals = terminal::plan(config.cleanup_on_exit)?;
    match (config.cleanup_on_exit, config.new_pid_ns) {
        (false, false) => guard::guarded(config, journal, report, terminals, fork_into),
        (false, true) => {
            pid_ns::pid_ns_keeper(config, journal, clock, report, terminals, fork_into)
        }
        (true, new_pid_ns) => supervisor::supervised(
            config, journal, clock, report, new_pid_ns, terminals, fork_into,
        ),
    }
}
