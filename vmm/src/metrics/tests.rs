use super::*;

#[test]
fn counters_report_the_increase_since_the_last_line() {
    let m = Metrics::new();
    m.vcpu.exit_io_out.add(3);
    m.put_api_requests.drive_count.inc();
    m.latencies_us.pause_vm.set(42);
    let first: serde_json::Value = serde_json::from_str(&m.to_line().unwrap()).unwrap();
    assert_eq!(first["vcpu"]["exit_io_out"], 3);
    assert_eq!(first["put_api_requests"]["drive_count"], 1);
    assert_eq!(first["latencies_us"]["pause_vm"], 42);
    assert!(first["utc_timestamp_ms"].as_u64().unwrap() > 1_600_000_000_000);
    m.vcpu.exit_io_out.inc();
    let second: serde_json::Value = serde_json::from_str(&m.to_line().unwrap()).unwrap();
    assert_eq!(second["vcpu"]["exit_io_out"], 1);
    assert_eq!(second["put_api_requests"]["drive_count"], 0);
    assert_eq!(
        second["latencies_us"]["pause_vm"], 42,
        "gauges keep their value"
    );
    assert_eq!(m.vcpu.exit_io_out.total(), 4);
}

#[test]
fn a_line_is_one_json_object_with_firecracker_group_names() {
    let line = Metrics::new().to_line().unwrap();
    assert!(line.ends_with('\n'));
    assert_eq!(line.matches('\n').count(), 1);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    for group in [
        "utc_timestamp_ms",
        "api_server",
        "get_api_requests",
        "put_api_requests",
        "patch_api_requests",
        "logger",
        "vcpu",
        "vmm",
        "uart",
        "i8042",
        "block",
        "net",
        "vsock",
        "seccomp",
        "latencies_us",
    ] {
        assert!(v.get(group).is_some(), "missing group {group}");
    }
}
