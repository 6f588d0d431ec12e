//! Security suite, part 1: the escape probe in a real jail.
//!
//! `escape-probe` (tests/src/bin/escape-probe) replaces the VMM in a jail built by the real
//! jailer under the repository's default tenant profile (policies/tenant/default.json),
//! with a PID namespace, a network namespace joined to the "outside" by a veth pair and the
//! egress firewall, and `--cleanup-on-exit`. Each of its attempts (files, devices, mounts,
//! capabilities, signals, network, kernel interfaces, KVM, resources, descriptors) must end
//! exactly as the table below says: an errno, or death by SIGSYS (seccomp kills the
//! process, so such attempts run in a jail of their own) or SIGKILL (the memory cgroup's
//! OOM killer).
//!
//! Then the same probe runs with one layer switched off at a time, and pairs of layers for
//! the network, proving each layer stops its attempts on its own: seccomp (an allow-all
//! `--seccomp-policy`), Landlock and the identity/capability drop (`--diagnose-without`,
//! a debug-build-only jailer flag), the PID and network namespaces (no `--new-pid-ns`, no
//! `--netns`; the mount, IPC, UTS and cgroup namespaces and pivot_root cannot be switched
//! off), the cgroup limits and the rlimits (the profile without its `cgroup` or `rlimits`
//! section), the firewall (`--firewall off`). Where the layer switched off was the only one
//! to stop an attempt, the expected outcome in that column is `ESCAPED`; in the full jail
//! nothing may escape.
//!
//! From outside, the test also checks that the host process the probe tries to kill is
//! alive and that no packet reached the listeners where the probe reports it blocked.
//!
//! The table of every attempt in every configuration is printed on stderr (`--nocapture`)
//! and written to `<target>/security/jail.txt`. Needs root and /dev/kvm, `ip` (iproute2),
//! `nft` (nftables). Alone: `cargo test -p kiln-tests --test security_jail -- --nocapture`.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::Arc;

use kiln_tests::netns::NsPair;
use kiln_tests::security::outside::{file_handle, serve_fd, Listeners, Victim};
use kiln_tests::security::probe::{attempts, matches, run_jailer, AttemptInfo, Got, ProbeRun};
use kiln_tests::security::report::{table, write_report, Row};
use kiln_tests::security::tenant::{default_profile_path, Decoy, Slots, Tenant, ALLOW_ALL_POLICY};
use kiln_tests::{require_kvm, require_program, require_root};

/// A jail configuration: the full jail, or one with layers switched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Cfg {
    Full,
    NoSeccomp,
    NoLandlock,
    NoPrivileges,
    NoNamespaces,
    NoCgroups,
    NoRlimits,
    NoFirewall,
    NoSeccompLandlock,
    NoSeccompFirewall,
}

use Cfg::*;

impl Cfg {
    const ALL: [Cfg; 10] = [
        Full,
        NoSeccomp,
        NoLandlock,
        NoPrivileges,
        NoNamespaces,
        NoCgroups,
        NoRlimits,
        NoFirewall,
        NoSeccompLandlock,
        NoSeccompFirewall,
    ];

    fn name(self) -> &'static str {
        match self {
            Full => "full",
            NoSeccomp => "-seccomp",
            NoLandlock => "-landlock",
            NoPrivileges => "-privileges",
            NoNamespaces => "-pid/net-ns",
            NoCgroups => "-cgroups",
            NoRlimits => "-rlimits",
            NoFirewall => "-firewall",
            NoSeccompLandlock => "-seccomp-landlock",
            NoSeccompFirewall => "-seccomp-firewall",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Full => "the full jail under the default profile",
            NoSeccomp => "seccomp off (allow-all --seccomp-policy)",
            NoLandlock => "Landlock off (--diagnose-without landlock)",
            NoPrivileges => "identity and capabilities kept: root with every capability (--diagnose-without privileges)",
            NoNamespaces => "no PID or network namespace (no --new-pid-ns; --share-host-netns: the host's)",
            NoCgroups => "no cgroup limits (profile without `cgroup`)",
            NoRlimits => "no rlimits from the profile (the jailer's defaults: no-file 2048, core 0)",
            NoFirewall => "no egress firewall (--firewall off)",
            NoSeccompLandlock => "seccomp and Landlock off (what the firewall stops alone)",
            NoSeccompFirewall => "seccomp and the firewall off (what Landlock stops alone)",
        }
    }
}

