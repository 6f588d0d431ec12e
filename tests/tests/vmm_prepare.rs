//! `vmm --prepare-vm` (Kiln; the worker's blank instances use it): the KVM VM is made and the
//! guest memory registered as soon as `PUT /machine-config` has set them, before
//! `InstanceStart`, and nothing is written into that memory until the start.
//!
//! - Without the flag the VMM opens no KVM VM before `InstanceStart`.
//! - With it: none before the machine configuration is set; once set, a VM (`kvm-vm`
//!   descriptor) with its one vCPU made ahead (`kvm-vcpu:0`) but no vCPU thread (nothing
//!   has run it: only a vCPU thread issues `KVM_RUN`), and a guest memory mapping of exactly
//!   the configured size with no resident page; a changed configuration makes a new VM,
//!   vCPU and memory of the new size (the old mapping gone, still one VM and one vCPU);
//!   `InstanceStart` boots on the prepared VM (the boot timer says so) and the guest runs to
//!   its end.
//!
//! Needs /dev/kvm.

mod api_common;

use api_common::Vmm;
use kiln_tests::require_kvm;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// What the VMM's descriptors point to (`anon_inode:kvm-vm`, `anon_inode:kvm-vcpu:0`, ...).
fn fd_targets(vmm: &Vmm) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{}/fd", vmm.child.id()))
        .expect("the VMM's fds")
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|l| l.display().to_string())
        .collect()
}

fn count(fds: &[String], what: &str) -> usize {
    fds.iter().filter(|f| f.contains(what)).count()
}

/// The VMM's threads that run a vCPU (named `vcpu<N>`).
fn vcpu_threads(vmm: &Vmm) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{}/task", vmm.child.id()))
        .expect("the VMM's threads")
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .filter(|c| c.starts_with("vcpu"))
        .collect()
}

/// The resident KiB of each of the VMM's mappings of exactly `size` bytes.
fn mappings_rss_kib(vmm: &Vmm, size: u64) -> Vec<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", vmm.child.id()))
        .expect("the VMM's smaps");
    let mut found = vec![];
    let mut in_mapping = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        let len = first.split_once('-').and_then(|(a, b)| {
            Some(u64::from_str_radix(b, 16).ok()? - u64::from_str_radix(a, 16).ok()?)
        });
        if let Some(len) = len {
            in_mapping = len == size;
        } else if in_mapping {
            if let Some(kib) = line.strip_prefix("Rss:") {
                let kib = kib.trim().trim_end_matches("kB").trim();
                found.push(kib.parse().expect("an Rss figure"));
                in_mapping = false;
            }
        }
    }
    found
}

/// Waits until the VMM has `n` KVM VMs and `n` vCPUs open (they are made after the answer
/// is sent, the vCPUs last).
fn wait_vms(vmm: &Vmm, n: usize) -> Vec<String> {
    let start = Instant::now();
    loop {
        let fds = fd_targets(vmm);
        if count(&fds, "kvm-vm") == n && count(&fds, "kvm-vcpu") == n {
            return fds;
        }
        assert!(
            start.elapsed() < WAIT,
            "expected {n} KVM VMs with a vCPU each, the VMM has: {fds:?}\n{}",
            vmm.stderr()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn machine(vmm: &Vmm, mib: u64) {
    vmm.ok(
        "PUT",
        "/machine-config",
        &format!(r#"{{"vcpu_count": 1, "mem_size_mib": {mib}}}"#),
    );
}

#[test]
fn without_the_flag_no_vm_exists_before_instance_start() {
    require_kvm();
    let vmm = Vmm::start(&[]);
    machine(&vmm, 24);
    vmm.boot_tiny_guest("kiln.test=print");
    // Give a wrongly eager VMM the time to make one.
    std::thread::sleep(Duration::from_millis(200));
    let fds = fd_targets(&vmm);
    assert_eq!(count(&fds, "kvm"), 0, "{fds:?}");
    assert!(mappings_rss_kib(&vmm, 24 << 20).is_empty());
    vmm.action("InstanceStart");
    vmm.wait_serial("the guest's end", "KILN-TINY: done");
}

#[test]
fn the_vm_and_its_untouched_memory_are_made_when_the_machine_is_configured() {
    require_kvm();
    let vmm = Vmm::start(&["--prepare-vm", "--boot-timer"]);
    // Not before the machine configuration is set.
    vmm.boot_tiny_guest("kiln.test=print");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(count(&fd_targets(&vmm), "kvm-vm"), 0);

    machine(&vmm, 24);
    let fds = wait_vms(&vmm, 1);
    assert_eq!(count(&fds, "kvm-vcpu:0"), 1, "the vCPU made ahead: {fds:?}");
    assert_eq!(count(&fds, "kvm-vcpu"), 1, "{fds:?}");
    assert_eq!(
        vcpu_threads(&vmm),
        Vec::<String>::new(),
        "a vCPU thread before InstanceStart: nothing may run the vCPU"
    );
    assert_eq!(
        mappings_rss_kib(&vmm, 24 << 20),
        [0],
        "one 24 MiB guest mapping, nothing resident"
    );

    // A new size: a new VM and memory, the old ones gone.
    machine(&vmm, 40);
    let start = Instant::now();
    while mappings_rss_kib(&vmm, 40 << 20).is_empty() {
        assert!(
            start.elapsed() < WAIT,
            "no 40 MiB mapping:\n{}",
            vmm.stderr()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let fds = wait_vms(&vmm, 1);
    assert_eq!(count(&fds, "kvm-vcpu"), 1, "{fds:?}");
    assert!(vcpu_threads(&vmm).is_empty());
    assert_eq!(mappings_rss_kib(&vmm, 40 << 20), [0]);
    assert!(
        mappings_rss_kib(&vmm, 24 << 20).is_empty(),
        "the memory made for 24 MiB is still mapped"
    );
    assert_eq!(vmm.state(), "Not started");

    vmm.action("InstanceStart");
    vmm.wait_serial("the guest's end", "KILN-TINY: done");
    vmm.wait_for("the boot timer's report", WAIT, |v| {
        let e = v.stderr();
        e.contains("boot-timer: VM and guest memory prepared ahead")
            && e.contains(
                "boot-timer: devices made; the vCPUs prepared ahead given their boot registers",
            )
    });
}
