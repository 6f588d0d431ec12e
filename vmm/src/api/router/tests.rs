use super::*;

fn req(method: Method, path: &str, body: Option<&str>) -> Request {
    Request {
        method,
        path: path.to_string(),
        query: String::new(),
        headers: Vec::new(),
        body: body.map(|b| b.as_bytes().to_vec()),
        keep_alive: true,
    }
}

fn ok(method: Method, path: &str, body: Option<&str>) -> ApiRequest {
    match route(&req(method.clone(), path, body)) {
        (_, Ok(r)) => r,
        (_, Err(e)) => panic!("{method:?} {path} {body:?}: {e:?}"),
    }
}

fn refused(method: Method, path: &str, body: Option<&str>) -> RouteError {
    match route(&req(method.clone(), path, body)) {
        (_, Ok(r)) => panic!("{method:?} {path} {body:?} was routed to {r:?}"),
        (_, Err(e)) => e,
    }
}

#[test]
fn table_of_routed_requests() {
    use Method::*;
    let cases: Vec<(Method, &str, Option<&str>, ApiRequest)> = vec![
        (Get, "/", None, ApiRequest::GetInstanceInfo),
        (
            Patch,
            "/balloon/hinting/start",
            None,
            ApiRequest::StartBalloonHinting(HintingStart {
                acknowledge_on_stop: true,
            }),
        ),
        (
            Patch,
            "/balloon/hinting/start",
            Some(""),
            ApiRequest::StartBalloonHinting(HintingStart {
                acknowledge_on_stop: true,
            }),
        ),
        (
            Patch,
            "/balloon/hinting/start",
            Some(r#"{"acknowledge_on_stop": false}"#),
            ApiRequest::StartBalloonHinting(HintingStart {
                acknowledge_on_stop: false,
            }),
        ),
        (
            Get,
            "/balloon/hinting/status",
            None,
            ApiRequest::GetBalloonHintingStatus,
        ),
        (
            Patch,
            "/balloon/hinting/stop",
            None,
            ApiRequest::StopBalloonHinting,
        ),
        (
            Patch,
            "/balloon/hinting/stop",
            Some("{}"),
            ApiRequest::StopBalloonHinting,
        ),
        (Get, "/version", None, ApiRequest::GetVersion),
        (Get, "/machine-config", None, ApiRequest::GetMachineConfig),
        (Get, "/machine-config/", None, ApiRequest::GetMachineConfig),
        (Get, "/vm/config", None, ApiRequest::GetVmConfig),
        (Get, "/mmds", None, ApiRequest::GetMmds),
        (
            Put,
            "/mmds",
            Some(r#"{"latest": {"meta-data": {"ami-id": "x"}}}"#),
            ApiRequest::PutMmds(serde_json::json!({"latest": {"meta-data": {"ami-id": "x"}}})),
        ),
        (
            Patch,
            "/mmds",
            Some(r#"{"a": null}"#),
            ApiRequest::PatchMmds(serde_json::json!({"a": null})),
        ),
        (
            Put,
            "/mmds/config",
            Some(r#"{"network_interfaces": ["eth0"], "version": "V2"}"#),
            ApiRequest::PutMmdsConfig(MmdsConfig {
                version: crate::mmds::MmdsVersion::V2,
                network_interfaces: vec!["eth0".into()],
                ipv4_address: None,
                imds_compat: false,
            }),
        ),
        (
            Put,
            "/machine-config",
            Some(r#"{"vcpu_count": 2, "mem_size_mib": 256}"#),
            ApiRequest::PutMachineConfig(MachineConfig {
                vcpu_count: 2,
                mem_size_mib: 256,
                ..Default::default()
            }),
        ),
        (
            Patch,
            "/machine-config",
            Some(r#"{"mem_size_mib": 64}"#),
            ApiRequest::PatchMachineConfig(MachineConfigUpdate {
                mem_size_mib: Some(64),
                ..Default::default()
            }),
        ),
        (
            Put,
            "/boot-source",
            Some(r#"{"kernel_image_path": "/k", "boot_args": "console=ttyS0"}"#),
            ApiRequest::PutBootSource(BootSourceConfig {
                kernel_image_path: "/k".into(),
                boot_args: Some("console=ttyS0".into()),
                initrd_path: None,
                ..Default::default()
            }),
        ),
        (
            Patch,
            "/drives/rootfs",
            Some(r#"{"drive_id": "rootfs", "path_on_host": "/x"}"#),
            ApiRequest::PatchDrive {
                path_id: "rootfs".into(),
                update: DriveUpdate {
                    drive_id: "rootfs".into(),
                    path_on_host: Some("/x".into()),
                    ..Default::default()
                },
            },
        ),
        (
            Patch,
            "/network-interfaces/eth0",
            Some(r#"{"iface_id": "eth0"}"#),
            ApiRequest::PatchNetworkInterface {
                path_id: "eth0".into(),
                update: NetworkInterfaceUpdate {
                    iface_id: "eth0".into(),
                    ..Default::default()
                },
            },
        ),
        (
            Put,
            "/vsock",
            Some(r#"{"guest_cid": 3, "uds_path": "/v.sock"}"#),
            ApiRequest::PutVsock(VsockConfig {
                vsock_id: None,
                guest_cid: 3,
                uds_path: "/v.sock".into(),
            }),
        ),
        (
            Put,
            "/metrics",
            Some(r#"{"metrics_path": "/m"}"#),
            ApiRequest::PutMetrics(MetricsConfig {
                metrics_path: "/m".into(),
                ..Default::default()
            }),
        ),
        (
            Put,
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#),
            ApiRequest::Action(Action::InstanceStart),
        ),
        (
            Put,
            "/actions",
            Some(r#"{"action_type": "SendCtrlAltDel"}"#),
            ApiRequest::Action(Action::SendCtrlAltDel),
        ),
        (
            Put,
            "/actions",
            Some(r#"{"action_type": "FlushMetrics"}"#),
            ApiRequest::Action(Action::FlushMetrics),
        ),
        (
            Patch,
            "/vm",
            Some(r#"{"state": "Paused"}"#),
            ApiRequest::PatchVm(VmStateChange::Paused),
        ),
        (
            Put,
            "/entropy",
            Some("{}"),
            ApiRequest::PutEntropy(EntropyConfig::default()),
        ),
        (
            Put,
            "/serial",
            Some(r#"{"serial_out_path": "/s"}"#),
            ApiRequest::PutSerial(SerialConfig {
                serial_out_path: Some("/s".into()),
                rate_limiter: None,
            }),
        ),
        (
            Put,
            "/cpu-config",
            Some(r#"{"cpuid_modifiers": []}"#),
            ApiRequest::PutCpuConfig(CpuConfig {
                cpuid_modifiers: Some(Vec::new()),
                ..Default::default()
            }),
        ),
        (
            Patch,
            "/vm",
            Some(r#"{"state": "Resumed"}"#),
            ApiRequest::PatchVm(VmStateChange::Resumed),
        ),
    ];
    for (method, path, body, want) in cases {
        assert_eq!(ok(method.clone(), path, body), want, "{method:?} {path}");
    }
    // Bodies whose types are only checked here: drives, interfaces, logger.
    assert!(matches!(
        ok(Put, "/drives/rootfs", Some(r#"{"drive_id":"rootfs","path_on_host":"/r","is_root_device":true}"#)),
        ApiRequest::PutDrive { path_id, config } if path_id == "rootfs" && config.is_root_device
    ));
    assert!(matches!(
        ok(Put, "/network-interfaces/net1", Some(r#"{"iface_id":"net1","guest_mac":"06:00:AC:10:00:02","host_dev_name":"tap0"}"#)),
        ApiRequest::PutNetworkInterface { path_id, .. } if path_id == "net1"
    ));
    assert!(matches!(
        ok(
            Put,
            "/logger",
            Some(r#"{"log_path":"/l","level":"Debug","show_level":true,"show_log_origin":true}"#)
        ),
        ApiRequest::PutLogger(_)
    ));
    assert!(matches!(
        ok(
            Put,
            "/snapshot/create",
            Some(r#"{"snapshot_type":"Diff","snapshot_path":"s","mem_file_path":"m"}"#)
        ),
        ApiRequest::PutSnapshotCreate(_)
    ));
    assert!(matches!(
        ok(
            Put,
            "/snapshot/load",
            Some(
                r#"{"snapshot_path":"s","mem_backend":{"backend_type":"File","backend_path":"m"},"resume_vm":true}"#
            )
        ),
        ApiRequest::PutSnapshotLoad(_)
    ));
}

#[test]
fn table_of_refused_requests() {
    use Method::*;
    let delete = || Other("DELETE".to_string());
    // Every refusal is 400, as Firecracker answers. First the paths and verbs Kiln does not
    // serve (counted as unknown requests): (method, path, body, Allow header, a word the
    // message must contain).
    type Unknown<'a> = (Method, &'a str, Option<&'a str>, Option<&'a str>, &'a str);
    let unknown: Vec<Unknown> = vec![
        (Get, "/nope", None, None, "no such path"),
        (Get, "/drives/a/b", None, None, "no such path"),
        (Put, "/mmds/other", Some("{}"), None, "no such path"),
        (Get, "/mmds/config", None, Some("PUT"), "allowed: PUT"),
        (
            delete(),
            "/mmds",
            None,
            Some("GET, PUT, PATCH"),
            "allowed: GET, PUT, PATCH",
        ),
        (Get, "/snapshot/load", None, Some("PUT"), "allowed: PUT"),
        (Put, "/snapshot/delete", Some("{}"), None, "no such path"),
        (
            Get,
            "/balloon/hinting/start",
            None,
            Some("PATCH"),
            "allowed: PATCH",
        ),
        (
            Patch,
            "/balloon/hinting/status",
            Some("{}"),
            Some("GET"),
            "allowed: GET",
        ),
        (
            Put,
            "/balloon/hinting/stop",
            Some("{}"),
            Some("PATCH"),
            "allowed: PATCH",
        ),
        (Patch, "/balloon/hinting", None, None, "no such path"),
        (Get, "/balloon/hinting/other", None, None, "no such path"),
        (
            Put,
            "/balloon/statistics",
            Some("{}"),
            Some("GET, PATCH"),
            "allowed: GET, PATCH",
        ),
        (Put, "/balloon/x", Some("{}"), None, "no such path"),
        (Get, "/vm/config/x", None, None, "no such path"),
        (Put, "/", Some("{}"), Some("GET"), "allowed: GET"),
        (
            Post("POST"),
            "/actions",
            Some("{}"),
            Some("PUT"),
            "allowed: PUT",
        ),
        (
            delete(),
            "/drives/x",
            None,
            None,
            "hot-unplugging devices is not supported by Kiln yet",
        ),
        (
            delete(),
            "/network-interfaces/x",
            None,
            None,
            "hot-unplugging devices",
        ),
        (
            delete(),
            "/machine-config",
            None,
            Some("GET, PUT, PATCH"),
            "allowed",
        ),
        (Get, "/boot-source", None, Some("PUT"), "allowed: PUT"),
        (Get, "/vm", None, Some("PATCH"), "allowed: PATCH"),
        (Put, "/vm", Some("{}"), Some("PATCH"), "allowed: PATCH"),
        (Get, "/entropy", None, Some("PUT"), "allowed: PUT"),
        (Patch, "/serial", Some("{}"), Some("PUT"), "allowed: PUT"),
        (Get, "/cpu-config", None, Some("PUT"), "allowed: PUT"),
    ];
    for (method, path, body, allow, word) in unknown {
        let e = refused(method.clone(), path, body);
        assert_eq!(e.status, 400, "{method:?} {path} {body:?}: {e:?}");
        assert!(e.unknown, "{method:?} {path}: {e:?}");
        assert_eq!(e.allow, allow, "{method:?} {path}");
        assert!(
            e.message.contains(word),
            "{method:?} {path} {body:?}: {:?} lacks {word:?}",
            e.message
        );
    }
    // Then bad requests on paths Kiln serves: (method, path, body, status, word).
    let cases: Vec<(Method, &str, Option<&str>, u16, &str)> = vec![
        (
            Patch,
            "/balloon/hinting/start",
            Some(r#"{"acknowledge_on_stop": "yes"}"#),
            400,
            "expected a boolean",
        ),
        (
            Patch,
            "/balloon/hinting/start",
            Some("not json"),
            400,
            "invalid JSON",
        ),
        (
            Put,
            "/entropy",
            Some(r#"{"rate_limiter": {"bytes": 1}}"#),
            400,
            "unknown field `bytes`",
        ),
        (
            Put,
            "/cpu-config",
            Some(r#"{"msr_modifiers": [{"addr": "0x10", "bitmap": "0b2"}]}"#),
            400,
            "has '2'",
        ),
        (Get, "/", Some("{}"), 400, "cannot have a body"),
        (Put, "/actions", None, 400, "Content-Length"),
        (Patch, "/vm", None, 400, "Content-Length"),
        (Put, "/drives", Some("{}"), 400, "drive id"),
        (
            Put,
            "/network-interfaces/",
            Some("{}"),
            400,
            "network interface id",
        ),
        (Put, "/actions", Some("{"), 400, "invalid JSON"),
        (
            Put,
            "/actions",
            Some(r#"{"action_type": "Explode"}"#),
            400,
            "unknown variant",
        ),
        (
            Put,
            "/actions",
            Some(r#"{"action_type": "InstanceStart", "x": 1}"#),
            400,
            "unknown field",
        ),
        (
            Put,
            "/actions",
            Some("{}"),
            400,
            "missing field `action_type`",
        ),
        (
            Put,
            "/machine-config",
            Some(r#"{"vcpu_count": "2", "mem_size_mib": 1}"#),
            400,
            "invalid type",
        ),
        (
            Put,
            "/machine-config",
            Some(r#"{"vcpu_count": 300, "mem_size_mib": 1}"#),
            400,
            "invalid value",
        ),
        (
            Put,
            "/machine-config",
            Some(r#"{"vcpu_count": 1, "mem_size_mib": 1, "foo": 1}"#),
            400,
            "unknown field `foo`",
        ),
        (
            Put,
            "/boot-source",
            Some(r#"{"boot_args": "x"}"#),
            400,
            "kernel_image_path",
        ),
        (
            Patch,
            "/vm",
            Some(r#"{"state": "Stopped"}"#),
            400,
            "unknown variant",
        ),
        (
            Put,
            "/network-interfaces/n",
            Some(r#"{"iface_id":"n","host_dev_name":"t","guest_mac":"zz"}"#),
            400,
            "not a MAC",
        ),
        (
            Put,
            "/logger",
            Some(r#"{"level": "Loud"}"#),
            400,
            "unknown variant",
        ),
        (Put, "/metrics", Some("42"), 400, "invalid type"),
    ];
    for (method, path, body, status, word) in cases {
        let e = refused(method.clone(), path, body);
        assert_eq!(e.status, status, "{method:?} {path} {body:?}: {e:?}");
        assert!(
            e.message.contains(word),
            "{method:?} {path} {body:?}: {:?} lacks {word:?}",
            e.message
        );
        assert!(e.allow.is_none() && !e.unknown, "{method:?} {path}: {e:?}");
    }
    let e = refused(Put, "/actions", None);
    assert!(e.message.starts_with("PUT /actions"), "{}", e.message);
    let bad_utf8 = Request {
        method: Put,
        path: "/vm".into(),
        query: String::new(),
        headers: Vec::new(),
        body: Some(vec![0xff]),
        keep_alive: true,
    };
    // /vm refuses PUT before looking at the body.
    let e = route(&bad_utf8).1.unwrap_err();
    assert!(e.unknown && e.allow == Some("PATCH"), "{e:?}");
    let bad_utf8 = Request {
        method: Patch,
        path: "/vm".into(),
        query: String::new(),
        headers: Vec::new(),
        body: Some(vec![0xff]),
        keep_alive: true,
    };
    assert!(route(&bad_utf8).1.unwrap_err().message.contains("UTF-8"));
}

#[allow(non_snake_case)]
fn Post(s: &str) -> Method {
    Method::Other(s.to_string())
}

#[test]
fn every_endpoint_verb_pair_has_counters() {
    for (m, p) in [
        (Method::Get, "/"),
        (Method::Get, "/version"),
        (Method::Get, "/machine-config"),
        (Method::Put, "/machine-config"),
        (Method::Patch, "/machine-config"),
        (Method::Put, "/boot-source"),
        (Method::Put, "/drives/x"),
        (Method::Patch, "/drives/x"),
        (Method::Put, "/network-interfaces/x"),
        (Method::Patch, "/network-interfaces/x"),
        (Method::Put, "/vsock"),
        (Method::Put, "/actions"),
        (Method::Put, "/logger"),
        (Method::Put, "/metrics"),
        (Method::Put, "/entropy"),
        (Method::Put, "/serial"),
        (Method::Put, "/cpu-config"),
        (Method::Get, "/vm/config"),
        (Method::Patch, "/vm"),
    ] {
        let (e, _) = endpoint(p).unwrap();
        assert!(e.accepts(&m), "{m:?} {p}");
        assert!(counters(e, &m).is_some(), "{m:?} {p}");
    }
}
