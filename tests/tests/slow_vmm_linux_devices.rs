//! Slow tier: the project's Linux guest (scripts/assets.sh) under Kiln's VMM with virtio
//! devices: its ext4 root disk over virtio-blk (read-write; the VMM adds `root=/dev/vda rw`)
//! and virtio-net on a tap in a network namespace the test makes, configured by the kernel
//! from `ip=`. The guest must mount the disk, configure eth0 and answer the host's ICMP echo;
//! afterwards the host's image file shows the mount (the ext4 superblock's mount count and
//! last-mount time changed). The same again with `--enable-pci`: the kernel finds both
//! devices on PCI bus 0 by probing configuration mechanism #1 (its command line without
//! `pci=off` and without `virtio_mmio.device=` entries), and their interrupts are MSI-X (there
//! is no INTx: the disk is only read, and the ping only answered, if MSI-X works).
//!
//! On kvm_pvm hosts guest user space cannot make a system call (shared/notes/host-kvm.md),
//! so `/init` would crash and the kernel would panic right after mounting the root. The test
//! therefore writes a 122-byte static program that only spins (no system call) into its copy
//! of the disk (`debugfs`) and boots it as `init=`: the kernel stays up, and answers pings on
//! its own. The test stops the VMM (SIGTERM) as soon as every milestone is seen, prints the
//! time to each, and gives up after [`TIMEOUT`].
//!
//! Run with `cargo test -p kiln-tests --test slow_vmm_linux_devices -- --ignored`.

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use kiln_tests::assets::{require_linux_assets, KERNEL_CMDLINE};
use kiln_tests::elf::spin_init;
use kiln_tests::ext4;
use kiln_tests::milestones::{all_seen, note, report, Milestone};
use kiln_tests::netns::NetNs;
use kiln_tests::process::{line_reader, spawn, stderr_reader, terminate};
use kiln_tests::{is_pvm_host, require_bin, require_kvm, require_root, KillOnDrop, ScratchDir};

/// The kernel mounts its root at ~75 s on kvm_pvm hosts; the margin covers a loaded machine.
const TIMEOUT: Duration = Duration::from_secs(240);
const HOST_IP: &str = "172.16.0.1";
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 2);
const GUEST_MAC: &str = "06:00:ac:10:00:02";
const SPIN_INIT: &str = "/kiln-spin";

#[test]
#[ignore = "slow tier: boots a Linux kernel (about 1.5 min here) with virtio-blk root and virtio-net; run with ./test.sh slow"]
fn linux_mounts_its_root_over_virtio_blk_and_answers_ping_over_virtio_net() {
    boot_with_devices(Transport::Mmio);
}

#[test]
#[ignore = "slow tier: boots a Linux kernel (about 1.5 min here) with virtio-blk root and virtio-net on PCI; run with ./test.sh slow"]
fn linux_finds_its_devices_on_pci_mounts_its_root_and_answers_ping() {
    boot_with_devices(Transport::Pci);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Mmio,
    /// `--enable-pci`.
    Pci,
}

