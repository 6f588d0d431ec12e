//! Rows 5 (`--only rate`): creation rate: N jailed microVMs started at once to their first
//! serial bytes, the host's CPU meanwhile, the CPU per microVM, and SIGTERM to all → all gone.

use crate::host::{children_cpu_ms, host_cpu, host_load, leaks};
use crate::launch::{jailer_cmd, write_vm_config, FULL};
use crate::opts::Opts;
use crate::process::{ms, signal, start, TIMEOUT};
use crate::table::Table;
use nix::sys::signal::Signal;
use std::path::Path;
use std::time::Instant;

pub fn bench_rate(opts: &Opts, t: &mut Table) -> Result<(), String> {
    eprintln!("== 5. creation rate: N jailed microVMs concurrently to first serial byte");
    let cfg = write_vm_config(opts, "jail-halt", Path::new("/tiny.elf"), "halt", 1);
    let sizes: &[usize] = if opts.quick { &[10] } else { &[10, 50, 100] };
    let reps = if opts.quick { 1 } else { 3 };
    for &n in sizes {
        let (mut rate, mut all, mut clean) = (vec![], vec![], vec![]);
        let (mut busy, mut per_vm) = (vec![], vec![]);
        let mut leaked = 0;
        for _ in 0..reps {
            let cpu0 = children_cpu_ms();
            let host0 = host_cpu();
            let t0 = Instant::now();
            let mut vms = Vec::with_capacity(n);
            for i in 0..n {
                vms.push(start(jailer_cmd(opts, i, &cfg, FULL), false)?);
            }
            let mut last = t0;
            for s in &mut vms {
                last = last.max(s.first_byte()?);
            }
            let host1 = host_cpu();
            let secs = (last - t0).as_secs_f64();
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
        t.add_note(
            &format!("5 N = {n}: all first serial bytes"),
            "ms",
            &all,
            None,
            &format!("load avg {}", host_load()),
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
        t.add_note(
            &format!("5 N = {n}: CPU per microVM, jail + VMM + boot + cleanup"),
            "CPU ms",
            &per_vm,
            None,
            "getrusage(RUSAGE_CHILDREN) delta / N",
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
