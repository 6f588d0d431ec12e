//! Kiln driven as a Firecracker client drives Firecracker (1.17), with the tiny test guest
//! as kernel: every flag of `firecracker --help`, Firecracker's published getting-started
//! sequence (with its network interface, in a namespace of the test's own), each shape of
//! Firecracker's sample config files (written here from its API spec: explicit `null`s,
//! empty lists, every section), its API bodies with every field of the spec, and the
//! statuses and messages of its errors. What Kiln does not have yet is refused naming the
//! feature, never as an unknown flag or field.
//!
//! Needs root, /dev/kvm, iproute2 and the `vmm` binary.

mod api_common;

use api_common::{read_response, scratch_file, Vmm};
use kiln_tests::netns::NetNs;
use kiln_tests::process::Followed;
use kiln_tests::tiny::{self, TinyOutput};
use kiln_tests::{api, require_bin, require_kvm, run_with_timeout, Finished, ScratchDir};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Every flag of `firecracker --help` (v1.17), as its help lists them.
const FIRECRACKER_FLAGS: &[&str] = &[
    "--api-sock",
    "--boot-timer",
    "--config-file",
    "--describe-snapshot",
    "--enable-pci",
    "--help",
    "--http-api-max-payload-size",
    "--id",
    "--level",
    "--log-path",
    "--metadata",
    "--metrics-path",
    "--mmds-size-limit",
    "--module",
    "--no-api",
    "--no-seccomp",
    "--parent-cpu-time-us",
    "--seccomp-filter",
    "--show-level",
    "--show-log-origin",
    "--snapshot-version",
    "--start-time-cpu-us",
    "--start-time-us",
    "--version",
];

fn vmm(args: &[&str]) -> Finished {
    run_with_timeout(Command::new(require_bin("vmm")).args(args), TIMEOUT)
}

fn tiny_kernel() -> String {
    tiny::tiny_guest().display().to_string()
}

/// A sample-shaped config file booting the tiny guest (its default scenario prints, says
/// `done` and resets: the VMM exits 0).
fn boot_config(dir: &ScratchDir, name: &str, text: &str) -> std::path::PathBuf {
    dir.write(name, text)
}

#[test]
fn help_lists_every_firecracker_flag() {
    let out = vmm(&["--help"]);
    assert_eq!(out.code(), 0, "{out}");
    for flag in FIRECRACKER_FLAGS {
        assert!(out.stdout.contains(flag), "--help lacks {flag}\n{out}");
    }
}

