//! Security suite, part 2: two tenants side by side.
//!
//! Tenant B runs the real VMM in a full jail (default profile, PID and network namespaces
//! with a tap, firewall, API socket in its /run) booting the tiny guest's `ticks` scenario:
//! a line on the serial console every ~0.1 s. Tenant A runs `escape-probe` in its own full
//! jail and attacks B: B's files by their host paths, B's API socket and a socket standing
//! for its vsock backend, B's VMM process (signals, ptrace, its memory), B's processes at
//! all (a pid scan), B's cgroups, B's network address and an abstract socket in B's network
//! namespace, B's files by handle; and it exhausts its own pids and memory (the OOM killer
//! ends it). Every attempt must end as the table says. The attacks that need seccomp are
//! run again with seccomp and Landlock off: the namespaces alone still keep A from B.
//! Meanwhile one of A's jails is held open, then killed with SIGKILL.
//!
//! Throughout, B's guest must keep ticking (lines keep arriving while A is attacked and
//! after A is killed), B's API must still answer (`GET /`: Running), and B's VMM must be the
//! same process. The table is printed on stderr (`--nocapture`) and written to
//! `<target>/security/tenants.txt`. Needs root, /dev/kvm, iproute2 and nftables.
//! Alone: `cargo test -p kiln-tests --test security_tenants -- --nocapture`.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixListener;
use std::process::Stdio;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use kiln_tests::api;
use kiln_tests::netns::{in_netns, NsPair};
use kiln_tests::process::{line_reader, read_pid_file, spawn, stderr_reader};
use kiln_tests::security::outside::file_handle;
use kiln_tests::security::probe::{matches, run_jailer, Got, ProbeRun};
use kiln_tests::security::report::{table, write_report, Row};
use kiln_tests::security::tenant::{default_profile_path, Tenant, ALLOW_ALL_POLICY};
use kiln_tests::{require_kvm, require_program, require_root, tiny, unique_id, KillOnDrop};

const T: Duration = Duration::from_secs(30);

/// B: the VMM in its jail, and what the test keeps of it.
struct TenantB {
    /// Killed first when dropped, before the tenant's jails are cleaned up.
    child: KillOnDrop,
    tenant: Tenant,
    id: String,
    lines: Receiver<String>,
    ticks: Vec<(Instant, u64)>,
    tap_addr: String,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl TenantB {
    fn start() -> TenantB {
        let tenant = Tenant::new("st-b", "vmm");
        let id = tenant.id();
        let tap = format!("kb{}", std::process::id() % 100_000);
        let config = tenant.base.join("vm.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"boot-source": {{"kernel_image_path": "/guest.elf", "boot_args": "kiln.test=ticks"}},
                    "machine-config": {{"vcpu_count": 1, "mem_size_mib": 32}},
                    "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "{tap}"}}]}}"#
            ),
        )
        .expect("write B's config");
        let s = |v: &str| v.to_owned();
        let flags = vec![
            s("--new-pid-ns"),
            s("--cleanup-on-exit"),
            s("--new-netns"),
            s("--tap"),
            tap.clone(),
            s("--profile"),
            default_profile_path().display().to_string(),
            s("--bind-ro"),
            format!("{}:/guest.elf", tiny::tiny_guest().display()),
            s("--bind-ro"),
            format!("{}:/vm.json", config.display()),
        ];
        let args = vec![
            s("--config-file"),
            s("/vm.json"),
            s("--api-sock"),
            s("/run/api.sock"),
        ];
        let mut child = spawn(tenant.command(&id, &flags, &args).stdin(Stdio::piped()));
        let lines = line_reader(&mut child);
        let stderr = Some(stderr_reader(&mut child));
        let n = 1 + (std::process::id() % 200);
        let tap_addr = format!("10.253.{n}.1");
        let mut b = TenantB {
            child: KillOnDrop::new(child),
            tenant,
            id,
            lines,
            ticks: Vec::new(),
            tap_addr,
            stderr,
        };
        b.wait_ticks(3, T);
        // B's address on its tap, in B's namespace: what A tries to reach.
        kiln_tests::jail::sh(
            "ip",
            &[
                "-n",
                &b.id,
                "addr",
                "add",
                &format!("{}/24", b.tap_addr),
                "dev",
                &tap,
            ],
        );
        b
    }

    fn chroot(&self) -> std::path::PathBuf {
        self.tenant.chroot_dir(&self.id)
    }

    /// Takes the tick lines printed so far.
    fn collect(&mut self) {
        for line in self.lines.try_iter() {
            if let Some(n) = line.trim_end().strip_prefix("KILN-TINY: tick ") {
                if let Ok(n) = n.parse() {
                    self.ticks.push((Instant::now(), n));
                }
            }
        }
    }

