//! Security suite, part 4: the host's shared resources. Nothing a tenant does inside its jail
//! may exhaust, stall or outlive them. Each test attacks for real, as the jailed process
//! (`jail-probe` in place of the VMM, under the jail's seccomp filter and the default
//! profile) or as a hostile guest writing frames to its tap, and checks from outside that it
//! failed, and why:
//!
//! - `/run` is a tmpfs of the profile's size, whose pages the jail's memory cgroup pays for;
//! - a tree nested tens of thousands deep, where a jail with its layers switched off can make
//!   one, does not defeat cleanup at an orchestrator's 1,024-descriptor limit;
//! - huge pages: refused by seccomp, and held at 0 by the hugetlb cgroup (a host pool set up
//!   by the test);
//! - the operator's terminal: never reached by the jail, left as it was;
//! - the host's network namespace: not the jail's (an abstract socket bound in the jail is
//!   not reachable from the host);
//! - the guest's tap: spoofed MACs and addresses, other protocols, ARP and ND floods and
//!   traffic off the allow-list are dropped at the tap, routed or bridged (whatever
//!   `bridge-nf-call-*` says), and the host's neighbour tables do not fill.
//!
//! Needs root, /dev/kvm, nft (nftables), ip (iproute2), nsenter (util-linux). Alone:
//! `cargo test -p kiln-tests --test security_host -- --nocapture`.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_tests::jail::{run, sh, Finished, Jail, Running};
use kiln_tests::netns::NetNs;
use kiln_tests::process::{read_pid_file, wait_gone};
use kiln_tests::security::frames::{self, GuestTap, BROADCAST};
use kiln_tests::security::tenant::{default_profile_path, ALLOW_ALL_POLICY};
use kiln_tests::{require_program, unique_id};

const T: Duration = Duration::from_secs(30);

/// The repository's default profile with `edit` applied to its JSON.
fn profile(jail: &Jail, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let text = std::fs::read_to_string(default_profile_path()).expect("default profile");
    let mut p: serde_json::Value = serde_json::from_str(&text).expect("profile JSON");
    edit(&mut p);
    jail.write_profile(&p.to_string())
}

