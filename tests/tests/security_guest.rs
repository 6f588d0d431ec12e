//! Security suite, part 3: hostile guests against the VMM.
//!
//! Each hostile scenario of the tiny guest (guest/tiny/README.md) runs under the real VMM
//! with two drives on scratch files (one read-write, one read-only), a file beside them that
//! nothing may touch, and, for the network scenarios, a tap in a namespace the test made.
//! Scenarios: descriptor loops and chains outside memory (`virtio-loop`, `virtio-oob`),
//! queue sizes and indices (`virtio-qsize`, and `virtio-wrap`: 65,664 requests so that the
//! 16-bit indices really wrap), giant lengths (`virtio-giant`), a notification flood
//! (`virtio-kicks`), junk register accesses (`virtio-mmio-junk`), configuration-space
//! writes to every device (`virtio-config`), a hostile virtio-net driver (`net-hostile`),
//! port I/O and MMIO outside any device and in the gaps (`bus-junk`), the legacy serial
//! port and i8042 (`legacy-junk`), a hostile virtio-rng driver (`rng-hostile`: readable,
//! looping, outside and giant buffers, a broken ring), and a vCPU in an interrupt storm
//! (`irq-storm`: the device's completion interrupts, then a self-IPI storm that never ends).
//!
//! After each: the backing files and the file beside them are byte for byte what they were
//! (no hostile scenario may write them), the VMM is healthy (ran the guest to its end and
//! exited 0 on the guest's reset, or, in the storm, answers its API, pauses and resumes,
//! flushes its metrics and stops on SIGTERM with code 0), nothing panicked, the device
//! still serves a normal request, the guest's own checks passed (canaries in its memory,
//! read-only receive buffers untouched), no hostile frame reached the tap, and the metrics
//! counted what the guest did.
//!
//! The table is printed on stderr (`--nocapture`) and written to
//! `<target>/security/guest.txt`. Needs root, /dev/kvm and iproute2.
//! Alone: `cargo test -p kiln-tests --test security_guest -- --nocapture`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_tests::metrics::Metrics;
use kiln_tests::netns::NetNs;
use kiln_tests::process::{line_reader, spawn, stderr_reader, terminate};
use kiln_tests::security::report::{table, write_report, Row};
use kiln_tests::security::tenant::Slots;
use kiln_tests::tiny::{self, TinyOutput};
use kiln_tests::{api, require_bin, require_kvm, require_root, unique_id, KillOnDrop, ScratchDir};

const T: Duration = Duration::from_secs(40);
const SECTORS: usize = 64;
const GUEST_MAC: &str = "06:00:ac:10:00:07";
const HOST_MAC: [u8; 6] = [0x02, 0x4b, 0x49, 0x4c, 0x4e, 0x09];

