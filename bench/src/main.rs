//! `kiln-bench`: Kiln's VMM and jailer measured side by side with QEMU's `microvm` machine on
//! the same tiny test guest (project issue #10). Run through `scripts/bench.sh`, which builds
//! the release binaries and passes their paths; the results are described in
//! `docs/benchmarks.md`.
//!
//! Every time is taken on CLOCK_MONOTONIC in this process, from just before `spawn` to the
//! event (the API socket answering, the first byte read from the guest's serial pipe, the
//! process reaped). CPU times are the sum of `/proc/<pid>/task/*/schedstat` run times
//! (nanosecond resolution) read at the event. Memory is `/proc/<pid>/smaps_rollup` minus the
//! guest RAM mapping's own Rss/Pss (the mapping of exactly the guest memory size).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const USAGE: &str = "\
kiln-bench --vmm PATH --jailer PATH --tiny PATH [OPTIONS]

Measures Kiln (vmm, jailer, kiln worker) and QEMU's microvm on the tiny test guest and prints
a table of min/median/max over repeated runs. Needs root and /dev/kvm.

  --vmm PATH          Kiln's VMM (release build)
  --jailer PATH       Kiln's jailer (release build)
  --tiny PATH         the tiny test guest ELF (tiny-guest-path prints it)
  --qemu PATH         qemu-system-x86_64 (default: found on PATH; QEMU columns empty without)
  --kiln PATH         the kiln worker, for the invocation rows (default: none, rows skipped)
  --profile PATH      tenant profile for the jails (default: policies/tenant/default.json)
  --runs N            runs per measurement (default 20)
  --quick             CI-sized: 5 runs, creation rate for N = 10 only, 50 invocations
  --only LIST         comma-separated subset of: api,serial,jail,mem,rate,teardown,invoke
  --mem-mib N         guest memory (default 128)
";

const TIMEOUT: Duration = Duration::from_secs(20);
const UID_BASE: u32 = 47000;
const PARENT_CGROUP: &str = "kiln-bench";

struct Opts {
    vmm: PathBuf,
    jailer: PathBuf,
    tiny: PathBuf,
    qemu: Option<PathBuf>,
    kiln: Option<PathBuf>,
    profile: PathBuf,
    runs: usize,
    quick: bool,
    only: Option<Vec<String>>,
    mem_mib: u32,
    work: PathBuf,
    base: PathBuf,
    prefix: String,
}

impl Opts {
    fn wants(&self, what: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|l| l.iter().any(|x| x == what))
    }
}

fn parse_args() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let mut vmm = None;
    let mut jailer = None;
    let mut tiny = None;
    let mut qemu = None;
    let mut kiln = None;
    let mut profile = PathBuf::from("policies/tenant/default.json");
    let mut runs = None;
    let mut quick = false;
    let mut only = None;
    let mut mem_mib = 128;
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--vmm" => vmm = Some(PathBuf::from(val("--vmm")?)),
            "--jailer" => jailer = Some(PathBuf::from(val("--jailer")?)),
            "--tiny" => tiny = Some(PathBuf::from(val("--tiny")?)),
            "--qemu" => qemu = Some(PathBuf::from(val("--qemu")?)),
            "--kiln" => kiln = Some(PathBuf::from(val("--kiln")?)),
            "--profile" => profile = PathBuf::from(val("--profile")?),
            "--runs" => {
                let v = val("--runs")?;
                runs = Some(
                    v.parse::<usize>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or(format!("--runs: not a positive number: {v}"))?,
                );
            }
            "--mem-mib" => {
                let v = val("--mem-mib")?;
                mem_mib = v
                    .parse()
                    .ok()
                    .filter(|n| *n >= 16)
                    .ok_or(format!("--mem-mib: need a number >= 16: {v}"))?;
            }
            "--quick" => quick = true,
            "--only" => {
                only = Some(
                    val("--only")?
                        .split(',')
                        .map(str::to_string)
                        .collect::<Vec<_>>(),
                )
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}\n\n{USAGE}")),
        }
    }
    let qemu = qemu.or_else(|| {
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|d| d.join("qemu-system-x86_64"))
            .find(|p| p.is_file())
    });
    let pid = std::process::id();
    Ok(Opts {
        vmm: vmm.ok_or("--vmm is required")?,
        jailer: jailer.ok_or("--jailer is required")?,
        tiny: tiny.ok_or("--tiny is required")?,
        qemu,
        kiln,
        profile,
        runs: runs.unwrap_or(if quick { 5 } else { 20 }),
        quick,
        only,
        mem_mib,
        work: PathBuf::from(format!("/tmp/kiln-bench-{pid}")),
        base: PathBuf::from(format!("/srv/kiln-bench-{pid}")),
        prefix: format!("kb{pid}-"),
    })
}

