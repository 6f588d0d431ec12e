//! Helpers for the jailer's end-to-end tests: a per-test jail (unique id, chroot base,
//! parent cgroup and uid), a running jailer whose probe output is read line by line, and
//! snapshots of the host state a jail could leave behind (mounts, cgroups, network
//! namespaces, files).
//!
//! `jail-probe` reports what it sees with syscalls the VMM never makes, which the jail's
//! built-in filter (policies/seccomp/jail.json, exactly the VMM's syscalls) refuses: its
//! jails run under that policy plus [`PROBE_SYSCALLS`] (nothing else added). The real VMM
//! and `escape-probe` run under the built-in policy itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::process::{line_reader, spawn, stderr_reader};
use crate::{require_bin, require_root, unique_id};

/// What `jail-probe` needs besides the VMM's syscalls, to report: identity queries, limits, the host
/// name, the working directory, directory listings, and receiving (and duplicating) a
/// descriptor over a unix socket and opening through it (`openat`: the VMM opens by path).
pub const PROBE_SYSCALLS: &[&str] = &[
    "getpid",
    "getppid",
    "prlimit64",
    "getresuid",
    "getresgid",
    "getgroups",
    "capget",
    "uname",
    "getcwd",
    "getdents64",
    "recvmsg",
    "dup",
    "openat",
];

/// One test's jail: its id, chroot base directory, parent cgroup and identity.
pub struct Jail {
    pub id: String,
    pub base: PathBuf,
    pub parent_cgroup: String,
    pub uid: u32,
    pub gid: u32,
    pub jailer: PathBuf,
    pub probe: PathBuf,
}

impl Jail {
    /// A fresh jail description (nothing is created but the empty base directory).
    pub fn new(prefix: &str) -> Self {
        require_root();
        static NEXT_UID: AtomicU32 = AtomicU32::new(0);
        let id = unique_id(prefix);
        let base = std::env::temp_dir().join(format!("kiln-jails-{id}"));
        std::fs::create_dir_all(&base).expect("create the chroot base");
        let n = NEXT_UID.fetch_add(1, Ordering::Relaxed);
        let uid = 60_000 + (std::process::id() % 1000) * 50 + n;
        Jail {
            parent_cgroup: format!("kt-{id}"),
            id,
            base,
            uid,
            gid: uid,
            jailer: require_bin("jailer"),
            probe: require_bin("jail-probe"),
        }
    }

    /// `<base>/jail-probe/<id>`.
    pub fn jail_dir(&self) -> PathBuf {
        self.base.join("jail-probe").join(&self.id)
    }

    pub fn chroot_dir(&self) -> PathBuf {
        self.jail_dir().join("root")
    }

    /// The jailer with this jail's common flags, `flags`, then `--` and the probe actions;
    /// the built-in seccomp policy with [`PROBE_SYSCALLS`] unless `flags` name a policy.
    pub fn command(&self, flags: &[&str], probe_args: &[&str]) -> Command {
        let cmd = self.command_for(&self.probe, flags, probe_args);
        if !flags.contains(&"--seccomp-policy") {
            let policy = self.write_policy("probe-policy.json", serde_json::json!([]));
            let mut args: Vec<std::ffi::OsString> =
                cmd.get_args().map(|a| a.to_os_string()).collect();
            let at = args.iter().position(|a| a == "--").unwrap_or(args.len());
            args.insert(at, "--seccomp-policy".into());
            args.insert(at + 1, policy.into_os_string());
            let mut with = Command::new(&self.jailer);
            with.args(args);
            return with;
        }
        cmd
    }

