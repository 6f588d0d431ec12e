//! The jailer end to end, as root on this host: each test builds a real jail around the
//! `jail-probe` binary (or the real `vmm`) and checks the jail's effect from inside (what the
//! probe reports) and from outside (/proc, cgroupfs, `ip netns`, nftables, the file system).
//!
//! Needs root, /dev/kvm, nft (Debian package nftables) and ip (iproute2). Build both
//! packages first: `cargo test -p jailer -p kiln-tests --test jailer` does.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_tests::jail::{
    proc_status, require_tool, send_fd, sh, wait_gone, Finished, Jail, Report, Running,
};
use kiln_tests::security::NsPair;
use kiln_tests::{require_bin, require_kvm, tiny};

const T: Duration = Duration::from_secs(20);

fn run(cmd: &mut Command) -> Finished {
    Running::spawn(cmd).finish(T)
}

fn zero_caps(r: &Report) {
    for key in ["cap_eff", "cap_prm", "cap_inh", "cap_bnd", "cap_amb"] {
        assert_eq!(r.get(key), "0", "{key} not empty");
    }
}

fn ns_link(pid: &str, ns: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap_or_else(|e| panic!("{pid} {ns}: {e}"))
}

#[test]
fn the_jail_seen_from_inside_and_outside() {
    require_kvm();
    let jail = Jail::new("jl-basic");
    let before = jail.snapshot();
    let mut run = Running::spawn(&mut jail.command(&[], &["kvm", "hold"]));
    run.wait_for("ready", T);
    let r = run.report.clone();
    let (u, g) = (jail.uid, jail.gid);

    // Inside.
    assert_eq!(r.get("fds"), "0,1,2", "inherited descriptors");
    assert_eq!(r.get("env_count"), "0");
    assert_eq!(r.get("root"), "dev,jail-probe,jail-probe.pid,run");
    assert_eq!(
        r.get("dev"),
        format!(
            "/dev/kvm=c:10:232:{u}:{g}:600;/dev/net/tun=c:10:200:{u}:{g}:600;\
             /dev/net=d:0:0:0:0:755;/dev/urandom=c:1:9:{u}:{g}:600"
        )
    );
    assert_eq!(r.get("proc"), "absent");
    assert_eq!(r.get("hostname"), jail.id);
    assert_eq!(r.get("uid"), format!("{u},{u},{u}"));
    assert_eq!(r.get("gid"), format!("{g},{g},{g}"));
    assert_eq!(r.get("groups"), "");
    zero_caps(&r);
    assert_eq!(r.get("no_new_privs"), "1");
    assert_eq!(r.get("seccomp"), "2");
    assert_eq!(r.get("cwd"), "/");
    assert_eq!(r.get("kvm"), "api12", "the VMM's uid can use /dev/kvm");
    assert_eq!(r.get("rlimit.nofile"), "2048/2048");
    assert_eq!(r.get("rlimit.core"), "0/0");
    let argv: Vec<&str> = r.get("argv").split(' ').collect();
    assert_eq!(argv[..3], ["/jail-probe", "--id", jail.id.as_str()]);
    assert_eq!(argv[3], "--start-time-us");
    assert_eq!(argv[5], "--start-time-cpu-us");
    assert_eq!(argv[7], "--parent-cpu-time-us");
    assert_eq!(argv[9..], ["kvm", "hold"]);

    // Outside: without --new-pid-ns the jailer became the probe.
    let pid = r.get("pid").to_owned();
    assert_eq!(pid, run.child.id().to_string());
    assert_eq!(pid_file(&jail).to_string(), pid);
    // /proc/PID/root is the chroot directory (same inode), with nothing of the host in it.
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata(format!("/proc/{pid}/root")).unwrap();
    let chroot = std::fs::metadata(jail.chroot_dir()).unwrap();
    assert_eq!((root.dev(), root.ino()), (chroot.dev(), chroot.ino()));
    assert!(Path::new(&format!("/proc/{pid}/root/jail-probe")).exists());
    for host_only in ["etc", "proc", "usr", "tmp", "sys"] {
        assert!(
            !Path::new(&format!("/proc/{pid}/root/{host_only}")).exists(),
            "{host_only}"
        );
    }
    let status = proc_status(pid.parse().unwrap());
    for key in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status[key], "0000000000000000", "{key}");
    }
    assert_eq!(status["NoNewPrivs"], "1");
    assert_eq!(status["Seccomp"], "2");
    assert_eq!(
        status["Seccomp_filters"], "3",
        "main, enosys and deny filters"
    );
    assert!(status["Uid"].starts_with(&format!("{u}\t{u}\t{u}")));
    assert_eq!(status["Groups"], "");
    assert_eq!(std::fs::read(format!("/proc/{pid}/environ")).unwrap(), b"");
    for ns in ["mnt", "uts", "ipc", "cgroup"] {
        assert_ne!(
            ns_link(&pid, ns),
            ns_link("self", ns),
            "{ns} namespace not new"
        );
    }
    assert_eq!(
        ns_link(&pid, "net"),
        ns_link("self", "net"),
        "no network flag: host netns"
    );
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cgroups
            .lines()
            .any(|l| l.contains(":pids:")
                && l.ends_with(&format!("{}/{}", jail.parent_cgroup, jail.id))),
        "{cgroups}"
    );
    let procs = std::fs::read_to_string(jail.cgroup_dir("pids").join("cgroup.procs")).unwrap();
    assert_eq!(
        procs.trim(),
        pid,
        "only the VMM in its cgroup (the guard left before exec)"
    );
    // The jail's mounts: read-only root, private /run, tmpfs /dev; nothing else.
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let points: Vec<(&str, &str)> = mounts
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[4], f[5])
        })
        .collect();
    assert_eq!(points.len(), 3, "{mounts}");
    assert!(
        points[0].0 == "/" && points[0].1.starts_with("ro,nosuid,nodev"),
        "{mounts}"
    );
    assert!(points
        .iter()
        .any(|(p, o)| *p == "/run" && o.starts_with("rw,nosuid,nodev,noexec")));
    assert!(points
        .iter()
        .any(|(p, o)| *p == "/dev" && o.starts_with("ro,nosuid,noexec")));

    // A live jail can neither be cleaned up nor reused.
    let out = jail.cleanup_command().output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("still alive"),
        "{out:?}"
    );
    let again = run_with_stdin_closed(&mut jail.command(&[], &[]));
    assert_eq!(again.code(), Some(1), "{}", again.describe());
    assert!(
        again.stderr.contains("belongs to a live jail"),
        "{}",
        again.describe()
    );

    let done = run.finish(T);
    assert_eq!(done.code(), Some(0), "{}", done.describe());
    assert_eq!(done.report.get("done"), "1");
    // Without --cleanup-on-exit the jail stays until `jailer cleanup`.
    assert!(jail.jail_dir().exists());
    let out = jail.cleanup_command().output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(jail.snapshot(), before, "cleanup left something behind");
}

