//! Snapshots of a microVM started with `--enable-pci`: the tiny guest's `pci-snap` scenario
//! moves the entropy device's BAR, starts it with MSI-X, gets one interrupt delivered and
//! one held pending by a masked vector, and is snapshotted while it waits; restored in a new
//! VMM (also with `--enable-pci`), the guest finds the BAR, command register and MSI-X
//! control where it left them and the pending bit still set, unmasks the vector and gets
//! the pending interrupt through the restored MSI route, then uses the device again with a
//! new vector. A PCI snapshot is refused by a VMM without `--enable-pci`, and a virtio-mmio
//! one by a VMM with it, both naming the flag, and the VMM stays usable.
//!
//! Needs root (snapshots) and /dev/kvm.

mod api_common;
mod snapshot_common;

use api_common::Vmm;
use kiln_tests::metrics::Metrics;
use kiln_tests::tiny::{field, TinyOutput};
use kiln_tests::{require_bin, require_kvm, ScratchDir};
use snapshot_common::{create_body, load_body};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
/// The guest's wait for its snapshot, in seconds (~1 s each).
const GUEST_WAIT: u32 = 3;

/// A VMM (`extra` flags) booting the tiny guest with `boot_args`, a 4 KiB drive and an
/// entropy device.
fn tiny_vmm(dir: &ScratchDir, extra: &[&str], boot_args: &str) -> Vmm {
    require_kvm();
    let disk = dir.write("data.img", vec![0u8; 4096]);
    let vmm = Vmm::start(extra);
    vmm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
    );
    vmm.ok(
        "PUT",
        "/drives/data",
        &format!(
            r#"{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false}}"#,
            disk.display()
        ),
    );
    vmm.ok("PUT", "/entropy", "{}");
    vmm.boot_tiny_guest(boot_args);
    vmm.action("InstanceStart");
    vmm
}

fn line<'a>(out: &'a TinyOutput, topic: &str, text: &str) -> Vec<(&'a str, &'a str)> {
    out.topic(topic)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no `{topic}` line in\n{text}"))
}

/// The VMM ended (a zombie until its handle reaps it) and wrote its metrics file.
fn exited_with_metrics(vmm: &Vmm, metrics: &Path) -> bool {
    let stat =
        std::fs::read_to_string(format!("/proc/{}/stat", vmm.child.id())).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    matches!(state, Some("Z") | None) && metrics.exists()
}

