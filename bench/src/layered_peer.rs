//! Firecracker's jailer with the layers Kiln's full profile puts around its VMM, for rows that
//! compare like with like (beside the rows with Firecracker's default jail):
//!
//! - the profile's cgroup limits (`--cgroup`, v1: `cpu.cfs_quota_us`, `cpu.cfs_period_us`,
//!   `memory.limit_in_bytes`, `pids.max`) and the resource limits its jailer can set
//!   (`--resource-limit no-file`, `fsize`);
//! - a PID namespace (`--new-pid-ns`);
//! - a network namespace (`--netns`) with loopback up and the same firewall as Kiln's jail
//!   (default policy drop, loopback and neighbour discovery accepted), which Firecracker's
//!   jailer leaves to its caller: made here before the clock starts, with `ip` and `nft`, so
//!   its cost is **not** in Firecracker's figures (a lower bound for Firecracker).
//!
//! What Firecracker's jailer cannot set is left out: the huge-page limits, `memlock`/`core`
//! rlimits, the `/run` tmpfs, Landlock and the jail's seccomp are Kiln's alone.
//!
//! With `--new-pid-ns` the jailer exits once Firecracker is started in the new namespace
//! (its pid in `<exec file name>.pid` in the chroot), so this process becomes the child
//! subreaper for the run: Firecracker is reaped here, and its CPU time is counted in
//! `RUSAGE_CHILDREN` like that of every other measured process. Afterwards the chroot, the
//! cgroups (`<hierarchy>/kiln-bench-fc/<id>`) and the namespace are removed.

use crate::host::children_cpu_ms;
use crate::launch::{firecracker_jailer_cmd_with, FirecrackerJail};
use crate::opts::Opts;
use crate::process::{burst as burst_of, ms, start, Started, TIMEOUT};
use nix::sys::prctl::set_child_subreaper;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde_json::Value;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The parent cgroup of the layered Firecracker jails, at each hierarchy's root (apart from
/// Kiln's `kiln-bench`, which is under the bench's own cgroup).
const PARENT_CGROUP: &str = "kiln-bench-fc";

/// The firewall Kiln's jailer loads for a profile that allows nothing out (the jailer's
/// `default.nft` fixture, jailer/src/network/testdata), under another table name.
const RULESET: &str = "table inet kiln-bench {
  chain input {
    type filter hook input priority 0; policy drop;
    iif \"lo\" accept
    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept
  }
  chain forward {
    type filter hook forward priority 0; policy drop;
  }
  chain output {
    type filter hook output priority 0; policy drop;
    oif \"lo\" accept
    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept
  }
}
";

/// Firecracker's jailer flags for the profile's limits (those it has a flag for).
fn profile_flags(profile: &Path) -> Result<Vec<String>, String> {
    let text = fs::read_to_string(profile).map_err(|e| format!("{}: {e}", profile.display()))?;
    let json: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", profile.display()))?;
    let mut flags = vec!["--cgroup-version".into(), "1".into()];
    flags.extend(["--parent-cgroup".into(), PARENT_CGROUP.into()]);
    let cgroups = [
        ("cpu_quota_us", "cpu.cfs_quota_us"),
        ("cpu_period_us", "cpu.cfs_period_us"),
        ("memory_bytes", "memory.limit_in_bytes"),
        ("pids_max", "pids.max"),
    ];
    for (field, file) in cgroups {
        if let Some(v) = json["cgroup"][field].as_u64() {
            flags.extend(["--cgroup".into(), format!("{file}={v}")]);
        }
    }
    for (field, name) in [("no_file", "no-file"), ("fsize", "fsize")] {
        if let Some(v) = json["rlimits"][field].as_u64() {
            flags.extend(["--resource-limit".into(), format!("{name}={v}")]);
        }
    }
    flags.push("--new-pid-ns".into());
    Ok(flags)
}

