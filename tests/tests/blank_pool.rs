//! `kiln serve --blank-pool`: pre-jailed blank microVMs for cold starts.
//!
//! - A cold invocation takes a ready blank instance (its id in `X-Kiln-Vm-Id`, its record now
//!   names the function), answers, and the pool refills.
//! - A blank instance has run nothing: its jail's root holds only what the jailer made, its
//!   record no image or VM config, its VMM has a KVM VM and its vCPU made ahead but no
//!   vCPU thread (nothing has run the vCPU), its guest memory is registered but untouched
//!   (no resident page), and its API says `Not started`; the image appears in the jail only
//!   once a function takes it.
//! - Two functions never share an instance, and an instance that served one never serves
//!   another, even after that function's pool emptied and blank instances were taken again.
//! - SIGKILL of a blank instance's VMM or of its jailer's supervisor: replaced, and nothing
//!   of it is left.
//! - Blank instances past `--blank-max-age-ms` are replaced; without `--blank-pool` there
//!   is none.
//! - SIGTERM of the worker, and SIGKILL of the worker followed by the documented recovery
//!   (start it again, stop it): nothing left (mounts, cgroups, network namespaces, files,
//!   records, worker locks, processes).
//!
//! Needs root, /dev/kvm, `ip` (iproute2) and `nft` (nftables), and the workspace binaries.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use kiln_tests::worker::{cmdline_of, invoke, kill_if, request, Answer, Worker};

/// The resident KiB of `pid`'s mapping of exactly `size` bytes (`/proc/<pid>/smaps`), if
/// it has one.
fn mapping_rss_kib(pid: i64, size: u64) -> Option<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("the VMM's smaps");
    let mut in_mapping = false;
    for line in smaps.lines() {
        let range = line
            .split_whitespace()
            .next()
            .and_then(|r| r.split_once('-'));
        let header = range.and_then(|(a, b)| {
            Some(u64::from_str_radix(b, 16).ok()? - u64::from_str_radix(a, 16).ok()?)
        });
        if let Some(len) = header.filter(|_| !line.starts_with("Rss:")) {
            in_mapping = len == size;
        } else if in_mapping {
            if let Some(kib) = line.strip_prefix("Rss:") {
                return kib.trim().trim_end_matches(" kB").trim().parse().ok();
            }
        }
    }
    None
}

/// `GET /blank-pool`.
fn pool(w: &Worker) -> serde_json::Value {
    let a = request(&w.socket, "GET", "/blank-pool", "")
        .expect("kiln serve listens")
        .expect("GET /blank-pool");
    assert_eq!(a.status, 200, "{a:?}");
    serde_json::from_str(&a.body).expect("JSON")
}

/// The pool of `memory_mib` MiB in `GET /blank-pool`.
fn size(w: &Worker, memory_mib: u64) -> serde_json::Value {
    pool(w)["sizes"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["memory_mib"] == memory_mib).cloned())
        .unwrap_or_else(|| panic!("no pool of {memory_mib} MiB: {}", pool(w)))
}