    /// As [`Jail::command`], jailing `exec` (another binary, e.g. the real `vmm`) with
    /// `args`.
    pub fn command_for(&self, exec: &Path, flags: &[&str], args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.jailer);
        cmd.arg("--id")
            .arg(&self.id)
            .arg("--exec-file")
            .arg(exec)
            .arg("--uid")
            .arg(self.uid.to_string())
            .arg("--gid")
            .arg(self.gid.to_string())
            .arg("--chroot-base-dir")
            .arg(&self.base)
            .arg("--parent-cgroup")
            .arg(&self.parent_cgroup)
            .arg("--parent-cgroup-relative")
            .args(flags)
            .arg("--")
            .args(args);
        cmd
    }

    /// Writes a tenant profile (`--profile`) with `text` into the base directory.
    pub fn write_profile(&self, text: &str) -> PathBuf {
        let path = self.base.join("profile.json");
        std::fs::write(&path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// Writes a seccomp policy (`--seccomp-policy`) into the base directory: the built-in
    /// policies/seccomp/jail.json with [`PROBE_SYSCALLS`] and `rules` (a JSON list of rules)
    /// in place of its rules for the same syscalls, for probes that need more than a VMM
    /// does.
    pub fn seccomp_policy_with(&self, rules: serde_json::Value) -> PathBuf {
        self.write_policy("policy.json", rules)
    }

    fn write_policy(&self, name: &str, rules: serde_json::Value) -> PathBuf {
        let builtin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/seccomp/jail.json");
        let text = std::fs::read_to_string(&builtin)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", builtin.display()));
        let mut policy: serde_json::Value = serde_json::from_str(&text).expect("jail.json is JSON");
        let mut rules = rules.as_array().expect("a list of rules").clone();
        for name in PROBE_SYSCALLS {
            if !rules.iter().any(|r| r["syscall"] == *name) {
                rules.push(serde_json::json!({ "syscall": name }));
            }
        }
        let names: Vec<&serde_json::Value> = rules.iter().map(|r| &r["syscall"]).collect();
        let main = policy["main"]["filter"]
            .as_array_mut()
            .expect("jail.json has main.filter");
        main.retain(|r| !names.contains(&&r["syscall"]));
        main.extend(rules.iter().cloned());
        let path = self.base.join(name);
        std::fs::write(&path, policy.to_string())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// `jailer cleanup` for this jail.
    pub fn cleanup_command(&self) -> Command {
        let mut cmd = Command::new(&self.jailer);
        cmd.arg("cleanup")
            .arg("--id")
            .arg(&self.id)
            .arg("--exec-file")
            .arg(&self.probe)
            .arg("--chroot-base-dir")
            .arg(&self.base);
        cmd
    }

    /// What this jail could leave on the host (files: under `<base>/jail-probe`).
    pub fn snapshot(&self) -> HostSnapshot {
        HostSnapshot::take(
            &[&self.id, &self.parent_cgroup],
            &self.base.join("jail-probe"),
        )
    }

    /// The jail's cgroup directory in the v1 hierarchy of `controller`.
    pub fn cgroup_dir(&self, controller: &str) -> PathBuf {
        own_cgroup_dir(controller)
            .join(&self.parent_cgroup)
            .join(&self.id)
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        let _ = self
            .cleanup_command()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = kiln_hostfs::remove_tree(&self.base);
    }
}

/// Removes the cgroup `name` from every hierarchy mounted under /sys/fs/cgroup where it
/// exists and is empty, both at the hierarchy's root and under this process's own cgroup
/// there (where `--parent-cgroup-relative` puts it: on the development hosts each shell job
/// has its own memory cgroup): the parent cgroup the jailer made for a test's jails, which
/// the last of them removes when it ends; this catches a test that failed before its jails
/// ended. A cgroup still holding a jail stays, for the leftover checks to report.
pub fn remove_parent_cgroup(name: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let name = name.trim_start_matches('/');
    for h in hierarchies.flatten() {
        let dir = h.path();
        let _ = std::fs::remove_dir(dir.join(name));
        let h_name = h.file_name().to_string_lossy().into_owned();
        if let Some(path) = own_path_in(&own, &h_name) {
            let _ = std::fs::remove_dir(dir.join(path.trim_start_matches('/')).join(name));
        }
    }
}

/// This process's cgroup path (from `/proc/self/cgroup`) in the hierarchy mounted as
/// `/sys/fs/cgroup/<hierarchy>` (`cpu,cpuacct`, `systemd` for `name=systemd`, `unified`
/// for the v2 line).
fn own_path_in(proc_self_cgroup: &str, hierarchy: &str) -> Option<String> {
    proc_self_cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = match (ctrls, hierarchy) {
            ("", "unified") => true,
            ("", _) => false,
            (c, h) => {
                let c = c.trim_start_matches("name=");
                c == h || c.split(',').any(|one| h.split(',').any(|x| x == one))
            }
        };
        matches.then(|| path.to_owned())
    })
}

#[cfg(test)]
mod parent_cgroup_tests {
    #[test]
    fn the_own_path_of_each_mounted_hierarchy() {
        let own = "9:name=systemd:/\n4:memory:/process_api/ab\n2:cpu,cpuacct:/x\n0::/u\n";
        let p = |h: &str| super::own_path_in(own, h);
        assert_eq!(p("memory").as_deref(), Some("/process_api/ab"));
        assert_eq!(p("systemd").as_deref(), Some("/"));
        assert_eq!(p("cpu").as_deref(), Some("/x"));
        assert_eq!(p("cpu,cpuacct").as_deref(), Some("/x"));
        assert_eq!(p("unified").as_deref(), Some("/u"));
        assert_eq!(p("pids"), None);
    }
}

/// This process's cgroup directory in the v1 hierarchy of `controller`.
pub fn own_cgroup_dir(controller: &str) -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    let own = own_path_in(&text, controller)
        .unwrap_or_else(|| panic!("no v1 {controller} line in /proc/self/cgroup"));
    Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(own.trim_start_matches('/'))
}

/// `key=value` lines printed by the probe (the last value of a repeated key wins).
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub values: BTreeMap<String, String>,
    pub lines: Vec<String>,
}

