//! One function instance: a jailed microVM running one function's image, and the vsock
//! stream to its guest.
//!
//! **Start.** A private host directory `<state>/instances/<id>/` (root, 0700) gets the
//! instance's own copy of the image, its VM config, its tenant profile (the default one with
//! the memory limit from the manifest), and `vsock/` (owned by the instance's uid) where the
//! worker already listens on `v.sock_1024` before anything starts. The jailer
//! (`--cleanup-on-exit --new-pid-ns --new-netns`, a unique `--id` and uid) binds the image
//! and config read-only and `vsock/` read-write into the jail, and execs the VMM; the VMM's
//! vsock device forwards the guest's connection to port 1024 (`/vsock/v.sock_1024` in the
//! jail) to the worker's listener. The instance is ready when the guest's `Hello` names the
//! function.
//!
//! **Invoke.** `Invoke` with the event, then frames until the `Response` or `Error` with the
//! same id, all within the function's timeout. A timeout, a crash, a protocol violation or a
//! panic marks the instance broken: the pool stops it instead of reusing it.
//!
//! **Stop.** SIGTERM to the jailer's supervisor (forwarded to the VMM), which removes the
//! jail when the VMM exits; SIGKILL of the VMM (through a pidfd) after a grace period, then of
//! the supervisor, and `jailer cleanup` if anything is still there. Every path ends with a
//! check that the jail directory, the network namespace and the host directory are gone.

use crate::channel::{Channel, ChannelError};
use crate::function::Function;
use crate::sync::lock;
use crate::sys::{self, FileLock, PidFd, SysError};
use crate::timing::{parse_boot_mark, BootMark, StartTimings};
use kiln_guest_builder::Kind as FunctionKind;
use kiln_protocol::{decode_error, ErrorCode, Kind, GUEST_CONNECT_PORT};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The guest's CID (any value ≥ 3: each VMM has its own vsock device).
const GUEST_CID: u32 = 3;
/// Where the vsock directory is bound inside the jail, and the VMM's socket in it.
const JAIL_VSOCK_DIR: &str = "/vsock";
const VSOCK_NAME: &str = "v.sock";
/// Where the image and the config are bound inside the jail.
const JAIL_IMAGE: &str = "/function.elf";
const JAIL_CONFIG: &str = "/vm.json";
/// Where a Linux function's initramfs is bound inside the jail (its kernel is at
/// [`JAIL_IMAGE`]).
const JAIL_INITRD: &str = "/initrd.cpio";
/// What the guest kernel prints when it starts /init, and what it prints when /init dies.
const RUN_INIT_MARK: &str = "Run /init";
const INIT_FAULT_MARKS: &[&str] = &["Attempted to kill init", "segfault at", "traps: init"];
/// On a host where guest user space cannot run: how long after `Run /init` the worker still
/// waits for the guest's connection before it gives up (init normally faults at once).
const PVM_INIT_GRACE: Duration = Duration::from_secs(20);
/// How much of the VMM's stderr and of the guest's console is kept for error messages.
const TAIL_BYTES: usize = 16 * 1024;
/// How many bytes of `Log` frames one invocation keeps.
pub const MAX_LOG_BYTES: usize = 64 * 1024;
/// Longest line of the VMM's stderr looked at for boot marks.
const MAX_LINE: usize = 4096;
/// Unix socket paths hold at most 107 bytes.
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("no free uid in [{base}, {end}): every one is used by a running instance (--uid-base, --uid-count)")]
    NoFreeUid { base: u32, end: u32 },
    #[error("cannot lock uid {uid}: {source}")]
    UidLock { uid: u32, source: SysError },
    #[error("cannot prepare the instance directory {path}: {source}")]
    HostDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the vsock socket path {0} is longer than {MAX_SOCKET_PATH} bytes: use a shorter --state-dir")]
    SocketPathTooLong(PathBuf),
    #[error("tenant profile {path}: {message}")]
    Profile { path: PathBuf, message: String },
    #[error("cannot start the jailer {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot watch the jailer process: {0}")]
    Watch(SysError),
    #[error("the microVM stopped before its guest was ready: {0}")]
    Exited(String),
    #[error("the guest was not ready within {} ms{}", .after.as_millis(), tail_suffix(.detail))]
    StartTimeout { after: Duration, detail: String },
    #[error("the guest's hello failed: {0}")]
    Hello(String),
    #[error("the worker is shutting down")]
    ShuttingDown,
    #[error("Linux functions need a guest kernel: {path} does not exist (build it with scripts/assets.sh, or use --kernel PATH)")]
    NoKernel { path: PathBuf },
    #[error("guest user space cannot run on this host (its KVM is kvm_pvm, /sys/module/kvm_pvm: guest ring 3 code faults at its first syscall): the guest kernel reached `Run /init` and then {detail}; Linux functions need a host with hardware virtualization (VMX/SVM)")]
    UserSpaceUnsupported { detail: String },
}

fn tail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    }
}

impl InstanceError {
    pub fn code(&self) -> &'static str {
        match self {
            InstanceError::NoFreeUid { .. } => "no_capacity",
            InstanceError::Exited(_) => "start_failed",
            InstanceError::StartTimeout { .. } => "start_timeout",
            InstanceError::Hello(_) => "start_failed",
            InstanceError::ShuttingDown => "shutting_down",
            InstanceError::UserSpaceUnsupported { .. } => "host_unsupported",
            InstanceError::NoKernel { .. } => "no_kernel",
            _ => "start_failed",
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            InstanceError::NoFreeUid { .. } | InstanceError::ShuttingDown => 503,
            InstanceError::UserSpaceUnsupported { .. } => 501,
            _ => 500,
        }
    }
}

