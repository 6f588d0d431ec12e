//! Fast tier: `--enable-pci` (Firecracker's flag): the virtio devices on PCI bus 0, with
//! the tiny test guest as a firmware-less OS finding them.
//!
//! `pci-scan` probes configuration mechanism #1 at 0xCF8/0xCFC, lists every function (its
//! BAR sized, its capabilities walked) and drives the entropy device with MSI-X, seeing
//! each interrupt in its local APIC's IRR (and a masked one in the pending bits until it is
//! unmasked). `pci-hostile` throws junk at configuration space, BARs (moved over RAM and
//! over another device) and the MSI-X table, then shows the device still works; the
//! metrics count the refusals. Without the flag, there is no bus and the devices stay on
//! virtio-mmio. Snapshots of a PCI microVM: `snapshot_pci.rs`.
//!
//! Needs /dev/kvm and the `vmm` binary (`cargo build --workspace`).

use kiln_tests::metrics::Metrics;
use kiln_tests::tiny::{self, field, TinyOutput};
use kiln_tests::{require_bin, require_kvm, run_with_timeout, Finished, ScratchDir};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A config file booting the tiny guest with `boot_args`, a 4 KiB drive, vsock, entropy
/// and a balloon (`all`), or entropy and the drive only.
fn config(dir: &ScratchDir, boot_args: &str, all: bool) -> PathBuf {
    let disk = dir.write("disk.img", vec![0x5au8; 4096]);
    let mut extra = format!(
        ",\n \"drives\": [{{\"drive_id\": \"d\", \"path_on_host\": {:?}, \"is_root_device\": false}}]",
        disk.to_str().unwrap()
    );
    if all {
        extra += &format!(
            ",\n \"vsock\": {{\"guest_cid\": 3, \"uds_path\": {:?}}},\n \"balloon\": {{\"amount_mib\": 0, \"deflate_on_oom\": false}}",
            dir.join("v.sock").to_str().unwrap()
        );
    }
    extra += ",\n \"entropy\": {}";
    dir.write(
        "vm.json",
        format!(
            "{{\"boot-source\": {{\"kernel_image_path\": {:?}, \"boot_args\": {boot_args:?}}},\n \"machine-config\": {{\"vcpu_count\": 1, \"mem_size_mib\": 32}}{extra}}}\n",
            tiny::tiny_guest().to_str().expect("utf-8 path")
        ),
    )
}

fn run(cfg: &Path, metrics: &Path, pci: bool) -> Finished {
    require_kvm();
    let mut cmd = Command::new(require_bin("vmm"));
    cmd.arg("--config-file")
        .arg(cfg)
        .arg("--no-api")
        .arg("--metrics-path")
        .arg(metrics);
    if pci {
        cmd.arg("--enable-pci");
    }
    run_with_timeout(&mut cmd, TIMEOUT)
}

fn line<'a>(out: &'a TinyOutput, topic: &str) -> Vec<(&'a str, &'a str)> {
    out.topic(topic)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no `{topic}` line"))
}

