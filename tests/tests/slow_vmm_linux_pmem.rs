//! Slow tier: the project's Linux guest (scripts/assets.sh) under Kiln's VMM with its root
//! file system on virtio-pmem (`root_device: true`: the VMM adds `root=/dev/pmem0 rw`), mounted
//! with DAX (`rootflags=dax`: the guest's loads and stores go straight to the host file's
//! pages, no guest page cache).
//!
//! ext4 supports DAX only with a block size equal to the page size (4 KiB), and the cached
//! `rootfs.ext4` has 1 KiB blocks (with `rootflags=dax` the kernel would refuse to mount it:
//! "DAX unsupported by block device"). The test therefore makes its own small ext4 image with
//! 4 KiB blocks (`mke2fs`), holding only the 122-byte spinning program it boots as `init=`
//! (on kvm_pvm hosts guest user space cannot make a system call, shared/notes/host-kvm.md).
//! The kernel must find the pmem device, mount the image with DAX as its root and start
//! init; afterwards the host's file shows the mount (the ext4 superblock's mount count and
//! last-mount time changed: the guest wrote them through the shared mapping).
//!
//! Run with `cargo test -p kiln-tests --test slow_vmm_linux_pmem -- --ignored`.

use std::process::{Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use kiln_tests::assets::{require_linux_assets, KERNEL_CMDLINE};
use kiln_tests::elf::spin_init;
use kiln_tests::ext4;
use kiln_tests::milestones::{all_seen, note, report, Milestone};
use kiln_tests::process::{line_reader, spawn, stderr_reader, terminate};
use kiln_tests::{is_pvm_host, require_bin, require_kvm, KillOnDrop, ScratchDir};

/// The kernel mounts its root at ~75 s on kvm_pvm hosts; the margin covers a loaded machine.
const TIMEOUT: Duration = Duration::from_secs(240);
const SPIN_INIT: &str = "/kiln-spin";
/// The image: 16 MiB (a multiple of 2 MiB: the guest's pmem region is the whole file).
const IMAGE_MIB: u64 = 16;

#[test]
#[ignore = "slow tier: boots a Linux kernel (about 1.5 min here) with its root on virtio-pmem (DAX); run with ./test.sh slow"]
fn linux_mounts_its_root_from_pmem_with_dax() {
    require_kvm();
    let assets = require_linux_assets();
    let vmm_bin = require_bin("vmm");
    let scratch = ScratchDir::new("kiln-linux-pmem");

    let image = scratch.join("root-4k.ext4");
    let image_s = image.to_str().expect("utf-8 path");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(IMAGE_MIB << 20))
        .expect("create the image");
    ext4::make(&image, 4096);
    let spin = scratch.write("kiln-spin", spin_init());
    ext4::add_executable(&image, &spin, SPIN_INIT);
    let before = ext4::mount_stamp(&image);

    let boot_args = format!("{KERNEL_CMDLINE} rootflags=dax rootwait init={SPIN_INIT}");
    let cfg = scratch.write(
        "vm.json",
        format!(
            "{{\"boot-source\": {{\"kernel_image_path\": {:?}, \"boot_args\": {boot_args:?}}},\n \
             \"machine-config\": {{\"vcpu_count\": 1, \"mem_size_mib\": 256}},\n \
             \"pmem\": [{{\"id\": \"rootfs\", \"path_on_host\": {image_s:?}, \"root_device\": true}}]}}\n",
            assets.vmlinux.to_str().expect("utf-8 path"),
        ),
    );

    let start = Instant::now();
    let mut cmd = Command::new(&vmm_bin);
    cmd.arg("--config-file")
        .arg(&cfg)
        .arg("--no-api")
        .stdin(Stdio::null());
    let mut vmm = KillOnDrop::new(spawn(&mut cmd));
    let rx = line_reader(&mut vmm);
    let stderr_thread = stderr_reader(&mut vmm);

    let mut milestones = vec![
        Milestone::new("the VMM put the root on pmem0", "root=/dev/pmem0 rw"),
        Milestone::new(
            "ext4 mounted from pmem0 (with rootflags=dax: only if DAX works)",
            "EXT4-fs (pmem0): mounted filesystem",
        ),
        Milestone::new(
            "root mounted read-write",
            "VFS: Mounted root (ext4 filesystem) on device",
        ),
        Milestone::new("init started", format!("Run {SPIN_INIT} as init process")),
    ];
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
                let fatal = [
                    "Kernel panic",
                    "Attempted to kill init",
                    "DAX unsupported",
                    "unsupported blocksize for DAX",
                ]
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
    // Stop the VMM: SIGTERM must end it with exit code 0.
    let status = terminate(&mut vmm, Duration::from_secs(10));
    drop(vmm);
    let stderr = stderr_thread.join().unwrap_or_default();
    let after = ext4::mount_stamp(&image);

    let report = report(&milestones);
    println!(
        "Linux + DAX root on virtio-pmem (kvm_pvm host: {}), stopped at {:.2}s:\n{}\n  superblock (mount count, mount time): {before:?} -> {after:?}",
        is_pvm_host(),
        start.elapsed().as_secs_f64(),
        report,
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
    let pmem_lines: Vec<&String> = serial
        .iter()
        .filter(|l| l.contains("pmem") || l.contains("nd_") || l.contains("dax"))
        .collect();
    println!(
        "  the kernel's pmem lines:\n    {}",
        pmem_lines
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n    ")
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
