//! A terminal on the jailer's stdio never reaches the jail.
//!
//! A descriptor of a terminal lets its holder inject input (TIOCSTI), change the terminal's
//! mode (echo, signals: TCSETS), its window size (TIOCSWINSZ) or its line discipline
//! (TIOCSETD) — changes that outlive the jail and reach the operator's shell. So each of
//! descriptors 0, 1 and 2 that is a terminal is replaced in the jail process, just before
//! exec, by:
//!
//! - a pipe, for output (1, 2) under `--cleanup-on-exit`: the supervisor copies what the VMM
//!   writes (its serial console) to the terminal, so running the jailer from a terminal
//!   still shows the console;
//! - `/dev/null` otherwise: input (0: the serial console's input is given through a pipe, as
//!   the worker and the tests do), and output when no jailer process stays to copy it.
//!
//! Descriptors that are not terminals (pipes, files, sockets) are passed on as they are. The
//! jail's seccomp filter refuses terminal ioctls anyway (its ioctl rule is an allow-list);
//! this keeps the terminal out of reach of a VMM whose filter is switched off or wrong.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::mpsc;
use std::time::Duration;

use super::process::pipe;
use super::SuperviseError;

/// How long the supervisor waits for the rest of the console output once the VMM is gone.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The jail process's replacements for its terminal descriptors, and the supervisor's end of
/// the output pipes.
#[derive(Debug, Default)]
pub struct Terminals {
    /// (descriptor to replace, what replaces it), for the jail process.
    jail: Vec<(RawFd, OwnedFd)>,
    /// (read end of a pipe, the terminal descriptor it is copied to), for the supervisor.
    relays: Vec<(OwnedFd, RawFd)>,
}

/// Whether `fd` is a terminal.
fn is_terminal(fd: RawFd) -> bool {
    // SAFETY: 0, 1 and 2 stay open for the life of the process (the jailer never closes
    // them); the borrow does not outlive this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    nix::unistd::isatty(fd).unwrap_or(false)
}

/// Plans the replacements: pipes relayed by the supervisor when `relay` (the jailer stays as
/// supervisor), `/dev/null` otherwise.
pub fn plan(relay: bool) -> Result<Terminals, SuperviseError> {
    let mut t = Terminals::default();
    for fd in 0..=2 {
        if !is_terminal(fd) {
            continue;
        }
        if relay && fd != 0 {
            let (read_end, write_end) = pipe()?;
            t.jail.push((fd, write_end));
            t.relays.push((read_end, fd));
        } else {
            let null = File::options()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open("/dev/null")
                .map_err(SuperviseError::DevNull)?;
            t.jail.push((fd, null.into()));
        }
    }
    Ok(t)
}

impl Terminals {
    /// The jail process's part (the supervisor's ends are closed).
    pub fn into_jail_side(self) -> JailTerminals {
        JailTerminals {
            replacements: self.jail,
            stderr: None,
        }
    }

    /// The supervisor's part: copies each pipe to its terminal in a thread of its own (the
    /// jail's ends are closed here, so each copy ends when the VMM's side is closed).
    pub fn start_relays(self) -> Relays {
        drop(self.jail);
        let (done_tx, done) = mpsc::channel();
        let count = self.relays.len();
        for (read_end, terminal) in self.relays {
            let done_tx = done_tx.clone();
            let spawned = std::thread::Builder::new()
                .name("kiln-console".into())
                .spawn(move || {
                    copy(read_end, terminal);
                    let _ = done_tx.send(());
                });
            if spawned.is_err() {
                eprintln!("jailer: warning: cannot start the console relay; output is lost");
            }
        }
        Relays { done, count }
    }
}

/// Writes all of `bytes` to `fd`.
fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(0) => return false,
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
    true
}

/// Copies `from` to the terminal `to` until EOF; once the terminal fails (hung up), reads on
/// and drops what it reads, so the VMM never blocks on a full pipe.
fn copy(from: OwnedFd, to: RawFd) {
    let mut from = File::from(from);
    let mut buf = [0u8; 4096];
    let mut terminal_ok = true;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if terminal_ok {
            // SAFETY: descriptors 1 and 2 stay open for the life of the supervisor; the
            // borrow lasts for this write only.
            let fd = unsafe { BorrowedFd::borrow_raw(to) };
            terminal_ok = write_all(fd, buf.get(..n).unwrap_or_default());
        }
    }
}

/// The supervisor's running copies.
pub struct Relays {
    done: mpsc::Receiver<()>,
    count: usize,
}

impl Relays {
    /// Waits (bounded) until every copy has reached the end of its pipe.
    pub fn drain(self) {
        for _ in 0..self.count {
            if self.done.recv_timeout(DRAIN_TIMEOUT).is_err() {
                return;
            }
        }
    }
}

/// The jail process's replacements, and once they are in place, its own stderr (close on
/// exec) for a failure it has to report itself.
#[derive(Debug, Default)]
pub struct JailTerminals {
    replacements: Vec<(RawFd, OwnedFd)>,
    stderr: Option<OwnedFd>,
}

impl JailTerminals {
    /// Puts the replacements in place (just before seccomp and exec: until then the
    /// jailer's own messages still reach the terminal).
    pub fn detach(&mut self) -> Result<(), SuperviseError> {
        let err = |e: nix::errno::Errno| SuperviseError::Terminal(e.into());
        if self.replacements.iter().any(|(fd, _)| *fd == 2) {
            // SAFETY: descriptor 2 stays open for the life of the process.
            let stderr = unsafe { BorrowedFd::borrow_raw(2) };
            let copy =
                nix::fcntl::fcntl(stderr, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3)).map_err(err)?;
            // SAFETY: `copy` was just returned by fcntl and is owned by nothing else.
            self.stderr = Some(unsafe { std::os::fd::FromRawFd::from_raw_fd(copy) });
        }
        for (target, replacement) in &self.replacements {
            // SAFETY: dup2 onto 0, 1 or 2, which this process owns; the replacement is open
            // for the call. The result is checked.
            let ret = unsafe { libc::dup2(replacement.as_raw_fd(), *target) };
            if ret == -1 {
                return Err(SuperviseError::Terminal(std::io::Error::last_os_error()));
            }
        }
        Ok(())
    }

    /// Writes `text` to the jailer's stderr as the caller gave it (the terminal, even once
    /// it was replaced).
    pub fn write_stderr(&self, text: &str) {
        let fd = match &self.stderr {
            Some(fd) => fd.as_fd(),
            // SAFETY: descriptor 2 stays open for the life of the process.
            None => unsafe { BorrowedFd::borrow_raw(2) },
        };
        write_all(fd, text.as_bytes());
    }
}
