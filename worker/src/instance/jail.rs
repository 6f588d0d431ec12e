//! The host side of one jail: the jailer's supervisor process (and, once the guest said
//! Hello, a pidfd of the VMM inside it), its drained output, the instance's host directory
//! and uid lease; how it is stopped, and the check that nothing is left behind.
//!
//! **Stop.** SIGTERM to the jailer's supervisor (forwarded to the VMM), which removes the
//! jail when the VMM exits; SIGKILL of the VMM (through a pidfd) after a grace period, then of
//! the supervisor. Every path ends with a check that the jail is gone, and if it is not (the
//! supervisor was killed, or its processes are still exiting) with `jailer cleanup`, which
//! waits for them, retried ([`record::remove_jail`]). Only then does the host directory (the
//! instance's record) go and the uid lease end; a jail that still would not go is reported,
//! and its record stays marked for the sweep with its uid still leased ([`record::keep`]).
//!
//! The host directory holds the vsock directory the jail could write to: everything in it
//! is hostile (depth, names, links, sizes). It is removed with the bounded remover
//! (`kiln_hostfs::remove_tree`: constant descriptors and stack, no link followed, never into
//! another mount); what it cannot remove is reported, left for the next sweep, and never
//! stops the worker.

use super::api::{self, ApiError};
use super::config::InstanceConfig;
use super::output::{drain_console, drain_stderr, OutputLogs};
use super::record;
use crate::sys::{self, FileLock, PidFd, Signal, SysError};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long `jailer cleanup` waits for a stopped jail's processes to exit.
const CLEANUP_WAIT: Duration = Duration::from_secs(5);

/// How to stop a jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// SIGTERM first: the VMM stops its vCPUs and exits 0.
    Graceful,
    /// SIGKILL to the VMM at once (a hung or misbehaving guest).
    Kill,
}

/// What stopping found.
#[derive(Debug, Clone, Default)]
pub struct StopReport {
    /// The supervisor's exit status (the VMM's), if it was reaped.
    pub status: Option<ExitStatus>,
    /// Anything that was still there after the jailer's own cleanup (then removed with
    /// `jailer cleanup`); empty when the supervisor cleaned up.
    pub leftovers: Vec<String>,
    /// Problems removing what was left; empty when everything is gone. When the jail itself
    /// is not gone, its record stays for the sweep.
    pub errors: Vec<String>,
}

/// The host side of one jail: the supervisor process, its output, the instance's host
/// directory and uid. Dropping it stops and removes everything.
pub(super) struct Jail {
    id: String,
    cfg: Arc<InstanceConfig>,
    uid: u32,
    /// The uid's lease: given up once the jail is gone (or to the sweep, [`record::keep`]).
    uid_lock: Option<FileLock>,
    host_dir: PathBuf,
    supervisor: Option<Child>,
    supervisor_fd: Option<PidFd>,
    vmm: Option<PidFd>,
    logs: Arc<OutputLogs>,
    report: Option<StopReport>,
}

impl Jail {
    /// A jail to be: nothing runs yet, but dropping it removes `host_dir` and frees the uid.
    pub(super) fn new(
        id: String,
        cfg: Arc<InstanceConfig>,
        uid: u32,
        uid_lock: FileLock,
        host_dir: PathBuf,
    ) -> Jail {
        Jail {
            id,
            cfg,
            uid,
            uid_lock: Some(uid_lock),
            host_dir,
            supervisor: None,
            supervisor_fd: None,
            vmm: None,
            logs: Arc::new(OutputLogs::default()),
            report: None,
        }
    }

    /// Takes the spawned jailer (the supervisor): drains its output and watches it through
    /// a pidfd.
    pub(super) fn attach(&mut self, mut child: Child) -> Result<(), SysError> {
        let pid = i32::try_from(child.id()).unwrap_or(-1);
        if let Some(out) = child.stdout.take() {
            drain_console(out, self.logs.clone());
        }
        if let Some(err) = child.stderr.take() {
            drain_stderr(err, self.logs.clone());
        }
        self.supervisor = Some(child);
        self.supervisor_fd = Some(PidFd::open(pid)?);
        Ok(())
    }