// ---------------------------------------------------------------------------------------------
// Statistics and the table

#[derive(Clone, Copy)]
struct Stats {
    min: f64,
    med: f64,
    max: f64,
    n: usize,
}

fn stats(v: &[f64]) -> Option<Stats> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some(Stats {
        min: s[0],
        med,
        max: s[n - 1],
        n,
    })
}

struct Row {
    metric: String,
    unit: &'static str,
    kiln: Option<Stats>,
    qemu: Option<Stats>,
    note: String,
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
}

impl Table {
    fn add(&mut self, metric: &str, unit: &'static str, kiln: &[f64], qemu: Option<&[f64]>) {
        self.add_note(metric, unit, kiln, qemu, "");
    }

    fn add_note(
        &mut self,
        metric: &str,
        unit: &'static str,
        kiln: &[f64],
        qemu: Option<&[f64]>,
        note: &str,
    ) {
        let row = Row {
            metric: metric.to_string(),
            unit,
            kiln: stats(kiln),
            qemu: qemu.and_then(stats),
            note: note.to_string(),
        };
        eprintln!("  {}", render_row(&row));
        self.rows.push(row);
    }

    fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| metric | unit | Kiln min / median / max | QEMU microvm min / median / max | Kiln/QEMU (median) | runs | note |"
        );
        let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- | --- |");
        for r in &self.rows {
            let _ = writeln!(out, "{}", render_row(r));
        }
        out
    }
}

fn fmt_num(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn fmt_stats(s: Option<Stats>) -> String {
    match s {
        Some(s) => format!(
            "{} / {} / {}",
            fmt_num(s.min),
            fmt_num(s.med),
            fmt_num(s.max)
        ),
        None => "–".to_string(),
    }
}

fn render_row(r: &Row) -> String {
    let ratio = match (r.kiln, r.qemu) {
        (Some(k), Some(q)) if q.med != 0.0 => format!("{:.2}", k.med / q.med),
        _ => "–".to_string(),
    };
    let n = r.kiln.map_or(0, |s| s.n);
    format!(
        "| {} | {} | {} | {} | {} | {} | {} |",
        r.metric,
        r.unit,
        fmt_stats(r.kiln),
        fmt_stats(r.qemu),
        ratio,
        n,
        r.note
    )
}

// ---------------------------------------------------------------------------------------------
// Processes

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// CPU time (ms) of every live thread of `pid` so far, from schedstat (ns).
fn cpu_ms(pid: u32) -> f64 {
    let mut ns: u64 = 0;
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in dir.flatten() {
            if let Ok(s) = fs::read_to_string(t.path().join("schedstat")) {
                ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|x| x.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    ns as f64 / 1e6
}

fn signal(pid: u32, sig: i32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    // SAFETY: kill(2) on a pid this process spawned and has not reaped yet; no memory involved.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Waits for `child` with a deadline, killing it if it overstays; returns the exit code.
fn wait_deadline(child: &mut Child, timeout: Duration) -> Result<Option<i32>, String> {
    let t0 = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Ok(st.code()),
            Ok(None) if t0.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "pid {} did not exit within {timeout:?}",
                    child.id()
                ));
            }
            Ok(None) => thread::sleep(Duration::from_micros(200)),
            Err(e) => return Err(format!("wait: {e}")),
        }
    }
}

/// Reads the first byte of `out` on a thread (then drains it to EOF) and reports its time.
fn first_byte_watch(mut out: ChildStdout) -> mpsc::Receiver<Instant> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut b = [0u8; 4096];
        let mut sent = false;
        while let Ok(n) = out.read(&mut b) {
            if n == 0 {
                break;
            }
            if !sent {
                let _ = tx.send(Instant::now());
                sent = true;
            }
        }
    });
    rx
}

