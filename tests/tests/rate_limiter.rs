//! Fast tier: token-bucket rate limiters on virtio-blk (`rate_limiter`) and virtio-net
//! (`rx_rate_limiter`, `tx_rate_limiter`), set in the configuration and changed with
//! `PATCH` on the running microVM, with the tiny test guest.
//!
//! What is asserted is behaviour, never exact timing: requests (reads, frames) that exceed
//! the buckets are spaced out by at least the refill time (a lower bound measured on the
//! host: when the guest's lines, or its frames on the tap, arrive), the throttled requests
//! are counted in the metrics with Firecracker's names, nothing is lost, and a `PATCH` that
//! lifts a limit lets a request already waiting through at once.
//!
//! Needs root (network namespaces, taps), /dev/kvm, iproute2 and the `vmm` binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_tests::metrics::Metrics;
use kiln_tests::netns::{tap_name, NetNs};
use kiln_tests::process::Followed;
use kiln_tests::tiny::{self, field, TinyOutput};
use kiln_tests::{api, require_bin, require_kvm, ScratchDir};

const TIMEOUT: Duration = Duration::from_secs(40);
const GUEST_MAC: [u8; 6] = [0x06, 0x00, 0xac, 0x10, 0x00, 0x03];
const HOST_MAC: [u8; 6] = [0x02, 0x4b, 0x49, 0x4c, 0x4e, 0x03];
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
/// One request (or frame) per 100 ms.
const ONE_PER_100MS: &str = r#"{"ops": {"size": 1, "refill_time": 100}}"#;

fn config(dir: &ScratchDir, boot_args: &str, extra: &str) -> PathBuf {
    dir.write(
        "vm.json",
        format!(
            "{{\"boot-source\": {{\"kernel_image_path\": {:?}, \"boot_args\": {boot_args:?}}},\n \"machine-config\": {{\"vcpu_count\": 1, \"mem_size_mib\": 32}}{extra}}}\n",
            tiny::tiny_guest().to_str().expect("utf-8 path")
        ),
    )
}

fn drive(dir: &ScratchDir, limiter: &str) -> String {
    let disk = dir.write("disk.img", vec![7u8; 16 * 512]);
    format!(
        ",\n \"drives\": [{{\"drive_id\": \"data\", \"path_on_host\": {:?}, \"is_root_device\": false, \"rate_limiter\": {limiter}}}]",
        disk.to_str().unwrap()
    )
}

/// The VMM on `cfg` (inside `ns` when given), its guest followed; with an API socket when
/// `sock` is given.
fn start(cfg: &Path, metrics: &Path, sock: Option<&Path>, ns: Option<&NetNs>) -> Followed {
    require_kvm();
    let mut cmd = match ns {
        Some(ns) => ns.command(require_bin("vmm")),
        None => Command::new(require_bin("vmm")),
    };
    cmd.arg("--config-file")
        .arg(cfg)
        .arg("--metrics-path")
        .arg(metrics);
    match sock {
        Some(s) => cmd.arg("--api-sock").arg(s),
        None => cmd.arg("--no-api"),
    };
    Followed::spawn(&mut cmd)
}

/// Takes the guest's lines until one contains `needle` (false at the deadline).
fn wait_containing(vm: &mut Followed, needle: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while let Some(line) = vm.next_line(deadline.saturating_duration_since(Instant::now())) {
        if line.contains(needle) {
            return true;
        }
    }
    false
}

/// Follows the guest until a line contains `last`, noting when each line containing `each`
/// arrived; then waits for the VMM and checks the guest finished cleanly.
fn times_of(mut vm: Followed, each: &str, last: &str) -> (Vec<Instant>, TinyOutput, String) {
    let mut seen = Vec::new();
    while let Some(line) = vm.next_line(TIMEOUT.saturating_sub(vm.started().elapsed())) {
        if line.contains(each) {
            seen.push(Instant::now());
        }
        if line.contains(last) {
            break;
        }
    }
    let f = vm.finish(TIMEOUT);
    let out = tiny::assert_clean_run(&f);
    (seen, out, f.to_string())
}

