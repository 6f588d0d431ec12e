//! Kill -9 anywhere, lose nothing: an operator's chaos test of the jailer and the worker.
//!
//! - **The jailer, killed at random instants of its set-up**, in every process layout
//!   (Firecracker's default where the jailer becomes the VMM, `--new-pid-ns`,
//!   `--cleanup-on-exit`, the worker's layout with a tap in a new network namespace,
//!   `--daemonize`, a joined namespace with taps and the firewall, an orchestrator's
//!   pre-created jail directory), the jailer alone or its whole process group at once. Half of
//!   the instants fall within a millisecond of a step boundary the jailer's `--timing` showed
//!   (where the journal is written: the sub-millisecond windows), the rest anywhere from its
//!   start to past its exec. Then the documented recovery — `jailer cleanup --id` — must exit
//!   0, and nothing may be left: mounts, cgroups in every hierarchy (the unified one with
//!   hugetlb too), network namespaces, taps and nftables tables in a joined namespace, files
//!   in the chroot base (an orchestrator's own directory and staged file excepted, untouched),
//!   processes.
//! - **The worker under concurrent load**: SIGKILL of VMMs, of jailer processes (supervisors,
//!   and jailers still setting up), and of `kiln serve` itself — sometimes again while it
//!   restarts and sweeps. Every request gets its correct answer or a structured error within
//!   its timeout (a request cut by the worker's own death excepted, counted); never a false
//!   429. After the documented recovery (start `kiln serve` again on the same state
//!   directory, stop it) nothing is left: jails, cgroups, network namespaces, mounts,
//!   instance records, worker locks, processes.
//!
//! Fast tier: a few hundred jailer kills and ~25 s of worker chaos (about a minute in all).
//! `KILN_CHAOS_ROUNDS=N` multiplies both for longer runs; `KILN_CHAOS_SEED` replays one. Each
//! test prints its counts (`--nocapture`).
//!
//! Needs root, /dev/kvm, `ip` (iproute2) and `nft` (nftables), and the workspace binaries.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_tests::jail::{HostSnapshot, Jail};
use kiln_tests::netns::{tap_name, NetNs};
use kiln_tests::worker::{kill_if, Worker};
use kiln_tests::{require_bin, require_kvm, require_program, tiny, ScratchDir};

/// `KILN_CHAOS_ROUNDS` (default 1): how many times the fast tier's amount of chaos to do.
fn rounds() -> u32 {
    std::env::var("KILN_CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// A small deterministic generator (xorshift64*), seeded from `KILN_CHAOS_SEED` or the clock.
struct Rng(u64);

impl Rng {
    fn new(what: &str) -> Rng {
        let seed = std::env::var("KILN_CHAOS_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| {
                        d.as_secs().rotate_left(32) ^ u64::from(d.subsec_nanos())
                    })
                    | 1
            });
        eprintln!("chaos {what}: KILN_CHAOS_SEED={seed}");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// An index into a list of `len` (> 0) items.
    fn index(&mut self, len: usize) -> usize {
        usize::try_from(self.below(len as u64)).unwrap_or(0)
    }
}

/// Sleeps until `deadline` precisely (the last 300 µs spinning).
fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now + Duration::from_micros(300) {
        std::thread::sleep(deadline - now - Duration::from_micros(300));
    }
    while Instant::now() < deadline {
        std::hint::spin_loop();
    }
}

/// Processes whose command line contains `needle` (this test process excepted).
fn processes_with(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(needle) {
            found.push(format!(
                "pid {name}: {}",
                text.chars().take(160).collect::<String>()
            ));
        }
    }
    found
}

fn kill(pid: i32, signal: i32) -> bool {
    // SAFETY: kill(2) with a pid (or a process group, negative) and a signal.
    unsafe { libc::kill(pid, signal) == 0 }
}

// ---------------------------------------------------------------------------------------
// The jailer, killed during its set-up.

/// One process layout the jailer is killed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// Firecracker's default: the jailer becomes the VMM; a guard undoes a failed start.
    Guard,
    PidNs,
    Supervisor,
    /// The worker's: supervisor, PID namespace, a new network namespace with a filtered tap.
    Worker,
    Daemon,
    /// A joined network namespace with a tap, the firewall and the tap filter.
    JoinedNetns,
    DaemonSupervisor,
    /// The orchestrator made the jail directory and staged a file in it beforehand.
    PreCreated,
}