/// Scratch files of one scenario.
struct Scratch {
    dir: ScratchDir,
    disk: PathBuf,
    ro: PathBuf,
    beside: PathBuf,
    before: Vec<Vec<u8>>,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = ScratchDir::new(&format!("kiln-sec-guest-{name}"));
        let mut x: u32 = 0x9e37_79b9 ^ u32::try_from(name.len()).unwrap_or(0);
        let mut bytes = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x.to_le_bytes()[2]
                })
                .collect()
        };
        let (disk, ro, beside) = (
            dir.join("disk.img"),
            dir.join("ro.img"),
            dir.join("beside.txt"),
        );
        std::fs::write(&disk, bytes(SECTORS * 512)).expect("disk");
        std::fs::write(&ro, bytes(SECTORS * 512)).expect("ro disk");
        std::fs::write(
            &beside,
            b"a file beside the backing files: nothing may write here\n",
        )
        .expect("beside");
        let before = [&disk, &ro, &beside]
            .iter()
            .map(|p| std::fs::read(p).expect("read back"))
            .collect();
        Scratch {
            dir,
            disk,
            ro,
            beside,
            before,
        }
    }

    /// The files that changed since the scenario started.
    fn changed(&self) -> Vec<String> {
        [&self.disk, &self.ro, &self.beside]
            .iter()
            .zip(&self.before)
            .filter(|(p, b)| std::fs::read(p).ok().as_ref() != Some(*b))
            .map(|(p, _)| {
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect()
    }
}

/// What one scenario needs and what it must show.
struct Scenario {
    name: &'static str,
    args: &'static str,
    net: bool,
    /// The guest sends a good frame at the end (checked on the tap, with no hostile one).
    frame: bool,
    /// The VM has an entropy device (virtio-rng) too.
    entropy: bool,
    /// Guest lines (a prefix) that must be printed, and a substring each must contain.
    lines: &'static [(&'static str, &'static str)],
    /// Counters that must have reached at least this much.
    counters: &'static [(&'static str, u64)],
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "virtio-loop",
        args: "",
        net: false,
        frame: false,
        entropy: false,
        lines: &[("loop status=", "0xf"), ("blk read sector=0", "status=0")],
        counters: &[("virtio.invalid_chains", 2)],
    },
    Scenario {
        name: "virtio-oob",
        args: "",
        net: false,
        frame: false,
        entropy: false,
        lines: &[("oob status=", "0xf"), ("blk read sector=0", "status=0")],
        counters: &[("virtio.invalid_chains", 3)],
    },
    Scenario {
        name: "virtio-qsize",
        args: "",
        net: false,
        frame: false,
        entropy: false,
        lines: &[
            ("qsize head=200", "status=0x4f"),
            ("blk read sector=0", "status=0"),
        ],
        counters: &[
            ("virtio.needs_reset", 4),
            ("virtio.activate_fails", 2),
            ("virtio.avail_ring_errors", 2),
        ],
    },
    Scenario {
        name: "virtio-wrap",
        args: "",
        net: false,
        frame: false,
        entropy: false,
        lines: &[
            ("wrap avail_idx=0xffff", "used_idx=0 status=0x4f"),
            (
                "wrap rounds=513",
                "requests=65664 avail_idx=0x80 used_idx=0x80 errors=0 unsupp=128",
            ),
            ("blk read sector=0", "status=0"),
        ],
        counters: &[
            ("block.unsupported_count", 65_664),
            ("virtio.avail_ring_errors", 1),
            ("virtio.needs_reset", 1),
        ],
    },
    Scenario {
        name: "virtio-giant",
        args: "",
        net: false,
        frame: false,
        entropy: false,
        lines: &[
            ("giant len=0xffffffff", "len=0 status=255"),
            ("giant in=24MiB", "status=1"),
            ("giant out=24MiB", "status=1"),
            ("giant end-of-ram", "len=0 status=255"),
            ("giant header=4", "status=1"),
            ("giant status=0", "status=255"),
            ("giant get-id=20MiB", "len=21 status=0"),
            ("giant 6x2GiB", "len=0 status=255"),
            ("giant canaries", "intact=1"),
            ("blk read sector=0", "status=0"),
        ],
        counters: &[
            ("virtio.invalid_chains", 3),
            ("block.out_of_range_count", 2),
            ("block.invalid_reqs_count", 1),
        ],
    },
    Scenario {
        name: "virtio-kicks",
        args: "kiln.kicks=20000",
        net: false,
        frame: false,
        entropy: false,
        lines: &[("kicks n=", "20000"), ("blk read sector=0", "status=0")],
        counters: &[("block.read_count", 1)],
    },
    Scenario {
        name: "virtio-mmio-junk",
        args: "",
        net: false,
        frame: false,
        entropy: false,
        lines: &[
            ("junk magic=", "0x74726976 version=2 status=0x0"),
            ("blk read sector=0", "status=0"),
        ],
        counters: &[
            ("virtio.invalid_mmio_accesses", 15),
            ("virtio.invalid_status_writes", 1),
        ],
    },
    Scenario {
        name: "virtio-config",
        args: "",
        net: true,
        frame: true,
        entropy: false,
        lines: &[
            ("config dev=blk index=0", "changed=0"),
            ("config dev=blk index=1", "changed=0"),
            ("config dev=net index=0", "changed=0"),
            ("blk read sector=0", "status=0"),
            ("config net tx", "used=1"),
        ],
        counters: &[("net.tx_packets_count", 1)],
    },
    Scenario {
        name: "net-hostile",
        args: "",
        net: true,
        frame: true,
        entropy: false,
        lines: &[
            ("nethostile tx loop", "len=0"),
            ("nethostile tx oob", "len=0"),
            ("nethostile tx giant=1MiB", "used"),
            ("nethostile tx short=4", "used"),
            ("nethostile tx writable", "len=0"),
            ("nethostile tx avail_idx", "status=0x4f"),
            ("nethostile rx bad", "used=3 intact=1"),
            ("nethostile rx good", "len="),
            ("nethostile tx ok", "used=1"),
        ],
        counters: &[
            ("net.tx_dropped", 5),
            ("virtio.invalid_chains", 4),
            ("virtio.needs_reset", 1),
            ("net.rx_dropped", 1),
            ("net.tx_packets_count", 1),
        ],
    },
    Scenario {
        name: "bus-junk",
        args: "",
        net: true,
        frame: false,
        entropy: false,
        lines: &[("bus pio=", "mmio="), ("blk read sector=0", "status=0")],
        counters: &[
            ("vcpu.unhandled_io", 5_000),
            ("vcpu.unhandled_mmio", 60),
            ("virtio.invalid_mmio_accesses", 3),
        ],
    },
    Scenario {
        name: "legacy-junk",
        args: "",
        net: false,
        frame: false,
        entropy: false,
        lines: &[
            ("legacy serial survived", ""),
            ("legacy i8042 survived", "reads=128"),
        ],
        counters: &[("uart.write_count", 100)],
    },
    Scenario {
        name: "rng-hostile",
        args: "",
        net: false,
        frame: false,
        entropy: true,
        lines: &[
            ("rng hostile case=readable", "used=0"),
            ("rng hostile case=mixed", "used=0"),
            ("rng hostile case=outside", "used=0"),
            ("rng hostile case=loop", "used=0"),
            ("rng hostile case=empty", "used=0"),
            (
                "rng hostile case=giant checked",
                "used=65536 beyond=0 changed_pages=16",
            ),
            ("rng hostile case=avail", "status=0x4f"),
            ("rng after-reset", "used=64"),
        ],
        counters: &[
            ("entropy.entropy_event_fails", 4),
            ("virtio.invalid_chains", 2),
            ("virtio.needs_reset", 1),
            ("virtio.avail_ring_errors", 1),
            ("entropy.entropy_bytes", 65_536 + 64),
        ],
    },
];

