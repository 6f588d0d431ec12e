//! Slow tier: the project's Linux guest kernel (scripts/assets.sh, 6.1 with
//! `CONFIG_VIRTIO_MEM` and `CONFIG_MEMORY_HOTPLUG_DEFAULT_ONLINE`) with Kiln's virtio-mem,
//! driven over the API as an orchestrator would: `PUT /hotplug/memory` before boot, then
//! `PATCH /hotplug/memory` on the booted guest, `GET /hotplug/memory` to follow it.
//!
//! The guest boots the ELF vmlinux with an initramfs holding only a spinning init (no
//! system call: on kvm_pvm hosts a guest's user space cannot make one, see
//! shared/notes/host-kvm.md); everything checked is the kernel's own doing:
//!
//! 1. its virtio_mem driver probes the device and prints the region (start address
//!    0x8000000000, 512 GiB; region size; device block size) on the console;
//! 2. when the host raises `requested_size`, the driver plugs the memory by itself (the
//!    device's `plugged_size_mib`, as `GET /hotplug/memory` shows it, reaches the request)
//!    and the kernel onlines it by itself: no `memhp_default_state=` is needed on the
//!    command line, because the kernel is built with `CONFIG_MEMORY_HOTPLUG_DEFAULT_ONLINE=y`
//!    (new memory blocks come online as they are added). The onlining is seen in the
//!    kernel's own count of its memory: the balloon's statistics (`total_memory`, the
//!    kernel's MemTotal, which counts only online pages) grow by the plugged size.
//!
//! One boot: 42 s on the development host when quiet, ~3 min with builds running. Run with
//! `cargo test -p kiln-tests --test slow_vmm_linux_memory_hotplug -- --ignored --nocapture`.

mod api_common;

use api_common::Vmm;
use kiln_tests::assets::{assets_dir, require_linux_assets, KERNEL_CMDLINE};
use kiln_tests::elf::spin_init;
use kiln_tests::initramfs::{newc, Member};
use kiln_tests::metrics::Metrics;
use kiln_tests::{require_kvm, require_root, ScratchDir};
use serde_json::Value;
use std::time::{Duration, Instant};

/// The kernel starts its init at ~30-80 s on kvm_pvm hosts; the margin covers a loaded host.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// For the driver to plug and the kernel to online (guest kernel code is slow here).
const PLUG_TIMEOUT: Duration = Duration::from_secs(150);
const MEM_MIB: u64 = 128;
const TOTAL_MIB: u64 = 256;
const PLUG_MIB: u64 = 64;
const INIT: &str = "/kiln-spin";
const MIB: u64 = 1 << 20;