/// Expected outcome per attempt: in the full jail (`KEY layer`: the errno or signal, then
/// the layer that stops it first), and the configurations where it differs.
type Expectation = (&'static str, &'static str, &'static [(Cfg, &'static str)]);

const EXPECTED: &[Expectation] = &[
    // Descriptors.
    ("fds.inherited", "NONE jailer-closes-fds", &[]),
    (
        "fds.passed-dir",
        "SIGSYS seccomp(no-recvmsg)",
        &seccomp_off_landlock_decides("EACCES landlock", "ESCAPED"),
    ),
    // Files.
    ("fs.etc-shadow", "ENOENT chroot", &[]),
    ("fs.proc-1-root", "ENOENT chroot(no-/proc)", &[]),
    ("fs.proc-self-cwd", "ENOENT chroot(no-/proc)", &[]),
    ("fs.proc-self-fd", "ENOENT chroot(no-/proc)", &[]),
    ("fs.sys-cgroup", "ENOENT chroot(no-/sys)", &[]),
    ("fs.dotdot", "ENOENT chroot", &[]),
    (
        "fs.dotdot-dirfd",
        "SIGSYS seccomp(no-openat)",
        &seccomp_off("ENOENT chroot"),
    ),
    ("fs.other-tenant", "ENOENT chroot", &[]),
    (
        "fs.openat2",
        "SIGSYS seccomp",
        &seccomp_off("EXDEV chroot(stacked-root)"),
    ),
    ("fs.open-by-handle", "SIGSYS seccomp", S_OFF_EPERM),
    ("fs.write-root", "EROFS read-only-root", &[]),
    ("fs.overwrite-vmm", "ETXTBSY kernel(running)", &[]),
    // Landlock reads the whole root (files an orchestrator stages there, Firecracker's way);
    // the pid file is root's only (0600).
    (
        "fs.read-pidfile",
        "EACCES uid(root-only-file)",
        &[(NoPrivileges, "ESCAPED")],
    ),
    (
        "fs.write-pidfile",
        "EACCES uid(root-owned)",
        &[(NoPrivileges, "EROFS read-only-root")],
    ),
    (
        "fs.mkdir-dev",
        "SIGSYS seccomp",
        &seccomp_off("EROFS read-only-/dev"),
    ),
    (
        "fs.symlink",
        "SIGSYS seccomp",
        &seccomp_off_landlock_decides("EACCES landlock", "ESCAPED"),
    ),
    (
        "fs.mkdir-run",
        "SIGSYS seccomp",
        &seccomp_off_landlock_decides("EACCES landlock", "ESCAPED"),
    ),
    (
        "fs.mkfifo-run",
        "SIGSYS seccomp",
        &seccomp_off_landlock_decides("EACCES landlock", "ESCAPED"),
    ),
    ("fs.hardlink", "SIGSYS seccomp", S_OFF_EXDEV),
    ("fs.chroot-escape", "SIGSYS seccomp", S_OFF_EPERM),
    ("fs.exec-from-run", "EACCES noexec-/run+landlock", &[]),
    (
        "fs.setuid-files",
        "SIGSYS seccomp(no-getdents64)",
        &seccomp_off("NONE jailer-strips-setuid"),
    ),
    ("fs.file-caps", "SIGSYS seccomp", S_OFF_EPERM),
    // Devices.
    ("devices.host-nodes", "ENOENT chroot(own-/dev)", &[]),
    (
        "devices.mknod-char",
        "SIGSYS seccomp",
        &seccomp_off_landlock_decides("EACCES landlock", "EPERM caps"),
    ),
    (
        "devices.mknod-block",
        "SIGSYS seccomp",
        &seccomp_off_landlock_decides("EACCES landlock", "EPERM caps"),
    ),
    ("devices.urandom-write", "EACCES landlock", L_OFF_ESCAPED),
    (
        "devices.urandom-ioctl",
        "SIGSYS seccomp(ioctl-allow-list)",
        &seccomp_off_landlock_decides("EACCES landlock", "EPERM caps"),
    ),
    (
        "devices.tun-new-tap",
        "EPERM caps",
        &[(NoPrivileges, "ESCAPED")],
    ),
    (
        "devices.tiocsti",
        "SIGSYS seccomp(ioctl-allow-list)",
        S_OFF_ENOTTY,
    ),
    (
        "devices.tty-mode",
        "SIGSYS seccomp(ioctl-allow-list)",
        S_OFF_ENOTTY,
    ),
    (
        "devices.tty-winsize",
        "SIGSYS seccomp(ioctl-allow-list)",
        S_OFF_ENOTTY,
    ),
    (
        "devices.tty-ldisc",
        "SIGSYS seccomp(ioctl-allow-list)",
        S_OFF_ENOTTY,
    ),
    (
        "devices.tioclinux",
        "SIGSYS seccomp(ioctl-allow-list)",
        S_OFF_ENOTTY,
    ),
    ("devices.userfaultfd-node", "ENOENT chroot(own-/dev)", &[]),
    // Mounts.
    ("mount.tmpfs", "SIGSYS seccomp", S_OFF_EPERM),
    ("mount.proc", "SIGSYS seccomp", S_OFF_EPERM),
    ("mount.remount-rw", "SIGSYS seccomp", S_OFF_EPERM),
    ("mount.umount-root", "SIGSYS seccomp", S_OFF_EPERM),
    ("mount.pivot-root", "SIGSYS seccomp", S_OFF_EPERM),
    ("mount.fsopen", "SIGSYS seccomp", S_OFF_EPERM),
    ("mount.open-tree", "SIGSYS seccomp", S_OFF_EPERM),
    ("mount.setattr", "SIGSYS seccomp", S_OFF_EPERM),
    // Privileges.
    ("caps.setuid-root", "SIGSYS seccomp", S_OFF_EPERM),
    ("caps.setgid-root", "SIGSYS seccomp", S_OFF_EPERM),
    ("caps.setgroups", "SIGSYS seccomp", S_OFF_EPERM),
    ("caps.capset", "SIGSYS seccomp", S_OFF_EPERM),
    ("caps.ambient-raise", "EPERM caps(empty-inheritable)", &[]),
    ("caps.no-new-privs-off", "EINVAL kernel(one-way)", &[]),
    (
        "caps.userns",
        "SIGSYS seccomp",
        &seccomp_off("EPERM chroot(no-user-namespaces)"),
    ),
    ("caps.unshare-ns", "SIGSYS seccomp", S_OFF_EPERM),
    (
        "caps.clone-thread-ns",
        "SIGSYS seccomp(clone-flags)",
        S_OFF_EPERM,
    ),
    // Signals and tracing.
    ("signals.kill-victim", "SIGSYS seccomp", S_OFF_ESRCH),
    (
        "signals.tkill-victim",
        "ESRCH pid-ns",
        &[(NoNamespaces, "EPERM landlock(scope)")],
    ),
    ("signals.tkill-init", "EPERM uid+landlock(scope)", &[]),
    ("signals.kill-all", "SIGSYS seccomp", S_OFF_ESRCH),
    (
        "signals.pid-scan",
        "ESRCH pid-ns",
        &[(NoNamespaces, "ESCAPED")],
    ),
    ("signals.ptrace-victim", "SIGSYS seccomp", S_OFF_ESRCH),
    ("signals.ptrace-init", "SIGSYS seccomp", S_OFF_EPERM),
    ("signals.process-vm-readv", "SIGSYS seccomp", S_OFF_ESRCH),
    // Network.
    (
        "net.tcp-host",
        "SIGSYS seccomp",
        &seccomp_off_landlock_decides("EACCES landlock", "ETIMEDOUT firewall"),
    ),
    (
        "net.udp-host",
        "SIGSYS seccomp",
        &[
            (NoSeccomp, "EPERM firewall"),
            (NoSeccompLandlock, "EPERM firewall"),
            (NoSeccompFirewall, "ESCAPED"),
        ],
    ),
    (
        "net.tcp-listen",
        "SIGSYS seccomp",
        &seccomp_off_landlock_decides("EACCES landlock", "ESCAPED"),
    ),
    ("net.packet-socket", "SIGSYS seccomp", S_OFF_EPERM),
    ("net.netlink-addr", "SIGSYS seccomp", S_OFF_EPERM),
    ("net.abstract-unix", "EPERM landlock(scope)", L_OFF_ESCAPED),
    ("net.other-tenant-socket", "ENOENT chroot", &[]),
    (
        "net.other-tenant-tcp",
        "SIGSYS seccomp",
        &seccomp_off_landlock_decides("EACCES landlock", "ETIMEDOUT firewall"),
    ),
    // Kernel interfaces: seccomp first; then what the host kernel says to an unprivileged
    // process (its sysctls: unprivileged_bpf_disabled, perf_event_paranoid,
    // unprivileged_userfaultfd, dmesg_restrict; kexec, modules and iopl may be compiled out).
    (
        "kernel.bpf",
        "SIGSYS seccomp",
        &seccomp_off("EPERM caps(unprivileged_bpf_disabled)"),
    ),
    (
        "kernel.perf",
        "SIGSYS seccomp",
        &seccomp_off("EACCES kernel(paranoid)"),
    ),
    ("kernel.keyctl", "SIGSYS seccomp", S_OFF_ESCAPED),
    ("kernel.kexec", "SIGSYS seccomp", S_OFF_EPERM_OR_ENOSYS),
    ("kernel.module", "SIGSYS seccomp", S_OFF_EPERM_OR_ENOSYS),
    (
        "kernel.io-uring",
        "SIGSYS seccomp",
        &seccomp_off("ENOMEM rlimit(memlock=0)"),
    ),
    (
        "kernel.userfaultfd",
        "SIGSYS seccomp",
        &seccomp_off("EPERM caps(unprivileged_userfaultfd=0)"),
    ),
    ("kernel.iopl", "SIGSYS seccomp", S_OFF_EPERM_OR_ENOSYS),
    ("kernel.reboot", "SIGSYS seccomp", S_OFF_EPERM),
    ("kernel.syslog", "SIGSYS seccomp", S_OFF_EPERM),
    ("kernel.clock-settime", "SIGSYS seccomp", S_OFF_EPERM),
    ("kernel.sethostname", "SIGSYS seccomp", S_OFF_EPERM),
    ("kernel.swapon", "SIGSYS seccomp", S_OFF_EPERM),
    ("kernel.memfd-exec", "SIGSYS seccomp", S_OFF_ESCAPED),
    // KVM.
    ("kvm.host-memory-slot", "EINVAL kvm(address-check)", &[]),
    (
        "kvm.ioctl-other-device",
        "EACCES landlock(ioctl)",
        &landlock_off("EINVAL device"),
    ),
    // Resources.
    (
        "resources.thread-bomb",
        "EAGAIN cgroup(pids)",
        &[(NoCgroups, "ESCAPED")],
    ),
    (
        "resources.fork-bomb",
        "SIGSYS seccomp",
        &seccomp_off("EAGAIN cgroup(pids)"),
    ),
    (
        "resources.memory-hog",
        "SIGKILL cgroup(memory,OOM)",
        &[(NoCgroups, "ESCAPED")],
    ),
    (
        "resources.memfd-hog",
        "SIGSYS seccomp(no-memfd)",
        &seccomp_off("SIGKILL cgroup(memory,OOM)"),
    ),
    (
        "resources.hugetlb",
        "SIGSYS seccomp(hugetlb)",
        &seccomp_off("ENOMEM no-pool(security_host:cgroup-hugetlb)"),
    ),
    (
        "resources.mlock",
        "EPERM rlimit(memlock=0)",
        &[(NoPrivileges, "ESCAPED"), (NoRlimits, "ESCAPED")],
    ),
    (
        "resources.huge-file",
        "EFBIG rlimit(fsize)",
        &[(NoRlimits, "ESCAPED")],
    ),
    ("resources.run-fill", "ENOSPC tmpfs(/run-size)", &[]),
    ("resources.run-inodes", "ENOSPC tmpfs(/run-inodes)", &[]),
    (
        "resources.run-fallocate",
        "SIGSYS seccomp",
        &seccomp_off("ENOSPC tmpfs(/run-size)"),
    ),
    (
        "resources.fd-exhaust",
        "EMFILE rlimit(no-file)",
        &[(NoRlimits, "ESCAPED")],
    ),
];

