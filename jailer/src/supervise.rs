//! Step 7: daemonizing, and which process stays outside the jail to undo it.
//!
//! Every jail has a *keeper*: a root process in the host's namespaces that learns whether the
//! jail process reached exec (an O_CLOEXEC "exec pipe": a marker byte just before execve,
//! then EOF when exec closes the pipe; an error message otherwise; nothing at all if the
//! jail process was killed) and, if not, removes everything
//! the journal records. The jail process cannot: after pivot_root and the privilege drop it
//! sees neither the host's files nor its cgroups.
//!
//! | flags                              | processes                                           |
//! |------------------------------------|-----------------------------------------------------|
//! | (none)                             | the jailer becomes the VMM (same pid, as Firecracker); a double-forked *guard* is the keeper until exec |
//! | `--new-pid-ns`                     | the jailer forks the VMM as PID 1 of a new PID namespace, writes the pid file and exits 0 (as Firecracker) |
//! | `--cleanup-on-exit`                | the jailer stays as *supervisor*: forks the VMM, forwards SIGTERM/INT/HUP/QUIT, and when the VMM exits, however it exits, removes the jail and exits with the VMM's status |
//! | `--cleanup-on-exit --new-pid-ns`   | as above, and the supervisor's *init* half is PID 1 of the new PID namespace: it starts the VMM as PID 2, reaps, forwards signals, and when the VMM exits the whole namespace is killed |
//!
//! `--daemonize` first double-forks, calls setsid and points stdio at /dev/null; the
//! foreground jailer waits for the daemon's "ok" (the VMM was exec'd) or its error, so the
//! caller still gets an exit status and a message. Keepers leave the jail's cgroups right
//! after forking, and the jail process waits for that: only jail processes count against
//! its limits.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::args::Config;
use crate::cgroup;
use crate::cleanup;
use crate::clock::Clock;
use crate::sanitize;
use crate::state::{Journal, ProcessRecord, StateError};
use crate::sys::cvt;

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

/// The jail process's end of the keeper protocol.
pub struct JailSide {
    exec_pipe: File,
    /// Without a supervisor: the guard's account of the undo, read after a failure.
    undo_pipe: Option<OwnedFd>,
    /// Parent to die with (PR_SET_PDEATHSIG), as seen from the jail process.
    pub supervisor: Option<libc::pid_t>,
}

/// First byte on the exec pipe: the jail process got as far as execve. Followed by EOF
/// (the pipe is closed on exec) the VMM is running; followed by a message, execve failed.
/// EOF without it: the jail process died before exec (e.g. killed).
const EXEC_MARK: u8 = 1;

impl JailSide {
    fn new(
        exec_pipe: OwnedFd,
        undo_pipe: Option<OwnedFd>,
        supervisor: Option<libc::pid_t>,
    ) -> Self {
        JailSide {
            exec_pipe: File::from(exec_pipe),
            undo_pipe,
            supervisor,
        }
    }

    /// Tells the keeper that execve comes next.
    pub fn about_to_exec(&self) {
        let _ = (&self.exec_pipe).write_all(&[EXEC_MARK]);
    }

    /// Reports a failure to the keeper. Returns the keeper's account of the undo when this
    /// process is the one to tell the caller (no supervisor: the jailer was to become the
    /// VMM); `None` when the keeper reports.
    pub fn fail(self, message: &str) -> Option<String> {
        let mut pipe = self.exec_pipe;
        let _ = pipe.write_all(message.as_bytes());
        drop(pipe);
        self.undo_pipe.map(read_all)
    }
}

/// What the keeper reads on the exec pipe: `Ok` when the VMM was exec'd, else the error.
fn exec_outcome(exec_r: OwnedFd) -> Result<(), String> {
    let text = read_all(exec_r);
    match text.as_bytes() {
        [EXEC_MARK] => Ok(()),
        [] => Err("the jail process died before exec".to_owned()),
        [EXEC_MARK, ..] => Err(text.chars().skip(1).collect()),
        _ => Err(text),
    }
}

