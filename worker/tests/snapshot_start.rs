//! Snapshot start through `kiln serve`, the real jailer and VMM: a copy of the `counter`
//! example whose manifest asks for `"snapshot_start": true` is booted once and snapshotted
//! after its Hello (authenticated, in the worker's state directory, root-only), and its cold
//! instances are restored from that snapshot into fresh jails. Each restored instance
//! starts from the snapshot's state (the counter at 0: its first answer counts 1), keeps its
//! own state while warm, and two of them side by side do not share anything. Nothing is
//! left behind but the snapshot, which the next worker on the state directory removes.

mod common;

use common::{Env, Server};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const NAME: &str = "counter-snap";

/// `<root>/functions/counter-snap/`: counter's sources, its runtime dependency by absolute
/// path, and a manifest with snapshot start (two instances at once).
fn snapshot_counter(env: &Env) -> PathBuf {
    let functions = env.root.join("functions");
    let dir = functions.join(NAME);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let counter = common::repo().join("examples/functions/counter");
    // counter's handler, which also holds its VM for a while on the event `slow` (so that a
    // second request finds it busy whatever the machine's speed).
    let handler = std::fs::read_to_string(counter.join("src/main.rs"))
        .unwrap()
        .replace(
            "    let n = INVOCATIONS.fetch_add(1, Ordering::Relaxed) + 1;",
            "    if event == b\"slow\" {\n        let mut x = 0u64;\n        for i in 0..400_000_000u64 {\n            x = x.wrapping_add(core::hint::black_box(i));\n        }\n        core::hint::black_box(x);\n    }\n    let n = INVOCATIONS.fetch_add(1, Ordering::Relaxed) + 1;",
        );
    assert!(
        handler.contains("b\"slow\""),
        "counter's handler changed: adapt this test"
    );
    std::fs::write(dir.join("src/main.rs"), handler).unwrap();
    let runtime = common::repo().join("guest/runtime").canonicalize().unwrap();
    let cargo = std::fs::read_to_string(counter.join("Cargo.toml"))
        .unwrap()
        .replace("../../../guest/runtime", runtime.to_str().unwrap());
    std::fs::write(dir.join("Cargo.toml"), cargo).unwrap();
    std::fs::write(
        dir.join("kiln.json"),
        format!(
            r#"{{"name": "{NAME}", "memory_mib": 8, "timeout_ms": 10000, "concurrency": 2,
                "max_event_bytes": 65536, "snapshot_start": true}}"#
        ),
    )
    .unwrap();
    functions
}

fn invocations(reply: &common::Reply) -> u64 {
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["invocations"].as_u64().expect("invocations")
}

/// The snapshot directories of the worker under `state`.
fn snapshot_files(state: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![state.join("snapshots")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn cold_instances_are_restored_from_the_functions_snapshot() {
    let env = Env::new("snap");
    let functions = snapshot_counter(&env);
    let server = Server::start_with(&env, env.kiln_with_functions("serve", &functions), &[]);
    // The first cold start makes the snapshot (a template booted, snapshotted after its
    // Hello, stopped), then restores it.
    let first = server.invoke(NAME, b"abc");
    assert!(first.cold(), "{}", first.text());
    assert_eq!(invocations(&first), 1, "{}", first.text());
    let vm_a = first.vm_id();
    // The snapshot: root's, read-only, with its key, in the worker's state directory.
    let files = snapshot_files(&env.state_dir);
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in ["key", "vm.mem", "vm.snap", "ready"] {
        assert!(names.iter().any(|n| n == want), "{want} in {files:?}");
    }
    for f in &files {
        let m = std::fs::metadata(f).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o222), (0, 0), "{}", f.display());
    }
    let top = std::fs::metadata(env.state_dir.join("snapshots")).unwrap();
    assert_eq!(top.uid(), 0);
    // Warm: the same VM goes on counting.
    let second = server.invoke(NAME, b"de");
    assert!(!second.cold(), "{}", second.text());
    assert_eq!(second.vm_id(), vm_a);
    assert_eq!(
        second.json(),
        serde_json::json!({"invocations": 2, "bytes": 5})
    );
    // A second instance, while the first is busy: restored from the same snapshot, it
    // starts from the snapshot's state, not from the first instance's.
    let (busy, other) = std::thread::scope(|s| {
        let a = s.spawn(|| server.invoke(NAME, b"slow"));
        common::wait_until("the first instance busy", Duration::from_secs(10), || {
            server
                .instances()
                .iter()
                .any(|(_, i)| i["id"] == vm_a.as_str() && i["state"] == "busy")
        });
        let b = s.spawn(|| server.invoke(NAME, b"g"));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (mut counts, mut vms) = (vec![], vec![]);
    for r in [&busy, &other] {
        counts.push((invocations(r), r.cold()));
        vms.push(r.vm_id());
    }
    counts.sort();
    assert_eq!(counts, vec![(1, true), (3, false)], "{vms:?}");
    assert_ne!(vms[0], vms[1]);
    // The timings of a restored cold start.
    let timings = other
        .header("X-Kiln-Timings")
        .unwrap_or_default()
        .to_string();
    eprintln!("restored cold start: {timings}");
    let ids: Vec<String> = vms.clone();
    server.stop();
    env.assert_nothing_left(&ids);
    // The snapshot stays until the next worker on this state directory, which removes it.
    assert!(!snapshot_files(&env.state_dir).is_empty());
    let next = Server::start_with(&env, env.kiln_with_functions("serve", &functions), &[]);
    assert!(
        snapshot_files(&env.state_dir).is_empty(),
        "{:?}",
        snapshot_files(&env.state_dir)
    );
    next.stop();
}
