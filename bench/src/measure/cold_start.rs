//! Rows 8 (`--only snapshot`, with `--kiln`): cold invocations through `kiln serve`, booted
//! versus restored from a snapshot. The `echo` example as it is, and a copy of it whose
//! manifest asks for `"snapshot_start": true` (`echo-snap`); the worker stops idle
//! instances after 100 ms, and each run waits until the function has none, so that every
//! invocation measured is a cold one (jail, VMM, guest ready or restored, handler). The
//! first `echo-snap` invocation, which boots the template and makes the snapshot, is its
//! own row.

use crate::opts::Opts;
use crate::process::{signal, start, Started, TIMEOUT};
use crate::socket::{api_request, poll_socket};
use crate::table::Table;
use nix::sys::signal::Signal;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const SNAP: &str = "echo-snap";

/// `<work>/functions/`: `echo` (a link to the example) and `echo-snap` (its sources, its
/// runtime by absolute path, snapshot start). `None` when the examples are not where
/// `scripts/bench.sh` runs from (the repository's root).
pub(super) fn functions(opts: &Opts) -> Result<Option<PathBuf>, String> {
    let root = std::env::current_dir().map_err(|e| e.to_string())?;
    let echo = root.join("examples/functions/echo");
    let runtime = root.join("guest/runtime");
    if !echo.join("kiln.json").is_file() || !runtime.is_dir() {
        return Ok(None);
    }
    let dir = opts.work.join("functions");
    let snap = dir.join(SNAP);
    fs::create_dir_all(snap.join("src")).map_err(|e| e.to_string())?;
    let _ = std::os::unix::fs::symlink(&echo, dir.join("echo"));
    for entry in fs::read_dir(echo.join("src")).map_err(|e| e.to_string())? {
        let e = entry.map_err(|e| e.to_string())?;
        fs::copy(e.path(), snap.join("src").join(e.file_name())).map_err(|e| e.to_string())?;
    }
    let cargo = fs::read_to_string(echo.join("Cargo.toml"))
        .map_err(|e| e.to_string())?
        .replace("../../../guest/runtime", &runtime.display().to_string());
    fs::write(snap.join("Cargo.toml"), cargo).map_err(|e| e.to_string())?;
    let mut manifest: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(echo.join("kiln.json")).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    manifest["name"] = SNAP.into();
    manifest["snapshot_start"] = true.into();
    fs::write(snap.join("kiln.json"), manifest.to_string()).map_err(|e| e.to_string())?;
    Ok(Some(dir))
}

/// One invocation: (cold start?, end-to-end total in ms from `X-Kiln-Timings`).
pub(super) fn invoke(sock: &Path, function: &str) -> Result<(bool, f64), String> {
    let (cold, phases) = invoke_phases(sock, function)?;
    let total_us = phases
        .iter()
        .find_map(|(k, v)| (k == "total_us").then_some(*v))
        .ok_or_else(|| format!("{function}: no total_us in X-Kiln-Timings"))?;
    Ok((cold, total_us / 1e3))
}

/// Invokes `function` once: whether it was a cold start, and the worker's `X-Kiln-Timings`
/// (`name_us=value` pairs, in µs; `null` phases left out).
pub(super) fn invoke_phases(
    sock: &Path,
    function: &str,
) -> Result<(bool, Vec<(String, f64)>), String> {
    let answer = api_request(
        sock,
        "POST",
        &format!("/functions/{function}/invocations"),
        r#"{"hello":"world"}"#,
    )?;
    let header = |name: &str| {
        answer
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let cold = header("X-Kiln-Cold-Start:").as_deref() == Some("true");
    let timings = header("X-Kiln-Timings:")
        .ok_or_else(|| format!("{function}: no X-Kiln-Timings in the answer:\n{answer}"))?;
    let phases = timings
        .split(", ")
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_string(), v)))
        .collect();
    Ok((cold, phases))
}

/// Waits until `function` has no instance left (the idle reaper stopped it).
pub(super) fn wait_idle_gone(sock: &Path, function: &str) -> Result<(), String> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let answer = api_request(sock, "GET", "/functions", "")?;
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let busy = v["functions"].as_array().into_iter().flatten().any(|f| {
            f["name"] == function && f["instances"].as_array().is_some_and(|i| !i.is_empty())
        });
        if !busy {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{function}'s instances were not reaped"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `kiln serve` on `sock` with the bench's jailer, VMM, profile and chroot base, idle
/// instances stopped after `idle_ms`, and `extra` flags.
pub(super) fn serve(
    opts: &Opts,
    kiln: &Path,
    functions: &Path,
    sock: &Path,
    idle_ms: &str,
    extra: &[&str],
) -> Result<Started, String> {
    let mut c = Command::new(kiln);
    c.arg("serve")
        .arg("--socket")
        .arg(sock)
        .arg("--functions-dir")
        .arg(functions)
        .arg("--jailer")
        .arg(&opts.jailer)
        .arg("--vmm")
        .arg(&opts.vmm)
        .arg("--chroot-base-dir")
        .arg(&opts.base)
        .arg("--state-dir")
        .arg(opts.work.join("kiln-state"))
        .arg("--profile")
        .arg(&opts.profile)
        .args(["--idle-timeout-ms", idle_ms])
        .args(extra);
    let s = start(c, true)?;
    poll_socket(
        sock,
        b"GET /functions HTTP/1.1\r\nHost: x\r\n\r\n",
        s.t0 + TIMEOUT,
    )?;
    Ok(s)
}

pub fn bench_cold_starts(opts: &Opts, t: &mut Table) -> Result<(), String> {
    let Some(kiln) = &opts.kiln else {
        eprintln!("== 8. worker rows skipped (no --kiln)");
        return Ok(());
    };
    let Some(functions) = functions(opts)? else {
        eprintln!("== 8. worker rows skipped (run from the repository's root)");
        return Ok(());
    };
    eprintln!("== 8. worker: cold invocations, booted vs restored from a snapshot");
    let sock = opts.work.join("kiln-serve.sock");
    let server = serve(opts, kiln, &functions, &sock, "100", &[])?;
    let result = (|| -> Result<(), String> {
        // Builds both images (a first build takes long): not measured.
        invoke(&sock, "echo")?;
        wait_idle_gone(&sock, "echo")?;
        let (cold, made) = invoke(&sock, SNAP)?;
        if !cold {
            return Err(format!("{SNAP}'s first invocation was not a cold start"));
        }
        wait_idle_gone(&sock, SNAP)?;
        let (mut booted, mut restored) = (vec![], vec![]);
        for _ in 0..opts.runs {
            for (function, into) in [("echo", &mut booted), (SNAP, &mut restored)] {
                let (cold, ms) = invoke(&sock, function)?;
                if !cold {
                    return Err(format!(
                        "{function}: a warm invocation where a cold one was due"
                    ));
                }
                into.push(ms);
                wait_idle_gone(&sock, function)?;
            }
        }
        t.add_note(
            "8 worker: cold invocation, booted (echo)",
            "ms",
            &booted,
            None,
            "kiln serve: jail, VMM, guest Hello, handler",
        );
        t.add_note(
            "8 worker: cold invocation, restored from the function's snapshot",
            "ms",
            &restored,
            None,
            "snapshot_start: jail, VMM, snapshot/load (authenticated), the guest's new Hello, handler",
        );
        t.add_note(
            "8 worker: first cold invocation of a snapshot-start function",
            "ms",
            &[made],
            None,
            "boots a template, snapshots it, then restores: once per function build",
        );
        Ok(())
    })();
    signal(server.child.id(), Signal::SIGTERM);
    server.finish(TIMEOUT)?;
    result
}