/// `--enable-pci` (a switch, as in Firecracker) boots the guest with its devices on PCI
/// (`pci.rs` has the guest's view of them); given a value, it is refused naming the flag.
#[test]
fn enable_pci_boots_the_guest_with_its_devices_on_pci() {
    require_kvm();
    let dir = ScratchDir::new("kiln-fc-pci");
    let cfg = boot_config(
        &dir,
        "vm.json",
        &format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "kiln.test=pci-scan"}},
 "machine-config": {{"vcpu_count": 1, "mem_size_mib": 32}},
 "entropy": {{}}}}"#,
            tiny_kernel()
        ),
    );
    let out = vmm(&[
        "--enable-pci",
        "--no-api",
        "--config-file",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(out.code(), 0, "{out}");
    let guest = TinyOutput::parse(&out.stdout);
    assert!(guest.done && guest.errors().is_empty(), "{out}");
    assert_eq!(guest.value("pci devices n"), Some("1"), "{out}");
    let out = vmm(&["--enable-pci=true"]);
    assert_ne!(out.code(), 0, "{out}");
    assert!(out.stderr.contains("--enable-pci"), "{out}");
}

/// `--version` answers as Firecracker's binaries do on their first line (`Firecracker
/// vX.Y.Z`, `Jailer vX.Y.Z`: launchers parse it to decide what they may use), naming the
/// Firecracker release Kiln implements, then Kiln's own version.
#[test]
fn version_flags_name_the_firecracker_release_first() {
    let out = vmm(&["--version"]);
    assert_eq!(out.code(), 0, "{out}");
    assert!(
        out.stdout.starts_with("Firecracker v1.17.0 (Kiln vmm "),
        "{out}"
    );
    let out = run_with_timeout(
        Command::new(require_bin("jailer")).arg("--version"),
        TIMEOUT,
    );
    assert_eq!(out.code(), 0, "{out}");
    assert!(
        out.stdout.starts_with("Jailer v1.17.0 (Kiln jailer "),
        "{out}"
    );
}

/// Firecracker's snapshot flags answer as Firecracker's do: the format version this VMM
/// writes, the version of a state file, and exit code 0 (1 with the reason for a file that
/// is not a state file). The snapshot suites (`snapshot.rs`) describe a real one.
#[test]
fn snapshot_flags_print_versions() {
    let out = vmm(&["--snapshot-version"]);
    assert_eq!(out.code(), 0, "{out}");
    assert!(
        out.stdout.starts_with('v') && out.stdout.trim_end().split('.').count() == 3,
        "{out}"
    );
    let dir = ScratchDir::new("kiln-fc-describe");
    let junk = dir.write("vm.snap", "not a snapshot, just text. ".repeat(10));
    let out = vmm(&["--describe-snapshot", junk.to_str().unwrap()]);
    assert_eq!(out.code(), 1, "{out}");
    assert!(out.stderr.contains("not a Kiln snapshot"), "{out}");
    let out = vmm(&["--describe-snapshot=/nonexistent/vm.snap"]);
    assert_eq!(out.code(), 1, "{out}");
    assert!(out.stderr.contains("/nonexistent/vm.snap"), "{out}");
}

/// One boot from a config file with every other Firecracker flag given (in both the
/// `--flag value` and `--flag=value` forms), each with Firecracker's meaning.
#[test]
fn every_other_firecracker_flag_is_accepted_with_its_meaning() {
    require_kvm();
    let dir = ScratchDir::new("kiln-fc-flags");
    let cfg = boot_config(
        &dir,
        "vm.json",
        &format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}}}}"#,
            tiny_kernel()
        ),
    );
    let log = dir.join("vmm.log");
    let metrics = dir.join("metrics.json");
    let cfg_s = cfg.display().to_string();
    let log_s = log.display().to_string();
    let metrics_s = format!("--metrics-path={}", metrics.display());
    let ignored_sock = dir.join("ignored.sock").display().to_string();
    let out = vmm(&[
        "--no-api",
        "--api-sock",
        &ignored_sock,
        "--config-file",
        &cfg_s,
        "--id=fc-flags",
        "--log-path",
        &log_s,
        "--level",
        "Info",
        "--show-level",
        "--show-log-origin",
        "--module",
        "vmm::",
        &metrics_s,
        "--boot-timer",
        "--start-time-us",
        "1",
        "--start-time-cpu-us",
        "1",
        "--parent-cpu-time-us=1",
        "--http-api-max-payload-size",
        "51200",
        "--no-seccomp",
    ]);
    let guest = tiny::assert_clean_run(&out);
    assert!(guest.entry.is_some(), "{out}");
    // --boot-timer: the start-up phases on stderr.
    assert!(out.stderr.contains("first guest serial byte"), "{out}");
    // --no-api: no socket, even with --api-sock.
    assert!(!Path::new(&ignored_sock).exists());
    // --id, --level, --show-level, --show-log-origin: Firecracker's line prefix.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(" [fc-flags:main:INFO:vmm/src/"), "{text}");
    assert!(!text.contains(":DEBUG:"), "{text}");
    // --metrics-path: the exit line.
    let lines = std::fs::read_to_string(&metrics).unwrap();
    assert!(lines.lines().count() >= 1, "{lines}");
    // --seccomp-filter: a bad filter file is a configuration error naming it.
    let out = vmm(&[
        "--no-api",
        "--config-file",
        &cfg_s,
        "--seccomp-filter",
        "/nonexistent/filters.bpf",
    ]);
    assert_eq!(out.code(), 152, "{out}");
    assert!(out.stderr.contains("/nonexistent/filters.bpf"), "{out}");
}

/// `--module` keeps only the lines of the named module path.
#[test]
fn logger_flags_filter_by_module() {
    let dir = ScratchDir::new("kiln-fc-module");
    let log = dir.join("vmm.log");
    std::fs::write(&log, "").unwrap();
    let log_s = log.display().to_string();
    let vmm = Vmm::start(&["--log-path", &log_s, "--show-level", "--module", "vmm::api"]);
    vmm.get("/");
    vmm.wait_for("the API's log line", TIMEOUT, |_| {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("API: GET /")
    });
    let text = std::fs::read_to_string(&log).unwrap();
    // `boot-time: api_ready` comes from vmm::timing: filtered out.
    assert!(!text.contains("boot-time"), "{text}");
    assert!(
        text.lines()
            .all(|l| l.contains(":INFO]") || l.contains(":WARN]")),
        "{text}"
    );
}