/// Runs `program args`, which must succeed, with `stdin` as its input.
fn run(program: &str, args: &[&str], stdin: &str) -> Result<(), String> {
    let what = || format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", what()))?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .map_err(|e| format!("{}: writing its input: {e}", what()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", what()))?;
    if !out.status.success() {
        return Err(format!(
            "{}: {}: {}",
            what(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// One layered Firecracker jail, staged: its command, and what to remove afterwards.
pub struct LayeredJail {
    jail: FirecrackerJail,
    /// `<chroot>/<exec file name>.pid`, where the jailer writes the pid it started.
    pid_file: PathBuf,
    /// The network namespace's name (`/run/netns/<name>`), once made.
    netns: Option<String>,
}

/// What one layered start measured.
pub struct Measured {
    /// Jailer spawn → the guest's first serial byte.
    pub first_byte_ms: f64,
    /// CPU of the jailer and Firecracker, spawn → Firecracker reaped.
    pub cpu_ms: f64,
}

/// Stages the `n`th layered jail booting `cfg` (the chroot as for the default jail, the
/// network namespace with its firewall); `None` without the Firecracker peer.
pub fn stage(opts: &Opts, n: usize, cfg: &Path) -> Result<Option<LayeredJail>, String> {
    let mut flags = profile_flags(&opts.profile)?;
    let name = format!("{}fc{n}", opts.prefix);
    flags.extend(["--netns".into(), format!("/run/netns/{name}")]);
    let exec = match opts.firecracker.as_ref().map(|f| f.file_name()) {
        None => return Ok(None),
        Some(None) => return Err("--firecracker names no file".into()),
        Some(Some(name)) => name.to_string_lossy().into_owned(),
    };
    let Some(jail) = firecracker_jailer_cmd_with(opts, n, cfg, &flags)? else {
        return Ok(None);
    };
    let pid_file = jail.dir.join("root").join(format!("{exec}.pid"));
    let mut staged = LayeredJail {
        jail,
        pid_file,
        netns: None,
    };
    // On a failure from here on, `staged` is dropped: what was made goes with it.
    run("ip", &["netns", "add", &name], "")?;
    staged.netns = Some(name.clone());
    run("ip", &["-n", &name, "link", "set", "lo", "up"], "")?;
    run("ip", &["netns", "exec", &name, "nft", "-f", "-"], RULESET)?;
    Ok(Some(staged))
}

impl LayeredJail {
    /// Starts the jail, times its first serial byte, reaps Firecracker when the guest has
    /// reset, and removes what the jail left (whatever happened).
    pub fn measure(mut self) -> Result<Measured, String> {
        set_child_subreaper(true).map_err(|e| format!("PR_SET_CHILD_SUBREAPER: {e}"))?;
        let result = self.start_and_reap();
        let _ = set_child_subreaper(false);
        let removed = self.remove();
        let measured = result?;
        removed.map(|()| measured)
    }

    fn start_and_reap(&mut self) -> Result<Measured, String> {
        let cpu0 = children_cpu_ms();
        let mut s = start(self.take_cmd(), true)?;
        let first_byte = s.first_byte()? - s.t0;
        let pid = self.firecracker_started(s)?;
        reap(pid)?;
        Ok(Measured {
            first_byte_ms: ms(first_byte),
            cpu_ms: children_cpu_ms() - cpu0,
        })
    }

    /// The jailer's command line (taken once: the jail is started once).
    fn take_cmd(&mut self) -> Command {
        std::mem::replace(&mut self.jail.cmd, Command::new("true"))
    }

    /// Waits for the jailer `s` of this jail, which exits once Firecracker is started in its
    /// PID namespace, and returns Firecracker's pid (from the pid file). A jailer that failed
    /// (or was killed waiting for the first byte) after starting Firecracker: Firecracker is
    /// killed and reaped, and the jailer's failure returned.
    fn firecracker_started(&self, s: Started) -> Result<Pid, String> {
        let (code, err) = s.finish(TIMEOUT)?;
        let pid_file = &self.pid_file;
        let pid = fs::read_to_string(pid_file).map(|text| text.trim().parse::<i32>());
        match (code, pid) {
            (Some(0), Ok(Ok(pid))) => Ok(Pid::from_raw(pid)),
            (Some(0), Ok(Err(e))) => Err(format!("{}: {e}", pid_file.display())),
            (Some(0), Err(e)) => Err(format!("{}: {e}", pid_file.display())),
            (code, pid) => {
                if let Ok(Ok(pid)) = pid {
                    let pid = Pid::from_raw(pid);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    let _ = reap(pid);
                }
                Err(format!(
                    "Firecracker's jailer exited with {code:?}:\n{}",
                    err.join("\n")
                ))
            }
        }
    }

    /// Removes the chroot, the cgroups and the network namespace.
    fn remove(&mut self) -> Result<(), String> {
        let mut failed = vec![];
        match fs::remove_dir_all(&self.jail.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                failed.push(format!("{}: {e}", self.jail.dir.display()));
            }
            _ => {}
        }
        for dir in cgroup_dirs(&self.jail.id) {
            if let Err(e) = fs::remove_dir(&dir) {
                failed.push(format!("{}: {e}", dir.display()));
            }
        }
        if let Some(name) = self.netns.take() {
            if let Err(e) = run("ip", &["netns", "delete", &name], "") {
                failed.push(e);
            }
        }
        match failed.is_empty() {
            true => Ok(()),
            false => Err(format!(
                "left behind by a layered Firecracker jail: {}",
                failed.join("; ")
            )),
        }
    }
}

/// A jail dropped without [`LayeredJail::measure`] or [`burst`] (a staging that failed
/// half-way) is removed all the same.
impl Drop for LayeredJail {
    fn drop(&mut self) {
        let _ = self.remove();
    }
}

/// Starts `jails` at once (guests that halt once they have printed), times the last first
/// serial byte, then kills every Firecracker and reaps it; returns (all first bytes, ms; CPU
/// per microVM, ms: jailers and Firecrackers, spawn → reaped). Whatever happened, every
/// Firecracker started is killed and reaped, and what the jails left is removed.
///
/// SIGKILL, not SIGTERM: each Firecracker is its PID namespace's init, and an init with no
/// handler for SIGTERM (Firecracker has none) does not get it even from outside.
pub fn burst(mut jails: Vec<LayeredJail>) -> Result<(f64, f64), String> {
    set_child_subreaper(true).map_err(|e| format!("PR_SET_CHILD_SUBREAPER: {e}"))?;
    let n = jails.len().max(1) as f64;
    let cpu0 = children_cpu_ms();
    let (started, all) = burst_of(jails.iter_mut().map(LayeredJail::take_cmd));
    let mut result = Ok(());
    for (j, s) in jails.iter().zip(started) {
        let stopped = j.firecracker_started(s).and_then(|pid| {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            reap(pid)
        });
        if let Err(e) = stopped {
            result = result.and(Err(e));
        }
    }
    let per_vm = (children_cpu_ms() - cpu0) / n;
    let _ = set_child_subreaper(false);
    for j in &mut jails {
        if let Err(e) = j.remove() {
            result = result.and(Err(e));
        }
    }
    let all = all?;
    result.map(|()| (ms(all), per_vm))
}

/// Waits (with [`TIMEOUT`]) for `pid`, an orphan this process reaps as its subreaper.
fn reap(pid: Pid) -> Result<(), String> {
    let t0 = Instant::now();
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if t0.elapsed() < TIMEOUT => {
                std::thread::sleep(Duration::from_micros(200));
            }
            Ok(WaitStatus::StillAlive) => {
                return Err(format!(
                    "Firecracker (pid {pid}) still runs after {TIMEOUT:?}"
                ))
            }
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(format!("waitpid({pid}): {e}")),
        }
    }
}

/// The jail `id`'s cgroup directories, `<hierarchy>/kiln-bench-fc/<id>`, that exist.
fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
        return vec![];
    };
    hierarchies
        .flatten()
        .map(|h| h.path().join(PARENT_CGROUP).join(id))
        .filter(|d| d.is_dir())
        .collect()
}

/// Removes the (empty) `kiln-bench-fc` parent cgroups.
pub fn remove_parent_cgroups() {
    if let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") {
        for h in hierarchies.flatten() {
            let _ = fs::remove_dir(h.path().join(PARENT_CGROUP));
        }
    }
}