const LAYOUTS: [Layout; 8] = [
    Layout::Guard,
    Layout::PidNs,
    Layout::Supervisor,
    Layout::Worker,
    Layout::Daemon,
    Layout::JoinedNetns,
    Layout::DaemonSupervisor,
    Layout::PreCreated,
];

/// What every jailer run of the test shares: the VMM, the tiny guest (it prints and resets:
/// the VMM exits on its own) and its config, a network namespace to join.
struct Setup {
    vmm: PathBuf,
    /// Holds the VM config (removed with the test).
    _dir: ScratchDir,
    guest_bind: String,
    config_bind: String,
    netns: NetNs,
}

impl Setup {
    fn new() -> Setup {
        require_kvm();
        require_program("nft", "nftables");
        require_program("ip", "iproute2");
        let dir = ScratchDir::new("kiln-chaos");
        let config = dir.write(
            "vm.json",
            r#"{"boot-source": {"kernel_image_path": "/guest.elf", "boot_args": "kiln.test=print"},
                "machine-config": {"vcpu_count": 1, "mem_size_mib": 32}}"#,
        );
        Setup {
            vmm: require_bin("vmm"),
            guest_bind: format!("{}:/guest.elf", tiny::tiny_guest().display()),
            config_bind: format!("{}:/vm.json", config.display()),
            _dir: dir,
            netns: NetNs::new("kc"),
        }
    }

    /// The jailer's command for `layout` in `jail` (tap `tap` where the layout has one).
    fn command(&self, jail: &Jail, layout: Layout, tap: &str, timing: bool) -> Command {
        let netns = format!("/run/netns/{}", self.netns.name());
        let mut flags: Vec<&str> = match layout {
            Layout::Guard => vec![],
            Layout::PidNs => vec!["--new-pid-ns"],
            Layout::Supervisor | Layout::PreCreated => vec!["--cleanup-on-exit"],
            Layout::Worker => vec![
                "--cleanup-on-exit",
                "--new-pid-ns",
                "--new-netns",
                "--tap",
                tap,
            ],
            Layout::Daemon => vec!["--daemonize", "--new-pid-ns"],
            Layout::JoinedNetns => vec!["--netns", &netns, "--tap", tap, "--firewall", "on"],
            Layout::DaemonSupervisor => vec!["--daemonize", "--cleanup-on-exit"],
        };
        flags.extend([
            "--bind-ro",
            &self.guest_bind,
            "--bind-ro",
            &self.config_bind,
        ]);
        if timing {
            flags.push("--timing");
        }
        let mut cmd = jail.command_for(
            &self.vmm,
            &flags,
            &["--config-file", "/vm.json", "--no-api"],
        );
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if timing {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .process_group(0);
        cmd
    }
}

/// `jailer cleanup` for `jail` (whose exec file is the VMM): the documented recovery.
fn cleanup(setup: &Setup, jail: &Jail) -> std::process::Output {
    Command::new(&jail.jailer)
        .args(["cleanup", "--id", &jail.id, "--exec-file"])
        .arg(&setup.vmm)
        .arg("--chroot-base-dir")
        .arg(&jail.base)
        .output()
        .expect("run jailer cleanup")
}

/// The orchestrator's pre-created jail directory: `<id>/root/staged.txt`.
fn pre_create(jail: &Jail) -> Vec<String> {
    let root = jail.base.join("vmm").join(&jail.id).join("root");
    std::fs::create_dir_all(&root).expect("create the jail directory");
    std::fs::write(root.join("staged.txt"), b"the orchestrator's").expect("stage a file");
    let mut files = [
        jail.base.join("vmm"),
        jail.base.join("vmm").join(&jail.id),
        root.clone(),
        root.join("staged.txt"),
    ];
    files.sort();
    files.iter().map(|p| p.display().to_string()).collect()
}

