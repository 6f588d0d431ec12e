//! Fast tier: virtio-blk (and the shared virtio-mmio transport) with the tiny test guest.
//!
//! Each test boots the tiny guest from `vmm --config-file ... --no-api` with one or two
//! drives backed by scratch image files, runs one `blk-*` or hostile `virtio-*` scenario
//! (guest/tiny/README.md), and compares what the guest printed with the host file: sector
//! checksums for reads, the file's bytes after writes (changed only where the guest wrote,
//! never for read-only drives or out-of-range requests). Hostile scenarios also check the
//! VMM's metrics (`--metrics-path`, written at exit) and that the device still serves a
//! normal request afterwards. One test swaps a drive's backing file through the API
//! (`PATCH /drives/{id}`) while the guest waits for the configuration change.
//!
//! Needs /dev/kvm and the `vmm` binary (`cargo test -p vmm -p kiln-tests` builds both).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kiln_tests::metrics::Metrics;
use kiln_tests::process::Followed;
use kiln_tests::tiny::{self, field, parse_hex, TinyOutput};
use kiln_tests::{api, require_bin, require_kvm, run_with_timeout, Finished, ScratchDir};

const TIMEOUT: Duration = Duration::from_secs(30);
const SECTOR: usize = 512;
const IMAGE_SECTORS: usize = 64;

/// The test's scratch directory, with disk images in it.
struct Scratch(ScratchDir);

impl Scratch {
    fn new() -> Self {
        Scratch(ScratchDir::new("kiln-virtio-blk"))
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// A deterministic pseudo-random disk image of `sectors` sectors.
    fn image(&self, name: &str, sectors: usize, seed: u32) -> PathBuf {
        let mut x = seed | 1;
        let bytes: Vec<u8> = (0..sectors * SECTOR)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x.to_le_bytes()[1]
            })
            .collect();
        let p = self.path(name);
        std::fs::write(&p, bytes).expect("write image");
        p
    }
}

/// FNV-1a 32, as the guest computes its `sum=`.
fn fnv1a(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Byte `i` of the guest's `blk-write` data at `sector` (guest/tiny/src/scenarios/blk.rs).
fn pattern(sector: u64, i: usize) -> u8 {
    i.to_le_bytes()[0] ^ sector.to_le_bytes()[0] ^ 0x4b
}

struct Drive<'a> {
    id: &'a str,
    path: &'a Path,
    root: bool,
    read_only: bool,
}

fn drive(id: &str, path: &Path) -> String {
    drive_json(&Drive {
        id,
        path,
        root: false,
        read_only: false,
    })
}

fn drive_json(d: &Drive<'_>) -> String {
    format!(
        "{{\"drive_id\": {:?}, \"path_on_host\": {:?}, \"is_root_device\": {}, \"is_read_only\": {}, \"cache_type\": \"Writeback\"}}",
        d.id,
        d.path.to_str().expect("utf-8 path"),
        d.root,
        d.read_only
    )
}

fn config(boot_args: &str, drives: &[String]) -> String {
    format!(
        "{{\"boot-source\": {{\"kernel_image_path\": {:?}, \"boot_args\": {:?}}},\n \"machine-config\": {{\"vcpu_count\": 1, \"mem_size_mib\": 32}},\n \"drives\": [{}]}}\n",
        tiny::tiny_guest().to_str().expect("utf-8 path"),
        boot_args,
        drives.join(", ")
    )
}

struct Run {
    finished: Finished,
    out: TinyOutput,
    metrics: Metrics,
}

impl Run {
    /// The fields of the guest's lines starting with `topic` (e.g. `blk read`).
    fn lines(&self, topic: &str) -> Vec<Vec<(&str, &str)>> {
        self.out.topic(topic)
    }
}

