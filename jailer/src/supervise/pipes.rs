//! The pipes between the jail process, its keeper and the foreground jailer.
//!
//! * The *exec pipe* (O_CLOEXEC): the jail process writes a marker byte just before execve,
//!   then exec closes the pipe (EOF): the VMM runs; an error message instead: the set-up
//!   failed; EOF without the marker: the jail process died before exec (e.g. killed).
//! * The *go pipe*: before seccomp and exec (step 9) the jail process waits until its keeper
//!   closes it, i.e. has journaled the jail's processes, written the pid file and left the
//!   jail's cgroups (so that only jail processes count against the jail's limits). The
//!   keeper does that while the jail process goes through steps 6 to 8, which touch nothing
//!   on the host: a keeper that fails kills the jail process wherever it is.
//! * The *undo pipe* (no supervisor only): the guard's account of the undo, for the jail
//!   process to print.
//! * The *report*: where a keeper tells the caller how it went (stderr, or the
//!   `--daemonize` pipe the foreground jailer reads).

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;

use nix::unistd::Pid;

use super::process::read_all;
use super::terminal::JailTerminals;
use super::SuperviseError;

/// First byte on the exec pipe: the jail process got as far as execve. Followed by EOF
/// (the pipe is closed on exec) the VMM is running; followed by a message, execve failed.
/// EOF without it: the jail process died before exec (e.g. killed).
const EXEC_MARK: u8 = 1;

/// The jail process's end of the keeper protocol.
pub struct JailSide {
    exec_pipe: File,
    /// Without a supervisor: the guard's account of the undo, read after a failure.
    undo_pipe: Option<OwnedFd>,
    /// Parent to die with (PR_SET_PDEATHSIG), as seen from the jail process.
    pub supervisor: Option<Pid>,
    /// The go pipe's read end, until [`JailSide::wait_for_keeper`].
    go: Option<OwnedFd>,
    /// What replaces a terminal on stdio (`terminal.rs`).
    terminals: JailTerminals,
}

impl JailSide {
    pub fn new(
        exec_pipe: OwnedFd,
        go: OwnedFd,
        undo_pipe: Option<OwnedFd>,
        supervisor: Option<Pid>,
        terminals: JailTerminals,
    ) -> Self {
        JailSide {
            exec_pipe: File::from(exec_pipe),
            undo_pipe,
            supervisor,
            go: Some(go),
            terminals,
        }
    }

    /// Waits until the keeper has journaled the jail's processes, written the pid file and
    /// left the jail's cgroups (it closes its end of the go pipe): from the VMM's first
    /// instruction only jail processes count against the jail's limits.
    pub fn wait_for_keeper(&mut self) {
        if let Some(go) = self.go.take() {
            read_all(go);
        }
    }

    /// Replaces the terminals on stdio (just before seccomp and exec).
    pub fn detach_terminals(&mut self) -> Result<(), SuperviseError> {
        self.terminals.detach()
    }

    /// Tells the keeper that execve comes next.
    pub fn about_to_exec(&self) {
        let _ = (&self.exec_pipe).write_all(&[EXEC_MARK]);
    }

    /// Reports a failure to the keeper; when this process is the one to tell the caller (no
    /// supervisor: the jailer was to become the VMM), prints it with the keeper's account of
    /// the undo on the caller's stderr.
    pub fn fail(self, message: &str) {
        let mut pipe = self.exec_pipe;
        let _ = pipe.write_all(message.as_bytes());
        drop(pipe);
        if let Some(undo_pipe) = self.undo_pipe {
            let undo = read_all(undo_pipe);
            let mut text = format!("jailer: {message}\n");
            if !undo.is_empty() {
                text.push_str(&format!("jailer: {undo}\n"));
            }
            self.terminals.write_stderr(&text);
        }
    }
}

/// What the keeper reads on the exec pipe: `Ok` when the VMM was exec'd, else the error.
pub fn exec_outcome(exec_r: OwnedFd) -> Result<(), String> {
    let text = read_all(exec_r);
    match text.as_bytes() {
        [EXEC_MARK] => Ok(()),
        [] => Err("the jail process died before exec".to_owned()),
        [EXEC_MARK, ..] => Err(text.chars().skip(1).collect()),
        _ => Err(text),
    }
}

/// Adds how the jail process ended to "died before exec".
pub fn with_status(error: String, status: Option<libc::c_int>) -> String {
    match status {
        Some(st) if libc::WIFSIGNALED(st) && error.ends_with("before exec") => {
            format!("{error} (killed by signal {})", libc::WTERMSIG(st))
        }
        _ => error,
    }
}

/// Where a keeper reports the outcome.
pub enum Report {
    /// The keeper is the foreground process: print errors.
    Stderr,
    /// The foreground process waits on this pipe (`--daemonize`).
    Pipe(File),
    /// The jail process prints (mode without supervisor or daemon).
    Silent,
}

impl Report {
    pub fn ok(&mut self) {
        if let Report::Pipe(p) = self {
            let _ = p.write_all(b"ok\n");
        }
    }

    pub fn error(&mut self, message: &str) {
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

/// An error and the account of its undo ("" when the undo went well), as one message.
pub fn join(message: &str, undo: &str) -> String {
    if undo.is_empty() {
        message.to_owned()
    } else {
        format!("{message}; {undo}")
    }
}
