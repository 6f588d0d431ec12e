//! MMDS, the microVM metadata service: the data store through Firecracker's API
//! (`PUT`/`PATCH`/`GET /mmds`, `PUT /mmds/config`), `--metadata` and `--mmds-size-limit`,
//! with Firecracker's statuses; the tiny guest reading it over virtio-net (`mmds`: ARP,
//! TCP, HTTP, V1 and V2) and attacking it (`mmds-hostile`); snapshots keeping the config.
//!
//! Needs root, /dev/kvm, iproute2 and the `vmm` binary.

mod api_common;
mod snapshot_common;

use api_common::Vmm;
use kiln_tests::metrics::Metrics;
use kiln_tests::netns::{tap_name, NetNs};
use kiln_tests::{require_bin, require_kvm, run_with_timeout, ScratchDir};
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

fn get_json(vmm: &Vmm, path: &str) -> Value {
    vmm.get(path)
}

/// The store as Firecracker's API has it: `{}` before anything is put, `PATCH` refused
/// until a `PUT`, merge-patch semantics, the size limit answered 413 (Payload Too Large)
/// leaving the document as it was, bad JSON 400.
#[test]
fn the_data_store_follows_firecracker_api() {
    let vmm = Vmm::start(&["--mmds-size-limit", "100"]);
    assert_eq!(get_json(&vmm, "/mmds"), json!({}));
    vmm.refuses(
        "PATCH",
        "/mmds",
        Some(r#"{"a": 1}"#),
        400,
        "PUT /mmds a document before patching it",
    );
    vmm.ok(
        "PUT",
        "/mmds",
        r#"{"latest": {"meta-data": {"ami-id": "ami-1", "reservation-id": "r-1"}}}"#,
    );
    vmm.ok(
        "PATCH",
        "/mmds",
        r#"{"latest": {"meta-data": {"reservation-id": null, "hostname": "h"}}, "user-data": "u"}"#,
    );
    let want =
        json!({"latest": {"meta-data": {"ami-id": "ami-1", "hostname": "h"}}, "user-data": "u"});
    assert_eq!(get_json(&vmm, "/mmds"), want);
    let big = format!(r#"{{"k": "{}"}}"#, "x".repeat(100));
    vmm.refuses(
        "PUT",
        "/mmds",
        Some(&big),
        413,
        "limited to 100 bytes and the new document would take 108 bytes",
    );
    vmm.refuses("PATCH", "/mmds", Some(&big), 413, "limited to 100 bytes");
    vmm.refuses("PUT", "/mmds", Some("{not json"), 400, "invalid JSON");
    vmm.refuses("PATCH", "/mmds", Some("[1,"), 400, "invalid JSON");
    assert_eq!(get_json(&vmm, "/mmds"), want);
    // Any JSON value is a document, as in Firecracker.
    vmm.ok("PUT", "/mmds", r#""just a string""#);
    assert_eq!(get_json(&vmm, "/mmds"), json!("just a string"));
    vmm.refuses(
        "GET",
        "/mmds/config",
        None,
        400,
        "method GET is not allowed on /mmds/config (allowed: PUT)",
    );
    vmm.refuses("PUT", "/mmds/latest", Some("{}"), 400, "no such path");
}

/// `--metadata FILE` fills the store at start; a file that is not JSON, or a document over
/// `--mmds-size-limit`, stops the VMM before it serves (exit code 152, the file named).
#[test]
fn metadata_flag_fills_the_store() {
    let dir = ScratchDir::new("kiln-mmds-metadata");
    let doc = json!({"latest": {"meta-data": {"instance-id": "i-123"}}, "list": [1, 2]});
    let file = dir.write("md.json", serde_json::to_string_pretty(&doc).unwrap());
    let vmm = Vmm::start(&["--metadata", file.to_str().unwrap()]);
    assert_eq!(get_json(&vmm, "/mmds"), doc);
    drop(vmm);
    let bad = dir.write("bad.json", "{\"a\": ");
    let run = |extra: &[&str]| {
        run_with_timeout(
            Command::new(require_bin("vmm"))
                .args(["--api-sock"])
                .arg(dir.join("never.sock"))
                .args(extra),
            TIMEOUT,
        )
    };
    let out = run(&["--metadata", bad.to_str().unwrap()]);
    assert_eq!(out.code(), 152, "{out}");
    assert!(
        out.stderr.contains("--metadata") && out.stderr.contains("invalid JSON"),
        "{out}"
    );
    let out = run(&[
        "--metadata",
        file.to_str().unwrap(),
        "--mmds-size-limit",
        "10",
    ]);
    assert_eq!(out.code(), 152, "{out}");
    assert!(out.stderr.contains("limited to 10 bytes"), "{out}");
    let out = run(&["--metadata", "/nonexistent-kiln/md.json"]);
    assert_eq!(out.code(), 152, "{out}");
    assert!(out.stderr.contains("cannot read --metadata"), "{out}");
    let out = run(&["--mmds-size-limit", "0"]);
    assert_eq!(out.code(), 153, "{out}");
}

/// `PUT /mmds/config`: Firecracker's fields and defaults; the interfaces must be configured;
/// the address link-local; only before `InstanceStart`; `GET /vm/config` shows it with the
/// address in use.
#[test]
fn mmds_config_names_configured_interfaces() {
    require_kvm();
    let ns = NetNs::new("kiln-mmds-cfg");
    let tap = tap_name("m");
    ns.add_tap(&tap, None);
    let vmm = Vmm::start_command(ns.command(require_bin("vmm")), &[]);
    vmm.refuses(
        "PUT",
        "/mmds/config",
        Some(r#"{"network_interfaces": ["eth0"]}"#),
        400,
        "mmds-config: network interface \"eth0\" is not configured",
    );
    vmm.ok(
        "PUT",
        "/network-interfaces/eth0",
        &format!(r#"{{"iface_id": "eth0", "host_dev_name": "{tap}"}}"#),
    );
    for (body, words) in [
        (
            r#"{"network_interfaces": []}"#,
            "network_interfaces is empty",
        ),
        (
            r#"{"network_interfaces": ["eth0"], "ipv4_address": "192.168.0.1"}"#,
            "ipv4_address 192.168.0.1 is not a usable link-local address",
        ),
        (
            r#"{"network_interfaces": ["eth0"], "version": "V9"}"#,
            "unknown variant `V9`",
        ),
        (r#"{"version": "V2"}"#, "missing field `network_interfaces`"),
        (
            r#"{"network_interfaces": ["eth0"], "ttl": 5}"#,
            "unknown field `ttl`",
        ),
    ] {
        vmm.refuses("PUT", "/mmds/config", Some(body), 400, words);
    }
    vmm.ok("PUT", "/mmds/config", r#"{"network_interfaces": ["eth0"]}"#);
    assert_eq!(
        get_json(&vmm, "/vm/config")["mmds-config"],
        json!({"version": "V1", "network_interfaces": ["eth0"],
               "ipv4_address": "169.254.169.254", "imds_compat": false})
    );
    vmm.ok(
        "PUT",
        "/mmds/config",
        r#"{"version": "V2", "network_interfaces": ["eth0"], "ipv4_address": "169.254.170.2", "imds_compat": true}"#,
    );
    assert_eq!(
        get_json(&vmm, "/vm/config")["mmds-config"],
        json!({"version": "V2", "network_interfaces": ["eth0"],
               "ipv4_address": "169.254.170.2", "imds_compat": true})
    );
    vmm.ok("PUT", "/mmds", r#"{"k": "v"}"#);
    vmm.boot_tiny_guest("kiln.test=halt");
    vmm.action("InstanceStart");
    vmm.refuses(
        "PUT",
        "/mmds/config",
        Some(r#"{"network_interfaces": ["eth0"]}"#),
        400,
        "only possible before InstanceStart",
    );
    // The document stays readable and writable while the microVM runs.
    vmm.ok("PATCH", "/mmds", r#"{"k2": "v2"}"#);
    assert_eq!(get_json(&vmm, "/mmds"), json!({"k": "v", "k2": "v2"}));
}

const GUEST_MAC: &str = "06:00:ac:10:00:02";

/// Frames on the tap for the MMDS address (ARP for it, IPv4 to it): none must get there.
fn for_mmds(f: &[u8]) -> bool {
    let mmds = [169, 254, 169, 254];
    match f.get(12..14) {
        Some([0x08, 0x06]) => f.get(38..42) == Some(&mmds[..]),
        Some([0x08, 0x00]) => f.get(30..34) == Some(&mmds[..]),
        _ => false,
    }
}

/// Boots the tiny guest's `mmds` scenario (`kiln.mmds=<version>`) on an interface with
/// MMDS `config`, the document `doc` put through the API; returns the guest's serial output
/// once it is done. Nothing for the MMDS address reaches the tap.
fn guest_reads_mmds(version: u32, config: &str, doc: &str) -> String {
    require_kvm();
    let ns = NetNs::new("kiln-mmds-guest");
    let tap = tap_name("g");
    ns.add_tap(&tap, None);
    let sock = ns.packet_socket(&tap);
    let vmm = Vmm::start_command(ns.command(require_bin("vmm")), &[]);
    vmm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
    );
    vmm.boot_tiny_guest(&format!("kiln.test=mmds kiln.mmds={version}"));
    vmm.ok(
        "PUT",
        "/network-interfaces/eth0",
        &format!(r#"{{"iface_id": "eth0", "host_dev_name": "{tap}", "guest_mac": "{GUEST_MAC}"}}"#),
    );
    vmm.ok("PUT", "/mmds/config", config);
    vmm.ok("PUT", "/mmds", doc);
    vmm.action("InstanceStart");
    vmm.wait_serial("the guest's MMDS scenario", "KILN-TINY: done");
    let out = vmm.serial();
    assert!(!out.contains("KILN-TINY: error"), "{out}");
    assert!(out.contains("KILN-TINY: mmds tcp connected"), "{out}");
    assert!(out.contains("KILN-TINY: mmds closed"), "{out}");
    assert!(
        sock.recv_matching(Duration::from_millis(300), for_mmds)
            .is_none(),
        "a frame for MMDS reached the tap"
    );
    // The guest ends the VM after its scenario: the VMM exits cleanly.
    let mut vmm = vmm;
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(status) = vmm.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            t.elapsed() < TIMEOUT,
            "the VMM did not exit\n{}",
            vmm.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status}\n{}", vmm.stderr());
    out
}

const DOC: &str = r#"{"latest": {"meta-data": {"ami-id": "ami-12345", "reservation-id": "r-1"}}}"#;

/// V1: the guest ARPs for 169.254.169.254, connects, reads a value as text and a
/// directory as JSON, and closes.
#[test]
fn guest_reads_metadata_v1() {
    let out = guest_reads_mmds(1, r#"{"network_interfaces": ["eth0"]}"#, DOC);
    assert!(out.contains("KILN-TINY: mmds arp mac="), "{out}");
    assert!(
        out.contains("KILN-TINY: mmds http text status=200 body=ami-12345\n"),
        "{out}"
    );
    assert!(
        out.contains(
            r#"KILN-TINY: mmds http json status=200 body={"ami-id":"ami-12345","reservation-id":"r-1"}"#
        ),
        "{out}"
    );
}

/// V2: a session token from `PUT /latest/api/token` opens the GET; without it, 401. With
/// `imds_compat`, the JSON request gets text too.
#[test]
fn guest_reads_metadata_v2_with_a_token() {
    let out = guest_reads_mmds(
        2,
        r#"{"network_interfaces": ["eth0"], "version": "V2", "imds_compat": true}"#,
        DOC,
    );
    let token_line = out
        .lines()
        .find(|l| l.starts_with("KILN-TINY: mmds http token status=200 body="))
        .unwrap_or_else(|| panic!("no token\n{out}"));
    assert_eq!(
        token_line.rsplit('=').next().unwrap().len(),
        48,
        "{token_line}"
    );
    assert!(
        out.contains("KILN-TINY: mmds http with-token status=200 body=ami-12345\n"),
        "{out}"
    );
    assert!(
        out.contains("KILN-TINY: mmds http no-token status=401"),
        "{out}"
    );
}

/// A hostile guest: malformed frames (checksums, lengths, options, flags, fragments, ARP)
/// are dropped unanswered, a SYN flood keeps at most 30 connections (the oldest reset), a
/// request that never ends is refused with 400 and closed; MMDS still serves the next
/// proper request and the VMM exits cleanly.
#[test]
fn hostile_guest_gets_bounded_answers() {
    require_kvm();
    let ns = NetNs::new("kiln-mmds-hostile");
    let tap = tap_name("h");
    ns.add_tap(&tap, None);
    let vmm = Vmm::start_command(ns.command(require_bin("vmm")), &[]);
    let metrics = vmm.dir.join("metrics.json");
    vmm.ok(
        "PUT",
        "/metrics",
        &format!(r#"{{"metrics_path": "{}"}}"#, metrics.display()),
    );
    vmm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
    );
    vmm.boot_tiny_guest("kiln.test=mmds-hostile");
    vmm.ok(
        "PUT",
        "/network-interfaces/eth0",
        &format!(r#"{{"iface_id": "eth0", "host_dev_name": "{tap}", "guest_mac": "{GUEST_MAC}"}}"#),
    );
    vmm.ok("PUT", "/mmds/config", r#"{"network_interfaces": ["eth0"]}"#);
    vmm.ok("PUT", "/mmds", DOC);
    vmm.action("InstanceStart");
    vmm.wait_for("the hostile scenario", Duration::from_secs(60), |v| {
        v.serial().contains("KILN-TINY: done")
    });
    let out = vmm.serial();
    assert!(!out.contains("KILN-TINY: error"), "{out}");
    assert!(
        out.contains("KILN-TINY: mmds-hostile malformed sent=8 replies=0"),
        "{out}"
    );
    assert!(
        out.contains("KILN-TINY: mmds-hostile flood synacks=40 resets=10"),
        "{out}"
    );
    assert!(
        out.contains("KILN-TINY: mmds-hostile huge status=400 fin=1"),
        "{out}"
    );
    assert!(
        out.contains("KILN-TINY: mmds http text status=200 body=ami-12345"),
        "{out}"
    );
    let mut vmm = vmm;
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(status) = vmm.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            t.elapsed() < TIMEOUT,
            "the VMM did not exit\n{}",
            vmm.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status}\n{}", vmm.stderr());
    let m = Metrics::read(&metrics);
    assert!(m.sum("mmds.rx_accepted_err") >= 8, "{m:?}");
    assert!(m.sum("mmds.rx_accepted") >= 60, "{m:?}");
    assert!(m.sum("mmds.connections_created") >= 42, "{m:?}");
    assert!(m.sum("mmds.tx_frames") > 0, "{m:?}");
}

/// Snapshots keep `mmds-config` but not the data store (as in Firecracker): the restored
/// VMM shows the same configuration and an empty document, which the orchestrator fills
/// again. (That session tokens die with the VMM that made them is `mmds::token`'s unit
/// test: the restored VMM's token key is a new one.)
#[test]
fn snapshots_keep_the_config_not_the_data() {
    require_kvm();
    let ns = NetNs::new("kiln-mmds-snap");
    let tap = tap_name("s");
    ns.add_tap(&tap, None);
    let a = Vmm::start_command(ns.command(require_bin("vmm")), &[]);
    a.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
    );
    a.boot_tiny_guest("kiln.test=halt");
    a.ok(
        "PUT",
        "/network-interfaces/eth0",
        &format!(r#"{{"iface_id": "eth0", "host_dev_name": "{tap}", "guest_mac": "{GUEST_MAC}"}}"#),
    );
    a.ok(
        "PUT",
        "/mmds/config",
        r#"{"network_interfaces": ["eth0"], "version": "V2", "ipv4_address": "169.254.170.2"}"#,
    );
    a.ok("PUT", "/mmds", DOC);
    a.action("InstanceStart");
    a.set_state("Paused");
    let files = ScratchDir::new("kiln-mmds-snap");
    let state = files.join("vm.snap");
    let mem = files.join("vm.mem");
    a.ok(
        "PUT",
        "/snapshot/create",
        &snapshot_common::create_body("Full", &state, &mem),
    );
    let config = get_json(&a, "/vm/config")["mmds-config"].clone();
    assert_eq!(config["version"], "V2", "{config}");
    drop(a);
    let b = Vmm::start_command(ns.command(require_bin("vmm")), &[]);
    b.ok(
        "PUT",
        "/snapshot/load",
        &snapshot_common::load_body(&state, "File", &mem, r#""resume_vm": true"#),
    );
    assert_eq!(get_json(&b, "/vm/config")["mmds-config"], config);
    assert_eq!(get_json(&b, "/mmds"), json!({}));
    b.ok("PUT", "/mmds", DOC);
    assert_eq!(
        get_json(&b, "/mmds"),
        serde_json::from_str::<Value>(DOC).unwrap()
    );
    assert_eq!(b.state(), "Running");
}