/// Why an invocation failed.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The guest answered with an `Error` frame.
    #[error("{}", function_failure(*.code, .message))]
    Function { code: ErrorCode, message: String },
    #[error("function {function:?} did not answer within {} ms; its microVM was killed", .after.as_millis())]
    Timeout { function: String, after: Duration },
    #[error("the microVM stopped during the invocation: {0}")]
    VmExited(String),
    #[error("the microVM stopped during the invocation: {0}")]
    IoViolation(String),
    #[error("the function's response is over the limit of {max} bytes ({len} bytes announced); its microVM was stopped")]
    ResponseTooLarge { len: u32, max: u32 },
    #[error("the guest broke the invocation protocol: {0}; its microVM was stopped")]
    Protocol(String),
}

fn function_failure(code: ErrorCode, message: &str) -> String {
    match code {
        ErrorCode::Handler => format!("the handler failed: {message}"),
        ErrorCode::Panic => format!("the function panicked: {message}; its microVM was stopped"),
        ErrorCode::EventTooLarge => format!("the guest refused the event: {message}"),
        ErrorCode::OutOfMemory => {
            format!("the function ran out of memory: {message}; its microVM was stopped")
        }
        ErrorCode::Protocol => {
            format!("the guest reported a protocol error: {message}; its microVM was stopped")
        }
    }
}

impl InvokeError {
    pub fn code(&self) -> &'static str {
        match self {
            InvokeError::Function { code, .. } => code.as_str(),
            InvokeError::Timeout { .. } => "timeout",
            InvokeError::VmExited(_) => "vm_exited",
            InvokeError::IoViolation(_) => "io_violation",
            InvokeError::ResponseTooLarge { .. } => "response_too_large",
            InvokeError::Protocol(_) => "protocol_error",
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            InvokeError::Function {
                code: ErrorCode::EventTooLarge,
                ..
            } => 413,
            InvokeError::Timeout { .. } => 504,
            _ => 502,
        }
    }
}

/// How instances are jailed, shared by all of them.
#[derive(Debug, Clone)]
pub struct InstanceConfig {
    pub jailer: PathBuf,
    pub vmm: PathBuf,
    pub chroot_base: PathBuf,
    /// `instances/<id>/` and `uids/<uid>.lock` live here.
    pub state_dir: PathBuf,
    /// The tenant profile every instance starts from.
    pub profile_path: PathBuf,
    pub profile: serde_json::Value,
    /// Instances run as uid = gid in `[uid_base, uid_base + uid_count)`, one uid each.
    pub uid_base: u32,
    pub uid_count: u32,
    /// `--parent-cgroup` (nested under the worker's own cgroup).
    pub parent_cgroup: String,
    /// Added to the guest memory for the jail's memory limit (VMM, page tables).
    pub memory_overhead_mib: u32,
    pub start_timeout: Duration,
    /// The guest kernel (an ELF vmlinux) of Linux functions.
    pub kernel: PathBuf,
    /// How long a stopping VMM gets before SIGKILL.
    pub stop_grace: Duration,
    /// `vmm --strict-io`: unknown port/MMIO accesses stop the VM.
    pub strict_io: bool,
    /// Largest response (and log frame) accepted from a guest.
    pub max_response_bytes: u32,
    /// More VMM flags (`--vmm-arg`, for diagnosis: `--level=Debug`, ...).
    pub vmm_args: Vec<String>,
}

impl InstanceConfig {
    /// Reads and checks the tenant profile (a JSON object; the jailer validates the rest).
    pub fn load_profile(path: &Path) -> Result<serde_json::Value, InstanceError> {
        let bad = |message: String| InstanceError::Profile {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        if !v.is_object() {
            return Err(bad("not a JSON object".into()));
        }
        Ok(v)
    }

    fn exec_name(&self) -> String {
        self.vmm
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "vmm".into())
    }
}

/// A bounded tail of a byte stream.
#[derive(Default)]
struct Tail {
    buf: Vec<u8>,
}

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > 2 * TAIL_BYTES {
            let cut = self.buf.len() - TAIL_BYTES;
            self.buf.drain(..cut);
        }
    }

    fn text(&self) -> String {
        let start = self.buf.len().saturating_sub(TAIL_BYTES);
        String::from_utf8_lossy(self.buf.get(start..).unwrap_or_default()).into_owned()
    }
}

/// What the jailer, the VMM and the guest's console print, kept bounded.
#[derive(Default)]
pub struct OutputLogs {
    stderr: Mutex<Tail>,
    console: Mutex<Tail>,
    marks: Mutex<Vec<BootMark>>,
    /// When the worker saw the guest kernel print [`RUN_INIT_MARK`].
    init_started: Mutex<Option<Instant>>,
    /// After that, one of [`INIT_FAULT_MARKS`]: the line.
    init_fault: Mutex<Option<String>>,
}

impl OutputLogs {
    pub fn stderr(&self) -> String {
        lock(&self.stderr).text()
    }

    pub fn console(&self) -> String {
        lock(&self.console).text()
    }

