//! Fast tier: virtio-rng (`entropy`, `PUT /entropy`) with the tiny test guest.
//!
//! The guest's `rng-read` scenario asks the device for random bytes and prints what it got
//! (length, non-zero bytes, a checksum and the first 16 bytes); the tests check that every
//! answer is full, that answers differ, that the device sits in the next virtio-mmio window
//! after the drives and vsock, that the metrics (`entropy.*`) count it, and that its rate
//! limiter spaces the requests out (measured on the host, between the guest's lines). The
//! hostile driver (`rng-hostile`) is in `security_guest.rs`.
//!
//! Needs /dev/kvm and the `vmm` binary (`cargo build --workspace`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_tests::metrics::Metrics;
use kiln_tests::process::Followed;
use kiln_tests::tiny::{self, field, TinyOutput};
use kiln_tests::{api, require_bin, require_kvm, run_with_timeout, ScratchDir};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A config file booting the tiny guest with `boot_args` and `extra` sections.
fn config(dir: &ScratchDir, boot_args: &str, extra: &str) -> PathBuf {
    dir.write(
        "vm.json",
        format!(
            "{{\"boot-source\": {{\"kernel_image_path\": {:?}, \"boot_args\": {boot_args:?}}},\n \"machine-config\": {{\"vcpu_count\": 1, \"mem_size_mib\": 32}}{extra}}}\n",
            tiny::tiny_guest().to_str().expect("utf-8 path")
        ),
    )
}

fn vmm(cfg: &Path, metrics: &Path) -> Command {
    require_kvm();
    let mut cmd = Command::new(require_bin("vmm"));
    cmd.arg("--config-file")
        .arg(cfg)
        .arg("--no-api")
        .arg("--metrics-path")
        .arg(metrics);
    cmd
}

/// The fields of the `rng read` lines.
fn reads(out: &TinyOutput) -> Vec<Vec<(&str, &str)>> {
    out.topic("rng read")
}

#[test]
fn each_request_gets_its_own_random_bytes() {
    let dir = ScratchDir::new("kiln-rng");
    let cfg = config(
        &dir,
        "kiln.test=rng-read kiln.count=4 kiln.len=4096",
        ",\n \"entropy\": {}",
    );
    let metrics = dir.join("metrics.json");
    let f = run_with_timeout(&mut vmm(&cfg, &metrics), TIMEOUT);
    let out = tiny::assert_clean_run(&f);
    let dev = &out.topic("rng")[0];
    assert_eq!(field(dev, "base"), Some("0xd0000000"), "{f}");
    assert_eq!(
        field(dev, "features"),
        Some("0x100000000"),
        "VERSION_1 only"
    );
    let reads = reads(&out);
    assert_eq!(reads.len(), 4, "{f}");
    let mut sums = Vec::new();
    for r in &reads {
        assert_eq!(field(r, "used"), Some("4096"), "{f}");
        // 4096 random bytes: about 16 zeros expected; fewer than 4000 non-zero bytes would
        // mean the buffer was not (all) written.
        let nonzero: u32 = field(r, "nonzero").unwrap().parse().unwrap();
        assert!(nonzero > 4000, "{f}");
        sums.push(field(r, "sum").unwrap().to_string());
    }
    sums.sort();
    sums.dedup();
    assert_eq!(sums.len(), 4, "four answers, four different checksums\n{f}");
    assert_eq!(out.value("rng done count"), Some("4 repeats=0"), "{f}");
    let m = Metrics::read(&metrics);
    assert_eq!(m.get("entropy.entropy_event_count"), 4);
    assert_eq!(m.get("entropy.entropy_bytes"), 4 * 4096);
    assert_eq!(m.get("entropy.entropy_event_fails"), 0);
    assert_eq!(m.get("entropy.host_rng_fails"), 0);
    assert_eq!(m.get("entropy.entropy_rate_limiter_throttled"), 0);
}

#[test]
fn the_device_comes_after_the_drives_and_vsock() {
    let dir = ScratchDir::short("kiln-rng");
    let disk = dir.write("disk.img", vec![0u8; 4096]);
    let extra = format!(
        ",\n \"drives\": [{{\"drive_id\": \"d\", \"path_on_host\": {:?}, \"is_root_device\": false}}],\n \"vsock\": {{\"guest_cid\": 3, \"uds_path\": {:?}}},\n \"entropy\": {{\"rate_limiter\": null}}",
        disk.to_str().unwrap(),
        dir.join("v.sock").to_str().unwrap()
    );
    let cfg = config(&dir, "kiln.test=rng-read kiln.count=1", &extra);
    let metrics = dir.join("metrics.json");
    let f = run_with_timeout(&mut vmm(&cfg, &metrics), TIMEOUT);
    let out = tiny::assert_clean_run(&f);
    // Drive at 0xd0000000, vsock at 0xd0001000, entropy at 0xd0002000 (IRQ 7).
    let dev = &out.topic("rng")[0];
    assert_eq!(field(dev, "base"), Some("0xd0002000"), "{f}");
    assert_eq!(field(dev, "irq"), Some("7"), "{f}");
    assert_eq!(field(&reads(&out)[0], "used"), Some("64"), "{f}");
}

