//! `kiln serve` through the real jailer and VMM with the example functions
//! (examples/functions): warm reuse, isolation between functions, the concurrency limit, the
//! idle reaper, replacement of a killed VMM, structured errors, and nothing left behind on
//! any path. Needs root, /dev/kvm, and the jailer and vmm binaries.

mod common;

use common::{manifest, raw_request, request, wait_until, Env, Server};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// The ids of every VM a test saw, for the leftover check.
#[derive(Default)]
struct Seen(BTreeSet<String>);

impl Seen {
    fn add(&mut self, id: String) -> String {
        self.0.insert(id.clone());
        id
    }
    fn ids(&self) -> Vec<String> {
        self.0.iter().cloned().collect()
    }
}

#[test]
fn cold_then_warm_invocations_reuse_the_functions_vm() {
    let env = Env::new("warm");
    let server = Server::start(&env, &[]);
    let mut seen = Seen::default();
    let event = br#"{"hello":"world"}"#;
    let first = server.invoke("echo", event);
    assert_eq!(first.status, 200, "{first}");
    let echoed = br#"{"echo":{"hello":"world"}}"#;
    assert_eq!(first.body, echoed, "echo answers {{\"echo\": <event>}}");
    assert!(first.cold(), "the first invocation starts a VM");
    let timings = first
        .header("X-Kiln-Timings")
        .unwrap_or_default()
        .to_string();
    for phase in [
        "jail_us=",
        "vmm_start_us=",
        "guest_ready_us=",
        "handler_us=",
    ] {
        assert!(timings.contains(phase), "{timings}");
    }
    let vm = seen.add(first.vm_id());
    for _ in 0..3 {
        let warm = server.invoke("echo", event);
        assert_eq!(warm.status, 200, "{warm}");
        assert!(!warm.cold(), "{warm}");
        assert_eq!(warm.vm_id(), vm, "a warm invocation reuses the VM");
        assert_eq!(warm.body, echoed);
    }
    // counter keeps its state in the warm VM: it counts the invocations the VM served.
    for n in 1..=3 {
        let r = server.invoke("counter", b"{}");
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(r.json()["invocations"], n, "{r}");
        assert_eq!(r.cold(), n == 1, "{r}");
        seen.add(r.vm_id());
    }
    // hash: deterministic, CPU-bound.
    let h1 = server.invoke("hash", br#"{"rounds":1000}"#);
    let h2 = server.invoke("hash", br#"{"rounds":1000}"#);
    assert_eq!((h1.status, h2.status), (200, 200), "{h1}\n{h2}");
    assert_eq!(h1.body, h2.body);
    assert_eq!(h1.json()["rounds"], 1000, "{h1}");
    assert_eq!(h1.json()["sha256"].as_str().map(str::len), Some(64), "{h1}");
    seen.add(h1.vm_id());
    server.stop();
    env.assert_nothing_left(&seen.ids());
}

#[test]
fn two_functions_invoked_concurrently_never_share_a_vm() {
    let env = Env::new("iso");
    let server = Server::start(&env, &["--queue-timeout-ms", "30000"]);
    let mut seen = Seen::default();
    let mut by_function: HashMap<String, BTreeSet<String>> = HashMap::new();
    for round in 0..3 {
        let threads: Vec<_> = ["echo", "hash", "echo", "hash"]
            .into_iter()
            .map(|f| {
                let socket = server.socket.clone();
                std::thread::spawn(move || {
                    let r = request(
                        &socket,
                        "POST",
                        &format!("/functions/{f}/invocations"),
                        format!("{{\"round\":{round}}}").as_bytes(),
                    );
                    (f, r)
                })
            })
            .collect();
        for t in threads {
            let (f, r) = t.join().expect("request thread");
            assert_eq!(r.status, 200, "{f}: {r}");
            by_function
                .entry(f.to_string())
                .or_default()
                .insert(seen.add(r.vm_id()));
        }
    }
    let echo = &by_function["echo"];
    let hash = &by_function["hash"];
    assert!(
        echo.is_disjoint(hash),
        "a VM served two functions: echo {echo:?}, hash {hash:?}"
    );
    // The listing agrees: each VM under one function, each with its own uid and jail.
    let instances = server.instances();
    let mut ids = BTreeSet::new();
    let mut uids = BTreeSet::new();
    for (function, i) in &instances {
        let id = i["id"].as_str().expect("id").to_string();
        assert!(
            id.starts_with(&format!("{function}-")),
            "{id} listed under {function}"
        );
        assert!(ids.insert(id.clone()), "{id} listed twice");
        assert!(uids.insert(i["uid"].as_u64()), "uid shared: {instances:?}");
        assert!(
            env.chroot_base.join("vmm").join(&id).join("root").is_dir(),
            "{id} has its own jail"
        );
        // Its memory limit: the manifest's memory plus the worker's overhead (64 MiB).
        let mib = u64::from(manifest(function).memory_mib) + 64;
        assert_eq!(
            common::jail_memory_limit(&id),
            Some(mib << 20),
            "{id}'s memory cgroup"
        );
    }
    assert!(
        instances.iter().any(|(f, _)| f == "echo") && instances.iter().any(|(f, _)| f == "hash")
    );
    server.stop();
    env.assert_nothing_left(&seen.ids());
}

#[test]
fn the_concurrency_limit_refuses_with_429_and_a_clear_message() {
    let env = Env::new("limit");
    let m = manifest("spin");
    let limit = usize::try_from(m.concurrency).unwrap();
    let server = Server::start(&env, &["--queue-timeout-ms", "0"]);
    let mut seen = Seen::default();
    // `limit` spinning invocations hold every instance until their timeout.
    let busy: Vec<_> = (0..limit)
        .map(|_| {
            let socket = server.socket.clone();
            std::thread::spawn(move || {
                request(&socket, "POST", "/functions/spin/invocations", b"{}")
            })
        })
        .collect();
    wait_until(
        "spin's instances to be busy",
        Duration::from_secs(30),
        || {
            server
                .instances()
                .iter()
                .filter(|(f, i)| f == "spin" && i["state"] == "busy")
                .count()
                == limit
        },
    );
    let refused = server.invoke("spin", b"{}");
    assert_eq!(refused.status, 429, "{refused}");
    assert_eq!(refused.code(), "concurrency_limit");
    let msg = refused.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        msg.contains("spin") && msg.contains(&format!("limit of {limit}")),
        "{msg}"
    );
    for b in busy {
        let r = b.join().expect("spin request");
        assert_eq!(r.status, 504, "{r}");
        seen.add(r.vm_id());
    }
    server.stop();
    env.assert_nothing_left(&seen.ids());
}

#[test]
fn idle_vms_are_reaped_after_the_idle_timeout() {
    let env = Env::new("reap");
    let server = Server::start(&env, &["--idle-timeout-ms", "400"]);
    let mut seen = Seen::default();
    let r = server.invoke("echo", b"{}");
    assert_eq!(r.status, 200, "{r}");
    let id = seen.add(r.vm_id());
    assert_eq!(server.instances().len(), 1);
    wait_until("the idle VM to be reaped", Duration::from_secs(10), || {
        server.instances().is_empty()
    });
    wait_until(
        "the reaped VM's jail to be removed",
        Duration::from_secs(10),
        || env.leftovers(&seen.ids()).is_empty(),
    );
    // The next invocation starts a new VM.
    let r = server.invoke("echo", b"{}");
    assert_eq!(r.status, 200, "{r}");
    assert!(r.cold() && r.vm_id() != id, "{r}");
    seen.add(r.vm_id());
    let stderr = server.stop();
    assert!(
        stderr.contains(&format!("stopping instance {id} (idle for")),
        "{stderr}"
    );
    env.assert_nothing_left(&seen.ids());
}

#[test]
fn a_vmm_killed_with_sigkill_is_replaced_and_leaves_nothing_behind() {
    let env = Env::new("kill");
    let server = Server::start(&env, &[]);
    let mut seen = Seen::default();
    let r = server.invoke("echo", b"{}");
    assert_eq!(r.status, 200, "{r}");
    let id = seen.add(r.vm_id());
    let instances = server.instances();
    let pid = instances
        .iter()
        .find(|(_, i)| i["id"] == id.as_str())
        .and_then(|(_, i)| i["vmm_pid"].as_i64())
        .and_then(|p| i32::try_from(p).ok())
        .expect("the VMM's pid in the listing");
    // SAFETY: kill(2) with a pid and a signal.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    // The jailer's supervisor removes the jail; the worker notices and drops the instance.
    wait_until(
        "the killed VM's jail to be removed",
        Duration::from_secs(10),
        || env.leftovers(std::slice::from_ref(&id)).is_empty(),
    );
    wait_until(
        "the killed VM to leave the pool",
        Duration::from_secs(10),
        || server.instances().is_empty(),
    );
    let r = server.invoke("echo", b"{\"again\":1}");
    assert_eq!(r.status, 200, "{r}");
    assert!(r.cold(), "a new VM replaces the killed one");
    assert_ne!(seen.add(r.vm_id()), id);
    server.stop();
    env.assert_nothing_left(&seen.ids());
}

/// Idle VMs killed from outside while requests keep coming, for a function with one slot:
/// a request that finds the dead VM stops it and frees its slot before it would wait, so
/// nothing stalls behind it and nothing is refused with a false 429.
#[test]
fn killing_idle_vms_under_load_neither_stalls_nor_refuses() {
    let env = Env::new("idlekill");
    assert_eq!(manifest("counter").concurrency, 1, "counter has one slot");
    let queue_timeout = Duration::from_secs(8);
    let server = Server::start(
        &env,
        &["--queue-timeout-ms", &queue_timeout.as_millis().to_string()],
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let socket = server.socket.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    let t = Instant::now();
                    let r = request(&socket, "POST", "/functions/counter/invocations", b"{}");
                    answers.push((t.elapsed(), r));
                }
                answers
            })
        })
        .collect();
    let mut killed = BTreeSet::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(6) {
        for (_, i) in server.instances() {
            let pid = i["vmm_pid"].as_i64().and_then(|p| i32::try_from(p).ok());
            let (Some(pid), Some(id)) = (pid, i["id"].as_str()) else {
                continue;
            };
            if i["state"] == "idle" && killed.insert(id.to_string()) {
                // SAFETY: kill(2) with a pid and a signal.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    let mut seen = Seen::default();
    let (mut ok, mut exited) = (0, 0);
    let mut longest = Duration::ZERO;
    for c in clients {
        for (took, r) in c.join().expect("client thread") {
            longest = longest.max(took);
            // One slot, three clients: a request may wait for two others, each a cold start
            // at most (~0.1 s here); never for anything near the queue timeout.
            assert!(
                took < queue_timeout / 2,
                "a request stalled for {took:?}: {r}"
            );
            match (r.status, r.code().as_str()) {
                (200, _) => ok += 1,
                // The VM was killed while this request was already using it.
                (502, "vm_exited") => exited += 1,
                _ => panic!("neither an answer nor the killed VM's error: {r}"),
            }
            seen.add(r.vm_id());
        }
    }
    assert!(
        killed.len() >= 3,
        "only {} idle VMs were killed",
        killed.len()
    );
    assert!(ok > exited, "{ok} answers, {exited} killed mid-request");
    eprintln!(
        "{ok} answers, {exited} killed mid-request, {} idle VMs killed, longest request {longest:?}",
        killed.len()
    );
    server.stop();
    let mut ids = seen.ids();
    ids.extend(killed);
    env.assert_nothing_left(&ids);
}

#[test]
fn timeouts_panics_and_bad_ports_are_structured_errors_and_the_vm_is_gone() {
    let env = Env::new("errs");
    let server = Server::start(&env, &[]);
    let mut seen = Seen::default();
    let timeout_ms = manifest("spin").timeout_ms;
    let t = Instant::now();
    let r = server.invoke("spin", b"{}");
    assert_eq!((r.status, r.code().as_str()), (504, "timeout"), "{r}");
    assert!(
        t.elapsed() >= Duration::from_millis(timeout_ms),
        "{:?}",
        t.elapsed()
    );
    let msg = r.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(msg.contains(&format!("within {timeout_ms} ms")), "{msg}");
    let spin_vm = seen.add(r.vm_id());
    env.assert_nothing_left(&[spin_vm]);

    let r = server.invoke("panic", b"{}");
    assert_eq!((r.status, r.code().as_str()), (502, "panic"), "{r}");
    let panic_vm = seen.add(r.vm_id());
    env.assert_nothing_left(std::slice::from_ref(&panic_vm));
    // The panicked VM is not reused.
    let again = server.invoke("panic", b"{}");
    assert_eq!(again.code(), "panic", "{again}");
    assert_ne!(seen.add(again.vm_id()), panic_vm);

    let r = server.invoke("badport", b"{}");
    // The VMM's --strict-io exit code (6, docs/vmm.md) becomes `io_violation`.
    assert_eq!((r.status, r.code().as_str()), (502, "io_violation"), "{r}");
    let msg = r.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(msg.contains("I/O port") && msg.contains("no device"), "{r}");
    if let Some(id) = r.json()["error"]["vm_id"].as_str() {
        seen.add(id.to_string());
    }
    assert!(server
        .instances()
        .iter()
        .all(|(f, _)| f != "badport" && f != "spin" && f != "panic"));
    server.stop();
    env.assert_nothing_left(&seen.ids());
}

#[test]
fn bad_requests_get_clear_errors_and_start_nothing() {
    let env = Env::new("bad");
    let functions = env.root.join("functions");
    std::fs::create_dir_all(functions.join("broken")).unwrap();
    std::fs::write(
        functions.join("broken").join("kiln.json"),
        "{ this is not json",
    )
    .unwrap();
    // echo, linked into the private functions directory.
    std::os::unix::fs::symlink(
        common::repo().join("examples/functions/echo"),
        functions.join("echo"),
    )
    .unwrap();
    let server = Server::start_with(&env, env.kiln_with_functions("serve", &functions), &[]);
    let cases: &[(&str, &str, Vec<u8>, u16, &str)] = &[
        (
            "POST",
            "/functions/nosuch/invocations",
            b"{}".to_vec(),
            404,
            "unknown_function",
        ),
        (
            "POST",
            "/functions/..%2Fetc/invocations",
            b"{}".to_vec(),
            404,
            "unknown_function",
        ),
        (
            "POST",
            "/functions/broken/invocations",
            b"{}".to_vec(),
            500,
            "bad_manifest",
        ),
        (
            "GET",
            "/functions/echo/invocations",
            vec![],
            405,
            "method_not_allowed",
        ),
        ("GET", "/nowhere", vec![], 404, "not_found"),
    ];
    for (method, path, body, status, code) in cases {
        let r = request(&server.socket, method, path, body);
        assert_eq!(
            (r.status, r.code().as_str()),
            (*status, *code),
            "{method} {path}: {r}"
        );
        assert!(
            !r.json()["error"]["message"]
                .as_str()
                .unwrap_or("")
                .is_empty(),
            "{r}"
        );
    }
    let max = usize::try_from(manifest("echo").max_event_bytes).unwrap();
    let r = server.invoke("echo", &vec![b'x'; max + 1]);
    assert_eq!(
        (r.status, r.code().as_str()),
        (413, "event_too_large"),
        "{r}"
    );
    let msg = r.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        msg.contains(&format!("{}", max + 1)) && msg.contains(&max.to_string()),
        "{msg}"
    );
    // Malformed HTTP: the status says what was wrong (docs/worker.md), the code is
    // `bad_request` for each.
    let many_headers: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let malformed: &[(&str, String, u16)] = &[
        (
            "a Content-Length that is no number",
            "POST /functions/echo/invocations HTTP/1.1\r\nContent-Length: x\r\n\r\n".into(),
            400,
        ),
        (
            "more than 32 headers",
            format!("GET /functions HTTP/1.1\r\n{many_headers}\r\n"),
            431,
        ),
        (
            "a chunked body",
            "POST /functions/echo/invocations HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                .into(),
            501,
        ),
        ("HTTP/2.0", "GET /functions HTTP/2.0\r\n\r\n".into(), 505),
    ];
    for (what, bytes, status) in malformed {
        let r = raw_request(&server.socket, bytes.as_bytes());
        assert_eq!(
            (r.status, r.code().as_str()),
            (*status, "bad_request"),
            "{what}: {r}"
        );
        assert!(
            !r.json()["error"]["message"]
                .as_str()
                .unwrap_or("")
                .is_empty(),
            "{what}: {r}"
        );
    }
    assert!(server.instances().is_empty(), "no VM was started");
    // Instance ids end with the worker's tag (other tests run echo VMs meanwhile).
    let tag = server.tag(&env);
    server.stop();
    env.assert_nothing_left(&[format!("-{tag}")]);
}

/// The supervisor of an idle VM SIGKILLed from outside, again and again: its VMM dies with it
/// (parent-death signal), the worker drops the instance, `jailer cleanup` (which waits for
/// the jail's processes to finish exiting) removes the jail, and only then its record goes.
#[test]
fn a_supervisor_killed_from_outside_never_orphans_its_jail() {
    let env = Env::new("supkill");
    let server = Server::start(&env, &[]);
    let mut seen = Seen::default();
    for round in 0..6 {
        let r = server.invoke("echo", b"{}");
        assert_eq!(r.status, 200, "round {round}: {r}");
        let id = seen.add(r.vm_id());
        let vmm = server
            .instances()
            .iter()
            .find(|(_, i)| i["id"] == id.as_str())
            .and_then(|(_, i)| i["vmm_pid"].as_i64())
            .and_then(|p| i32::try_from(p).ok())
            .expect("the VMM's pid in the listing");
        // VMM → init (PID 1 of the jail's PID namespace) → the supervisor.
        let init = parent_of(vmm);
        let supervisor = parent_of(init);
        let cmdline = std::fs::read(format!("/proc/{supervisor}/cmdline")).unwrap_or_default();
        assert!(
            String::from_utf8_lossy(&cmdline).contains(&id),
            "pid {supervisor} is not the supervisor of {id}"
        );
        // SAFETY: kill(2) with a pid and a signal.
        assert_eq!(unsafe { libc::kill(supervisor, libc::SIGKILL) }, 0);
        // A request finds the dead instance, removes it and starts a new one. (One that
        // comes while the VMM is still dying may still be answered by it, or get its death.)
        let t = Instant::now();
        loop {
            let r = server.invoke("echo", b"{}");
            let vm = seen.add(r.vm_id());
            match (r.status, r.code().as_str()) {
                (200, _) if vm != id => break,
                (200, _) | (502, "vm_exited") => {}
                _ => panic!("round {round}: {r}"),
            }
            assert!(t.elapsed() < Duration::from_secs(20), "round {round}: {r}");
        }
        // (The new VM's jail is there too: only the killed one's things count.)
        let left = || -> Vec<String> {
            env.leftovers(std::slice::from_ref(&id))
                .into_iter()
                .filter(|l| l.contains(&id))
                .collect()
        };
        let t = Instant::now();
        while !left().is_empty() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "round {round}: left behind: {:#?}\n{}",
                left(),
                server.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    server.stop();
    env.assert_nothing_left(&seen.ids());
}

/// The parent of a process (field 4 of /proc/PID/stat).
fn parent_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    after
        .split(' ')
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("ppid")
}

/// A worker that is gone whose pid is in use again (by this very test: a restart as PID 1 of
/// a container looks the same) left a record and a jail: the next worker finds them by the
/// predecessor's lock, which nobody holds, removes the jail with `jailer cleanup`, then the
/// record and the lock file.
#[test]
fn a_predecessor_whose_pid_lives_on_is_still_swept() {
    let env = Env::new("samepid");
    let tag = format!("{}-deadbeef", std::process::id());
    let id = format!("echo-1-{tag}");
    // The predecessor's lock file, not held by anyone.
    let workers = env.state_dir.join("workers");
    std::fs::create_dir_all(&workers).unwrap();
    std::fs::write(workers.join(format!("{tag}.lock")), b"").unwrap();
    // Its record, with the vsock directory of its uid.
    let record = env.state_dir.join("instances").join(&id);
    std::fs::create_dir_all(record.join("vsock")).unwrap();
    std::os::unix::fs::chown(record.join("vsock"), Some(env.uid_base), Some(env.uid_base)).unwrap();
    // Its jail, left without a supervisor: the VMM ran (printed its version) and exited.
    let out = std::process::Command::new(&env.jailer)
        .args(["--id", &id, "--exec-file"])
        .arg(&env.vmm)
        .args([
            "--uid",
            &env.uid_base.to_string(),
            "--gid",
            &env.uid_base.to_string(),
        ])
        .arg("--chroot-base-dir")
        .arg(&env.chroot_base)
        .args(["--new-pid-ns", "--new-netns", "--parent-cgroup-relative"])
        .args(["--parent-cgroup", &env.parent_cgroup])
        .args(["--", "--version"])
        .output()
        .expect("run the jailer");
    assert!(out.status.success(), "{out:?}");
    wait_until("the jailed VMM to exit", Duration::from_secs(10), || {
        env.leftovers(std::slice::from_ref(&id))
            .iter()
            .any(|l| l.contains(&format!("vmm/{id}")))
    });
    assert!(
        env.leftovers(std::slice::from_ref(&id))
            .iter()
            .any(|l| l.starts_with("netns")),
        "the jail is there to be swept"
    );
    let server = Server::start(&env, &[]);
    wait_until("the start-up sweep", Duration::from_secs(20), || {
        !record.exists()
    });
    let log = server.log();
    assert!(
        log.contains(&format!("removed the jail of stale instance {id}")),
        "{log}"
    );
    assert!(
        !workers.join(format!("{tag}.lock")).exists(),
        "the gone worker's lock file"
    );
    server.stop();
    env.assert_nothing_left(&[id]);
}

#[test]
fn a_worker_killed_with_sigkill_takes_its_vms_with_it() {
    let env = Env::new("wkill");
    let mut seen = Seen::default();
    let server = Server::start(&env, &[]);
    for f in ["echo", "counter"] {
        let r = server.invoke(f, b"{}");
        assert_eq!(r.status, 200, "{r}");
        seen.add(r.vm_id());
    }
    // SIGKILL: no cleanup code of the worker runs. Each jailer supervisor gets SIGTERM from
    // the kernel (parent-death signal), stops its VMM and removes its jail.
    server.kill();
    wait_until(
        "the jails of the killed worker to be removed",
        Duration::from_secs(15),
        || {
            env.leftovers(&seen.ids())
                .iter()
                .all(|l| l.starts_with("instance dir") || l.starts_with("worker lock"))
        },
    );
    // The worker's own instance directories are swept by the next worker on that state
    // directory.
    let server = Server::start(&env, &[]);
    server.stop();
    env.assert_nothing_left(&seen.ids());
}

#[test]
fn invocations_over_the_limit_queue_for_the_one_instance() {
    let env = Env::new("queue");
    assert_eq!(
        manifest("counter").concurrency,
        1,
        "counter runs one instance at a time"
    );
    let server = Server::start(&env, &["--queue-timeout-ms", "30000"]);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let socket = server.socket.clone();
            std::thread::spawn(move || {
                request(&socket, "POST", "/functions/counter/invocations", b"{}")
            })
        })
        .collect();
    let mut counts = BTreeSet::new();
    let mut vms = BTreeSet::new();
    for t in threads {
        let r = t.join().expect("request thread");
        assert_eq!(r.status, 200, "{r}");
        counts.insert(r.json()["invocations"].as_u64().expect("invocations"));
        vms.insert(r.vm_id());
    }
    assert_eq!(
        vms.len(),
        1,
        "one instance served them all, in turn: {vms:?}"
    );
    assert_eq!(counts, (1..=4).collect(), "each waited for the one before");
    server.stop();
    env.assert_nothing_left(&vms.into_iter().collect::<Vec<_>>());
}