/// With seccomp off (alone, or with Landlock or the firewall): `outcome` in all three.
const fn seccomp_off(outcome: &'static str) -> [(Cfg, &'static str); 3] {
    seccomp_off_landlock_decides(outcome, outcome)
}

/// With seccomp off: `landlock_on` while Landlock is still on (seccomp alone, or with the
/// firewall), `landlock_off` when it is off too.
const fn seccomp_off_landlock_decides(
    landlock_on: &'static str,
    landlock_off: &'static str,
) -> [(Cfg, &'static str); 3] {
    [
        (NoSeccomp, landlock_on),
        (NoSeccompLandlock, landlock_off),
        (NoSeccompFirewall, landlock_on),
    ]
}

/// With Landlock off (alone, or with seccomp): `outcome` in both.
const fn landlock_off(outcome: &'static str) -> [(Cfg, &'static str); 2] {
    [(NoLandlock, outcome), (NoSeccompLandlock, outcome)]
}

/// Seccomp stops it; with seccomp off the kernel answers as below.
const S_OFF_EPERM: &[(Cfg, &str)] = &seccomp_off("EPERM caps");
const S_OFF_EPERM_OR_ENOSYS: &[(Cfg, &str)] = &seccomp_off("EPERM|ENOSYS caps(or-compiled-out)");
const S_OFF_ESRCH: &[(Cfg, &str)] = &seccomp_off("ESRCH pid-ns");
const S_OFF_EXDEV: &[(Cfg, &str)] = &seccomp_off("EXDEV separate-/run-mount");
const S_OFF_ENOTTY: &[(Cfg, &str)] = &seccomp_off("ENOTTY stdin-not-a-tty");
/// Only seccomp stops it.
const S_OFF_ESCAPED: &[(Cfg, &str)] = &seccomp_off("ESCAPED");
/// Only Landlock stops it.
const L_OFF_ESCAPED: &[(Cfg, &str)] = &landlock_off("ESCAPED");