/// Adds how the jail process ended to "died before exec".
fn with_status(error: String, status: Option<libc::c_int>) -> String {
    match status {
        Some(st) if libc::WIFSIGNALED(st) && error.ends_with("before exec") => {
            format!("{error} (killed by signal {})", libc::WTERMSIG(st))
        }
        _ => error,
    }
}

/// Where a keeper reports the outcome.
enum Report {
    /// The keeper is the foreground process: print errors.
    Stderr,
    /// The foreground process waits on this pipe (`--daemonize`).
    Pipe(File),
    /// The jail process prints (mode without supervisor or daemon).
    Silent,
}

impl Report {
    fn ok(&mut self) {
        if let Report::Pipe(p) = self {
            let _ = p.write_all(b"ok\n");
        }
    }

    fn error(&mut self, message: &str) {
        match self {
            Report::Stderr => eprintln!("jailer: {message}"),
            Report::Pipe(p) => {
                // One line: the foreground reads the first.
                let line = message.replace('\n', " / ");
                let _ = p.write_all(format!("error: {line}\n").as_bytes());
            }
            Report::Silent => {}
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SuperviseError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, which lives for the call.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }).map_err(SuperviseError::Pipe)?;
    // SAFETY: both descriptors were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn read_all(fd: OwnedFd) -> String {
    let mut s = String::new();
    let _ = File::from(fd).read_to_string(&mut s);
    s
}

/// fork(2); `None` in the child. The process is single-threaded, so the child may go on
/// running ordinary Rust code.
fn fork(clock: &mut Clock) -> Result<Option<libc::pid_t>, SuperviseError> {
    clock.before_fork();
    // SAFETY: the jailer is single-threaded (no lock can be held by another thread).
    let pid = cvt(unsafe { libc::fork() }).map_err(SuperviseError::Fork)?;
    Ok((pid != 0).then_some(pid))
}

/// Leaves the process without running exit handlers (the forked copies of stdio buffers
/// and destructors belong to the parent).
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

fn getpid() -> libc::pid_t {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

fn waitpid(pid: libc::pid_t, flags: libc::c_int) -> Option<(libc::pid_t, libc::c_int)> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into `status`, which lives for the call.
        let ret = unsafe { libc::waitpid(pid, &mut status, flags) };
        if ret > 0 {
            return Some((ret, status));
        }
        if ret == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return None;
    }
}

fn kill(pid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill takes plain integers; a vanished target is harmless.
    unsafe { libc::kill(pid, signal) };
}

fn devnull_stdio() -> Result<(), SuperviseError> {
    let null = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/null")
        .map_err(SuperviseError::DevNull)?;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors; `null` stays open for the call.
        cvt(unsafe { libc::dup2(null.as_raw_fd(), fd) }).map_err(SuperviseError::DevNull)?;
    }
    Ok(())
}

/// The jail process waits until its keeper has left the jail's cgroups (the keeper closes
/// its end of the pipe): from the VMM's first instruction only jail processes count against
/// the jail's limits.
fn wait_for_keeper(go: OwnedFd) {
    read_all(go);
}

/// Moves this process out of the jail's cgroups. A failure only means this process keeps
/// counting against the jail's limits until it exits: warned about, not fatal (after a fork
/// the keeper must go on to undo or supervise the jail).
fn leave_cgroups(journal: &Journal) {
    for record in &journal.state.cgroups {
        if let Err(e) = cgroup::evacuate(record, std::process::id()) {
            eprintln!("jailer: warning: leaving the jail's cgroup: {e}");
        }
    }
}

/// Records a process in the journal. After a fork a failure to write the journal is not
/// fatal either: the jail's cgroups still show its processes to `jailer cleanup`.
fn record_process(journal: &mut Journal, role: &str, pid: libc::pid_t) {
    if let Some(r) = ProcessRecord::of(role, pid) {
        if let Err(e) = journal.record(|s| s.processes.push(r)) {
            eprintln!("jailer: warning: {e}");
        }
    }
}