    /// Looks for the kernel's `Run /init` and init's fault in the lines that the console's
    /// newest `n` bytes end or continue (lines of up to [`LINE_LOOKBACK`] bytes are seen whole
    /// however the reads split them).
    fn watch_init(&self, n: usize) {
        const LINE_LOOKBACK: usize = 1024;
        if lock(&self.init_fault).is_some() {
            return;
        }
        let recent = {
            let console = lock(&self.console);
            let start = console.buf.len().saturating_sub(n + LINE_LOOKBACK);
            let mut window = console.buf.get(start..).unwrap_or_default();
            if start > 0 {
                // From the first whole line on.
                let skip = window.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
                window = window.get(skip..).unwrap_or_default();
            }
            String::from_utf8_lossy(window).into_owned()
        };
        let mut started = lock(&self.init_started);
        let after = match recent.find(RUN_INIT_MARK) {
            Some(at) => {
                started.get_or_insert_with(Instant::now);
                recent.get(at..).unwrap_or_default()
            }
            None if started.is_some() => recent.as_str(),
            None => return,
        };
        // Whole lines only: a line still being printed is looked at again on the next read.
        if let Some(line) = after
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .find(|l| INIT_FAULT_MARKS.iter().any(|m| l.contains(m)))
        {
            *lock(&self.init_fault) = Some(line.trim().to_string());
        }
    }

    /// The last line of the VMM's or the jailer's stderr saying why it stopped.
    pub fn last_word(&self) -> Option<String> {
        let text = self.stderr();
        text.lines()
            .rev()
            .find(|l| l.starts_with("vmm: ") || l.starts_with("jailer: ") || l.contains("error"))
            .map(str::to_string)
    }
}

fn drain_stderr(mut r: impl Read + Send + 'static, logs: Arc<OutputLogs>) {
    let _ = std::thread::Builder::new()
        .name("kiln-stderr".into())
        .spawn(move || {
            let mut chunk = [0u8; 4096];
            let mut line: Vec<u8> = Vec::new();
            loop {
                let n = match r.read(&mut chunk) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                let arrived = Instant::now();
                let data = chunk.get(..n).unwrap_or_default();
                lock(&logs.stderr).push(data);
                for &b in data {
                    if b == b'\n' {
                        if let Some(m) = parse_boot_mark(&String::from_utf8_lossy(&line), arrived) {
                            lock(&logs.marks).push(m);
                        }
                        line.clear();
                    } else if line.len() < MAX_LINE {
                        line.push(b);
                    }
                }
            }
        });
}