#[test]
fn a_pci_microvm_is_restored_with_its_bars_msix_table_and_pending_bits() {
    let dir = ScratchDir::new("kiln-snap-pci");
    let (state, mem) = (dir.join("vm.snap"), dir.join("vm.mem"));
    let a = tiny_vmm(
        &dir,
        &["--enable-pci"],
        &format!("console=ttyS0 reboot=k panic=1 kiln.test=pci-snap kiln.wait={GUEST_WAIT}"),
    );
    // The whole line: the test pauses the guest as soon as it is seen.
    a.wait_for("the guest waiting for its snapshot", WAIT, |v| {
        v.serial()
            .split_inclusive('\n')
            .any(|l| l.contains("pci snap ready bar=") && l.ends_with('\n'))
    });
    a.set_state("Paused");
    let before = a.serial();
    a.ok(
        "PUT",
        "/snapshot/create",
        &create_body("Full", &state, &mem),
    );
    drop(a);
    assert!(
        !before.contains("pci snap resumed"),
        "the snapshot came after the guest's wait:\n{before}"
    );
    let out = TinyOutput::parse(&before);
    assert!(out.errors().is_empty(), "{before}");
    // Slot 1: the drive (BAR 0xe0000000); slot 2: the entropy device, its BAR moved 1 MiB
    // up from 0xe0008000.
    assert_eq!(
        out.value("pci snap ready bar"),
        Some("0xe0108000"),
        "{before}"
    );
    assert_eq!(
        line(&out, "pci read", &before),
        [("used", "64"), ("irr", "1")],
        "{before}"
    );
    assert_eq!(
        line(&out, "pci masked", &before),
        [("used", "64"), ("irr", "0"), ("pending", "1")],
        "{before}"
    );
    let out = Command::new(require_bin("vmm"))
        .arg("--describe-snapshot")
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v1.4.0\n", "{out:?}");

    let load = load_body(&state, "File", &mem, r#""resume_vm": true"#);
    // A VMM without --enable-pci cannot give the guest its devices where it left them.
    let plain = Vmm::start(&[]);
    plain.refuses(
        "PUT",
        "/snapshot/load",
        Some(&load),
        400,
        "the snapshot's virtio devices are on PCI, and this VMM was started without --enable-pci",
    );
    plain.assert_alive("the refused PCI snapshot");
    assert_eq!(plain.state(), "Not started");
    drop(plain);

    let metrics = dir.join("metrics.json");
    let b = Vmm::start(&["--enable-pci", "--metrics-path", metrics.to_str().unwrap()]);
    b.ok("PUT", "/snapshot/load", &load);
    b.wait_serial("the end of the scenario", "KILN-TINY: done");
    b.wait_for("the VMM's exit", WAIT, |v| exited_with_metrics(v, &metrics));
    let after = b.serial();
    let out = TinyOutput::parse(&after);
    assert!(out.errors().is_empty(), "{after}");
    assert_eq!(
        line(&out, "pci snap resumed", &after),
        [
            ("bar", "0xe0108000"),
            ("cmd", "0x2"),
            ("msix", "0x8001"),
            ("pending", "1"),
            ("irr", "0")
        ],
        "the BAR where the guest moved it, memory decoding and MSI-X on, the interrupt still pending\n{after}"
    );
    assert_eq!(
        line(&out, "pci snap unmasked", &after),
        [("irr", "1"), ("pending", "0")],
        "unmasking delivers the pending interrupt through the restored route\n{after}"
    );
    let read = line(&out, "pci snap read", &after);
    assert_eq!(field(&read, "used"), Some("64"), "{after}");
    let nonzero: u32 = field(&read, "nonzero").unwrap().parse().unwrap();
    assert!(nonzero > 48, "64 random bytes\n{after}");
    assert_eq!(
        field(&read, "irr"),
        Some("1"),
        "the restored device's MSI-X interrupt arrived\n{after}"
    );
    let m = Metrics::read(&metrics);
    assert_eq!(
        m.get("entropy.entropy_event_count"),
        1,
        "one request after the restore"
    );
    assert_eq!(m.get("pci.kvm_fails"), 0);
    assert_eq!(m.get("pci.bars_refused"), 0);
    assert_eq!(m.get("pci.msix_bad_addresses"), 0);
}

#[test]
fn a_virtio_mmio_snapshot_is_refused_by_a_vmm_with_enable_pci() {
    let dir = ScratchDir::new("kiln-snap-mmio-pci");
    let (state, mem) = (dir.join("vm.snap"), dir.join("vm.mem"));
    let a = tiny_vmm(&dir, &[], "console=ttyS0 reboot=k panic=1 kiln.test=hang");
    a.wait_serial("the guest's start line", "KILN-TINY: start");
    a.set_state("Paused");
    a.ok(
        "PUT",
        "/snapshot/create",
        &create_body("Full", &state, &mem),
    );
    drop(a);
    let load = load_body(&state, "File", &mem, "");
    let pci = Vmm::start(&["--enable-pci"]);
    pci.refuses(
        "PUT",
        "/snapshot/load",
        Some(&load),
        400,
        "the snapshot's virtio devices are on virtio-mmio, and this VMM was started with --enable-pci",
    );
    pci.assert_alive("the refused virtio-mmio snapshot");
    assert_eq!(pci.state(), "Not started");
    drop(pci);
    // The same file loads where it belongs.
    let b = Vmm::start(&[]);
    b.ok("PUT", "/snapshot/load", &load);
    assert_eq!(b.state(), "Paused");
}
