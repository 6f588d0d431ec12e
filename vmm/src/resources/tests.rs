//! Table-driven tests: every kind of bad config gives its own error naming the field.

use super::*;

fn kernel() -> String {
    // Any regular file will do for validation; the loader checks the image itself.
    std::env::current_exe().unwrap().display().to_string()
}

/// A writable scratch image (a drive opened read-write must not be a running executable).
fn image(name: &str) -> String {
    let dir = crate::test_scratch::dir("kiln-resources");
    let p = dir.join(name);
    std::fs::write(&p, vec![0u8; 4096]).unwrap();
    p.display().to_string()
}

pub(super) fn config(extra: &str) -> String {
    format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}"}}{extra}}}"#,
        kernel()
    )
}

#[test]
fn minimal_config_gets_firecracker_defaults() {
    let res = VmResources::from_json(&config("")).unwrap();
    assert_eq!(res.machine_config, MachineConfig::default());
    assert_eq!(res.machine_config.vcpu_count, 1);
    assert_eq!(res.machine_config.mem_size_mib, 128);
    assert!(res.drives.is_empty());
}

#[test]
fn full_config_round_trips_through_vm_config() {
    let text = config(&format!(
        r#", "machine-config": {{"vcpu_count": 2, "mem_size_mib": 64, "smt": false}},
        "drives": [{{"drive_id": "data", "path_on_host": "{k}", "is_root_device": false, "is_read_only": true}},
                   {{"drive_id": "rootfs", "path_on_host": "{root}", "is_root_device": true}}],
        "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:AC:10:00:02"}}],
        "vsock": {{"guest_cid": 3, "uds_path": "/run/v.sock"}}"#,
        k = kernel(),
        root = image("round-trip.img"),
    ));
    let res = VmResources::from_json(&text).unwrap();
    // The root device comes first so the guest sees it as /dev/vda.
    assert_eq!(res.drives[0].drive_id, "rootfs");
    let again = serde_json::to_string(&res.to_config()).unwrap();
    assert_eq!(VmResources::from_json(&again).unwrap(), res);
    assert!(
        again.contains(r#""guest_mac":"06:00:ac:10:00:02""#),
        "{again}"
    );
}