/// The ready blank instances of `memory_mib` MiB.
fn ready(w: &Worker, memory_mib: u64) -> Vec<serde_json::Value> {
    size(w, memory_mib)["ready"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn ids(blanks: &[serde_json::Value]) -> BTreeSet<String> {
    blanks
        .iter()
        .filter_map(|b| b["id"].as_str().map(str::to_owned))
        .collect()
}

/// Waits until `memory_mib`'s pool has `n` ready instances for which `also` holds.
fn wait_ready(
    w: &Worker,
    memory_mib: u64,
    n: usize,
    also: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let t = Instant::now();
    loop {
        let r = ready(w, memory_mib);
        if r.len() >= n && also(&r) {
            return r;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the blank pool of {memory_mib} MiB did not reach {n} ready: {}\n{}",
            pool(w),
            w.log_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Invokes `function` with `event`, expects 200 and the right answer (echo or hash).
fn call(w: &Worker, function: &str, event: &str) -> Answer {
    let a = invoke(&w.socket, function, event)
        .expect("kiln serve listens")
        .unwrap_or_else(|e| panic!("{function}: {e}\n{}", w.log_tail()));
    assert_eq!(a.status, 200, "{function}: {a:?}\n{}", w.log_tail());
    if function == "echo" {
        assert_eq!(a.body, format!(r#"{{"echo":{event}}}"#));
    }
    a
}

fn vm_id(a: &Answer) -> String {
    a.header("X-Kiln-Vm-Id").expect("X-Kiln-Vm-Id").to_string()
}

/// Stops the worker with SIGTERM and checks that nothing is left.
fn stop(w: &Worker, mut server: Child) {
    // SAFETY: kill(2) with the worker's pid, which is not reaped yet.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    let status = loop {
        if let Some(s) = server.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "kiln serve did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "kiln serve: {status}\n{}", w.log_tail());
    let left = w.leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}\n{}", w.log_tail());
}

/// The record of instance `id`.
fn record(w: &Worker, id: &str) -> PathBuf {
    w.state_dir.join("instances").join(id)
}

/// The root of instance `id`'s jail.
fn jail_root(w: &Worker, id: &str) -> PathBuf {
    w.chroot_base.join("vmm").join(id).join("root")
}

/// The names in `dir`, sorted.
fn names(dir: &std::path::Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

#[test]
fn a_cold_invocation_takes_a_blank_instance_and_the_pool_refills() {
    let mut w = Worker::new();
    let server = w.start_with(&["--blank-pool", "16:2"]);
    let before = ids(&wait_ready(&w, 16, 2, |_| true));
    let started = size(&w, 16)["counts"]["started"].as_u64().unwrap_or(0);

    let a = call(&w, "echo", r#"{"n":1}"#);
    assert_eq!(a.header("X-Kiln-Cold-Start"), Some("true"), "{a:?}");
    // The start's phases: staging and configuring, the VMM's build, the guest's Hello;
    // together they are the start.
    let timings: std::collections::BTreeMap<&str, &str> = a
        .header("X-Kiln-Timings")
        .expect("X-Kiln-Timings")
        .split(", ")
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let us = |k: &str| -> u64 {
        timings
            .get(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k} is not a number of µs: {timings:?}"))
    };
    let phases = us("jail_us") + us("vmm_start_us") + us("guest_ready_us");
    assert!(
        phases <= us("start_us") && us("start_us") - phases <= 3,
        "{timings:?}"
    );
    assert!(
        us("vmm_start_us") > 0 && us("guest_ready_us") > 0,
        "{timings:?}"
    );
    let id = vm_id(&a);
    assert!(
        before.contains(&id),
        "the cold start ran on {id}, not on one of the ready blank instances {before:?}"
    );
    assert!(
        std::fs::read_to_string(&w.log)
            .unwrap_or_default()
            .contains(&format!("kiln: echo: cold start on blank instance {id}")),
        "{}",
        w.log_tail()
    );
    // Its record now names the function, and is no longer marked blank.
    assert_eq!(
        std::fs::read_to_string(record(&w, &id).join("function")).ok(),
        Some("echo".into())
    );
    assert!(!record(&w, &id).join("blank").exists());
    let counts = &size(&w, 16)["counts"];
    assert_eq!(counts["taken"], 1, "{counts}");
    // It serves echo from now on, warm.
    let b = call(&w, "echo", r#"{"n":2}"#);
    assert_eq!(
        (vm_id(&b).as_str(), b.header("X-Kiln-Cold-Start")),
        (id.as_str(), Some("false"))
    );
    // The pool refills: two ready again, none of them the taken one.
    let after = wait_ready(&w, 16, 2, |r| !ids(r).contains(&id));
    assert!(size(&w, 16)["counts"]["started"].as_u64().unwrap_or(0) > started);
    eprintln!(
        "took {id}; ready before {before:?}, after {:?}",
        ids(&after)
    );
    stop(&w, server);
}

#[test]
fn a_blank_instance_has_run_nothing_before_it_is_assigned() {
    let mut w = Worker::new();
    let server = w.start_with(&["--blank-pool", "16:1"]);
    let blank = wait_ready(&w, 16, 1, |_| true).remove(0);
    let id = blank["id"].as_str().expect("id").to_string();
    let vmm_pid = blank["vmm_pid"].as_i64().expect("the VMM's pid");
    assert!(id.starts_with("blank-"), "{id}");
    // A fresh jail: its root has only what the jailer made (the VMM's copy, its pid file,
    // /dev and /run, the vsock bind's mount point, empty on the host side), /run only the
    // API socket.
    let root = jail_root(&w, &id);
    assert_eq!(names(&root), ["dev", "run", "vmm", "vmm.pid", "vsock"]);
    assert_eq!(names(&root.join("run")), ["api.sock"]);
    assert!(names(&root.join("vsock")).is_empty());
    // Its record: the profile, the vsock listener, the blank marker; no image, no config.
    assert_eq!(names(&record(&w, &id)), ["blank", "profile.json", "vsock"]);
    // Fresh memory: the VMM made its KVM VM and its vCPU ahead (`--prepare-vm`) but no vCPU
    // thread (only a vCPU thread issues `KVM_RUN`: nothing has run the vCPU), and the guest
    // memory (the mapping of exactly 16 MiB) has no resident page: nothing has run in it and
    // nothing was loaded into it.
    // The VMM makes them once it has answered `machine-config` and `vsock`: the instance
    // may be listed ready a moment before.
    let vmm_fds = || -> Vec<String> {
        std::fs::read_dir(format!("/proc/{vmm_pid}/fd"))
            .expect("the VMM's fds")
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|l| l.display().to_string())
            .collect()
    };
    let t = Instant::now();
    let mut fds = vmm_fds();
    while !fds.iter().any(|f| f.contains("kvm-vcpu")) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
        fds = vmm_fds();
    }
    assert!(
        fds.iter().any(|f| f.contains("kvm-vm")),
        "the blank VMM has no KVM VM made ahead: {fds:?}"
    );
    assert_eq!(
        fds.iter().filter(|f| f.contains("kvm-vcpu")).count(),
        1,
        "the blank VMM's one vCPU, made ahead: {fds:?}"
    );
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{vmm_pid}/task"))
        .expect("the VMM's threads")
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect();
    assert!(
        !threads.iter().any(|c| c.starts_with("vcpu")),
        "the blank VMM runs a vCPU thread: {threads:?}"
    );
    let guest_rss = mapping_rss_kib(vmm_pid, 16 << 20);
    assert_eq!(
        guest_rss,
        Some(0),
        "the blank's guest memory (16 MiB mapping) must exist and be untouched"
    );
    let api = root.join("run/api.sock");
    let state = kiln_tests::api::request(&api, "GET", "/", "");
    assert_eq!(state.0, 200, "{state:?}");
    let state: serde_json::Value = serde_json::from_str(&state.1).expect("JSON");
    assert_eq!(
        (state["id"].as_str(), state["state"].as_str()),
        (Some(id.as_str()), Some("Not started"))
    );
    // Assigned: now the image is in its jail, and the guest runs.
    let a = call(&w, "echo", r#"{"n":1}"#);
    assert_eq!(vm_id(&a), id);
    assert!(root.join("function.elf").is_file());
    let state = kiln_tests::api::request(&api, "GET", "/", "");
    let state: serde_json::Value = serde_json::from_str(&state.1).expect("JSON");
    assert_eq!(state["state"].as_str(), Some("Running"), "{state}");
    stop(&w, server);
}

#[test]
fn two_functions_never_share_an_instance_even_after_a_pool_emptied() {
    let mut w = Worker::new();
    // Idle instances go after 300 ms: each round below starts each function anew, on a
    // blank instance.
    let server = w.start_with(&["--blank-pool", "16:2", "--idle-timeout-ms", "300"]);
    let mut served: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut vmm_pids: BTreeMap<i64, String> = BTreeMap::new();
    let mut blank_starts = 0;
    for round in 0..4 {
        wait_ready(&w, 16, 2, |_| true);
        for function in ["echo", "hash"] {
            let a = call(&w, function, &format!(r#"{{"round":{round}}}"#));
            let id = vm_id(&a);
            blank_starts += usize::from(id.starts_with("blank-"));
            served.entry(id).or_default().insert(function.into());
        }
        // Both instances are alive now: their VMMs differ.
        let list = request(&w.socket, "GET", "/functions", "")
            .expect("listens")
            .expect("GET /functions");
        let list: serde_json::Value = serde_json::from_str(&list.body).expect("JSON");
        for f in list["functions"].as_array().into_iter().flatten() {
            for i in f["instances"].as_array().into_iter().flatten() {
                if let Some(pid) = i["vmm_pid"].as_i64() {
                    let owner = f["name"].as_str().unwrap_or_default().to_string();
                    let seen = vmm_pids.entry(pid).or_insert_with(|| owner.clone());
                    assert_eq!(*seen, owner, "VMM {pid} served two functions");
                }
            }
        }
        // An instance that served a function is never offered blank again.
        let offered = ids(&ready(&w, 16));
        for id in served.keys() {
            assert!(!offered.contains(id), "{id} is back in the blank pool");
        }
        // Both pools empty before the next round.
        std::thread::sleep(Duration::from_millis(900));
    }
    for (id, functions) in &served {
        assert_eq!(functions.len(), 1, "{id} served {functions:?}");
    }
    assert!(
        blank_starts >= 6,
        "most cold starts should take a blank instance: {served:?}\n{}",
        w.log_tail()
    );
    stop(&w, server);
}

#[test]
fn a_killed_blank_vmm_or_jailer_is_replaced_and_leaves_nothing() {
    let mut w = Worker::new();
    let server = w.start_with(&["--blank-pool", "16:2"]);
    for (what, key) in [("VMM", "vmm_pid"), ("supervisor", "supervisor_pid")] {
        let blanks = wait_ready(&w, 16, 2, |_| true);
        let victim = &blanks[0];
        let id = victim["id"].as_str().expect("id").to_string();
        let pid = i32::try_from(victim[key].as_i64().expect("pid")).expect("pid");
        assert!(
            kill_if(pid, &|c: &str| c.contains(&id)),
            "SIGKILL of {id}'s {what} ({pid})"
        );
        // Replaced: two ready again, the victim not among them.
        wait_ready(&w, 16, 2, |r| !ids(r).contains(&id));
        // And gone: jail, network namespace, record, processes.
        let t = Instant::now();
        loop {
            let mut left: Vec<String> = [
                w.chroot_base.join("vmm").join(&id),
                PathBuf::from("/run/netns").join(&id),
                record(&w, &id),
            ]
            .into_iter()
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
            left.extend(
                w.pids_where(|c| c.contains(&id))
                    .iter()
                    .map(|p| format!("process {p}")),
            );
            if left.is_empty() {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{what} of {id} killed: left {left:?}\n{}",
                w.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert!(size(&w, 16)["counts"]["died"].as_u64().unwrap_or(0) >= 2);
    // The pool still serves.
    let a = call(&w, "echo", r#"{"after":"kills"}"#);
    assert!(vm_id(&a).starts_with("blank-"), "{a:?}");
    stop(&w, server);
}

#[test]
fn a_worker_killed_with_its_blank_pool_leaves_nothing_after_recovery() {
    let mut w = Worker::new();
    let mut server = w.start_with(&["--blank-pool", "16:2", "--blank-pool", "8:1"]);
    wait_ready(&w, 16, 2, |_| true);
    wait_ready(&w, 8, 1, |_| true);
    call(&w, "echo", r#"{"before":"kill"}"#);
    let _ = server.kill();
    let _ = server.wait();
    // The documented recovery: start the worker again on the same state directory (it
    // sweeps the dead worker's records, blank ones too), stop it.
    let server = w.start();
    let t = Instant::now();
    // Either line says a blank record was swept: "removed the blank instance record …", or,
    // when the dead worker's blank jails still had processes (killed with them), "removed
    // the jail of stale blank instance … and its record".
    let swept = |log: &str| {
        log.lines().any(|l| {
            l.contains("removed the blank instance record")
                || (l.contains("stale blank instance") && l.ends_with("and its record"))
        })
    };
    while !swept(&std::fs::read_to_string(&w.log).unwrap_or_default()) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the restarted worker did not sweep the blank records:\n{}",
            w.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop(&w, server);
}

#[test]
fn blank_instances_past_their_age_are_replaced() {
    let mut w = Worker::new();
    let server = w.start_with(&["--blank-pool", "16:2", "--blank-max-age-ms", "400"]);
    let first = ids(&wait_ready(&w, 16, 2, |_| true));
    // Both replaced by younger ones (one per round of the refill thread), never fewer than
    // the pool's count for long.
    let later = ids(&wait_ready(&w, 16, 2, |r| ids(r).is_disjoint(&first)));
    let counts = &size(&w, 16)["counts"];
    assert!(counts["expired"].as_u64().unwrap_or(0) >= 2, "{counts}");
    // The expired ones are gone: jails and records.
    for id in &first {
        assert!(!later.contains(id));
        assert!(!record(&w, id).exists(), "{id}'s record is left");
        assert!(
            !w.chroot_base.join("vmm").join(id).exists(),
            "{id}'s jail is left"
        );
    }
    // A cold start still gets a blank instance.
    let a = call(&w, "echo", r#"{"aged":true}"#);
    assert!(vm_id(&a).starts_with("blank-"), "{a:?}");
    stop(&w, server);
}

#[test]
fn without_the_flag_there_is_no_blank_pool() {
    let mut w = Worker::new();
    let server = w.start();
    assert_eq!(pool(&w)["sizes"], serde_json::json!([]));
    let a = call(&w, "echo", r#"{"pool":false}"#);
    assert!(vm_id(&a).starts_with("echo-"), "{a:?}");
    assert!(w
        .pids_where(|c| c.contains("--id blank-") && w.names_ours(c))
        .is_empty());
    stop(&w, server);
}

#[test]
fn blank_and_assigned_instances_killed_under_load_lose_no_request_and_leave_nothing() {
    let mut w = Worker::new();
    let server = w.start_with(&["--blank-pool", "16:2", "--idle-timeout-ms", "200"]);
    wait_ready(&w, 16, 2, |_| true);
    let stop_flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = ["echo", "hash", "echo"]
        .into_iter()
        .enumerate()
        .map(|(c, function)| {
            let (socket, stop_flag) = (w.socket.clone(), stop_flag.clone());
            std::thread::spawn(move || {
                let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
                let mut k = 0u64;
                while !stop_flag.load(std::sync::atomic::Ordering::Acquire) {
                    k += 1;
                    let event = format!(r#"{{"client":{c},"n":{k}}}"#);
                    let a = invoke(&socket, function, &event)
                        .expect("kiln serve listens")
                        .unwrap_or_else(|e| panic!("{function} {event}: no answer: {e}"));
                    let key = if a.status == 200 {
                        if function == "echo" {
                            assert_eq!(a.body, format!(r#"{{"echo":{event}}}"#));
                        }
                        "answer".to_string()
                    } else {
                        let v: serde_json::Value = serde_json::from_str(&a.body)
                            .unwrap_or_else(|_| panic!("{a:?} is no structured error"));
                        let code = v["error"]["code"].as_str().unwrap_or_default();
                        assert_eq!(code, "vm_exited", "{function} {event}: {a:?}");
                        format!("error {code}")
                    };
                    *outcomes.entry(key).or_default() += 1;
                    if k.is_multiple_of(4) {
                        // Let idle instances expire now and then: more cold starts.
                        std::thread::sleep(Duration::from_millis(300));
                    }
                }
                outcomes
            })
        })
        .collect();
    let mut kills: BTreeMap<&str, u64> = BTreeMap::new();
    let started = Instant::now();
    let mut n = 0usize;
    while started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(150));
        n += 1;
        let blanks = ready(&w, 16);
        let Some(b) = blanks.get(n % blanks.len().max(1)) else {
            continue;
        };
        let id = b["id"].as_str().unwrap_or_default().to_string();
        let key = if n.is_multiple_of(2) {
            "vmm_pid"
        } else {
            "supervisor_pid"
        };
        let Some(pid) = b[key].as_i64().and_then(|p| i32::try_from(p).ok()) else {
            continue;
        };
        if kill_if(pid, &|c: &str| c.contains(&id)) {
            *kills.entry(key).or_default() += 1;
        }
        // And now and then an assigned instance's VMM.
        if n.is_multiple_of(5) {
            let is_assigned_vmm =
                |c: &str| c.starts_with("/vmm ") && c.contains("--id blank-") && w.names_ours(c);
            for pid in w.pids_where(is_assigned_vmm) {
                let id_of = cmdline_of(pid).unwrap_or_default();
                let listed = ready(&w, 16)
                    .iter()
                    .any(|b| b["id"].as_str().is_some_and(|i| id_of.contains(i)));
                if !listed && kill_if(pid, &is_assigned_vmm) {
                    *kills.entry("assigned vmm").or_default() += 1;
                    break;
                }
            }
        }
    }
    stop_flag.store(true, std::sync::atomic::Ordering::Release);
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for c in clients {
        let o = c
            .join()
            .unwrap_or_else(|_| panic!("a client failed (above):\n{}", w.log_tail()));
        for (k, v) in o {
            *outcomes.entry(k).or_default() += v;
        }
    }
    eprintln!("kills {kills:?}; outcomes {outcomes:?}");
    assert!(kills.values().sum::<u64>() >= 20, "{kills:?}");
    assert!(
        outcomes.get("answer").copied().unwrap_or(0) >= 30,
        "{outcomes:?}"
    );
    stop(&w, server);
}
