//! The HTTP API of the real `vmm --api-sock PATH`: what works. The endpoints before boot,
//! docs/api.md's getting-started sequence with the real `curl --unix-socket` booting the
//! tiny guest, pause and resume seen on the serial output, metrics after boot, a config
//! file together with the API socket, SIGTERM, and a failed InstanceStart retried.
//! What the API refuses, and the requests that must never take the VMM down, are in
//! `api_errors.rs`.

mod api_common;

use api_common::{scratch_file, Vmm};
use kiln_tests::{require_kvm, require_program, tiny, ScratchDir};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn api_answers_instance_info_and_version_before_boot() {
    let vmm = Vmm::start(&[]);
    let info = vmm.get("/");
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["app_name"], "Kiln");
    assert!(
        info["id"].is_string() && info["vmm_version"].is_string(),
        "{info}"
    );
    // Firecracker's clients read the version to decide what they may ask for: Kiln
    // reports the Firecracker release it implements, and its own version beside it.
    let version = vmm.get("/version");
    assert_eq!(version["firecracker_version"], "1.17.0", "{version}");
    assert!(version["kiln_version"].is_string(), "{version}");
    let mc = vmm.get("/machine-config");
    assert_eq!(
        (mc["vcpu_count"].as_u64(), mc["mem_size_mib"].as_u64()),
        (Some(1), Some(128))
    );
    eprintln!("process spawn -> GET / answered: {:?}", vmm.api_ready_after);
    let (status, head, _) = vmm.raw(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 37\r\n\r\n{\"vcpu_count\": 2, \"mem_size_mib\": 64}");
    assert_eq!(status, 204, "{head}");
    assert!(head.starts_with("HTTP/1.1 204 No Content\r\n"), "{head}");
}