/// A keeper-side failure after the fork: stop the jail (its process, or its PID
/// namespace's init), undo, report.
fn abort(journal: &Journal, child: libc::pid_t, mut report: Report, message: &str) -> Role {
    kill(child, libc::SIGKILL);
    waitpid(child, 0);
    empty_cgroups(journal, getpid());
    report.error(&join(message, &undo_text(journal)));
    Role::Done(Exit::Code(1))
}

/// Removes the jail; returns "" or what went wrong.
fn undo_text(journal: &Journal) -> String {
    match cleanup::remove(&journal.state) {
        Ok(()) => String::new(),
        Err(e) => format!("undoing the set-up also failed: {e}"),
    }
}

fn write_pid_file(config: &Config, pid: libc::pid_t) -> Result<(), SuperviseError> {
    let path = config
        .chroot_dir()
        .join(format!("{}.pid", config.exec_name));
    let err = |source| SuperviseError::PidFile {
        path: path.display().to_string(),
        source,
    };
    let mut f = File::options()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(err)?;
    f.write_all(pid.to_string().as_bytes()).map_err(err)?;
    // The umask (077) applied to the creation mode.
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .map_err(err)
}

/// Forks the jail's first process into a new PID namespace; the parent keeps its own
/// namespace for any later child (nft during an undo).
fn fork_into_new_pid_ns(clock: &mut Clock) -> Result<Option<libc::pid_t>, SuperviseError> {
    let own = File::options()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/proc/self/ns/pid")
        .map_err(|source| SuperviseError::PidNamespace {
            what: "opening /proc/self/ns/pid",
            source,
        })?;
    // SAFETY: unshare takes only flags; CLONE_NEWPID only affects children forked later.
    cvt(unsafe { libc::unshare(libc::CLONE_NEWPID) }).map_err(|source| {
        SuperviseError::PidNamespace {
            what: "unshare(CLONE_NEWPID)",
            source,
        }
    })?;
    let child = fork(clock)?;
    if let Some(pid) = child {
        // SAFETY: setns with a PID namespace descriptor kept open by `own`.
        if let Err(source) = cvt(unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWPID) }) {
            // The caller undoes the jail: its first process must not outlive the error.
            kill(pid, libc::SIGKILL);
            waitpid(pid, 0);
            return Err(SuperviseError::PidNamespace {
                what: "returning to the jailer's PID namespace",
                source,
            });
        }
    }
    Ok(child)
}