/// What a configuration expects of `attempt`: (key to match, layer).
fn expected(attempt: &str, cfg: Cfg) -> Option<(String, String)> {
    let (_, full, overrides) = EXPECTED.iter().find(|(n, _, _)| *n == attempt)?;
    let text = overrides
        .iter()
        .find(|(c, _)| *c == cfg)
        .map_or(*full, |(_, e)| *e);
    let mut parts = text.splitn(2, ' ');
    let key = parts.next().unwrap_or_default().to_owned();
    Some((key, parts.next().unwrap_or_default().to_owned()))
}

/// The world outside one configuration's jails.
struct World {
    tenant: Tenant,
    pair: NsPair,
    listeners: Listeners,
    victim: Victim,
    decoy: Decoy,
    handle: String,
    profiles: BTreeMap<&'static str, PathBuf>,
    policy: PathBuf,
    /// Descriptors the test leaks into the jailer (a host directory, a host file).
    leak: (std::fs::File, std::fs::File),
}

impl World {
    fn new(cfg: Cfg) -> World {
        let tenant = Tenant::new("sj", "escape-probe");
        let pair = NsPair::new("ksj");
        let jail_ns = (cfg != NoNamespaces).then(|| pair.a.clone());
        let listeners = Listeners::start(&pair.b, &pair.net, jail_ns.as_deref(), &tenant.name);
        let victim = Victim::spawn(tenant.uid);
        let decoy = Decoy::new(&tenant);
        let handle = file_handle(&decoy.secret);
        let profile_text =
            std::fs::read_to_string(default_profile_path()).expect("read the default profile");
        let profile: serde_json::Value =
            serde_json::from_str(&profile_text).expect("parse the default profile");
        let mut profiles = BTreeMap::new();
        for (name, drop) in [
            ("default", None),
            ("no-cgroup", Some("cgroup")),
            ("no-rlimits", Some("rlimits")),
        ] {
            let mut p = profile.clone();
            if let (Some(key), Some(obj)) = (drop, p.as_object_mut()) {
                obj.remove(key);
            }
            let path = tenant.base.join(format!("profile-{name}.json"));
            std::fs::write(&path, p.to_string()).expect("write a profile");
            profiles.insert(name, path);
        }
        let policy = tenant.base.join("allow-all.json");
        std::fs::write(&policy, ALLOW_ALL_POLICY).expect("write the policy");
        let leak = (
            std::fs::File::open("/").expect("open /"),
            std::fs::File::open(&decoy.secret).expect("open the decoy secret"),
        );
        World {
            tenant,
            pair,
            listeners,
            victim,
            decoy,
            handle,
            profiles,
            policy,
            leak,
        }
    }