    pub(super) fn id(&self) -> &str {
        &self.id
    }

    pub(super) fn uid(&self) -> u32 {
        self.uid
    }

    pub(super) fn host_dir(&self) -> &Path {
        &self.host_dir
    }

    pub(super) fn logs(&self) -> &OutputLogs {
        &self.logs
    }

    /// The supervisor's pidfd: readable once it has exited.
    pub(super) fn supervisor_fd(&self) -> Option<BorrowedFd<'_>> {
        self.supervisor_fd.as_ref().map(PidFd::as_fd)
    }

    pub(super) fn supervisor_pid(&self) -> Option<i32> {
        self.supervisor
            .as_ref()
            .and_then(|c| i32::try_from(c.id()).ok())
    }

    /// How long a start may take (unless the function says otherwise).
    pub(super) fn start_timeout(&self) -> Duration {
        self.cfg.start_timeout
    }

    /// Largest response (and log frame) accepted from the guest.
    pub(super) fn max_response_bytes(&self) -> u32 {
        self.cfg.max_response_bytes
    }

    /// How long a stopping VMM gets before SIGKILL.
    pub(super) fn stop_grace(&self) -> Duration {
        self.cfg.stop_grace
    }

    pub(super) fn vmm_pid(&self) -> Option<i32> {
        self.vmm.as_ref().map(PidFd::pid)
    }

    /// `<chroot base>/<exec name>/<id>` (its `root/` is the jail's `/`).
    pub(super) fn dir(&self) -> PathBuf {
        record::jail_dir(&self.cfg, &self.id)
    }

    /// The host path of the VMM's API socket (when it serves one).
    pub(super) fn api_socket(&self) -> PathBuf {
        self.dir()
            .join("root")
            .join(api::JAIL_API_SOCK.trim_start_matches('/'))
    }

    /// Waits until the VMM's API socket accepts connections (see [`api::wait_up`]); returns
    /// the first connection.
    pub(super) fn wait_api(
        &mut self,
        started: Instant,
        deadline: Instant,
    ) -> Result<std::os::unix::net::UnixStream, ApiError> {
        let sock = self.api_socket();
        api::wait_up(&sock, started, deadline, || self.supervisor_exited())
    }

    pub(super) fn supervisor_exited(&mut self) -> bool {
        match self.supervisor.as_mut().map(Child::try_wait) {
            Some(Ok(Some(_))) | None => true,
            Some(Ok(None)) => false,
            Some(Err(_)) => true,
        }
    }

    pub(super) fn wait_supervisor(&self, timeout: Duration) -> bool {
        match &self.supervisor_fd {
            Some(fd) => fd.wait_exit(timeout).unwrap_or(true),
            None => true,
        }
    }

    /// The VMM's host pid, from the jail's pid file.
    pub(super) fn open_vmm_pidfd(&mut self) {
        let pid_file = self
            .dir()
            .join("root")
            .join(format!("{}.pid", self.cfg.exec_name()));
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
            .filter(|&p| p > 1);
        self.vmm = pid
            .and_then(|p| PidFd::open(p).ok())
            .filter(|fd| self.is_this_jails_vmm(fd));
    }

    /// Whether the process behind `fd` is this jail's VMM: its command line has `--id <id>`,
    /// read while the pidfd shows the process alive, so that a pid recycled after the VMM
    /// died (a host's `pid_max` may be 32768) is never taken for it and signalled later.
    fn is_this_jails_vmm(&self, fd: &PidFd) -> bool {
        let Ok(cmdline) = std::fs::read(format!("/proc/{}/cmdline", fd.pid())) else {
            return false;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let named = args
            .windows(2)
            .any(|w| w[0] == b"--id" && w[1] == self.id.as_bytes());
        named && matches!(fd.wait_exit(Duration::ZERO), Ok(false))
    }

    fn signal_supervisor(&self, signal: Signal) {
        if let Some(c) = &self.supervisor {
            if let Ok(pid) = i32::try_from(c.id()) {
                // Not reaped yet, so the pid is still the supervisor's.
                let _ = sys::kill(pid, signal);
            }
        }
    }

    /// Stops the VMM (as `mode` says), reaps the supervisor and makes sure the jail, its
    /// network namespace and the host directory are gone. Once: later calls return the
    /// first report.
    pub(super) fn stop(&mut self, mode: StopMode) -> StopReport {
        if let Some(r) = &self.report {
            return r.clone();
        }
        let grace = self.cfg.stop_grace;
        let mut report = StopReport::default();
        if !self.supervisor_exited() {
            match (mode, &self.vmm) {
                (StopMode::Kill, Some(vmm)) => {
                    let _ = vmm.signal(Signal::SIGKILL);
                }
                _ => self.signal_supervisor(Signal::SIGTERM),
            }
            if !self.wait_supervisor(grace) {
                if let Some(vmm) = &self.vmm {
                    let _ = vmm.signal(Signal::SIGKILL);
                }
                if !self.wait_supervisor(grace) {
                    report
                        .errors
                        .push("the jailer's supervisor did not exit; killed".into());
                    self.signal_supervisor(Signal::SIGKILL);
                }
            }
        }
        if let Some(mut c) = self.supervisor.take() {
            report.status = c.wait().ok();
        }
        // The supervisor removes the jail when the VMM exits; check, and finish its work if
        // it could not. The record goes only once the jail has.
        match record::remove_jail(&self.cfg, &self.id, CLEANUP_WAIT) {
            Ok(found) => {
                report.leftovers = found;
                if let Err(e) = kiln_hostfs::remove_tree(&self.host_dir) {
                    report.errors.push(format!(
                        "cannot remove the instance directory (left for the next sweep): {e}"
                    ));
                    record::keep(&self.host_dir, &self.id, None);
                }
                self.uid_lock = None;
            }
            Err(e) => {
                report.leftovers = vec![self.dir().display().to_string()];
                report
                    .errors
                    .push(format!("{e}; its record stays for the sweep"));
                record::keep(&self.host_dir, &self.id, self.uid_lock.take());
            }
        }
        for e in &report.errors {
            eprintln!("kiln: instance {}: {e}", self.id);
        }
        self.report = Some(report.clone());
        report
    }

    /// Why the VMM stopped, from its exit status and last words.
    pub(super) fn exit_message(&mut self) -> String {
        let status = match self.supervisor.as_mut().map(Child::try_wait) {
            Some(Ok(Some(s))) => Some(s),
            _ => self.report.as_ref().and_then(|r| r.status),
        };
        let word = self.logs.last_word();
        let mut message = match (word, status) {
            (Some(w), _) => w,
            (None, Some(s)) => format!("the VMM exited ({s})"),
            (None, None) => "the VMM closed the guest's stream".into(),
        };
        let console = self.logs.console();
        if let Some(line) = console.lines().rev().find(|l| !l.trim().is_empty()) {
            // Guest-controlled text: printable characters only, bounded.
            let line: String = line
                .trim()
                .chars()
                .take(200)
                .map(|c| if c.is_control() { '?' } else { c })
                .collect();
            message.push_str(&format!("; the guest's console last said: {line}"));
        }
        message
    }

    /// The supervisor's exit code (the VMM's, which the supervisor passes on), once it
    /// exited.
    pub(super) fn exit_code(&mut self) -> Option<i32> {
        match self.supervisor.as_mut().map(Child::try_wait) {
            Some(Ok(Some(s))) => s.code(),
            _ => self.report.as_ref().and_then(|r| r.status?.code()),
        }
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        if self.report.is_none() {
            self.stop(StopMode::Kill);
        }
    }
}
