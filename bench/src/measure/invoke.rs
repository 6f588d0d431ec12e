//! Rows 7 (`--only invoke`): invocations through the worker, `kiln invoke echo --repeat N`,
//! cold and warm, and the warm rate of one serial loop.

use crate::opts::Opts;
use crate::table::Table;
use std::process::{Command, Stdio};
use std::time::Instant;

pub fn bench_invoke(opts: &Opts, t: &mut Table) -> Result<(), String> {
    let Some(kiln) = &opts.kiln else {
        eprintln!("== 7. skipped (no --kiln)");
        return Ok(());
    };
    eprintln!("== 7. echo invocations through kiln invoke --repeat");
    let repeat = if opts.quick { 50 } else { 1000 };
    let (mut cold, mut warm) = (vec![], vec![]);
    let mut rates = vec![];
    let cold_runs = opts.runs.min(5);
    for _ in 0..cold_runs {
        let t0 = Instant::now();
        let out = Command::new(kiln)
            .args([
                "invoke",
                "echo",
                "--event",
                r#"{"hello":"world"}"#,
                "--json",
            ])
            .args(["--repeat", &repeat.to_string()])
            .arg("--jailer")
            .arg(&opts.jailer)
            .arg("--vmm")
            .arg(&opts.vmm)
            .arg("--chroot-base-dir")
            .arg(&opts.base)
            .arg("--state-dir")
            .arg(opts.work.join("kiln-state"))
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("kiln: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "kiln invoke failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let _ = t0;
        let mut warm_sum = 0.0;
        let mut warm_n = 0usize;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let Some(total) = v["timings_us"]["total_us"].as_f64() else {
                continue;
            };
            if v["cold"].as_bool() == Some(true) {
                cold.push(total / 1e3);
            } else {
                warm.push(total / 1e3);
                warm_sum += total / 1e6;
                warm_n += 1;
            }
        }
        if warm_sum > 0.0 {
            rates.push(warm_n as f64 / warm_sum);
        }
    }
    t.add("7 echo cold invocation, end to end", "ms", &cold, None);
    t.add("7 echo warm invocation, end to end", "ms", &warm, None);
    t.add_note(
        "7 warm invocations per second (one serial loop ≈ one core)",
        "inv/s",
        &rates,
        None,
        "1 / mean warm total per loop",
    );
    Ok(())
}
