//! Fast tier: virtio-pmem (`pmem`, `PUT /pmem/{id}`) with the tiny test guest.
//!
//! The guest's `pmem` scenario (`pmem-pci` over `--enable-pci`) finds the device, reads
//! the window's address and size from its configuration space, maps the window and reads
//! the host file's bytes through it, writes a pattern, sends a flush request and reads a
//! byte past the file's end; the tests compare with the host file (changed for a
//! read-write device, untouched for a read-only one) and the metrics (`pmem.*`).
//! `pmem-hostile` posts malformed requests, which must be refused and counted while the
//! device keeps working. The API tests check `PUT`/`PATCH /pmem/{id}` and their refusals and
//! `GET /vm/config`; a snapshot's restore maps the file again (`pmem-watch` sees the host's
//! writes before and after it).
//!
//! Needs /dev/kvm and the `vmm` binary (`cargo build --workspace`).

mod api_common;

use api_common::Vmm as ApiVmm;
use kiln_tests::metrics::Metrics;
use kiln_tests::process::Finished;
use kiln_tests::tiny::{self, field, TinyOutput};
use kiln_tests::{require_bin, require_kvm, run_with_timeout, ScratchDir};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);
/// The size of the backing files: not a multiple of 2 MiB (nor of a page).
const FILE_LEN: usize = 5000;
/// Where the guest's pattern goes, and what it is.
const OFFSET: usize = 4096;
const PATTERN: &[u8; 16] = b"KILN-PMEM-WRITE!";

/// A config file booting the tiny guest with `boot_args` and `extra` sections.
fn config(dir: &ScratchDir, boot_args: &str, extra: &str) -> PathBuf {
    dir.write(
        "vm.json",
        format!(
            "{{\"boot-source\": {{\"kernel_image_path\": {:?}, \"boot_args\": {boot_args:?}}},\n \"machine-config\": {{\"vcpu_count\": 1, \"mem_size_mib\": 32}}{extra}}}\n",
            tiny::tiny_guest().to_str().expect("utf-8 path")
        ),
    )
}

/// A backing file of [`FILE_LEN`] bytes, each different from its neighbours.
fn backing(dir: &ScratchDir, name: &str) -> (PathBuf, Vec<u8>) {
    let bytes: Vec<u8> = (0..FILE_LEN)
        .map(|i| u8::try_from(i * 7 % 251).expect("below 251") + 1)
        .collect();
    (dir.write(name, bytes.clone()), bytes)
}

fn pmem_section(path: &Path, read_only: bool) -> String {
    format!(
        ",\n \"pmem\": [{{\"id\": \"p0\", \"path_on_host\": {:?}, \"read_only\": {read_only}}}]",
        path.to_str().unwrap()
    )
}