/// Polls `GET path` until `cond` holds; returns the answer.
fn wait_get(vmm: &Vmm, path: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let v = vmm.get(path);
        if cond(&v) {
            return v;
        }
        assert!(
            t.elapsed() < PLUG_TIMEOUT,
            "timed out after {PLUG_TIMEOUT:?} waiting for {what}; {path}: {v}\n--- serial:\n{}",
            vmm.serial()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "slow tier: boots a Linux kernel whose virtio_mem driver plugs and onlines hot-plugged memory (under a minute to 3 min here); run with ./test.sh slow"]
fn linux_plugs_and_onlines_hotplugged_memory_by_itself() {
    require_root();
    require_kvm();
    let assets = require_linux_assets();
    let config = std::fs::read_to_string(assets_dir().join("config")).expect("the kernel config");
    for option in [
        "CONFIG_VIRTIO_MEM=y",
        "CONFIG_MEMORY_HOTPLUG_DEFAULT_ONLINE=y",
        "CONFIG_VIRTIO_BALLOON=y",
    ] {
        assert!(
            config.lines().any(|l| l == option),
            "MISSING PRECONDITION: the guest kernel in {} lacks {option}; run scripts/assets.sh",
            assets_dir().display()
        );
    }
    let scratch = ScratchDir::new("kiln-linux-vmem");
    let initramfs = scratch.write(
        "initramfs.cpio",
        newc(&[Member {
            path: &INIT[1..],
            mode: 0o100755,
            data: &spin_init(),
        }]),
    );
    let metrics = scratch.join("metrics.json");
    let start = Instant::now();
    let at = || start.elapsed().as_secs_f64();
    let mut vmm = Vmm::start(&["--metrics-path", metrics.to_str().expect("utf-8 path")]);
    vmm.ok(
        "PUT",
        "/machine-config",
        &format!(r#"{{"vcpu_count": 1, "mem_size_mib": {MEM_MIB}}}"#),
    );
    vmm.ok(
        "PUT",
        "/boot-source",
        &serde_json::json!({
            "kernel_image_path": assets.vmlinux,
            "initrd_path": initramfs,
            "boot_args": format!("{KERNEL_CMDLINE} rdinit={INIT}"),
        })
        .to_string(),
    );
    vmm.ok(
        "PUT",
        "/hotplug/memory",
        &format!(r#"{{"total_size_mib": {TOTAL_MIB}}}"#),
    );
    // The balloon only reports the kernel's memory (never inflated).
    vmm.ok(
        "PUT",
        "/balloon",
        r#"{"amount_mib": 0, "deflate_on_oom": false, "stats_polling_interval_s": 1}"#,
    );
    vmm.action("InstanceStart");

    // The driver probes among the initcalls, before init.
    let started = format!("Run {INIT} as init process");
    vmm.wait_linux("init", BOOT_TIMEOUT, |s| s.contains(&started));
    println!("[{:7.2}s] init started", at());
    let serial = vmm.serial();
    for line in [
        "start address: 0x8000000000",
        &format!("region size: {:#x}", TOTAL_MIB * MIB),
        "device block size: 0x200000",
    ] {
        assert!(
            serial
                .lines()
                .any(|l| l.contains("virtio_mem") && l.contains(line)),
            "the kernel did not print virtio_mem's {line:?}\n--- serial:\n{serial}"
        );
    }
    let status = vmm.get("/hotplug/memory");
    assert_eq!(
        status,
        serde_json::json!({"total_size_mib": TOTAL_MIB, "slot_size_mib": 128,
            "block_size_mib": 2, "plugged_size_mib": 0, "requested_size_mib": 0})
    );
    let before = wait_get(
        &vmm,
        "/balloon/statistics",
        "the balloon's statistics",
        |s| s["total_memory"].as_u64().is_some(),
    );
    let total_before = before["total_memory"].as_u64().unwrap_or(0);
    println!(
        "[{:7.2}s] MemTotal {} KiB before hot-plug",
        at(),
        total_before >> 10
    );

    let t = Instant::now();
    vmm.ok(
        "PATCH",
        "/hotplug/memory",
        &format!(r#"{{"requested_size_mib": {PLUG_MIB}}}"#),
    );
    let plugged = wait_get(&vmm, "/hotplug/memory", "the driver to plug", |s| {
        s["plugged_size_mib"] == PLUG_MIB
    });
    println!(
        "[{:7.2}s] plugged {PLUG_MIB} MiB in {:.1} s: {plugged}",
        at(),
        t.elapsed().as_secs_f64()
    );
    let online = wait_get(
        &vmm,
        "/balloon/statistics",
        "the kernel to online the plugged memory (MemTotal to grow)",
        |s| {
            s["total_memory"]
                .as_u64()
                .is_some_and(|n| n >= total_before + (PLUG_MIB - 4) * MIB)
        },
    );
    let total_after = online["total_memory"].as_u64().unwrap_or(0);
    println!(
        "[{:7.2}s] onlined: MemTotal {} -> {} KiB in {:.1} s",
        at(),
        total_before >> 10,
        total_after >> 10,
        t.elapsed().as_secs_f64()
    );
    let serial = vmm.serial();
    for bad in ["virtio_mem", "memory"] {
        for l in serial.lines().filter(|l| l.contains(bad)) {
            assert!(
                !l.contains("rror") && !l.contains("WARNING") && !l.contains("BUG"),
                "the kernel complained: {l}\n--- serial:\n{serial}"
            );
        }
    }
    vmm.action("FlushMetrics");
    let m = Metrics::read(&metrics);
    assert!(m.get("memory_hotplug.plug_count") >= 1, "{m:?}");
    assert_eq!(m.get("memory_hotplug.plug_bytes"), PLUG_MIB * MIB, "{m:?}");
    assert_eq!(m.get("memory_hotplug.plug_fails"), 0, "{m:?}");
    assert_eq!(m.get("memory_hotplug.invalid_requests"), 0, "{m:?}");
    assert_eq!(m.get("memory_hotplug.slots_added"), 1, "{m:?}");
}