impl Report {
    pub fn add(&mut self, line: &str) {
        self.lines.push(line.to_owned());
        if let Some((k, v)) = line.split_once('=') {
            self.values.insert(k.to_owned(), v.to_owned());
        }
    }

    pub fn parse(text: &str) -> Self {
        let mut r = Report::default();
        for l in text.lines() {
            r.add(l);
        }
        r
    }

    pub fn get(&self, key: &str) -> &str {
        match self.values.get(key) {
            Some(v) => v,
            None => panic!(
                "probe did not report {key:?}; output:\n{}",
                self.lines.join("\n")
            ),
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }
}

/// Runs the jailer `cmd` to its end (see [`Running::finish`]).
pub fn run(cmd: &mut Command, timeout: Duration) -> Finished {
    Running::spawn(cmd).finish(timeout)
}

/// A jailer started with piped stdio; the probe's output is read as it comes.
pub struct Running {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
    pub report: Report,
}

impl Running {
    pub fn spawn(cmd: &mut Command) -> Self {
        let mut child = spawn(cmd.stdin(Stdio::piped()));
        Running {
            stdin: child.stdin.take(),
            lines: line_reader(&mut child),
            stderr: stderr_reader(&mut child),
            child,
            report: Report::default(),
        }
    }

    /// Reads probe output until `key` has been reported; panics with everything seen after
    /// `timeout`.
    pub fn wait_for(&mut self, key: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while !self.report.has(key) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.report.add(&line),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => panic!(
                    "probe never reported {key:?} within {timeout:?}; output so far:\n{}",
                    self.report.lines.join("\n")
                ),
            }
        }
        self.report.get(key).to_owned()
    }

    /// Closes the probe's stdin (ends a `hold`).
    pub fn release(&mut self) {
        self.stdin.take();
    }

    /// Waits for the jailer to exit (killing it at the deadline), then collects the rest of
    /// the probe's output (until every holder of the pipe is gone or `timeout` passes).
    pub fn finish(mut self, timeout: Duration) -> Finished {
        self.release();
        let start = Instant::now();
        let status = loop {
            match self.child.try_wait().expect("try_wait") {
                Some(s) => break Some(s),
                None if start.elapsed() >= timeout => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.report.add(&line),
                Err(_) => break,
            }
        }
        let stderr = self.stderr.join().unwrap_or_default();
        Finished {
            status,
            report: self.report,
            stderr,
        }
    }
}

/// How a jailer run ended.
#[derive(Debug)]
pub struct Finished {
    pub status: Option<ExitStatus>,
    pub report: Report,
    pub stderr: String,
}

impl Finished {
    pub fn describe(&self) -> String {
        format!(
            "status {:?}\n--- probe:\n{}\n--- stderr:\n{}",
            self.status,
            self.report.lines.join("\n"),
            self.stderr
        )
    }

    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    pub fn signal(&self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        self.status.and_then(|s| s.signal())
    }
}

/// Host state that a jail could leave behind, restricted to names containing one of the
/// test's needles (tests run in parallel; each only looks at what it could have made).
#[derive(Debug, PartialEq, Eq)]
pub struct HostSnapshot {
    pub mounts: Vec<String>,
    pub cgroups: Vec<String>,
    pub netns: Vec<String>,
    pub files: Vec<String>,
}

impl HostSnapshot {
    pub fn take(needles: &[&str], base: &Path) -> Self {
        let matches = |s: &str| needles.iter().any(|n| s.contains(n));
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let mounts = mountinfo
            .lines()
            .filter(|l| matches(l))
            .map(|l| l.split(' ').skip(3).take(2).collect::<Vec<_>>().join(" "))
            .collect();
        let mut cgroups = Vec::new();
        for root in cgroup_roots(&mountinfo) {
            walk(&root, 0, &mut |p| {
                if matches(&p.to_string_lossy()) {
                    cgroups.push(p.display().to_string());
                }
            });
        }
        cgroups.sort();
        let out = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list (package iproute2)");
        let netns = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| matches(l))
            .map(str::to_owned)
            .collect();
        // Everything under the directory the jailer creates jails in (and it itself).
        let mut files = Vec::new();
        if base.exists() {
            files.push(base.display().to_string());
        }
        walk_all(base, &mut files);
        files.sort();
        HostSnapshot {
            mounts,
            cgroups,
            netns,
            files,
        }
    }
}

fn cgroup_roots(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fs = right.split(' ').next()?;
            let point = left.split(' ').nth(4)?;
            (fs == "cgroup" || fs == "cgroup2").then(|| PathBuf::from(point))
        })
        .collect()
}

fn walk(dir: &Path, depth: usize, f: &mut dyn FnMut(&Path)) {
    if depth > 8 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let p = e.path();
            f(&p);
            walk(&p, depth + 1, f);
        }
    }
}

fn walk_all(dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        out.push(p.display().to_string());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk_all(&p, out);
        }
    }
}

/// Runs a command that must succeed (set-up helpers: `ip`, `nft`).
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("MISSING PRECONDITION: cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