/// Boots the tiny guest with `boot_args` and `drives`; asserts it ran to `done` without
/// error lines and the VMM exited 0 without panicking.
fn boot(dir: &Scratch, boot_args: &str, drives: &[String]) -> Run {
    require_kvm();
    let cfg = dir.path("vm.json");
    std::fs::write(&cfg, config(boot_args, drives)).expect("write config");
    let metrics = dir.path("metrics.json");
    let _ = std::fs::remove_file(&metrics);
    let mut cmd = Command::new(require_bin("vmm"));
    cmd.arg("--config-file")
        .arg(&cfg)
        .arg("--no-api")
        .arg("--metrics-path")
        .arg(&metrics);
    let finished = run_with_timeout(&mut cmd, TIMEOUT);
    let out = tiny::assert_clean_run(&finished);
    Run {
        finished,
        out,
        metrics: Metrics::read(&metrics),
    }
}

/// The `blk read` line for `sector` (the last one when there are several).
fn read_line(run: &Run, sector: u64) -> Vec<(&str, &str)> {
    let want = sector.to_string();
    run.lines("blk read")
        .into_iter()
        .rfind(|f| field(f, "sector") == Some(want.as_str()))
        .unwrap_or_else(|| panic!("no `blk read sector={sector}` line\n{}", run.finished))
}

/// Asserts a successful read line matches `data` (its checksum and first bytes).
fn assert_read_matches(run: &Run, sector: u64, data: &[u8]) {
    let f = read_line(run, sector);
    assert_eq!(field(&f, "status"), Some("0"), "{}", run.finished);
    assert_eq!(
        field(&f, "len"),
        Some((data.len() + 1).to_string().as_str())
    );
    assert_eq!(
        parse_hex(field(&f, "sum").expect("sum")),
        Some(u64::from(fnv1a(data))),
        "{}",
        run.finished
    );
    let head: String = data[..16].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(field(&f, "head"), Some(head.as_str()));
}

fn sectors(file: &[u8], first: usize, count: usize) -> &[u8] {
    &file[first * SECTOR..(first + count) * SECTOR]
}

#[test]
fn reads_sectors_that_match_the_host_file() {
    let dir = Scratch::new();
    let img = dir.image("disk.img", IMAGE_SECTORS, 7);
    let run = boot(
        &dir,
        "kiln.test=blk-read kiln.sector=5 kiln.count=2",
        &[drive("data", &img)],
    );
    let file = std::fs::read(&img).unwrap();
    assert_read_matches(&run, 5, sectors(&file, 5, 2));
    let dev = &run.lines("blk")[0];
    assert_eq!(
        field(dev, "capacity"),
        Some(IMAGE_SECTORS.to_string().as_str())
    );
    assert_eq!(field(dev, "base"), Some("0xd0000000"));
    assert!(run.metrics.get("block.read_count") >= 1);
    assert_eq!(
        run.metrics.get("virtio.notify_exits"),
        0,
        "notifications went through the ioeventfd"
    );
    assert_eq!(run.metrics.get("block.read_bytes"), 1024);
    let cycles: u64 = field(&read_line(&run, 5), "cycles")
        .unwrap()
        .parse()
        .unwrap();
    eprintln!("2-sector read round trip: {cycles} TSC cycles");
}

#[test]
fn writes_land_in_the_host_file_and_nowhere_else() {
    let dir = Scratch::new();
    let img = dir.image("disk.img", IMAGE_SECTORS, 11);
    let before = std::fs::read(&img).unwrap();
    let run = boot(
        &dir,
        "kiln.test=blk-write kiln.sector=9 kiln.count=2",
        &[drive("data", &img)],
    );
    let w = &run.lines("blk write")[0];
    assert_eq!(field(w, "status"), Some("0"), "{}", run.finished);
    assert_eq!(run.out.value("blk readback sector"), Some("9 match=1"));
    let after = std::fs::read(&img).unwrap();
    assert_eq!(after.len(), before.len(), "the image never grows");
    for (i, (&a, &b)) in after.iter().zip(&before).enumerate() {
        let in_range = (9 * SECTOR..11 * SECTOR).contains(&i);
        let want = if in_range {
            pattern(9, i - 9 * SECTOR)
        } else {
            b
        };
        assert_eq!(a, want, "byte {i} of the image");
    }
    assert_eq!(run.metrics.get("block.write_bytes"), 1024);
    let cycles: u64 = field(w, "cycles").unwrap().parse().unwrap();
    eprintln!("2-sector write round trip: {cycles} TSC cycles");
}

