use super::*;
use crate::resources::{
    BootSourceConfig, CpuConfig, CpuTemplate, DriveConfig, DriveUpdate, EntropyConfig,
    MachineConfig, MachineConfigUpdate, NetworkInterfaceConfig, NetworkInterfaceUpdate,
    SerialConfig, TokenBucketConfig, VsockConfig,
};
use std::cell::RefCell;
use std::rc::Rc;

#[derive(Default)]
pub(super) struct Log(Rc<RefCell<Vec<String>>>);

struct FakeVm(Rc<RefCell<Vec<String>>>);

impl Microvm for FakeVm {
    fn pause(&mut self) -> Result<(), String> {
        self.0.borrow_mut().push("pause".into());
        Ok(())
    }
    fn resume(&mut self) -> Result<(), String> {
        self.0.borrow_mut().push("resume".into());
        Ok(())
    }
    fn send_ctrl_alt_del(&mut self) -> Result<(), String> {
        self.0.borrow_mut().push("ctrl-alt-del".into());
        Ok(())
    }
    fn update_drive(&mut self, id: &str, path: &str) -> Result<(), String> {
        self.0.borrow_mut().push(format!("drive {id} {path}"));
        Ok(())
    }
    fn update_drive_rate_limiter(
        &mut self,
        id: &str,
        update: &RateLimiterConfig,
    ) -> Result<(), String> {
        self.0
            .borrow_mut()
            .push(format!("drive {id} limiter {update:?}"));
        Ok(())
    }
    fn update_net_rate_limiters(
        &mut self,
        id: &str,
        rx: Option<&RateLimiterConfig>,
        tx: Option<&RateLimiterConfig>,
    ) -> Result<(), String> {
        self.0
            .borrow_mut()
            .push(format!("net {id} rx {rx:?} tx {tx:?}"));
        Ok(())
    }
}

pub(super) fn temp_file(name: &str) -> String {
    let dir = crate::test_scratch::dir("kiln-controller");
    let p = dir.join(name);
    std::fs::write(&p, b"x").unwrap();
    p.to_string_lossy().into_owned()
}

/// A controller with a stand-in run loop: it owns the fake microVM once started.
pub(super) struct Harness {
    pub(super) c: Controller,
    vm: Option<FakeVm>,
    calls: Rc<RefCell<Vec<String>>>,
    fail_start: Option<String>,
}

impl Harness {
    pub(super) fn handle(&mut self, req: ApiRequest) -> Reply {
        let vm = self.vm.as_mut().map(|v| v as &mut dyn Microvm);
        match self.c.handle(req, vm) {
            Outcome::Reply(r) => r,
            Outcome::Start => {
                let result = match &self.fail_start {
                    Some(e) => Err(e.clone()),
                    None => {
                        let mem = self.c.resources().machine_config.mem_size_mib;
                        self.calls.borrow_mut().push(format!("start {mem}"));
                        self.vm = Some(FakeVm(self.calls.clone()));
                        Ok(())
                    }
                };
                self.c.finish_start(result)
            }
            Outcome::Load(_) => self.c.finish_load(Err("no snapshots here".into())),
        }
    }

    fn state(&self) -> InstanceState {
        self.c.state()
    }
}

pub(super) fn controller(log: &Log) -> Harness {
    Harness {
        c: Controller::new("test-vm", VmResources::default()),
        vm: None,
        calls: log.0.clone(),
        fail_start: None,
    }
}

pub(super) fn json(reply: Reply) -> serde_json::Value {
    match reply {
        Ok(VmmData::Json(s)) => serde_json::from_str(&s).unwrap(),
        other => panic!("expected JSON, got {other:?}"),
    }
}

