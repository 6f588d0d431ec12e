//! The MMDS requests on the controller (`controller/mmds.rs`), with the harness of
//! [`super::tests`].

use super::tests::{controller, err, json, temp_file, Log};
use super::*;
use crate::resources::{BootSourceConfig, NetworkInterfaceConfig};

/// MMDS: the data store through the API (PUT, PATCH, GET, the size limit as 413), and
/// `PUT /mmds/config` only before boot, against the interfaces configured.
#[test]
fn mmds_requests_reach_the_store() {
    use crate::mmds::{MmdsVersion, OutputFormat};
    use serde_json::json;
    let log = Log::default();
    let mut c = controller(&log);
    c.c.resources
        .network_interfaces
        .push(NetworkInterfaceConfig {
            iface_id: "eth0".into(),
            host_dev_name: "tap0".into(),
            ..Default::default()
        });
    c.c.set_mmds(crate::mmds::shared(64));
    assert_eq!(json(c.handle(ApiRequest::GetMmds)), json!({}));
    let e = c
        .handle(ApiRequest::PatchMmds(json!({"a": 1})))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("PUT /mmds a document before patching"),
        "{e}"
    );
    assert_eq!(RequestError::from(e).status(), 400);
    c.handle(ApiRequest::PutMmds(json!({"a": {"b": "c"}, "d": 1})))
        .unwrap();
    c.handle(ApiRequest::PatchMmds(json!({"d": null, "e": "f"})))
        .unwrap();
    assert_eq!(
        json(c.handle(ApiRequest::GetMmds)),
        json!({"a": {"b": "c"}, "e": "f"})
    );
    let e = c
        .handle(ApiRequest::PutMmds(json!({"big": "x".repeat(64)})))
        .unwrap_err();
    assert!(e.to_string().contains("limited to 64 bytes"), "{e}");
    assert_eq!(RequestError::from(e).status(), 413);
    let cfg = |ifaces: &[&str]| crate::resources::MmdsConfig {
        version: MmdsVersion::V2,
        network_interfaces: ifaces.iter().map(|s| s.to_string()).collect(),
        ipv4_address: None,
        imds_compat: true,
    };
    let e = err(c.handle(ApiRequest::PutMmdsConfig(cfg(&["eth1"]))));
    assert!(e.contains("\"eth1\" is not configured"), "{e}");
    c.handle(ApiRequest::PutMmdsConfig(cfg(&["eth0"]))).unwrap();
    {
        let store = crate::sync::lock(c.c.mmds());
        assert_eq!(store.version(), MmdsVersion::V2);
        assert_eq!(store.read("/a", OutputFormat::Json).unwrap(), "b");
    }
    let vm_config = json(c.handle(ApiRequest::GetVmConfig));
    assert_eq!(vm_config["mmds-config"]["ipv4_address"], "169.254.169.254");
    c.c.resources.boot_source = Some(BootSourceConfig {
        kernel_image_path: temp_file("mmds-kernel"),
        ..Default::default()
    });
    c.handle(ApiRequest::Action(Action::InstanceStart)).unwrap();
    let e = err(c.handle(ApiRequest::PutMmdsConfig(cfg(&["eth0"]))));
    assert!(e.contains("only possible before InstanceStart"), "{e}");
    // The document stays writable while the microVM runs.
    c.handle(ApiRequest::PatchMmds(json!({"e": "g"}))).unwrap();
    assert_eq!(json(c.handle(ApiRequest::GetMmds))["e"], "g");
}