#[test]
fn without_an_entropy_section_there_is_no_device() {
    let dir = ScratchDir::new("kiln-rng");
    let cfg = config(&dir, "kiln.test=rng-read", "");
    let f = run_with_timeout(&mut vmm(&cfg, &dir.join("m.json")), TIMEOUT);
    let out = TinyOutput::parse(&f.stdout);
    assert_eq!(out.errors(), ["no virtio-rng device"], "{f}");
}

/// Runs `rng-read` with `limiter` and returns, for each `rng read` line, when the host saw
/// it, and the metrics.
fn limited_reads(count: u32, len: u32, limiter: &str) -> (Vec<Instant>, Metrics, String) {
    let dir = ScratchDir::new("kiln-rng-limit");
    let cfg = config(
        &dir,
        &format!("kiln.test=rng-read kiln.count={count} kiln.len={len} kiln.wait=10"),
        &format!(",\n \"entropy\": {{\"rate_limiter\": {limiter}}}"),
    );
    let metrics = dir.join("metrics.json");
    let mut vm = Followed::spawn(&mut vmm(&cfg, &metrics));
    let mut seen = Vec::new();
    while let Some(line) = vm.next_line(TIMEOUT.saturating_sub(vm.started().elapsed())) {
        if line.contains("rng read n=") {
            seen.push(Instant::now());
        }
        if line.contains("rng done") {
            break;
        }
    }
    let f = vm.finish(TIMEOUT);
    tiny::assert_clean_run(&f);
    (seen, Metrics::read(&metrics), f.to_string())
}

#[test]
fn the_ops_bucket_spaces_requests_out() {
    // One request per 100 ms: five requests take at least 400 ms from the first to the last.
    let (seen, m, all) = limited_reads(5, 64, r#"{"ops": {"size": 1, "refill_time": 100}}"#);
    assert_eq!(seen.len(), 5, "{all}");
    let spread = seen[4] - seen[0];
    assert!(
        spread >= Duration::from_millis(350),
        "5 requests at 1 per 100 ms took {spread:?}\n{all}"
    );
    assert!(
        m.get("entropy.entropy_rate_limiter_throttled") >= 4,
        "{all}"
    );
    assert!(m.get("entropy.rate_limiter_event_count") >= 4, "{all}");
    assert_eq!(m.get("entropy.entropy_bytes"), 5 * 64);
}

#[test]
fn the_bandwidth_bucket_spaces_bytes_out_after_the_burst() {
    // 1000 bytes per 100 ms after a one-time burst of 2000: requests of 1000 bytes; the
    // first three pass at once (burst and bucket), the next two wait 100 ms each.
    let (seen, m, all) = limited_reads(
        5,
        1000,
        r#"{"bandwidth": {"size": 1000, "one_time_burst": 2000, "refill_time": 100}}"#,
    );
    assert_eq!(seen.len(), 5, "{all}");
    let spread = seen[4] - seen[2];
    assert!(
        spread >= Duration::from_millis(150),
        "after the burst, 2 more 1000-byte requests at 1000 bytes per 100 ms took {spread:?}\n{all}"
    );
    assert!(
        m.get("entropy.entropy_rate_limiter_throttled") >= 2,
        "{all}"
    );
    assert_eq!(m.get("entropy.entropy_bytes"), 5000);
}

#[test]
fn put_entropy_through_the_api() {
    require_kvm();
    let dir = ScratchDir::short("kiln-rng-api");
    let sock = dir.join("api.sock");
    let mut vm = Followed::spawn(
        Command::new(require_bin("vmm"))
            .arg("--api-sock")
            .arg(&sock),
    );
    let deadline = Instant::now() + TIMEOUT;
    while !sock.exists() {
        assert!(Instant::now() < deadline, "no API socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    let bad = api::request(&sock, "PUT", "/entropy", r#"{"rate_limiter": {"ops": 5}}"#);
    assert_eq!(bad.0, 400, "{bad:?}");
    assert!(bad.1.contains("invalid type"), "{bad:?}");
    let body = r#"{"rate_limiter": {"bandwidth": {"size": 100000, "refill_time": 100}}}"#;
    assert_eq!(api::request(&sock, "PUT", "/entropy", body).0, 204);
    let boot = format!(
        "{{\"kernel_image_path\": {:?}, \"boot_args\": \"kiln.test=rng-read kiln.count=2\"}}",
        tiny::tiny_guest().to_str().unwrap()
    );
    assert_eq!(api::request(&sock, "PUT", "/boot-source", &boot).0, 204);
    let (code, cfg) = api::request(&sock, "GET", "/vm/config", "");
    assert_eq!(code, 200);
    let cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(
        cfg["entropy"]["rate_limiter"]["bandwidth"]["size"], 100000,
        "{cfg}"
    );
    let start = r#"{"action_type": "InstanceStart"}"#;
    assert_eq!(api::request(&sock, "PUT", "/actions", start).0, 204);
    assert!(
        vm.wait_line("rng done count=2 repeats=0", TIMEOUT),
        "{}",
        vm.seen()
    );
    // (That it is refused after InstanceStart is the controller's unit test: this guest
    // ends the VM right after its reads.)
    let f = vm.finish(TIMEOUT);
    let out = TinyOutput::parse(&f.stdout);
    assert!(out.done && out.errors().is_empty(), "{f}");
}