/// One check of one scenario, for the table.
fn row(scenario: &str, check: &str, expected: &str, got: String, ok: bool) -> Row {
    Row {
        attempt: format!("{scenario}: {check}"),
        expected: expected.to_owned(),
        got,
        ok,
        escaped: false,
        counted: false,
    }
}

fn config(s: &Scratch, boot_args: &str, tap: Option<&str>, entropy: bool) -> PathBuf {
    let mut net = tap.map_or(String::new(), |t| {
        format!(r#", "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "{t}", "guest_mac": "{GUEST_MAC}"}}]"#)
    });
    if entropy {
        net.push_str(r#", "entropy": {}"#);
    }
    let text = format!(
        r#"{{"boot-source": {{"kernel_image_path": {:?}, "boot_args": {boot_args:?}}},
            "machine-config": {{"vcpu_count": 1, "mem_size_mib": 32}},
            "drives": [{{"drive_id": "disk", "path_on_host": {:?}, "is_root_device": false, "is_read_only": false}},
                       {{"drive_id": "ro", "path_on_host": {:?}, "is_root_device": false, "is_read_only": true}}]{net}}}"#,
        tiny::tiny_guest().display().to_string(),
        s.disk.display().to_string(),
        s.ro.display().to_string(),
    );
    let path = s.dir.join("vm.json");
    std::fs::write(&path, text).expect("write the config");
    path
}