    fn flags(&self, cfg: Cfg) -> Vec<String> {
        let s = |v: &str| v.to_owned();
        let profile = match cfg {
            NoCgroups => &self.profiles["no-cgroup"],
            NoRlimits => &self.profiles["no-rlimits"],
            _ => &self.profiles["default"],
        };
        let mut f = vec![
            s("--cleanup-on-exit"),
            s("--profile"),
            profile.display().to_string(),
        ];
        if cfg == NoNamespaces {
            f.push(s("--share-host-netns"));
        } else {
            f.extend([
                s("--new-pid-ns"),
                s("--netns"),
                self.pair.a_path(),
                s("--firewall"),
            ]);
            f.push(s(if matches!(cfg, NoFirewall | NoSeccompFirewall) {
                "off"
            } else {
                "on"
            }));
        }
        if matches!(cfg, NoSeccomp | NoSeccompLandlock | NoSeccompFirewall) {
            f.extend([s("--seccomp-policy"), self.policy.display().to_string()]);
        }
        if matches!(cfg, NoLandlock | NoSeccompLandlock) {
            f.extend([s("--diagnose-without"), s("landlock")]);
        }
        if cfg == NoPrivileges {
            f.extend([s("--diagnose-without"), s("privileges")]);
        }
        f
    }

