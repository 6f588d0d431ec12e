//! The security suite's kit: real jails around `escape-probe` (tests/src/bin/escape-probe),
//! the outside world the probe attacks (a host process to signal, listeners across a veth
//! pair, an abstract unix socket, a decoy tenant, a descriptor handed in), reading the
//! probe's results, comparing them with the expected outcome, and the summary table.
//!
//! Used by `tests/tests/security_jail.rs` (the probe under the full default profile and
//! with each layer switched off), `security_tenants.rs` (two tenants side by side) and
//! `security_guest.rs` (hostile guests; only the table and report parts).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::jail::{send_fd, sh};
use crate::{bin_dir, require_bin, require_root, unique_id};

/// How long one jailed probe run may take.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// One attempt as `escape-probe --list` describes it.
#[derive(Debug, Clone)]
pub struct AttemptInfo {
    pub name: String,
    pub family: String,
    /// Run in a jail of its own (it changes the process, or may end it).
    pub alone: bool,
    pub what: String,
}

/// Every attempt the probe knows, in its order.
pub fn attempts(probe: &Path) -> Vec<AttemptInfo> {
    let out = Command::new(probe)
        .arg("--list")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} --list: {e}", probe.display()));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(4, '\t');
            Some(AttemptInfo {
                name: f.next()?.to_owned(),
                family: f.next()?.to_owned(),
                alone: f.next()? == "alone",
                what: f.next()?.to_owned(),
            })
        })
        .collect()
}

/// What an attempt achieved, seen from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    /// `blocked HOW`.
    Blocked(String),
    /// `escaped WHAT`.
    Escaped(String),
    /// `error WHAT`: the attempt could not be made.
    Error(String),
    /// The process died of this signal during the attempt.
    Signal(i32),
    /// Never reported (the run ended before it).
    Missing(String),
}

impl Got {
    /// The short form compared with an expectation: the errno name (first word of HOW),
    /// `ESCAPED`, `SIGSYS`/`SIGKILL`/..., `ERROR`, `MISSING`.
    pub fn key(&self) -> String {
        match self {
            Got::Blocked(how) => how
                .split([' ', ','])
                .next()
                .unwrap_or_default()
                .trim_end_matches(':')
                .to_owned(),
            Got::Escaped(_) => "ESCAPED".into(),
            Got::Error(_) => "ERROR".into(),
            Got::Signal(s) => signal_name(*s),
            Got::Missing(_) => "MISSING".into(),
        }
    }

    /// Everything that was reported.
    pub fn detail(&self) -> String {
        match self {
            Got::Blocked(how) => format!("blocked {how}"),
            Got::Escaped(what) => format!("ESCAPED {what}"),
            Got::Error(what) => format!("error {what}"),
            Got::Signal(s) => format!("killed by {}", signal_name(*s)),
            Got::Missing(why) => format!("not reported ({why})"),
        }
    }

    pub fn is_escape(&self) -> bool {
        matches!(self, Got::Escaped(_))
    }
}

pub fn signal_name(s: i32) -> String {
    match s {
        libc::SIGSYS => "SIGSYS".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGXFSZ => "SIGXFSZ".into(),
        libc::SIGBUS => "SIGBUS".into(),
        other => format!("SIG{other}"),
    }
}

/// An expected outcome: one key (`EACCES`, `SIGSYS`, `ESCAPED`...) or alternatives
/// separated by `|` (where the host kernel's configuration decides, e.g. `EPERM|ENOSYS`
/// for a syscall compiled out of some kernels).
pub fn matches(expected: &str, got: &Got) -> bool {
    let key = got.key();
    expected.split('|').any(|e| e == key)
}

