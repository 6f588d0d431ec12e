//! Machine configuration: `PATCH /machine-config` and the optional in-kernel PIT.

use super::tests::config;
use super::*;

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
fn the_pit_is_on_unless_the_machine_config_says_false_and_reads_back_only_when_off() {
    let mc = |extra: &str| {
        VmResources::from_json(&config(&format!(
            r#", "machine-config": {{"vcpu_count": 1, "mem_size_mib": 64{extra}}}"#
        )))
        .unwrap()
    };
    assert!(MachineConfig::default().pit);
    assert!(mc("").machine_config.pit);
    assert!(mc(r#", "pit": null"#).machine_config.pit);
    assert!(mc(r#", "pit": true"#).machine_config.pit);
    let off = mc(r#", "pit": false"#);
    assert!(!off.machine_config.pit);
    let written = serde_json::to_string(&off.to_config()).unwrap();
    assert!(written.contains(r#""pit":false"#), "{written}");
    assert_eq!(VmResources::from_json(&written).unwrap(), off);
    // A default machine writes back what it did before the field existed.
    let written = serde_json::to_string(&mc("").machine_config).unwrap();
    assert!(!written.contains("pit"), "{written}");
    let patched = MachineConfig::default().apply(MachineConfigUpdate {
        pit: Some(false),
        ..Default::default()
    });
    assert!(!patched.pit);
    assert_eq!(patched.vcpu_count, MachineConfig::default().vcpu_count);
}