/// Collects stderr lines on a thread.
fn stderr_collect(err: ChildStderr) -> thread::JoinHandle<Vec<String>> {
    thread::spawn(move || BufReader::new(err).lines().map_while(Result::ok).collect())
}

/// A spawned process with its serial (stdout) first-byte watch.
struct Started {
    child: Child,
    t0: Instant,
    first: mpsc::Receiver<Instant>,
    stderr: Option<thread::JoinHandle<Vec<String>>>,
}

fn start(mut cmd: Command, keep_stderr: bool) -> Result<Started, String> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    cmd.stderr(if keep_stderr {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("spawn {:?}: {e}", cmd.get_program()))?;
    let first = first_byte_watch(child.stdout.take().ok_or("no stdout")?);
    let stderr = child.stderr.take().map(stderr_collect);
    Ok(Started {
        child,
        t0,
        first,
        stderr,
    })
}

impl Started {
    /// Time to the first serial byte.
    fn first_byte(&mut self) -> Result<Instant, String> {
        self.first.recv_timeout(TIMEOUT).map_err(|_| {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let err = self
                .stderr
                .take()
                .and_then(|h| h.join().ok())
                .unwrap_or_default();
            format!(
                "no serial byte from {:?} within {TIMEOUT:?}; stderr:\n{}",
                self.child.id(),
                err.join("\n")
            )
        })
    }

    fn finish(mut self, timeout: Duration) -> Result<(Option<i32>, Vec<String>), String> {
        let code = wait_deadline(&mut self.child, timeout)?;
        let err = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Ok((code, err))
    }
}

// ---------------------------------------------------------------------------------------------
// Commands

fn write_vm_config(opts: &Opts, name: &str, kernel: &Path, scenario: &str, vcpus: u32) -> PathBuf {
    let path = opts.work.join(format!("{name}.json"));
    let cfg = serde_json::json!({
        "boot-source": {
            "kernel_image_path": kernel,
            "boot_args": format!("kiln.test={scenario}"),
        },
        "machine-config": {"vcpu_count": vcpus, "mem_size_mib": opts.mem_mib},
    });
    fs::write(&path, cfg.to_string()).expect("write VM config");
    path
}

fn vmm_config_cmd(opts: &Opts, cfg: &Path) -> Command {
    let mut c = Command::new(&opts.vmm);
    c.arg("--config-file").arg(cfg).arg("--no-api");
    c
}

fn qemu_cmd(opts: &Opts, scenario: &str, vcpus: u32, extra: &[&str]) -> Option<Command> {
    let qemu = opts.qemu.as_ref()?;
    let mut c = Command::new(qemu);
    c.args(["-M", "microvm,accel=kvm,acpi=off", "-m"])
        .arg(opts.mem_mib.to_string())
        .args(["-smp", &vcpus.to_string()])
        .arg("-kernel")
        .arg(&opts.tiny)
        .args(["-append", &format!("kiln.test={scenario}")])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0xf4",
        ])
        .args(extra);
    Some(c)
}

/// Which jail layers are on.
#[derive(Clone, Copy)]
struct Layers {
    netns: bool,
    pidns: bool,
}

const FULL: Layers = Layers {
    netns: true,
    pidns: true,
};

fn jail_id(opts: &Opts, n: usize) -> String {
    format!("{}{n}", opts.prefix)
}

/// The jailer with the full default profile (`--cleanup-on-exit` always, so the jail is
/// removed when the VMM ends) booting the tiny guest in config-file mode.
fn jailer_cmd(opts: &Opts, n: usize, cfg: &Path, layers: Layers) -> Command {
    let uid = (UID_BASE + u32::try_from(n % 10_000).unwrap_or(0)).to_string();
    let mut c = Command::new(&opts.jailer);
    c.arg("--id")
        .arg(jail_id(opts, n))
        .arg("--exec-file")
        .arg(&opts.vmm)
        .args(["--uid", &uid, "--gid", &uid])
        .arg("--chroot-base-dir")
        .arg(&opts.base)
        .args(["--parent-cgroup", PARENT_CGROUP, "--parent-cgroup-relative"])
        .arg("--profile")
        .arg(&opts.profile)
        .args(["--cleanup-on-exit", "--timing"]);
    if layers.pidns {
        c.arg("--new-pid-ns");
    }
    if layers.netns {
        c.arg("--new-netns");
    }
    c.arg("--bind-ro")
        .arg(format!("{}:/tiny.elf", opts.tiny.display()))
        .arg("--bind-ro")
        .arg(format!("{}:/vm.json", cfg.display()))
        .args(["--", "--config-file", "/vm.json", "--no-api"]);
    c
}