/// Detaches from the caller. Returns the report pipe in the daemon; in the foreground,
/// waits for the daemon's report and returns the jailer's exit. The foreground leaves the
/// jail's cgroups (it joined them before forking, like every process of the jailer) and
/// reaps the intermediate child before the daemon goes on.
fn daemonize(journal: &Journal, clock: &mut Clock) -> Result<Result<File, Exit>, SuperviseError> {
    let (report_r, report_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    if let Some(first) = fork(clock)? {
        drop(report_w);
        drop(go_r);
        leave_cgroups(journal);
        waitpid(first, 0);
        drop(go_w);
        let text = read_all(report_r);
        let line = text.lines().next().unwrap_or_default();
        return Ok(Err(if line == "ok" {
            Exit::Code(0)
        } else if let Some(message) = line.strip_prefix("error: ") {
            eprintln!("jailer: {message}");
            Exit::Code(1)
        } else {
            eprintln!("jailer: the daemonized jailer exited without reporting");
            Exit::Code(1)
        }));
    }
    drop(report_r);
    drop(go_w);
    // SAFETY: setsid has no preconditions; the first child is not a group leader.
    cvt(unsafe { libc::setsid() }).map_err(SuperviseError::Setsid)?;
    if fork(clock)?.is_some() {
        exit_now(0);
    }
    // The grandchild: not a session leader, so it can never get a controlling terminal.
    wait_for_keeper(go_r);
    let mut report = File::from(report_w);
    if let Err(e) = devnull_stdio() {
        let _ = report.write_all(format!("error: {e}\n").as_bytes());
        return Err(e);
    }
    Ok(Ok(report))
}

/// Splits the jailer into the jail process and its keeper, as the flags ask.
pub fn launch(
    config: &Config,
    journal: &mut Journal,
    clock: &mut Clock,
) -> Result<Role, SuperviseError> {
    let report = if config.daemonize {
        match daemonize(journal, clock)? {
            Ok(pipe) => Report::Pipe(pipe),
            Err(exit) => return Ok(Role::Done(exit)),
        }
    } else {
        Report::Stderr
    };
    match (config.cleanup_on_exit, config.new_pid_ns) {
        (false, false) => guarded(config, journal, report),
        (false, true) => pid_ns_keeper(config, journal, clock, report),
        (true, new_pid_ns) => supervised(config, journal, clock, report, new_pid_ns),
    }
}

/// No supervisor: this process becomes the VMM; a double-forked guard undoes the jail if it
/// fails before exec.
fn guarded(config: &Config, journal: &mut Journal, report: Report) -> Result<Role, SuperviseError> {
    let me = getpid();
    if let Some(r) = ProcessRecord::of("vmm", me) {
        journal.record(|s| s.processes.push(r))?;
    }
    write_pid_file(config, me)?;
    let (exec_r, exec_w) = pipe()?;
    let (undo_r, undo_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    // SAFETY: single-threaded, see `fork`.
    let first = cvt(unsafe { libc::fork() }).map_err(SuperviseError::Fork)?;
    if first == 0 {
        // SAFETY: as above.
        match unsafe { libc::fork() } {
            0 => {
                drop(exec_w);
                drop(undo_r);
                drop(go_r);
                leave_cgroups(journal);
                drop(go_w);
                let report = match report {
                    Report::Pipe(p) => Report::Pipe(p),
                    _ => Report::Silent,
                };
                guard(journal, me, exec_r, undo_w, report);
            }
            -1 => exit_now(1),
            _ => exit_now(0),
        }
    }
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
    wait_for_keeper(go_r);
    Ok(Role::Jail(JailSide::new(exec_w, Some(undo_r), None)))
}

fn guard(
    journal: &Journal,
    jail_pid: libc::pid_t,
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
        let _ = cgroup::evacuate(record, u32::try_from(jail_pid).unwrap_or(0));
    }
    let undo = undo_text(journal);
    let mut pipe = File::from(undo_w);
    let _ = pipe.write_all(undo.as_bytes());
    drop(pipe);
    report.error(&join(&message, &undo));
    exit_now(0);
}

fn join(message: &str, undo: &str) -> String {
    if undo.is_empty() {
        message.to_owned()
    } else {
        format!("{message}; {undo}")
    }
}

/// `--new-pid-ns` without supervisor: fork the VMM as PID 1, report, exit.
fn pid_ns_keeper(
    config: &Config,
    journal: &mut Journal,
    clock: &mut Clock,
    mut report: Report,
) -> Result<Role, SuperviseError> {
    let (exec_r, exec_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let Some(child) = fork_into_new_pid_ns(clock)? else {
        drop(exec_r);
        drop(report);
        drop(go_w);
        wait_for_keeper(go_r);
        return Ok(Role::Jail(JailSide::new(exec_w, None, None)));
    };
    drop(exec_w);
    drop(go_r);
    leave_cgroups(journal);
    record_process(journal, "vmm", child);
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

const FORWARDED: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

fn waited_signals() -> Vec<libc::c_int> {
    let mut v = FORWARDED.to_vec();
    v.push(libc::SIGCHLD);
    v
}

fn sigwait(set: &libc::sigset_t) -> libc::c_int {
    loop {
        // SAFETY: `set` is an initialised sigset_t; no siginfo is requested.
        let sig = unsafe { libc::sigwaitinfo(set, std::ptr::null_mut()) };
        if sig > 0 {
            return sig;
        }
    }
}

/// Waits for `child`, forwarding termination signals to it and reaping every other child
/// (orphans come to a subreaper); returns its wait status.
fn wait_forwarding(child: libc::pid_t) -> libc::c_int {
    let set = sanitize::signal_set(&waited_signals());
    loop {
        let sig = sigwait(&set);
        if sig != libc::SIGCHLD {
            kill(child, sig);
            continue;
        }
        let mut result = None;
        while let Some((pid, status)) = waitpid(-1, libc::WNOHANG) {
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
        // blocked and taken with sigwaitinfo anyway.
        unsafe { libc::signal(sig, ignore_signal as *const () as libc::sighandler_t) };
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
fn init(vmm: libc::pid_t, status_w: OwnedFd) -> ! {
    let status = wait_forwarding(vmm);
    // Everything else in the namespace dies with the VMM.
    kill(-1, libc::SIGKILL);
    while waitpid(-1, 0).is_some() {}
    let _ = File::from(status_w).write_all(&status.to_ne_bytes());
    exit_now(0);
}

/// The (host) pid of the first child of `pid`: the VMM, which init forks at once. `None`
/// if init is gone or takes more than a second.
fn first_child(pid: libc::pid_t) -> Option<libc::pid_t> {
    for _ in 0..20_000 {
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
        if let Some(first) = children.split_whitespace().next() {
            return first.parse().ok();
        }
        std::thread::sleep(std::time::Duration::from_micros(50));
    }
    None
}

/// Kills whatever is left in the jail's cgroups and waits (up to ~2 s) until they are
/// empty, reaping what comes to this subreaper.
fn empty_cgroups(journal: &Journal, me: libc::pid_t) {
    for _ in 0..400 {
        let mut left = Vec::new();
        for record in &journal.state.cgroups {
            left.extend(cgroup::procs(&record.dir).unwrap_or_default());
        }
        left.retain(|p| i32::try_from(*p).is_ok_and(|p| p != me));
        while waitpid(-1, libc::WNOHANG).is_some() {}
        if left.is_empty() {
            return;
        }
        for p in left {
            if let Ok(p) = i32::try_from(p) {
                kill(p, libc::SIGKILL);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// `--cleanup-on-exit`: stay as the supervisor.
fn supervised(
    config: &Config,
    journal: &mut Journal,
    clock: &mut Clock,
    mut report: Report,
    new_pid_ns: bool,
) -> Result<Role, SuperviseError> {
    let (exec_r, exec_w) = pipe()?;
    let (status_r, status_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    sanitize::set_signal_mask(&waited_signals(), libc::SIG_BLOCK)?;
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag.
    cvt(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) })
        .map_err(SuperviseError::Subreaper)?;
    let me = getpid();
    if let Some(r) = ProcessRecord::of("supervisor", me) {
        journal.record(|s| s.processes.push(r))?;
    }
    // An error from here on (before the fork) is undone by the caller; after the fork the
    // keeper handles its own failures.
    let child = if new_pid_ns {
        fork_into_new_pid_ns(clock)?
    } else {
        fork(clock)?
    };
    let Some(child) = child else {
        drop(exec_r);
        drop(status_r);
        drop(report);
        drop(go_w);
        if !new_pid_ns {
            drop(status_w);
            wait_for_keeper(go_r);
            return Ok(Role::Jail(JailSide::new(exec_w, None, Some(me))));
        }
        // PID 1 of the new namespace.
        // SAFETY: PR_SET_PDEATHSIG takes a signal number: init dies with the supervisor,
        // and the kernel then kills the whole namespace.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
        install_forwarding_handlers();
        // A failed fork here ends init, which the supervisor sees as a failed start.
        return match fork(clock).unwrap_or_else(|_| exit_now(1)) {
            None => {
                drop(status_w);
                wait_for_keeper(go_r);
                Ok(Role::Jail(JailSide::new(exec_w, None, Some(1))))
            }
            Some(vmm) => {
                drop(exec_w);
                drop(go_r);
                init(vmm, status_w)
            }
        };
    };
    drop(exec_w);
    drop(status_w);
    drop(go_r);
    leave_cgroups(journal);
    let vmm = if new_pid_ns {
        record_process(journal, "init", child);
        first_child(child)
    } else {
        Some(child)
    };
    let Some(vmm) = vmm else {
        return Ok(abort(
            journal,
            child,
            report,
            "--new-pid-ns: init did not start the VMM",
        ));
    };
    record_process(journal, "vmm", vmm);
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
