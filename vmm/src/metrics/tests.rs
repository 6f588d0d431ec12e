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

#[test]
fn emit_id_and_properties_follow_the_timestamp() {
    let m = Metrics::new();
    let plain = m.to_line().unwrap();
    assert!(
        !plain.contains("\"id\"") && !plain.contains("properties"),
        "{plain}"
    );
    let props = BTreeMap::from([("customer".to_string(), "42".to_string())]);
    m.labels.set(Some("vm-7"), Some(props));
    let line = m.to_line().unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["id"], "vm-7");
    assert_eq!(v["properties"]["customer"], "42");
    // Firecracker's order: timestamp, id, properties, then the groups.
    let at = |k: &str| line.find(&format!("\"{k}\"")).unwrap();
    assert!(at("utc_timestamp_ms") < at("id"));
    assert!(at("id") < at("properties"));
    assert!(at("properties") < at("api_server"));
    m.labels.set(None, None);
    assert!(!m.to_line().unwrap().contains("properties"));
}