// ---------------------------------------------------------------------------------------------
// 1. API socket

/// Connects to `sock` until it accepts, sends `req` (if any) and waits for the first bytes.
fn poll_socket(sock: &Path, req: &[u8], deadline: Instant) -> Result<Instant, String> {
    loop {
        if let Ok(mut s) = UnixStream::connect(sock) {
            s.set_read_timeout(Some(TIMEOUT))
                .map_err(|e| e.to_string())?;
            if !req.is_empty() {
                s.write_all(req).map_err(|e| format!("write: {e}"))?;
            }
            let mut b = [0u8; 256];
            let n = s.read(&mut b).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("socket closed without an answer".into());
            }
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!("{} never accepted", sock.display()));
        }
        thread::sleep(Duration::from_micros(50));
    }
}

fn bench_api(opts: &Opts, t: &mut Table) -> Result<(), String> {
    eprintln!("== 1. process start -> API socket answers (Kiln GET /, QEMU QMP greeting)");
    let (mut kw, mut kc, mut qw, mut qc) = (vec![], vec![], vec![], vec![]);
    for i in 0..opts.runs {
        let sock = opts.work.join(format!("api-{i}.sock"));
        let mut c = Command::new(&opts.vmm);
        c.arg("--api-sock").arg(&sock);
        let s = start(c, false)?;
        let at = poll_socket(
            &sock,
            b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n",
            s.t0 + TIMEOUT,
        )?;
        kc.push(cpu_ms(s.child.id()));
        kw.push(ms(at - s.t0));
        signal(s.child.id(), libc::SIGTERM);
        s.finish(TIMEOUT)?;
        let _ = fs::remove_file(&sock);

        let qsock = opts.work.join(format!("qmp-{i}.sock"));
        let qmp = format!("unix:{},server=on,wait=off", qsock.display());
        if let Some(c) = qemu_cmd(opts, "halt", 1, &["-S", "-qmp", &qmp]) {
            let s = start(c, false)?;
            let at = poll_socket(&qsock, b"", s.t0 + TIMEOUT)?;
            qc.push(cpu_ms(s.child.id()));
            qw.push(ms(at - s.t0));
            signal(s.child.id(), libc::SIGTERM);
            s.finish(TIMEOUT)?;
            let _ = fs::remove_file(&qsock);
        }
    }
    let q = |v: &Vec<f64>| (!v.is_empty()).then_some(v.clone());
    t.add(
        "1 process start → API answers",
        "ms",
        &kw,
        q(&qw).as_deref(),
    );
    t.add_note(
        "1 CPU time to API answer",
        "CPU ms",
        &kc,
        q(&qc).as_deref(),
        "Firecracker spec: ≤ 8 CPU ms",
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. First serial byte

fn api_request(sock: &Path, method: &str, path: &str, body: &str) -> Result<String, String> {
    let mut s = UnixStream::connect(sock).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut b = [0u8; 1024];
    let n = s.read(&mut b).map_err(|e| e.to_string())?;
    let resp = String::from_utf8_lossy(&b[..n]).to_string();
    if !resp.starts_with("HTTP/1.1 2") {
        return Err(format!("{method} {path}: {resp}"));
    }
    Ok(resp)
}

fn bench_serial(opts: &Opts, t: &mut Table) -> Result<(), String> {
    eprintln!("== 2. start -> first serial byte");
    let cfg = write_vm_config(opts, "print", &opts.tiny, "print", 1);
    let (mut kw, mut kc, mut ka, mut qw, mut qc) = (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..opts.runs {
        let mut s = start(vmm_config_cmd(opts, &cfg), false)?;
        let at = s.first_byte()?;
        kc.push(cpu_ms(s.child.id()));
        kw.push(ms(at - s.t0));
        s.finish(TIMEOUT)?;

        // API mode: InstanceStart → first byte.
        let sock = opts.work.join(format!("is-{i}.sock"));
        let mut c = Command::new(&opts.vmm);
        c.arg("--api-sock").arg(&sock);
        let mut s = start(c, false)?;
        poll_socket(&sock, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", s.t0 + TIMEOUT)?;
        let boot = serde_json::json!({
            "kernel_image_path": opts.tiny, "boot_args": "kiln.test=print"
        });
        api_request(&sock, "PUT", "/boot-source", &boot.to_string())?;
        let mc = serde_json::json!({"vcpu_count": 1, "mem_size_mib": opts.mem_mib});
        api_request(&sock, "PUT", "/machine-config", &mc.to_string())?;
        let t_start = Instant::now();
        api_request(
            &sock,
            "PUT",
            "/actions",
            r#"{"action_type":"InstanceStart"}"#,
        )?;
        let at = s.first_byte()?;
        ka.push(ms(at - t_start));
        s.finish(TIMEOUT)?;
        let _ = fs::remove_file(&sock);

        if let Some(c) = qemu_cmd(opts, "print", 1, &[]) {
            let mut s = start(c, false)?;
            let at = s.first_byte()?;
            qc.push(cpu_ms(s.child.id()));
            qw.push(ms(at - s.t0));
            s.finish(TIMEOUT)?;
        }
    }
    let q = |v: &Vec<f64>| (!v.is_empty()).then_some(v.clone());
    t.add_note(
        "2 process start → first serial byte (config file / QEMU command line)",
        "ms",
        &kw,
        q(&qw).as_deref(),
        "Firecracker 1.17 here: ~11 ms",
    );
    t.add(
        "2 CPU time to first serial byte",
        "CPU ms",
        &kc,
        q(&qc).as_deref(),
    );
    t.add_note(
        "2 InstanceStart request → first serial byte (API mode)",
        "ms",
        &ka,
        None,
        "no QEMU peer (QEMU has no pre-boot configuration API)",
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Jailer

/// `jailer timing: NAME: D us (at A us, pid P)` → (NAME, D, A).
fn parse_timing(line: &str) -> Option<(String, f64, f64)> {
    let rest = line.strip_prefix("jailer timing: ")?;
    let (name, rest) = rest.rsplit_once(": ")?;
    let d: f64 = rest.split_whitespace().next()?.parse().ok()?;
    let at: f64 = rest
        .split("(at ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let name = if name.starts_with("exec ") {
        "exec (step 7 → execve)".to_string()
    } else {
        name.to_string()
    };
    Some((name, d / 1e3, at / 1e3))
}

fn bench_jail(opts: &Opts, t: &mut Table) -> Result<(), String> {
    eprintln!("== 3. jailer exec -> VMM exec, full default profile, per layer");
    let cfg = write_vm_config(opts, "jail-print", Path::new("/tiny.elf"), "print", 1);
    let mut steps: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut to_exec = vec![];
    let mut first = vec![];
    let mut first_no_net = vec![];
    let mut first_no_pid = vec![];
    let mut direct = vec![];
    let direct_cfg = write_vm_config(opts, "print", &opts.tiny, "print", 1);
    for i in 0..opts.runs {
        let mut s = start(jailer_cmd(opts, i, &cfg, FULL), true)?;
        let at = s.first_byte()?;
        first.push(ms(at - s.t0));
        let (code, err) = s.finish(TIMEOUT)?;
        if code != Some(0) {
            return Err(format!("jailer exit {code:?}:\n{}", err.join("\n")));
        }
        let mut exec_at = None;
        for (name, d, at) in err.iter().filter_map(|l| parse_timing(l)) {
            if name.starts_with("exec") {
                exec_at = Some(at);
            } else {
                steps.entry(name).or_default().push(d);
            }
        }
        to_exec.extend(exec_at);

        let mut s = start(
            jailer_cmd(
                opts,
                i,
                &cfg,
                Layers {
                    netns: false,
                    pidns: true,
                },
            ),
            false,
        )?;
        let at = s.first_byte()?;
        first_no_net.push(ms(at - s.t0));
        s.finish(TIMEOUT)?;

        let mut s = start(
            jailer_cmd(
                opts,
                i,
                &cfg,
                Layers {
                    netns: true,
                    pidns: false,
                },
            ),
            false,
        )?;
        let at = s.first_byte()?;
        first_no_pid.push(ms(at - s.t0));
        s.finish(TIMEOUT)?;

        let mut s = start(vmm_config_cmd(opts, &direct_cfg), false)?;
        let at = s.first_byte()?;
        direct.push(ms(at - s.t0));
        s.finish(TIMEOUT)?;
    }
    t.add_note(
        "3 jailer exec → VMM exec (full default profile)",
        "ms",
        &to_exec,
        None,
        "jailer --timing, `at` of the exec step",
    );
    for (name, v) in &steps {
        t.add(&format!("3 · layer: {name}"), "ms", v, None);
    }
    t.add(
        "3 jailer spawn → first serial byte, full profile",
        "ms",
        &first,
        None,
    );
    t.add_note(
        "3 … without --new-netns (no netns, no firewall)",
        "ms",
        &first_no_net,
        None,
        "cost of the network layer = difference of medians",
    );
    t.add_note(
        "3 … without --new-pid-ns",
        "ms",
        &first_no_pid,
        None,
        "cost of the PID namespace layer = difference",
    );
    t.add("3 … no jail (VMM spawned directly)", "ms", &direct, None);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Memory

/// (Rss, Pss) of the whole process and of the guest RAM mapping, in KiB.
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

fn bench_mem(opts: &Opts, t: &mut Table) -> Result<(), String> {
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
            signal(s.child.id(), libc::SIGTERM);
            s.finish(TIMEOUT)?;
            if let Some(c) = qemu_cmd(opts, "halt", vcpus, &[]) {
                let mut s = start(c, false)?;
                s.first_byte()?;
                thread::sleep(Duration::from_millis(100));
                let (rss, pss, grss, gpss) = memory(s.child.id(), guest_kib)?;
                qrss.push((rss - grss) / 1024.0);
                qpss.push((pss - gpss) / 1024.0);
                qg.push(grss / 1024.0);
                signal(s.child.id(), libc::SIGTERM);
                s.finish(TIMEOUT)?;
            }
        }
        let q = |v: &Vec<f64>| (!v.is_empty()).then_some(v.clone());
        t.add_note(
            &format!("4 VMM RSS beyond guest memory, {vcpus} vCPU"),
            "MiB",
            &krss,
            q(&qrss).as_deref(),
            "Firecracker spec: ≤ 5 MiB; FC here ~4.2 MB RSS total",
        );
        t.add(
            &format!("4 VMM PSS beyond guest memory, {vcpus} vCPU"),
            "MiB",
            &kpss,
            q(&qpss).as_deref(),
        );
        t.add(
            &format!("4 (guest memory touched, {vcpus} vCPU: subtracted above)"),
            "MiB",
            &kg,
            q(&qg).as_deref(),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. Creation rate, 6. teardown

fn leaks(opts: &Opts) -> Vec<String> {
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
fn remove_parent_cgroups() {
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

fn host_load() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// (busy, total) jiffies of all CPUs, from the first line of /proc/stat.
fn host_cpu() -> (u64, u64) {
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

/// User + system CPU time (ms) of every reaped descendant of this process so far.
fn children_cpu_ms() -> f64 {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes only into the rusage we pass, which lives for the call.
    unsafe {
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn bench_rate(opts: &Opts, t: &mut Table) -> Result<(), String> {
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
                signal(s.child.id(), libc::SIGTERM);
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

fn bench_teardown(opts: &Opts, t: &mut Table) -> Result<(), String> {
    eprintln!("== 6. teardown: SIGTERM -> process gone (and jail removed)");
    let jcfg = write_vm_config(opts, "jail-halt", Path::new("/tiny.elf"), "halt", 1);
    let cfg = write_vm_config(opts, "halt1", &opts.tiny, "halt", 1);
    let (mut jailed, mut bare, mut qemu, mut reset) = (vec![], vec![], vec![], vec![]);
    let runs = opts.runs.min(10);
    let mut leaked = 0;
    for i in 0..runs {
        let mut s = start(jailer_cmd(opts, i, &jcfg, FULL), false)?;
        s.first_byte()?;
        let t0 = Instant::now();
        signal(s.child.id(), libc::SIGTERM);
        s.finish(TIMEOUT)?;
        jailed.push(ms(t0.elapsed()));
        leaked += leaks(opts).len();

        let mut s = start(vmm_config_cmd(opts, &cfg), false)?;
        s.first_byte()?;
        let t0 = Instant::now();
        signal(s.child.id(), libc::SIGTERM);
        s.finish(TIMEOUT)?;
        bare.push(ms(t0.elapsed()));

        // Guest-initiated: the print scenario prints its line, then resets; first byte →
        // the jailer gone with the jail removed (includes the guest's emulated run).
        let pcfg = write_vm_config(opts, "jail-print", Path::new("/tiny.elf"), "print", 1);
        let mut s = start(jailer_cmd(opts, i, &pcfg, FULL), false)?;
        let at = s.first_byte()?;
        s.finish(TIMEOUT)?;
        reset.push(ms(at.elapsed()));
        leaked += leaks(opts).len();

        if let Some(c) = qemu_cmd(opts, "halt", 1, &[]) {
            let mut s = start(c, false)?;
            s.first_byte()?;
            let t0 = Instant::now();
            signal(s.child.id(), libc::SIGTERM);
            s.finish(TIMEOUT)?;
            qemu.push(ms(t0.elapsed()));
        }
    }
    let q = (!qemu.is_empty()).then_some(qemu);
    t.add("6 SIGTERM → VMM gone (no jail)", "ms", &bare, q.as_deref());
    t.add_note(
        "6 SIGTERM → jailer gone, jail removed (full profile)",
        "ms",
        &jailed,
        None,
        &format!("left over afterwards: {leaked}"),
    );
    t.add_note(
        "6 guest reset → jailer gone, jail removed",
        "ms",
        &reset,
        None,
        "from the first serial byte; includes the guest printing its line",
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 7. Invocations

fn bench_invoke(opts: &Opts, t: &mut Table) -> Result<(), String> {
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

// ---------------------------------------------------------------------------------------------

fn machine() -> String {
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

fn main() {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("kiln-bench: {e}");
            std::process::exit(2);
        }
    };
    for p in [&opts.vmm, &opts.jailer, &opts.tiny, &opts.profile] {
        if !p.is_file() {
            eprintln!("kiln-bench: {} does not exist", p.display());
            std::process::exit(2);
        }
    }
    let _ = fs::create_dir_all(&opts.work);
    let _ = fs::create_dir_all(&opts.base);
    // The jailed VMM reads its config as its own uid.
    let _ = fs::set_permissions(
        &opts.work,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    );
    let machine = machine();
    eprintln!("kiln-bench: {machine}; {} runs each", opts.runs);
    if opts.qemu.is_none() {
        eprintln!("kiln-bench: no qemu-system-x86_64: QEMU columns stay empty");
    }
    let mut t = Table::default();
    type Bench = fn(&Opts, &mut Table) -> Result<(), String>;
    let benches: [(&str, Bench); 7] = [
        ("api", bench_api),
        ("serial", bench_serial),
        ("jail", bench_jail),
        ("mem", bench_mem),
        ("rate", bench_rate),
        ("teardown", bench_teardown),
        ("invoke", bench_invoke),
    ];
    let mut failed = false;
    for (name, f) in benches {
        if opts.wants(name) {
            if let Err(e) = f(&opts, &mut t) {
                eprintln!("kiln-bench: {name}: {e}");
                failed = true;
            }
        }
    }
    let _ = fs::remove_dir_all(&opts.work);
    remove_parent_cgroups();
    let _ = fs::remove_dir(opts.base.join("vmm"));
    let _ = fs::remove_dir(&opts.base);
    println!("Machine: {machine}");
    println!(
        "Runs: {} per row unless the row says otherwise\n",
        opts.runs
    );
    print!("{}", t.render());
    if failed {
        std::process::exit(1);
    }
}