/// A seccomp policy allowing everything (a layer switched off, for the attempts that need
/// the kernel to answer), in the jail's base directory.
fn allow_all(jail: &Jail) -> PathBuf {
    let path = jail.base.join("allow-all.json");
    std::fs::write(&path, ALLOW_ALL_POLICY).expect("write the policy");
    path
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// The jail's cgroup directory in the unified (v2) hierarchy of this host.
fn v2_cgroup_dir(jail: &Jail) -> PathBuf {
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup2 line");
    Path::new("/sys/fs/cgroup/unified")
        .join(own.trim_start_matches('/'))
        .join(&jail.parent_cgroup)
        .join(&jail.id)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// The value of `key` in a flat-keyed cgroup file (`memory.stat`).
fn stat(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in\n{text}"))
}

#[test]
fn run_is_a_bounded_tmpfs_paid_for_by_the_jails_memory_cgroup() {
    // The default profile: /run holds 4 MiB; writing 8 MiB stops at 4 (ENOSPC), on the
    // jail's tmpfs, not on the host's disk.
    let jail = Jail::new("sh-run");
    let before = jail.snapshot();
    let p = profile(&jail, |_| {});
    let done = run(
        &mut jail.command(
            &["--cleanup-on-exit", "--profile", s(&p)],
            &["write-file", "/run/fill", "8388608"],
        ),
        T,
    );
    assert_eq!(done.code(), Some(0), "{}", done.describe());
    assert_eq!(
        done.report.get("write"),
        "ENOSPC:4194304",
        "{}",
        done.describe()
    );
    std::fs::remove_file(&p).unwrap();
    assert_eq!(jail.snapshot(), before, "the /run tmpfs or a file was left");

    // What the jail writes to /run is memory of its own cgroup (shmem), not the host's.
    let jail = Jail::new("sh-runmem");
    let p = profile(&jail, |p| {
        p["run"] = serde_json::json!({"size_bytes": 16 << 20, "inodes": 16});
    });
    let mut r = Running::spawn(&mut jail.command(
        &["--cleanup-on-exit", "--profile", s(&p)],
        &["write-file", "/run/fill", "8388608", "hold"],
    ));
    r.wait_for("ready", T);
    assert_eq!(r.report.get("write"), "ok:8388608");
    let mountinfo = read(Path::new("/proc/self/mountinfo"));
    let run_dir = jail.chroot_dir().join("run");
    let line = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(s(&run_dir)))
        .unwrap_or_else(|| panic!("no mount on {}:\n{mountinfo}", run_dir.display()));
    assert!(
        line.contains("rw,nosuid,nodev,noexec")
            && line.contains(" - tmpfs tmpfs rw,size=16384k,nr_inodes=16,mode=700"),
        "{line}"
    );
    let memory = read(&jail.cgroup_dir("memory").join("memory.stat"));
    assert!(
        stat(&memory, "shmem") >= 8 << 20,
        "the jail's memory cgroup does not hold /run's pages:\n{memory}"
    );
    let done = r.finish(T);
    assert_eq!(done.code(), Some(0), "{}", done.describe());
}

/// Sets RLIMIT_NOFILE to 1024 (an orchestrator's usual limit) in the spawned process.
fn with_fd_limit_1024(cmd: &mut Command) -> &mut Command {
    // SAFETY: setrlimit is async-signal-safe and only touches the child.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: 1024,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

#[test]
fn a_deep_tree_cannot_be_made_in_the_jail_nor_defeat_its_cleanup() {
    const DEPTH: &str = "25000";
    // The full jail: the first mkdir kills the jail process (seccomp); with seccomp off,
    // Landlock refuses it, in /run and in a writable directory bind (the worker's vsock
    // directory is one).
    let jail = Jail::new("sh-deep");
    let bound = jail.base.join("vsock");
    std::fs::create_dir(&bound).unwrap();
    std::fs::set_permissions(&bound, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let bind = format!("{}:/vsock", bound.display());
    let done = run(
        &mut jail.command(
            &["--cleanup-on-exit", "--bind-rw", &bind],
            &["nest", "/run", DEPTH],
        ),
        T,
    );
    assert_eq!(done.signal(), Some(libc::SIGSYS), "{}", done.describe());
    let policy = allow_all(&jail);
    let done = run(
        &mut jail.command(
            &[
                "--cleanup-on-exit",
                "--bind-rw",
                &bind,
                "--seccomp-policy",
                s(&policy),
            ],
            &["nest", "/run", DEPTH, "nest", "/vsock", DEPTH],
        ),
        T,
    );
    let nests: Vec<&String> = done
        .report
        .lines
        .iter()
        .filter(|l| l.starts_with("nest="))
        .collect();
    assert_eq!(
        nests,
        ["nest=EACCES:0", "nest=EACCES:0"],
        "{}",
        done.describe()
    );

    // With seccomp and Landlock off, the jail nests 25,000 directories in /run and in the
    // bind, and exits; cleanup at 1,024 descriptors removes the jail entirely (its /run is
    // a tmpfs, unmounted). The bind's source is the orchestrator's: untouched.
    let p = profile(&jail, |p| {
        p["run"] = serde_json::json!({"size_bytes": 256 << 20, "inodes": 40000});
    });
    let before = jail.snapshot();
    let done = run(
        &mut jail.command(
            &[
                "--bind-rw",
                &bind,
                "--seccomp-policy",
                s(&policy),
                "--diagnose-without",
                "landlock",
                "--profile",
                s(&p),
            ],
            &["nest", "/run", DEPTH, "nest", "/vsock", DEPTH],
        ),
        Duration::from_secs(120),
    );
    let nests: Vec<&String> = done
        .report
        .lines
        .iter()
        .filter(|l| l.starts_with("nest="))
        .collect();
    assert_eq!(
        nests,
        ["nest=ok:25000", "nest=ok:25000"],
        "{}",
        done.describe()
    );
    assert_eq!(done.code(), Some(0), "{}", done.describe());
    let out = with_fd_limit_1024(&mut jail.cleanup_command())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "jailer cleanup at 1024 descriptors: {out:?}"
    );
    assert_eq!(jail.snapshot(), before, "left behind after cleanup");
    assert!(
        bound.join("d/d/d").is_dir(),
        "the bind's source was touched"
    );

    // The same under --cleanup-on-exit, the supervisor at 1,024 descriptors.
    let done = run(
        with_fd_limit_1024(&mut jail.command(
            &[
                "--cleanup-on-exit",
                "--seccomp-policy",
                s(&policy),
                "--diagnose-without",
                "landlock",
                "--profile",
                s(&p),
            ],
            &["nest", "/run", DEPTH],
        )),
        Duration::from_secs(120),
    );
    assert_eq!(done.report.get("nest"), "ok:25000", "{}", done.describe());
    assert_eq!(done.code(), Some(0), "{}", done.describe());
    assert_eq!(jail.snapshot(), before, "left behind by the supervisor");
    kiln_hostfs::remove_tree(&bound).expect("remove the bind's source");
}

/// The host's 2 MiB huge page pool, raised for one test and restored after (one test at a
/// time on the host: an `flock` on the sysctl file itself, so that every checkout's test
/// runs wait for each other and no lock file is left behind).
struct HugePages {
    previous: String,
    _lock: std::fs::File,
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

impl HugePages {
    fn reserve(pages: u64) -> HugePages {
        let lock = std::fs::File::open(NR_HUGEPAGES).expect("open nr_hugepages to lock it");
        // SAFETY: flock on a descriptor we own; released when it is closed.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        let previous = read(Path::new(NR_HUGEPAGES));
        let want = previous.parse::<u64>().unwrap_or(0) + pages;
        std::fs::write(NR_HUGEPAGES, want.to_string()).expect("set nr_hugepages");
        let got: u64 = read(Path::new(NR_HUGEPAGES)).parse().unwrap_or(0);
        assert!(
            got >= pages,
            "MISSING PRECONDITION: the host gave {got} huge pages of the {want} asked for"
        );
        HugePages {
            previous,
            _lock: lock,
        }
    }

    fn free() -> u64 {
        let meminfo = read(Path::new("/proc/meminfo"));
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix("HugePages_Free:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("HugePages_Free")
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, &self.previous);
    }
}

#[test]
fn huge_pages_are_refused_by_seccomp_and_held_at_0_by_the_hugetlb_cgroup() {
    let pool = HugePages::reserve(32);
    let free = HugePages::free();
    assert!(free >= 32, "{free} huge pages free");

    // The full jail: mmap(MAP_HUGETLB) kills the jail process (the hugetlb filter).
    let jail = Jail::new("sh-huge");
    let p = profile(&jail, |_| {});
    let done = run(
        &mut jail.command(
            &["--cleanup-on-exit", "--profile", s(&p)],
            &["mmap-huge", "2"],
        ),
        T,
    );
    assert_eq!(done.signal(), Some(libc::SIGSYS), "{}", done.describe());
    assert!(!done.report.has("huge"), "{}", done.describe());

    // Seccomp off: the hugetlb cgroup (limit 0, reservations too) refuses the mapping.
    let policy = allow_all(&jail);
    let mut r = Running::spawn(&mut jail.command(
        &[
            "--cleanup-on-exit",
            "--profile",
            s(&p),
            "--seccomp-policy",
            s(&policy),
        ],
        &["mmap-huge", "2", "hold"],
    ));
    r.wait_for("ready", T);
    assert_eq!(r.report.get("huge"), "ENOMEM");
    let cg = v2_cgroup_dir(&jail);
    for file in ["hugetlb.2MB.max", "hugetlb.2MB.rsvd.max", "hugetlb.1GB.max"] {
        assert_eq!(read(&cg.join(file)), "0", "{file}");
    }
    assert_eq!(read(&cg.join("hugetlb.2MB.current")), "0");
    assert_eq!(HugePages::free(), free, "the jail took huge pages");
    let done = r.finish(T);
    assert_eq!(done.code(), Some(0), "{}", done.describe());

    // A profile that grants 4 MiB: the filter is left out, the cgroup bounds the grant.
    let p = profile(&jail, |p| {
        p["cgroup"]["hugetlb_bytes"] = serde_json::json!(4 << 20);
    });
    let done = run(
        &mut jail.command(
            &["--cleanup-on-exit", "--profile", s(&p)],
            &["mmap-huge", "4", "mmap-huge", "6"],
        ),
        T,
    );
    let huge: Vec<&String> = done
        .report
        .lines
        .iter()
        .filter(|l| l.starts_with("huge="))
        .collect();
    assert_eq!(huge, ["huge=ok:4", "huge=ENOMEM"], "{}", done.describe());
    assert_eq!(done.code(), Some(0), "{}", done.describe());
    drop(pool);
}

/// A pseudo-terminal: (controller, terminal).
fn openpty() -> (OwnedFd, OwnedFd) {
    let (mut controller, mut terminal) = (0, 0);
    // SAFETY: openpty writes two descriptors; the name, termios and winsize are optional.
    let rc = unsafe {
        libc::openpty(
            &mut controller,
            &mut terminal,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both were just opened and are owned by nothing else.
    unsafe {
        (
            OwnedFd::from_raw_fd(controller),
            OwnedFd::from_raw_fd(terminal),
        )
    }
}

/// What a jail could change on a terminal: its mode, window size, line discipline, and
/// input waiting to be read.
#[derive(Debug, PartialEq, Eq)]
struct TerminalState {
    iflag: u32,
    oflag: u32,
    lflag: u32,
    rows: u16,
    cols: u16,
    ldisc: i32,
    pending: i32,
}

fn terminal_state(fd: &OwnedFd) -> TerminalState {
    // SAFETY: termios and winsize are plain data; each ioctl fills the struct given.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(fd.as_raw_fd(), &mut t), 0);
        let mut w: libc::winsize = std::mem::zeroed();
        assert_eq!(libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut w), 0);
        let mut ldisc: libc::c_int = -1;
        assert_eq!(libc::ioctl(fd.as_raw_fd(), libc::TIOCGETD, &mut ldisc), 0);
        let mut pending: libc::c_int = -1;
        assert_eq!(libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut pending), 0);
        TerminalState {
            iflag: t.c_iflag,
            oflag: t.c_oflag,
            lflag: t.c_lflag,
            rows: w.ws_row,
            cols: w.ws_col,
            ldisc,
            pending,
        }
    }
}

/// Runs the jailer with the terminal as stdin, stdout and stderr; returns its exit status and
/// everything that came out of the terminal.
fn run_on_terminal(
    cmd: &mut Command,
    terminal: &OwnedFd,
    controller: &OwnedFd,
) -> (Option<i32>, Option<i32>, String) {
    use std::os::unix::process::ExitStatusExt;
    let dup = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup the terminal"));
    let mut child = cmd
        .stdin(dup(terminal))
        .stdout(dup(terminal))
        .stderr(dup(terminal))
        .spawn()
        .expect("spawn the jailer");
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        assert!(start.elapsed() < T, "the jailer did not finish");
        std::thread::sleep(Duration::from_millis(10));
    };
    // Everything written to the terminal, read on the controller side.
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut pfd = libc::pollfd {
            fd: controller.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one pollfd we own.
        if unsafe { libc::poll(&mut pfd, 1, 200) } <= 0 {
            break;
        }
        // SAFETY: reads at most buf.len() bytes into buf.
        let n = unsafe { libc::read(controller.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match usize::try_from(n) {
            Ok(n) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    (
        status.code(),
        status.signal(),
        String::from_utf8_lossy(&out).replace('\r', ""),
    )
}

#[test]
fn a_terminal_on_the_jailers_stdio_never_reaches_the_jail() {
    let (controller, terminal) = openpty();
    let before = terminal_state(&terminal);
    let jail = Jail::new("sh-tty");
    let policy = allow_all(&jail);
    // Seccomp off, so that each ioctl reaches the kernel: the jail's stdio is not the
    // terminal (a pipe to the supervisor, or /dev/null), in every process layout.
    for mode in [
        &[][..],
        &["--new-pid-ns"],
        &["--cleanup-on-exit"],
        &["--cleanup-on-exit", "--new-pid-ns"],
    ] {
        let mut flags = vec!["--seccomp-policy", s(&policy)];
        flags.extend_from_slice(mode);
        let (code, _, out) = run_on_terminal(
            &mut jail.command(&flags, &["tty-ioctls"]),
            &terminal,
            &controller,
        );
        assert_eq!(code, Some(0), "{mode:?}: {out}");
        if !mode.contains(&"--cleanup-on-exit") {
            // The jailer does not wait for the VMM in this layout: wait for the probe.
            let pid = read_pid_file(&jail.chroot_dir().join("jail-probe.pid"), T);
            assert!(wait_gone(pid, T), "{mode:?}: the probe did not finish");
        }
        assert_eq!(
            terminal_state(&terminal),
            before,
            "{mode:?}: the terminal changed"
        );
        if mode.contains(&"--cleanup-on-exit") {
            // The supervisor copies the jail's output to the terminal.
            for fd in 0..=2 {
                for call in ["tcsets", "tiocswinsz", "tiocsetd", "tiocsti"] {
                    assert!(
                        out.contains(&format!("tty.{call}.{fd}=ENOTTY\n")),
                        "{mode:?}: {call} on {fd}:\n{out}"
                    );
                }
            }
            assert!(out.contains("done=1"), "{mode:?}: {out}");
        } else {
            // No process stays to copy it: the jail's output goes nowhere, and the
            // terminal shows nothing from it.
            assert!(!out.contains("tty."), "{mode:?}: {out}");
        }
        if !mode.contains(&"--cleanup-on-exit") {
            let _ = jail.cleanup_command().output();
        }
    }
    // The full jail: the first terminal ioctl kills the jail process (the ioctl allow-list).
    let (_, signal, out) = run_on_terminal(
        &mut jail.command(&["--cleanup-on-exit"], &["tty-ioctls"]),
        &terminal,
        &controller,
    );
    assert_eq!(signal, Some(libc::SIGSYS), "{out}");
    assert_eq!(terminal_state(&terminal), before, "the terminal changed");
}

/// Connects to the abstract unix socket `@name` from the test's own network namespace.
fn connect_abstract(name: &str) -> std::io::Result<std::os::unix::net::UnixStream> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    std::os::unix::net::UnixStream::connect_addr(&addr)
}

#[test]
fn without_network_flags_the_jail_shares_nothing_of_the_hosts_network_namespace() {
    let jail = Jail::new("sh-netns");
    let name = unique_id("kiln-sh-abstract");
    let mut r = Running::spawn(
        &mut jail.command(&["--cleanup-on-exit"], &["abstract-listen", &name, "hold"]),
    );
    r.wait_for("ready", T);
    assert_eq!(r.report.get(&format!("abstract.{name}")), "listening");
    let e = connect_abstract(&name).expect_err("the host reached a socket bound in the jail");
    assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED), "{e}");
    assert_eq!(r.finish(T).code(), Some(0));
    // Asked for explicitly (--share-host-netns, unsafe), the host's namespace is shared: the
    // same socket is reachable (what the default prevents).
    let name = unique_id("kiln-sh-abstract");
    let mut r = Running::spawn(&mut jail.command(
        &["--cleanup-on-exit", "--share-host-netns"],
        &["abstract-listen", &name, "hold"],
    ));
    r.wait_for("ready", T);
    assert!(connect_abstract(&name).is_ok(), "--share-host-netns");
    assert_eq!(r.finish(T).code(), Some(0));
}

/// A jail with one tap (`mac=`, `ip=`) in a new network namespace, the guest's side of it
/// attached, and the host's addresses on it.
struct TapJail {
    jail: Jail,
    running: Option<Running>,
    tap: String,
    guest: GuestTap,
    net: u8,
}

const GUEST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0a];

impl TapJail {
    fn start(prefix: &str, extra: &[&str]) -> TapJail {
        require_program("nft", "nftables");
        let jail = Jail::new(prefix);
        let net = u8::try_from(std::process::id() % 200 + 20).unwrap_or(20);
        let tap = format!("kh{}", std::process::id() % 100_000);
        let spec = format!("{tap},mac=02:00:00:00:00:0a,ip=10.{net}.0.2,ip=fd00:{net}::2");
        let allow = format!("udp,10.{net}.0.9/32,9");
        let mut flags = vec![
            "--cleanup-on-exit",
            "--new-netns",
            "--tap",
            &spec,
            "--egress-allow",
            &allow,
        ];
        flags.extend_from_slice(extra);
        let mut running = Running::spawn(&mut jail.command(&flags, &["hold"]));
        running.wait_for("ready", T);
        let ns = jail.id.clone();
        sh(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.{net}.0.1/24"),
                "dev",
                &tap,
            ],
        );
        sh(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("fd00:{net}::1/64"),
                "dev",
                &tap,
                "nodad",
            ],
        );
        let guest = GuestTap::attach(&ns, &tap);
        TapJail {
            jail,
            running: Some(running),
            tap,
            guest,
            net,
        }
    }

    fn ns(&self) -> &str {
        &self.jail.id
    }

    fn v4(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 0, host)
    }

    fn v6(&self, host: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, u16::from(self.net), 0, 0, 0, 0, 0, host)
    }

    /// Packets dropped by the tap filter's counter `reason`.
    fn dropped(&self, reason: &str) -> u64 {
        let out = sh(
            "ip",
            &[
                "netns",
                "exec",
                self.ns(),
                "nft",
                "list",
                "counter",
                "netdev",
                &format!("kiln-{}", self.jail.id),
                &format!("{reason}-{}", self.tap),
            ],
        );
        out.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no packet count in {out}"))
    }

    /// Neighbour entries of the host's side of the tap.
    fn neighbours(&self) -> usize {
        sh("ip", &["-n", self.ns(), "neigh", "show", "dev", &self.tap])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
            + sh(
                "ip",
                &["-n", self.ns(), "-6", "neigh", "show", "dev", &self.tap],
            )
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    }

    /// The jail's end; its network namespace must be gone with it, although the test still
    /// holds the guest's side of its tap open (as a VMM's stray descriptor would).
    fn finish(mut self) -> Finished {
        let done = self.running.take().expect("running").finish(T);
        let pinned = std::path::Path::new("/run/netns").join(self.ns());
        assert!(
            !pinned.exists(),
            "{} is left behind after the jail ended ({})",
            pinned.display(),
            done.describe()
        );
        done
    }
}

