//! Rows 9 (`--only blank`, with `--kiln`): cold invocations of `echo` through `kiln serve`
//! without and with the blank pool (`--blank-pool 16:2`, echo's memory size), p50 and p99;
//! and what the ready blank instances cost at rest (memory, CPU).
//!
//! Every measured invocation is cold: the worker stops idle instances after 20 ms and each
//! run waits until echo has none. With the pool, each run also waits until the pool is full
//! again (the refill's start is not measured, and does not compete with the invocation):
//! the cold start always finds the pool warm. The two workers run one after the other, on
//! the same host, with the same function build.

use super::cold_start::{functions, invoke, invoke_phases, serve, wait_idle_gone};
use crate::opts::Opts;
use crate::process::{cpu_ms, signal, TIMEOUT};
use crate::socket::api_request;
use crate::table::Table;
use nix::sys::signal::Signal;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

/// Blank instances kept ready, of echo's memory size.
const POOL: usize = 2;
const MEMORY_MIB: u64 = 16;

/// `GET /blank-pool`'s ready instances of echo's size.
fn ready(sock: &Path) -> Result<Vec<serde_json::Value>, String> {
    let answer = api_request(sock, "GET", "/blank-pool", "")?;
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    Ok(v["sizes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["memory_mib"] == MEMORY_MIB)
        .flat_map(|s| s["ready"].as_array().cloned().unwrap_or_default())
        .collect())
}

fn wait_pool_full(sock: &Path) -> Result<Vec<serde_json::Value>, String> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let r = ready(sock)?;
        if r.len() >= POOL {
            return Ok(r);
        }
        if Instant::now() > deadline {
            return Err(format!("the blank pool did not fill: {r:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The `p`th percentile (nearest rank) of `v`.
fn percentile(v: &[f64], p: usize) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = (p * s.len()).div_ceil(100);
    s.get(rank.saturating_sub(1).min(s.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0)
}

/// Pids whose command line names `id`.
fn pids_of(id: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let named = fs::read(e.path().join("cmdline"))
            .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == id.as_bytes()));
        if named {
            pids.push(pid);
        }
    }
    pids
}

/// Pss (KiB) of `pid`.
fn pss_kib(pid: u32) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// One cold run's worker-side phases (`X-Kiln-Timings`, µs).
type Phases = Vec<(String, f64)>;

/// `runs` cold invocations of echo on the worker at `sock` (each after echo's last instance
/// is gone, and with `pool`, after the blank pool is full again); their end-to-end totals
/// (ms), their phases, and how many ran on a blank instance.
fn cold_runs(
    sock: &Path,
    runs: usize,
    pool: bool,
) -> Result<(Vec<f64>, Vec<Phases>, usize), String> {
    let (mut totals, mut phases, mut on_blank) = (Vec::new(), Vec::new(), 0);
    for _ in 0..runs {
        wait_idle_gone(sock, "echo")?;
        if pool {
            wait_pool_full(sock)?;
        }
        // Let the last stop's teardown and the refill settle.
        std::thread::sleep(Duration::from_millis(10));
        let (cold, these) = invoke_phases(sock, "echo")?;
        if !cold {
            return Err("echo: a warm invocation where a cold one was due".into());
        }
        let total = these.iter().find(|(k, _)| k == "total_us").map(|p| p.1);
        totals.push(total.ok_or("echo: no total_us in X-Kiln-Timings")? / 1e3);
        phases.push(these);
        if pool {
            let answer = api_request(sock, "GET", "/functions", "")?;
            on_blank += usize::from(answer.contains("\"id\":\"blank-"));
        }
    }
    Ok((totals, phases, on_blank))
}

/// `jail 1.23, vmm_start 0.45, …`: the median of each phase (ms) the runs reported, in the
/// worker's order, the total left out.
fn phase_medians(runs: &[Phases]) -> String {
    let names: Vec<&str> = runs
        .first()
        .map(|p| p.iter().map(|(k, _)| k.as_str()).collect())
        .unwrap_or_default();
    names
        .into_iter()
        .filter(|k| *k != "total_us")
        .map(|k| {
            let v: Vec<f64> = runs
                .iter()
                .filter_map(|p| p.iter().find(|(n, _)| n == k).map(|(_, v)| v / 1e3))
                .collect();
            format!("{} {:.2}", k.trim_end_matches("_us"), percentile(&v, 50))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn bench_blank_pool(opts: &Opts, t: &mut Table) -> Result<(), String> {
    let Some(kiln) = &opts.kiln else {
        eprintln!("== 9. blank pool rows skipped (no --kiln)");
        return Ok(());
    };
    let Some(functions) = functions(opts)? else {
        eprintln!("== 9. blank pool rows skipped (run from the repository's root)");
        return Ok(());
    };
    let runs = if opts.quick { 20 } else { opts.runs.max(200) };
    eprintln!("== 9. worker: cold invocations without and with the blank pool ({runs} each)");
    let sock = opts.work.join("kiln-blank.sock");
    let pool_flag = format!("{MEMORY_MIB}:{POOL}");
    let mut rows = Vec::new();
    let mut at_rest = None;
    for pool in [false, true] {
        let extra: Vec<&str> = if pool {
            vec!["--blank-pool", &pool_flag]
        } else {
            vec![]
        };
        let server = serve(opts, kiln, &functions, &sock, "20", &extra)?;
        let result = (|| -> Result<(), String> {
            // Builds the image (not measured).
            invoke(&sock, "echo")?;
            let (totals, phases, on_blank) = cold_runs(&sock, runs, pool)?;
            if pool && on_blank < runs {
                return Err(format!(
                    "only {on_blank} of {runs} cold starts ran on a blank instance"
                ));
            }
            rows.push((pool, totals, phases));
            if pool {
                wait_idle_gone(&sock, "echo")?;
                let blanks = wait_pool_full(&sock)?;
                let ids: Vec<String> = blanks
                    .iter()
                    .filter_map(|b| b["id"].as_str().map(str::to_owned))
                    .collect();
                let pids: Vec<u32> = ids.iter().flat_map(|id| pids_of(id)).collect();
                let pss: f64 = pids.iter().map(|&p| pss_kib(p)).sum();
                let window = Duration::from_secs(if opts.quick { 1 } else { 5 });
                let before: f64 = pids.iter().map(|&p| cpu_ms(p)).sum();
                let worker_before = cpu_ms(server.child.id());
                std::thread::sleep(window);
                let after: f64 = pids.iter().map(|&p| cpu_ms(p)).sum();
                let worker_after = cpu_ms(server.child.id());
                let per_s = window.as_secs_f64();
                at_rest = Some((
                    pss / 1024.0 / ids.len().max(1) as f64,
                    (after - before) / per_s / ids.len().max(1) as f64,
                    (worker_after - worker_before) / per_s,
                    pids.len() / ids.len().max(1),
                ));
            }
            Ok(())
        })();
        signal(server.child.id(), Signal::SIGTERM);
        server.finish(TIMEOUT)?;
        result?;
    }
    for (pool, totals, phases) in &rows {
        let (name, what) = if *pool {
            (
                "9 worker: cold invocation, blank pool warm (echo)",
                "a ready blank instance (its KVM VM, guest memory and vCPU made ahead, --prepare-vm; machine-config and vsock set): image staged into its jail, boot-source and InstanceStart in one write on its kept API connection, guest Hello, handler",
            )
        } else {
            (
                "9 worker: cold invocation, no blank pool (echo)",
                "jail, VMM, guest Hello, handler",
            )
        };
        let note = format!(
            "{what}; p50 {:.2} ms, p99 {:.2} ms over {}; the worker's phases, medians (ms): {}",
            percentile(totals, 50),
            percentile(totals, 99),
            totals.len(),
            phase_medians(phases)
        );
        t.add_note(name, "ms", totals, None, &note);
    }
    if let Some((pss_mib, cpu_ms_per_s, worker_ms_per_s, procs)) = at_rest {
        t.add_note(
            "9 blank pool at rest: memory per blank instance",
            "MiB",
            &[pss_mib],
            None,
            &format!("Pss of the {procs} processes of each (jailer supervisor, the jail's init, VMM), {POOL} ready of {MEMORY_MIB} MiB; guest memory mapped and registered but untouched (no resident page; KVM's own allocations are kernel memory, not in Pss)"),
        );
        t.add_note(
            "9 blank pool at rest: CPU per blank instance",
            "ms/s",
            &[cpu_ms_per_s],
            None,
            &format!("its processes' CPU time per second at rest; the worker's (refill thread ticking, reaper): {worker_ms_per_s:.3} ms/s"),
        );
    }
    Ok(())
}
