//! KVM's in-kernel PIT as a per-VM choice (machine-config `"pit"`, default `true`), seen by
//! the tiny guest's `pit` scenario (channel 0 programmed, then latched and read every
//! ~40 ms: `pit count=0x....`): a default VM's count moves; a `"pit": false` VM has nothing
//! at ports 0x40-0x43 (the VMM answers `0xffff`, and `--strict-io` stops it at the first
//! write to port 0x43). Snapshots keep the choice: both kinds of VM are snapshotted and
//! restored, and the restored one has a PIT exactly when the snapshotted one had; a state
//! file whose configuration disagrees with its PIT state is refused by name; state files of
//! formats v1.0 and v1.1 (before the PIT became optional in v1.2), v1.2 (before the PCI
//! bus's state in v1.3) and v1.3 (before virtio-mem's in v1.4) still load.
//!
//! Needs root (snapshots) and /dev/kvm.

mod api_common;
mod snapshot_common;

use api_common::Vmm;
use kiln_tests::tiny::parse_hex;
use kiln_tests::{require_bin, require_kvm, run_with_timeout, ScratchDir};
use snapshot_common::{create_body, edit_config, load_body, reseal};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
/// What the VMM answers a read of a port with no device.
const NO_DEVICE: u64 = 0xffff;
/// Exit code of a VM stopped by `--strict-io` (docs/vmm.md).
const EXIT_STRICT_IO: i32 = 6;

/// The counts of the complete `pit` lines in `serial`, in order.
fn pit_counts(serial: &str) -> Vec<u64> {
    serial
        .split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
        .filter_map(|l| l.strip_prefix("KILN-TINY: pit count="))
        .map(|v| parse_hex(v).expect("a hex count"))
        .collect()
}

/// A VMM running the `pit` scenario with `machine` extra machine-config fields; waits for
/// 4 count lines.
fn pit_vmm(machine: &str) -> Vmm {
    require_kvm();
    let vmm = Vmm::start(&[]);
    vmm.ok(
        "PUT",
        "/machine-config",
        &format!(r#"{{"vcpu_count": 1, "mem_size_mib": 32{machine}}}"#),
    );
    vmm.boot_tiny_guest("kiln.test=pit");
    vmm.action("InstanceStart");
    wait_pit_lines(&vmm, 4);
    vmm
}

fn wait_pit_lines(vmm: &Vmm, n: usize) {
    vmm.wait_for(&format!("{n} pit lines"), WAIT, |v| {
        pit_counts(&v.serial()).len() >= n
    });
}

/// Counts read from a running PIT: none is the no-device answer, and they move.
fn assert_a_pit_counts(counts: &[u64], context: &str) {
    assert!(
        counts.iter().all(|&c| c != NO_DEVICE),
        "{context}: {counts:x?}"
    );
    let mut distinct = counts.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(
        distinct.len() >= 2,
        "{context}: the count stands still: {counts:x?}"
    );
}

fn assert_no_pit(counts: &[u64], context: &str) {
    assert!(
        !counts.is_empty() && counts.iter().all(|&c| c == NO_DEVICE),
        "{context}: {counts:x?}"
    );
}

#[test]
fn a_vm_has_the_in_kernel_pit_unless_its_machine_config_says_pit_false() {
    let with = pit_vmm("");
    assert_a_pit_counts(&pit_counts(&with.serial()), "default machine-config");
    // A default configuration reads as before the field existed.
    let mc = with.get("/machine-config");
    assert!(mc.get("pit").is_none(), "{mc}");
    assert_eq!(with.get("/vm/config")["machine-config"], mc);
    drop(with);
    let explicit = pit_vmm(r#", "pit": true"#);
    assert_a_pit_counts(&pit_counts(&explicit.serial()), "\"pit\": true");
    drop(explicit);

    let without = pit_vmm(r#", "pit": false"#);
    assert_no_pit(&pit_counts(&without.serial()), "\"pit\": false");
    assert_eq!(without.get("/machine-config")["pit"], false);
    assert_eq!(without.get("/vm/config")["machine-config"]["pit"], false);
    drop(without);

    // PATCH sets it too; in a PUT, null is the default.
    let vmm = Vmm::start(&[]);
    vmm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32, "pit": false}"#,
    );
    vmm.ok("PATCH", "/machine-config", r#"{"pit": true}"#);
    assert!(vmm.get("/machine-config").get("pit").is_none());
    vmm.ok("PATCH", "/machine-config", r#"{"pit": false}"#);
    assert_eq!(vmm.get("/machine-config")["pit"], false);
    vmm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32, "pit": null}"#,
    );
    assert!(vmm.get("/machine-config").get("pit").is_none());
    vmm.refuses(
        "PATCH",
        "/machine-config",
        Some(r#"{"pit": "no"}"#),
        400,
        "expected a boolean",
    );
}

#[test]
fn strict_io_stops_a_vm_without_pit_at_its_first_pit_port() {
    require_kvm();
    let dir = ScratchDir::new("kiln-vmm-pit");
    let cfg = dir.write(
        "vm.json",
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "kiln.test=pit"}},
                "machine-config": {{"vcpu_count": 1, "mem_size_mib": 32, "pit": false}}}}"#,
            kiln_tests::tiny::tiny_guest().display()
        )
        .as_bytes(),
    );
    let f = run_with_timeout(
        Command::new(require_bin("vmm"))
            .arg("--config-file")
            .arg(&cfg)
            .args(["--no-api", "--strict-io"]),
        WAIT,
    );
    assert_eq!(f.code(), EXIT_STRICT_IO, "{f}");
    assert!(
        f.stderr.contains(
            "vCPU 0 stopped: write to I/O port 0x43 (1-byte access) with no device (--strict-io)"
        ),
        "{f}"
    );
    assert!(pit_counts(&f.stdout).is_empty(), "{f}");
}