#[test]
fn a_read_only_drive_refuses_writes() {
    let dir = Scratch::new();
    let img = dir.image("ro.img", IMAGE_SECTORS, 13);
    let before = std::fs::read(&img).unwrap();
    let d = drive_json(&Drive {
        id: "ro",
        path: &img,
        root: false,
        read_only: true,
    });
    let run = boot(&dir, "kiln.test=blk-ro kiln.sector=2", &[d]);
    assert_eq!(
        run.out.value("blk ro"),
        Some("1"),
        "VIRTIO_BLK_F_RO offered"
    );
    assert_eq!(
        field(&run.lines("blk write")[0], "status"),
        Some("1"),
        "IOERR\n{}",
        run.finished
    );
    assert_read_matches(&run, 2, sectors(&before, 2, 1));
    assert_eq!(std::fs::read(&img).unwrap(), before);
    assert_eq!(run.metrics.get("block.read_only_write_count"), 1);
}

#[test]
fn out_of_range_requests_fail_and_write_nothing() {
    let dir = Scratch::new();
    let img = dir.image("disk.img", IMAGE_SECTORS, 17);
    let before = std::fs::read(&img).unwrap();
    let run = boot(&dir, "kiln.test=blk-oob", &[drive("data", &img)]);
    let past = IMAGE_SECTORS as u64;
    assert_eq!(
        field(&read_line(&run, past), "status"),
        Some("1"),
        "{}",
        run.finished
    );
    assert_eq!(field(&run.lines("blk write")[0], "status"), Some("1"));
    assert_eq!(field(&read_line(&run, u64::MAX), "status"), Some("1"));
    assert_read_matches(&run, 0, sectors(&before, 0, 1));
    assert_eq!(
        std::fs::read(&img).unwrap(),
        before,
        "no byte changed, the file did not grow"
    );
    assert_eq!(run.metrics.get("block.out_of_range_count"), 3);
}

#[test]
fn flush_syncs_and_get_id_names_the_drive() {
    let dir = Scratch::new();
    let img = dir.image("disk.img", 8, 19);
    let run = boot(&dir, "kiln.test=blk-flush", &[drive("scratch-disk", &img)]);
    assert_eq!(run.out.value("blk flush status"), Some("0"));
    assert_eq!(run.metrics.get("block.flush_count"), 1);
    let flush_bit = 1u64 << 9;
    let features = parse_hex(field(&run.lines("blk")[0], "features").unwrap()).unwrap();
    assert_ne!(
        features & flush_bit,
        0,
        "Writeback drives offer VIRTIO_BLK_F_FLUSH"
    );
    let run = boot(&dir, "kiln.test=blk-id", &[drive("scratch-disk", &img)]);
    assert_eq!(run.out.value("blk id"), Some("scratch-disk status=0"));
    // Ids longer than 20 bytes are cut to the 20 the request has room for.
    let run = boot(
        &dir,
        "kiln.test=blk-id",
        &[drive("a-drive-id-longer-than-twenty", &img)],
    );
    assert_eq!(
        run.out.value("blk id"),
        Some("a-drive-id-longer-th status=0")
    );
}

#[test]
fn the_root_drive_is_vda_and_the_second_drive_the_next_window() {
    let dir = Scratch::new();
    let root = dir.image("root.img", 16, 23);
    let data = dir.image("data.img", 32, 29);
    let drives = [
        // Listed second, but the root drive still comes first (/dev/vda).
        drive("data", &data),
        drive_json(&Drive {
            id: "root",
            path: &root,
            root: true,
            read_only: true,
        }),
    ];
    let run = boot(&dir, "kiln.test=print", &drives);
    let cmdline = run.out.value("cmdline").expect("cmdline line");
    assert!(cmdline.starts_with("root=/dev/vda ro "), "{cmdline}");
    assert!(
        cmdline.contains("virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"),
        "{cmdline}"
    );
    let run = boot(&dir, "kiln.test=blk-read kiln.dev=1", &drives);
    assert_eq!(field(&run.lines("blk")[0], "base"), Some("0xd0001000"));
    assert_read_matches(&run, 0, sectors(&std::fs::read(&data).unwrap(), 0, 1));
    // The command line's own root= wins.
    let run = boot(&dir, "kiln.test=print root=/dev/vdb", &drives);
    assert!(!run.out.value("cmdline").unwrap().contains("/dev/vda"));
}