/// What is left of `jail` (its tap `tap` in the joined namespace too); `allowed` files may be.
fn jail_leftovers(
    setup: &Setup,
    jail: &Jail,
    layout: Layout,
    tap: &str,
    allowed: &[String],
) -> Vec<String> {
    let snap = HostSnapshot::take(&[&jail.id, &jail.parent_cgroup], &jail.base.join("vmm"));
    let mut left: Vec<String> = Vec::new();
    left.extend(snap.mounts.iter().map(|m| format!("mount {m}")));
    left.extend(snap.cgroups.iter().map(|c| format!("cgroup {c}")));
    left.extend(snap.netns.iter().map(|n| format!("netns {n}")));
    let exec_dir = jail.base.join("vmm").display().to_string();
    left.extend(
        snap.files
            .iter()
            .filter(|f| **f != exec_dir && !allowed.contains(f))
            .map(|f| format!("file {f}")),
    );
    if layout == Layout::PreCreated {
        let staged = jail.base.join("vmm").join(&jail.id).join("root/staged.txt");
        if std::fs::read(&staged).ok().as_deref() != Some(b"the orchestrator's".as_slice()) {
            left.push(format!(
                "the orchestrator's {} changed or went",
                staged.display()
            ));
        }
    }
    if layout == Layout::JoinedNetns {
        let link = Command::new("ip")
            .args(["-n", setup.netns.name(), "link", "show", tap])
            .output()
            .expect("ip link show");
        if link.status.success() {
            left.push(format!("tap {tap} in {}", setup.netns.name()));
        }
        let tables = setup
            .netns
            .command("nft")
            .args(["list", "tables"])
            .output()
            .expect("nft list tables");
        let tables = String::from_utf8_lossy(&tables.stdout).into_owned();
        if tables.contains(&format!("kiln-{}", jail.id)) {
            left.push(format!("nftables: {}", tables.trim()));
        }
    }
    left.extend(processes_with(&format!("--id {}", jail.id)));
    left
}

/// The jailer's step boundaries for `layout`, from one `--timing` run to its end (µs from
/// its start), and a check that the layout works and cleans up.
fn calibrate(setup: &Setup, layout: Layout) -> Vec<u64> {
    let jail = Jail::new("kcal");
    let tap = tap_name("kcal");
    let allowed = if layout == Layout::PreCreated {
        pre_create(&jail)
    } else {
        Vec::new()
    };
    let out = setup
        .command(&jail, layout, &tap, true)
        .output()
        .expect("run the jailer");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{layout:?}: {stderr}");
    let mut at: Vec<u64> = stderr
        .lines()
        .filter_map(|l| l.split("(at ").nth(1))
        .filter_map(|r| r.split(' ').next())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(at.len() >= 4, "{layout:?}: no --timing lines: {stderr}");
    at.insert(0, 0);
    let done = cleanup(setup, &jail);
    assert!(done.status.success(), "{layout:?}: {done:?}");
    let left = jail_leftovers(setup, &jail, layout, &tap, &allowed);
    assert!(left.is_empty(), "{layout:?} without a kill left: {left:#?}");
    at
}

#[derive(Default)]
struct Counts {
    runs: u64,
    kills: u64,
    group_kills: u64,
    near_boundary: u64,
    removed: u64,
    nothing: u64,
    per_layout: BTreeMap<String, u64>,
}