/// Without `--api-sock`, the API is at Firecracker's path.
#[test]
fn the_default_api_socket_is_firecrackers() {
    let sock = Path::new("/run/firecracker.socket");
    assert!(
        !sock.exists(),
        "MISSING PRECONDITION: {} exists (a Firecracker or Kiln VMM running without --api-sock?); \
         this test binds it",
        sock.display()
    );
    let mut child = kiln_tests::KillOnDrop::new(kiln_tests::process::spawn(
        Command::new(require_bin("vmm")).stdin(std::process::Stdio::null()),
    ));
    wait_for_api(sock, || child.try_wait().unwrap().is_none());
    let (status, body) = api::request(sock, "GET", "/", "");
    drop(child);
    let _ = std::fs::remove_file(sock);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["state"],
        "Not started"
    );
}

/// The shapes of Firecracker's sample config files (its tests/framework/vm_config*.json),
/// written from its API spec, and one with every small device of the spec: each boots (the
/// MMDS ones with their `mmds-config` on the sample's interface).
#[test]
fn firecracker_sample_config_shapes_boot() {
    require_kvm();
    let dir = ScratchDir::new("kiln-fc-samples");
    let k = tiny_kernel();
    let rootfs = scratch_file(&dir, "rootfs.ext4");
    let boot = format!(
        r#""boot-source": {{"kernel_image_path": "{k}", "boot_args": "console=ttyS0 reboot=k panic=1", "initrd_path": null}}"#
    );
    let full_drive = format!(
        r#"{{"drive_id": "rootfs", "partuuid": null, "is_root_device": true, "cache_type": "Unsafe",
            "is_read_only": false, "path_on_host": "{rootfs}", "io_engine": "Sync",
            "rate_limiter": null, "socket": null}}"#
    );
    let short_drive = format!(
        r#"{{"drive_id": "rootfs", "path_on_host": "{rootfs}", "is_root_device": true, "is_read_only": false}}"#
    );
    let limited_drive = format!(
        r#"{{"drive_id": "rootfs", "path_on_host": "{rootfs}", "is_root_device": true,
            "rate_limiter": {{"bandwidth": {{"size": 10485760, "one_time_burst": 1048576, "refill_time": 1000}},
                             "ops": {{"size": 1000, "refill_time": 1000}}}}}}"#
    );
    let net = r#"[{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:c0:a8:00:02",
                   "rx_rate_limiter": null, "tx_rate_limiter": null}]"#;
    let nulls = r#""cpu-config": null, "balloon": null, "vsock": null, "logger": null,
                   "metrics": null, "mmds-config": null, "entropy": null"#;
    // (name, needs a tap, text, the refusal expected, if any)
    let samples: Vec<(&str, bool, String, Option<&str>)> = vec![
        (
            "every section, null or empty",
            false,
            format!(
                r#"{{{boot}, "drives": [{full_drive}],
                "machine-config": {{"vcpu_count": 2, "mem_size_mib": 1024, "smt": false,
                                    "track_dirty_pages": false, "huge_pages": "None"}},
                "network-interfaces": [], {nulls}, "pmem": [], "memory-hotplug": null}}"#
            ),
            None,
        ),
        (
            "cpu template C3",
            false,
            format!(
                r#"{{{boot}, "drives": [{short_drive}],
                "machine-config": {{"vcpu_count": 2, "mem_size_mib": 1024, "cpu_template": "C3"}}}}"#
            ),
            None,
        ),
        (
            "smt",
            false,
            format!(
                r#"{{{boot}, "drives": [{short_drive}],
                "machine-config": {{"vcpu_count": 2, "mem_size_mib": 1024, "smt": true}}}}"#
            ),
            None,
        ),
        (
            "network",
            true,
            format!(
                r#"{{{boot}, "drives": [{full_drive}],
                "machine-config": {{"vcpu_count": 2, "mem_size_mib": 1024, "smt": false,
                                    "track_dirty_pages": false}},
                "network-interfaces": {net}, {nulls}}}"#
            ),
            None,
        ),
        (
            "rate limiters, MTU, entropy and a custom CPU template",
            true,
            format!(
                r#"{{{boot}, "drives": [{limited_drive}],
                "machine-config": {{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": null}},
                "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 1500,
                    "rx_rate_limiter": {{"bandwidth": {{"size": 1048576, "one_time_burst": null, "refill_time": 1000}}, "ops": null}},
                    "tx_rate_limiter": {{"ops": {{"size": 1000, "refill_time": 1000}}}}}}],
                "entropy": {{"rate_limiter": {{"bandwidth": {{"size": 4096, "refill_time": 100}}}}}},
                "cpu-config": {{"kvm_capabilities": [], "cpuid_modifiers": [], "msr_modifiers": []}},
                "balloon": null, "mmds-config": null, "pmem": [], "memory-hotplug": null}}"#
            ),
            None,
        ),
        (
            "MMDS v1",
            true,
            format!(
                r#"{{{boot}, "drives": [{full_drive}],
                "machine-config": {{"vcpu_count": 2, "mem_size_mib": 1024, "track_dirty_pages": false}},
                "balloon": null, "network-interfaces": {net}, "vsock": null, "logger": null,
                "metrics": null, "mmds-config": {{"network_interfaces": ["eth0"]}}, "entropy": null}}"#
            ),
            None,
        ),
        (
            "MMDS v2",
            true,
            format!(
                r#"{{{boot}, "drives": [{full_drive}],
                "machine-config": {{"vcpu_count": 2, "mem_size_mib": 1024, "smt": false}},
                "network-interfaces": {net}, "mmds-config": {{"network_interfaces": ["eth0"],
                "ipv4_address": "169.254.169.250", "version": "V2", "imds_compat": true}}}}"#
            ),
            None,
        ),
    ];
    for (i, (name, tap, text, refusal)) in samples.iter().enumerate() {
        let cfg = boot_config(&dir, &format!("sample{i}.json"), text);
        let ns = tap.then(|| {
            let ns = NetNs::new("kiln-fc-sample");
            ns.add_tap("tap0", None);
            ns
        });
        let mut cmd = match &ns {
            Some(ns) => ns.command(require_bin("vmm")),
            None => Command::new(require_bin("vmm")),
        };
        let out = run_with_timeout(cmd.arg("--config-file").arg(&cfg).arg("--no-api"), TIMEOUT);
        match refusal {
            None => {
                let guest = tiny::assert_clean_run(&out);
                assert!(guest.entry.is_some(), "{name}\n{out}");
            }
            Some(words) => {
                assert_eq!(out.code(), 152, "{name}\n{out}");
                assert!(out.stderr.contains(words), "{name}\n{out}");
            }
        }
    }
    // The two invalid samples stay refused, naming the missing field.
    for (field, mc) in [
        (
            "mem_size_mib",
            r#"{"vcpu_count": 2, "smt": false, "track_dirty_pages": false}"#,
        ),
        (
            "vcpu_count",
            r#"{"mem_size_mib": 1024, "smt": false, "track_dirty_pages": false}"#,
        ),
    ] {
        let cfg = boot_config(
            &dir,
            "invalid.json",
            &format!(r#"{{{boot}, "drives": [{short_drive}], "machine-config": {mc}}}"#),
        );
        let out = vmm(&["--config-file", cfg.to_str().unwrap(), "--no-api"]);
        assert_eq!(out.code(), 152, "{out}");
        assert!(
            out.stderr.contains(&format!("missing field `{field}`")),
            "{out}"
        );
    }
}