fn boot_with_devices(transport: Transport) {
    require_root();
    require_kvm();
    let assets = require_linux_assets();
    let vmm_bin = require_bin("vmm");
    let scratch = ScratchDir::new("kiln-linux-devices");

    // A private copy of the shared image, with the spinning init in it.
    let rootfs = scratch.join("rootfs.ext4");
    std::fs::copy(&assets.rootfs, &rootfs).expect("copy rootfs.ext4");
    let spin = scratch.write("kiln-spin", spin_init());
    ext4::add_executable(&rootfs, &spin, SPIN_INIT);
    let before = ext4::mount_stamp(&rootfs);

    let ns = NetNs::new("kiln-linux-net");
    let tap = "kilntap0";
    ns.add_tap(tap, Some(&format!("{HOST_IP}/24")));

    let kernel_args = match transport {
        Transport::Mmio => KERNEL_CMDLINE.to_string(),
        // The test kit's command line without its `pci=off`.
        Transport::Pci => KERNEL_CMDLINE.replace(" pci=off", ""),
    };
    let boot_args =
        format!("{kernel_args} init={SPIN_INIT} ip={GUEST_IP}::{HOST_IP}:255.255.255.0::eth0:off");
    let cfg = scratch.write(
        "vm.json",
        format!(
            "{{\"boot-source\": {{\"kernel_image_path\": {:?}, \"boot_args\": {boot_args:?}}},\n \
             \"machine-config\": {{\"vcpu_count\": 1, \"mem_size_mib\": 256}},\n \
             \"drives\": [{{\"drive_id\": \"rootfs\", \"path_on_host\": {:?}, \"is_root_device\": true, \"is_read_only\": false}}],\n \
             \"network-interfaces\": [{{\"iface_id\": \"eth0\", \"host_dev_name\": \"{tap}\", \"guest_mac\": \"{GUEST_MAC}\"}}]}}\n",
            assets.vmlinux.to_str().expect("utf-8 path"),
            rootfs.to_str().expect("utf-8 path"),
        ),
    );

    let start = Instant::now();
    let mut cmd = ns.command(&vmm_bin);
    cmd.arg("--config-file")
        .arg(&cfg)
        .arg("--no-api")
        .stdin(Stdio::null());
    if transport == Transport::Pci {
        cmd.arg("--enable-pci");
    }
    let mut vmm = KillOnDrop::new(spawn(&mut cmd));
    let rx = line_reader(&mut vmm);
    let stderr_thread = stderr_reader(&mut vmm);

    let mut milestones = vec![
        Milestone::new("virtio-blk disk probed", "[vda]"),
        Milestone::new("eth0 configured from ip=", format!("ipaddr={GUEST_IP}")),
        Milestone::new("ext4 mounted from vda", "EXT4-fs (vda): mounted filesystem"),
        // "...(ext4 filesystem) readonly on device" when read-only.
        Milestone::new(
            "root mounted read-write",
            "VFS: Mounted root (ext4 filesystem) on device",
        ),
        Milestone::new("init started", format!("Run {SPIN_INIT} as init process")),
    ];
    if transport == Transport::Pci {
        milestones.extend([
            Milestone::new(
                "PCI found through 0xCF8/0xCFC",
                "PCI: Using configuration type 1 for base access",
            ),
            Milestone::new("virtio-blk on PCI", "pci 0000:00:01.0: [1af4:1042]"),
            Milestone::new("virtio-net on PCI", "pci 0000:00:02.0: [1af4:1041]"),
        ]);
    }
    let mut serial = Vec::new();
    let failure = loop {
        if all_seen(&milestones) {
            break None;
        }
        let Some(left) = TIMEOUT.checked_sub(start.elapsed()) else {
            break Some(format!("timed out after {TIMEOUT:?}"));
        };
        match rx.recv_timeout(left) {
            Ok(line) => {
                note(&mut milestones, &line, start.elapsed(), "");
                let fatal = ["Kernel panic", "Attempted to kill init"]
                    .into_iter()
                    .find(|f| line.contains(f));
                serial.push(line);
                if let Some(f) = fatal {
                    break Some(format!("the guest printed {f:?}"));
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break Some("the VMM exited".to_string()),
        }
    };
    let ping = if failure.is_none() {
        let left = TIMEOUT
            .saturating_sub(start.elapsed())
            .min(Duration::from_secs(60));
        let rtt = ns.ping(GUEST_IP, left);
        if let Some(rtt) = rtt {
            println!(
                "[{:7.2}s] guest answered ICMP echo (round trip {:.1} ms)",
                start.elapsed().as_secs_f64(),
                rtt.as_secs_f64() * 1e3
            );
        }
        rtt
    } else {
        None
    };
    // Stop the VMM: SIGTERM must end it with exit code 0.
    let status = terminate(&mut vmm, Duration::from_secs(10));
    drop(vmm);
    let stderr = stderr_thread.join().unwrap_or_default();
    let after = ext4::mount_stamp(&rootfs);

    let report = report(&milestones);
    println!(
        "Linux + virtio-blk root + virtio-net over {transport:?} (kvm_pvm host: {}), stopped at {:.2}s:\n{}\n  ping: {:?}\n  superblock (mount count, mount time): {before:?} -> {after:?}",
        is_pvm_host(),
        start.elapsed().as_secs_f64(),
        report,
        ping
    );
    let context = || {
        let tail = &serial[serial.len().saturating_sub(60)..];
        format!(
            "--- last serial lines:\n{}\n--- VMM stderr:\n{stderr}",
            tail.join("\n")
        )
    };
    if let Some(why) = failure {
        panic!(
            "the Linux guest did not get there: {why}\n{}\n{}",
            report,
            context()
        );
    }
    assert!(
        ping.is_some(),
        "the guest never answered ICMP echo\n{}",
        context()
    );
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "SIGTERM must stop the VMM with 0\n{}",
        context()
    );
    assert_eq!(
        after.0,
        before.0.wrapping_add(1),
        "the mount count went up in the host file"
    );
    assert_ne!(
        after.1, before.1,
        "the last-mount time changed in the host file"
    );
}