#[test]
fn the_jailer_killed_at_any_instant_of_its_set_up_leaves_nothing_after_cleanup() {
    let setup = Setup::new();
    let mut rng = Rng::new("jailer");
    let boundaries: Vec<(Layout, Vec<u64>)> = LAYOUTS
        .iter()
        .map(|l| (*l, calibrate(&setup, *l)))
        .collect();
    let runs = 320 * u64::from(rounds());
    let started = Instant::now();
    let mut c = Counts::default();
    for n in 0..runs {
        let (layout, at) = &boundaries[usize::try_from(n).unwrap_or(0) % boundaries.len()];
        let layout = *layout;
        let last = *at.last().unwrap_or(&0);
        // Half near a boundary (±1 ms), half anywhere up to 10 ms past the exec.
        let delay_us = if rng.below(2) == 0 {
            c.near_boundary += 1;
            let b = at[rng.index(at.len())];
            (b + rng.below(2000)).saturating_sub(1000)
        } else {
            rng.below(last + 10_000)
        };
        let group = rng.below(3) == 0;
        let jail = Jail::new("kc");
        let tap = tap_name("kc");
        let allowed = if layout == Layout::PreCreated {
            pre_create(&jail)
        } else {
            Vec::new()
        };
        let t0 = Instant::now();
        let mut child = setup
            .command(&jail, layout, &tap, false)
            .spawn()
            .expect("spawn the jailer");
        sleep_until(t0 + Duration::from_micros(delay_us));
        let pid = child.id() as i32;
        // The whole group: every process of the jailer at once (but a daemon's, which left it).
        let delivered = match child.try_wait().expect("try_wait") {
            Some(_) => false,
            None => kill(if group { -pid } else { pid }, libc::SIGKILL),
        };
        let _ = child.wait();
        c.runs += 1;
        if delivered {
            c.kills += 1;
            c.group_kills += u64::from(group);
        }
        *c.per_layout.entry(format!("{layout:?}")).or_default() += 1;
        // The documented recovery.
        let done = cleanup(&setup, &jail);
        let err = String::from_utf8_lossy(&done.stderr).into_owned();
        assert!(
            done.status.success(),
            "run {n} ({layout:?}, killed {}at {delay_us} us): jailer cleanup failed: {err}",
            if group { "the group " } else { "" }
        );
        if err.contains("nothing to clean up") {
            c.nothing += 1;
        } else {
            c.removed += 1;
        }
        let left = jail_leftovers(&setup, &jail, layout, &tap, &allowed);
        assert!(
            left.is_empty(),
            "run {n} ({layout:?}, killed {}at {delay_us} us): left after jailer cleanup: {left:#?}",
            if group { "the group " } else { "" }
        );
    }
    eprintln!(
        "chaos jailer: {} runs in {:.1} s, {} SIGKILLs delivered ({} to the whole process group, {} within 1 ms of a step boundary), {} cleanups removed something, {} found nothing; per layout {:?}",
        c.runs,
        started.elapsed().as_secs_f64(),
        c.kills,
        c.group_kills,
        c.near_boundary,
        c.removed,
        c.nothing,
        c.per_layout
    );
    assert!(
        c.kills * 2 > c.runs,
        "most runs must be killed before they end"
    );
}

// ---------------------------------------------------------------------------------------
// The worker under load, its VMMs, jailers and itself killed.

/// How one request ended.
#[derive(Debug)]
enum Outcome {
    Answer,
    Error(String),
    /// The connection ended without an answer while the worker was killed.
    Cut,
}

/// One invocation of echo over the socket; `None` when the worker does not listen.
fn invoke(socket: &std::path::Path, event: &str) -> Option<Result<(u16, String), String>> {
    kiln_tests::worker::invoke(socket, "echo", event).map(|r| r.map(|a| (a.status, a.body)))
}