/// The results of one probe run: attempt → outcome, the attempt that was running when the
/// process ended (if it did not finish), and how it ended.
#[derive(Debug, Default)]
pub struct ProbeRun {
    pub results: BTreeMap<String, Got>,
    pub in_progress: Option<String>,
    pub done: bool,
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl ProbeRun {
    /// Reads the probe's output lines (`begin`, `result`, `done`).
    pub fn parse(stdout: &str, stderr: &str, status: Option<ExitStatus>) -> ProbeRun {
        let mut run = ProbeRun {
            status,
            stdout: stdout.to_owned(),
            stderr: stderr.to_owned(),
            ..ProbeRun::default()
        };
        for line in stdout.lines() {
            if line == "done" {
                run.done = true;
            } else if let Some(name) = line.strip_prefix("begin ") {
                run.in_progress = Some(name.to_owned());
            } else if let Some(rest) = line.strip_prefix("result ") {
                let mut f = rest.splitn(3, ' ');
                let (Some(name), Some(kind)) = (f.next(), f.next()) else {
                    continue;
                };
                let text = f.next().unwrap_or_default().to_owned();
                let got = match kind {
                    "blocked" => Got::Blocked(text),
                    "escaped" => Got::Escaped(text),
                    _ => Got::Error(text),
                };
                run.results.insert(name.to_owned(), got);
                if run.in_progress.as_deref() == Some(name) {
                    run.in_progress = None;
                }
            }
        }
        // A process that died inside an attempt: that attempt got the signal.
        if let (Some(name), Some(sig)) = (&run.in_progress, status.and_then(|s| s.signal())) {
            run.results.insert(name.clone(), Got::Signal(sig));
        }
        run
    }

    pub fn describe(&self) -> String {
        format!(
            "status {:?}\n--- probe stdout:\n{}\n--- stderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` (a jailer) to the end, killing it at the deadline; stdin is /dev/null.
pub fn run_jailer(cmd: &mut Command) -> ProbeRun {
    let f = crate::run_with_timeout(cmd, RUN_TIMEOUT);
    ProbeRun::parse(&f.stdout, &f.stderr, f.status)
}

/// A tenant's jail around `escape-probe`: a chroot base of its own, a parent cgroup under
/// the test's own cgroup, an unprivileged uid/gid. Jail ids are made per run (`id()`), so
/// runs of the same tenant may overlap.
pub struct Tenant {
    pub name: String,
    pub base: PathBuf,
    pub parent_cgroup: String,
    pub uid: u32,
    pub jailer: PathBuf,
    pub exec: PathBuf,
    runs: AtomicU32,
}

impl Tenant {
    /// A tenant running `exec` (a binary of the workspace: `escape-probe`, `vmm`).
    pub fn new(prefix: &str, exec: &str) -> Tenant {
        require_root();
        static NEXT_UID: AtomicU32 = AtomicU32::new(0);
        let name = unique_id(prefix);
        let base = std::env::temp_dir().join(format!("kiln-sec-{name}"));
        std::fs::create_dir_all(&base).expect("create the chroot base");
        let uid =
            52_000 + (std::process::id() % 500) * 20 + NEXT_UID.fetch_add(1, Ordering::Relaxed);
        Tenant {
            parent_cgroup: format!("ks-{name}"),
            name,
            base,
            uid,
            jailer: require_bin("jailer"),
            exec: require_bin(exec),
            runs: AtomicU32::new(0),
        }
    }

    /// The file name of the exec'd binary (the jail's `/<name>`).
    pub fn exec_name(&self) -> String {
        self.exec
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// A fresh jail id for one run.
    pub fn id(&self) -> String {
        format!(
            "{}-r{}",
            self.name,
            self.runs.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// `<base>/<exec-name>/<id>/root` on the host.
    pub fn chroot_dir(&self, id: &str) -> PathBuf {
        self.base.join(self.exec_name()).join(id).join("root")
    }

    /// The jailer with this tenant's identity and cgroup parent, `flags`, `--`, `args`.
    pub fn command(&self, id: &str, flags: &[String], args: &[String]) -> Command {
        let mut cmd = Command::new(&self.jailer);
        cmd.arg("--id")
            .arg(id)
            .arg("--exec-file")
            .arg(&self.exec)
            .args([
                "--uid",
                &self.uid.to_string(),
                "--gid",
                &self.uid.to_string(),
            ])
            .arg("--chroot-base-dir")
            .arg(&self.base)
            .args([
                "--parent-cgroup",
                &self.parent_cgroup,
                "--parent-cgroup-relative",
            ])
            .args(flags)
            .arg("--")
            .args(args);
        cmd
    }
}

impl Drop for Tenant {
    fn drop(&mut self) {
        // Jails run with --cleanup-on-exit; a run killed at its deadline may leave one.
        if let Ok(entries) = std::fs::read_dir(self.base.join(self.exec_name())) {
            for e in entries.flatten() {
                let _ = Command::new(&self.jailer)
                    .arg("cleanup")
                    .arg("--id")
                    .arg(e.file_name())
                    .arg("--exec-file")
                    .arg(&self.exec)
                    .arg("--chroot-base-dir")
                    .arg(&self.base)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.base);
        // The parent cgroup the runs shared (each jail removes only what it created).
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        for line in own.lines() {
            let mut f = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            for c in controllers.split(',').filter(|c| !c.is_empty()) {
                let dir = Path::new("/sys/fs/cgroup")
                    .join(c)
                    .join(path.trim_start_matches('/'))
                    .join(&self.parent_cgroup);
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

/// The repository's tenant profile, `policies/tenant/default.json` (canonical: the jailer
/// refuses paths with `..`).
pub fn default_profile_path() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("policies")
        .join("tenant")
        .join("default.json");
    path.canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A seccomp policy for the jailer that allows everything (`main` with no rule).
pub const ALLOW_ALL_POLICY: &str =
    r#"{"main": {"default_action": "allow", "filter_action": "kill_process", "filter": []}}"#;

/// A host process the probe tries to signal and trace: `sleep`, running as `uid` (the
/// jail's own uid: the hardest case, where the uid check alone lets a signal through).
pub struct Victim {
    child: Child,
}

impl Victim {
    pub fn spawn(uid: u32) -> Victim {
        let child = Command::new("sleep")
            .arg("600")
            .uid(uid)
            .gid(uid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the victim (sleep)");
        Victim { child }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid")
    }

    /// Still running (not killed by a probe).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two network namespaces joined by a veth pair: `a` for the jail (10.252.N.1/24), `b` the
/// outside world (10.252.N.2 and .3). Only traffic between them is ever sent.
pub struct NsPair {
    pub a: String,
    pub b: String,
    pub net: String,
}

impl NsPair {
    pub fn new(tag: &str) -> NsPair {
        crate::jail::require_tool("ip", "iproute2");
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = (std::process::id() % 40) * 6 + NEXT.fetch_add(1, Ordering::Relaxed) % 6 + 1;
        let id = unique_id(tag);
        let pair = NsPair {
            a: format!("{id}-a"),
            b: format!("{id}-b"),
            net: format!("10.252.{n}"),
        };
        sh("ip", &["netns", "add", &pair.a]);
        sh("ip", &["netns", "add", &pair.b]);
        sh(
            "ip",
            &[
                "-n", &pair.a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns",
                &pair.b,
            ],
        );
        let net = pair.net.clone();
        sh(
            "ip",
            &[
                "-n",
                &pair.a,
                "addr",
                "add",
                &format!("{net}.1/24"),
                "dev",
                "va",
            ],
        );
        sh(
            "ip",
            &[
                "-n",
                &pair.b,
                "addr",
                "add",
                &format!("{net}.2/24"),
                "dev",
                "vb",
            ],
        );
        sh(
            "ip",
            &[
                "-n",
                &pair.b,
                "addr",
                "add",
                &format!("{net}.3/24"),
                "dev",
                "vb",
            ],
        );
        for (ns, dev) in [
            (&pair.a, "va"),
            (&pair.b, "vb"),
            (&pair.a, "lo"),
            (&pair.b, "lo"),
        ] {
            sh("ip", &["-n", ns, "link", "set", dev, "up"]);
        }
        pair
    }

    pub fn a_path(&self) -> String {
        format!("/run/netns/{}", self.a)
    }
}

impl Drop for NsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `f` on a short-lived thread inside network namespace `ns` (`None`: the test's own).
pub fn in_netns<T: Send + 'static>(ns: Option<&str>, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = ns.map(|n| format!("/run/netns/{n}"));
    std::thread::spawn(move || {
        if let Some(path) = path {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns on this thread only, with a namespace descriptor kept open.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .expect("namespace thread")
}

/// Everything that reached the test's listeners (TCP connections, UDP datagrams, abstract
/// socket connections), counted by background threads until dropped.
pub struct Listeners {
    pub tcp: String,
    pub udp: String,
    pub other_tcp: String,
    pub abstract_name: String,
    pub tcp_hits: Arc<AtomicUsize>,
    pub udp_hits: Arc<AtomicUsize>,
    pub abstract_hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Listeners {
    /// TCP and UDP in `outside` at `<net>.2:port`, a second TCP listener at `<net>.3`
    /// (another tenant's address), and an abstract unix socket in `jail_ns` (`None`: the
    /// test's own namespace), named after `tag`.
    pub fn start(outside: &str, net: &str, jail_ns: Option<&str>, tag: &str) -> Listeners {
        let port = 20_000 + u16::try_from(std::process::id() % 20_000).unwrap_or(0);
        let stop = Arc::new(AtomicBool::new(false));
        let (tcp_hits, udp_hits, abstract_hits) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let l = Listeners {
            tcp: format!("{net}.2:{port}"),
            udp: format!("{net}.2:{port}"),
            other_tcp: format!("{net}.3:{port}"),
            abstract_name: format!("kiln-sec-{tag}"),
            tcp_hits,
            udp_hits,
            abstract_hits,
            stop,
        };
        for (addr, hits) in [
            (l.tcp.clone(), l.tcp_hits.clone()),
            (l.other_tcp.clone(), l.tcp_hits.clone()),
        ] {
            let listener = in_netns(Some(outside), move || TcpListener::bind(addr.as_str()))
                .expect("bind the outside TCP listener");
            listener.set_nonblocking(true).expect("nonblocking");
            spawn_counter(l.stop.clone(), hits, move || listener.accept().is_ok());
        }
        let udp_addr = l.udp.clone();
        let udp = in_netns(Some(outside), move || UdpSocket::bind(udp_addr.as_str()))
            .expect("bind the outside UDP receiver");
        udp.set_nonblocking(true).expect("nonblocking");
        spawn_counter(l.stop.clone(), l.udp_hits.clone(), move || {
            let mut b = [0u8; 64];
            udp.recv(&mut b).is_ok()
        });
        let name = l.abstract_name.clone();
        let owned = jail_ns.map(str::to_owned);
        let fd = in_netns(owned.as_deref(), move || abstract_listen(&name));
        spawn_counter(l.stop.clone(), l.abstract_hits.clone(), move || {
            // SAFETY: accept on a listening socket we own; the new descriptor is closed.
            let c = unsafe {
                libc::accept4(
                    fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if c >= 0 {
                // SAFETY: `c` was just returned by accept4.
                unsafe { libc::close(c) };
            }
            c >= 0
        });
        l
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn spawn_counter(
    stop: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    mut poll: impl FnMut() -> bool + Send + 'static,
) {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if poll() {
                hits.fetch_add(1, Ordering::Relaxed);
            } else {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
}

/// A non-blocking listening abstract unix socket `@name` in the calling thread's network
/// namespace.
fn abstract_listen(name: &str) -> OwnedFd {
    // SAFETY: plain socket creation; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    assert!(
        fd >= 0,
        "socket(AF_UNIX): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain data; all-zero is valid.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX).expect("AF_UNIX");
    for (d, s) in sa.sun_path.iter_mut().skip(1).zip(name.bytes()) {
        *d = libc::c_char::from_ne_bytes([s]);
    }
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sa_family_t>() + 1 + name.len())
        .expect("length");
    // SAFETY: binds to an address struct of at least `len` bytes.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    assert_eq!(rc, 0, "bind @{name}: {}", std::io::Error::last_os_error());
    // SAFETY: plain integers.
    let rc = unsafe { libc::listen(fd.as_raw_fd(), 16) };
    assert_eq!(rc, 0, "listen @{name}");
    fd
}

/// Another tenant's files on the host, as a neighbour jail has them: `<base>/escape-probe/
/// <name>/root/run/` with a `secret` file and a listening `api.sock`. Its path is what the
/// probe tries to reach by name, its handle what it tries to open by handle, and a
/// descriptor of its `run` directory what a careless host process hands the probe.
pub struct Decoy {
    pub run_dir: PathBuf,
    pub secret: PathBuf,
    pub socket: PathBuf,
    _listener: UnixListener,
}

impl Decoy {
    pub fn new(tenant: &Tenant) -> Decoy {
        let run_dir = tenant
            .base
            .join(tenant.exec_name())
            .join(format!("decoy-{}", tenant.name))
            .join("root")
            .join("run");
        std::fs::create_dir_all(&run_dir).expect("decoy run dir");
        let secret = run_dir.join("secret");
        std::fs::write(&secret, "another tenant's secret\n").expect("decoy secret");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let socket = run_dir.join("api.sock");
        let listener = UnixListener::bind(&socket).expect("decoy api.sock");
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        Decoy {
            run_dir,
            secret,
            socket,
            _listener: listener,
        }
    }
}

/// `TYPE:HEX` of `path`'s file handle (name_to_handle_at), for `--handle`.
pub fn file_handle(path: &Path) -> String {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let mut buf = vec![0u8; 8 + 128];
    buf[..4].copy_from_slice(&128u32.to_ne_bytes());
    let mut mount_id: libc::c_int = 0;
    // SAFETY: a struct file_handle with room for 128 bytes of handle, a NUL-terminated path,
    // and an int for the mount id, all outliving the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            c.as_ptr(),
            buf.as_mut_ptr(),
            &mut mount_id,
            0 as libc::c_long,
        )
    };
    assert_eq!(
        rc,
        0,
        "name_to_handle_at {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    let len = usize::try_from(u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]])).unwrap_or(0);
    let kind = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let hex: String = buf[8..8 + len].iter().map(|b| format!("{b:02x}")).collect();
    format!("{kind}:{hex}")
}

/// Hands the probe a descriptor of `dir`: once the jail's `<chroot>/run` exists, binds
/// `fdpass.sock` there, accepts one connection and sends the descriptor. Gives up after
/// the run timeout.
pub fn serve_fd(chroot: PathBuf, dir: PathBuf) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let run = chroot.join("run");
        while !run.is_dir() {
            if start.elapsed() > RUN_TIMEOUT {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let sock = run.join("fdpass.sock");
        let Ok(listener) = UnixListener::bind(&sock) else {
            return;
        };
        let _ = std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777));
        let _ = listener.set_nonblocking(true);
        let Ok(handle) = std::fs::File::open(&dir) else {
            return;
        };
        while start.elapsed() < RUN_TIMEOUT {
            match listener.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    let _ = send_fd(&stream, &handle);
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    })
}

/// At most `n` jailed runs at a time (the hosts have two cores, shared).
pub struct Slots {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Slots {
    pub fn new(n: usize) -> Slots {
        Slots {
            free: Mutex::new(n),
            cv: Condvar::new(),
        }
    }

    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            while *free == 0 {
                free = self.cv.wait(free).unwrap_or_else(|p| p.into_inner());
            }
            *free -= 1;
        }
        let out = f();
        *self.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.cv.notify_one();
        out
    }
}

/// One row of a summary table.
#[derive(Debug, Clone)]
pub struct Row {
    pub attempt: String,
    pub expected: String,
    pub got: String,
    pub ok: bool,
    pub escaped: bool,
    /// An attempt (counted as blocked or escaped), not a health check.
    pub counted: bool,
}

/// Formats rows as an aligned `attempt | expected | got` table, marking mismatches.
pub fn table(title: &str, rows: &[Row]) -> String {
    let w0 = rows
        .iter()
        .map(|r| r.attempt.len())
        .max()
        .unwrap_or(7)
        .max(7);
    let w1 = rows
        .iter()
        .map(|r| r.expected.len())
        .max()
        .unwrap_or(8)
        .max(8);
    let mut out = format!(
        "\n== {title}\n{:<w0$} | {:<w1$} | got\n",
        "attempt", "expected"
    );
    out.push_str(&format!(
        "{}-+-{}-+-{}\n",
        "-".repeat(w0),
        "-".repeat(w1),
        "-".repeat(20)
    ));
    for r in rows {
        let mark = if r.ok { "" } else { "   <-- UNEXPECTED" };
        out.push_str(&format!(
            "{:<w0$} | {:<w1$} | {}{mark}\n",
            r.attempt, r.expected, r.got
        ));
    }
    let blocked = rows.iter().filter(|r| r.counted && !r.escaped).count();
    let escaped = rows.iter().filter(|r| r.counted && r.escaped).count();
    let wrong = rows.iter().filter(|r| !r.ok).count();
    if rows.iter().any(|r| r.counted) {
        out.push_str(&format!(
            "{blocked} blocked, {escaped} escaped, {wrong} unexpected\n"
        ));
    } else {
        out.push_str(&format!("{} checks, {wrong} unexpected\n", rows.len()));
    }
    out
}

/// Writes a report under the target directory (`<target>/security/<name>.txt`) and
/// returns its path.
pub fn write_report(name: &str, text: &str) -> PathBuf {
    let dir = bin_dir()
        .parent()
        .and_then(Path::parent)
        .map_or_else(bin_dir, Path::to_path_buf)
        .join("security");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{name}.txt"));
    let _ = std::fs::write(&path, text);
    path
}

/// Reads lines from a child's stdout as they come (for long-running VMMs).
pub fn line_reader(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Collects a child's stderr in the background.
pub fn stderr_reader(child: &mut Child) -> std::thread::JoinHandle<String> {
    let mut stderr = child.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    })
}

/// One HTTP request on a VMM's API socket: (status code, body). Panics when the socket does
/// not answer within 10 s.
pub fn api_request(sock: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(sock)
        .unwrap_or_else(|e| panic!("connect to {}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write the request");
    let mut buf = vec![0u8; 16384];
    let n = s.read(&mut buf).expect("the API's answer");
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad answer {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// Waits until `path` holds a number (a jail's pid file), up to `timeout`.
pub fn read_pid_file(path: &Path, timeout: Duration) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return pid;
        }
        assert!(start.elapsed() < timeout, "no pid in {}", path.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}
