//! The jailer end to end, as root on this host: each test builds a real jail around the
//! `jail-probe` binary (or the real `vmm`) and checks the jail's effect from inside (what the
//! probe reports) and from outside (/proc, cgroupfs, `ip netns`, the file system): the jail
//! seen from both sides, the PID namespace and the supervisor, cleanup and the undo of a
//! failure, daemonizing, user-namespace mode, and the real VMM booting the tiny guest. The
//! limits (cgroups, rlimits, Landlock, seccomp) are in `jailer_limits.rs`, the network
//! (egress firewall, taps, namespaces) in `jailer_network.rs`.
//!
//! Needs root, /dev/kvm, nft (Debian package nftables) and ip (iproute2). Build both packages first: `cargo test -p jailer -p kiln-tests
//! --test jailer` does.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_tests::jail::{run, Jail, Report, Running};
use kiln_tests::process::{proc_status, read_pid_file, wait_gone};
use kiln_tests::{require_bin, require_kvm, require_program, tiny};

const T: Duration = Duration::from_secs(20);

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
    // Nothing of the caller's environment (cargo's, here): only the host CPUID the jailer
    // asked KVM for, for the VMM (jailer/src/host_cpuid.rs).
    assert_eq!(r.get("env"), "KILN_HOST_CPUID");
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
        "main, enosys and hugetlb filters"
    );
    assert!(status["Uid"].starts_with(&format!("{u}\t{u}\t{u}")));
    assert_eq!(status["Groups"], "");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        environ.starts_with(b"KILN_HOST_CPUID=[[") && environ.ends_with(b"]]\0"),
        "{}",
        String::from_utf8_lossy(&environ)
    );
    assert_eq!(
        environ.iter().filter(|&&b| b == 0).count(),
        1,
        "one variable"
    );
    for ns in ["mnt", "uts", "ipc", "cgroup"] {
        assert_ne!(
            ns_link(&pid, ns),
            ns_link("self", ns),
            "{ns} namespace not new"
        );
    }
    // No network flag: an empty network namespace of the jail's own (only lo, down), never
    // the host's.
    assert_ne!(
        ns_link(&pid, "net"),
        ns_link("self", "net"),
        "no network flag: the host's netns"
    );
    let links = std::process::Command::new("nsenter")
        .args(["-t", &pid, "-n", "ip", "-o", "link"])
        .output()
        .expect("nsenter (util-linux)");
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(
        links.starts_with("1: lo: <LOOPBACK>") && links.contains("state DOWN"),
        "{links}"
    );
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cgroups
            .lines()
            .any(|l| l.contains(":pids:")
                && l.ends_with(&format!("{}/{}", jail.parent_cgroup, jail.id))),
        "{cgroups}"
    );
    // And in the unified hierarchy (hugetlb on this hybrid host): the jailer, becoming the
    // VMM, joined it itself.
    assert!(
        cgroups
            .lines()
            .any(|l| l.starts_with("0::")
                && l.ends_with(&format!("{}/{}", jail.parent_cgroup, jail.id))),
        "{cgroups}"
    );
    let procs = std::fs::read_to_string(jail.cgroup_dir("pids").join("cgroup.procs")).unwrap();
    assert_eq!(
        procs.trim(),
        pid,
        "only the VMM in its cgroup (the guard left before exec)"
    );
    // The jail's mounts: read-only root, its own /run tmpfs, tmpfs /dev; nothing else — and
    // the same three again, stacked on the first (the jail is chrooted into the copy, which
    // forbids it user namespaces).
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let fields: Vec<Vec<&str>> = mounts.lines().map(|l| l.split(' ').collect()).collect();
    let points: Vec<(&str, &str)> = fields.iter().map(|f| (f[4], f[5])).collect();
    assert_eq!(points.len(), 6, "{mounts}");
    assert_eq!(points[..3], points[3..], "{mounts}");
    assert_eq!(
        fields[3][1], fields[0][0],
        "the copy is stacked on the root: {mounts}"
    );
    assert!(
        points[0].0 == "/" && points[0].1.starts_with("ro,nosuid,nodev"),
        "{mounts}"
    );
    assert!(points
        .iter()
        .any(|(p, o)| *p == "/run" && o.starts_with("rw,nosuid,nodev,noexec")));
    assert!(
        mounts.contains(&format!(
            " /run rw,nosuid,nodev,noexec,relatime - tmpfs tmpfs rw,size=4096k,nr_inodes=64,mode=700,uid={u},gid={g}"
        )),
        "{mounts}"
    );
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
    let again = Running::spawn(&mut jail.command(&[], &[])).finish(T);
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
    read_pid_file(&jail.chroot_dir().join("jail-probe.pid"), T)
}