    fn probe_args(&self, names: &[String]) -> Vec<String> {
        let s = |v: &str| v.to_owned();
        vec![
            s("--victim"),
            self.victim.pid().to_string(),
            s("--tcp"),
            self.listeners.tcp.clone(),
            s("--udp"),
            self.listeners.udp.clone(),
            s("--abstract"),
            self.listeners.abstract_name.clone(),
            s("--fd-socket"),
            s("/run/fdpass.sock"),
            s("--decoy"),
            self.decoy.secret.display().to_string(),
            s("--handle"),
            self.handle.clone(),
            s("--other-socket"),
            self.decoy.socket.display().to_string(),
            s("--other-addr"),
            self.listeners.other_tcp.clone(),
            s("--attempts"),
            names.join(","),
        ]
    }

    /// One jail running `names`.
    fn run(&self, cfg: Cfg, names: &[String]) -> ProbeRun {
        let id = self.tenant.id();
        let server = names
            .iter()
            .any(|n| n == "fds.passed-dir")
            .then(|| serve_fd(self.tenant.chroot_dir(&id), self.decoy.run_dir.clone()));
        let mut cmd = self
            .tenant
            .command(&id, &self.flags(cfg), &self.probe_args(names));
        let (dir, file) = (self.leak.0.as_raw_fd(), self.leak.1.as_raw_fd());
        // SAFETY: between fork and exec the child only calls dup2 (async-signal-safe);
        // the duplicates (without close-on-exec) are what the jailer must not pass on.
        unsafe {
            cmd.pre_exec(move || {
                libc::dup2(dir, 7);
                libc::dup2(file, 8);
                Ok(())
            });
        }
        let run = run_jailer(&mut cmd);
        if let Some(s) = server {
            let _ = s.join();
        }
        run
    }
}