fn drain_console(mut r: impl Read + Send + 'static, logs: Arc<OutputLogs>) {
    let _ = std::thread::Builder::new()
        .name("kiln-console".into())
        .spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match r.read(&mut chunk) {
                    Ok(0) => return,
                    Ok(n) => {
                        lock(&logs.console).push(chunk.get(..n).unwrap_or_default());
                        logs.watch_init(n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        });
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Every jailer is spawned by one long-lived thread: the jailer gets SIGTERM when the thread
/// that forked it dies (PR_SET_PDEATHSIG), which then means "when the worker dies".
fn spawn_from_worker_thread(cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let spawned = std::thread::Builder::new()
            .name("kiln-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            });
        if let Err(e) = spawned {
            eprintln!("kiln: cannot start the spawner thread: {e}");
        }
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    lock(tx)
        .send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
}

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
    /// Problems removing what was left; empty when everything is gone.
    pub errors: Vec<String>,
}

/// The host side of one jail: the supervisor process, its output, the instance's host
/// directory and uid. Dropping it stops and removes everything.
struct Jail {
    id: String,
    cfg: Arc<InstanceConfig>,
    uid: u32,
    _uid_lock: FileLock,
    host_dir: PathBuf,
    supervisor: Option<Child>,
    supervisor_fd: Option<PidFd>,
    vmm: Option<PidFd>,
    logs: Arc<OutputLogs>,
    report: Option<StopReport>,
}

impl Jail {
    fn jail_dir(&self) -> PathBuf {
        self.cfg
            .chroot_base
            .join(self.cfg.exec_name())
            .join(&self.id)
    }

    fn netns(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.id)
    }

    fn supervisor_exited(&mut self) -> bool {
        match self.supervisor.as_mut().map(Child::try_wait) {
            Some(Ok(Some(_))) | None => true,
            Some(Ok(None)) => false,
            Some(Err(_)) => true,
        }
    }

    fn wait_supervisor(&self, timeout: Duration) -> bool {
        match &self.supervisor_fd {
            Some(fd) => fd.wait_exit(timeout).unwrap_or(true),
            None => true,
        }
    }

    /// The VMM's host pid, from the jail's pid file.
    fn open_vmm_pidfd(&mut self) {
        let pid_file = self
            .jail_dir()
            .join("root")
            .join(format!("{}.pid", self.cfg.exec_name()));
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
            .filter(|&p| p > 1);
        self.vmm = pid.and_then(|p| PidFd::open(p).ok());
    }

    fn signal_supervisor(&self, signal: i32) {
        if let Some(c) = &self.supervisor {
            if let Ok(pid) = i32::try_from(c.id()) {
                // Not reaped yet, so the pid is still the supervisor's.
                let _ = sys::kill(pid, signal);
            }
        }
    }

    fn stop(&mut self, mode: StopMode) -> StopReport {
        if let Some(r) = &self.report {
            return r.clone();
        }
        let grace = self.cfg.stop_grace;
        let mut report = StopReport::default();
        if !self.supervisor_exited() {
            match (mode, &self.vmm) {
                (StopMode::Kill, Some(vmm)) => {
                    let _ = vmm.signal(libc::SIGKILL);
                }
                _ => self.signal_supervisor(libc::SIGTERM),
            }
            if !self.wait_supervisor(grace) {
                if let Some(vmm) = &self.vmm {
                    let _ = vmm.signal(libc::SIGKILL);
                }
                if !self.wait_supervisor(grace) {
                    report
                        .errors
                        .push("the jailer's supervisor did not exit; killed".into());
                    self.signal_supervisor(libc::SIGKILL);
                }
            }
        }
        if let Some(mut c) = self.supervisor.take() {
            report.status = c.wait().ok();
        }
        // The supervisor removes the jail when the VMM exits; check, and finish its work if
        // it could not.
        let leftovers = |j: &Jail| {
            let mut l = Vec::new();
            let dir = j.jail_dir();
            if dir.exists() {
                l.push(dir.display().to_string());
            }
            let ns = j.netns();
            if ns.exists() {
                l.push(ns.display().to_string());
            }
            l
        };
        report.leftovers = leftovers(self);
        if !report.leftovers.is_empty() {
            self.jailer_cleanup(&mut report);
            let still = leftovers(self);
            if !still.is_empty() {
                report.errors.push(format!(
                    "still there after jailer cleanup: {}",
                    still.join(", ")
                ));
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.host_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                report.errors.push(format!(
                    "cannot remove the instance directory {}: {e}",
                    self.host_dir.display()
                ));
            }
        }
        for e in &report.errors {
            eprintln!("kiln: instance {}: {e}", self.id);
        }
        self.report = Some(report.clone());
        report
    }

    fn jailer_cleanup(&self, report: &mut StopReport) {
        if let Err(e) = jailer_cleanup(&self.cfg, &self.id) {
            report.errors.push(e);
        }
    }

    /// Why the VMM stopped, from its exit status and last words.
    fn exit_message(&mut self) -> String {
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

    fn exit_code(&mut self) -> Option<i32> {
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

/// The result of one invocation.
#[derive(Debug)]
pub struct Output {
    pub body: Vec<u8>,
    /// `Log` frames received during the invocation (at most [`MAX_LOG_BYTES`]).
    pub logs: Vec<u8>,
    pub logs_dropped: u64,
    pub handler: Duration,
}

/// A running instance, ready for invocations.
pub struct Instance {
    jail: Jail,
    function: Arc<Function>,
    channel: Channel,
    next_invocation: u32,
    invocations: u64,
    /// The phases of its start.
    pub started: StartTimings,
    pub last_used: Instant,
    /// Why it must not be reused, if it must not.
    broken: Option<String>,
}

/// A snapshot for listings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceInfo {
    pub id: String,
    pub function: String,
    pub uid: u32,
    pub vmm_pid: Option<i32>,
    pub invocations: u64,
    pub state: &'static str,
    pub idle_ms: Option<u64>,
}

static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

/// `<function>-<n>-<worker pid>`, at most 64 characters from [A-Za-z0-9-].
fn instance_id(function: &str, n: u64) -> String {
    let suffix = format!("-{n}-{}", sys::getpid());
    let room = 64usize.saturating_sub(suffix.len());
    let name: String = function
        .chars()
        .take(room)
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("{name}{suffix}")
}

fn lease_uid(cfg: &InstanceConfig, n: u64) -> Result<(u32, FileLock), InstanceError> {
    let dir = cfg.state_dir.join("uids");
    std::fs::create_dir_all(&dir).map_err(|source| InstanceError::HostDir {
        path: dir.clone(),
        source,
    })?;
    let count = cfg.uid_count.max(1);
    let first = u32::try_from(n % u64::from(count)).unwrap_or(0);
    for i in 0..count {
        let uid = cfg.uid_base.saturating_add((first + i) % count);
        let path = dir.join(format!("{uid}.lock"));
        match FileLock::acquire(&path, false) {
            Ok(Some(l)) => return Ok((uid, l)),
            Ok(None) => continue,
            Err(source) => return Err(InstanceError::UidLock { uid, source }),
        }
    }
    Err(InstanceError::NoFreeUid {
        base: cfg.uid_base,
        end: cfg.uid_base.saturating_add(count),
    })
}

fn write_private(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)
}

impl Instance {
    /// Starts a jailed microVM for `function` and waits for its guest's `Hello`.
    pub fn start(
        cfg: &Arc<InstanceConfig>,
        function: &Arc<Function>,
    ) -> Result<Instance, InstanceError> {
        let spawned = Instant::now();
        let n = NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed);
        let id = instance_id(&function.name, n);
        let (uid, uid_lock) = lease_uid(cfg, n)?;
        let host_dir = cfg.state_dir.join("instances").join(&id);
        let mut jail = Jail {
            id: id.clone(),
            cfg: cfg.clone(),
            uid,
            _uid_lock: uid_lock,
            host_dir: host_dir.clone(),
            supervisor: None,
            supervisor_fd: None,
            vmm: None,
            logs: Arc::new(OutputLogs::default()),
            report: None,
        };
        let linux = function.kind == FunctionKind::Linux;
        if linux && !cfg.kernel.is_file() {
            return Err(InstanceError::NoKernel {
                path: cfg.kernel.clone(),
            });
        }
        let listener = prepare_host_dir(cfg, function, &host_dir, uid)?;

        let mut cmd = Command::new(&cfg.jailer);
        let vsock_dir = host_dir.join("vsock");
        cmd.arg("--id")
            .arg(&id)
            .arg("--exec-file")
            .arg(&cfg.vmm)
            .arg("--uid")
            .arg(uid.to_string())
            .arg("--gid")
            .arg(uid.to_string())
            .arg("--chroot-base-dir")
            .arg(&cfg.chroot_base)
            .args(["--new-pid-ns", "--new-netns", "--cleanup-on-exit"])
            .arg("--parent-cgroup-relative")
            .arg("--parent-cgroup")
            .arg(&cfg.parent_cgroup)
            .arg("--profile")
            .arg(host_dir.join("profile.json"))
            .arg("--bind-ro");
        if linux {
            // The kernel is shared (read-only, the same for every tenant); the initramfs
            // with the function's code is the instance's own copy.
            cmd.arg(bind(&cfg.kernel, JAIL_IMAGE))
                .arg("--bind-ro")
                .arg(bind(&host_dir.join(PRIVATE_INITRD), JAIL_INITRD));
        } else {
            cmd.arg(bind(&host_dir.join(PRIVATE_IMAGE), JAIL_IMAGE));
        }
        cmd.arg("--bind-ro")
            .arg(bind(&host_dir.join("vm.json"), JAIL_CONFIG))
            .arg("--bind-rw")
            .arg(bind(&vsock_dir, JAIL_VSOCK_DIR))
            .arg("--")
            .args(["--config-file", JAIL_CONFIG, "--no-api", "--boot-timer"]);
        if cfg.strict_io {
            cmd.arg("--strict-io");
        }
        cmd.args(&cfg.vmm_args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a terminal's Ctrl-C reaches the worker only, which
            // then stops every instance in order.
            .process_group(0);
        let parent = sys::getpid();
        // SAFETY: the closure only makes async-signal-safe calls (see child_pre_exec) and
        // touches no memory shared with other threads.
        unsafe {
            cmd.pre_exec(move || sys::child_pre_exec(parent));
        }
        let mut child = spawn_from_worker_thread(cmd).map_err(|source| InstanceError::Spawn {
            path: cfg.jailer.clone(),
            source,
        })?;
        let pid = i32::try_from(child.id()).unwrap_or(-1);
        if let Some(out) = child.stdout.take() {
            drain_console(out, jail.logs.clone());
        }
        if let Some(err) = child.stderr.take() {
            drain_stderr(err, jail.logs.clone());
        }
        jail.supervisor = Some(child);
        jail.supervisor_fd = Some(PidFd::open(pid).map_err(InstanceError::Watch)?);

        let start_timeout = function.hello_timeout.unwrap_or(cfg.start_timeout);
        let deadline = spawned + start_timeout;
        let watch_init = linux && is_pvm_host();
        let stream = wait_for_guest(&mut jail, &listener, deadline, start_timeout, watch_init)?;
        drop(listener);
        let mut channel = Channel::new(stream, cfg.max_response_bytes);
        let hello = loop {
            let frame = channel.read_frame(deadline).map_err(|e| match e {
                ChannelError::Timeout => InstanceError::StartTimeout {
                    after: start_timeout,
                    detail: "the guest connected but sent no Hello".into(),
                },
                ChannelError::Closed => InstanceError::Exited(jail.exit_message()),
                other => InstanceError::Hello(other.to_string()),
            })?;
            match frame.header.kind {
                Kind::Log => continue,
                Kind::Hello => break frame.payload,
                other => {
                    return Err(InstanceError::Hello(format!(
                        "the guest's first frame is {other:?}, not Hello"
                    )))
                }
            }
        };
        let hello_at = Instant::now();
        if hello != function.name.as_bytes() {
            return Err(InstanceError::Hello(format!(
                "the guest says it runs {:?}, not {:?}",
                String::from_utf8_lossy(&hello),
                function.name
            )));
        }
        jail.open_vmm_pidfd();
        let marks = lock(&jail.logs.marks).clone();
        Ok(Instance {
            jail,
            function: function.clone(),
            channel,
            next_invocation: 1,
            invocations: 0,
            started: StartTimings::from_marks(spawned, hello_at, &marks),
            last_used: Instant::now(),
            broken: None,
        })
    }

    pub fn id(&self) -> &str {
        &self.jail.id
    }

    pub fn function(&self) -> &Arc<Function> {
        &self.function
    }

    pub fn uid(&self) -> u32 {
        self.jail.uid
    }

    pub fn vmm_pid(&self) -> Option<i32> {
        self.jail.vmm.as_ref().map(PidFd::pid)
    }

    pub fn supervisor_pid(&self) -> Option<i32> {
        self.jail
            .supervisor
            .as_ref()
            .and_then(|c| i32::try_from(c.id()).ok())
    }

    pub fn invocations(&self) -> u64 {
        self.invocations
    }

    /// Why it must not serve again, if so.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    pub fn info(&self, state: &'static str) -> InstanceInfo {
        InstanceInfo {
            id: self.id().to_string(),
            function: self.function.name.clone(),
            uid: self.uid(),
            vmm_pid: self.vmm_pid(),
            invocations: self.invocations,
            state,
            idle_ms: (state == "idle")
                .then(|| u64::try_from(self.last_used.elapsed().as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// Whether it can still serve: not broken, its VMM running and its stream open.
    pub fn is_healthy(&mut self) -> bool {
        if self.broken.is_some() {
            return false;
        }
        if self.jail.supervisor_exited() {
            self.broken = Some(self.jail.exit_message());
            return false;
        }
        match sys::peer_closed(std::os::fd::AsFd::as_fd(&self.channel)) {
            Ok(false) => true,
            _ => {
                self.broken = Some("the guest closed its stream".into());
                false
            }
        }
    }

    /// Runs the handler on `event`.
    pub fn invoke(&mut self, event: &[u8]) -> Result<Output, InvokeError> {
        let started = Instant::now();
        let deadline = started + self.function.timeout;
        let id = self.next_invocation;
        self.next_invocation = self.next_invocation.wrapping_add(1).max(1);
        self.invocations += 1;
        let mut logs = Vec::new();
        let mut logs_dropped = 0u64;
        let result = self
            .channel
            .send(Kind::Invoke, id, event, deadline)
            .and_then(|()| loop {
                let f = self.channel.read_frame(deadline)?;
                match (f.header.kind, f.header.id == id) {
                    (Kind::Log, _) => {
                        let room = MAX_LOG_BYTES.saturating_sub(logs.len());
                        let take = room.min(f.payload.len());
                        logs.extend_from_slice(f.payload.get(..take).unwrap_or_default());
                        logs_dropped += u64::try_from(f.payload.len() - take).unwrap_or(0);
                    }
                    (Kind::Response, true) => break Ok(Ok(f.payload)),
                    (Kind::Error, true) => {
                        let (code, message) = decode_error(&f.payload);
                        break Ok(Err((code, message.to_string())));
                    }
                    (kind, _) => {
                        break Ok(Err((
                            ErrorCode::Protocol,
                            format!("unexpected {kind:?} frame for invocation {}", f.header.id),
                        )))
                    }
                }
            });
        let handler = started.elapsed();
        self.last_used = Instant::now();
        match result {
            Ok(Ok(body)) => Ok(Output {
                body,
                logs,
                logs_dropped,
                handler,
            }),
            Ok(Err((code, message))) => {
                // The guest's own verdict. A handler error leaves the VM usable; a panic, an
                // allocation failure or a protocol problem does not.
                if code != ErrorCode::Handler && code != ErrorCode::EventTooLarge {
                    self.broken = Some(format!("{}: {message}", code.as_str()));
                }
                Err(InvokeError::Function { code, message })
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Marks the instance broken after a channel failure, stops it, and says why.
    fn fail(&mut self, e: ChannelError) -> InvokeError {
        let err = match e {
            ChannelError::Timeout => {
                self.broken = Some("timed out".into());
                self.jail.stop(StopMode::Kill);
                return InvokeError::Timeout {
                    function: self.function.name.clone(),
                    after: self.function.timeout,
                };
            }
            ChannelError::BadHeader(kiln_protocol::HeaderError::TooLong { len, max }) => {
                InvokeError::ResponseTooLarge { len, max }
            }
            ChannelError::BadHeader(h) => InvokeError::Protocol(h.to_string()),
            ChannelError::Closed | ChannelError::Io(_) => {
                // The VMM is gone or going: let the supervisor finish (it removes the jail),
                // then report the VMM's last words.
                self.jail.wait_supervisor(self.jail.cfg.stop_grace);
                let message = self.jail.exit_message();
                self.broken = Some(message.clone());
                let code = self.jail.exit_code();
                self.jail.stop(StopMode::Kill);
                return if code == Some(vmm::exit::code::STRICT_IO) {
                    InvokeError::IoViolation(message)
                } else {
                    InvokeError::VmExited(message)
                };
            }
        };
        self.broken = Some(err.to_string());
        self.jail.stop(StopMode::Kill);
        err
    }

    /// Stops the VM and removes its jail (graceful unless it is broken).
    pub fn stop(mut self) -> StopReport {
        let mode = if self.broken.is_some() {
            StopMode::Kill
        } else {
            StopMode::Graceful
        };
        self.jail.stop(mode)
    }

    /// What the guest printed on its console (the last 16 KiB).
    pub fn console(&self) -> String {
        self.jail.logs.console()
    }
}

/// `jailer cleanup` for jail `id`: removes what the journal records once its processes
/// are gone.
fn jailer_cleanup(cfg: &InstanceConfig, id: &str) -> Result<(), String> {
    let out = Command::new(&cfg.jailer)
        .arg("cleanup")
        .arg("--id")
        .arg(id)
        .arg("--exec-file")
        .arg(&cfg.vmm)
        .arg("--chroot-base-dir")
        .arg(&cfg.chroot_base)
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "jailer cleanup --id {id} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run jailer cleanup: {e}")),
    }
}

/// Removes what instances of workers that died (SIGKILL, power loss) left behind: their
/// jails (with `jailer cleanup`, which refuses while a jail's processes live) and their
/// host directories. An instance directory is stale when the worker pid in its id is gone.
pub fn sweep_stale(cfg: &InstanceConfig) {
    let dir = cfg.state_dir.join("instances");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = id.rsplit('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid == sys::getpid() || Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        let jail_dir = cfg.chroot_base.join(cfg.exec_name()).join(&id);
        if jail_dir.exists() || Path::new("/run/netns").join(&id).exists() {
            if let Err(msg) = jailer_cleanup(cfg, &id) {
                eprintln!("kiln: stale instance {id}: {msg}");
                continue;
            }
        }
        match std::fs::remove_dir_all(e.path()) {
            Ok(()) => eprintln!(
                "kiln: removed the stale instance directory {}",
                e.path().display()
            ),
            Err(err) => eprintln!("kiln: cannot remove {}: {err}", e.path().display()),
        }
    }
}

fn bind(host: &Path, jail: &str) -> std::ffi::OsString {
    let mut s = host.as_os_str().to_os_string();
    s.push(":");
    s.push(jail);
    s
}

/// Creates the instance's host directory with its files and the listening vsock socket.
fn prepare_host_dir(
    cfg: &InstanceConfig,
    function: &Function,
    dir: &Path,
    uid: u32,
) -> Result<UnixListener, InstanceError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InstanceError::HostDir { path, source }
    };
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(err(parent))?;
    }
    std::fs::create_dir(dir).map_err(err(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err(dir))?;

    // The instance's own copy of the image (or initramfs), readable by its uid only.
    let linux = function.kind == FunctionKind::Linux;
    let image = dir.join(if linux { PRIVATE_INITRD } else { PRIVATE_IMAGE });
    let bytes = std::fs::read(&function.image).map_err(err(&function.image))?;
    write_private(&image, &bytes, 0o400).map_err(err(&image))?;
    std::os::unix::fs::chown(&image, Some(uid), Some(uid)).map_err(err(&image))?;

    let mut boot_source = serde_json::json!({ "kernel_image_path": JAIL_IMAGE });
    if linux {
        boot_source["initrd_path"] = JAIL_INITRD.into();
    }
    if let Some(args) = &function.boot_args {
        boot_source["boot_args"] = args.clone().into();
    }
    let vm = serde_json::json!({
        "boot-source": boot_source,
        "machine-config": { "vcpu_count": function.vcpus, "mem_size_mib": function.memory_mib },
        "vsock": { "guest_cid": GUEST_CID, "uds_path": format!("{JAIL_VSOCK_DIR}/{VSOCK_NAME}") },
    });
    let vm_path = dir.join("vm.json");
    write_private(&vm_path, vm.to_string().as_bytes(), 0o400).map_err(err(&vm_path))?;
    std::os::unix::fs::chown(&vm_path, Some(uid), Some(uid)).map_err(err(&vm_path))?;

    // The default profile with this function's memory limit.
    let mut profile = cfg.profile.clone();
    let limit = (u64::from(function.memory_mib) + u64::from(cfg.memory_overhead_mib)) << 20;
    match profile.as_object_mut() {
        Some(p) => {
            let cgroup = p.entry("cgroup").or_insert_with(|| serde_json::json!({}));
            if let Some(c) = cgroup.as_object_mut() {
                c.insert("memory_bytes".into(), limit.into());
            }
        }
        None => {
            return Err(InstanceError::Profile {
                path: cfg.profile_path.clone(),
                message: "not a JSON object".into(),
            })
        }
    }
    let profile_path = dir.join("profile.json");
    write_private(&profile_path, profile.to_string().as_bytes(), 0o600)
        .map_err(err(&profile_path))?;

    let vsock = dir.join("vsock");
    std::fs::create_dir(&vsock).map_err(err(&vsock))?;
    std::fs::set_permissions(&vsock, std::fs::Permissions::from_mode(0o700))
        .map_err(err(&vsock))?;
    std::os::unix::fs::chown(&vsock, Some(uid), Some(uid)).map_err(err(&vsock))?;
    let sock = vsock.join(format!("{VSOCK_NAME}_{GUEST_CONNECT_PORT}"));
    if sock.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(InstanceError::SocketPathTooLong(sock));
    }
    let listener = UnixListener::bind(&sock).map_err(err(&sock))?;
    std::os::unix::fs::chown(&sock, Some(uid), Some(uid)).map_err(err(&sock))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).map_err(err(&sock))?;
    Ok(listener)
}

/// True on hosts whose KVM is kvm_pvm, where guest user space cannot run
/// (shared/notes/host-kvm.md): Linux functions fail there once their kernel starts /init.
pub fn is_pvm_host() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// Files of the instance's host directory: its copy of the function's image or initramfs.
const PRIVATE_IMAGE: &str = "function.elf";
const PRIVATE_INITRD: &str = "initrd.cpio";

/// Why a Linux guest's user space is known not to run here, once its kernel started /init.
fn user_space_failure(logs: &OutputLogs, vm_ended: bool) -> Option<InstanceError> {
    let started = (*lock(&logs.init_started))?;
    let detail = match lock(&logs.init_fault).clone() {
        Some(line) => format!("init faulted: {line}"),
        None if vm_ended => "the microVM ended before init reached the host".into(),
        None if started.elapsed() >= PVM_INIT_GRACE => format!(
            "init did not reach the host within {} s",
            PVM_INIT_GRACE.as_secs()
        ),
        None => return None,
    };
    Some(InstanceError::UserSpaceUnsupported { detail })
}

/// Waits for the guest's connection, or the VMM's end, or the deadline. With `watch_init`
/// (a Linux guest on a kvm_pvm host), fails as soon as the kernel has started /init and init
/// has faulted.
fn wait_for_guest(
    jail: &mut Jail,
    listener: &UnixListener,
    deadline: Instant,
    timeout: Duration,
    watch_init: bool,
) -> Result<std::os::unix::net::UnixStream, InstanceError> {
    let sup = jail
        .supervisor_fd
        .as_ref()
        .map(PidFd::as_raw_fd)
        .unwrap_or(-1);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let detail = jail
                .logs
                .last_word()
                .unwrap_or_else(|| "the guest never connected to the vsock port".into());
            return Err(InstanceError::StartTimeout {
                after: timeout,
                detail,
            });
        }
        if watch_init {
            if let Some(e) = user_space_failure(&jail.logs, false) {
                return Err(e);
            }
        }
        let slice = if watch_init {
            left.min(Duration::from_millis(200))
        } else {
            left
        };
        let ready = sys::poll_readable(&[listener.as_raw_fd(), sup], slice)
            .map_err(InstanceError::Watch)?;
        if ready.first() == Some(&true) {
            match listener.accept() {
                Ok((s, _)) => return Ok(s),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(InstanceError::HostDir {
                        path: jail.host_dir.clone(),
                        source: e,
                    })
                }
            }
        }
        if ready.get(1) == Some(&true) {
            // Let the drain threads take the last words.
            std::thread::sleep(Duration::from_millis(20));
            if watch_init {
                if let Some(e) = user_space_failure(&jail.logs, true) {
                    return Err(e);
                }
            }
            return Err(InstanceError::Exited(jail.exit_message()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_fit_the_jailer() {
        let id = instance_id("echo", 7);
        assert!(id.starts_with("echo-7-"), "{id}");
        let long = instance_id(&"f_".repeat(40), u64::MAX);
        assert!(long.len() <= 64, "{long}");
        assert!(long.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    }

    #[test]
    fn tails_keep_the_end() {
        let mut t = Tail::default();
        for _ in 0..10 {
            t.push(&[b'a'; TAIL_BYTES]);
        }
        t.push(b"end");
        let text = t.text();
        assert_eq!(text.len(), TAIL_BYTES);
        assert!(text.ends_with("end"));
        assert!(t.buf.len() <= 2 * TAIL_BYTES);
    }

    #[test]
    fn last_word_is_the_vmm_exit_line() {
        let logs = OutputLogs::default();
        lock(&logs.stderr).push(
            b"boot-timer: x: 1 ms\nvmm: vCPU 0 stopped: write to I/O port 0x80 (1-byte access) with no device (--strict-io) at RIP 0x1 (exit code 6)\n",
        );
        assert!(logs.last_word().unwrap().contains("I/O port 0x80"));
    }

    #[test]
    fn errors_map_to_codes_and_statuses() {
        let e = InvokeError::Function {
            code: ErrorCode::Panic,
            message: "boom".into(),
        };
        assert_eq!((e.code(), e.http_status()), ("panic", 502));
        let e = InvokeError::Timeout {
            function: "spin".into(),
            after: Duration::from_millis(100),
        };
        assert_eq!((e.code(), e.http_status()), ("timeout", 504));
        assert!(e.to_string().contains("within 100 ms"));
    }

    #[test]
    fn linux_errors_are_clear() {
        let e = InstanceError::UserSpaceUnsupported {
            detail: "init faulted: x".into(),
        };
        assert_eq!((e.code(), e.http_status()), ("host_unsupported", 501));
        let m = e.to_string();
        assert!(
            m.starts_with("guest user space cannot run on this host")
                && m.contains("reached `Run /init` and then init faulted: x"),
            "{m}"
        );
        let e = InstanceError::NoKernel {
            path: "/k/vmlinux".into(),
        };
        assert_eq!(e.code(), "no_kernel");
        assert!(
            e.to_string().contains("/k/vmlinux") && e.to_string().contains("scripts/assets.sh")
        );
    }

    /// The console watch finds `Run /init` and the fault after it, even split between reads.
    #[test]
    fn console_watch_sees_init_start_and_fault() {
        let logs = OutputLogs::default();
        let feed = |text: &str| {
            lock(&logs.console).push(text.as_bytes());
            logs.watch_init(text.len());
        };
        feed("[ 1.0] init[1]: segfault at 0 before init started\n");
        assert!(
            user_space_failure(&logs, true).is_none(),
            "no Run /init yet"
        );
        feed("[ 50.1] Run /in");
        feed("it as init process\n");
        assert!(lock(&logs.init_started).is_some());
        assert!(user_space_failure(&logs, false).is_none(), "no fault yet");
        feed(&"x".repeat(5000));
        feed("\n[ 55.9] init[1]: segfault at ffffffff81400040");
        assert!(user_space_failure(&logs, false).is_none(), "half a line");
        feed(" ip ffffffff81400040\n");
        match user_space_failure(&logs, false) {
            Some(InstanceError::UserSpaceUnsupported { detail }) => {
                assert!(
                    detail.ends_with("init faulted: [ 55.9] init[1]: segfault at ffffffff81400040 ip ffffffff81400040"),
                    "{detail}"
                )
            }
            other => panic!("{other:?}"),
        }
        let ended = OutputLogs::default();
        lock(&ended.console).push(b"Run /init as init process\n");
        ended.watch_init(26);
        assert!(matches!(
            user_space_failure(&ended, true),
            Some(InstanceError::UserSpaceUnsupported { .. })
        ));
    }
}