pub(super) fn err(reply: Reply) -> String {
    match reply {
        Err(e) => e.to_string(),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

#[test]
fn instance_info_follows_the_state_machine() {
    let log = Log::default();
    let mut c = controller(&log);
    let info = json(c.handle(ApiRequest::GetInstanceInfo));
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["id"], "test-vm");
    assert_eq!(info["app_name"], "Kiln");
    // The Firecracker release Kiln implements, where Firecracker's clients read a version.
    assert_eq!(info["vmm_version"], FIRECRACKER_VERSION);
    let kernel = temp_file("kernel");
    let boot = BootSourceConfig {
        kernel_image_path: kernel,
        boot_args: None,
        initrd_path: None,
        ..Default::default()
    };
    assert_eq!(
        c.handle(ApiRequest::PutBootSource(boot)).unwrap(),
        VmmData::Empty
    );
    assert_eq!(
        c.handle(ApiRequest::Action(Action::InstanceStart)).unwrap(),
        VmmData::Empty
    );
    assert_eq!(
        json(c.handle(ApiRequest::GetInstanceInfo))["state"],
        "Running"
    );
    c.handle(ApiRequest::PatchVm(VmStateChange::Paused))
        .unwrap();
    c.handle(ApiRequest::PatchVm(VmStateChange::Paused))
        .unwrap();
    assert_eq!(
        json(c.handle(ApiRequest::GetInstanceInfo))["state"],
        "Paused"
    );
    c.handle(ApiRequest::PatchVm(VmStateChange::Resumed))
        .unwrap();
    assert_eq!(
        json(c.handle(ApiRequest::GetInstanceInfo))["state"],
        "Running"
    );
    c.handle(ApiRequest::Action(Action::SendCtrlAltDel))
        .unwrap();
    assert_eq!(
        *log.0.borrow(),
        vec!["start 128", "pause", "resume", "ctrl-alt-del"]
    );
}

#[test]
fn runtime_only_requests_are_refused_before_instance_start() {
    let log = Log::default();
    let mut c = controller(&log);
    let cases = [
        ApiRequest::PatchVm(VmStateChange::Paused),
        ApiRequest::PatchVm(VmStateChange::Resumed),
        ApiRequest::Action(Action::SendCtrlAltDel),
        ApiRequest::PatchDrive {
            path_id: "d".into(),
            update: DriveUpdate {
                drive_id: "d".into(),
                path_on_host: None,
                ..Default::default()
            },
        },
        ApiRequest::PatchNetworkInterface {
            path_id: "n".into(),
            update: NetworkInterfaceUpdate {
                iface_id: "n".into(),
                ..Default::default()
            },
        },
    ];
    for req in cases {
        let what = req.describe();
        let msg = err(c.handle(req));
        assert!(
            msg.contains("only possible after InstanceStart"),
            "{what}: {msg}"
        );
        assert!(msg.starts_with(what), "{what}: {msg}");
    }
    assert!(
        err(c.handle(ApiRequest::Action(Action::InstanceStart))).contains("boot-source is missing")
    );
    assert!(log.0.borrow().is_empty());
}

#[test]
fn pre_boot_only_requests_are_refused_after_instance_start() {
    let log = Log::default();
    let mut c = controller(&log);
    let kernel = temp_file("kernel2");
    let drive = temp_file("disk");
    c.handle(ApiRequest::PutBootSource(BootSourceConfig {
        kernel_image_path: kernel.clone(),
        boot_args: None,
        initrd_path: None,
        ..Default::default()
    }))
    .unwrap();
    let drive_cfg = DriveConfig {
        drive_id: "rootfs".into(),
        path_on_host: drive.clone(),
        is_root_device: true,
        is_read_only: false,
        partuuid: None,
        cache_type: Default::default(),
        io_engine: Default::default(),
        ..Default::default()
    };
    c.handle(ApiRequest::PutDrive {
        path_id: "rootfs".into(),
        config: drive_cfg.clone(),
    })
    .unwrap();
    c.handle(ApiRequest::PatchMachineConfig(MachineConfigUpdate {
        mem_size_mib: Some(64),
        ..Default::default()
    }))
    .unwrap();
    c.handle(ApiRequest::Action(Action::InstanceStart)).unwrap();
    assert!(err(c.handle(ApiRequest::Action(Action::InstanceStart))).contains("already started"));
    let cases = [
        ApiRequest::PutMachineConfig(MachineConfig::default()),
        ApiRequest::PatchMachineConfig(MachineConfigUpdate::default()),
        ApiRequest::PutBootSource(BootSourceConfig {
            kernel_image_path: kernel,
            boot_args: None,
            initrd_path: None,
            ..Default::default()
        }),
        ApiRequest::PutDrive {
            path_id: "rootfs".into(),
            config: drive_cfg,
        },
        ApiRequest::PutNetworkInterface {
            path_id: "n".into(),
            config: NetworkInterfaceConfig {
                iface_id: "n".into(),
                host_dev_name: "tap0".into(),
                guest_mac: None,
                ..Default::default()
            },
        },
        ApiRequest::PutVsock(VsockConfig {
            vsock_id: None,
            guest_cid: 3,
            uds_path: "/tmp/v".into(),
        }),
        ApiRequest::PutLogger(crate::resources::LoggerConfig {
            log_path: None,
            level: None,
            show_level: None,
            show_log_origin: None,
            module: None,
        }),
        ApiRequest::PutMetrics(crate::resources::MetricsConfig {
            metrics_path: "/tmp/m".into(),
            ..Default::default()
        }),
        ApiRequest::PutEntropy(EntropyConfig::default()),
        ApiRequest::PutSerial(SerialConfig::default()),
        ApiRequest::PutCpuConfig(CpuConfig::default()),
    ];
    for req in cases {
        let what = req.describe();
        let msg = err(c.handle(req));
        assert!(
            msg.contains("only possible before InstanceStart"),
            "{what}: {msg}"
        );
    }
    // Allowed at runtime: reads, FlushMetrics, PATCH of a drive that exists.
    assert_eq!(
        json(c.handle(ApiRequest::GetMachineConfig))["mem_size_mib"],
        64
    );
    assert_eq!(
        json(c.handle(ApiRequest::GetVmConfig))["drives"][0]["drive_id"],
        "rootfs"
    );
    c.handle(ApiRequest::Action(Action::FlushMetrics)).unwrap();
    let other = temp_file("disk2");
    c.handle(ApiRequest::PatchDrive {
        path_id: "rootfs".into(),
        update: DriveUpdate {
            drive_id: "rootfs".into(),
            path_on_host: Some(other.clone()),
            ..Default::default()
        },
    })
    .unwrap();
    assert_eq!(
        json(c.handle(ApiRequest::GetVmConfig))["drives"][0]["path_on_host"],
        other.as_str()
    );
    let msg = err(c.handle(ApiRequest::PatchDrive {
        path_id: "nope".into(),
        update: DriveUpdate {
            drive_id: "nope".into(),
            path_on_host: None,
            ..Default::default()
        },
    }));
    assert!(msg.contains("no drive with drive_id \"nope\""), "{msg}");
    assert_eq!(
        log.0.borrow().last().map(String::as_str),
        Some(format!("drive rootfs {other}").as_str())
    );
}

#[test]
fn setters_refuse_what_the_config_file_refuses_with_the_same_message() {
    let log = Log::default();
    let mut c = controller(&log);
    let bad = MachineConfig {
        vcpu_count: 0,
        ..Default::default()
    };
    let from_api = err(c.handle(ApiRequest::PutMachineConfig(bad)));
    let file = r#"{"boot-source": {"kernel_image_path": "/nonexistent"}, "machine-config": {"vcpu_count": 0, "mem_size_mib": 128}}"#;
    let from_file = VmResources::from_json(file).unwrap_err().to_string();
    assert_eq!(from_api, from_file);
    let mismatch = err(c.handle(ApiRequest::PutDrive {
        path_id: "a".into(),
        config: DriveConfig {
            drive_id: "b".into(),
            path_on_host: "/x".into(),
            is_root_device: false,
            is_read_only: false,
            partuuid: None,
            cache_type: Default::default(),
            io_engine: Default::default(),
            ..Default::default()
        },
    }));
    assert!(
        mismatch.contains("differs from the id in the body"),
        "{mismatch}"
    );
}

#[test]
fn a_failed_start_leaves_the_microvm_not_started() {
    let log = Log::default();
    let mut c = controller(&log);
    c.fail_start = Some("no KVM today".to_string());
    let kernel = temp_file("kernel3");
    c.handle(ApiRequest::PutBootSource(BootSourceConfig {
        kernel_image_path: kernel,
        boot_args: None,
        initrd_path: None,
        ..Default::default()
    }))
    .unwrap();
    let msg = err(c.handle(ApiRequest::Action(Action::InstanceStart)));
    assert_eq!(msg, "InstanceStart failed: no KVM today");
    assert_eq!(c.state(), InstanceState::NotStarted);
}

#[test]
fn errors_reach_the_api_as_refusals_or_failures_with_their_message() {
    let refused = RequestError::from(ControllerError::PreBootOnly("PUT /drives"));
    assert_eq!(
        refused,
        RequestError::Refused(
            "PUT /drives is only possible before InstanceStart, and the microVM has already started"
                .into()
        )
    );
    let failed = RequestError::from(ControllerError::Pause("vCPU 1 has stopped".into()));
    assert_eq!(
        failed,
        RequestError::Failed("PATCH /vm: pausing the microVM failed: vCPU 1 has stopped".into())
    );
    assert_eq!((refused.status(), failed.status()), (400, 400));
}

fn bucket(size: u64, refill_time: u64) -> TokenBucketConfig {
    TokenBucketConfig {
        size,
        one_time_burst: None,
        refill_time,
    }
}

#[test]
fn rate_limiters_are_patched_on_the_running_devices_and_in_the_configuration() {
    let log = Log::default();
    let mut c = controller(&log);
    c.handle(ApiRequest::PutBootSource(BootSourceConfig {
        kernel_image_path: temp_file("kernel-rl"),
        boot_args: None,
        initrd_path: None,
        ..Default::default()
    }))
    .unwrap();
    let limited = RateLimiterConfig {
        bandwidth: Some(bucket(1000, 100)),
        ops: Some(bucket(10, 100)),
    };
    c.handle(ApiRequest::PutDrive {
        path_id: "d".into(),
        config: DriveConfig {
            drive_id: "d".into(),
            path_on_host: temp_file("disk-rl"),
            is_root_device: false,
            is_read_only: false,
            partuuid: None,
            cache_type: Default::default(),
            io_engine: Default::default(),
            rate_limiter: Some(limited),
            ..Default::default()
        },
    })
    .unwrap();
    // `PUT /network-interfaces` opens the tap, which a unit test has none of: the interface
    // goes into the configuration through the setter that request uses after that check.
    let mut res = c.c.resources().clone();
    res.put_network_interface(
        Some("n"),
        NetworkInterfaceConfig {
            iface_id: "n".into(),
            host_dev_name: "tap0".into(),
            guest_mac: None,
            mtu: Some(1400),
            rx_rate_limiter: None,
            tx_rate_limiter: Some(limited),
        },
    )
    .unwrap();
    c.c = Controller::new("test-vm", res);
    c.handle(ApiRequest::Action(Action::InstanceStart)).unwrap();
    let drop_ops = RateLimiterConfig {
        bandwidth: None,
        ops: Some(bucket(0, 0)),
    };
    c.handle(ApiRequest::PatchDrive {
        path_id: "d".into(),
        update: DriveUpdate {
            drive_id: "d".into(),
            path_on_host: None,
            rate_limiter: Some(drop_ops),
        },
    })
    .unwrap();
    let cfg = json(c.handle(ApiRequest::GetVmConfig));
    assert_eq!(
        cfg["drives"][0]["rate_limiter"],
        serde_json::json!({
            "bandwidth": {"size": 1000, "one_time_burst": null, "refill_time": 100},
            "ops": null
        })
    );
    c.handle(ApiRequest::PatchNetworkInterface {
        path_id: "n".into(),
        update: NetworkInterfaceUpdate {
            iface_id: "n".into(),
            rx_rate_limiter: Some(RateLimiterConfig {
                bandwidth: None,
                ops: Some(bucket(5, 50)),
            }),
            tx_rate_limiter: Some(RateLimiterConfig {
                bandwidth: Some(bucket(0, 0)),
                ops: Some(bucket(0, 0)),
            }),
        },
    })
    .unwrap();
    let cfg = json(c.handle(ApiRequest::GetVmConfig));
    let n = &cfg["network-interfaces"][0];
    assert_eq!(
        n["rx_rate_limiter"],
        serde_json::json!({
            "bandwidth": null,
            "ops": {"size": 5, "one_time_burst": null, "refill_time": 50}
        })
    );
    assert_eq!(n["tx_rate_limiter"], serde_json::Value::Null, "{n}");
    assert_eq!(n["mtu"], 1400);
    let calls = log.0.borrow().clone();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(calls[1].starts_with("drive d limiter"), "{calls:?}");
    assert!(calls[2].starts_with("net n rx Some"), "{calls:?}");
    // A PATCH without limiters changes nothing on the device.
    c.handle(ApiRequest::PatchNetworkInterface {
        path_id: "n".into(),
        update: NetworkInterfaceUpdate {
            iface_id: "n".into(),
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        },
    })
    .unwrap();
    assert_eq!(log.0.borrow().len(), 3);
    let msg = err(c.handle(ApiRequest::PatchNetworkInterface {
        path_id: "m".into(),
        update: NetworkInterfaceUpdate {
            iface_id: "m".into(),
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        },
    }));
    assert!(msg.contains("no interface with iface_id \"m\""), "{msg}");
}

#[test]
fn one_cpu_template_at_a_time_as_in_firecracker() {
    let log = Log::default();
    let mut c = controller(&log);
    c.handle(ApiRequest::PatchMachineConfig(MachineConfigUpdate {
        cpu_template: Some(CpuTemplate::T2),
        ..Default::default()
    }))
    .unwrap();
    // A custom template replaces the static one...
    c.handle(ApiRequest::PutCpuConfig(CpuConfig::default()))
        .unwrap();
    assert_eq!(
        c.c.resources().machine_config.cpu_template,
        CpuTemplate::None
    );
    assert!(c.c.resources().cpu_config.is_some());
    // ...a machine-config without a template keeps it...
    c.handle(ApiRequest::PatchMachineConfig(MachineConfigUpdate {
        vcpu_count: Some(2),
        ..Default::default()
    }))
    .unwrap();
    assert!(c.c.resources().cpu_config.is_some());
    // ...and a static template (or "None") given replaces it.
    c.handle(ApiRequest::PatchMachineConfig(MachineConfigUpdate {
        cpu_template: Some(CpuTemplate::None),
        ..Default::default()
    }))
    .unwrap();
    assert!(c.c.resources().cpu_config.is_none());
    c.handle(ApiRequest::PutCpuConfig(CpuConfig::default()))
        .unwrap();
    c.handle(ApiRequest::PutMachineConfig(MachineConfig {
        cpu_template: CpuTemplate::C3,
        ..Default::default()
    }))
    .unwrap();
    assert!(c.c.resources().cpu_config.is_none());
    assert_eq!(c.c.resources().machine_config.cpu_template, CpuTemplate::C3);
    // Entropy and serial are kept for the build and shown in the configuration.
    c.handle(ApiRequest::PutEntropy(EntropyConfig::default()))
        .unwrap();
    c.handle(ApiRequest::PutSerial(SerialConfig {
        serial_out_path: None,
        rate_limiter: Some(bucket(100, 10)),
    }))
    .unwrap();
    let cfg = json(c.handle(ApiRequest::GetVmConfig));
    assert_eq!(cfg["entropy"], serde_json::json!({"rate_limiter": null}));
    assert_eq!(cfg["serial"]["rate_limiter"]["size"], 100);
}
