//! The jailer's limits end to end, as root on this host, each checked from inside a real
//! jail around `jail-probe`: cgroup limits (pids, memory and the OOM killer), resource
//! limits (set, and only ever lowered), Landlock (even through a descriptor passed in),
//! and the seccomp policy (a forbidden syscall kills the process).
//!
//! Needs root. Build both packages first: `cargo test -p jailer -p kiln-tests --test
//! jailer_limits` does.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use kiln_tests::fdpass::send_fd;
use kiln_tests::jail::{run, Jail, Running};

const T: Duration = Duration::from_secs(20);

#[test]
fn cgroup_limits_bite() {
    let jail = Jail::new("jl-pids");
    // pids.max: the probe alone in the cgroup (the supervisor left it) gets 7 more threads.
    let done = run(
        &mut jail.command(
            &["--cleanup-on-exit", "--cgroup", "pids.max=8"],
            &["threads", "20"],
        ),
        T,
    );
    assert_eq!(done.code(), Some(0), "{}", done.describe());
    assert_eq!(
        done.report.get("threads.created"),
        "7",
        "{}",
        done.describe()
    );
    assert_eq!(done.report.get("threads.error"), "EAGAIN");
    // The same with processes (the jail-level policy forbids fork: a test policy allows it;
    // musl's fork() is the fork system call).
    let jail = Jail::new("jl-fork");
    let policy =
        jail.seccomp_policy_with(serde_json::json!([{"syscall": "fork"}, {"syscall": "wait4"}]));
    let done = run(
        &mut jail.command(
            &[
                "--cleanup-on-exit",
                "--cgroup",
                "pids.max=4",
                "--seccomp-policy",
                policy.to_str().unwrap(),
            ],
            &["fork", "10"],
        ),
        T,
    );
    assert_eq!(done.report.get("fork.created"), "3", "{}", done.describe());
    assert_eq!(done.report.get("fork.error"), "EAGAIN");
    assert_eq!(done.code(), Some(0), "{}", done.describe());

    // Processes left behind: the keeper kills what is still in the jail's cgroups when the
    // jailed process ends (through pidfds: a recycled pid is never hit), and nothing survives.
    let jail = Jail::new("jl-orphans");
    let policy = jail.seccomp_policy_with(serde_json::json!([{"syscall": "fork"}]));
    let started = std::time::Instant::now();
    let done = run(
        &mut jail.command(
            &[
                "--cleanup-on-exit",
                "--seccomp-policy",
                policy.to_str().unwrap(),
            ],
            &["orphans", "3"],
        ),
        T,
    );
    assert_eq!(
        done.report.get("orphans.created"),
        "3",
        "{}",
        done.describe()
    );
    assert_eq!(done.code(), Some(0), "{}", done.describe());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the jail waited for its orphans instead of killing them"
    );
    let me = std::process::id().to_string();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy() != me.as_str())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&jail.id))
        .collect();
    assert!(left.is_empty(), "processes of the jail left: {left:?}");

    // Memory: 48 MiB, and the probe touches 256 MiB: the OOM killer ends it (SIGKILL),
    // and the supervisor dies the same way.
    let jail = Jail::new("jl-mem");
    let before = jail.snapshot();
    let profile = jail.write_profile(r#"{"cgroup": {"memory_bytes": 50331648}}"#);
    let done = run(
        &mut jail.command(
            &["--cleanup-on-exit", "--profile", profile.to_str().unwrap()],
            &["alloc", "256"],
        ),
        T,
    );
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
    let profile = jail.write_profile(
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

#[test]
fn resource_limits_are_set_and_only_lowered() {
    let jail = Jail::new("jl-rlimit");
    let done = run(
        &mut jail.command(
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
        ),
        T,
    );
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
    let done = run(
        &mut jail.command(&["--resource-limit", "no-file=1099511627776"], &[]),
        T,
    );
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
        let done = run(
            &mut jail.command(&["--cleanup-on-exit"], &["syscall", call]),
            T,
        );
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
    let done = run(
        &mut jail.command(&["--cleanup-on-exit"], &["threads", "3"]),
        T,
    );
    assert_eq!(
        done.report.get("threads.created"),
        "3",
        "{}",
        done.describe()
    );
}
