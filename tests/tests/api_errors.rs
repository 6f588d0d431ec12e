//! The HTTP API of the real `vmm --api-sock PATH`: what it refuses, and with which status
//! and message (every endpoint's failures before boot, runtime-only requests before
//! InstanceStart, a config file refused like the API refuses it), and requests that must
//! never take the VMM down (malformed, oversized, slow, pipelined, a payload limit, a log
//! FIFO nobody reads). Every bad request is followed by a check that the VMM still answers
//! `GET /`.

mod api_common;

use api_common::{closed, read_response, scratch_file, Vmm};
use kiln_tests::{require_bin, unique_id};
use serde_json::Value;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn table_of_endpoint_failures_before_boot() {
    let vmm = Vmm::start(&[]);
    let file = scratch_file(&vmm.dir, "file");
    let dir = vmm.dir.path().display().to_string();
    // (method, path, body, status, words the fault message contains). Every refusal is 400,
    // as Firecracker answers.
    let cases: Vec<(&str, &str, Option<String>, u16, &str)> = vec![
        ("GET", "/nope", None, 400, "no such path"),
        ("GET", "/drives/a/b", None, 400, "no such path"),
        ("PUT", "/mmds/x", Some("{}".into()), 400, "no such path"),
        (
            "PUT",
            "/snapshot/create",
            Some("{}".into()),
            400,
            "missing field `snapshot_path`",
        ),
        (
            "PUT",
            "/snapshot/create",
            Some(r#"{"snapshot_path": "s", "mem_file_path": "m"}"#.into()),
            400,
            "only possible after InstanceStart",
        ),
        ("GET", "/snapshot/load", None, 400, "allowed: PUT"),
        ("POST", "/actions", Some("{}".into()), 400, "allowed: PUT"),
        (
            "DELETE",
            "/drives/rootfs",
            None,
            400,
            "hot-unplugging devices is not supported by Kiln yet",
        ),
        ("GET", "/boot-source", None, 400, "allowed: PUT"),
        ("PUT", "/", Some("{}".into()), 400, "allowed: GET"),
        ("PUT", "/vm", Some("{}".into()), 400, "allowed: PATCH"),
        ("PUT", "/actions", None, 400, "Content-Length"),
        ("PUT", "/actions", Some("{".into()), 400, "invalid JSON"),
        (
            "PUT",
            "/actions",
            Some(r#"{"action_type": "Reboot"}"#.into()),
            400,
            "unknown variant `Reboot`",
        ),
        (
            "PUT",
            "/actions",
            Some(r#"{"action_type": 3}"#.into()),
            400,
            "invalid JSON",
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 0, "mem_size_mib": 128}"#.into()),
            400,
            "vcpu_count 0 is out of range",
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 1, "mem_size_mib": 1}"#.into()),
            400,
            "mem_size_mib 1 is out of range",
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": "1", "mem_size_mib": 128}"#.into()),
            400,
            "invalid type",
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 1, "mem_size_mib": 128, "gpu": true}"#.into()),
            400,
            "unknown field `gpu`",
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 1}"#.into()),
            400,
            "missing field `mem_size_mib`",
        ),
        (
            "PATCH",
            "/machine-config",
            Some(r#"{"vcpu_count": 99}"#.into()),
            400,
            "out of range",
        ),
        (
            "PUT",
            "/boot-source",
            Some(r#"{"kernel_image_path": "/nonexistent/vmlinux"}"#.into()),
            400,
            "boot-source: the kernel file \"/nonexistent/vmlinux\" cannot be opened: No such file or directory",
        ),
        (
            "PUT",
            "/boot-source",
            Some(format!(r#"{{"kernel_image_path": "{dir}"}}"#)),
            400,
            "cannot be opened: it is a directory, not a regular file",
        ),
        (
            "PUT",
            "/boot-source",
            Some(format!(
                r#"{{"kernel_image_path": "{file}", "initrd_path": "/nonexistent/initrd"}}"#
            )),
            400,
            "boot-source: the initrd file \"/nonexistent/initrd\" cannot be opened",
        ),
        (
            "PUT",
            "/drives/rootfs",
            Some(format!(
                r#"{{"drive_id": "other", "path_on_host": "{file}", "is_root_device": true}}"#
            )),
            400,
            "differs from the id in the body",
        ),
        (
            "PUT",
            "/drives/bad.id",
            Some(format!(
                r#"{{"drive_id": "bad.id", "path_on_host": "{file}", "is_root_device": true}}"#
            )),
            400,
            "is invalid",
        ),
        (
            "PUT",
            "/drives/rootfs",
            Some(
                r#"{"drive_id": "rootfs", "path_on_host": "/nope", "is_root_device": true}"#.into(),
            ),
            400,
            "drives: the backing file \"/nope\" cannot be opened: No such file or directory",
        ),
        ("PUT", "/drives", Some("{}".into()), 400, "drive id"),
        (
            "PUT",
            "/network-interfaces/n",
            Some(r#"{"iface_id": "n", "host_dev_name": "tap0", "guest_mac": "zz"}"#.into()),
            400,
            "not a MAC address",
        ),
        (
            "PUT",
            "/network-interfaces/n",
            Some(r#"{"iface_id": "n", "host_dev_name": "a/b"}"#.into()),
            400,
            "host_dev_name",
        ),
        (
            "PUT",
            "/network-interfaces/n",
            Some(r#"{"iface_id": "n", "host_dev_name": "lo"}"#.into()),
            400,
            "network-interfaces: cannot attach to tap device \"lo\"",
        ),
        (
            "PUT",
            "/vsock",
            Some(r#"{"guest_cid": 3, "uds_path": "/nonexistent-dir/v.sock"}"#.into()),
            400,
            "directory /nonexistent-dir",
        ),
        (
            "PUT",
            "/vsock",
            Some(format!(r#"{{"guest_cid": 3, "uds_path": "{file}"}}"#)),
            400,
            "a file already exists there",
        ),
        (
            "PUT",
            "/vsock",
            Some(r#"{"guest_cid": 2, "uds_path": "/tmp/v"}"#.into()),
            400,
            "guest_cid 2 is invalid",
        ),
        (
            "PUT",
            "/logger",
            Some(r#"{"level": "Loud"}"#.into()),
            400,
            "unknown variant `Loud`",
        ),
        (
            "PUT",
            "/logger",
            Some(r#"{"log_path": "/nonexistent-dir/log"}"#.into()),
            400,
            "cannot open log_path",
        ),
        (
            "PUT",
            "/metrics",
            Some(r#"{"metrics_path": "/nonexistent-dir/m"}"#.into()),
            400,
            "cannot open",
        ),
        (
            "PUT",
            "/metrics",
            Some("{}".into()),
            400,
            "missing field `metrics_path`",
        ),
        (
            "PATCH",
            "/vm",
            Some(r#"{"state": "Stopped"}"#.into()),
            400,
            "unknown variant `Stopped`",
        ),
        (
            "GET",
            "/machine-config",
            Some("{}".into()),
            400,
            "cannot have a body",
        ),
        (
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#.into()),
            400,
            "boot-source is missing",
        ),
    ];
    for (method, path, body, status, words) in &cases {
        vmm.refuses(method, path, body.as_deref(), *status, words);
        vmm.assert_alive(&format!("{method} {path}"));
    }
    assert_eq!(vmm.state(), "Not started");
    // Refused requests changed nothing.
    let cfg = vmm.get("/vm/config");
    assert!(cfg["boot-source"].is_null(), "{cfg}");
    assert!(cfg["vsock"].is_null(), "{cfg}");
    assert_eq!(cfg["network-interfaces"].as_array().map(Vec::len), Some(0));
    assert_eq!(cfg["drives"].as_array().map(Vec::len), Some(0));
}

#[test]
fn runtime_only_requests_are_refused_before_instance_start() {
    let vmm = Vmm::start(&[]);
    for (method, path, body) in [
        ("PATCH", "/vm", r#"{"state": "Paused"}"#),
        ("PATCH", "/vm", r#"{"state": "Resumed"}"#),
        ("PUT", "/actions", r#"{"action_type": "SendCtrlAltDel"}"#),
        ("PATCH", "/drives/rootfs", r#"{"drive_id": "rootfs"}"#),
        (
            "PATCH",
            "/network-interfaces/net1",
            r#"{"iface_id": "net1"}"#,
        ),
    ] {
        vmm.refuses(
            method,
            path,
            Some(body),
            400,
            "only possible after InstanceStart",
        );
        vmm.assert_alive(path);
    }
}

#[test]
fn malformed_oversized_and_slow_requests_never_take_the_vmm_down() {
    let vmm = Vmm::start(&[]);
    let huge_header = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    let many_headers: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let oversized = format!(
        "PUT /drives/x HTTP/1.1\r\nContent-Length: 51201\r\n\r\n{}",
        "x".repeat(51_201)
    );
    // (raw request, status, words in the fault message): 400 for each, as Firecracker.
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"PUT /actions HTTP/1.1\r\nContent-Length: 30\r\n\r\n{\"action_type\": \"FlushMetrics\"".to_vec(), 400, "invalid JSON"),
        (b"PUT /actions HTTP/1.1\r\n\r\n{\"action_type\": \"FlushMetrics\"}".to_vec(), 400, "Content-Length"),
        (b"PUT /actions HTTP/1.1\r\nContent-Length: abc\r\n\r\n".to_vec(), 400, "Content-Length"),
        (b"PUT /actions HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n".to_vec(), 400, "Content-Length"),
        (b"PUT /actions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400, "Transfer-Encoding"),
        (oversized.into_bytes(), 400, "larger than the limit of 51200"),
        (huge_header.into_bytes(), 400, "larger than"),
        (format!("GET / HTTP/1.1\r\n{many_headers}\r\n").into_bytes(), 400, "too many"),
        (b"\x00\xff\xfe garbage\r\n\r\n".to_vec(), 400, "malformed"),
        (b"GET / HTTP/2.0\r\n\r\n".to_vec(), 400, "HTTP version"),
        (b"GET /\xff HTTP/1.1\r\n\r\n".to_vec(), 400, "malformed"),
        (b"PATCH /vm HTTP/1.1\r\nContent-Length: 2\r\n\r\n\xff\xfe".to_vec(), 400, "UTF-8"),
    ];
    for (raw, status, words) in &cases {
        let (got, head, body) = vmm.raw(raw);
        let shown = String::from_utf8_lossy(&raw[..raw.len().min(50)]).into_owned();
        assert_eq!(got, *status, "{shown:?}: {head}{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let msg = v["fault_message"].as_str().unwrap();
        assert!(msg.contains(words), "{shown:?}: {msg:?} lacks {words:?}");
        vmm.assert_alive(&shown);
    }

    // Pipelined: two good requests, then garbage: two answers, a 400, and the close.
    let mut s = vmm.connect();
    s.write_all(b"GET /version HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\nNOT HTTP AT ALL\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s).unwrap().0, 200);
    assert_eq!(read_response(&mut s).unwrap().0, 200);
    let (status, head, _) = read_response(&mut s).unwrap();
    assert_eq!(status, 400);
    assert!(head.contains("Connection: close"), "{head}");
    assert!(closed(&mut s));
    vmm.assert_alive("pipelined garbage");

    // Clients that connect and send nothing, or stop half-way, block no one.
    let silent: Vec<UnixStream> = (0..8).map(|_| vmm.connect()).collect();
    let mut half = vmm.connect();
    half.write_all(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"vcpu")
        .unwrap();
    let t = Instant::now();
    vmm.assert_alive("silent clients");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "GET / took {:?} with silent clients",
        t.elapsed()
    );
    // The half-sent request times out with 408 and is closed; the VMM stays up.
    let (status, _, _) = read_response(&mut half).expect("408 for the stalled request");
    assert_eq!(status, 408);
    assert!(closed(&mut half));
    drop(silent);
    // A client that hangs up mid-request.
    let mut gone = vmm.connect();
    gone.write_all(b"PUT /boot-source HTTP/1.1\r\nContent-Length: 500\r\n\r\n{")
        .unwrap();
    drop(gone);
    vmm.assert_alive("a client that hung up mid-request");
    assert_eq!(vmm.state(), "Not started");
}

#[test]
fn payload_limit_follows_the_command_line_flag() {
    let vmm = Vmm::start(&["--http-api-max-payload-size", "100"]);
    let body = format!(
        r#"{{"vcpu_count": 1, "mem_size_mib": 128{}}}"#,
        " ".repeat(70)
    );
    assert!(body.len() > 100);
    vmm.refuses(
        "PUT",
        "/machine-config",
        Some(&body),
        400,
        "larger than the limit of 100 bytes",
    );
    vmm.assert_alive("an oversized body");
    vmm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 128}"#,
    );
}

#[test]
fn config_file_refuses_what_the_api_refuses_with_the_same_message() {
    let vmm = Vmm::start(&[]);
    let kernel = scratch_file(&vmm.dir, "vmlinux");
    // (config-file section, API path, body)
    let cases: Vec<(&str, &str, String)> = vec![
        (
            "machine-config",
            "/machine-config",
            r#"{"vcpu_count": 0, "mem_size_mib": 128}"#.into(),
        ),
        (
            "machine-config",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 128, "foo": 1}"#.into(),
        ),
        (
            "boot-source",
            "/boot-source",
            r#"{"kernel_image_path": "/nonexistent/vmlinux"}"#.into(),
        ),
        (
            "vsock",
            "/vsock",
            r#"{"guest_cid": 1, "uds_path": "/tmp/v.sock"}"#.into(),
        ),
    ];
    for (section, path, body) in &cases {
        let api_msg = vmm.fault("PUT", path, Some(body), 400);
        let boot = if *section == "boot-source" {
            body.clone()
        } else {
            format!(r#"{{"kernel_image_path": "{kernel}"}}"#)
        };
        let mut cfg = format!(r#"{{"boot-source": {boot}"#);
        if *section != "boot-source" {
            cfg.push_str(&format!(r#", "{section}": {body}"#));
        }
        cfg.push('}');
        let cfg_path = vmm.dir.join(format!("{}.json", unique_id("cfg")));
        std::fs::write(&cfg_path, &cfg).unwrap();
        let out = kiln_tests::run_with_timeout(
            Command::new(require_bin("vmm"))
                .arg("--config-file")
                .arg(&cfg_path),
            Duration::from_secs(20),
        );
        assert_ne!(out.code(), 0, "{cfg}\n{out}");
        let api_core = api_msg.replace("invalid JSON: ", "");
        let api_core = api_core.split(" at line ").next().unwrap();
        assert!(
            out.stderr.contains(api_core),
            "config file {cfg}\nAPI said: {api_msg}\n{out}"
        );
    }
}

#[test]
fn logs_to_a_fifo_nobody_reads_never_block_the_vmm() {
    let vmm = Vmm::start(&[]);
    let fifo = vmm.dir.join("log.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    vmm.ok(
        "PUT",
        "/logger",
        &format!(r#"{{"log_path": "{}", "level": "Trace"}}"#, fifo.display()),
    );
    // Enough log lines to fill the pipe (64 KiB) many times over.
    let mut s = vmm.connect();
    let body = format!(
        r#"{{"vcpu_count": 1, "mem_size_mib": 128, "smt": false{}}}"#,
        " ".repeat(1000)
    );
    for _ in 0..300 {
        let req = format!(
            "PUT /machine-config HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        assert_eq!(read_response(&mut s).unwrap().0, 204);
    }
    let t = Instant::now();
    vmm.assert_alive("a full log FIFO");
    assert!(t.elapsed() < Duration::from_secs(1));
}