/// A chroot base that does not exist (`/srv/jailer` on a fresh host) is made, as Firecracker's
/// jailer makes it, and the jail is made under it.
#[test]
fn a_missing_chroot_base_is_made() {
    let jail = Jail::new("jl-newbase");
    let fresh = jail.base.join("fresh/base");
    // The kit's command with its --chroot-base-dir pointed at `fresh`, which does not exist.
    let kit = jail.command(&[], &["hold"]);
    let mut args: Vec<std::ffi::OsString> = kit.get_args().map(|a| a.to_owned()).collect();
    let at = args
        .iter()
        .position(|a| a == "--chroot-base-dir")
        .expect("the kit passes --chroot-base-dir");
    args[at + 1] = fresh.clone().into_os_string();
    let mut cmd = std::process::Command::new(kit.get_program());
    cmd.args(&args);
    let mut run = Running::spawn(&mut cmd);
    run.wait_for("ready", T);
    let chroot = fresh.join("jail-probe").join(&jail.id).join("root");
    assert!(chroot.is_dir(), "no jail under the made base");
    let done = run.finish(T);
    assert_eq!(done.code(), Some(0), "{}", done.describe());
    let cleaned = std::process::Command::new(&jail.jailer)
        .args(["cleanup", "--id", &jail.id, "--exec-file"])
        .arg(&jail.probe)
        .arg("--chroot-base-dir")
        .arg(&fresh)
        .status()
        .unwrap();
    assert!(cleaned.success());
    assert!(!fresh.join("jail-probe").join(&jail.id).exists());
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
    // In the unified hierarchy, init was born in the jail's cgroup (clone3 into it) and the
    // VMM with it; the supervisor never joined it.
    let v2 = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
            .unwrap()
    };
    let jail_v2 = format!("{}/{}", jail.parent_cgroup, jail.id);
    assert!(
        v2(&host_pid.to_string()).ends_with(&jail_v2),
        "{}",
        v2(&host_pid.to_string())
    );
    assert!(!v2(&run.child.id().to_string()).ends_with(&jail_v2));
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
fn cleanup_leaves_no_directory_cgroup_netns_or_mount_behind() {
    require_program("nft", "nftables");
    let jail = Jail::new("jl-cleanup");
    let host = jail.base.join("host");
    std::fs::create_dir_all(host.join("disk")).unwrap();
    std::fs::write(host.join("kernel"), "kernel image").unwrap();
    std::fs::write(host.join("disk/data"), "keep me").unwrap();
    std::fs::set_permissions(host.join("disk"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let profile = jail.write_profile(
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
    let refused = jail
        .cleanup_command()
        .args(["--wait-ms", "300"])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "cleanup of a live jail");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("the jail is still alive") && err.contains("after waiting 300 ms"),
        "{err}"
    );
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
fn the_last_jail_out_removes_the_parent_cgroup_whichever_jail_made_it() {
    // The first jail makes the parent cgroup and ends while the second still uses it: it
    // cannot remove it then, and the second did not make it.
    let first = Jail::new("jl-shared");
    let mut second = Jail::new("jl-shared");
    second.parent_cgroup = first.parent_cgroup.clone();
    let before = first.snapshot();
    let profile = first.write_profile(
        r#"{"cgroup": {"memory_bytes": 268435456, "pids_max": 32, "cpu_quota_us": 50000}}"#,
    );
    let flags = [
        "--cleanup-on-exit",
        "--share-host-netns",
        "--profile",
        profile.to_str().unwrap(),
    ];
    let mut a = Running::spawn(&mut first.command(&flags, &["hold"]));
    a.wait_for("ready", T);
    let parent = first.cgroup_dir("pids").parent().unwrap().to_path_buf();
    assert!(parent.is_dir(), "{} was not made", parent.display());
    let mut b = Running::spawn(&mut second.command(&flags, &["hold"]));
    b.wait_for("ready", T);
    let done = a.finish(T);
    assert_eq!(done.code(), Some(0), "{}", done.describe());
    assert!(
        !first.cgroup_dir("pids").exists() && second.cgroup_dir("pids").is_dir(),
        "the first jail's cgroup goes, the second's stays"
    );
    assert!(parent.is_dir(), "removed while the second jail uses it");
    let done = b.finish(T);
    assert_eq!(done.code(), Some(0), "{}", done.describe());
    assert_eq!(first.snapshot(), before, "left behind by the last jail out");
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
        let done = run(&mut jail.command(&flags, &[]), T);
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
fn daemonize_detaches_with_stdio_on_dev_null() {
    let jail = Jail::new("jl-daemon");
    let before = jail.snapshot();
    let start = Instant::now();
    let done = run(&mut jail.command(&["--daemonize"], &["sleep", "20000"]), T);
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
    let profile = jail.write_profile(r#"{"cgroup": {"memory_bytes": 268435456, "pids_max": 32}}"#);
    let guest_bind = format!("{}:/guest.elf", guest.display());
    let config_bind = format!("{}:/vm.json", config.display());
    let done = run(
        &mut jail.command_for(
            &vmm,
            &[
                "--new-pid-ns",
                "--cleanup-on-exit",
                "--new-netns",
                "--tap",
                "kt2",
                "--bind-ro",
                &guest_bind,
                "--bind-ro",
                &config_bind,
                "--profile",
                profile.to_str().expect("utf-8 path"),
            ],
            &["--config-file", "/vm.json", "--no-api", "--level", "Debug"],
        ),
        T,
    );
    let out = done.report.lines.join("\n");
    // KVM's CPUID came from the jailer (asked while it made the jail), not asked again.
    assert!(
        done.stderr.contains("host CPUID: taken from the jailer"),
        "{}",
        done.describe()
    );
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