    /// Waits until `more` new ticks arrived.
    fn wait_ticks(&mut self, more: usize, timeout: Duration) {
        self.collect();
        let want = self.ticks.len() + more;
        let start = Instant::now();
        while self.ticks.len() < want {
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                let stderr = self.stderr.take().map(|h| h.join().unwrap_or_default());
                panic!(
                    "tenant B's guest stopped ticking ({} ticks so far); B's stderr:\n{}",
                    self.ticks.len(),
                    stderr.unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
            self.collect();
        }
    }

    fn ticks_since(&mut self, t: Instant) -> usize {
        self.collect();
        self.ticks.iter().filter(|(at, _)| *at >= t).count()
    }
}

/// One of A's probe runs: a label, the attempt, and the expected outcome key.
struct Check {
    label: &'static str,
    attempt: &'static str,
    expected: &'static str,
    why: &'static str,
}

const fn check(
    label: &'static str,
    attempt: &'static str,
    expected: &'static str,
    why: &'static str,
) -> Check {
    Check {
        label,
        attempt,
        expected,
        why,
    }
}

/// Attacks on B from A's full jail, run together in one jail that stays up (`--hold`).
const HELD: &[Check] = &[
    check(
        "B's files by host path (and ..)",
        "fs.other-tenant",
        "ENOENT",
        "chroot",
    ),
    check("B's cgroups (/sys)", "fs.sys-cgroup", "ENOENT", "chroot"),
    check(
        "B's API socket",
        "net.other-tenant-socket",
        "ENOENT",
        "chroot",
    ),
    check(
        "B's processes (pid scan)",
        "signals.pid-scan",
        "ESRCH",
        "pid-ns",
    ),
    check(
        "SIGKILL B's VMM (tkill)",
        "signals.tkill-victim",
        "ESRCH",
        "pid-ns",
    ),
    check(
        "abstract socket in B's netns",
        "net.abstract-unix",
        "ECONNREFUSED",
        "net-ns",
    ),
    check(
        "A's own pid limit",
        "resources.thread-bomb",
        "EAGAIN",
        "cgroup(pids)",
    ),
    check(
        "A's own descriptor limit",
        "resources.fd-exhaust",
        "EMFILE",
        "rlimit",
    ),
];

/// Each in a jail of its own (seccomp kills A, or the OOM killer does).
const ALONE: &[Check] = &[
    check(
        "SIGKILL B's VMM (kill)",
        "signals.kill-victim",
        "SIGSYS",
        "seccomp",
    ),
    check(
        "ptrace B's VMM",
        "signals.ptrace-victim",
        "SIGSYS",
        "seccomp",
    ),
    check(
        "read B's VMM's memory",
        "signals.process-vm-readv",
        "SIGSYS",
        "seccomp",
    ),
    check(
        "B's file by handle",
        "fs.open-by-handle",
        "SIGSYS",
        "seccomp",
    ),
    check(
        "TCP to B's address",
        "net.other-tenant-tcp",
        "SIGSYS",
        "seccomp",
    ),
    check(
        "A's memory hog",
        "resources.memory-hog",
        "SIGKILL",
        "cgroup(memory)",
    ),
];

/// With seccomp and Landlock off in A's jail: the namespaces keep A from B on their own.
const BARE: &[Check] = &[
    check(
        "TCP to B's address, no seccomp/Landlock",
        "net.other-tenant-tcp",
        "ENETUNREACH",
        "net-ns",
    ),
    check(
        "SIGKILL B's VMM (kill), no seccomp/Landlock",
        "signals.kill-victim",
        "ESRCH",
        "pid-ns",
    ),
    check(
        "ptrace B's VMM, no seccomp/Landlock",
        "signals.ptrace-victim",
        "ESRCH",
        "pid-ns",
    ),
    check(
        "read B's memory, no seccomp/Landlock",
        "signals.process-vm-readv",
        "ESRCH",
        "pid-ns",
    ),
    check(
        "B's file by handle, no seccomp/Landlock",
        "fs.open-by-handle",
        "EPERM",
        "caps",
    ),
    check(
        "abstract socket in B's netns, no seccomp/Landlock",
        "net.abstract-unix",
        "ECONNREFUSED",
        "net-ns",
    ),
    check(
        "B's vsock socket, no seccomp/Landlock",
        "net.other-tenant-socket",
        "ENOENT",
        "chroot",
    ),
];

#[test]
fn a_tenant_cannot_reach_its_neighbour_and_the_neighbour_keeps_running() {
    require_root();
    require_kvm();
    require_program("nft", "nftables");
    let started = Instant::now();
    let mut b = TenantB::start();
    let b_pid = read_pid_file(&b.chroot().join("vmm.pid"), T);
    let b_api = b.chroot().join("run").join("api.sock");
    assert_eq!(
        api::request(&b_api, "GET", "/", "").0,
        200,
        "B's API before the attack"
    );
    // A listener on B's tap address (a service in B's guest network) and an abstract
    // socket in B's namespace; a stand-in for B's vsock backend socket in B's /run.
    let (addr, port) = (b.tap_addr.clone(), 24_000 + (std::process::id() % 1000));
    let b_listener = in_netns(Some(&b.id), move || {
        std::net::TcpListener::bind((addr.as_str(), u16::try_from(port).unwrap_or(24_000)))
    })
    .expect("listen on B's address");
    let abstract_name = unique_id("kiln-sec-b");
    let name = abstract_name.clone();
    let _b_abstract = in_netns(Some(&b.id), move || {
        let a = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract name");
        std::os::unix::net::UnixListener::bind_addr(&a)
    })
    .expect("abstract socket in B's namespace");
    let vsock_path = b.chroot().join("run").join("v.sock");
    let _b_vsock = UnixListener::bind(&vsock_path).expect("B's vsock stand-in");

    // A: the probe, in its own full jail.
    let a = Tenant::new("st-a", "escape-probe");
    let pair = NsPair::new("kst");
    let policy = a.base.join("allow-all.json");
    std::fs::write(&policy, ALLOW_ALL_POLICY).expect("write the policy");
    let full_flags = |extra: &[&str]| -> Vec<String> {
        let mut f: Vec<String> = [
            "--cleanup-on-exit",
            "--new-pid-ns",
            "--firewall",
            "on",
            "--netns",
            &pair.a_path(),
            "--profile",
            &default_profile_path().display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        f.extend(extra.iter().map(|s| s.to_string()));
        f
    };
    let probe_args = |attempts: &[&str], other_socket: &std::path::Path| -> Vec<String> {
        vec![
            "--victim".into(),
            b_pid.to_string(),
            "--decoy".into(),
            b.chroot().join("vmm.pid").display().to_string(),
            "--handle".into(),
            file_handle(&b.chroot().join("vmm.pid")),
            "--other-socket".into(),
            other_socket.display().to_string(),
            "--other-addr".into(),
            format!("{}:{port}", b.tap_addr),
            "--abstract".into(),
            abstract_name.clone(),
            "--attempts".into(),
            attempts.join(","),
        ]
    };
    let ticks_at_start = Instant::now();

    // The held jail: the batch of attacks, then it waits to be killed.
    let held_id = a.id();
    let mut args = probe_args(&HELD.iter().map(|c| c.attempt).collect::<Vec<_>>(), &b_api);
    args.push("--hold".into());
    let mut held = KillOnDrop::new(spawn(
        a.command(&held_id, &full_flags(&[]), &args)
            .stdin(Stdio::piped()),
    ));
    let held_lines = line_reader(&mut held);
    let held_stderr = stderr_reader(&mut held);
    let mut held_out = String::new();
    let deadline = Instant::now() + T;
    while !held_out.contains("holding\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        match held_lines.recv_timeout(left) {
            Ok(l) => {
                held_out.push_str(&l);
                held_out.push('\n');
            }
            Err(_) => panic!("tenant A never held:\n{held_out}"),
        }
    }
    let held_run = ProbeRun::parse(&held_out, "", None);

    // More attacks, each in a jail of its own, while the first one holds.
    let mut rows = Vec::new();
    let mut escaped = 0;
    let mut record = |c: &Check, got: Got| {
        let ok = matches(c.expected, &got);
        escaped += usize::from(got.is_escape());
        rows.push(Row {
            attempt: format!("{} [{}]", c.label, c.attempt),
            expected: format!("{} ({})", c.expected, c.why),
            got: got.detail(),
            ok,
            escaped: got.is_escape(),
            counted: true,
        });
    };
    for c in HELD {
        let got = held_run
            .results
            .get(c.attempt)
            .cloned()
            .unwrap_or(Got::Missing("not in the held run".into()));
        record(c, got);
    }
    for c in ALONE {
        let run = run_jailer(&mut a.command(
            &a.id(),
            &full_flags(&[]),
            &probe_args(&[c.attempt], &b_api),
        ));
        record(
            c,
            run.results
                .get(c.attempt)
                .cloned()
                .unwrap_or_else(|| Got::Missing(run.describe())),
        );
    }
    let bare_flags = full_flags(&[
        "--seccomp-policy",
        &policy.display().to_string(),
        "--diagnose-without",
        "landlock",
    ]);
    let attempts: Vec<&str> = BARE
        .iter()
        .map(|c| c.attempt)
        .filter(|a| *a != "net.other-tenant-socket")
        .collect();
    let run = run_jailer(&mut a.command(&a.id(), &bare_flags, &probe_args(&attempts, &b_api)));
    let vsock_run = run_jailer(&mut a.command(
        &a.id(),
        &bare_flags,
        &probe_args(&["net.other-tenant-socket"], &vsock_path),
    ));
    for c in BARE {
        let from = if c.attempt == "net.other-tenant-socket" {
            &vsock_run
        } else {
            &run
        };
        record(
            c,
            from.results
                .get(c.attempt)
                .cloned()
                .unwrap_or_else(|| Got::Missing(from.describe())),
        );
    }
    let during = b.ticks_since(ticks_at_start);

    // Kill A's held VMM; its supervisor passes the signal on and removes A's jail.
    let a_pid = read_pid_file(&a.chroot_dir(&held_id).join("escape-probe.pid"), T);
    // SAFETY: SIGKILL to the pid the jailer recorded for A's VMM, still running (held).
    let killed = unsafe { libc::kill(a_pid, libc::SIGKILL) };
    assert_eq!(killed, 0, "kill tenant A");
    let killed_at = Instant::now();
    let status = loop {
        if let Some(s) = held.try_wait().expect("wait for A") {
            break s;
        }
        assert!(killed_at.elapsed() < T, "tenant A's supervisor did not end");
        std::thread::sleep(Duration::from_millis(10));
    };
    drop(held.stdin.take());
    let _ = held_stderr.join();
    use std::os::unix::process::ExitStatusExt;
    let a_gone = status.signal() == Some(libc::SIGKILL) && !a.chroot_dir(&held_id).exists();

    // B after A: still ticking, API answers, same VMM.
    b.wait_ticks(3, T);
    let after = b.ticks_since(killed_at);
    let (code, body) = api::request(&b_api, "GET", "/", "");
    let b_same = std::fs::read_to_string(b.chroot().join("vmm.pid")).ok().and_then(|s| s.trim().parse::<i32>().ok()) == Some(b_pid)
        // SAFETY: signal 0 only checks that B's VMM exists.
        && unsafe { libc::kill(b_pid, 0) } == 0;
    let outside = [
        (
            "B's guest ticks while A attacks",
            ">0 ticks",
            format!("{during} ticks"),
            during > 0,
        ),
        (
            "A killed (SIGKILL), its jail removed",
            "killed+cleaned",
            format!(
                "status {status:?}, jail dir gone: {}",
                !a.chroot_dir(&held_id).exists()
            ),
            a_gone,
        ),
        (
            "B's guest ticks after A is killed",
            ">=3 ticks",
            format!("{after} ticks"),
            after >= 3,
        ),
        (
            "B's API after A is killed (GET /)",
            "200 Running",
            format!("{code} {}", body.trim()),
            code == 200 && body.contains("Running"),
        ),
        (
            "B's VMM is the same process",
            "alive",
            format!("pid {b_pid}: {}", if b_same { "alive" } else { "GONE" }),
            b_same,
        ),
    ];
    for (what, expected, got, ok) in outside {
        rows.push(Row {
            attempt: what.to_owned(),
            expected: expected.to_owned(),
            got,
            ok,
            escaped: false,
            counted: false,
        });
    }
    drop(b_listener);

    // B stops cleanly on SIGTERM (the supervisor forwards it).
    // SAFETY: SIGTERM to B's jailer (our child).
    unsafe { libc::kill(i32::try_from(b.child.id()).unwrap_or(0), libc::SIGTERM) };
    drop(b.child.stdin.take());
    let stop = Instant::now();
    while b.child.try_wait().ok().flatten().is_none() && stop.elapsed() < T {
        std::thread::sleep(Duration::from_millis(10));
    }

    let text = format!(
        "{}\n{} attacks by tenant A on tenant B: {} blocked, {escaped} escaped ({:.1} s)\n",
        table(
            "tenant A (escape probe) against tenant B (VMM, tiny guest ticking)",
            &rows
        ),
        HELD.len() + ALONE.len() + BARE.len(),
        HELD.len() + ALONE.len() + BARE.len() - escaped,
        started.elapsed().as_secs_f64()
    );
    let path = write_report("tenants", &text);
    eprintln!("{text}(report written to {})", path.display());
    let bad: Vec<String> = rows
        .iter()
        .filter(|r| !r.ok)
        .map(|r| format!("{}: expected {}, got {}", r.attempt, r.expected, r.got))
        .collect();
    assert_eq!(escaped, 0, "tenant A escaped:\n{}", bad.join("\n"));
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