/// Runs every attempt in `cfg`: those expected to kill the process, and those that change
/// it, each in a jail of its own; the rest in one jail (again, from where one died
/// unexpectedly).
fn run_config(
    cfg: Cfg,
    list: &[AttemptInfo],
    slots: &Slots,
) -> (BTreeMap<String, Got>, Vec<String>) {
    let world = World::new(cfg);
    let mut results = BTreeMap::new();
    let mut problems = Vec::new();
    let fatal = |a: &AttemptInfo| {
        a.alone || expected(&a.name, cfg).is_some_and(|(k, _)| k.starts_with("SIG"))
    };
    let mut batch: Vec<String> = list
        .iter()
        .filter(|a| !fatal(a))
        .map(|a| a.name.clone())
        .collect();
    while !batch.is_empty() {
        let run = slots.run(|| world.run(cfg, &batch));
        let before = batch.len();
        for (name, got) in run.results.clone() {
            results.insert(name, got);
        }
        batch.retain(|n| !results.contains_key(n));
        if batch.len() == before {
            for n in batch.drain(..) {
                results.insert(
                    n,
                    Got::Missing(format!("batch run made no progress: {}", run.describe())),
                );
            }
        }
    }
    for a in list.iter().filter(|a| fatal(a)) {
        let names = vec![a.name.clone()];
        let run = slots.run(|| world.run(cfg, &names));
        let got = run
            .results
            .get(&a.name)
            .cloned()
            .unwrap_or_else(|| Got::Missing(run.describe()));
        results.insert(a.name.clone(), got);
    }
    // From outside: nothing reached the victim or the listeners unless the probe says so.
    let mut world = world;
    if !world.victim.alive() {
        problems.push(format!(
            "{}: the host process the probe attacks was killed",
            cfg.name()
        ));
    }
    let reported = |name: &str| results.get(name).is_some_and(Got::is_escape);
    let hits = |h: &std::sync::atomic::AtomicUsize| h.load(std::sync::atomic::Ordering::Relaxed);
    if hits(&world.listeners.tcp_hits) > 0
        && !reported("net.tcp-host")
        && !reported("net.other-tenant-tcp")
    {
        problems.push(format!(
            "{}: a TCP connection reached the outside listener",
            cfg.name()
        ));
    }
    if hits(&world.listeners.udp_hits) > 0 && !reported("net.udp-host") {
        problems.push(format!(
            "{}: a datagram reached the outside receiver",
            cfg.name()
        ));
    }
    if hits(&world.listeners.abstract_hits) > 0 && !reported("net.abstract-unix") {
        problems.push(format!(
            "{}: a connection reached the abstract socket",
            cfg.name()
        ));
    }
    (results, problems)
}