#[test]
fn a_hostile_guest_cannot_flood_the_neighbour_tables_or_spoof_its_tap() {
    let t = TapJail::start("sh-tap", &[]);
    let host4 = t.v4(1);
    // Gratuitous ARP and requests from 300 MACs and addresses.
    for i in 0..300u32 {
        let m = frames::mac(i);
        let sender = Ipv4Addr::new(
            10,
            t.net,
            1 + u8::try_from(i / 250).unwrap_or(0),
            u8::try_from(i % 250).unwrap_or(0) + 1,
        );
        t.guest.send(&frames::arp_request(m, m, sender, host4));
        // The guest's own MAC, someone else's address (ARP spoofing).
        t.guest
            .send(&frames::arp_request(GUEST_MAC, GUEST_MAC, sender, host4));
    }
    // Neighbour solicitations from 300 link-local and other addresses.
    for i in 0..300u16 {
        let from = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0x5a, i + 1);
        t.guest.send(&frames::neighbour_solicitation(
            GUEST_MAC,
            from,
            t.v6(1),
            GUEST_MAC,
        ));
        let from = Ipv6Addr::new(0xfd00, u16::from(t.net), 0, 0, 0, 0, 0x5a, i + 1);
        t.guest.send(&frames::neighbour_solicitation(
            GUEST_MAC,
            from,
            t.v6(1),
            GUEST_MAC,
        ));
    }
    std::thread::sleep(Duration::from_millis(300));
    let n = t.neighbours();
    assert!(n <= 3, "{n} neighbour entries for the guest's tap");
    assert!(
        t.dropped("mac") >= 300,
        "spoofed MACs: {}",
        t.dropped("mac")
    );
    assert!(
        t.dropped("arp") >= 300,
        "spoofed ARP senders: {}",
        t.dropped("arp")
    );
    assert!(
        t.dropped("addr") >= 298,
        "spoofed ND sources: {}",
        t.dropped("addr")
    );
    // The guest's own address, flooding: rate-limited.
    let before = t.dropped("arp");
    for _ in 0..500 {
        t.guest
            .send(&frames::arp_request(GUEST_MAC, GUEST_MAC, t.v4(2), host4));
    }
    assert!(
        t.dropped("arp") - before >= 400,
        "ARP not rate-limited: {}",
        t.dropped("arp") - before
    );
    // Other protocols, VLAN tags, spoofed addresses, destinations off the allow-list.
    let udp = |from: Ipv4Addr, port: u16| {
        frames::udp4(BROADCAST, GUEST_MAC, (from, 4000), (t.v4(9), port), b"kiln")
    };
    let (types, addrs, egress) = (t.dropped("type"), t.dropped("addr"), t.dropped("egress"));
    t.guest.send(&frames::ethernet(
        BROADCAST,
        GUEST_MAC,
        0x88b5,
        b"kiln other protocol",
    ));
    t.guest.send(&frames::vlan(
        BROADCAST,
        GUEST_MAC,
        7,
        frames::ETH_IP,
        &udp(t.v4(2), 9)[14..],
    ));
    t.guest.send(&udp(t.v4(66), 9));
    t.guest.send(&udp(t.v4(2), 53));
    assert_eq!(t.dropped("type") - types, 2);
    assert_eq!(t.dropped("addr") - addrs, 1);
    assert_eq!(t.dropped("egress") - egress, 1);
    let done = t.finish();
    assert_eq!(done.code(), Some(0), "{}", done.describe());

    // The same flood at a tap without the filter (--firewall off): the host's neighbour
    // table fills with what the guest claims (what the filter prevents).
    let t = TapJail::start("sh-tapoff", &["--firewall", "off"]);
    for i in 0..200u32 {
        let m = frames::mac(i);
        let sender = Ipv4Addr::new(10, t.net, 1, u8::try_from(i % 250).unwrap_or(0) + 1);
        t.guest.send(&frames::arp_request(m, m, sender, t.v4(1)));
    }
    std::thread::sleep(Duration::from_millis(300));
    let n = t.neighbours();
    sh("ip", &["-n", t.ns(), "neigh", "flush", "dev", &t.tap]);
    assert!(
        n >= 150,
        "the unfiltered flood made only {n} entries: the test's attack does not work"
    );
    let done = t.finish();
    assert_eq!(done.code(), Some(0), "{}", done.describe());
}