#[test]
fn the_worker_under_load_with_its_vms_jailers_and_itself_killed_loses_nothing() {
    let mut w = Worker::new();
    let mut rng = Rng::new("worker");
    let mut server = w.start();
    // Worker kills begun and finished: a request is cut by one when a kill began before it
    // ended and had not finished before it began.
    let begun = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    // When the last kill of a worker finished. A child the worker forked just before its
    // death holds the worker's listener until it execs or exits (microseconds to a few
    // milliseconds), and the kernel then resets the connections queued on it: a connection
    // reset that began within this grace of a kill was cut by that kill too.
    let last_kill = std::sync::Arc::new(std::sync::Mutex::new(None::<Instant>));
    const GRACE: Duration = Duration::from_secs(1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let socket = w.socket.clone();
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (socket, stop) = (socket.clone(), stop.clone());
            let (begun, finished) = (begun.clone(), finished.clone());
            let last_kill = last_kill.clone();
            std::thread::spawn(move || {
                let mut outcomes = Vec::new();
                let mut k = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    k += 1;
                    let event = format!(r#"{{"client":{c},"n":{k}}}"#);
                    let before = finished.load(std::sync::atomic::Ordering::Acquire);
                    let t = Instant::now();
                    let Some(result) = invoke(&socket, &event) else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    let took = t.elapsed();
                    let killed = begun.load(std::sync::atomic::Ordering::Acquire) > before;
                    let after_kill = last_kill
                        .lock()
                        .map(|l| l.is_some_and(|k| t.saturating_duration_since(k) < GRACE))
                        .unwrap_or(false);
                    // The function's timeout is 1 s; a start, a queue behind a start and a
                    // stop take a few more: a minute is a stall.
                    assert!(
                        took < Duration::from_secs(30),
                        "request {event} took {took:?}"
                    );
                    let outcome = match result {
                        Ok((200, body)) => {
                            assert_eq!(
                                body,
                                format!(r#"{{"echo":{event}}}"#),
                                "the answer to {event}"
                            );
                            Outcome::Answer
                        }
                        Ok((status, body)) => {
                            let v: serde_json::Value =
                                serde_json::from_str(&body).unwrap_or_else(|_| {
                                    panic!("{event}: {status} without a structured error: {body}")
                                });
                            let code = v["error"]["code"].as_str().unwrap_or_default().to_string();
                            assert!(!code.is_empty(), "{event}: {status} {body}");
                            assert_ne!(code, "concurrency_limit", "{event}: a false 429: {body}");
                            Outcome::Error(code)
                        }
                        Err(e) if killed || (after_kill && e.contains("reset by peer")) => {
                            let _ = e;
                            Outcome::Cut
                        }
                        Err(e) => panic!("{event}: no answer and the worker was not killed: {e}"),
                    };
                    outcomes.push(outcome);
                }
                outcomes
            })
        })
        .collect();
    let mut kills: BTreeMap<&str, u64> = BTreeMap::new();
    let started = Instant::now();
    let length = Duration::from_secs(25) * rounds();
    while started.elapsed() < length {
        std::thread::sleep(Duration::from_millis(150 + rng.below(250)));
        let base = w.chroot_base.display().to_string();
        match rng.below(20) {
            0..=6 => {
                let is_vmm = |c: &str| c.starts_with("/vmm ") && w.names_ours(c);
                let vmms = w.pids_where(is_vmm);
                if let Some(pid) = vmms.get(rng.index(vmms.len())) {
                    *kills.entry("vmm").or_default() += u64::from(kill_if(*pid, &is_vmm));
                }
            }
            7..=12 => {
                // Supervisors, their inits, and jailers still setting a jail up.
                let is_jailer = |c: &str| {
                    c.split(' ').next().is_some_and(|a| a.ends_with("/jailer")) && c.contains(&base)
                };
                let jailers = w.pids_where(is_jailer);
                if let Some(pid) = jailers.get(rng.index(jailers.len())) {
                    *kills.entry("jailer").or_default() += u64::from(kill_if(*pid, &is_jailer));
                }
            }
            13 | 14 => {
                // The worker itself; half the time again while it restarts (and sweeps).
                let kill_worker = |server: &mut std::process::Child| {
                    begun.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    let _ = server.kill();
                    let _ = server.wait();
                    if let Ok(mut l) = last_kill.lock() {
                        *l = Some(Instant::now());
                    }
                    finished.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                };
                kill_worker(&mut server);
                *kills.entry("kiln serve").or_default() += 1;
                if rng.below(2) == 0 {
                    server = w.start();
                    std::thread::sleep(Duration::from_millis(rng.below(100)));
                    kill_worker(&mut server);
                    *kills.entry("kiln serve while restarting").or_default() += 1;
                }
                server = w.start();
            }
            _ => {}
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for c in clients {
        let outcomes = c.join().unwrap_or_else(|_| {
            panic!(
                "a client failed (above); the workers' stderr ends with:\n{}",
                w.log_tail()
            )
        });
        for o in outcomes {
            let key = match o {
                Outcome::Answer => "answer".to_string(),
                Outcome::Error(code) => format!("error {code}"),
                Outcome::Cut => "cut by the worker's death".to_string(),
            };
            *counts.entry(key).or_default() += 1;
        }
    }
    // The documented recovery: the last worker, stopped.
    kill(server.id() as i32, libc::SIGTERM);
    let t = Instant::now();
    let status = loop {
        if let Some(s) = server.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "kiln serve did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "kiln serve: {status}");
    let left = w.leftovers();
    eprintln!(
        "chaos worker: {:.1} s, {} workers started, SIGKILLs {kills:?}; requests {counts:?}",
        started.elapsed().as_secs_f64(),
        w.pids.len()
    );
    assert!(left.is_empty(), "left behind: {left:#?}");
    assert!(
        counts.get("answer").copied().unwrap_or(0) > 100,
        "{counts:?}"
    );
    assert!(kills.values().sum::<u64>() >= 20, "{kills:?}");
    drop(w);
}