fn run(cfg: &Path, metrics: &Path, extra: &[&str]) -> Finished {
    require_kvm();
    let mut cmd = Command::new(require_bin("vmm"));
    cmd.arg("--config-file")
        .arg(cfg)
        .arg("--no-api")
        .arg("--metrics-path")
        .arg(metrics)
        .args(extra);
    run_with_timeout(&mut cmd, TIMEOUT)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// FNV-1a (32 bits), the guest's checksum.
fn fnv1a(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn line<'a>(out: &'a TinyOutput, topic: &str, f: &Finished) -> Vec<(&'a str, &'a str)> {
    out.topic(topic)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no `{topic}` line\n{f}"))
}

/// What every run of `pmem`/`pmem-pci` must show: the window at 512 GiB, 2 MiB long, the
/// file's bytes through it, the flush answered, zeros past the file; returns the
/// read-back of the pattern.
fn check_window(out: &TinyOutput, file: &[u8], f: &Finished) -> String {
    let read = line(out, "pmem read", f);
    assert_eq!(field(&read, "len"), Some("64"), "{f}");
    assert_eq!(field(&read, "head"), Some(hex(&file[..16]).as_str()), "{f}");
    let sum = format!("{:#x}", fnv1a(&file[..64]));
    assert_eq!(field(&read, "sum"), Some(sum.as_str()), "{f}");
    let flush = line(out, "pmem flush", f);
    assert_eq!(flush, [("used", "4"), ("status", "0x0")], "{f}");
    assert_eq!(
        line(out, "pmem tail", f),
        [("byte", "0x0")],
        "past the file: zeros\n{f}"
    );
    assert_eq!(line(out, "pmem mapped", f), [("len", "0x200000")], "{f}");
    let wrote = line(out, "pmem wrote", f);
    assert_eq!(field(&wrote, "offset"), Some("4096"), "{f}");
    field(&wrote, "readback").unwrap().to_string()
}

#[test]
fn the_guest_reads_writes_and_flushes_the_file() {
    let dir = ScratchDir::new("kiln-pmem");
    let (path, file) = backing(&dir, "pmem.img");
    let cfg = config(
        &dir,
        "kiln.test=pmem kiln.len=64 kiln.tail=5000",
        &pmem_section(&path, false),
    );
    let metrics = dir.join("metrics.json");
    let f = run(&cfg, &metrics, &[]);
    let out = tiny::assert_clean_run(&f);
    let dev = line(&out, "pmem", &f);
    assert_eq!(field(&dev, "base"), Some("0xd0000000"), "{f}");
    assert_eq!(field(&dev, "start"), Some("0x8000000000"), "512 GiB\n{f}");
    assert_eq!(field(&dev, "size"), Some("0x200000"), "2 MiB\n{f}");
    assert_eq!(field(&dev, "features"), Some("0x100000000"), "{f}");
    assert_eq!(check_window(&out, &file, &f), hex(PATTERN), "{f}");
    let now = std::fs::read(&path).unwrap();
    assert_eq!(now.len(), FILE_LEN, "the file keeps its size");
    assert_eq!(
        &now[OFFSET..OFFSET + 16],
        PATTERN,
        "the guest's write is in the file"
    );
    assert_eq!(&now[..OFFSET], &file[..OFFSET]);
    assert_eq!(&now[OFFSET + 16..], &file[OFFSET + 16..]);
    let m = Metrics::read(&metrics);
    assert_eq!(m.get("pmem.flush_count"), 1, "{f}");
    assert_eq!(m.get("pmem.flush_fails"), 0);
    assert_eq!(m.get("pmem.event_fails"), 0);
    assert_eq!(m.get("pmem.activate_fails"), 0);
    assert!(m.get("pmem.queue_event_count") >= 1);
}

/// With memory hot-plug too, the pmem region follows the hot-plug region (both from 512 GiB,
/// as Firecracker places them), and the guest uses it there.
#[test]
fn with_memory_hotplug_the_window_follows_the_hotplug_region() {
    let dir = ScratchDir::new("kiln-pmem-hp");
    let (path, file) = backing(&dir, "pmem.img");
    let extra = format!(
        "{},\n \"memory-hotplug\": {{\"total_size_mib\": 256}}",
        pmem_section(&path, false)
    );
    let cfg = config(&dir, "kiln.test=pmem kiln.len=64 kiln.tail=5000", &extra);
    let metrics = dir.join("metrics.json");
    let f = run(&cfg, &metrics, &[]);
    let out = tiny::assert_clean_run(&f);
    let dev = line(&out, "pmem", &f);
    assert_eq!(
        field(&dev, "start"),
        Some("0x8010000000"),
        "512 GiB + the 256 MiB hot-plug region\n{f}"
    );
    assert_eq!(check_window(&out, &file, &f), hex(PATTERN), "{f}");
    let now = std::fs::read(&path).unwrap();
    assert_eq!(
        &now[OFFSET..OFFSET + 16],
        PATTERN,
        "the guest's write is in the file"
    );
}

#[test]
fn a_read_only_device_never_changes_the_file() {
    let dir = ScratchDir::new("kiln-pmem-ro");
    let (path, file) = backing(&dir, "pmem.img");
    // Read-only for everyone: the VMM could not open it for writing anyway.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let cfg = config(
        &dir,
        "kiln.test=pmem kiln.tail=5000",
        &pmem_section(&path, true),
    );
    let metrics = dir.join("metrics.json");
    let f = run(&cfg, &metrics, &[]);
    let out = tiny::assert_clean_run(&f);
    assert_eq!(
        check_window(&out, &file, &f),
        hex(&file[OFFSET..OFFSET + 16]),
        "the writes were dropped: the window still shows the file\n{f}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), file, "the file is untouched");
    let m = Metrics::read(&metrics);
    assert_eq!(m.get("pmem.flush_count"), 1, "{f}");
    assert_eq!(m.get("pmem.event_fails"), 0);
}

#[test]
fn over_pci_the_device_and_its_window_are_the_same() {
    let dir = ScratchDir::short("kiln-pmem-pci");
    let (path, file) = backing(&dir, "pmem.img");
    let cfg = config(
        &dir,
        "kiln.test=pmem-pci kiln.tail=5000",
        &pmem_section(&path, false),
    );
    let metrics = dir.join("metrics.json");
    let f = run(&cfg, &metrics, &["--enable-pci"]);
    let out = tiny::assert_clean_run(&f);
    let devs = out.topic("pci dev");
    assert_eq!(devs.len(), 1, "{f}");
    assert_eq!(field(&devs[0], "device"), Some("0x105b"), "{f}");
    let dev = line(&out, "pmem pci", &f);
    assert_eq!(field(&dev, "start"), Some("0x8000000000"), "{f}");
    assert_eq!(field(&dev, "size"), Some("0x200000"), "{f}");
    assert_eq!(check_window(&out, &file, &f), hex(PATTERN), "{f}");
    assert_eq!(&std::fs::read(&path).unwrap()[OFFSET..OFFSET + 16], PATTERN);
    assert_eq!(Metrics::read(&metrics).get("pmem.flush_count"), 1, "{f}");
}

#[test]
fn hostile_requests_are_refused_counted_and_the_device_still_works() {
    let dir = ScratchDir::new("kiln-pmem-hostile");
    let (path, _) = backing(&dir, "pmem.img");
    let cfg = config(&dir, "kiln.test=pmem-hostile", &pmem_section(&path, false));
    let metrics = dir.join("metrics.json");
    let f = run(&cfg, &metrics, &[]);
    let out = tiny::assert_clean_run(&f);
    let cases: Vec<_> = out
        .topic("pmem hostile")
        .into_iter()
        .filter(|c| field(c, "case").is_some())
        .collect();
    let want = [
        "writable",
        "short",
        "type",
        "no-status",
        "readonly-status",
        "long-status",
        "in-window",
        "loop",
        "avail",
    ];
    let names: Vec<&str> = cases.iter().filter_map(|c| field(c, "case")).collect();
    assert_eq!(names, want, "{f}");
    for c in &cases[..8] {
        let name = field(c, "case").unwrap();
        assert_eq!(field(c, "used"), Some("0"), "{name} refused\n{f}");
        assert_eq!(
            field(c, "status"),
            Some("0xdeadbeef"),
            "{name}: no status written\n{f}"
        );
    }
    assert_eq!(
        line(&out, "pmem hostile flush", &f),
        [("used", "4"), ("status", "0x0")],
        "{f}"
    );
    let status = field(&cases[8], "status");
    assert!(
        status
            .and_then(tiny::parse_hex)
            .is_some_and(|s| s & 0x40 != 0),
        "DEVICE_NEEDS_RESET after the broken ring ({status:?})\n{f}"
    );
    assert_eq!(
        line(&out, "pmem after-reset", &f),
        [("used", "4"), ("status", "0x0")],
        "{f}"
    );
    let m = Metrics::read(&metrics);
    assert!(m.get("pmem.event_fails") >= 8, "{f}");
    assert!(m.get("virtio.invalid_chains") >= 8, "{f}");
    assert!(m.get("virtio.avail_ring_errors") >= 1, "{f}");
    assert_eq!(m.get("pmem.flush_count"), 2, "{f}");
}

#[test]
fn the_api_configures_and_patches_pmem_as_firecracker() {
    require_kvm();
    let vmm = ApiVmm::start(&[]);
    let dir = ScratchDir::new("kiln-pmem-api");
    let (path, _) = backing(&dir, "pmem.img");
    let p = path.to_str().unwrap();
    let empty = dir.write("empty.img", Vec::new());
    let body = |id: &str, path: &str, extra: &str| {
        format!(r#"{{"id": "{id}", "path_on_host": "{path}"{extra}}}"#)
    };
    vmm.refuses(
        "PUT",
        "/pmem/other",
        Some(&body("p0", p, "")),
        400,
        "differs from the id in the body",
    );
    vmm.refuses(
        "PUT",
        "/pmem/p0",
        Some(&body("p0", "/nonexistent/kiln.img", "")),
        400,
        "cannot be opened",
    );
    vmm.refuses(
        "PUT",
        "/pmem/p0",
        Some(&body("p0", empty.to_str().unwrap(), "")),
        400,
        "is empty",
    );
    vmm.refuses(
        "PUT",
        "/pmem/p0",
        Some(&body("p0", p, r#", "size": 1"#)),
        400,
        "unknown field `size`",
    );
    vmm.refuses("PUT", "/pmem", Some(&body("p0", p, "")), 400, "/pmem/{id}");
    vmm.ok(
        "PUT",
        "/pmem/p0",
        &body("p0", p, r#", "root_device": true"#),
    );
    // One root device across drives and pmem devices.
    let drive =
        format!(r#"{{"drive_id": "rootfs", "path_on_host": "{p}", "is_root_device": true}}"#);
    vmm.refuses(
        "PUT",
        "/drives/rootfs",
        Some(&drive),
        400,
        "pmem device \"p0\" is already the root device",
    );
    vmm.refuses(
        "PUT",
        "/pmem/p1",
        Some(&body("p1", p, r#", "root_device": true"#)),
        400,
        "\"p0\" is already the root device",
    );
    // The same id replaces the device.
    let limited = r#", "rate_limiter": {"ops": {"size": 5, "refill_time": 100}}"#;
    vmm.ok("PUT", "/pmem/p0", &body("p0", p, limited));
    vmm.refuses(
        "PATCH",
        "/pmem/p0",
        Some(r#"{"id": "p0"}"#),
        400,
        "only possible after InstanceStart",
    );
    let cfg = vmm.get("/vm/config");
    assert_eq!(cfg["pmem"].as_array().map(Vec::len), Some(1), "{cfg}");
    assert_eq!(cfg["pmem"][0]["id"], "p0");
    assert_eq!(cfg["pmem"][0]["path_on_host"], p);
    assert_eq!(cfg["pmem"][0]["root_device"], false);
    assert_eq!(cfg["pmem"][0]["read_only"], false);
    assert_eq!(cfg["pmem"][0]["rate_limiter"]["ops"]["size"], 5);
    vmm.boot_tiny_guest("kiln.test=hang");
    vmm.action("InstanceStart");
    vmm.wait_serial("the guest's start line", "KILN-TINY: start");
    vmm.refuses(
        "PUT",
        "/pmem/p1",
        Some(&body("p1", p, "")),
        400,
        "only possible before InstanceStart",
    );
    vmm.ok(
        "PATCH",
        "/pmem/p0",
        r#"{"id": "p0", "rate_limiter": {"bandwidth": {"size": 1000000, "refill_time": 100}}}"#,
    );
    vmm.ok("PATCH", "/pmem/p0", r#"{"id": "p0"}"#);
    vmm.refuses(
        "PATCH",
        "/pmem/p9",
        Some(r#"{"id": "p9", "rate_limiter": null}"#),
        400,
        "no device with id \"p9\"",
    );
    vmm.refuses(
        "PATCH",
        "/pmem/p0",
        Some(r#"{"id": "p0", "path_on_host": "/x"}"#),
        400,
        "unknown field `path_on_host`",
    );
    let cfg = vmm.get("/vm/config");
    let limiter = &cfg["pmem"][0]["rate_limiter"];
    assert_eq!(limiter["ops"]["size"], 5, "{cfg}");
    assert_eq!(limiter["bandwidth"]["size"], 1_000_000, "{cfg}");
}

/// A snapshot keeps the device's queue and limiter; the file's contents stay in the file,
/// which the restore maps again at the same guest address: the restored guest sees what
/// the host writes into it, and its flushes are answered. A restore whose file is gone, or
/// changed size, is refused.
#[test]
fn a_restore_maps_the_backing_file_again() {
    require_kvm();
    let vmm = ApiVmm::start(&[]);
    let dir = ScratchDir::new("kiln-pmem-snap");
    let (path, file) = backing(&dir, "pmem.img");
    vmm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
    );
    vmm.ok(
        "PUT",
        "/pmem/p0",
        &format!(
            r#"{{"id": "p0", "path_on_host": "{}", "rate_limiter": {{"ops": {{"size": 10, "refill_time": 100}}}}}}"#,
            path.display()
        ),
    );
    vmm.boot_tiny_guest("kiln.test=pmem-watch kiln.count=2");
    vmm.action("InstanceStart");
    vmm.wait_serial("the first flush", "pmem watch flush used=4 status=0x0");
    assert!(
        vmm.serial()
            .contains(&format!("pmem watch n=0 head={}", hex(&file[..16]))),
        "{}",
        vmm.serial()
    );
    // The host writes the file: the running guest sees it.
    let write_head = |bytes: &[u8]| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(bytes, 0).unwrap();
    };
    write_head(b"before-snapshot!");
    vmm.wait_serial(
        "the guest's view of the host's write",
        &format!("pmem watch n=1 head={}", hex(b"before-snapshot!")),
    );
    vmm.wait_for("the second flush", TIMEOUT, |v| {
        v.serial()
            .matches("pmem watch flush used=4 status=0x0")
            .count()
            == 2
    });
    vmm.set_state("Paused");
    let (state, mem) = (dir.join("vm.snap"), dir.join("vm.mem"));
    vmm.ok(
        "PUT",
        "/snapshot/create",
        &format!(
            r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
            state.display(),
            mem.display()
        ),
    );
    drop(vmm);
    let load = format!(
        r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "File", "backend_path": "{}"}}, "resume_vm": true}}"#,
        state.display(),
        mem.display()
    );
    // Without its backing file the snapshot cannot be restored.
    let moved = dir.join("moved.img");
    std::fs::rename(&path, &moved).unwrap();
    let refused = ApiVmm::start(&[]);
    refused.refuses(
        "PUT",
        "/snapshot/load",
        Some(&load),
        400,
        "pmem: the backing file",
    );
    drop(refused);
    std::fs::rename(&moved, &path).unwrap();
    let restored = ApiVmm::start(&[]);
    restored.ok("PUT", "/snapshot/load", &load);
    let cfg = restored.get("/vm/config");
    assert_eq!(cfg["pmem"][0]["id"], "p0", "{cfg}");
    assert_eq!(cfg["pmem"][0]["rate_limiter"]["ops"]["size"], 10, "{cfg}");
    write_head(b"after-restore!!!");
    restored.wait_serial(
        "the restored guest's view of the host's write",
        &format!("pmem watch n=2 head={}", hex(b"after-restore!!!")),
    );
    restored.wait_serial(
        "a flush answered by the restored device",
        "pmem watch flush used=4 status=0x0",
    );
    restored.wait_serial("the guest's end", "KILN-TINY: done");
    drop(restored);
    // A file of another size: another window size, refused by the device's comparison.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(3 << 20)
        .unwrap();
    let refused = ApiVmm::start(&[]);
    let msg = refused.fault("PUT", "/snapshot/load", Some(&load), 400);
    assert!(
        msg.contains("virtio device p0: its configuration space differs"),
        "{msg}"
    );
}

#[test]
fn a_config_file_root_device_goes_on_the_command_line() {
    let dir = ScratchDir::new("kiln-pmem-root");
    let (path, _) = backing(&dir, "pmem.img");
    let (other, _) = backing(&dir, "other.img");
    let extra = format!(
        ",\n \"pmem\": [{{\"id\": \"a\", \"path_on_host\": {:?}}}, {{\"id\": \"b\", \"path_on_host\": {:?}, \"root_device\": true, \"read_only\": true}}]",
        other.to_str().unwrap(),
        path.to_str().unwrap()
    );
    let cfg = config(&dir, "kiln.test=print", &extra);
    let f = run(&cfg, &dir.join("m.json"), &[]);
    let out = tiny::assert_clean_run(&f);
    let cmdline = out.value("cmdline").unwrap_or_default();
    assert!(
        cmdline.starts_with("root=/dev/pmem1 ro "),
        "the second device is the root, read-only: {cmdline}\n{f}"
    );
    // Two devices, two windows: the second's memory follows the first's 2 MiB.
    assert_eq!(
        cmdline.matches("virtio_mmio.device=").count(),
        2,
        "{cmdline}"
    );
}