#[test]
fn a_bridged_tap_is_filtered_whatever_bridge_nf_call_says() {
    let t = TapJail::start("sh-bridge", &[]);
    let ns = t.ns().to_owned();
    let outside = NetNs::new("ksh-out");
    sh("ip", &["-n", &ns, "link", "add", "br0", "type", "bridge"]);
    sh(
        "ip",
        &[
            "-n",
            &ns,
            "link",
            "add",
            "va",
            "type",
            "veth",
            "peer",
            "name",
            "vb",
            "netns",
            outside.name(),
        ],
    );
    for dev in [&t.tap, "va"] {
        sh("ip", &["-n", &ns, "link", "set", dev, "master", "br0"]);
    }
    for dev in ["br0", "va"] {
        sh("ip", &["-n", &ns, "link", "set", dev, "up"]);
    }
    sh("ip", &["-n", outside.name(), "link", "set", "vb", "up"]);
    // Bridged frames skip the inet hooks unless br_netfilter says otherwise: make sure it
    // does not (where the module is loaded, the setting is per namespace).
    let nf = Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables");
    if nf.exists() {
        for key in ["iptables", "ip6tables", "arptables"] {
            sh(
                "ip",
                &[
                    "netns",
                    "exec",
                    &ns,
                    "sysctl",
                    "-qw",
                    &format!("net.bridge.bridge-nf-call-{key}=0"),
                ],
            );
        }
    }
    let seen = outside.packet_socket("vb");
    let udp = |from: Ipv4Addr, port: u16, tag: &str| {
        frames::udp4(
            BROADCAST,
            GUEST_MAC,
            (from, 4000),
            (t.v4(9), port),
            tag.as_bytes(),
        )
    };
    let denied: Vec<(&str, Vec<u8>)> = vec![
        (
            "SPOOF-MAC",
            frames::udp4(
                BROADCAST,
                frames::mac(99),
                (t.v4(2), 4000),
                (t.v4(9), 9),
                b"SPOOF-MAC",
            ),
        ),
        ("SPOOF-IP", udp(t.v4(66), 9, "SPOOF-IP")),
        ("DENIED-PORT", udp(t.v4(2), 53, "DENIED-PORT")),
        (
            "OTHER-TYPE",
            frames::ethernet(BROADCAST, GUEST_MAC, 0x88b5, b"OTHER-TYPE"),
        ),
        (
            "VLAN",
            frames::vlan(
                BROADCAST,
                GUEST_MAC,
                7,
                frames::ETH_IP,
                &udp(t.v4(2), 9, "VLAN")[14..],
            ),
        ),
    ];
    for (_, frame) in &denied {
        t.guest.send(frame);
    }
    let spoofed_arp = frames::arp_request(GUEST_MAC, GUEST_MAC, t.v4(66), t.v4(9));
    t.guest.send(&spoofed_arp);
    let leaked = seen.recv_matching(Duration::from_secs(1), |f| {
        denied
            .iter()
            .any(|(tag, _)| f.windows(tag.len()).any(|w| w == tag.as_bytes()))
            || f == spoofed_arp.as_slice()
    });
    assert!(
        leaked.is_none(),
        "a denied frame crossed the bridge: {leaked:?}"
    );
    // The allowed one does cross: the bridge works, the filter lets the guest's traffic out.
    t.guest.send(&udp(t.v4(2), 9, "ALLOWED"));
    let allowed = seen.recv_matching(Duration::from_secs(2), |f| {
        f.windows(7).any(|w| w == b"ALLOWED")
    });
    assert!(
        allowed.is_some(),
        "the allowed frame did not cross the bridge"
    );
    let done = t.finish();
    assert_eq!(done.code(), Some(0), "{}", done.describe());
    drop(outside);
}
