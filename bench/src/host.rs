//! The host around the measurements: what the jails left behind (jail directories, network
//! namespaces, cgroups), the host's load and CPU use, the reaped children's CPU time, and
//! the machine line printed above the table.

use crate::launch::PARENT_CGROUP;
use crate::opts::Opts;
use nix::sys::resource::{getrusage, UsageWho};
use nix::sys::time::TimeValLike;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

/// What the bench's jails left behind: jail directories, network namespaces and cgroups
/// whose names start with the run's prefix.
pub fn leaks(opts: &Opts) -> Vec<String> {
    let mut found = vec![];
    let ours = |name: &str| name.starts_with(&opts.prefix);
    let jails = opts.base.join(
        opts.vmm
            .file_name()
            .map_or_else(|| PathBuf::from("vmm"), PathBuf::from),
    );
    if let Ok(d) = fs::read_dir(&jails) {
        for e in d.flatten() {
            found.push(format!("jail dir {}", e.path().display()));
        }
    }
    if let Ok(d) = fs::read_dir("/run/netns") {
        for e in d.flatten() {
            if ours(&e.file_name().to_string_lossy()) {
                found.push(format!("netns {}", e.path().display()));
            }
        }
    }
    // cgroups: <mount>/<own cgroup>/kiln-bench/<id> on every hierarchy.
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    if let Ok(mounts) = fs::read_dir("/sys/fs/cgroup") {
        for m in mounts.flatten() {
            for line in own.lines() {
                let Some(path) = line.splitn(3, ':').nth(2) else {
                    continue;
                };
                let dir = m
                    .path()
                    .join(path.trim_start_matches('/'))
                    .join(PARENT_CGROUP);
                if let Ok(d) = fs::read_dir(&dir) {
                    for e in d.flatten() {
                        if e.path().is_dir() && ours(&e.file_name().to_string_lossy()) {
                            found.push(format!("cgroup {}", e.path().display()));
                        }
                    }
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// Removes the (empty) `kiln-bench` parent cgroups the jails were created under.
pub fn remove_parent_cgroups() {
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    if let Ok(mounts) = fs::read_dir("/sys/fs/cgroup") {
        for m in mounts.flatten() {
            for line in own.lines() {
                if let Some(path) = line.splitn(3, ':').nth(2) {
                    let dir = m
                        .path()
                        .join(path.trim_start_matches('/'))
                        .join(PARENT_CGROUP);
                    let _ = fs::remove_dir(dir);
                }
            }
        }
    }
}

/// The host's load averages (1, 5, 15 minutes).
pub fn host_load() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// (busy, total) jiffies of all CPUs, from the first line of /proc/stat.
pub fn host_cpu() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Waits until the host's CPUs are quiet (under 10 % busy over 100 ms), at most `timeout`:
/// what a burst of jails leaves the kernel to do after they exit (their network namespaces
/// are destroyed in a work queue, cgroups and RCU callbacks freed) would otherwise land on
/// the next burst measured.
pub fn settle(timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let before = host_cpu();
        thread::sleep(Duration::from_millis(100));
        let after = host_cpu();
        let total = after.1.saturating_sub(before.1).max(1);
        if after.0.saturating_sub(before.0) * 10 < total {
            return;
        }
    }
}

/// User + system CPU time (ms) of every reaped descendant of this process so far.
pub fn children_cpu_ms() -> f64 {
    getrusage(UsageWho::RUSAGE_CHILDREN).map_or(0.0, |ru| {
        let tv = |t: nix::sys::time::TimeVal| t.num_microseconds() as f64 / 1e3;
        tv(ru.user_time()) + tv(ru.system_time())
    })
}

/// The machine line above the table: CPUs, kernel, memory, KVM flavour, load.
pub fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_default();
    let ncpu = thread::available_parallelism().map_or(0, usize::from);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_default();
    format!(
        "{ncpu} CPUs, {cpu}, kernel {}, {}, KVM: {}, load avg {}",
        kernel.trim(),
        mem.split_whitespace().collect::<Vec<_>>().join(" "),
        if pvm {
            "kvm_pvm (guest ring 0 emulated)"
        } else {
            "kvm"
        },
        host_load()
    )
}