#[test]
fn a_looping_chain_is_returned_empty_and_the_device_goes_on() {
    let dir = Scratch::new();
    let img = dir.image("disk.img", 8, 31);
    let before = std::fs::read(&img).unwrap();
    let run = boot(&dir, "kiln.test=virtio-loop", &[drive("data", &img)]);
    let used = run.lines("loop used");
    assert_eq!(used.len(), 2, "{}", run.finished);
    assert!(
        used.iter().all(|f| field(f, "len") == Some("0")),
        "{}",
        run.finished
    );
    assert_eq!(
        run.out.value("loop status"),
        Some("0xf"),
        "no DEVICE_NEEDS_RESET"
    );
    assert_read_matches(&run, 0, sectors(&before, 0, 1));
    assert_eq!(run.metrics.get("virtio.invalid_chains"), 2);
    assert_eq!(std::fs::read(&img).unwrap(), before);
}

#[test]
fn buffers_outside_guest_memory_are_refused() {
    let dir = Scratch::new();
    let img = dir.image("disk.img", 8, 37);
    let before = std::fs::read(&img).unwrap();
    let run = boot(&dir, "kiln.test=virtio-oob", &[drive("data", &img)]);
    let used = run.lines("oob used");
    assert_eq!(used.len(), 3, "{}", run.finished);
    assert!(
        used.iter().all(|f| field(f, "len") == Some("0")),
        "{}",
        run.finished
    );
    assert_eq!(run.out.value("oob status"), Some("0xf"));
    assert_read_matches(&run, 0, sectors(&before, 0, 1));
    assert_eq!(run.metrics.get("virtio.invalid_chains"), 3);
    assert_eq!(std::fs::read(&img).unwrap(), before);
}

#[test]
fn queue_size_and_index_abuse_need_a_reset_then_work_again() {
    let dir = Scratch::new();
    let img = dir.image("disk.img", 8, 41);
    let before = std::fs::read(&img).unwrap();
    let run = boot(&dir, "kiln.test=virtio-qsize", &[drive("data", &img)]);
    assert_eq!(run.out.value("qsize max"), Some("256"));
    let needs_reset = |v: &str| parse_hex(v).is_some_and(|s| s & 0x40 != 0);
    for line in run.lines("qsize") {
        if let Some(status) = field(&line, "status") {
            assert!(
                needs_reset(status),
                "DEVICE_NEEDS_RESET expected: {line:?}\n{}",
                run.finished
            );
        }
    }
    assert_eq!(
        run.lines("qsize")
            .iter()
            .filter(|f| field(f, "status").is_some())
            .count(),
        4
    );
    assert_read_matches(&run, 0, sectors(&before, 0, 1));
    assert_eq!(run.metrics.get("virtio.activate_fails"), 2);
    assert_eq!(run.metrics.get("virtio.avail_ring_errors"), 2);
    assert_eq!(run.metrics.get("virtio.needs_reset"), 4);
    assert!(run.metrics.get("virtio.resets") >= 4);
    assert_eq!(std::fs::read(&img).unwrap(), before);
}

#[test]
fn a_storm_of_notifications_is_absorbed() {
    let dir = Scratch::new();
    let img = dir.image("disk.img", 8, 61);
    let run = boot(
        &dir,
        "kiln.test=virtio-kicks kiln.kicks=100000",
        &[drive("data", &img)],
    );
    let kicks = &run.lines("kicks")[0];
    assert_eq!(field(kicks, "n"), Some("100000"), "{}", run.finished);
    let cycles: u64 = field(kicks, "cycles").unwrap().parse().unwrap();
    eprintln!("100000 notifications: {cycles} TSC cycles");
    assert_read_matches(&run, 0, sectors(&std::fs::read(&img).unwrap(), 0, 1));
    // Notifications coalesce in the eventfd: far fewer queue events than kicks.
    assert!(run.metrics.get("block.queue_event_count") < 100_000);
    assert_eq!(run.metrics.get("virtio.notify_exits"), 0);
}