/// A broadcast frame of EtherType 0x88b5 from the host.
fn host_frame() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(b"a frame from the host for the hostile guest");
    f
}

/// Runs one scenario to its end; returns its table rows.
fn run_scenario(sc: &Scenario) -> Vec<Row> {
    let s = Scratch::new(sc.name);
    let ns = sc.net.then(|| NetNs::new("ksg"));
    let tap = sc.net.then(|| {
        let t = format!(
            "ksg{}",
            unique_id("t")
                .replace('-', "")
                .chars()
                .rev()
                .take(9)
                .collect::<String>()
        );
        ns.as_ref().expect("namespace").add_tap(&t, None);
        t
    });
    let cfg = config(
        &s,
        &format!("kiln.test={} {}", sc.name, sc.args),
        tap.as_deref(),
        sc.entropy,
    );
    let metrics_path = s.dir.join("metrics.json");
    let mut cmd = match &ns {
        Some(ns) => ns.command(require_bin("vmm")),
        None => Command::new(require_bin("vmm")),
    };
    cmd.arg("--config-file")
        .arg(&cfg)
        .arg("--no-api")
        .arg("--metrics-path")
        .arg(&metrics_path)
        .stdin(Stdio::null());
    let start = Instant::now();
    let mut child = KillOnDrop::new(spawn(&mut cmd));
    let lines = line_reader(&mut child);
    let stderr = stderr_reader(&mut child);
    // The network side: frames seen on the tap; frames sent when the guest waits for them.
    let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::new(Mutex::new(Vec::new()));
    let sock = match (&ns, &tap) {
        (Some(ns), Some(t)) => Some(Arc::new(ns.packet_socket(t))),
        _ => None,
    };
    let mut out = String::new();
    let mut sending = false;
    let status = loop {
        for l in lines.try_iter() {
            if l.contains("nethostile rx ready") {
                sending = true;
            }
            if l.contains("nethostile rx good") {
                sending = false;
            }
            out.push_str(&l);
            out.push('\n');
        }
        if let Some(sock) = &sock {
            if sending {
                let _ = sock.send(&host_frame());
            }
            while let Some(f) = sock
                .recv_matching(Duration::from_millis(if sending { 20 } else { 2 }), |f| {
                    f.get(12..14) == Some(&[0x88, 0xb5])
                })
            {
                seen.lock().unwrap_or_else(|p| p.into_inner()).push(f);
            }
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(st) = child.try_wait().expect("wait for the VMM") {
            break Some(st);
        }
        if start.elapsed() > T {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
    };
    for l in drain(&lines) {
        out.push_str(&l);
        out.push('\n');
    }
    let err = stderr.join().unwrap_or_default();
    let guest = TinyOutput::parse(&out);
    let m = Metrics::read(&metrics_path);
    let mut rows = Vec::new();
    let detail = || format!("--- guest:\n{out}--- stderr:\n{err}");
    // The VMM: ran the guest to its end, exited 0, nothing panicked.
    let code = status.and_then(|s| s.code());
    let healthy =
        code == Some(0) && !err.contains("panicked") && guest.done && guest.errors().is_empty();
    rows.push(row(
        sc.name,
        "VMM ran it to the end",
        "exit 0, done, no error",
        format!(
            "exit {code:?}, done={}, errors={:?}{}",
            guest.done,
            guest.errors(),
            if healthy {
                String::new()
            } else {
                format!("\n{}", detail())
            }
        ),
        healthy,
    ));
    for (prefix, want) in sc.lines {
        let got = guest.lines.iter().find(|l| l.starts_with(prefix)).cloned();
        let ok = got.as_deref().is_some_and(|g| g.contains(want));
        rows.push(row(
            sc.name,
            prefix,
            want,
            got.unwrap_or_else(|| "(no such line)".into()),
            ok,
        ));
    }
    for (name, min) in sc.counters {
        let v = m.sum(name);
        rows.push(row(
            sc.name,
            name,
            &format!(">= {min}"),
            v.to_string(),
            v >= *min,
        ));
    }
    let changed = s.changed();
    rows.push(row(
        sc.name,
        "backing files and the file beside them",
        "unchanged",
        if changed.is_empty() {
            "unchanged".into()
        } else {
            format!("CHANGED: {}", changed.join(", "))
        },
        changed.is_empty(),
    ));
    if sock.is_some() && sc.frame {
        let frames = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let hostile = frames
            .iter()
            .filter(|f| f.windows(7).any(|w| w == b"HOSTILE"))
            .count();
        let good = frames
            .iter()
            .filter(|f| f.windows(16).any(|w| w == b"the device still"))
            .count();
        rows.push(row(
            sc.name,
            "frames on the tap",
            "no HOSTILE frame, the good one",
            format!("{} frames: {hostile} hostile, {good} good", frames.len()),
            hostile == 0 && good >= 1,
        ));
    }
    rows
}

fn drain(rx: &Receiver<String>) -> Vec<String> {
    let mut v = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Ok(l) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        v.push(l);
    }
    v
}

/// The interrupt storm: the VMM must stay in control of a vCPU that only takes interrupts.
fn run_storm() -> Vec<Row> {
    let s = Scratch::new("irq-storm");
    let cfg = config(&s, "kiln.test=irq-storm", None, false);
    let (metrics_path, api) = (s.dir.join("metrics.json"), s.dir.join("api.sock"));
    let mut child = KillOnDrop::new(spawn(
        Command::new(require_bin("vmm"))
            .arg("--config-file")
            .arg(&cfg)
            .arg("--api-sock")
            .arg(&api)
            .arg("--metrics-path")
            .arg(&metrics_path)
            .stdin(Stdio::null()),
    ));
    let lines = line_reader(&mut child);
    let stderr = stderr_reader(&mut child);
    let mut out = Vec::new();
    let mut wait_for = |what: &str, timeout: Duration| -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if out.iter().any(|l: &String| l.contains(what)) {
                return true;
            }
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) => out.push(l),
                Err(_) => return false,
            }
        }
    };
    let name = "irq-storm";
    let mut rows = Vec::new();
    let device = wait_for("storm device irqs=", T);
    let ipi = device && wait_for("storm ipi n=", T);
    let storm_lines = |out: &[String]| out.iter().filter(|l| l.contains("storm ipi n=")).count();
    let mut steps: Vec<(&str, String, bool)> = Vec::new();
    if ipi {
        let (code, body) = api::request(&api, "GET", "/", "");
        steps.push((
            "GET / during the storm",
            format!("{code} {}", body.trim()),
            code == 200 && body.contains("Running"),
        ));
        let t = Instant::now();
        let (code, _) = api::request(&api, "PATCH", "/vm", r#"{"state": "Paused"}"#);
        steps.push((
            "pause the storming vCPU",
            format!("{code} in {:?}", t.elapsed()),
            code == 204 && t.elapsed() < Duration::from_secs(2),
        ));
        std::thread::sleep(Duration::from_millis(100));
        for l in lines.try_iter() {
            out.push(l);
        }
        let paused_at = storm_lines(&out);
        std::thread::sleep(Duration::from_millis(400));
        for l in lines.try_iter() {
            out.push(l);
        }
        let still = storm_lines(&out);
        steps.push((
            "no interrupt taken while paused",
            format!("{} lines while paused", still - paused_at),
            still == paused_at,
        ));
        let (code, _) = api::request(&api, "PATCH", "/vm", r#"{"state": "Resumed"}"#);
        let resumed = code == 204;
        let before = storm_lines(&out);
        let deadline = Instant::now() + T;
        while storm_lines(&out) == before && Instant::now() < deadline {
            if let Ok(l) = lines.recv_timeout(Duration::from_millis(100)) {
                out.push(l);
            }
        }
        steps.push((
            "resume: the storm goes on",
            format!("{code}, {} new lines", storm_lines(&out) - before),
            resumed && storm_lines(&out) > before,
        ));
        let (code, _) = api::request(
            &api,
            "PUT",
            "/actions",
            r#"{"action_type": "FlushMetrics"}"#,
        );
        steps.push((
            "FlushMetrics during the storm",
            code.to_string(),
            code == 204,
        ));
    }
    // SIGTERM stops it (the vCPU is kicked out of KVM_RUN).
    let t = Instant::now();
    let status = terminate(&mut child, Duration::from_secs(10));
    let err = stderr.join().unwrap_or_default();
    let code = status.and_then(|s| s.code());
    rows.push(row(
        name,
        "device interrupt storm",
        "storm device irqs=1000",
        out.iter()
            .find(|l| l.contains("storm device irqs="))
            .cloned()
            .unwrap_or_else(|| format!("(none)\n{}\n{err}", out.join("\n"))),
        device,
    ));
    rows.push(row(
        name,
        "IPI storm running",
        "storm ipi n=...",
        format!("{} progress lines", storm_lines(&out)),
        ipi,
    ));
    for (check, got, ok) in steps {
        rows.push(row(name, check, "the VMM stays in control", got, ok));
    }
    rows.push(row(
        name,
        "SIGTERM stops it",
        "exit 0 within 10 s, no panic",
        format!("exit {code:?} after {:?}", t.elapsed()),
        code == Some(0) && !err.contains("panicked"),
    ));
    let m = Metrics::read(&metrics_path);
    for (counter, min) in [
        ("block.unsupported_count", 1000u64),
        ("vmm.pauses", 1),
        ("vmm.resumes", 1),
    ] {
        let v = m.sum(counter);
        rows.push(row(
            name,
            counter,
            &format!(">= {min}"),
            v.to_string(),
            v >= min,
        ));
    }
    let changed = s.changed();
    rows.push(row(
        name,
        "backing files and the file beside them",
        "unchanged",
        if changed.is_empty() {
            "unchanged".into()
        } else {
            changed.join(", ")
        },
        changed.is_empty(),
    ));
    rows
}

#[test]
fn hostile_guests_cannot_break_the_vmm_or_its_files() {
    require_root();
    require_kvm();
    let started = Instant::now();
    let slots = Arc::new(Slots::new(2));
    let mut handles = Vec::new();
    for (i, sc) in SCENARIOS.iter().enumerate() {
        let slots = slots.clone();
        handles.push(std::thread::spawn(move || {
            (i, slots.run(|| run_scenario(sc)))
        }));
    }
    let storm = {
        let slots = slots.clone();
        std::thread::spawn(move || slots.run(run_storm))
    };
    let mut results: Vec<(usize, Vec<Row>)> = handles
        .into_iter()
        .map(|h| h.join().expect("scenario thread"))
        .collect();
    results.sort_by_key(|(i, _)| *i);
    let mut rows: Vec<Row> = results.into_iter().flat_map(|(_, r)| r).collect();
    rows.extend(storm.join().expect("storm thread"));
    let bad: Vec<&Row> = rows.iter().filter(|r| !r.ok).collect();
    let text = format!(
        "{}\n{} hostile scenarios, {} checks: {} passed, {} failed ({:.1} s)\n",
        table(
            "hostile guests against the VMM (tiny guest scenarios)",
            &rows
        ),
        SCENARIOS.len() + 1,
        rows.len(),
        rows.len() - bad.len(),
        bad.len(),
        started.elapsed().as_secs_f64()
    );
    let path = write_report("guest", &text);
    eprintln!("{text}(report written to {})", path.display());
    assert!(
        bad.is_empty(),
        "{}",
        bad.iter()
            .map(|r| format!("{}: expected {}, got {}", r.attempt, r.expected, r.got))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