/// The pid the jailer wrote to `<root>/jail-probe.pid` (the keeper writes it once the VMM
/// was exec'd, which may be just after the probe's first lines).
fn pid_file(jail: &Jail) -> i32 {
    let path = jail.chroot_dir().join("jail-probe.pid");
    let start = Instant::now();
    loop {
        if let Some(pid) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.parse().ok())
        {
            return pid;
        }
        assert!(start.elapsed() < T, "no pid file {}", path.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn run_with_stdin_closed(cmd: &mut Command) -> Finished {
    Running::spawn(cmd).finish(T)
}

#[test]
fn new_pid_ns_makes_the_vmm_pid_1() {
    let jail = Jail::new("jl-pidns");
    let mut run = Running::spawn(&mut jail.command(&["--new-pid-ns"], &["hold"]));
    run.wait_for("ready", T);
    assert_eq!(run.report.get("pid"), "1");
    assert_eq!(run.report.get("ppid"), "0");
    // The jailer wrote the pid file and left, as Firecracker's does.
    let start = Instant::now();
    while run.child.try_wait().unwrap().is_none() && start.elapsed() < T {
        std::thread::sleep(Duration::from_millis(5));
    }
    let host_pid: i32 = pid_file(&jail);
    assert_eq!(proc_status(host_pid)["NSpid"], format!("{host_pid}\t1"));
    let done = run.finish(T);
    assert_eq!(done.code(), Some(0), "{}", done.describe());
    assert!(wait_gone(host_pid, T));
    assert!(jail.cleanup_command().status().unwrap().success());
}

#[test]
fn the_supervisor_is_pid_1_cleans_up_and_passes_the_exit_status_on() {
    let jail = Jail::new("jl-super");
    let before = jail.snapshot();
    let mut run = Running::spawn(&mut jail.command(
        &["--new-pid-ns", "--cleanup-on-exit"],
        &["hold", "exit", "7"],
    ));
    run.wait_for("ready", T);
    assert_eq!(
        run.report.get("pid"),
        "2",
        "the VMM is PID 2 under the supervisor's init"
    );
    assert_eq!(run.report.get("ppid"), "1");
    let host_pid: i32 = pid_file(&jail);
    assert_eq!(proc_status(host_pid)["NSpid"], format!("{host_pid}\t2"));
    // The supervisor is not in the jail's cgroup; init and the VMM are.
    let procs = std::fs::read_to_string(jail.cgroup_dir("pids").join("cgroup.procs")).unwrap();
    assert!(
        !procs.lines().any(|p| p == run.child.id().to_string()),
        "{procs}"
    );
    assert_eq!(procs.lines().count(), 2, "init and the VMM: {procs}");
    let done = run.finish(T);
    assert_eq!(done.code(), Some(7), "{}", done.describe());
    assert_eq!(
        jail.snapshot(),
        before,
        "--cleanup-on-exit left something behind"
    );
}

#[test]
fn the_supervisor_forwards_sigterm_and_dies_the_same_way() {
    let jail = Jail::new("jl-sigterm");
    let before = jail.snapshot();
    let mut run = Running::spawn(&mut jail.command(&["--cleanup-on-exit"], &["hold"]));
    run.wait_for("ready", T);
    let vmm = run.report.get("pid").to_owned();
    assert_eq!(run.report.get("ppid"), run.child.id().to_string());
    // SAFETY: kill with the jailer's pid and a signal number.
    unsafe { libc::kill(run.child.id() as i32, libc::SIGTERM) };
    assert!(
        wait_gone(vmm.parse().unwrap(), T),
        "SIGTERM was not forwarded"
    );
    let done = run.finish(T);
    assert_eq!(done.signal(), Some(libc::SIGTERM), "{}", done.describe());
    assert_eq!(jail.snapshot(), before);
}

#[test]
fn cgroup_limits_bite() {
    let jail = Jail::new("jl-pids");
    // pids.max: the probe alone in the cgroup (the supervisor left it) gets 7 more threads.
    let done = run(&mut jail.command(
        &["--cleanup-on-exit", "--cgroup", "pids.max=8"],
        &["threads", "20"],
    ));
    assert_eq!(done.code(), Some(0), "{}", done.describe());
    assert_eq!(
        done.report.get("threads.created"),
        "7",
        "{}",
        done.describe()
    );
    assert_eq!(done.report.get("threads.error"), "EAGAIN");
    // The same with processes (the jail-level policy forbids fork: a test policy allows it).
    let jail = Jail::new("jl-fork");
    let policy = policy_with(
        &jail,
        serde_json::json!([{"syscall": "clone"}, {"syscall": "wait4"}]),
    );
    let done = run(&mut jail.command(
        &[
            "--cleanup-on-exit",
            "--cgroup",
            "pids.max=4",
            "--seccomp-policy",
            policy.to_str().unwrap(),
        ],
        &["fork", "10"],
    ));
    assert_eq!(done.report.get("fork.created"), "3", "{}", done.describe());
    assert_eq!(done.report.get("fork.error"), "EAGAIN");
    assert_eq!(done.code(), Some(0), "{}", done.describe());

    // Memory: 48 MiB, and the probe touches 256 MiB: the OOM killer ends it (SIGKILL),
    // and the supervisor dies the same way.
    let jail = Jail::new("jl-mem");
    let before = jail.snapshot();
    let profile = write_profile(&jail, r#"{"cgroup": {"memory_bytes": 50331648}}"#);
    let done = run(&mut jail.command(
        &["--cleanup-on-exit", "--profile", profile.to_str().unwrap()],
        &["alloc", "256"],
    ));
    assert_eq!(done.signal(), Some(libc::SIGKILL), "{}", done.describe());
    assert!(
        !done.report.has("alloc"),
        "the allocation finished: {}",
        done.describe()
    );
    assert!(done.report.has("alloc.progress_mib"));
    std::fs::remove_file(&profile).unwrap();
    assert_eq!(jail.snapshot(), before);

    // CPU quota and cpuset: written before exec, seen from outside; affinity from inside.
    let jail = Jail::new("jl-cpu");
    let profile = write_profile(
        &jail,
        r#"{"cgroup": {"cpu_quota_us": 20000, "cpu_period_us": 100000, "cpuset_cpus": "0", "pids_max": 16}}"#,
    );
    let mut run = Running::spawn(&mut jail.command(
        &["--cleanup-on-exit", "--profile", profile.to_str().unwrap()],
        &["hold"],
    ));
    run.wait_for("ready", T);
    assert_eq!(run.report.get("cpus"), "0");
    let read = |c: &str, f: &str| {
        std::fs::read_to_string(jail.cgroup_dir(c).join(f))
            .unwrap_or_else(|e| panic!("{c}/{f}: {e}"))
            .trim()
            .to_owned()
    };
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "20000");
    assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(read("cpuset", "cpuset.cpus"), "0");
    assert_eq!(read("pids", "pids.max"), "16");
    let vmm = run.report.get("pid").to_owned();
    for c in ["cpu", "cpuset", "pids"] {
        assert_eq!(read(c, "cgroup.procs"), vmm, "{c}");
    }
    let done = run.finish(T);
    assert_eq!(done.code(), Some(0), "{}", done.describe());
}

fn write_profile(jail: &Jail, text: &str) -> PathBuf {
    let p = jail.base.join("profile.json");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn resource_limits_are_set_and_only_lowered() {
    let jail = Jail::new("jl-rlimit");
    let done = run(&mut jail.command(
        &[
            "--cleanup-on-exit",
            "--resource-limit",
            "no-file=64",
            "--resource-limit",
            "fsize=1048576",
            "--resource-limit",
            "memlock=65536",
            "--resource-limit",
            "nproc=1000",
        ],
        &["open-fds", "100", "write-file", "/run/big", "2097152"],
    ));
    let r = &done.report;
    assert_eq!(done.code(), Some(0), "{}", done.describe());
    assert_eq!(r.get("rlimit.nofile"), "64/64");
    assert_eq!(r.get("rlimit.fsize"), "1048576/1048576");
    assert_eq!(r.get("rlimit.memlock"), "65536/65536");
    assert_eq!(r.get("rlimit.nproc"), "1000/1000");
    assert_eq!(r.get("open_fds.count"), "61", "descriptors 3 to 63");
    assert_eq!(r.get("open_fds.error"), "EMFILE");
    assert_eq!(r.get("write"), "EFBIG:1048576");

    let jail = Jail::new("jl-rlimit-raise");
    let done = run(&mut jail.command(&["--resource-limit", "no-file=1099511627776"], &[]));
    assert_eq!(done.code(), Some(1));
    assert!(
        done.stderr
            .contains("--resource-limit no-file=1099511627776: above the current hard limit"),
        "{}",
        done.describe()
    );
    assert!(!jail.jail_dir().exists());
}

#[test]
fn landlock_denies_the_host_even_through_a_passed_descriptor() {
    let jail = Jail::new("jl-landlock");
    let secret_dir = jail.base.join("outside");
    std::fs::create_dir_all(&secret_dir).unwrap();
    std::fs::write(secret_dir.join("secret.txt"), "outside the jail").unwrap();
    let mut run = Running::spawn(&mut jail.command(
        &["--cleanup-on-exit"],
        &[
            "open",
            "/jail-probe.pid",
            "hold",
            "recv-fd",
            "/run/fd.sock",
            "secret.txt",
        ],
    ));
    run.wait_for("ready", T);
    // Inside the jail where no rule allows (the file is world-readable: only Landlock says no).
    assert_eq!(run.report.get("open./jail-probe.pid"), "EACCES");
    // The test offers a descriptor of a host directory on a socket in the jail's /run.
    let sock_path = jail.chroot_dir().join("run/fd.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let dir = std::fs::File::open(&secret_dir).unwrap();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        send_fd(&stream, &dir).expect("send the descriptor");
    });
    run.release();
    let done = run.finish(T);
    server.join().unwrap();
    assert_eq!(
        done.report.get("recvfd.received"),
        "ok",
        "{}",
        done.describe()
    );
    // The descriptor does reach the host directory (listing needs no new open)...
    assert_eq!(
        done.report.get("recvfd.list"),
        "secret.txt",
        "{}",
        done.describe()
    );
    // ...but nothing can be opened through it.
    assert_eq!(
        done.report.get("recvfd.secret.txt"),
        "EACCES",
        "{}",
        done.describe()
    );
    assert_eq!(done.code(), Some(0), "{}", done.describe());
}

#[test]
fn seccomp_kills_forbidden_syscalls() {
    for (call, signal) in [
        ("mount", libc::SIGSYS),
        ("fork", libc::SIGSYS),
        ("ptrace", libc::SIGSYS),
    ] {
        let jail = Jail::new("jl-seccomp");
        let done = run(&mut jail.command(&["--cleanup-on-exit"], &["syscall", call]));
        assert_eq!(
            done.report.get(&format!("syscall.{call}")),
            "attempting",
            "{}",
            done.describe()
        );
        assert_eq!(done.signal(), Some(signal), "{call}: {}", done.describe());
    }
    // A thread is not a fork: clone with CLONE_THREAD passes (clone3 gets ENOSYS first).
    let jail = Jail::new("jl-seccomp-thread");
    let done = run(&mut jail.command(&["--cleanup-on-exit"], &["threads", "3"]));
    assert_eq!(
        done.report.get("threads.created"),
        "3",
        "{}",
        done.describe()
    );
}

/// A seccomp policy: jail.json with `rules` replacing its allow-list rules for the same
/// syscalls (for probes that need more than a VMM does).
fn policy_with(jail: &Jail, rules: serde_json::Value) -> PathBuf {
    let builtin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/seccomp/jail.json");
    let text = std::fs::read_to_string(&builtin).unwrap();
    let mut policy: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rules = rules.as_array().unwrap();
    let names: Vec<&serde_json::Value> = rules.iter().map(|r| &r["syscall"]).collect();
    let main = policy["main"]["filter"].as_array_mut().unwrap();
    main.retain(|r| !names.contains(&&r["syscall"]));
    main.extend(rules.iter().cloned());
    let path = jail.base.join("policy.json");
    std::fs::write(&path, policy.to_string()).unwrap();
    path
}

/// jail.json that also lets the probe open IPv4 sockets.
fn policy_with_inet(jail: &Jail) -> PathBuf {
    policy_with(
        jail,
        serde_json::json!([
            {"syscall": "socket", "args": [{"index": 0, "type": "dword", "op": "eq", "val": 2}]}
        ]),
    )
}

/// A TCP listener in namespace `ns` (a thread that switches its own network namespace).
fn listen_in(ns: &str, port: u16) -> std::thread::JoinHandle<Vec<String>> {
    let ns_file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on this thread only, with a namespace descriptor kept open.
        let joined = unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(joined, 0, "setns into {ns_file:?}");
        let listener = std::net::TcpListener::bind(("0.0.0.0", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        let mut peers = Vec::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            match listener.accept() {
                Ok((_, peer)) => peers.push(peer.to_string()),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
            if !peers.is_empty() {
                // One connection is all the test makes; give a straggler a moment.
                std::thread::sleep(Duration::from_millis(200));
                if let Ok((_, peer)) = listener.accept() {
                    peers.push(peer.to_string());
                }
                break;
            }
        }
        peers
    });
    rx.recv().unwrap();
    handle
}

#[test]
fn the_egress_firewall_drops_everything_but_the_allow_list() {
    require_tool("nft", "nftables");
    let jail = Jail::new("jl-egress");
    let pair = NsPair::new(&jail.id);
    let port = 18_000 + (std::process::id() % 1000) as u16;
    let (allowed, denied) = (format!("{}.2", pair.net), format!("{}.3", pair.net));
    let listener = listen_in(&pair.b, port);
    let policy = policy_with_inet(&jail);
    let profile = write_profile(
        &jail,
        &format!(r#"{{"landlock": {{"tcp_connect": [{port}]}}}}"#),
    );
    let done = run(&mut jail.command(
        &[
            "--cleanup-on-exit",
            "--netns",
            &pair.a_path(),
            "--firewall",
            "on",
            "--egress-allow",
            &format!("tcp,{allowed}/32,{port}"),
            "--seccomp-policy",
            policy.to_str().unwrap(),
            "--profile",
            profile.to_str().unwrap(),
        ],
        &[
            "connect-tcp",
            &format!("{allowed}:{port}"),
            "3000",
            "connect-tcp",
            &format!("{denied}:{port}"),
            "500",
            "send-udp",
            &format!("{denied}:{port}"),
            "send-udp",
            &format!("{allowed}:{port}"),
        ],
    ));
    let peers = listener.join().unwrap();
    let r = &done.report;
    assert_eq!(done.code(), Some(0), "{}", done.describe());
    assert_eq!(
        r.get(&format!("connect.{allowed}:{port}")),
        "ok",
        "{}",
        done.describe()
    );
    assert_eq!(
        peers.len(),
        1,
        "exactly the allowed connection arrived: {peers:?}"
    );
    assert!(peers[0].starts_with(&format!("{}.1:", pair.net)));
    // Same host, same port, other address: dropped (a SYN that never gets an answer).
    assert_eq!(r.get(&format!("connect.{denied}:{port}")), "ETIMEDOUT");
    // UDP is not on the list: the output hook drops it and sendto says EPERM.
    assert_eq!(r.get(&format!("udp.{denied}:{port}")), "EPERM");
    assert_eq!(r.get(&format!("udp.{allowed}:{port}")), "EPERM");
    // In a joined namespace the jailer removes its table, and only its table.
    let tables = sh("ip", &["netns", "exec", &pair.a, "nft", "list", "tables"]);
    assert!(!tables.contains(&format!("kiln-{}", jail.id)), "{tables}");
}

#[test]
fn a_new_netns_gets_the_tap_and_the_default_policy_and_is_removed() {
    require_tool("nft", "nftables");
    let jail = Jail::new("jl-netns");
    let before = jail.snapshot();
    let mut run = Running::spawn(&mut jail.command(
        &["--cleanup-on-exit", "--new-netns", "--tap", "kt0"],
        &["tap", "kt0", "hold"],
    ));
    run.wait_for("ready", T);
    assert_eq!(
        run.report.get("tap.kt0"),
        "ok",
        "the VMM's uid attaches without capabilities"
    );
    let vmm = run.report.get("pid").to_owned();
    assert!(sh("ip", &["netns", "list"])
        .lines()
        .any(|l| l.starts_with(&jail.id)));
    let link = sh("ip", &["-n", &jail.id, "-d", "link", "show", "kt0"]);
    assert!(
        link.contains("tun type tap") && link.contains(&format!("user {}", jail.uid)),
        "{link}"
    );
    let ruleset = sh(
        "ip",
        &[
            "netns",
            "exec",
            &jail.id,
            "nft",
            "list",
            "table",
            "inet",
            &format!("kiln-{}", jail.id),
        ],
    );
    assert_eq!(ruleset.matches("policy drop").count(), 3, "{ruleset}");
    assert!(ruleset.contains("ct state established,related accept"));
    let ns_file = std::fs::metadata(format!("/run/netns/{}", jail.id)).unwrap();
    let vmm_ns = std::fs::metadata(format!("/proc/{vmm}/ns/net")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        ns_file.ino(),
        vmm_ns.ino(),
        "the VMM is in the new namespace"
    );
    let done = run.finish(T);
    assert_eq!(done.code(), Some(0), "{}", done.describe());
    assert_eq!(
        jail.snapshot(),
        before,
        "namespace, mount, cgroup or files left"
    );
}

#[test]
fn cleanup_leaves_no_directory_cgroup_netns_or_mount_behind() {
    require_tool("nft", "nftables");
    let jail = Jail::new("jl-cleanup");
    let host = jail.base.join("host");
    std::fs::create_dir_all(host.join("disk")).unwrap();
    std::fs::write(host.join("kernel"), "kernel image").unwrap();
    std::fs::write(host.join("disk/data"), "keep me").unwrap();
    std::fs::set_permissions(host.join("disk"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let profile = write_profile(
        &jail,
        r#"{"cgroup": {"memory_bytes": 268435456, "pids_max": 32, "cpu_quota_us": 50000},
            "landlock": {"paths": [{"path": "/data/disk", "access": "rw"}]}}"#,
    );
    let before = jail.snapshot();
    let ro = format!("{}:/kernel", host.join("kernel").display());
    let rw = format!("{}:/data/disk", host.join("disk").display());
    let mut run = Running::spawn(&mut jail.command(
        &[
            "--new-pid-ns",
            "--new-netns",
            "--tap",
            "kt1",
            "--bind-ro",
            &ro,
            "--bind-rw",
            &rw,
            "--profile",
            profile.to_str().unwrap(),
        ],
        &[
            "open",
            "/kernel",
            "open-rw",
            "/kernel",
            "write-file",
            "/data/disk/new",
            "10",
            "hold",
        ],
    ));
    run.wait_for("ready", T);
    let r = run.report.clone();
    assert_eq!(
        r.get("root"),
        "data,dev,jail-probe,jail-probe.pid,kernel,run"
    );
    assert_eq!(r.get("open./kernel"), "ok");
    assert_ne!(r.get("open-rw./kernel"), "ok", "--bind-ro is read-only");
    assert_eq!(r.get("write"), "ok:10", "--bind-rw is writable");
    let during = jail.snapshot();
    assert!(
        !during.netns.is_empty() && !during.mounts.is_empty(),
        "{during:?}"
    );
    assert!(during.cgroups.len() >= 4, "{during:?}");
    let host_pid: i32 = pid_file(&jail);
    let refused = jail.cleanup_command().output().unwrap();
    assert!(!refused.status.success(), "cleanup of a live jail");
    assert_eq!(
        jail.snapshot(),
        during,
        "a refused cleanup changed something"
    );
    let done = run.finish(T);
    assert_eq!(done.code(), Some(0), "{}", done.describe());
    assert!(wait_gone(host_pid, T));
    let out = jail.cleanup_command().output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(jail.snapshot(), before, "left behind after cleanup");
    // The bind sources are the host's: untouched, with what the VMM wrote.
    assert_eq!(
        std::fs::read_to_string(host.join("kernel")).unwrap(),
        "kernel image"
    );
    assert_eq!(
        std::fs::read_to_string(host.join("disk/data")).unwrap(),
        "keep me"
    );
    assert_eq!(std::fs::metadata(host.join("disk/new")).unwrap().len(), 10);
}

#[test]
fn a_failure_inside_the_jail_is_reported_and_undone_in_every_mode() {
    // Landlock needs descriptors; with only three allowed, the jail process fails after
    // pivot_root and the privilege drop, where it can no longer undo anything itself.
    for mode in [
        &[][..],
        &["--new-pid-ns"],
        &["--cleanup-on-exit"],
        &["--cleanup-on-exit", "--new-pid-ns"],
        &["--daemonize"],
    ] {
        let jail = Jail::new("jl-fail");
        let before = jail.snapshot();
        let mut flags = vec!["--new-netns", "--resource-limit", "no-file=4"];
        flags.extend_from_slice(mode);
        let done = run(&mut jail.command(&flags, &[]));
        assert_eq!(done.code(), Some(1), "{mode:?}: {}", done.describe());
        assert!(
            done.stderr.contains("landlock"),
            "{mode:?}: {}",
            done.describe()
        );
        assert_eq!(
            done.stderr.matches("jailer:").count(),
            1,
            "{mode:?}: one report: {}",
            done.describe()
        );
        // The undo may finish just after the report in the guard's mode.
        let start = Instant::now();
        while jail.snapshot() != before && start.elapsed() < T {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(jail.snapshot(), before, "{mode:?}: not undone");
    }
}

#[test]
fn a_failure_on_the_host_side_is_undone_and_never_touches_what_was_there() {
    // The joined namespace already has a tap named kt9: `--tap kt9` must fail (it would
    // take over the orchestrator's interface), and the undo must leave it alone.
    require_tool("ip", "iproute2");
    let jail = Jail::new("jl-hostfail");
    let ns = format!("{}-n", jail.id);
    sh("ip", &["netns", "add", &ns]);
    let cleanup_ns = scopeguard(&ns);
    sh(
        "ip",
        &["-n", &ns, "tuntap", "add", "dev", "kt9", "mode", "tap"],
    );
    let before = jail.snapshot();
    let done = run(&mut jail.command(
        &[
            "--netns",
            &format!("/run/netns/{ns}"),
            "--tap",
            "kt8",
            "--tap",
            "kt9",
        ],
        &[],
    ));
    assert_eq!(done.code(), Some(1), "{}", done.describe());
    assert!(
        done.stderr
            .contains("--tap kt9: create (TUNSETIFF): Device or resource busy"),
        "{}",
        done.describe()
    );
    let links = sh("ip", &["-n", &ns, "link", "show"]);
    assert!(
        links.contains("kt9"),
        "the existing tap was removed: {links}"
    );
    assert!(
        !links.contains("kt8"),
        "the tap the jailer made was left: {links}"
    );
    let mut now = jail.snapshot();
    now.netns.retain(|n| !n.starts_with(&ns));
    let mut was = before;
    was.netns.retain(|n| !n.starts_with(&ns));
    assert_eq!(now, was);
    drop(cleanup_ns);
}

/// Deletes a network namespace made by a test when dropped.
struct NsGuard(String);

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn scopeguard(ns: &str) -> NsGuard {
    NsGuard(ns.to_owned())
}

#[test]
fn daemonize_detaches_with_stdio_on_dev_null() {
    let jail = Jail::new("jl-daemon");
    let before = jail.snapshot();
    let start = Instant::now();
    let done = run(&mut jail.command(&["--daemonize"], &["sleep", "20000"]));
    assert_eq!(done.code(), Some(0), "{}", done.describe());
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(
        done.report.lines.is_empty(),
        "the daemon printed on the caller's stdout"
    );
    let pid: i32 = pid_file(&jail);
    for fd in 0..3 {
        assert_eq!(
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap(),
            Path::new("/dev/null")
        );
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let sid: i32 = fields[3].parse().unwrap();
    // SAFETY: getsid(0) has no preconditions.
    let own_sid = unsafe { libc::getsid(0) };
    assert!(
        sid != own_sid && sid != pid,
        "new session, not its leader (sid {sid})"
    );
    assert_eq!(proc_status(pid)["Seccomp"], "2");
    // SAFETY: kill with a pid and a signal number.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_gone(pid, T));
    assert!(jail.cleanup_command().status().unwrap().success());
    assert_eq!(jail.snapshot(), before);
}

#[test]
fn user_namespace_mode_maps_only_the_jail_identity() {
    let jail = Jail::new("jl-userns");
    let mut run =
        Running::spawn(&mut jail.command(&["--cleanup-on-exit", "--userns"], &["kvm", "hold"]));
    run.wait_for("ready", T);
    let r = run.report.clone();
    zero_caps(&r);
    assert_eq!(r.get("uid"), format!("{0},{0},{0}", jail.uid));
    assert_eq!(r.get("kvm"), "api12");
    let pid = r.get("pid").to_owned();
    let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    assert_eq!(
        map.split_whitespace().collect::<Vec<_>>(),
        [jail.uid.to_string(), jail.uid.to_string(), "1".into()]
    );
    assert_ne!(ns_link(&pid, "user"), ns_link("self", "user"));
    // Root-owned files of the jail show as the overflow id: root is not mapped.
    assert!(
        r.get("dev").contains("/dev/net=d:0:0:65534:65534:755"),
        "{}",
        r.get("dev")
    );
    let done = run.finish(T);
    assert_eq!(done.code(), Some(0), "{}", done.describe());
}

#[test]
fn the_real_vmm_boots_the_tiny_guest_inside_a_full_jail() {
    require_kvm();
    let jail = Jail::new("jl-vmm");
    let vmm = require_bin("vmm");
    let guest = tiny::tiny_guest();
    let config = jail.base.join("vm.json");
    std::fs::write(
        &config,
        r#"{"boot-source": {"kernel_image_path": "/guest.elf", "boot_args": "kiln.test=boot"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 64}}"#,
    )
    .unwrap();
    let before = jail.snapshot();
    let profile = write_profile(
        &jail,
        r#"{"cgroup": {"memory_bytes": 268435456, "pids_max": 32}}"#,
    );
    let mut cmd = Command::new(&jail.jailer);
    cmd.arg("--id")
        .arg(&jail.id)
        .arg("--exec-file")
        .arg(&vmm)
        .args([
            "--uid",
            &jail.uid.to_string(),
            "--gid",
            &jail.gid.to_string(),
        ])
        .arg("--chroot-base-dir")
        .arg(&jail.base)
        .args([
            "--parent-cgroup",
            &jail.parent_cgroup,
            "--parent-cgroup-relative",
        ])
        .args([
            "--new-pid-ns",
            "--cleanup-on-exit",
            "--new-netns",
            "--tap",
            "kt2",
        ])
        .arg("--bind-ro")
        .arg(format!("{}:/guest.elf", guest.display()))
        .arg("--bind-ro")
        .arg(format!("{}:/vm.json", config.display()))
        .arg("--profile")
        .arg(&profile)
        .args(["--", "--config-file", "/vm.json", "--no-api"]);
    let done = run(&mut cmd);
    let out = done.report.lines.join("\n");
    assert!(
        out.contains(tiny::START_PVH) || out.contains(tiny::START_LINUX64),
        "{}",
        done.describe()
    );
    assert!(out.contains(tiny::DONE), "{}", done.describe());
    assert_eq!(done.code(), Some(0), "{}", done.describe());
    std::fs::remove_file(&profile).unwrap();
    std::fs::remove_file(&config).unwrap();
    assert_eq!(jail.snapshot(), before);
}
