//! One instance's life through the real jailer and VMM, with the tiny test guest as the
//! image: it boots but never speaks the invocation protocol, so these tests cover the start
//! failures and the teardown paths (nothing may be left behind by any of them).

mod common;

use common::Env;
use kiln_worker::function::Function;
use kiln_worker::instance::{Instance, InstanceConfig, InstanceError, Owner};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(env: &Env, start_timeout: Duration) -> Arc<InstanceConfig> {
    let profile_path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies/tenant/default.json");
    Arc::new(InstanceConfig {
        jailer: env.jailer.clone(),
        vmm: env.vmm.clone(),
        chroot_base: env.chroot_base.clone(),
        state_dir: env.state_dir.clone(),
        owner: Arc::new(Owner::acquire(&env.state_dir).expect("the worker's lock")),
        profile: InstanceConfig::load_profile(&profile_path).expect("the default tenant profile"),
        profile_path,
        uid_base: env.uid_base,
        uid_count: 20,
        parent_cgroup: env.parent_cgroup.clone(),
        memory_overhead_mib: 64,
        start_timeout,
        stop_grace: Duration::from_secs(2),
        strict_io: true,
        kernel: PathBuf::from("/nonexistent/vmlinux"),
        max_response_bytes: kiln_protocol::DEFAULT_MAX_PAYLOAD,
        vmm_args: Vec::new(),
    })
}

fn tiny(name: &str, scenario: &str) -> Arc<Function> {
    Arc::new(Function {
        name: name.into(),
        image: kiln_tests::tiny::tiny_guest(),
        kind: kiln_guest_builder::Kind::Image,
        hello_timeout: None,
        boot_args: Some(format!("console=ttyS0 kiln.test={scenario}")),
        memory_mib: 32,
        vcpus: 1,
        timeout: Duration::from_secs(1),
        concurrency: 1,
        max_event_bytes: 1024,
        generation: 1,
        snapshot_start: false,
    })
}

/// Instance ids start with the function's name (unique per test).
fn ids_of(function: &str) -> Vec<String> {
    vec![format!("{function}-")]
}

#[test]
fn a_guest_that_never_says_hello_times_out_and_leaves_nothing() {
    let env = Env::new("hang");
    let cfg = config(&env, Duration::from_millis(1500));
    let t = Instant::now();
    let err = Instance::start(&cfg, &tiny("hangfn", "hang"))
        .err()
        .expect("no hello: the start must fail");
    assert!(matches!(err, InstanceError::StartTimeout { .. }), "{err}");
    assert_eq!(err.code(), "start_timeout");
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t.elapsed()
    );
    drop(cfg);
    env.assert_nothing_left(&ids_of("hangfn"));
}

#[test]
fn a_vm_stopped_by_strict_io_before_hello_says_which_port() {
    let env = Env::new("ports");
    let cfg = config(&env, Duration::from_secs(10));
    let err = Instance::start(&cfg, &tiny("portsfn", "ports"))
        .err()
        .expect("the VM stops: the start must fail");
    let text = err.to_string();
    assert!(matches!(err, InstanceError::Exited(_)), "{text}");
    assert!(
        text.contains("I/O port 0x80") && text.contains("vCPU 0"),
        "{text}"
    );
    drop(cfg);
    env.assert_nothing_left(&ids_of("portsfn"));
}

#[test]
fn a_guest_that_resets_before_hello_is_reported() {
    let env = Env::new("reset");
    let cfg = config(&env, Duration::from_secs(10));
    let err = Instance::start(&cfg, &tiny("resetfn", "reset"))
        .err()
        .expect("the VM ends: the start must fail");
    assert!(matches!(err, InstanceError::Exited(_)), "{err}");
    assert!(err.to_string().contains("reset"), "{err}");
    drop(cfg);
    env.assert_nothing_left(&ids_of("resetfn"));
}

#[test]
fn a_guest_that_connects_over_vsock_but_speaks_no_protocol_is_refused() {
    // The tiny guest's vsock-connect scenario reaches the worker's listener through the
    // jail (vsock device → /vsock/v.sock_1024 in the jail → the instance's host directory),
    // then sends a line of text instead of a Hello frame.
    let env = Env::new("vsock");
    let cfg = config(&env, Duration::from_secs(20));
    let f = tiny("vsockfn", "vsock-connect kiln.port=1024");
    let err = Instance::start(&cfg, &f)
        .err()
        .expect("no Hello: the start must fail");
    let text = err.to_string();
    assert!(matches!(err, InstanceError::Hello(_)), "{text}");
    assert!(text.contains("bad frame magic"), "{text}");
    drop(cfg);
    env.assert_nothing_left(&ids_of("vsockfn"));
}
