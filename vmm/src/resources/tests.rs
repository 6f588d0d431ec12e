//! Table-driven tests: every kind of bad config gives its own error naming the field.

use super::*;

fn kernel() -> String {
    // Any regular file will do for validation; the loader checks the image itself.
    std::env::current_exe().unwrap().display().to_string()
}

/// A writable scratch image (a drive opened read-write must not be a running executable).
fn image(name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("kiln-resources-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, vec![0u8; 4096]).unwrap();
    p.display().to_string()
}

fn config(extra: &str) -> String {
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
fn machine_config_patch_changes_only_given_fields() {
    let mut res = VmResources::default();
    res.update_machine_config(parse_json(r#"{"vcpu_count": 4}"#).unwrap())
        .unwrap();
    assert_eq!(res.machine_config.vcpu_count, 4);
    assert_eq!(res.machine_config.mem_size_mib, 128);
    let err = res
        .update_machine_config(parse_json(r#"{"mem_size_mib": 0}"#).unwrap())
        .unwrap_err();
    assert_eq!(err, ResourceError::MemSize(0));
    assert_eq!(
        res.machine_config.vcpu_count, 4,
        "a refused patch changes nothing"
    );
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