#[test]
fn a_drive_ops_bucket_spaces_reads_out() {
    let dir = ScratchDir::new("kiln-rl-blk");
    let extra = drive(&dir, ONE_PER_100MS);
    let cfg = config(
        &dir,
        "kiln.test=blk-burst kiln.count=5 kiln.wait=10",
        &extra,
    );
    let metrics = dir.join("metrics.json");
    let vm = start(&cfg, &metrics, None, None);
    let (seen, out, all) = times_of(vm, "blk burst n=", "blk burst done");
    assert_eq!(seen.len(), 5, "{all}");
    assert!(
        out.topic("blk burst")
            .iter()
            .filter(|f| field(f, "n").is_some())
            .all(|f| field(f, "status") == Some("0")),
        "{all}"
    );
    let spread = seen[4] - seen[0];
    assert!(
        spread >= Duration::from_millis(350),
        "5 reads at 1 per 100 ms took {spread:?}\n{all}"
    );
    let m = Metrics::read(&metrics);
    assert!(m.get("block.rate_limiter_throttled_events") >= 4, "{all}");
    assert!(m.get("block.rate_limiter_event_count") >= 4, "{all}");
    assert_eq!(m.get("block.read_count"), 5);
}

#[test]
fn a_drive_bandwidth_bucket_counts_bytes() {
    let dir = ScratchDir::new("kiln-rl-blk");
    // 1024 bytes per 200 ms: two one-sector reads, then a wait for each further pair.
    let extra = drive(&dir, r#"{"bandwidth": {"size": 1024, "refill_time": 200}}"#);
    let cfg = config(
        &dir,
        "kiln.test=blk-burst kiln.count=6 kiln.wait=10",
        &extra,
    );
    let metrics = dir.join("metrics.json");
    let vm = start(&cfg, &metrics, None, None);
    let (seen, _, all) = times_of(vm, "blk burst n=", "blk burst done");
    assert_eq!(seen.len(), 6, "{all}");
    // 6 sectors = 3 KiB at 1 KiB per 200 ms: at least 400 ms after the first two.
    let spread = seen[5] - seen[1];
    assert!(
        spread >= Duration::from_millis(350),
        "3 KiB at 1 KiB per 200 ms took {spread:?} after the first 1 KiB\n{all}"
    );
    let m = Metrics::read(&metrics);
    assert!(m.get("block.rate_limiter_throttled_events") >= 2, "{all}");
    assert_eq!(m.get("block.read_bytes"), 6 * 512);
}

#[test]
fn patch_lifts_a_drive_limit_for_the_request_already_waiting() {
    let dir = ScratchDir::short("kiln-rl-patch");
    // One read, then nothing for a minute.
    let extra = drive(&dir, r#"{"ops": {"size": 1, "refill_time": 60000}}"#);
    let cfg = config(
        &dir,
        "kiln.test=blk-burst kiln.count=3 kiln.wait=30",
        &extra,
    );
    let metrics = dir.join("metrics.json");
    let sock = dir.join("api.sock");
    let mut vm = start(&cfg, &metrics, Some(&sock), None);
    assert!(
        wait_containing(&mut vm, "blk burst n=0", TIMEOUT),
        "{}",
        vm.seen()
    );
    // The second read waits for the refill.
    assert!(
        vm.next_line(Duration::from_millis(500)).is_none(),
        "the second read was not held back\n{}",
        vm.seen()
    );
    // A bad update is refused and changes nothing.
    let bad = api::request(
        &sock,
        "PATCH",
        "/drives/data",
        r#"{"drive_id": "data", "rate_limiter": {"ops": {"size": 1}}}"#,
    );
    assert_eq!(bad.0, 400, "{bad:?}");
    assert!(bad.1.contains("missing field `refill_time`"), "{bad:?}");
    // A bucket left out stays: adding a bandwidth bucket keeps the read waiting for its op.
    let add = r#"{"drive_id": "data", "rate_limiter": {"bandwidth": {"size": 1048576, "refill_time": 1000}}}"#;
    assert_eq!(api::request(&sock, "PATCH", "/drives/data", add).0, 204);
    assert!(
        vm.next_line(Duration::from_millis(500)).is_none(),
        "the read went on though its ops bucket was kept\n{}",
        vm.seen()
    );
    let (code, cfg) = api::request(&sock, "GET", "/vm/config", "");
    assert_eq!(code, 200);
    let cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(
        cfg["drives"][0]["rate_limiter"],
        serde_json::json!({"bandwidth": {"size": 1048576, "one_time_burst": null, "refill_time": 1000},
                           "ops": {"size": 1, "one_time_burst": null, "refill_time": 60000}})
    );
    // Lifting the ops limit lets the waiting read through at once.
    let patched = Instant::now();
    let lift = r#"{"drive_id": "data", "rate_limiter": {"ops": {"size": 0, "refill_time": 0}}}"#;
    let answer = api::request(&sock, "PATCH", "/drives/data", lift);
    assert_eq!(answer.0, 204, "{answer:?}");
    assert!(
        wait_containing(&mut vm, "blk burst done", TIMEOUT),
        "{}",
        vm.seen()
    );
    let took = patched.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "the waiting read went on {took:?} after the PATCH (its old refill was 60 s)"
    );
    let f = vm.finish(TIMEOUT);
    tiny::assert_clean_run(&f);
    let m = Metrics::read(&metrics);
    assert_eq!(m.get("block.update_count"), 2, "{f}");
    assert_eq!(m.get("patch_api_requests.drive_count"), 3);
    assert_eq!(m.get("patch_api_requests.drive_fails"), 1);
}

fn net_config(dir: &ScratchDir, ns: &NetNs, boot_args: &str, iface_extra: &str) -> PathBuf {
    let tap = tap_name("l");
    ns.add_tap(&tap, None);
    dir.write("tap", &tap);
    let mac = GUEST_MAC
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let extra = format!(
        ",\n \"network-interfaces\": [{{\"iface_id\": \"eth0\", \"host_dev_name\": {tap:?}, \"guest_mac\": {mac:?}{iface_extra}}}]"
    );
    config(dir, boot_args, &extra)
}

#[test]
fn a_transmit_bucket_spaces_the_guests_frames_out() {
    let ns = NetNs::new("kiln-rl-tx");
    let dir = ScratchDir::new("kiln-rl-tx");
    let cfg = net_config(
        &dir,
        &ns,
        "kiln.test=net-tx kiln.count=4 kiln.wait=10",
        &format!(", \"tx_rate_limiter\": {ONE_PER_100MS}"),
    );
    let tap = std::fs::read_to_string(dir.join("tap")).unwrap();
    let sock = ns.packet_socket(&tap);
    let metrics = dir.join("metrics.json");
    let vm = start(&cfg, &metrics, None, Some(&ns));
    let mut arrivals = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while arrivals.len() < 4 && Instant::now() < deadline {
        if sock
            .recv_matching(Duration::from_secs(1), |f| {
                f.len() >= 14 && f[12..14] == ETHERTYPE && f[6..12] == GUEST_MAC
            })
            .is_some()
        {
            arrivals.push(Instant::now());
        }
    }
    let f = vm.finish(TIMEOUT);
    tiny::assert_clean_run(&f);
    assert_eq!(arrivals.len(), 4, "frames on the tap\n{f}");
    let spread = arrivals[3] - arrivals[0];
    assert!(
        spread >= Duration::from_millis(250),
        "4 frames at 1 per 100 ms arrived within {spread:?}\n{f}"
    );
    let m = Metrics::read(&metrics);
    assert_eq!(m.get("net.tx_packets_count"), 4);
    assert!(m.get("net.tx_rate_limiter_throttled") >= 3, "{f}");
    assert!(m.get("net.tx_rate_limiter_event_count") >= 3, "{f}");
}

#[test]
fn a_receive_bucket_spaces_frames_to_the_guest_out() {
    let ns = NetNs::new("kiln-rl-rx");
    let dir = ScratchDir::new("kiln-rl-rx");
    let cfg = net_config(
        &dir,
        &ns,
        "kiln.test=net-rx kiln.count=4",
        &format!(", \"rx_rate_limiter\": {ONE_PER_100MS}"),
    );
    let tap = std::fs::read_to_string(dir.join("tap")).unwrap();
    let sock = ns.packet_socket(&tap);
    let metrics = dir.join("metrics.json");
    let mut vm = start(&cfg, &metrics, None, Some(&ns));
    assert!(vm.wait_line("net rx ready", TIMEOUT), "{}", vm.seen());
    let mut frame = GUEST_MAC.to_vec();
    frame.extend_from_slice(&HOST_MAC);
    frame.extend_from_slice(&ETHERTYPE);
    frame.extend_from_slice(&[0x5a; 100]);
    // The guest may not watch the tap yet: the frames wait in the tap's queue.
    for _ in 0..4 {
        assert_eq!(sock.send(&frame).expect("send on the tap"), frame.len());
    }
    let (seen, out, all) = times_of(vm, "net rx len=", "KILN-TINY: done");
    assert_eq!(seen.len(), 4, "{all}");
    assert_eq!(
        out.topic("net rx")
            .iter()
            .filter(|f| field(f, "len") == Some("114"))
            .count(),
        4,
        "{all}"
    );
    let spread = seen[3] - seen[0];
    assert!(
        spread >= Duration::from_millis(250),
        "4 frames at 1 per 100 ms reached the guest within {spread:?}\n{all}"
    );
    let m = Metrics::read(&metrics);
    assert_eq!(m.get("net.rx_packets_count"), 4, "{all}");
    assert!(m.get("net.rx_rate_limiter_throttled") >= 3, "{all}");
    assert!(m.get("net.rx_event_rate_limiter_count") >= 3, "{all}");
}

#[test]
fn patch_changes_a_running_interfaces_limiters() {
    let ns = NetNs::new("kiln-rl-np");
    let dir = ScratchDir::short("kiln-rl-np");
    // One frame, then nothing for a minute.
    let cfg = net_config(
        &dir,
        &ns,
        "kiln.test=net-tx kiln.count=3 kiln.wait=30",
        r#", "tx_rate_limiter": {"ops": {"size": 1, "refill_time": 60000}}"#,
    );
    let metrics = dir.join("metrics.json");
    let sock = dir.join("api.sock");
    let mut vm = start(&cfg, &metrics, Some(&sock), Some(&ns));
    assert!(
        wait_containing(&mut vm, "net tx len=", TIMEOUT),
        "{}",
        vm.seen()
    );
    assert!(
        vm.next_line(Duration::from_millis(500)).is_none(),
        "the second frame was not held back\n{}",
        vm.seen()
    );
    let unknown = api::request(
        &sock,
        "PATCH",
        "/network-interfaces/eth1",
        r#"{"iface_id": "eth1", "tx_rate_limiter": {"ops": {"size": 0, "refill_time": 0}}}"#,
    );
    assert_eq!(unknown.0, 400, "{unknown:?}");
    assert!(
        unknown.1.contains("no interface with iface_id"),
        "{unknown:?}"
    );
    // The receive side only: the transmit limit stays, and so does the waiting frame.
    let rx = r#"{"iface_id": "eth0", "rx_rate_limiter": {"bandwidth": {"size": 100000, "refill_time": 100}}}"#;
    assert_eq!(
        api::request(&sock, "PATCH", "/network-interfaces/eth0", rx).0,
        204
    );
    assert!(
        vm.next_line(Duration::from_millis(500)).is_none(),
        "the frame went out though the transmit limit was kept\n{}",
        vm.seen()
    );
    let (code, cfg) = api::request(&sock, "GET", "/vm/config", "");
    assert_eq!(code, 200);
    let cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    let iface = &cfg["network-interfaces"][0];
    assert_eq!(
        iface["tx_rate_limiter"]["ops"]["refill_time"], 60000,
        "{iface}"
    );
    assert_eq!(
        iface["rx_rate_limiter"]["bandwidth"]["size"], 100000,
        "{iface}"
    );
    // A bigger transmit bucket: the waiting frame and the last one go at once.
    let tx =
        r#"{"iface_id": "eth0", "tx_rate_limiter": {"ops": {"size": 100, "refill_time": 10}}}"#;
    assert_eq!(
        api::request(&sock, "PATCH", "/network-interfaces/eth0", tx).0,
        204
    );
    let (seen, _, all) = times_of(vm, "net tx len=", "KILN-TINY: done");
    assert_eq!(seen.len(), 2, "the two held-back frames went out\n{all}");
}

#[test]
fn invalid_limiters_are_refused_with_their_field() {
    let dir = ScratchDir::new("kiln-rl-bad");
    let extra = drive(
        &dir,
        r#"{"ops": {"size": 1, "refill_time": 18446744073709551615}}"#,
    );
    let cfg = config(&dir, "kiln.test=print", &extra);
    let f = kiln_tests::run_with_timeout(
        Command::new(require_bin("vmm"))
            .arg("--config-file")
            .arg(&cfg)
            .arg("--no-api"),
        TIMEOUT,
    );
    assert_eq!(f.code(), 152, "{f}");
    assert!(
        f.stderr
            .contains("drives.rate_limiter.ops: refill_time 18446744073709551615 ms is too long"),
        "{f}"
    );
    let extra = drive(
        &dir,
        r#"{"ops": {"size": 1, "refill_time": 5, "burst": 1}}"#,
    );
    let cfg = config(&dir, "kiln.test=print", &extra);
    let f = kiln_tests::run_with_timeout(
        Command::new(require_bin("vmm"))
            .arg("--config-file")
            .arg(&cfg)
            .arg("--no-api"),
        TIMEOUT,
    );
    assert_eq!(f.code(), 152, "{f}");
    assert!(f.stderr.contains("unknown field `burst`"), "{f}");
}