#[test]
fn the_guest_finds_every_device_on_pci_and_gets_msix_interrupts() {
    let dir = ScratchDir::short("kiln-pci");
    let cfg = config(&dir, "kiln.test=pci-scan", true);
    let metrics = dir.join("metrics.json");
    let f = run(&cfg, &metrics, true);
    let out = tiny::assert_clean_run(&f);
    let bus = line(&out, "pci bus");
    assert_eq!(bus, [("conf1", "1"), ("mmio-entries", "0")], "{f}");
    let bridge = line(&out, "pci bridge");
    assert_eq!(field(&bridge, "id"), Some("0x81b36"), "{f}");
    assert_eq!(
        field(&bridge, "class"),
        Some("0x6000000"),
        "host bridge\n{f}"
    );
    // Drives, vsock, entropy, balloon: slots 1-4, BARs 32 KiB apart from 0xe0000000, one
    // MSI-X vector per queue plus one.
    let devs = out.topic("pci dev");
    let want = [
        ("1", "0x1042", "0xe0000000", "2"),
        ("2", "0x1053", "0xe0008000", "4"),
        ("3", "0x1044", "0xe0010000", "2"),
        ("4", "0x1045", "0xe0018000", "3"),
    ];
    assert_eq!(devs.len(), want.len(), "{f}");
    for (d, (slot, id, bar, msix)) in devs.iter().zip(want) {
        assert_eq!(field(d, "slot"), Some(slot), "{f}");
        assert_eq!(field(d, "device"), Some(id), "{f}");
        assert_eq!(field(d, "bar"), Some(bar), "{f}");
        assert_eq!(field(d, "size"), Some("0x8000"), "{f}");
        assert_eq!(field(d, "caps"), Some("5"), "{f}");
        assert_eq!(field(d, "common"), Some("0x0"), "{f}");
        assert_eq!(field(d, "isr"), Some("0x1000"), "{f}");
        assert_eq!(field(d, "devcfg"), Some("0x2000"), "{f}");
        assert_eq!(field(d, "notify"), Some("0x3000"), "{f}");
        assert_eq!(field(d, "mult"), Some("4"), "{f}");
        assert_eq!(field(d, "msix"), Some(msix), "{f}");
        assert_eq!(field(d, "table"), Some("0x4000"), "{f}");
        assert_eq!(field(d, "pba"), Some("0x5000"), "{f}");
    }
    assert_eq!(out.value("pci devices n"), Some("4"), "{f}");
    let rng = line(&out, "pci start");
    assert_eq!(field(&rng, "status"), Some("0xf"), "{f}");
    assert_eq!(field(&rng, "queues"), Some("1"), "{f}");
    assert_eq!(field(&rng, "vector"), Some("1"), "{f}");
    let read = line(&out, "pci read");
    assert_eq!(field(&read, "used"), Some("64"), "{f}");
    let nonzero: u32 = field(&read, "nonzero").unwrap().parse().unwrap();
    assert!(nonzero > 48, "64 random bytes\n{f}");
    assert_eq!(
        field(&read, "irr"),
        Some("1"),
        "the MSI-X interrupt arrived\n{f}"
    );
    let masked = line(&out, "pci masked");
    assert_eq!(
        masked,
        [("used", "64"), ("irr", "0"), ("pending", "1")],
        "a masked vector holds its interrupt as pending\n{f}"
    );
    let unmasked = line(&out, "pci unmasked");
    assert_eq!(
        unmasked,
        [("irr", "1"), ("pending", "0")],
        "unmasking delivers it\n{f}"
    );
    let m = Metrics::read(&metrics);
    assert_eq!(m.get("entropy.entropy_event_count"), 2);
    assert_eq!(m.get("pci.msix_pending"), 1);
    assert_eq!(m.get("pci.kvm_fails"), 0);
    assert_eq!(m.get("pci.msix_bad_addresses"), 0);
}

#[test]
fn without_the_flag_there_is_no_pci_bus_and_the_devices_stay_on_mmio() {
    let dir = ScratchDir::short("kiln-pci");
    let cfg = config(&dir, "kiln.test=pci-scan", false);
    let f = run(&cfg, &dir.join("m.json"), false);
    let out = TinyOutput::parse(&f.stdout);
    assert_eq!(
        line(&out, "pci bus"),
        [("conf1", "0"), ("mmio-entries", "2")],
        "{f}"
    );
    assert_eq!(out.errors(), ["no PCI bus"], "{f}");
}

#[test]
fn a_hostile_guest_gets_refusals_and_the_device_still_works() {
    let dir = ScratchDir::short("kiln-pci");
    let cfg = config(&dir, "kiln.test=pci-hostile", false);
    let metrics = dir.join("metrics.json");
    let f = run(&cfg, &metrics, true);
    let out = tiny::assert_clean_run(&f);
    assert_eq!(
        line(&out, "pci hostile-ids"),
        [("kept", "1"), ("absent", "0xffffffff")],
        "read-only identification, an empty slot reads all ones\n{f}"
    );
    assert_eq!(
        line(&out, "pci hostile-ram"),
        [("old", "0xffff"), ("image-ok", "1")],
        "a BAR moved over RAM: the old place decodes nothing, RAM stays RAM\n{f}"
    );
    assert_eq!(
        line(&out, "pci hostile-overlap"),
        [("here", "0xffff"), ("other", "0x1")],
        "overlapping BARs decode nothing until moved apart\n{f}"
    );
    assert_eq!(out.value("pci hostile msix-junk"), Some("done"), "{f}");
    assert_eq!(out.value("pci hostile rng-used"), Some("64"), "{f}");
    let m = Metrics::read(&metrics);
    let pci = |name: &str| m.get(&format!("pci.{name}"));
    let counts = [
        "invalid_config_accesses",
        "invalid_bar_accesses",
        "bars_refused",
        "msix_bad_addresses",
    ]
    .map(|n| (n, pci(n)));
    assert!(pci("invalid_config_accesses") >= 10, "{counts:?}\n{f}");
    assert!(pci("invalid_bar_accesses") >= 10, "{counts:?}\n{f}");
    assert!(pci("bars_refused") >= 2, "{counts:?}\n{f}");
    assert!(pci("msix_bad_addresses") >= 2, "{counts:?}\n{f}");
    assert_eq!(m.get("pci.kvm_fails"), 0, "{f}");
}
