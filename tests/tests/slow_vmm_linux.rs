//! Slow tier: Kiln's VMM boots the project's Linux guest (scripts/assets.sh) from
//! `--config-file ... --no-api` with its initramfs: the ELF vmlinux with 1 and 2 vCPUs, and
//! the bzImage once. The test follows the serial console, prints when each milestone was
//! reached, and stops the VMM (SIGTERM, which must exit 0) as soon as the last one is seen:
//! the kernel running /init on kvm_pvm hosts, where guest user space cannot run
//! (shared/notes/host-kvm.md), and kiln-init's ready marker elsewhere.
//!
//! Run with `cargo test -p kiln-tests --test slow_vmm_linux -- --ignored --test-threads=1`
//! (one at a time: each boot keeps a core busy for about a minute on kvm_pvm hosts).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use kiln_tests::assets::{require_linux_assets, KERNEL_CMDLINE};
use kiln_tests::milestones::{all_seen, note, report, Milestone};
use kiln_tests::process::{line_reader, spawn, stderr_reader, terminate};
use kiln_tests::{is_pvm_host, require_bin, require_kvm, KillOnDrop, ScratchDir};

/// The ELF vmlinux reaches /init in about 40 s on kvm_pvm hosts; a bzImage adds ~90 s of
/// emulated decompression. The margins cover a loaded machine.
const VMLINUX_TIMEOUT: Duration = Duration::from_secs(240);
const BZIMAGE_TIMEOUT: Duration = Duration::from_secs(360);
const READY_MARKER: &str = "KILN-INIT: ready";

fn json_path(p: &Path) -> String {
    format!("{:?}", p.to_str().expect("utf-8 path"))
}

/// Boots `kernel` with the initramfs and `vcpus` vCPUs; returns when the last milestone is
/// seen and the VMM has exited after SIGTERM.
fn boot_linux(kernel: &Path, initramfs: &Path, vcpus: u8, timeout: Duration) {
    require_kvm();
    let vmm = require_bin("vmm");
    let dir = ScratchDir::new("kiln-vmm-linux");
    // On kvm_pvm hosts the `Baseline` CPU template hides what the emulator cannot run, in
    // particular KVM's hypercall-based PV features: a guest `vmcall` never returns there, and
    // an SMP Linux sends its IPIs by hypercall when offered PV send-IPI (docs/vmm.md).
    let template = if is_pvm_host() {
        ", \"cpu_template\": \"Baseline\""
    } else {
        ""
    };
    let text = format!(
        "{{\"boot-source\": {{\"kernel_image_path\": {}, \"initrd_path\": {}, \"boot_args\": {:?}}},\n \"machine-config\": {{\"vcpu_count\": {vcpus}, \"mem_size_mib\": 256{template}}}}}\n",
        json_path(kernel),
        json_path(initramfs),
        KERNEL_CMDLINE
    );
    let cfg = dir.write("vm.json", text);

    let mut milestones = vec![
        Milestone::new("first serial output", ""),
        Milestone::new("kernel banner", "Linux version"),
        Milestone::new("MP table found", "found SMP MP-table"),
        Milestone::new("CPUs up", format!("smp: Brought up 1 node, {vcpus} CPU")),
        Milestone::new("kernel runs /init", "Run /init as init process"),
    ];
    if !is_pvm_host() {
        milestones.push(Milestone::new("init ready", READY_MARKER));
    }
    let name = kernel.file_name().unwrap_or_default().to_string_lossy();
    let context = format!("{name}, {vcpus} vCPU(s): ");

    let start = Instant::now();
    let mut child = KillOnDrop::new(spawn(
        Command::new(&vmm)
            .arg("--config-file")
            .arg(&cfg)
            .arg("--no-api")
            .stdin(Stdio::null()),
    ));
    let rx = line_reader(&mut child);
    let stderr_thread = stderr_reader(&mut child);

    let mut console = Vec::new();
    let outcome = loop {
        if all_seen(&milestones) {
            break Ok(());
        }
        let left = timeout.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                note(&mut milestones, &line, start.elapsed(), &context);
                console.push(line);
            }
            Err(RecvTimeoutError::Timeout) => break Err("timed out"),
            Err(RecvTimeoutError::Disconnected) => {
                break Err("the VMM closed its stdout (exited) before the last milestone")
            }
        }
    };
    let status = terminate(&mut child, Duration::from_secs(10));
    let stderr = stderr_thread.join().unwrap_or_default();
    let tail = console
        .iter()
        .rev()
        .take(40)
        .rev()
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    if let Err(why) = outcome {
        panic!("{why} after {:?}; milestones:\n{}\n--- console (last 40 lines):\n{tail}\n--- stderr:\n{stderr}", start.elapsed(), report(&milestones));
    }
    assert!(!stderr.contains("panicked"), "the VMM panicked\n{stderr}");
    let status =
        status.unwrap_or_else(|| panic!("the VMM did not exit within 10 s of SIGTERM\n{stderr}"));
    // The guest may have rebooted on its own just before the signal (init cannot run on
    // kvm_pvm hosts: the kernel panics and, with panic=-1, resets): 0 either way.
    assert_eq!(
        status.code(),
        Some(0),
        "exit status\n--- console:\n{tail}\n--- stderr:\n{stderr}"
    );
}

#[test]
#[ignore = "slow tier: boots the Linux guest (about a minute on kvm_pvm hosts)"]
fn vmlinux_with_initramfs_reaches_init_with_one_vcpu() {
    let a = require_linux_assets();
    boot_linux(&a.vmlinux, &a.initramfs, 1, VMLINUX_TIMEOUT);
}

#[test]
#[ignore = "slow tier: boots the Linux guest (about a minute on kvm_pvm hosts)"]
fn vmlinux_with_initramfs_reaches_init_with_two_vcpus() {
    let a = require_linux_assets();
    boot_linux(&a.vmlinux, &a.initramfs, 2, VMLINUX_TIMEOUT);
}

#[test]
#[ignore = "slow tier: boots the Linux guest's bzImage (about two minutes on kvm_pvm hosts)"]
fn bzimage_with_initramfs_reaches_init() {
    let a = require_linux_assets();
    boot_linux(&a.bz_image, &a.initramfs, 1, BZIMAGE_TIMEOUT);
}
