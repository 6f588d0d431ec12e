//! Snapshots through the real `vmm --api-sock` (Firecracker's `PUT /snapshot/create` and
//! `PUT /snapshot/load`): the tiny guest's `count` scenario (a counter in guest RAM, printed
//! as `count N mem=S`) is paused, snapshotted, loaded into a new VMM process and resumed,
//! and its lines go on from where they stopped, for full and diff snapshots, the `File`
//! and `Uffd` memory backends (the example handler `kiln-uffd-handler`), with and without
//! a key; a started vsock device comes back and takes a new host connection; a started
//! entropy device comes back with its rate limiter's tokens (and the drives', serial
//! output's limiters in force); the serial console writes where the loading VMM says; a
//! custom CPU template's CPUID and MSRs are the restored vCPUs', checked against what this
//! host gives the same template; tampered, truncated, oversized, wrong-version and
//! inconsistent snapshots, and requests in the wrong state, are refused with 400 naming the
//! problem, and the VMM stays usable.
//!
//! The same in fresh jails is `snapshot_jail.rs`. Needs root and /dev/kvm.

mod api_common;
mod snapshot_common;

use api_common::Vmm;
use kiln_tests::metrics::Metrics;
use kiln_tests::process::spawn;
use kiln_tests::tiny::{field, parse_hex, TinyOutput};
use kiln_tests::{require_bin, require_kvm, KillOnDrop, ScratchDir};
use snapshot_common::{
    assert_continues, count_args, count_lines, counts, create_body, edit_config, expected_sum,
    load_body, write_key,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// A VMM running the counting guest, with `machine` extra machine-config fields.
fn counting_vmm(extra: &[&str], machine: &str) -> Vmm {
    require_kvm();
    let vmm = Vmm::start(extra);
    vmm.ok(
        "PUT",
        "/machine-config",
        &format!(r#"{{"vcpu_count": 1, "mem_size_mib": 64{machine}}}"#),
    );
    vmm.boot_tiny_guest(&count_args());
    vmm.action("InstanceStart");
    vmm
}

/// Waits until `vmm` printed at least `n` complete count lines.
fn wait_counts(vmm: &Vmm, n: usize) {
    vmm.wait_for(&format!("{n} count lines"), WAIT, |v| {
        count_lines(&v.serial()) >= n
    });
}

/// Pauses `vmm` and snapshots it; returns its output at that point.
fn pause_and_snapshot(vmm: &Vmm, kind: &str, state: &Path, mem: &Path) -> String {
    vmm.set_state("Paused");
    let out = vmm.serial();
    vmm.ok("PUT", "/snapshot/create", &create_body(kind, state, mem));
    out
}

/// Loads with `body` into a fresh VMM (`extra` flags), resumed; waits for 3 lines.
fn restore(extra: &[&str], body: &str) -> Vmm {
    let vmm = Vmm::start(extra);
    vmm.ok("PUT", "/snapshot/load", body);
    assert_eq!(vmm.state(), "Running");
    wait_counts(&vmm, 3);
    vmm
}

/// The example page-fault handler serving `mem` on `socket`.
struct Handler(KillOnDrop);

impl Handler {
    fn start(socket: &Path, mem: &Path) -> Handler {
        let mut child = spawn(
            Command::new(require_bin("kiln-uffd-handler"))
                .arg("--socket")
                .arg(socket)
                .arg("--mem-file")
                .arg(mem)
                .stdin(Stdio::null()),
        );
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the handler's ready line");
        assert_eq!(line, "ready\n");
        Handler(KillOnDrop::new(child))
    }

    /// Waits (bounded) for the handler to end by itself; returns its exit code.
    fn wait(mut self) -> Option<i32> {
        let done =
            kiln_tests::wait_with_timeout(&mut self.0, Duration::from_secs(10), Instant::now());
        assert!(done.stderr.is_empty(), "the handler: {}", done.stderr);
        done.status.and_then(|s| s.code())
    }
}

#[test]
fn full_snapshot_loads_into_a_new_vmm_and_the_count_goes_on() {
    let dir = ScratchDir::new("kiln-snap-full");
    let (state, mem) = (dir.join("vm.snap"), dir.join("vm.mem"));
    let a = counting_vmm(&[], "");
    wait_counts(&a, 5);
    let before = pause_and_snapshot(&a, "Full", &state, &mem);
    let config_a = a.get("/vm/config");
    drop(a);
    // The memory file has the guest's size, with holes where its memory is zero.
    let meta = std::fs::metadata(&mem).unwrap();
    assert_eq!(meta.len(), 64 << 20);
    use std::os::unix::fs::MetadataExt;
    assert!(
        meta.blocks() * 512 < 4 << 20,
        "{} bytes on disk",
        meta.blocks() * 512
    );
    let b = restore(
        &[],
        &load_body(&state, "File", &mem, r#""resume_vm": true"#),
    );
    let first = assert_continues(&before, &b.serial(), 3);
    eprintln!(
        "count {} before the snapshot, {first} first after the restore",
        counts(&before).last().unwrap().0
    );
    // The restored microVM has the snapshot's configuration.
    let config_b = b.get("/vm/config");
    assert_eq!(config_b["machine-config"], config_a["machine-config"]);
    assert_eq!(config_b["boot-source"], config_a["boot-source"]);
    assert!(
        b.stderr().contains("is not authenticated"),
        "{}",
        b.stderr()
    );
    // It can be paused, snapshotted and restored again.
    let (state2, mem2) = (dir.join("vm2.snap"), dir.join("vm2.mem"));
    let before2 = pause_and_snapshot(&b, "Full", &state2, &mem2);
    drop(b);
    let c = restore(
        &[],
        &load_body(&state2, "File", &mem2, r#""resume_vm": true"#),
    );
    assert_continues(&format!("{before}{before2}"), &c.serial(), 3);
}

#[test]
fn diff_snapshots_update_the_memory_file_and_load_through_a_page_fault_handler() {
    let dir = ScratchDir::new("kiln-snap-diff");
    let (full, diff, mem) = (
        dir.join("full.snap"),
        dir.join("diff.snap"),
        dir.join("vm.mem"),
    );
    let a = counting_vmm(&[], r#", "track_dirty_pages": true"#);
    wait_counts(&a, 3);
    pause_and_snapshot(&a, "Full", &full, &mem);
    let mem_full = std::fs::read(&mem).unwrap();
    a.set_state("Resumed");
    let n = count_lines(&a.serial());
    wait_counts(&a, n + 20);
    // A diff into the full snapshot's memory file: it becomes the current memory.
    let before = pause_and_snapshot(&a, "Diff", &diff, &mem);
    let mem_diff = std::fs::read(&mem).unwrap();
    let changed = mem_full
        .chunks(4096)
        .zip(mem_diff.chunks(4096))
        .filter(|(x, y)| x != y)
        .count();
    // The counter page, the slots written since, a few stack and serial pages: not all.
    assert!(
        (2..200).contains(&changed),
        "{changed} pages changed by the diff"
    );
    // A diff into a new file is a sparse layer of just those pages.
    let layer = dir.join("layer.mem");
    a.ok(
        "PUT",
        "/snapshot/create",
        &create_body("Diff", &dir.join("layer.snap"), &layer),
    );
    assert_eq!(std::fs::metadata(&layer).unwrap().len(), 64 << 20);
    let layer_bytes = std::fs::read(&layer).unwrap();
    assert!(
        layer_bytes.iter().all(|&b| b == 0),
        "nothing was written since the last diff"
    );
    drop(a);
    // Restored through the example page-fault handler.
    let sock = dir.join("uffd.sock");
    let handler = Handler::start(&sock, &mem);
    let b = restore(
        &[],
        &load_body(&diff, "Uffd", &sock, r#""resume_vm": true"#),
    );
    assert_continues(&before, &b.serial(), 3);
    drop(b);
    assert_eq!(
        handler.wait(),
        Some(0),
        "the handler ends when its VMM does"
    );
    // The same diff loaded from the file, paused first: nothing runs until resumed.
    let c = Vmm::start(&[]);
    c.ok("PUT", "/snapshot/load", &load_body(&diff, "File", &mem, ""));
    assert_eq!(c.state(), "Paused");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(count_lines(&c.serial()), 0, "{}", c.serial());
    c.set_state("Resumed");
    wait_counts(&c, 3);
    assert_continues(&before, &c.serial(), 3);
}

#[test]
fn authenticated_snapshots_load_only_untampered_with_their_key() {
    let dir = ScratchDir::new("kiln-snap-key");
    let (key, other) = (dir.join("key"), dir.join("other-key"));
    write_key(&key, 7);
    write_key(&other, 8);
    let key_flag = ["--snapshot-key-file", key.to_str().unwrap()];
    let (state, mem) = (dir.join("vm.snap"), dir.join("vm.mem"));
    let a = counting_vmm(&key_flag, "");
    wait_counts(&a, 5);
    let before = pause_and_snapshot(&a, "Full", &state, &mem);
    drop(a);
    let load = load_body(&state, "File", &mem, r#""resume_vm": true"#);
    // Another key, no key: refused, before anything is restored.
    let wrong = Vmm::start(&["--snapshot-key-file", other.to_str().unwrap()]);
    wrong.refuses(
        "PUT",
        "/snapshot/load",
        Some(&load),
        400,
        "MAC does not verify with this VMM's snapshot key",
    );
    assert_eq!(wrong.state(), "Not started");
    let none = Vmm::start(&[]);
    none.refuses(
        "PUT",
        "/snapshot/load",
        Some(&load),
        400,
        "this VMM has no snapshot key",
    );
    // One flipped byte of the memory file (the counter's page, at 8 MiB) is named.
    let vmm = Vmm::start(&key_flag);
    let bad_mem = dir.join("bad.mem");
    let mut bytes = std::fs::read(&mem).unwrap();
    bytes[(8 << 20) + 3] ^= 1;
    std::fs::write(&bad_mem, &bytes).unwrap();
    vmm.refuses(
        "PUT",
        "/snapshot/load",
        Some(&load_body(&state, "File", &bad_mem, "")),
        400,
        "does not match the snapshot's MAC: its 2 MiB chunk at offset 0x800000 differs",
    );
    // One flipped byte of the state file.
    let bad_state = dir.join("bad.snap");
    let mut bytes = std::fs::read(&state).unwrap();
    bytes[200] ^= 1;
    std::fs::write(&bad_state, &bytes).unwrap();
    vmm.refuses(
        "PUT",
        "/snapshot/load",
        Some(&load_body(&bad_state, "File", &mem, "")),
        400,
        "MAC does not verify",
    );
    // An unauthenticated snapshot is refused by a VMM with a key.
    let plain = counting_vmm(&[], "");
    wait_counts(&plain, 1);
    let plain_state = dir.join("plain.snap");
    pause_and_snapshot(&plain, "Full", &plain_state, &dir.join("plain.mem"));
    vmm.refuses(
        "PUT",
        "/snapshot/load",
        Some(&load_body(&plain_state, "File", &dir.join("plain.mem"), "")),
        400,
        "the snapshot is not authenticated, and this VMM has a snapshot key",
    );
    // After every refusal the same VMM loads the real one.
    assert_eq!(vmm.state(), "Not started");
    vmm.ok("PUT", "/snapshot/load", &load);
    wait_counts(&vmm, 3);
    assert_continues(&before, &vmm.serial(), 3);
    assert!(!vmm.stderr().contains("trusted input"), "{}", vmm.stderr());
    // A key from an inherited descriptor works the same (a pipe here).
    let mut fds = [0i32; 2];
    // SAFETY: pipe writes two new descriptors into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    {
        // SAFETY: fds[1] is the pipe's write end, owned here from now on.
        let mut w = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
        w.write_all(&[7u8; 32]).unwrap();
    }
    let fd_flag = format!("--snapshot-key-fd={}", fds[0]);
    let by_fd = Vmm::start(&[&fd_flag]);
    // SAFETY: the child has its copy; the parent's read end is closed once.
    unsafe { libc::close(fds[0]) };
    by_fd.ok("PUT", "/snapshot/load", &load);
    wait_counts(&by_fd, 3);
}

#[test]
fn bad_snapshots_and_requests_are_refused_and_the_vmm_stays_usable() {
    let dir = ScratchDir::new("kiln-snap-bad");
    let (state, mem) = (dir.join("vm.snap"), dir.join("vm.mem"));
    let a = counting_vmm(&[], "");
    // Snapshot requests in the wrong state.
    a.refuses(
        "PUT",
        "/snapshot/create",
        Some(&create_body("Full", &state, &mem)),
        400,
        "the microVM must be paused first",
    );
    a.refuses(
        "PUT",
        "/snapshot/load",
        Some(&load_body(&state, "File", &mem, "")),
        400,
        "only possible before InstanceStart",
    );
    wait_counts(&a, 2);
    a.set_state("Paused");
    a.refuses(
        "PUT",
        "/snapshot/create",
        Some(&create_body("Diff", &state, &mem)),
        400,
        "snapshot_type Diff needs dirty-page tracking",
    );
    a.refuses(
        "PUT",
        "/snapshot/create",
        Some(&create_body("Full", &dir.join("no/such/dir/s"), &mem)),
        400,
        "snapshot_path",
    );
    a.refuses(
        "PUT",
        "/snapshot/create",
        Some(r#"{"snapshot_type": "Partial", "snapshot_path": "s", "mem_file_path": "m"}"#),
        400,
        "unknown variant `Partial`",
    );
    let before = a.serial();
    a.ok(
        "PUT",
        "/snapshot/create",
        &create_body("Full", &state, &mem),
    );
    a.set_state("Resumed");
    wait_counts(&a, count_lines(&before) + 2);
    drop(a);
    let fresh = Vmm::start(&[]);
    fresh.refuses(
        "PUT",
        "/snapshot/create",
        Some(&create_body("Full", &state, &mem)),
        400,
        "only possible after InstanceStart",
    );
    // A VMM already configured does not load.
    let configured = Vmm::start(&[]);
    configured.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 64}"#,
    );
    configured.refuses(
        "PUT",
        "/snapshot/load",
        Some(&load_body(&state, "File", &mem, "")),
        400,
        "machine-config is already configured",
    );
    // Broken files, each named; the same VMM goes on to the next.
    let bytes = std::fs::read(&state).unwrap();
    let file = |name: &str, data: &[u8]| dir.write(name, data);
    let mut flipped = bytes.clone();
    flipped[100] ^= 0x40;
    let mut version = bytes.clone();
    version[8] = 9;
    version[10..12].copy_from_slice(&[0, 0]);
    let oversized = dir.join("oversized.snap");
    std::fs::File::create(&oversized)
        .unwrap()
        .set_len(65 << 20)
        .unwrap();
    let short_mem = dir.join("short.mem");
    std::fs::File::create(&short_mem)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let two_vcpus = dir.join("two-vcpus.snap");
    edit_config(&state, &two_vcpus, |c| {
        c.replace("\"vcpu_count\":1", "\"vcpu_count\":2")
    });
    let more_devices = dir.join("devices.snap");
    let vsock_dir = dir.join("v.sock");
    edit_config(&state, &more_devices, |c| {
        c.replace(
            "\"vsock\":null",
            &format!(
                r#""vsock":{{"guest_cid":3,"uds_path":"{}"}}"#,
                vsock_dir.display()
            ),
        )
    });
    let no_mem = dir.join("none.mem");
    let cases: Vec<(PathBuf, &Path, &str)> = vec![
        (dir.join("missing.snap"), &mem, "cannot read it"),
        (
            file("truncated.snap", &bytes[..bytes.len() / 2]),
            &mem,
            "truncated or extended",
        ),
        (
            file("tiny.snap", &bytes[..20]),
            &mem,
            "shorter than a snapshot's header",
        ),
        (oversized.clone(), &mem, "larger than"),
        (
            file("flipped.snap", &flipped),
            &mem,
            "checksum does not match",
        ),
        (
            file("version.snap", &version),
            &mem,
            "format version v9.0.0; this VMM reads v1.4.0",
        ),
        (
            file("junk.snap", &[b'x'; 4096]),
            &mem,
            "not a Kiln snapshot",
        ),
        (
            state.clone(),
            &short_mem,
            "the memory file is 33554432 bytes, the snapshot's guest memory 67108864 bytes",
        ),
        (state.clone(), &no_mem, "cannot open the memory file"),
        (two_vcpus, &mem, "has 2 vCPUs, and it holds the state of 1"),
        (
            more_devices,
            &mem,
            "has 1 virtio devices, and it holds the state of 0",
        ),
    ];
    let b = Vmm::start(&[]);
    for (state_file, mem_file, words) in &cases {
        b.refuses(
            "PUT",
            "/snapshot/load",
            Some(&load_body(state_file, "File", mem_file, "")),
            400,
            words,
        );
        assert_eq!(b.state(), "Not started", "after {words}");
    }
    for (body, words) in [
        (
            format!(
                r#"{{"snapshot_path": "{}", "mem_file_path": "{}", "mem_backend": {{"backend_type": "File", "backend_path": "{}"}}}}"#,
                state.display(),
                mem.display(),
                mem.display()
            ),
            "mutually exclusive",
        ),
        (
            load_body(
                &state,
                "File",
                &mem,
                r#""network_overrides": [{"iface_id": "eth9", "host_dev_name": "tap9"}]"#,
            ),
            "the snapshot has no network interface \"eth9\"",
        ),
        (
            load_body(
                &state,
                "File",
                &mem,
                r#""vsock_override": {"uds_path": "/tmp/x.sock"}"#,
            ),
            "the snapshot has no vsock device",
        ),
        (
            load_body(&state, "Uffd", &dir.join("nobody.sock"), ""),
            "cannot connect to the page-fault handler's socket",
        ),
    ] {
        b.refuses("PUT", "/snapshot/load", Some(&body), 400, words);
        assert_eq!(b.state(), "Not started", "after {words}");
    }
    // Still usable: the good snapshot loads (the deprecated mem_file_path form).
    b.ok(
        "PUT",
        "/snapshot/load",
        &format!(
            r#"{{"snapshot_path": "{}", "mem_file_path": "{}", "resume_vm": true}}"#,
            state.display(),
            mem.display()
        ),
    );
    wait_counts(&b, 3);
    assert_continues(&before, &b.serial(), 3);
    b.refuses(
        "PUT",
        "/snapshot/load",
        Some(&load_body(&state, "File", &mem, "")),
        400,
        "only possible before InstanceStart",
    );
}

#[test]
fn the_snapshot_version_flags_print_the_format() {
    let vmm = require_bin("vmm");
    let out = Command::new(&vmm)
        .arg("--snapshot-version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v1.4.0\n");
    let dir = ScratchDir::new("kiln-snap-describe");
    let (state, mem) = (dir.join("vm.snap"), dir.join("vm.mem"));
    let a = counting_vmm(&[], "");
    wait_counts(&a, 1);
    pause_and_snapshot(&a, "Full", &state, &mem);
    let out = Command::new(&vmm)
        .arg("--describe-snapshot")
        .arg(&state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v1.4.0\n");
    let out = Command::new(&vmm)
        .arg("--describe-snapshot")
        .arg(&mem)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a Kiln snapshot"),
        "{out:?}"
    );
}

/// The host side of `vsock-listen` on `uds`: CONNECT, OK, a message, its upper-cased echo.
fn talk_to_listener(uds: &Path, port: u32) {
    let mut s = UnixStream::connect(uds).expect("connect to the vsock socket");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let mut ok = Vec::new();
    let mut b = [0u8; 1];
    while !ok.ends_with(b"\n") {
        assert_eq!(
            kiln_tests::io::read_some(&mut s, &mut b).expect("the OK line"),
            1,
            "{ok:?}"
        );
        ok.push(b[0]);
    }
    assert!(ok.starts_with(b"OK "), "{:?}", String::from_utf8_lossy(&ok));
    s.write_all(b"hello after the restore").unwrap();
    let mut echo = vec![0u8; 23];
    s.read_exact(&mut echo).unwrap();
    assert_eq!(echo, b"HELLO AFTER THE RESTORE");
}

#[test]
fn a_started_vsock_device_is_restored_and_takes_a_new_connection() {
    let dir = ScratchDir::new("kiln-snap-vsock");
    let (state, mem) = (dir.join("vm.snap"), dir.join("vm.mem"));
    let a = Vmm::start(&[]);
    a.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
    );
    a.boot_tiny_guest("console=ttyS0 reboot=k panic=1 kiln.test=vsock-listen kiln.port=5000");
    a.ok(
        "PUT",
        "/vsock",
        &format!(
            r#"{{"guest_cid": 3, "uds_path": "{}"}}"#,
            dir.join("a.sock").display()
        ),
    );
    a.action("InstanceStart");
    a.wait_serial("the guest listening", "vsock listen port=5000");
    pause_and_snapshot(&a, "Full", &state, &mem);
    drop(a);
    let b_sock = dir.join("b.sock");
    let b = Vmm::start(&[]);
    b.ok(
        "PUT",
        "/snapshot/load",
        &load_body(
            &state,
            "File",
            &mem,
            &format!(
                r#""resume_vm": true, "vsock_override": {{"uds_path": "{}"}}"#,
                b_sock.display()
            ),
        ),
    );
    // The restored configuration names the new socket.
    assert_eq!(
        b.get("/vm/config")["vsock"]["uds_path"],
        b_sock.display().to_string()
    );
    talk_to_listener(&b_sock, 5000);
    // The guest then ends the VM (its scenario is done).
    b.wait_serial("the exchange's end", "vsock closed op=3");
    assert!(
        b.serial().contains("vsock accepted port=5000"),
        "{}",
        b.serial()
    );
}

/// The `rng-read` guest: 3 requests of 64 bytes, each waited for up to 10 s.
const RNG_ARGS: &str =
    "console=ttyS0 reboot=k panic=1 kiln.test=rng-read kiln.count=3 kiln.len=64 kiln.wait=10";

#[test]
fn an_entropy_device_and_rate_limiters_are_restored_with_their_tokens() {
    require_kvm();
    let dir = ScratchDir::new("kiln-snap-rng");
    let (state, mem) = (dir.join("vm.snap"), dir.join("vm.mem"));
    let disk = dir.write("data.img", vec![0u8; 8192]);
    let a = Vmm::start(&[]);
    a.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
    );
    a.boot_tiny_guest(RNG_ARGS);
    // One request, then one per 2 s.
    a.ok(
        "PUT",
        "/entropy",
        r#"{"rate_limiter": {"ops": {"size": 1, "refill_time": 2000}}}"#,
    );
    a.ok(
        "PUT",
        "/drives/data",
        &format!(
            r#"{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false, "rate_limiter": {{"bandwidth": {{"size": 4096, "refill_time": 100}}}}}}"#,
            disk.display()
        ),
    );
    a.ok(
        "PUT",
        "/serial",
        r#"{"rate_limiter": {"size": 65536, "refill_time": 1000}}"#,
    );
    a.action("InstanceStart");
    a.wait_serial("the first answer", "rng read n=0 ");
    // Changed after boot: the snapshot has the limiter in force.
    a.ok(
        "PATCH",
        "/drives/data",
        r#"{"drive_id": "data", "rate_limiter": {"ops": {"size": 10, "refill_time": 1000}}}"#,
    );
    a.set_state("Paused");
    let before = a.serial();
    a.ok(
        "PUT",
        "/snapshot/create",
        &create_body("Full", &state, &mem),
    );
    let config_a = a.get("/vm/config");
    drop(a);
    // The second request waits for the refill: it was not answered before the snapshot.
    assert_eq!(before.matches("rng read n=").count(), 1, "{before}");

    let metrics = dir.join("metrics.json");
    let b = Vmm::start(&["--metrics-path", metrics.to_str().unwrap()]);
    let resumed = Instant::now();
    b.ok(
        "PUT",
        "/snapshot/load",
        &load_body(&state, "File", &mem, r#""resume_vm": true"#),
    );
    let config_b = b.get("/vm/config");
    for section in ["machine-config", "drives", "entropy", "serial"] {
        assert_eq!(config_b[section], config_a[section], "{section}");
    }
    assert_eq!(
        config_b["entropy"]["rate_limiter"]["ops"]["refill_time"],
        2000
    );
    let drive = &config_b["drives"][0]["rate_limiter"];
    assert_eq!(
        (&drive["bandwidth"]["size"], &drive["ops"]["size"]),
        (&4096.into(), &10.into()),
        "the drive's limiter as PATCH left it: {drive}"
    );
    assert_eq!(config_b["serial"]["rate_limiter"]["size"], 65536);
    assert_eq!(
        config_b["serial"]["serial_out_path"],
        serde_json::Value::Null
    );
    // The restored limiter has the snapshot's empty bucket: the second request still waits
    // for the refill (a full bucket would answer it at once).
    b.wait_serial("the second answer", "rng read n=1 ");
    let waited = resumed.elapsed();
    assert!(
        waited >= Duration::from_millis(800),
        "the second request was answered {waited:?} after the restore\n{}",
        b.serial()
    );
    b.wait_serial("the end of the scenario", "rng done count=3");
    // The guest then ends the VM; its last metrics line is written on the way out.
    b.wait_for("the VMM's exit", WAIT, |v| metrics_written(v, &metrics));
    let out = TinyOutput::parse(&b.serial());
    assert!(out.errors().is_empty(), "{}", b.serial());
    let reads = out.topic("rng read");
    assert_eq!(reads.len(), 2, "{}", b.serial());
    for r in &reads {
        assert_eq!(field(r, "used"), Some("64"), "{}", b.serial());
        let nonzero: u32 = field(r, "nonzero").unwrap().parse().unwrap();
        assert!(nonzero > 48, "{}", b.serial());
    }
    assert_eq!(out.value("rng done count"), Some("3 repeats=0"));
    let m = Metrics::read(&metrics);
    assert_eq!(m.get("entropy.entropy_event_count"), 2);
    assert_eq!(m.get("entropy.entropy_bytes"), 128);
    assert!(
        m.get("entropy.entropy_rate_limiter_throttled") >= 1,
        "the restored device is limited"
    );
}

/// The VMM ended (a zombie until its handle reaps it) and wrote its metrics file.
fn metrics_written(vmm: &Vmm, metrics: &Path) -> bool {
    let stat =
        std::fs::read_to_string(format!("/proc/{}/stat", vmm.child.id())).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    matches!(state, Some("Z") | None) && metrics.exists()
}

/// The complete lines of the file at `path` (empty while it does not exist).
fn file_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn the_restored_serial_console_writes_where_the_loading_vmm_says() {
    let dir = ScratchDir::new("kiln-snap-serial");
    let (state, mem) = (dir.join("vm.snap"), dir.join("vm.mem"));
    let a_out = dir.join("a.out");
    require_kvm();
    let a = Vmm::start(&[]);
    a.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
    );
    a.boot_tiny_guest(&count_args());
    a.ok(
        "PUT",
        "/serial",
        &format!(
            r#"{{"serial_out_path": "{}", "rate_limiter": {{"size": 1048576, "refill_time": 1000}}}}"#,
            a_out.display()
        ),
    );
    a.action("InstanceStart");
    a.wait_for("3 count lines in the file", WAIT, |_| {
        count_lines(&file_text(&a_out)) >= 3
    });
    a.set_state("Paused");
    let before = file_text(&a_out);
    a.ok(
        "PUT",
        "/snapshot/create",
        &create_body("Full", &state, &mem),
    );
    assert_eq!(count_lines(&a.serial()), 0, "{}", a.serial());
    drop(a);
    let load = load_body(&state, "File", &mem, r#""resume_vm": true"#);

    // No PUT /serial: this VMM's stdout (its --serial-out), with the snapshot's bucket;
    // never the snapshotted VMM's file.
    let b = restore(&[], &load);
    assert_continues(&before, &b.serial(), 3);
    let serial_b = &b.get("/vm/config")["serial"];
    assert_eq!(serial_b["serial_out_path"], serde_json::Value::Null);
    assert_eq!(serial_b["rate_limiter"]["size"], 1048576);
    assert_eq!(
        file_text(&a_out),
        before,
        "the snapshot's file was written to"
    );
    drop(b);

    // PUT /serial before the load (accepted there, as in Firecracker): that file, with
    // that configuration (no bucket).
    let c_out = dir.join("c.out");
    let c = Vmm::start(&[]);
    c.ok(
        "PUT",
        "/serial",
        &format!(r#"{{"serial_out_path": "{}"}}"#, c_out.display()),
    );
    c.ok("PUT", "/snapshot/load", &load);
    c.wait_for("3 count lines in the file", WAIT, |_| {
        count_lines(&file_text(&c_out)) >= 3
    });
    assert_continues(&before, &file_text(&c_out), 3);
    assert_eq!(count_lines(&c.serial()), 0, "{}", c.serial());
    let serial_c = &c.get("/vm/config")["serial"];
    assert_eq!(serial_c["serial_out_path"], c_out.display().to_string());
    assert_eq!(serial_c["rate_limiter"], serde_json::Value::Null);
}

/// CPUID leaf 1 ECX bit 13 (CMPXCHG16B): the template clears it (the masking reaches the
/// guest on every host, tests/tests/cpu_config.rs).
const CX16: u64 = 1 << 13;
/// The template: CX16 cleared; leaf 1 ECX bit 16 set, a reserved bit, so one no host's KVM
/// offers; IA32_PAT entry 7 write-combining.
const TEMPLATE: &str = r#"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
      "modifiers": [{"register": "ecx", "bitmap": "0bxxxxxxxxxxxxxxx1xx0xxxxxxxxxxxxx"}]}],
    "msr_modifiers": [{"addr": "0x277", "bitmap": "0b00000001xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}]}"#;

/// (leaf 1 ECX, IA32_PAT) of every complete `count ... leaf1.ecx=.. pat=..` line.
fn cpu_fields(text: &str) -> Vec<(u64, u64)> {
    let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
    TinyOutput::parse(complete)
        .topic("count")
        .iter()
        .filter_map(|f| {
            Some((
                parse_hex(field(f, "leaf1.ecx")?)?,
                parse_hex(field(f, "pat")?)?,
            ))
        })
        .collect()
}

#[test]
fn a_custom_cpu_template_is_the_restored_vcpus_and_is_checked_as_such() {
    let dir = ScratchDir::new("kiln-snap-cpu");
    let (state, mem) = (dir.join("vm.snap"), dir.join("vm.mem"));
    require_kvm();
    let a = Vmm::start(&[]);
    a.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
    );
    a.boot_tiny_guest(&format!("{} kiln.cpu=1", count_args()));
    a.ok("PUT", "/cpu-config", TEMPLATE);
    a.action("InstanceStart");
    wait_counts(&a, 3);
    let seen = cpu_fields(&a.serial());
    let &(ecx, pat) = seen.last().expect("count lines with the CPU's fields");
    assert_eq!(ecx & CX16, 0, "the template's CPUID: {ecx:#x}");
    assert_eq!(pat >> 56, 1, "the template's IA32_PAT: {pat:#x}");
    let before = pause_and_snapshot(&a, "Full", &state, &mem);
    let config_a = a.get("/vm/config");
    drop(a);
    // The snapshot's vCPUs have a CPUID bit (the reserved one) this host's KVM does not
    // offer: the restore compares them with what the host gives the same template, and
    // loads.
    let b = restore(
        &[],
        &load_body(&state, "File", &mem, r#""resume_vm": true"#),
    );
    assert_continues(&before, &b.serial(), 3);
    let after = cpu_fields(&b.serial());
    assert!(!after.is_empty(), "{}", b.serial());
    for &(e, p) in &after {
        assert_eq!(
            (e, p),
            (ecx, pat),
            "the restored vCPU's leaf 1 ECX and IA32_PAT, against the snapshotted one's"
        );
    }
    assert_eq!(b.get("/vm/config")["cpu-config"], config_a["cpu-config"]);
}

#[test]
fn expected_sums_follow_the_guest() {
    assert_eq!(expected_sum(1), 1);
    assert_eq!(expected_sum(20), (5..=20).sum::<u64>());
    let line = |n: u64, s: u64| format!("KILN-TINY: count {n} mem={s}\n");
    let before: String = (1..=3).map(|n| line(n, expected_sum(n))).collect();
    let cut = format!("{before}KILN-TINY: cou");
    let after = format!("nt 4 mem=10\n{}{}", line(5, 15), line(6, 21));
    assert_eq!(assert_continues(&cut, &after, 2), 4);
    let gap = format!("{}{}", line(5, 15), line(6, 21));
    assert!(std::panic::catch_unwind(|| assert_continues(&before, &gap, 1)).is_err());
    let wrong = format!("{}{}", line(4, 10), line(5, 14));
    assert!(std::panic::catch_unwind(|| assert_continues(&before, &wrong, 1)).is_err());
    assert_eq!(
        count_lines("KILN-TINY: count 1 mem=1\nKILN-TINY: count 2 me"),
        1
    );
}