/// The VMM inside `ns` with its API at `sock`, its serial output followed.
fn start_in(ns: &NetNs, sock: &Path) -> Followed {
    let mut cmd = ns.command(require_bin("vmm"));
    cmd.arg("--api-sock").arg(sock).arg("--id").arg("fc-guide");
    let mut vmm = Followed::spawn(&mut cmd);
    wait_for_api(sock, || vmm.child().try_wait().unwrap().is_none());
    vmm
}

/// Waits until the API at `sock` accepts connections (the path exists a moment before the
/// socket listens), while `alive` says the VMM runs.
fn wait_for_api(sock: &Path, mut alive: impl FnMut() -> bool) {
    let t = Instant::now();
    while std::os::unix::net::UnixStream::connect(sock).is_err() {
        assert!(
            t.elapsed() < TIMEOUT,
            "the API at {} never answered",
            sock.display()
        );
        assert!(alive(), "the VMM exited before its API answered");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn ok(sock: &Path, method: &str, path: &str, body: &str) {
    let (status, answer) = api::request(sock, method, path, body);
    assert_eq!(status, 204, "{method} {path} {body}: {answer}");
}

/// Firecracker's getting-started sequence, body for body (its docs/getting-started.md):
/// logger, boot source, root drive, a network interface on a tap, InstanceStart. Then what
/// an orchestrator does next with Firecracker's other runtime requests.
#[test]
fn firecracker_getting_started_sequence_with_its_network_interface() {
    require_kvm();
    let ns = NetNs::new("kiln-fc-guide");
    ns.add_tap("tap0", None);
    let dir = ScratchDir::new("kiln-fc-guide");
    let sock = dir.join("firecracker.socket");
    let mut vmm = start_in(&ns, &sock);
    let logfile = dir.join("firecracker.log");
    std::fs::write(&logfile, "").unwrap();
    let rootfs = scratch_file(&dir, "rootfs.ext4");
    let metrics = dir.join("metrics.json");
    ok(
        &sock,
        "PUT",
        "/logger",
        &format!(
            r#"{{"log_path": "{}", "level": "Debug", "show_level": true, "show_log_origin": true}}"#,
            logfile.display()
        ),
    );
    ok(
        &sock,
        "PUT",
        "/metrics",
        &format!(
            r#"{{"metrics_path": "{}", "emit_id": true, "properties": {{"customer": "42"}}}}"#,
            metrics.display()
        ),
    );
    ok(
        &sock,
        "PUT",
        "/boot-source",
        &format!(
            r#"{{"kernel_image_path": "{}", "boot_args": "console=ttyS0 reboot=k panic=1 kiln.test=ticks"}}"#,
            tiny_kernel()
        ),
    );
    ok(
        &sock,
        "PUT",
        "/drives/rootfs",
        &format!(
            r#"{{"drive_id": "rootfs", "path_on_host": "{rootfs}", "is_root_device": true, "is_read_only": false}}"#
        ),
    );
    ok(
        &sock,
        "PUT",
        "/network-interfaces/net1",
        r#"{"iface_id": "net1", "guest_mac": "06:00:AC:10:00:02", "host_dev_name": "tap0"}"#,
    );
    ok(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
    );
    assert!(
        vmm.wait_line("tick 1", TIMEOUT),
        "the guest never ticked\n{}",
        vmm.seen()
    );
    let (_, info) = api::request(&sock, "GET", "/", "");
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["state"], "Running");
    assert_eq!(info["id"], "fc-guide");
    // Firecracker's runtime requests, with the spec's optional fields set to null.
    ok(
        &sock,
        "PATCH",
        "/network-interfaces/net1",
        r#"{"iface_id": "net1", "rx_rate_limiter": null, "tx_rate_limiter": null}"#,
    );
    ok(
        &sock,
        "PATCH",
        "/drives/rootfs",
        &format!(r#"{{"drive_id": "rootfs", "path_on_host": "{rootfs}", "rate_limiter": null}}"#),
    );
    ok(&sock, "PATCH", "/vm", r#"{"state": "Paused"}"#);
    ok(&sock, "PATCH", "/vm", r#"{"state": "Resumed"}"#);
    ok(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type": "FlushMetrics"}"#,
    );
    let (status, cfg) = api::request(&sock, "GET", "/vm/config", "");
    assert_eq!(status, 200, "{cfg}");
    let cfg: Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(cfg["network-interfaces"][0]["host_dev_name"], "tap0");
    assert!(
        cfg["balloon"].is_null() && cfg["pmem"] == serde_json::json!([]),
        "{cfg}"
    );
    // The metrics line carries the id and the properties after the timestamp.
    let line = std::fs::read_to_string(&metrics).unwrap();
    let first: Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(first["id"], "fc-guide");
    assert_eq!(first["properties"]["customer"], "42");
    // The log has Firecracker's prefix with level and origin.
    let log = std::fs::read_to_string(&logfile).unwrap();
    assert!(log.contains(" [fc-guide:"), "{log}");
    assert!(
        log.contains(":DEBUG:vmm/src/") || log.contains(":INFO:vmm/src/"),
        "{log}"
    );
    drop(vmm);
}

/// Every field of the spec's request bodies, optional ones as explicit `null`: accepted.
#[test]
fn api_bodies_accept_every_spec_field_and_null() {
    let vmm = Vmm::start(&[]);
    let kernel = tiny_kernel();
    let disk = scratch_file(&vmm.dir, "disk.img");
    let uds = vmm.dir.join("v.sock").display().to_string();
    let bodies: Vec<(&str, &str, String)> = vec![
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 64, "smt": null, "track_dirty_pages": null,
                "cpu_template": null, "huge_pages": null}"#
                .into(),
        ),
        (
            "PATCH",
            "/machine-config",
            r#"{"vcpu_count": null, "mem_size_mib": null, "cpu_template": "T2CL",
                "huge_pages": "Transparent"}"#
                .into(),
        ),
        (
            "PUT",
            "/boot-source",
            format!(
                r#"{{"kernel_image_path": "{kernel}", "boot_args": "kiln.test=ticks", "initrd_path": null}}"#
            ),
        ),
        (
            "PUT",
            "/drives/rootfs",
            format!(
                r#"{{"drive_id": "rootfs", "partuuid": null, "is_root_device": true, "cache_type": null,
                     "is_read_only": null, "path_on_host": "{disk}", "rate_limiter": null,
                     "io_engine": "Async", "socket": null}}"#
            ),
        ),
        (
            "PUT",
            "/vsock",
            format!(r#"{{"vsock_id": null, "guest_cid": 3, "uds_path": "{uds}"}}"#),
        ),
        (
            "PUT",
            "/logger",
            r#"{"log_path": null, "level": null, "show_level": null, "show_log_origin": null,
                "module": null}"#
                .into(),
        ),
        (
            "PUT",
            "/metrics",
            r#"{"metrics_path": "/dev/null", "emit_id": null, "properties": null}"#.into(),
        ),
    ];
    for (method, path, body) in &bodies {
        vmm.ok(method, path, body);
    }
    let mc = vmm.get("/machine-config");
    assert_eq!(mc["cpu_template"], "T2CL");
    assert_eq!(mc["huge_pages"], "Transparent");
    // And it boots so configured (T2CL masks, THP-backed memory, io_engine Async).
    vmm.action("InstanceStart");
    vmm.wait_serial("the guest's ticks", "KILN-TINY: tick 1");
}