/// Snapshots the running `vmm` (paused first) into `dir`; returns the state file and the
/// memory file.
fn snapshot(vmm: &Vmm, dir: &ScratchDir, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (state, mem) = (
        dir.join(format!("{name}.snap")),
        dir.join(format!("{name}.mem")),
    );
    vmm.set_state("Paused");
    vmm.ok(
        "PUT",
        "/snapshot/create",
        &create_body("Full", &state, &mem),
    );
    (state, mem)
}

/// Loads `state` (resumed) into a new VMM and waits for 3 new pit lines; returns the VMM
/// and the counts it printed.
fn restore(state: &Path, mem: &Path) -> (Vmm, Vec<u64>) {
    let vmm = Vmm::start(&[]);
    vmm.ok(
        "PUT",
        "/snapshot/load",
        &load_body(state, "File", mem, r#""resume_vm": true"#),
    );
    wait_pit_lines(&vmm, 3);
    let counts = pit_counts(&vmm.serial());
    (vmm, counts)
}

#[test]
fn snapshots_restore_a_vm_with_its_pit_or_without_as_it_was() {
    let dir = ScratchDir::new("kiln-snap-pit");
    for (machine, pit) in [("", true), (r#", "pit": false"#, false)] {
        let a = pit_vmm(machine);
        let name = if pit { "with" } else { "without" };
        let (state, mem) = snapshot(&a, &dir, name);
        let config_a = a.get("/vm/config");
        drop(a);
        let (b, counts) = restore(&state, &mem);
        if pit {
            assert_a_pit_counts(&counts, "restored with its PIT");
        } else {
            assert_no_pit(&counts, "restored without a PIT");
        }
        assert_eq!(
            b.get("/vm/config")["machine-config"],
            config_a["machine-config"]
        );
        // And once more, from the restored VM.
        let (state2, mem2) = snapshot(&b, &dir, &format!("{name}-again"));
        drop(b);
        let (_c, counts) = restore(&state2, &mem2);
        if pit {
            assert_a_pit_counts(&counts, "restored twice with its PIT");
        } else {
            assert_no_pit(&counts, "restored twice without a PIT");
        }
    }
}

#[test]
fn a_snapshot_whose_pit_state_disagrees_with_its_config_is_refused_by_name() {
    let dir = ScratchDir::new("kiln-snap-pit-bad");
    let a = pit_vmm("");
    let (state, mem) = snapshot(&a, &dir, "with");
    drop(a);
    let b = pit_vmm(r#", "pit": false"#);
    let (state_nopit, mem_nopit) = snapshot(&b, &dir, "without");
    drop(b);
    let says_no_pit = dir.join("says-no-pit.snap");
    edit_config(&state, &says_no_pit, |c| {
        c.replace(r#""mem_size_mib":32"#, r#""mem_size_mib":32,"pit":false"#)
    });
    let says_pit = dir.join("says-pit.snap");
    edit_config(&state_nopit, &says_pit, |c| {
        c.replace(r#","pit":false"#, "")
    });
    let vmm = Vmm::start(&[]);
    vmm.refuses(
        "PUT",
        "/snapshot/load",
        Some(&load_body(&says_no_pit, "File", &mem, "")),
        400,
        "the snapshot's configuration says \"pit\": false, and it holds the state of an in-kernel PIT",
    );
    vmm.refuses(
        "PUT",
        "/snapshot/load",
        Some(&load_body(&says_pit, "File", &mem_nopit, "")),
        400,
        "the snapshot's configuration says \"pit\": true, and it does not hold the state of an in-kernel PIT",
    );
    vmm.assert_alive("two refused loads");
}

/// Bytes of a length-prefixed `kvm_irqchip` in the state body (u32 length + 520).
const IRQCHIP_FIELD: usize = 4 + 520;

#[test]
fn state_files_from_before_the_pit_became_optional_still_load_with_their_pit() {
    let dir = ScratchDir::new("kiln-snap-pit-old");
    let a = pit_vmm("");
    // Not named like a rewritten file below (v1N.snap), which would replace it.
    let (state, mem) = snapshot(&a, &dir, "current");
    drop(a);
    // v1.3 bodies are v1.4's without the virtio-mem device's presence byte (the last byte:
    // none on this VM); v1.2 bodies are also without the PCI bus's (the byte before). v1.0
    // and v1.1 bodies are also without the PIT's presence byte (v1.1 also
    // ends each virtio transport's state with its device's: this VM has none): after the
    // configuration (u32 length + text), the memory regions (u32 count + 16 bytes each, then
    // the digest's absence byte) and the three irqchips.
    for minor in [0u16, 1, 2, 3] {
        let old = dir.join(format!("v1{minor}.snap"));
        reseal(&state, &old, Some(minor), |mut body| {
            assert_eq!(body.pop(), Some(0), "no virtio-mem device");
            if minor == 3 {
                return body;
            }
            assert_eq!(body.pop(), Some(0), "no PCI bus");
            if minor == 2 {
                return body;
            }
            let config = u32::from_le_bytes(body[..4].try_into().unwrap()) as usize;
            let regions_at = 4 + config;
            let regions =
                u32::from_le_bytes(body[regions_at..regions_at + 4].try_into().unwrap()) as usize;
            let digest_at = regions_at + 4 + 16 * regions;
            assert_eq!(
                body[digest_at], 0,
                "an unauthenticated snapshot has no digest"
            );
            let presence = digest_at + 1 + 3 * IRQCHIP_FIELD;
            assert_eq!(body[presence], 1, "the PIT's presence byte");
            body.remove(presence);
            body
        });
        let out = Command::new(require_bin("vmm"))
            .arg("--describe-snapshot")
            .arg(&old)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("v1.{minor}.0\n"),
            "{out:?}"
        );
        let (_b, counts) = restore(&old, &mem);
        assert_a_pit_counts(&counts, &format!("restored from format v1.{minor}"));
    }
}