#[test]
fn junk_register_accesses_are_ignored() {
    let dir = Scratch::new();
    let img = dir.image("disk.img", 8, 43);
    let before = std::fs::read(&img).unwrap();
    let run = boot(&dir, "kiln.test=virtio-mmio-junk", &[drive("data", &img)]);
    assert_eq!(
        run.out.value("junk read16"),
        Some("0x0 undefined=0x0 notify=0x0")
    );
    assert_eq!(
        run.out.value("junk magic"),
        Some("0x74726976 version=2 status=0x0")
    );
    assert_read_matches(&run, 0, sectors(&before, 0, 1));
    assert!(
        run.metrics.get("virtio.invalid_mmio_accesses") >= 15,
        "{:?}",
        run.metrics
    );
    assert!(run.metrics.get("virtio.invalid_status_writes") >= 1);
    assert_eq!(std::fs::read(&img).unwrap(), before);
}

#[test]
fn a_missing_backing_file_is_a_clear_error() {
    let dir = Scratch::new();
    let img = dir.image("disk.img", 8, 47);
    require_kvm();
    let cfg = dir.path("vm.json");
    std::fs::write(&cfg, config("kiln.test=print", &[drive("data", &img)])).unwrap();
    std::fs::remove_file(&img).unwrap();
    let mut cmd = Command::new(require_bin("vmm"));
    cmd.arg("--config-file").arg(&cfg).arg("--no-api");
    let f = run_with_timeout(&mut cmd, TIMEOUT);
    assert_ne!(f.code(), 0, "{f}");
    assert!(f.stderr.contains("disk.img"), "{f}");
    assert!(!f.stderr.contains("panicked"), "{f}");
}

#[test]
fn patch_drive_swaps_the_backing_file_of_a_running_guest() {
    require_kvm();
    let dir = Scratch::new();
    let first = dir.image("first.img", 16, 53);
    let second = dir.image("second.img", 40, 59);
    let cfg = dir.path("vm.json");
    std::fs::write(&cfg, config("kiln.test=blk-swap", &[drive("data", &first)])).unwrap();
    let sock = dir.path("api.sock");
    let mut vmm = Followed::spawn(
        Command::new(require_bin("vmm"))
            .arg("--config-file")
            .arg(&cfg)
            .arg("--api-sock")
            .arg(&sock),
    );
    // Follow the guest until it waits for the change.
    loop {
        let left = TIMEOUT.saturating_sub(vmm.started().elapsed());
        let Some(line) = vmm.next_line(left) else {
            panic!(
                "the guest never waited for the swap; output so far:\n{}",
                vmm.seen()
            )
        };
        if line.contains("blk waiting generation=") {
            break;
        }
    }
    let body = format!(
        "{{\"drive_id\": \"data\", \"path_on_host\": {:?}}}",
        second.to_str().unwrap()
    );
    assert_eq!(api::request(&sock, "PATCH", "/drives/data", &body).0, 204);
    // An unknown drive is refused.
    let bad = "{\"drive_id\": \"nope\", \"path_on_host\": \"/nonexistent\"}";
    assert_eq!(api::request(&sock, "PATCH", "/drives/nope", bad).0, 400);
    // The guest reads again, then ends the VM.
    let finished = vmm.finish(TIMEOUT);
    let out = TinyOutput::parse(&finished.stdout);
    assert!(out.done && out.errors().is_empty(), "{finished}");
    let config_line = &out.topic("blk config")[0];
    assert_eq!(field(config_line, "capacity"), Some("40"), "{finished}");
    assert_eq!(field(config_line, "generation"), Some("1"));
    assert_eq!(
        parse_hex(field(config_line, "interrupt").unwrap()).map(|i| i & 2),
        Some(2),
        "config-change interrupt"
    );
    let run = Run {
        out,
        metrics: Metrics::default(),
        finished,
    };
    let reads = run.lines("blk read");
    assert_eq!(reads.len(), 2);
    let sum = |p: &Path| format!("{:#x}", fnv1a(sectors(&std::fs::read(p).unwrap(), 0, 1)));
    assert_eq!(field(&reads[0], "sum"), Some(sum(&first).as_str()));
    assert_eq!(field(&reads[1], "sum"), Some(sum(&second).as_str()));
}