/// The statuses and messages of Firecracker's errors: 400 for every refusal, the file a
/// request names checked (or opened) at that request, a feature Kiln lacks named.
#[test]
fn errors_have_firecrackers_statuses_and_name_what_is_wrong() {
    let vmm = Vmm::start(&[]);
    let file = scratch_file(&vmm.dir, "file");
    let missing_dir = "/nonexistent-kiln-dir";
    let cases: Vec<(&str, &str, Option<String>, &str)> = vec![
        ("GET", "/nope", None, "no such path"),
        ("PATCH", "/boot-source", Some("{}".into()), "allowed: PUT"),
        ("PUT", "/version", Some("{}".into()), "allowed: GET"),
        ("DELETE", "/network-interfaces/eth0", None, "hot-unplugging devices"),
        ("PUT", "/logger", None, "needs a JSON body"),
        ("GET", "/", Some("{}".into()), "cannot have a body"),
        (
            "PUT",
            "/boot-source",
            Some(r#"{"kernel_image_path": "/nonexistent/vmlinux"}"#.into()),
            "boot-source: the kernel file \"/nonexistent/vmlinux\" cannot be opened: No such file or directory (os error 2)",
        ),
        (
            "PUT",
            "/drives/rootfs",
            Some(r#"{"drive_id": "rootfs", "path_on_host": "/nonexistent/disk", "is_root_device": true}"#.into()),
            "drives: the backing file \"/nonexistent/disk\" cannot be opened: No such file or directory",
        ),
        (
            "PUT",
            "/logger",
            Some(format!(r#"{{"log_path": "{missing_dir}/log"}}"#)),
            "cannot open log_path",
        ),
        (
            "PUT",
            "/metrics",
            Some(format!(r#"{{"metrics_path": "{missing_dir}/m"}}"#)),
            "cannot open",
        ),
        (
            "PUT",
            "/vsock",
            Some(format!(r#"{{"guest_cid": 3, "uds_path": "{missing_dir}/v.sock"}}"#)),
            "directory /nonexistent-kiln-dir",
        ),
        (
            "PUT",
            "/vsock",
            Some(format!(r#"{{"guest_cid": 3, "uds_path": "{file}"}}"#)),
            "a file already exists there",
        ),
        (
            "PUT",
            "/network-interfaces/eth0",
            Some(r#"{"iface_id": "eth0", "host_dev_name": "lo"}"#.into()),
            "cannot attach to tap device \"lo\"",
        ),
        (
            "PUT",
            "/boot-source",
            Some(format!(r#"{{"kernel_image_path": "{file}", "bogus": 1}}"#)),
            "unknown field `bogus`",
        ),
        // The small devices: their values checked at the request, wrong verbs 400 too.
        (
            "PUT",
            "/drives/rootfs",
            Some(format!(
                r#"{{"drive_id": "rootfs", "path_on_host": "{file}", "is_root_device": true,
                     "rate_limiter": {{"bandwidth": {{"size": 1000, "refill_time": 18446744073709551615}}}}}}"#
            )),
            "drives.rate_limiter.bandwidth: refill_time 18446744073709551615 ms is too long",
        ),
        (
            "PUT",
            "/network-interfaces/eth0",
            Some(r#"{"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 20}"#.into()),
            "network-interfaces: mtu 20 is out of range (68 to 65535)",
        ),
        ("PUT", "/entropy", Some(r#"{"rate_limiter": {"bytes": 1}}"#.into()), "unknown field `bytes`"),
        (
            "PUT",
            "/serial",
            Some(format!(r#"{{"serial_out_path": "{missing_dir}/serial.out"}}"#)),
            "serial.serial_out_path: \"/nonexistent-kiln-dir/serial.out\" cannot be used: its directory does not exist",
        ),
        (
            "PUT",
            "/cpu-config",
            Some(r#"{"msr_modifiers": [{"addr": "0x10", "bitmap": "0b2"}]}"#.into()),
            "has '2'",
        ),
        ("GET", "/entropy", None, "allowed: PUT"),
        ("PATCH", "/serial", Some("{}".into()), "allowed: PUT"),
        ("GET", "/cpu-config", None, "allowed: PUT"),
        // Spec fields and paths for features Kiln does not have yet.
        (
            "PUT",
            "/drives/rootfs",
            Some(format!(
                r#"{{"drive_id": "rootfs", "path_on_host": "{file}", "is_root_device": true,
                     "socket": "/run/vhost-user-blk.sock"}}"#
            )),
            "a vhost-user block backend (socket) is not supported by Kiln yet",
        ),
        // Free page hinting (taken by PUT /balloon since Kiln has it, tests/tests/balloon.rs):
        // its commands only on the running microVM, as Firecracker answers.
        (
            "PATCH",
            "/balloon/hinting/start",
            Some("{}".into()),
            "PATCH /balloon/hinting/start is only possible after InstanceStart",
        ),
        (
            "GET",
            "/balloon/hinting/status",
            None,
            "GET /balloon/hinting/status is only possible after InstanceStart",
        ),
        (
            "PATCH",
            "/balloon/hinting/stop",
            None,
            "PATCH /balloon/hinting/stop is only possible after InstanceStart",
        ),
        ("PUT", "/balloon/hinting/start", Some("{}".into()), "allowed: PATCH"),
        ("PUT", "/balloon", Some(r#"{"amount_mib": 4096, "deflate_on_oom": false}"#.into()), "amount_mib 4096 is more than the guest's memory (mem_size_mib 128)"),
        ("PATCH", "/balloon", Some(r#"{"amount_mib": 1}"#.into()), "PATCH /balloon is only possible after InstanceStart"),
        ("GET", "/balloon/statistics", None, "GET /balloon/statistics is only possible after InstanceStart"),
        ("GET", "/balloon", None, "no balloon device is configured"),
        ("PUT", "/mmds", Some("{".into()), "invalid JSON"),
        ("PATCH", "/mmds", Some("{}".into()), "PUT /mmds a document before patching it"),
        ("PUT", "/mmds/config", Some(r#"{"network_interfaces": []}"#.into()), "network_interfaces is empty"),
        ("PUT", "/mmds/config", Some(r#"{"network_interfaces": ["nope"]}"#.into()), "network interface \"nope\" is not configured"),
        // pmem (Kiln has it now): Firecracker's body, each required field named, its refusals.
        ("PUT", "/pmem/p", Some("{}".into()), "missing field `id`"),
        ("PUT", "/pmem/p", Some(r#"{"id": "p"}"#.into()), "missing field `path_on_host`"),
        (
            "PUT",
            "/pmem/p",
            Some(r#"{"id": "q", "path_on_host": "/x"}"#.into()),
            "id in the path (\"p\") differs from the id in the body (\"q\")",
        ),
        (
            "PUT",
            "/pmem/p",
            Some(r#"{"id": "p", "path_on_host": "/nonexistent/kiln-pmem.img"}"#.into()),
            "pmem: the backing file \"/nonexistent/kiln-pmem.img\" cannot be opened",
        ),
        ("PATCH", "/pmem/p", Some(r#"{"id": "p"}"#.into()), "PATCH /pmem is only possible after InstanceStart"),
        // Memory hot-plug: Firecracker's limits, and its pre-/post-boot split.
        ("PUT", "/hotplug/memory", Some("{}".into()), "missing field `total_size_mib`"),
        ("PUT", "/hotplug/memory", Some(r#"{"total_size_mib": 1024, "block_size_mib": 3}"#.into()), "block_size_mib 3 is not a power of 2"),
        ("PUT", "/hotplug/memory", Some(r#"{"total_size_mib": 1024, "slot_size_mib": 64}"#.into()), "slot_size_mib 64 is lower than 128 MiB"),
        ("PUT", "/hotplug/memory", Some(r#"{"total_size_mib": 1000}"#.into()), "total_size_mib 1000 is not a multiple of slot_size_mib (128 MiB)"),
        ("PATCH", "/hotplug/memory", Some(r#"{"requested_size_mib": 2}"#.into()), "PATCH /hotplug/memory is only possible after InstanceStart"),
        ("GET", "/hotplug/memory", None, "GET /hotplug/memory is only possible after InstanceStart"),
        // Snapshots: Firecracker's bodies, each required field named.
        ("PUT", "/snapshot/create", Some("{}".into()), "missing field `snapshot_path`"),
        (
            "PUT",
            "/snapshot/create",
            Some(r#"{"snapshot_path": "s"}"#.into()),
            "missing field `mem_file_path`",
        ),
        ("PUT", "/snapshot/load", Some("{}".into()), "missing field `snapshot_path`"),
        (
            "PUT",
            "/snapshot/load",
            Some(r#"{"snapshot_path": "s", "huge_pages": "2M", "mem_file_path": "m"}"#.into()),
            "huge_pages \"2M\") is not supported by Kiln yet",
        ),
    ];
    for (method, path, body, words) in &cases {
        vmm.refuses(method, path, body.as_deref(), 400, words);
        vmm.assert_alive(&format!("{method} {path}"));
    }
    // The HTTP layer's refusals are 400 too (Firecracker has no 413, 431, 501 or 505).
    let oversized = format!(
        "PUT /logger HTTP/1.1\r\nContent-Length: 60000\r\n\r\n{}",
        "x".repeat(60_000)
    );
    for raw in [
        oversized.into_bytes(),
        b"GET / HTTP/2.0\r\n\r\n".to_vec(),
        b"PUT /logger HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
        format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000)).into_bytes(),
        b"BREW / HTTP/1.1\r\n\r\n".to_vec(),
    ] {
        let (status, head, body) = vmm.raw(&raw);
        assert_eq!(status, 400, "{head}{body}");
        vmm.assert_alive("an HTTP-level refusal");
    }
    assert_eq!(vmm.state(), "Not started");
}

/// The files named by `PUT` are opened there, as Firecracker opens them: the kernel and
/// disk accepted are the ones booted, even once their paths are gone.
#[test]
fn files_opened_at_the_request_are_the_ones_booted() {
    let vmm = Vmm::start(&[]);
    let kernel = vmm.dir.join("staged-vmlinux");
    std::fs::copy(tiny::tiny_guest(), &kernel).unwrap();
    let disk = scratch_file(&vmm.dir, "staged.img");
    vmm.ok(
        "PUT",
        "/boot-source",
        &format!(
            r#"{{"kernel_image_path": "{}", "boot_args": "kiln.test=ticks"}}"#,
            kernel.display()
        ),
    );
    vmm.ok(
        "PUT",
        "/drives/data",
        &format!(r#"{{"drive_id": "data", "path_on_host": "{disk}", "is_root_device": false}}"#),
    );
    std::fs::remove_file(&kernel).unwrap();
    std::fs::remove_file(&disk).unwrap();
    vmm.action("InstanceStart");
    // (A guest that keeps running: the answer to InstanceStart is read before it ends.)
    vmm.wait_serial("the guest's ticks", "KILN-TINY: tick 1");
    let out = TinyOutput::parse(&vmm.serial());
    assert!(
        out.entry.is_some() && out.errors().is_empty(),
        "{}",
        vmm.serial()
    );
    // A second InstanceStart is refused, as Firecracker.
    vmm.refuses(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
        400,
        "already started",
    );
}

/// `huge_pages "2M"` reserves hugetlbfs pages when the memory is mapped: a host without
/// enough free ones refuses InstanceStart with a message saying so (never a later SIGBUS).
#[test]
fn hugetlbfs_pages_are_reserved_at_instance_start() {
    let vmm = Vmm::start(&[]);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let free: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("HugePages_Free in /proc/meminfo");
    let mib = (free + 1) * 2;
    vmm.ok(
        "PUT",
        "/machine-config",
        &format!(r#"{{"vcpu_count": 1, "mem_size_mib": {mib}, "huge_pages": "2M"}}"#),
    );
    vmm.boot_tiny_guest("kiln.test=print");
    vmm.refuses(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
        400,
        "2 MiB huge pages",
    );
    assert_eq!(vmm.state(), "Not started");
    let mut s = vmm.connect();
    std::io::Write::write_all(&mut s, b"GET /machine-config HTTP/1.1\r\n\r\n").unwrap();
    let (status, _, body) = read_response(&mut s).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains(r#""huge_pages":"2M""#), "{body}");
}