#[test]
fn bad_configs_name_what_is_wrong() {
    let k = kernel();
    let cases: &[(&str, String, &str)] = &[
        ("not json", "{".into(), "invalid JSON"),
        (
            "unknown top-level field",
            config(r#", "baloon": {}"#),
            "unknown field `baloon`",
        ),
        (
            "unknown nested field",
            config(r#", "machine-config": {"vcpu_count": 1, "mem_size_mib": 64, "cpus": 2}"#),
            "unknown field `cpus`",
        ),
        (
            "wrong type",
            config(r#", "machine-config": {"vcpu_count": "two", "mem_size_mib": 64}"#),
            "invalid type",
        ),
        ("missing boot-source", "{}".into(), "boot-source is missing"),
        (
            "missing kernel",
            r#"{"boot-source": {"kernel_image_path": "/nonexistent/vmlinux"}}"#.into(),
            "boot-source: the kernel file \"/nonexistent/vmlinux\" cannot be opened: No such file or directory",
        ),
        (
            "kernel is a directory",
            r#"{"boot-source": {"kernel_image_path": "/"}}"#.into(),
            "boot-source: the kernel file \"/\" cannot be opened: it is a directory, not a regular file",
        ),
        (
            "zero vcpus",
            config(r#", "machine-config": {"vcpu_count": 0, "mem_size_mib": 64}"#),
            "vcpu_count 0 is out of range",
        ),
        (
            "33 vcpus",
            config(r#", "machine-config": {"vcpu_count": 33, "mem_size_mib": 64}"#),
            "vcpu_count 33 is out of range",
        ),
        (
            "odd vcpus with smt",
            config(r#", "machine-config": {"vcpu_count": 3, "mem_size_mib": 64, "smt": true}"#),
            "must be 1 or even",
        ),
        (
            "tiny memory",
            config(r#", "machine-config": {"vcpu_count": 1, "mem_size_mib": 1}"#),
            "mem_size_mib 1 is out of range",
        ),
        (
            "huge memory",
            config(r#", "machine-config": {"vcpu_count": 1, "mem_size_mib": 99999999}"#),
            "mem_size_mib 99999999",
        ),
        (
            "bad template",
            config(
                r#", "machine-config": {"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "Z9"}"#,
            ),
            "unknown variant `Z9`",
        ),
        (
            "bad drive id",
            config(&format!(
                r#", "drives": [{{"drive_id": "a/b", "path_on_host": "{k}", "is_root_device": false}}]"#
            )),
            "drive id \"a/b\" is invalid",
        ),
        (
            "two root drives",
            config(&format!(
                r#", "drives": [{{"drive_id": "a", "path_on_host": "{d}", "is_root_device": true}}, {{"drive_id": "b", "path_on_host": "{d}", "is_root_device": true}}]"#,
                d = image("two-roots.img")
            )),
            "already the root device",
        ),
        (
            "missing drive file",
            config(
                r#", "drives": [{"drive_id": "a", "path_on_host": "/nonexistent.img", "is_root_device": false}]"#,
            ),
            "drives: the backing file \"/nonexistent.img\" cannot be opened: No such file or directory",
        ),
        (
            "bad mac",
            config(
                r#", "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:zz:10:00:02"}]"#,
            ),
            "is not a MAC address",
        ),
        (
            "bad tap name",
            config(
                r#", "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "a-very-long-tap-name"}]"#,
            ),
            "host_dev_name",
        ),
        (
            "same tap twice",
            config(
                r#", "network-interfaces": [{"iface_id": "a", "host_dev_name": "tap0"}, {"iface_id": "b", "host_dev_name": "tap0"}]"#,
            ),
            "already used by interface \"a\"",
        ),
        (
            "reserved cid",
            config(r#", "vsock": {"guest_cid": 2, "uds_path": "/v.sock"}"#),
            "guest_cid 2 is invalid",
        ),
    ];
    for (name, text, want) in cases {
        let err = VmResources::from_json(text).expect_err(name).to_string();
        assert!(
            err.contains(want),
            "{name}: error {err:?} does not contain {want:?}"
        );
    }
}

#[test]
fn path_id_must_match_body_id() {
    let mut res = VmResources::default();
    let d: DriveConfig = parse_json(&format!(
        r#"{{"drive_id": "rootfs", "path_on_host": "{}", "is_root_device": true}}"#,
        kernel()
    ))
    .unwrap();
    let err = res.put_drive(Some("other"), d).unwrap_err().to_string();
    assert!(err.contains("differs"), "{err}");
}

/// Every optional field of Firecracker's spec given as an explicit `null`, every list
/// section empty, every section of its `FullVmConfiguration` present: accepted, and the
/// same as leaving them out.
#[test]
fn explicit_nulls_and_empty_lists_mean_absent() {
    let full_of_nulls = format!(
        r#"{{
        "boot-source": {{"kernel_image_path": "{k}", "boot_args": null, "initrd_path": null}},
        "machine-config": {{"vcpu_count": 1, "mem_size_mib": 128, "smt": null,
                            "track_dirty_pages": null, "cpu_template": null, "huge_pages": null}},
        "drives": [{{"drive_id": "rootfs", "path_on_host": "{d}", "is_root_device": true,
                     "partuuid": null, "cache_type": null, "is_read_only": null,
                     "rate_limiter": null, "io_engine": null, "socket": null}}],
        "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": null,
                                 "mtu": null, "rx_rate_limiter": null, "tx_rate_limiter": null}}],
        "vsock": {{"vsock_id": null, "guest_cid": 3, "uds_path": "/run/kiln-null-test.sock"}},
        "logger": {{"log_path": null, "level": null, "show_level": null, "show_log_origin": null,
                    "module": null}},
        "metrics": {{"metrics_path": "/dev/null", "emit_id": null, "properties": null}},
        "balloon": null, "cpu-config": null, "mmds-config": null, "entropy": null,
        "pmem": [], "memory-hotplug": null
    }}"#,
        k = kernel(),
        d = image("nulls.img"),
    );
    let with_nulls = VmResources::from_json(&full_of_nulls).unwrap();
    let without = VmResources::from_json(&format!(
        r#"{{
        "boot-source": {{"kernel_image_path": "{k}"}},
        "machine-config": {{"vcpu_count": 1, "mem_size_mib": 128}},
        "drives": [{{"drive_id": "rootfs", "path_on_host": "{d}", "is_root_device": true}}],
        "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "tap0"}}],
        "vsock": {{"guest_cid": 3, "uds_path": "/run/kiln-null-test.sock"}},
        "logger": {{}},
        "metrics": {{"metrics_path": "/dev/null"}}
    }}"#,
        k = kernel(),
        d = image("nulls.img"),
    ))
    .unwrap();
    assert_eq!(with_nulls, without);
    // Lists may be null or empty.
    for lists in [
        r#", "drives": [], "network-interfaces": [], "pmem": []"#,
        r#", "drives": null, "network-interfaces": null, "pmem": null"#,
    ] {
        let res = VmResources::from_json(&config(lists)).unwrap();
        assert!(res.drives.is_empty() && res.network_interfaces.is_empty());
    }
}

/// Sections and fields of the spec for features Kiln does not have yet: refused naming the
/// feature, never as an unknown field.
#[test]
fn spec_features_kiln_lacks_are_refused_by_name() {
    let d = image("not-yet.img");
    let drive = |extra: &str| {
        config(&format!(
            r#", "drives": [{{"drive_id": "a", "path_on_host": "{d}", "is_root_device": false{extra}}}]"#
        ))
    };
    let cases: Vec<(String, &str)> = vec![(
        drive(r#", "socket": "/run/vhost.sock""#),
        "drives: a vhost-user block backend (socket) is not supported by Kiln yet",
    )];
    // Free page hinting and reporting, memory-hotplug (memory_hotplug_section_round_trips)
    // and the pmem section (resources/pmem.rs's tests) were in this list; Kiln has them now.
    let r = VmResources::from_json(&config(
        r#", "balloon": {"amount_mib": 0, "deflate_on_oom": false, "free_page_reporting": true, "free_page_hinting": true}"#,
    ))
    .unwrap();
    let b = r.balloon.unwrap();
    assert!(b.free_page_reporting && b.free_page_hinting);
    for (text, want) in &cases {
        let err = VmResources::from_json(text).expect_err(want).to_string();
        assert!(err.contains(want), "{err:?} lacks {want:?}");
        assert!(!err.contains("unknown field"), "{err}");
    }
    // A drive without path_on_host (a vhost-user drive's shape) is named.
    let err = VmResources::from_json(&config(
        r#", "drives": [{"drive_id": "a", "is_root_device": false}]"#,
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("drive \"a\" has no path_on_host"), "{err}");
}

/// The fields and sections of the devices Kiln has (rate limiters, `mtu`, `entropy`,
/// `cpu-config`, Kiln's `serial`) take explicit `null`s like every other optional field,
/// inside them too, and `null` is the same as leaving them out.
#[test]
fn device_fields_take_nulls_too() {
    let d = image("device-nulls.img");
    let with_nulls = VmResources::from_json(&config(&format!(
        r#", "drives": [{{"drive_id": "a", "path_on_host": "{d}", "is_root_device": false,
                         "rate_limiter": {{"bandwidth": null,
                                           "ops": {{"size": 1, "one_time_burst": null, "refill_time": 1}}}}}}],
        "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "tap0", "mtu": null,
                                 "rx_rate_limiter": {{"bandwidth": null, "ops": null}},
                                 "tx_rate_limiter": null}}],
        "entropy": {{"rate_limiter": null}},
        "serial": {{"serial_out_path": null, "rate_limiter": null}},
        "cpu-config": {{"kvm_capabilities": null, "cpuid_modifiers": null, "msr_modifiers": null,
                        "reg_modifiers": null, "vcpu_features": null}}"#
    )))
    .unwrap();
    let without = VmResources::from_json(&config(&format!(
        r#", "drives": [{{"drive_id": "a", "path_on_host": "{d}", "is_root_device": false,
                         "rate_limiter": {{"ops": {{"size": 1, "refill_time": 1}}}}}}],
        "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "tap0",
                                 "rx_rate_limiter": {{}}}}],
        "entropy": {{}}, "serial": {{}}, "cpu-config": {{}}"#
    )))
    .unwrap();
    assert_eq!(with_nulls, without);
    assert!(with_nulls.entropy.is_some() && with_nulls.serial.is_some());
    assert!(with_nulls.cpu_config.is_some());
    assert_eq!(
        with_nulls.drives[0].rate_limiter.unwrap().ops.unwrap().size,
        1
    );
    // Sections given as null configure nothing.
    let res = VmResources::from_json(&config(
        r#", "entropy": null, "serial": null, "cpu-config": null"#,
    ))
    .unwrap();
    assert!(res.entropy.is_none() && res.serial.is_none() && res.cpu_config.is_none());
    // The update bodies take the spec's fields, with nulls.
    let upd: DriveUpdate =
        parse_json(r#"{"drive_id": "a", "path_on_host": null, "rate_limiter": null}"#).unwrap();
    assert_eq!(upd.validated(Some("a")).unwrap().rate_limiter, None);
    let upd: DriveUpdate = parse_json(
        r#"{"drive_id": "a", "rate_limiter": {"bandwidth": null, "ops": {"size": 1, "refill_time": 1}}}"#,
    )
    .unwrap();
    let limiter = upd.validated(Some("a")).unwrap().rate_limiter.unwrap();
    assert_eq!((limiter.bandwidth, limiter.ops.unwrap().size), (None, 1));
    let upd: NetworkInterfaceUpdate =
        parse_json(r#"{"iface_id": "eth0", "rx_rate_limiter": null, "tx_rate_limiter": null}"#)
            .unwrap();
    let upd = upd.validated(Some("eth0")).unwrap();
    assert_eq!((upd.rx_rate_limiter, upd.tx_rate_limiter), (None, None));
    let upd: NetworkInterfaceUpdate =
        parse_json(r#"{"iface_id": "eth0", "tx_rate_limiter": {}}"#).unwrap();
    assert_eq!(
        upd.validated(Some("eth0")).unwrap().tx_rate_limiter,
        Some(RateLimiterConfig::default())
    );
}

#[test]
fn every_x86_64_value_of_the_spec_enums_is_accepted() {
    for t in ["None", "C3", "T2", "T2S", "T2CL", "T2A", "Baseline"] {
        let text = config(&format!(
            r#", "machine-config": {{"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "{t}"}}"#
        ));
        let res = VmResources::from_json(&text).unwrap_or_else(|e| panic!("{t}: {e}"));
        let back = serde_json::to_value(&res.machine_config).unwrap();
        assert_eq!(back["cpu_template"], t);
    }
    for (h, mem) in [("None", 64), ("Transparent", 64), ("2M", 64)] {
        let text = config(&format!(
            r#", "machine-config": {{"vcpu_count": 1, "mem_size_mib": {mem}, "huge_pages": "{h}"}}"#
        ));
        let res = VmResources::from_json(&text).unwrap_or_else(|e| panic!("{h}: {e}"));
        assert_eq!(
            serde_json::to_value(res.machine_config).unwrap()["huge_pages"],
            h
        );
    }
    let err = VmResources::from_json(&config(
        r#", "machine-config": {"vcpu_count": 1, "mem_size_mib": 65, "huge_pages": "2M"}"#,
    ))
    .unwrap_err();
    assert_eq!(err, ResourceError::HugePagesMemSize(65));
    for (engine, cache) in [("Sync", "Unsafe"), ("Async", "Writeback")] {
        let text = config(&format!(
            r#", "drives": [{{"drive_id": "a", "path_on_host": "{}", "is_root_device": false, "io_engine": "{engine}", "cache_type": "{cache}"}}]"#,
            image("engines.img")
        ));
        VmResources::from_json(&text).unwrap_or_else(|e| panic!("{engine}: {e}"));
    }
    // Values outside the spec are still named.
    let err = VmResources::from_json(&config(
        r#", "machine-config": {"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "V1N1"}"#,
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown variant `V1N1`"), "{err}");
}

#[test]
fn metrics_take_emit_id_and_properties() {
    let m: MetricsConfig =
        parse_json(r#"{"metrics_path": "/m", "emit_id": true, "properties": {"customer": "42"}}"#)
            .unwrap();
    assert!(m.emit_id);
    assert_eq!(m.properties.unwrap()["customer"], "42");
    let m: MetricsConfig = parse_json(r#"{"metrics_path": "/m"}"#).unwrap();
    assert!(!m.emit_id && m.properties.is_none());
    let err = parse_json::<MetricsConfig>(r#"{"metrics_path": "/m", "properties": {"a": 1}}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid type"), "{err}");
}

/// `GET /vm/config` has every section of Firecracker's `FullVmConfiguration`, `null` or `[]`
/// when unset, and reads back as a config file.
/// `mmds-config`: Firecracker's fields and defaults, its refusals, and `GET /vm/config`
/// writing the address in use.
#[test]
fn mmds_config_is_checked_against_the_interfaces() {
    let net = r#", "network-interfaces": [{"iface_id": "1", "host_dev_name": "tap0"}]"#;
    let res = VmResources::from_json(&config(&format!(
        r#"{net}, "mmds-config": {{"network_interfaces": ["1"]}}"#
    )))
    .unwrap();
    let v = serde_json::to_value(res.to_config()).unwrap();
    assert_eq!(
        v["mmds-config"],
        serde_json::json!({"version": "V1", "network_interfaces": ["1"],
                           "ipv4_address": "169.254.169.254", "imds_compat": false})
    );
    let res = VmResources::from_json(&config(&format!(
        r#"{net}, "mmds-config": {{"network_interfaces": ["1"], "ipv4_address": "169.254.169.250",
                                   "version": "V2", "imds_compat": true}}"#
    )))
    .unwrap();
    let m = res.mmds_config.unwrap();
    assert_eq!(
        (m.version, m.address(), m.imds_compat),
        (
            crate::mmds::MmdsVersion::V2,
            "169.254.169.250".parse().unwrap(),
            true
        )
    );
    for (mmds, want) in [
        (
            r#"{"network_interfaces": []}"#,
            "mmds-config: network_interfaces is empty",
        ),
        (
            r#"{"network_interfaces": ["2"]}"#,
            "mmds-config: network interface \"2\" is not configured",
        ),
        (
            r#"{"network_interfaces": ["1"], "ipv4_address": "10.0.0.1"}"#,
            "mmds-config: ipv4_address 10.0.0.1 is not a usable link-local address",
        ),
        (
            r#"{"network_interfaces": ["1"], "ipv4_address": "169.254.0.1"}"#,
            "mmds-config: ipv4_address 169.254.0.1 is not",
        ),
        (
            r#"{"network_interfaces": ["1"], "version": "V3"}"#,
            "unknown variant `V3`",
        ),
        (
            r#"{"network_interfaces": ["1"], "ipv4_address": ""}"#,
            "invalid JSON",
        ),
        (r#"{"version": "V2"}"#, "missing field `network_interfaces`"),
        (
            r#"{"network_interfaces": ["1"], "x": 1}"#,
            "unknown field `x`",
        ),
    ] {
        let err = VmResources::from_json(&config(&format!(r#"{net}, "mmds-config": {mmds}"#)))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{mmds}: {err}");
    }
}

#[test]
fn vm_config_has_firecracker_sections() {
    let res = VmResources::from_json(&config("")).unwrap();
    let v = serde_json::to_value(res.to_config()).unwrap();
    for key in [
        "boot-source",
        "machine-config",
        "drives",
        "network-interfaces",
        "vsock",
        "logger",
        "metrics",
        "balloon",
        "cpu-config",
        "mmds-config",
        "entropy",
        "pmem",
        "memory-hotplug",
    ] {
        assert!(v.get(key).is_some(), "GET /vm/config lacks {key}: {v}");
    }
    for key in ["balloon", "cpu-config", "entropy"] {
        assert_eq!(v[key], serde_json::Value::Null, "{key}: {v}");
    }
    assert_eq!(v["pmem"], serde_json::json!([]));
    assert_eq!(v["boot-source"]["initrd_path"], serde_json::Value::Null);
    // Kiln's own section is written only when set: the answer stays a file Firecracker reads.
    assert!(v.get("serial").is_none(), "{v}");
    let again = VmResources::from_json(&v.to_string()).unwrap();
    assert_eq!(again, res);
    // With the devices set, each is shown (null inside where unset) and reads back.
    let d = image("vm-config-devices.img");
    let res = VmResources::from_json(&config(&format!(
        r#", "drives": [{{"drive_id": "a", "path_on_host": "{d}", "is_root_device": false,
                         "rate_limiter": {{"ops": {{"size": 10, "refill_time": 100}}}}}}],
        "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 1400}}],
        "entropy": {{"rate_limiter": {{"bandwidth": {{"size": 4096, "refill_time": 1000}}}}}},
        "serial": {{"rate_limiter": {{"size": 100, "refill_time": 10}}}},
        "cpu-config": {{"msr_modifiers": [{{"addr": "0x10", "bitmap": "0b1"}}]}}"#
    )))
    .unwrap();
    let v = serde_json::to_value(res.to_config()).unwrap();
    assert_eq!(
        v["drives"][0]["rate_limiter"],
        serde_json::json!({"bandwidth": null,
                           "ops": {"size": 10, "one_time_burst": null, "refill_time": 100}})
    );
    let n = &v["network-interfaces"][0];
    assert_eq!(n["mtu"], 1400);
    assert_eq!(n["rx_rate_limiter"], serde_json::Value::Null, "{n}");
    assert_eq!(
        v["entropy"]["rate_limiter"]["bandwidth"]["size"], 4096,
        "{v}"
    );
    assert_eq!(
        v["serial"],
        serde_json::json!({"serial_out_path": null,
                           "rate_limiter": {"size": 100, "one_time_burst": null, "refill_time": 10}})
    );
    assert_eq!(v["cpu-config"]["msr_modifiers"][0]["addr"], "0x10", "{v}");
    let again = VmResources::from_json(&v.to_string()).unwrap();
    assert_eq!(again, res);
}

/// A file named by the configuration is opened when it is accepted: the kernel opened then
/// is the one used, even if its path is removed or replaced before `InstanceStart`.
#[test]
fn files_are_opened_when_accepted_and_kept() {
    let k = image("kept-kernel");
    std::fs::write(&k, b"the accepted kernel").unwrap();
    let mut res = VmResources::default();
    res.set_boot_source(parse_json(&format!(r#"{{"kernel_image_path": "{k}"}}"#)).unwrap())
        .unwrap();
    std::fs::remove_file(&k).unwrap();
    std::fs::write(&k, b"a replacement").unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut res.boot_source.as_ref().unwrap().kernel_file().unwrap(),
        &mut text,
    )
    .unwrap();
    assert_eq!(text, "the accepted kernel");
    // A read-write drive on a read-only file is refused at once.
    let ro = image("read-only.img");
    let mut perms = std::fs::metadata(&ro).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
    std::fs::set_permissions(&ro, perms).unwrap();
    let d: DriveConfig = parse_json(&format!(
        r#"{{"drive_id": "a", "path_on_host": "{ro}", "is_root_device": false, "is_read_only": true}}"#
    ))
    .unwrap();
    res.put_drive(Some("a"), d).unwrap();
    // A vsock socket path whose directory does not exist, or where a file already is.
    let v: VsockConfig =
        parse_json(r#"{"guest_cid": 3, "uds_path": "/nonexistent-dir/v.sock"}"#).unwrap();
    let err = res.set_vsock(v).unwrap_err().to_string();
    assert!(err.contains("directory /nonexistent-dir"), "{err}");
    let v: VsockConfig = parse_json(&format!(r#"{{"guest_cid": 3, "uds_path": "{ro}"}}"#)).unwrap();
    let err = res.set_vsock(v).unwrap_err().to_string();
    assert!(err.contains("a file already exists there"), "{err}");
}

/// `memory-hotplug`: taken with Firecracker's defaults, refused with its limits, shown by
/// `GET /vm/config` and read back from it.
#[test]
fn memory_hotplug_section_round_trips() {
    let r =
        VmResources::from_json(&config(r#", "memory-hotplug": {"total_size_mib": 1024}"#)).unwrap();
    let m = r.memory_hotplug.unwrap();
    assert_eq!(
        (m.total_size_mib, m.block_size_mib, m.slot_size_mib),
        (1024, 2, 128)
    );
    let v = serde_json::to_value(r.to_config()).unwrap();
    assert_eq!(
        v["memory-hotplug"],
        serde_json::json!({"total_size_mib": 1024, "block_size_mib": 2, "slot_size_mib": 128})
    );
    assert_eq!(VmResources::from_json(&v.to_string()).unwrap(), r);
    let err = VmResources::from_json(&config(
        r#", "memory-hotplug": {"total_size_mib": 1024, "block_size_mib": 3}"#,
    ))
    .unwrap_err()
    .to_string();
    assert_eq!(err, "memory-hotplug: block_size_mib 3 is not a power of 2");
}