#[test]
fn the_escape_probe_is_stopped_by_every_layer() {
    require_root();
    require_kvm();
    require_program("nft", "nftables");
    let probe = kiln_tests::require_bin("escape-probe");
    let list = attempts(&probe);
    assert!(list.len() >= 40, "only {} attempts", list.len());
    let slots = Arc::new(Slots::new(3));
    let started = std::time::Instant::now();
    let handles: Vec<_> = Cfg::ALL
        .iter()
        .map(|&cfg| {
            let (list, slots) = (list.clone(), slots.clone());
            std::thread::spawn(move || (cfg, run_config(cfg, &list, &slots)))
        })
        .collect();
    let mut all: BTreeMap<Cfg, BTreeMap<String, Got>> = BTreeMap::new();
    let mut problems = Vec::new();
    for h in handles {
        let (cfg, (results, p)) = h.join().expect("configuration thread");
        all.insert(cfg, results);
        problems.extend(p);
    }
    let elapsed = started.elapsed();

    // The tables: every attempt in the full jail, then every configuration.
    let mut report = String::new();
    let mut unexpected = Vec::new();
    let mut discover = String::new();
    for cfg in Cfg::ALL {
        let mut rows = Vec::new();
        for a in &list {
            let got = all[&cfg]
                .get(&a.name)
                .cloned()
                .unwrap_or(Got::Missing("no result".into()));
            let (key, layer) =
                expected(&a.name, cfg).unwrap_or_else(|| ("(none)".into(), String::new()));
            let ok = matches(&key, &got);
            if !ok {
                unexpected.push(format!(
                    "{} {}: expected {key}, got {}",
                    cfg.name(),
                    a.name,
                    got.detail()
                ));
            }
            let differs = cfg == Full || expected(&a.name, cfg) != expected(&a.name, Full);
            if differs || !ok {
                rows.push(Row {
                    attempt: a.name.clone(),
                    expected: if layer.is_empty() {
                        key.clone()
                    } else {
                        format!("{key} ({layer})")
                    },
                    got: got.detail(),
                    ok,
                    escaped: got.is_escape(),
                    counted: true,
                });
            }
            discover.push_str(&format!("{}\t{}\t{}\n", a.name, cfg.name(), got.key()));
        }
        let title = match cfg {
            Full => format!("{}: every attempt", cfg.describe()),
            _ => format!(
                "{} [{}]: the attempts whose outcome differs from the full jail",
                cfg.describe(),
                cfg.name()
            ),
        };
        report.push_str(&table(&title, &rows));
    }
    report.push_str(&matrix(&list, &all));
    let full_escaped = all[&Full].values().filter(|g| g.is_escape()).count();
    let full_blocked = all[&Full].len() - full_escaped;
    report.push_str(&format!(
        "\nfull jail: {full_blocked} blocked, {full_escaped} escaped ({} attempts, {} configurations, {:.1} s)\n",
        list.len(),
        Cfg::ALL.len(),
        elapsed.as_secs_f64()
    ));
    let path = write_report("jail", &report);
    eprintln!("{report}\n(report written to {})", path.display());
    if std::env::var_os("KILN_SECURITY_DISCOVER").is_some() {
        write_report("jail-discover", &discover);
    }
    assert_eq!(
        full_escaped,
        0,
        "attempts escaped the full jail:\n{}",
        unexpected.join("\n")
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        unexpected.is_empty(),
        "{} unexpected outcomes:\n{}",
        unexpected.len(),
        unexpected.join("\n")
    );
}

/// Attempt × configuration: the key of each outcome (`.` where it equals the full jail's).
fn matrix(list: &[AttemptInfo], all: &BTreeMap<Cfg, BTreeMap<String, Got>>) -> String {
    let w = list.iter().map(|a| a.name.len()).max().unwrap_or(10);
    let mut out = format!(
        "\n== outcome of every attempt in every configuration ('.' = as in the full jail)\n{:<w$}",
        "attempt"
    );
    for cfg in Cfg::ALL {
        out.push_str(&format!(
            " {:>9}",
            cfg.name().chars().take(9).collect::<String>()
        ));
    }
    out.push('\n');
    for a in list {
        out.push_str(&format!("{:<w$}", a.name));
        let full = all[&Full].get(&a.name).map(Got::key).unwrap_or_default();
        for cfg in Cfg::ALL {
            let k = all[&cfg].get(&a.name).map(Got::key).unwrap_or_default();
            let cell = if cfg != Full && k == full {
                ".".to_owned()
            } else {
                k
            };
            out.push_str(&format!(" {cell:>9}"));
        }
        out.push('\n');
    }
    out
}
