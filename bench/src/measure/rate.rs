//! Rows 5 (`--only rate`): creation rate: N jailed microVMs started at once to their first
//! serial bytes, the host's CPU meanwhile, the CPU per microVM, and SIGTERM to all → all gone;
//! beside them the same burst under Firecracker's jailer (`--firecracker-jailer`): its default
//! jail, and its jail with the layers of Kiln's profile (`layered_peer`).

use crate::host::{children_cpu_ms, host_cpu, host_load, leaks, settle};
use crate::launch::{firecracker_jailer_cmd, jailer_cmd, write_vm_config, FULL};
use crate::layered_peer;
use crate::opts::Opts;
use crate::process::{burst, ms, signal, TIMEOUT};
use crate::table::{measured, Table};
use nix::sys::signal::Signal;
use std::path::Path;
use std::time::{Duration, Instant};

/// The longest wait for a quiet host before a burst ([`settle`]).
const SETTLE: Duration = Duration::from_secs(3);

/// Firecracker's burst of `n` under its jailer: (all first bytes in ms, CPU ms per microVM),
/// or `None` without the Firecracker peer. Its jails are staged before the clock starts and
/// removed after the CPU is read (Firecracker's jailer leaves them to its caller).
fn firecracker_burst(opts: &Opts, cfg: &Path, n: usize) -> Result<Option<(f64, f64)>, String> {
    let mut jails = Vec::with_capacity(n);
    for i in 0..n {
        match firecracker_jailer_cmd(opts, i, cfg)? {
            Some(j) => jails.push(j),
            None => return Ok(None),
        }
    }
    let dirs: Vec<_> = jails.iter().map(|j| j.dir.clone()).collect();
    let cpu0 = children_cpu_ms();
    let (vms, all) = burst(jails.into_iter().map(|j| j.cmd));
    for s in &vms {
        signal(s.child.id(), Signal::SIGTERM);
    }
    for s in vms {
        // Firecracker has no SIGTERM handler: killed by it, no exit code.
        s.finish(TIMEOUT)?;
    }
    let per_vm = (children_cpu_ms() - cpu0) / n as f64;
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    all.map(|all| Some((ms(all), per_vm)))
}

/// The same burst under Firecracker's jailer with the layers of Kiln's profile
/// (`layered_peer`: their network namespaces made before the clock starts), or `None`
/// without the Firecracker peer.
fn layered_burst(opts: &Opts, cfg: &Path, n: usize) -> Result<Option<(f64, f64)>, String> {
    let mut jails = Vec::with_capacity(n);
    for i in 0..n {
        match layered_peer::stage(opts, i, cfg) {
            Ok(Some(j)) => jails.push(j),
            Ok(None) => return Ok(None),
            // The jails staged so far are removed as they are dropped.
            Err(e) => return Err(e),
        }
    }
    layered_peer::burst(jails).map(Some)
}

pub fn bench_rate(opts: &Opts, t: &mut Table) -> Result<(), String> {
    eprintln!("== 5. creation rate: N jailed microVMs concurrently to first serial byte");
    let cfg = write_vm_config(opts, "jail-halt", Path::new("/tiny.elf"), "halt", 1);
    let sizes: &[usize] = if opts.quick { &[10] } else { &[10, 50, 100] };
    let reps = if opts.quick { 1 } else { 3 };
    for &n in sizes {
        let (mut rate, mut all, mut clean) = (vec![], vec![], vec![]);
        let (mut busy, mut per_vm) = (vec![], vec![]);
        let mut leaked = 0;
        let (mut fc_all, mut fc_cpu) = (vec![], vec![]);
        let (mut layered_all, mut layered_cpu) = (vec![], vec![]);
        for _ in 0..reps {
            // Each burst starts on a quiet host: what the one before left the kernel to do
            // (its namespaces' destruction above all) is done first.
            settle(SETTLE);
            if let Some((a, c)) = firecracker_burst(opts, &cfg, n)? {
                fc_all.push(a);
                fc_cpu.push(c);
                settle(SETTLE);
            }
            if let Some((a, c)) = layered_burst(opts, &cfg, n)? {
                layered_all.push(a);
                layered_cpu.push(c);
                settle(SETTLE);
            }
            let cpu0 = children_cpu_ms();
            let host0 = host_cpu();
            let (vms, all_up) = burst((0..n).map(|i| jailer_cmd(opts, i, &cfg, FULL)));
            let secs = all_up?.as_secs_f64();
            let host1 = host_cpu();
            let dt = (host1.1 - host0.1).max(1) as f64;
            busy.push(100.0 * (host1.0 - host0.0) as f64 / dt);
            all.push(secs * 1e3);
            rate.push(n as f64 / secs);
            let c0 = Instant::now();
            for s in &vms {
                signal(s.child.id(), Signal::SIGTERM);
            }
            for s in vms {
                let (code, _) = s.finish(TIMEOUT)?;
                if code != Some(0) {
                    return Err(format!("a jailer exited with {code:?} after SIGTERM"));
                }
            }
            clean.push(ms(c0.elapsed()));
            per_vm.push((children_cpu_ms() - cpu0) / n as f64);
            let l = leaks(opts);
            if !l.is_empty() {
                eprintln!("LEAKED after N = {n}: {l:?}");
            }
            leaked += l.len();
        }
        t.add_peers(
            &format!("5 N = {n}: all first serial bytes"),
            "ms",
            &all,
            (None, measured(&fc_all)),
            &format!(
                "load avg {}; Firecracker: its jailer's default jail",
                host_load()
            ),
        );
        t.add_peers(
            &format!("5 N = {n}: all first serial bytes, vs Firecracker's jailer with the same layers"),
            "ms",
            &all,
            (None, measured(&layered_all)),
            "Firecracker: --cgroup, --resource-limit, --new-pid-ns, --netns (each namespace with the same firewall, made before the clock starts: not counted)",
        );
        t.add_note(
            &format!("5 N = {n}: creation rate"),
            "VMs/s",
            &rate,
            None,
            "Firecracker spec: ≥ 150 microVMs/s/host (36-core host)",
        );
        t.add_note(
            &format!("5 N = {n}: host CPU busy while creating"),
            "%",
            &busy,
            None,
            "all CPUs, /proc/stat; ~100 % = limited by the host's CPUs",
        );
        t.add_peers(
            &format!("5 N = {n}: CPU per microVM, jail + VMM + boot + cleanup"),
            "CPU ms",
            &per_vm,
            (None, measured(&fc_cpu)),
            "getrusage(RUSAGE_CHILDREN) delta / N; Firecracker: its default jail, start to SIGTERM reaped (its jailer removes nothing)",
        );
        t.add_peers(
            &format!("5 N = {n}: CPU per microVM, vs Firecracker's jailer with the same layers"),
            "CPU ms",
            &per_vm,
            (None, measured(&layered_cpu)),
            "Firecracker's jailers and VMMs, start to SIGKILL reaped (each its PID namespace's init); its namespaces, firewalls and clean-up not counted",
        );
        t.add_note(
            &format!("5 N = {n}: SIGTERM all → all gone, jails removed"),
            "ms",
            &clean,
            None,
            &format!("left over afterwards: {leaked}"),
        );
    }
    Ok(())
}