#[test]
fn table_of_endpoint_successes_before_boot() {
    let vmm = Vmm::start(&[]);
    let kernel = scratch_file(&vmm.dir, "vmlinux");
    let disk = scratch_file(&vmm.dir, "rootfs.ext4");
    let disk2 = scratch_file(&vmm.dir, "data.ext4");
    let log = vmm.dir.join("kiln.log");
    let metrics = vmm.dir.join("metrics.fifo-or-file");
    // The tap is opened at the PUT, as Firecracker does (as root a missing one is created
    // for as long as it is open): a name no one else uses.
    let tap = format!("kapi{}", std::process::id() % 100_000_000);
    let cases: Vec<(&str, &str, String)> = vec![
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": false}"#.into(),
        ),
        ("PATCH", "/machine-config", r#"{"mem_size_mib": 64}"#.into()),
        (
            "PUT",
            "/boot-source",
            format!(
                r#"{{"kernel_image_path": "{kernel}", "boot_args": "console=ttyS0 reboot=k panic=1"}}"#
            ),
        ),
        (
            "PUT",
            "/drives/rootfs",
            format!(
                r#"{{"drive_id": "rootfs", "path_on_host": "{disk}", "is_root_device": true, "is_read_only": false}}"#
            ),
        ),
        (
            "PUT",
            "/drives/data",
            format!(
                r#"{{"drive_id": "data", "path_on_host": "{disk2}", "is_root_device": false, "is_read_only": true, "cache_type": "Writeback"}}"#
            ),
        ),
        (
            "PUT",
            "/drives/data",
            format!(
                r#"{{"drive_id": "data", "path_on_host": "{disk2}", "is_root_device": false}}"#
            ),
        ),
        (
            "PUT",
            "/network-interfaces/net1",
            format!(
                r#"{{"iface_id": "net1", "guest_mac": "06:00:AC:10:00:02", "host_dev_name": "{tap}"}}"#
            ),
        ),
        (
            "PUT",
            "/vsock",
            format!(
                r#"{{"guest_cid": 3, "uds_path": "{}/v.sock"}}"#,
                vmm.dir.path().display()
            ),
        ),
        (
            "PUT",
            "/logger",
            format!(
                r#"{{"log_path": "{}", "level": "Debug", "show_level": true, "show_log_origin": true}}"#,
                log.display()
            ),
        ),
        ("PUT", "/logger", r#"{"level": "info"}"#.into()),
        (
            "PUT",
            "/metrics",
            format!(r#"{{"metrics_path": "{}"}}"#, metrics.display()),
        ),
        (
            "PUT",
            "/actions",
            r#"{"action_type": "FlushMetrics"}"#.into(),
        ),
    ];
    for (method, path, body) in &cases {
        vmm.ok(method, path, body);
    }
    let cfg = vmm.get("/vm/config");
    assert_eq!(cfg["machine-config"]["vcpu_count"], 2);
    assert_eq!(cfg["machine-config"]["mem_size_mib"], 64);
    assert_eq!(cfg["boot-source"]["kernel_image_path"], kernel.as_str());
    assert_eq!(cfg["drives"].as_array().unwrap().len(), 2);
    assert_eq!(cfg["drives"][0]["drive_id"], "rootfs");
    assert_eq!(
        cfg["network-interfaces"][0]["guest_mac"],
        "06:00:ac:10:00:02"
    );
    assert_eq!(cfg["vsock"]["guest_cid"], 3);
    assert_eq!(cfg["logger"]["level"], "Info");
    assert_eq!(vmm.get("/machine-config")["mem_size_mib"], 64);

    // The logger file has the requests, with level and origin.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(":DEBUG:") || text.contains(":INFO:"),
        "{text}"
    );
    assert!(text.contains("PUT /metrics"), "{text}");
    // FlushMetrics wrote one JSON line counting the requests by endpoint.
    let lines = std::fs::read_to_string(&metrics).unwrap();
    let line: Value = serde_json::from_str(lines.lines().next().expect("a metrics line")).unwrap();
    assert_eq!(line["put_api_requests"]["drive_count"], 3);
    assert_eq!(line["patch_api_requests"]["machine_cfg_count"], 1);
    assert_eq!(line["put_api_requests"]["actions_count"], 1);
    assert!(line["utc_timestamp_ms"].as_u64().unwrap() > 0);
    assert!(
        line["api_server"]["process_startup_time_us"]
            .as_u64()
            .unwrap()
            > 0
    );
    vmm.ok("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#);
    let lines = std::fs::read_to_string(&metrics).unwrap();
    let second: Value = serde_json::from_str(lines.lines().nth(1).expect("a second line")).unwrap();
    assert_eq!(
        second["put_api_requests"]["drive_count"], 0,
        "counters restart at each line"
    );
    assert_eq!(second["put_api_requests"]["actions_count"], 1);
}

/// docs/api.md's getting-started block, as the test runs it.
fn getting_started_script() -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.md")).unwrap();
    let start = doc
        .find("<!-- getting-started:begin -->")
        .expect("docs/api.md has the getting-started block");
    let end = doc
        .find("<!-- getting-started:end -->")
        .expect("end marker");
    let block = &doc[start..end];
    let code_start = block.find("```bash\n").expect("a bash block") + "```bash\n".len();
    let code_end = block[code_start..].find("```").unwrap() + code_start;
    block[code_start..code_end].to_string()
}

#[test]
fn getting_started_sequence_with_curl_boots_the_tiny_guest() {
    require_kvm();
    let curl = require_program("curl", "curl");
    assert!(curl.is_file());
    let kernel = tiny::tiny_guest();
    let vmm = Vmm::start(&[]);
    let script = getting_started_script();
    let rootfs = vmm.dir.join("rootfs.ext4");
    let out = kiln_tests::run_with_timeout(
        Command::new("bash")
            .arg("-euo")
            .arg("pipefail")
            .arg("-c")
            .arg(&script)
            .current_dir(&vmm.dir)
            .env("API_SOCKET", &vmm.sock)
            .env("KERNEL", &kernel)
            .env("ROOTFS", &rootfs)
            .env("LOGFILE", vmm.dir.join("kiln.log"))
            .env(
                "KERNEL_BOOT_ARGS",
                "console=ttyS0 reboot=k panic=1 kiln.test=halt",
            ),
        Duration::from_secs(60),
    );
    assert_eq!(out.code(), 0, "{script}\n{out}");
    // Every PUT answered 204 No Content: curl printed no fault message.
    assert!(!out.stdout.contains("fault_message"), "{out}");
    vmm.wait_for(
        "the tiny guest's first line",
        Duration::from_secs(30),
        |v| v.serial().contains(tiny::START_LINUX64) || v.serial().contains(tiny::START_PVH),
    );
    vmm.wait_serial("the halt scenario", "KILN-TINY: halt");
    assert_eq!(vmm.state(), "Running");
    let log = std::fs::read_to_string(vmm.dir.join("kiln.log")).unwrap_or_default();
    let all_logs = format!("{log}{}", vmm.stderr());
    vmm.wait_for("the boot-time line", Duration::from_secs(5), |v| {
        let log = std::fs::read_to_string(v.dir.join("kiln.log")).unwrap_or_default();
        log.contains("boot-time: first_serial_byte")
            || v.stderr().contains("boot-time: first_serial_byte")
    });
    eprintln!(
        "{}",
        all_logs
            .lines()
            .filter(|l| l.contains("boot-time:"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // After InstanceStart: pre-boot-only requests are refused, InstanceStart too.
    let kernel_s = kernel.display().to_string();
    for (method, path, body) in [
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 128}"#.to_string(),
        ),
        (
            "PATCH",
            "/machine-config",
            r#"{"mem_size_mib": 64}"#.to_string(),
        ),
        (
            "PUT",
            "/boot-source",
            format!(r#"{{"kernel_image_path": "{kernel_s}"}}"#),
        ),
        (
            "PUT",
            "/drives/rootfs",
            format!(
                r#"{{"drive_id": "rootfs", "path_on_host": "{kernel_s}", "is_root_device": true}}"#
            ),
        ),
        (
            "PUT",
            "/network-interfaces/n",
            r#"{"iface_id": "n", "host_dev_name": "tap9"}"#.to_string(),
        ),
        (
            "PUT",
            "/vsock",
            r#"{"guest_cid": 3, "uds_path": "/tmp/x.sock"}"#.to_string(),
        ),
        ("PUT", "/logger", r#"{"level": "Debug"}"#.to_string()),
        (
            "PUT",
            "/metrics",
            r#"{"metrics_path": "/tmp/m"}"#.to_string(),
        ),
    ] {
        vmm.refuses(
            method,
            path,
            Some(&body),
            400,
            "only possible before InstanceStart",
        );
    }
    vmm.refuses(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
        400,
        "already started",
    );
    // Runtime requests work; GET endpoints still answer.
    assert_eq!(vmm.get("/machine-config")["mem_size_mib"], 128);
    assert_eq!(vmm.get("/vm/config")["drives"][0]["drive_id"], "rootfs");
    vmm.action("FlushMetrics");
    vmm.set_state("Paused");
    assert_eq!(vmm.state(), "Paused");
    vmm.set_state("Resumed");
    assert_eq!(vmm.state(), "Running");
    vmm.ok("PATCH", "/drives/rootfs", r#"{"drive_id": "rootfs"}"#);
    // Swapping the backing file of a running drive (virtio-blk): any regular file will do.
    vmm.ok(
        "PATCH",
        "/drives/rootfs",
        &format!(r#"{{"drive_id": "rootfs", "path_on_host": "{kernel_s}"}}"#),
    );
    vmm.refuses(
        "PATCH",
        "/drives/nope",
        Some(r#"{"drive_id": "nope"}"#),
        400,
        "no drive with drive_id",
    );
    vmm.action("SendCtrlAltDel");
    vmm.assert_alive("SendCtrlAltDel");
}

#[test]
fn pause_and_resume_are_observed_on_the_serial_output() {
    require_kvm();
    let vmm = Vmm::start(&[]);
    vmm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
    );
    vmm.boot_tiny_guest("console=ttyS0 kiln.test=ticks");
    vmm.action("InstanceStart");
    let ticks = |v: &Vmm| v.serial().matches("KILN-TINY: tick ").count();
    vmm.wait_for("two ticks", Duration::from_secs(30), |v| ticks(v) >= 2);

    vmm.set_state("Paused");
    assert_eq!(vmm.state(), "Paused");
    // A line being printed when the pause landed may finish: let it settle, then expect none.
    std::thread::sleep(Duration::from_millis(300));
    let at_pause = vmm.serial();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(vmm.serial(), at_pause, "the guest printed while paused");

    vmm.set_state("Resumed");
    assert_eq!(vmm.state(), "Running");
    let paused_ticks = at_pause.matches("KILN-TINY: tick ").count();
    vmm.wait_for("a tick after resume", Duration::from_secs(30), |v| {
        ticks(v) > paused_ticks
    });
    // Pausing twice and resuming twice are accepted (idempotent), as in Firecracker.
    vmm.set_state("Paused");
    vmm.set_state("Paused");
    vmm.set_state("Resumed");
    vmm.set_state("Resumed");
}

#[test]
fn metrics_after_boot_count_vcpu_exits_uart_bytes_and_boot_timing() {
    require_kvm();
    let vmm = Vmm::start(&[]);
    let metrics = vmm.dir.join("metrics.json");
    vmm.ok(
        "PUT",
        "/metrics",
        &format!(r#"{{"metrics_path": "{}"}}"#, metrics.display()),
    );
    vmm.boot_tiny_guest("kiln.test=halt");
    vmm.action("InstanceStart");
    vmm.wait_serial("the halt line", "KILN-TINY: halt");
    vmm.action("FlushMetrics");
    let text = std::fs::read_to_string(&metrics).unwrap();
    let line: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(line["vcpu"]["exit_io_out"].as_u64().unwrap() > 10, "{line}");
    // "KILN-TINY: start entry=pvh\n" and "KILN-TINY: halt\n" at least.
    assert!(
        line["uart"]["write_count"].as_u64().unwrap() >= 40,
        "{line}"
    );
    assert!(
        line["boot_timing_us"]["first_serial_byte"]
            .as_u64()
            .unwrap()
            > 0,
        "{line}"
    );
    assert!(
        line["latencies_us"]["instance_start"].as_u64().unwrap() > 0,
        "{line}"
    );
    assert_eq!(line["put_api_requests"]["actions_count"], 2);
}

#[test]
fn config_file_with_api_socket_boots_at_once_and_keeps_serving() {
    require_kvm();
    let kernel = tiny::tiny_guest();
    let dir = ScratchDir::new("kiln-api-cfg");
    let cfg = dir.write(
        "vm.json",
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "kiln.test=ticks"}},
                "machine-config": {{"vcpu_count": 1, "mem_size_mib": 32}}}}"#,
            kernel.display()
        ),
    );
    let vmm = Vmm::start(&["--config-file", cfg.to_str().unwrap()]);
    assert_eq!(vmm.state(), "Running");
    assert_eq!(vmm.get("/vm/config")["machine-config"]["mem_size_mib"], 32);
    vmm.refuses(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 1, "mem_size_mib": 64}"#),
        400,
        "only possible before InstanceStart",
    );
    vmm.wait_serial("a tick", "KILN-TINY: tick 1");
    vmm.set_state("Paused");
    assert_eq!(vmm.state(), "Paused");
    vmm.set_state("Resumed");
}

#[test]
fn sigterm_before_instance_start_ends_the_vmm_cleanly() {
    let mut vmm = Vmm::start(&[]);
    // SAFETY: kill(2) with a pid of a child this test spawned and still owns.
    let rc = unsafe { libc::kill(vmm.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let t = Instant::now();
    let status = loop {
        if let Some(s) = vmm.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the VMM ignored SIGTERM\n{}",
            vmm.stderr()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(status.code(), Some(0), "{}", vmm.stderr());
}

#[test]
fn a_failed_instance_start_is_reported_and_can_be_retried() {
    require_kvm();
    let vmm = Vmm::start(&[]);
    let not_a_kernel = scratch_file(&vmm.dir, "zeros.bin");
    vmm.ok(
        "PUT",
        "/boot-source",
        &format!(r#"{{"kernel_image_path": "{not_a_kernel}"}}"#),
    );
    let msg = vmm.fault(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
        400,
    );
    assert!(msg.starts_with("InstanceStart failed: "), "{msg}");
    assert_eq!(vmm.state(), "Not started");
    vmm.boot_tiny_guest("kiln.test=halt");
    vmm.action("InstanceStart");
    vmm.wait_serial("the halt line", "KILN-TINY: halt");
    assert_eq!(vmm.state(), "Running");
}
