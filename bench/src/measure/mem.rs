//! Rows 4 (`--only mem`): the VMM's memory beyond the guest's RAM after boot (guest halted),
//! 1 and 2 vCPUs.

use crate::launch::{qemu_cmd, vmm_config_cmd, write_vm_config};
use crate::opts::Opts;
use crate::process::{signal, start, TIMEOUT};
use crate::table::{measured, Table};
use nix::sys::signal::Signal;
use std::fs;
use std::thread;
use std::time::Duration;

fn memory(pid: u32, guest_kib: u64) -> Result<(f64, f64, f64, f64), String> {
    let roll = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .map_err(|e| format!("smaps_rollup: {e}"))?;
    let field = |text: &str, key: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|x| x.parse().ok())
            .unwrap_or(0.0)
    };
    let rss = field(&roll, "Rss:");
    let pss = field(&roll, "Pss:");
    // The guest RAM: the anonymous mapping of exactly the guest memory size (QEMU may add
    // up to 2 MiB of alignment; take the largest mapping in [size, size + 2 MiB]).
    let smaps =
        fs::read_to_string(format!("/proc/{pid}/smaps")).map_err(|e| format!("smaps: {e}"))?;
    let (mut g_rss, mut g_pss, mut best) = (0.0, 0.0, 0u64);
    let mut cur_size = 0u64;
    let mut cur_rss = 0.0;
    for l in smaps.lines() {
        if l.starts_with("Size:") {
            cur_size = l
                .split_whitespace()
                .nth(1)
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
        } else if l.starts_with("Rss:") {
            cur_rss = field(l, "Rss:");
        } else if l.starts_with("Pss:") {
            let p = field(l, "Pss:");
            if cur_size >= guest_kib && cur_size <= guest_kib + 2048 && cur_size > best {
                best = cur_size;
                g_rss = cur_rss;
                g_pss = p;
            }
        }
    }
    if best == 0 {
        return Err(format!(
            "pid {pid}: no mapping of the guest's {guest_kib} KiB"
        ));
    }
    Ok((rss, pss, g_rss, g_pss))
}

pub fn bench_mem(opts: &Opts, t: &mut Table) -> Result<(), String> {
    eprintln!("== 4. VMM memory overhead after boot (guest halted)");
    let guest_kib = u64::from(opts.mem_mib) * 1024;
    let runs = opts.runs.min(10);
    for vcpus in [1u32, 2] {
        let cfg = write_vm_config(opts, &format!("halt{vcpus}"), &opts.tiny, "halt", vcpus);
        let (mut krss, mut kpss, mut kg) = (vec![], vec![], vec![]);
        let (mut qrss, mut qpss, mut qg) = (vec![], vec![], vec![]);
        for _ in 0..runs {
            let mut s = start(vmm_config_cmd(opts, &cfg), false)?;
            s.first_byte()?;
            thread::sleep(Duration::from_millis(100));
            let (rss, pss, grss, gpss) = memory(s.child.id(), guest_kib)?;
            krss.push((rss - grss) / 1024.0);
            kpss.push((pss - gpss) / 1024.0);
            kg.push(grss / 1024.0);
            signal(s.child.id(), Signal::SIGTERM);
            s.finish(TIMEOUT)?;
            if let Some(c) = qemu_cmd(opts, "halt", vcpus, &[]) {
                let mut s = start(c, false)?;
                s.first_byte()?;
                thread::sleep(Duration::from_millis(100));
                let (rss, pss, grss, gpss) = memory(s.child.id(), guest_kib)?;
                qrss.push((rss - grss) / 1024.0);
                qpss.push((pss - gpss) / 1024.0);
                qg.push(grss / 1024.0);
                signal(s.child.id(), Signal::SIGTERM);
                s.finish(TIMEOUT)?;
            }
        }
        t.add_note(
            &format!("4 VMM RSS beyond guest memory, {vcpus} vCPU"),
            "MiB",
            &krss,
            measured(&qrss),
            "Firecracker spec: ≤ 5 MiB; FC here ~4.2 MB RSS total",
        );
        t.add(
            &format!("4 VMM PSS beyond guest memory, {vcpus} vCPU"),
            "MiB",
            &kpss,
            measured(&qpss),
        );
        t.add(
            &format!("4 (guest memory touched, {vcpus} vCPU: subtracted above)"),
            "MiB",
            &kg,
            measured(&qg),
        );
    }
    Ok(())
}
