//! Fast tier: the balloon (`PUT /balloon`, virtio-balloon) with the tiny test guest.
//!
//! The guest's `balloon` scenario touches 32 MiB of its RAM, inflates by the host's target
//! (giving the frame numbers of pages it touched), then deflates when the target falls,
//! answering statistics requests all along. The tests measure the VMM's resident memory
//! (`/proc/<pid>/status`) falling by about the inflated amount, check `GET /balloon`,
//! `GET /balloon/statistics` and `GET /vm/config`, the metrics (`balloon.*`), that the
//! deflated pages come back zeroed (the host dropped them), the same with transparent huge
//! pages, and that a snapshot of a VM with an inflated balloon restores and deflates. The hostile driver (`balloon-hostile`)
//! is in this suite too.
//!
//! Free page reporting and hinting (`balloon-free`, `balloon-free-hostile`): the guest
//! reports half of 32 MiB it touched and hints the other half in runs the host starts
//! (`/balloon/hinting/{start,status,stop}`); the VMM's resident memory falls by each, the
//! hinting status and `acknowledge_on_stop` behave as Firecracker's, both survive a
//! snapshot, and a hostile driver's ranges are counted.
//!
//! Needs /dev/kvm and the `vmm` binary (`cargo build --workspace`).

mod api_common;
mod snapshot_common;

use api_common::Vmm;
use kiln_tests::metrics::Metrics;
use kiln_tests::require_kvm;
use kiln_tests::tiny::{field, TinyOutput};
use serde_json::Value;
use snapshot_common::{create_body, load_body};
use std::path::Path;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
/// What the guest touches and the host then asks for.
const TOUCHED_MIB: u64 = 32;

/// The VMM's resident memory in KiB (`VmRSS`).
fn rss_kib(vmm: &Vmm) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", vmm.child.id()))
        .expect("the VMM's /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// A VMM with the metrics file, a 64 MiB tiny guest running `balloon`, and the balloon
/// (target 0, statistics every second), started.
fn balloon_vmm(dir_metrics: &Path) -> Vmm {
    balloon_vmm_with(dir_metrics, "")
}

/// As [`balloon_vmm`], with `machine` added to the machine configuration.
fn balloon_vmm_with(dir_metrics: &Path, machine: &str) -> Vmm {
    require_kvm();
    let vmm = Vmm::start(&["--metrics-path", dir_metrics.to_str().unwrap()]);
    vmm.ok(
        "PUT",
        "/machine-config",
        &format!(r#"{{"vcpu_count": 1, "mem_size_mib": 64{machine}}}"#),
    );
    vmm.boot_tiny_guest(&format!(
        "kiln.test=balloon kiln.mib={TOUCHED_MIB} kiln.base=16 kiln.ram=64"
    ));
    vmm.ok(
        "PUT",
        "/balloon",
        r#"{"amount_mib": 0, "deflate_on_oom": true, "stats_polling_interval_s": 1}"#,
    );
    assert_eq!(
        vmm.get("/balloon"),
        serde_json::json!({"amount_mib": 0, "deflate_on_oom": true,
            "stats_polling_interval_s": 1, "free_page_hinting": false,
            "free_page_reporting": false})
    );
    vmm.action("InstanceStart");
    wait_line(&vmm, "balloon touched pages=8192");
    vmm
}

/// Waits for `GET /balloon/statistics` to satisfy `cond`; returns the last answer.
fn wait_stats(vmm: &Vmm, cond: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let s = vmm.get("/balloon/statistics");
        if cond(&s) {
            return s;
        }
        assert!(t.elapsed() < WAIT, "statistics never got there: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for a whole serial line containing `text` (its end written too).
fn wait_line(vmm: &Vmm, text: &str) {
    vmm.wait_for(text, WAIT, |v| {
        v.serial()
            .split_once(text)
            .is_some_and(|(_, rest)| rest.contains('\n'))
    });
}

fn line<'a>(out: &'a TinyOutput, topic: &str) -> Vec<(&'a str, &'a str)> {
    out.topic(topic)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no {topic:?} line"))
}

#[test]
fn inflating_gives_the_touched_memory_back_and_deflating_takes_it() {
    let scratch = kiln_tests::ScratchDir::new("kiln-balloon");
    let metrics = scratch.join("metrics.json");
    let mut vmm = balloon_vmm(&metrics);
    let serial = vmm.serial();
    let first = TinyOutput::parse(&serial);
    let dev = line(&first, "balloon");
    // VERSION_1, STATS_VQ and DEFLATE_ON_OOM.
    assert_eq!(field(&dev, "features"), Some("0x100000006"), "{serial}");
    let before = rss_kib(&vmm);
    assert!(
        before > TOUCHED_MIB << 10,
        "RSS {before} KiB with 32 MiB touched"
    );
    vmm.ok(
        "PATCH",
        "/balloon",
        &format!(r#"{{"amount_mib": {TOUCHED_MIB}}}"#),
    );
    wait_line(&vmm, "balloon inflated");
    let after = rss_kib(&vmm);
    let freed = before.saturating_sub(after);
    assert!(
        freed >= (TOUCHED_MIB - 2) << 10,
        "RSS {before} KiB -> {after} KiB: only {freed} KiB given back"
    );
    let out = TinyOutput::parse(&vmm.serial());
    let inflated = line(&out, "balloon inflated");
    assert_eq!(field(&inflated, "pages"), Some("8192"));
    assert_eq!(field(&inflated, "actual"), Some("8192"));
    let s = wait_stats(&vmm, |s| {
        s["actual_mib"] == TOUCHED_MIB && s["minor_faults"].as_u64().unwrap_or(0) >= 1
    });
    assert_eq!(s["target_pages"], 8192);
    assert_eq!(s["target_mib"], TOUCHED_MIB);
    assert_eq!(s["total_memory"], 64u64 << 20);
    assert_eq!(s["free_memory"], 32u64 << 20);
    assert!(s.get("swap_in").is_none(), "never reported: {s}");
    assert_eq!(vmm.get("/balloon")["amount_mib"], TOUCHED_MIB);
    assert_eq!(vmm.get("/vm/config")["balloon"]["amount_mib"], TOUCHED_MIB);
    // A new interval is taken; turning statistics off is not.
    vmm.ok(
        "PATCH",
        "/balloon/statistics",
        r#"{"stats_polling_interval_s": 2}"#,
    );
    vmm.refuses(
        "PATCH",
        "/balloon/statistics",
        Some(r#"{"stats_polling_interval_s": 0}"#),
        400,
        "cannot be turned on or off",
    );
    vmm.refuses(
        "PATCH",
        "/balloon",
        Some(r#"{"amount_mib": 65}"#),
        400,
        "amount_mib 65 is more than the guest's memory (64 MiB)",
    );
    vmm.refuses(
        "PUT",
        "/balloon",
        Some(r#"{"amount_mib": 1, "deflate_on_oom": false}"#),
        400,
        "only possible before InstanceStart",
    );
    // The hinting commands need free_page_hinting (Firecracker: 400).
    for (method, path) in [
        ("PATCH", "/balloon/hinting/start"),
        ("GET", "/balloon/hinting/status"),
        ("PATCH", "/balloon/hinting/stop"),
    ] {
        vmm.refuses(
            method,
            path,
            None,
            400,
            "free page hinting is disabled (free_page_hinting was false",
        );
    }
    vmm.action("FlushMetrics");
    // Deflate to 8 MiB: the guest takes 24 MiB back and finds them zeroed.
    vmm.ok("PATCH", "/balloon", r#"{"amount_mib": 8}"#);
    wait_line(&vmm, "balloon deflated");
    let out = TinyOutput::parse(&vmm.serial());
    let deflated = line(&out, "balloon deflated");
    assert_eq!(field(&deflated, "pages"), Some("6144"));
    assert_eq!(field(&deflated, "actual"), Some("2048"));
    assert_eq!(
        field(&deflated, "zeroed"),
        Some("6144"),
        "the host dropped them"
    );
    vmm.wait_serial("the guest's end", "KILN-TINY: done");
    // The last metrics line is written when the VMM ends (the guest's reset).
    let t = Instant::now();
    while vmm.child.try_wait().expect("wait for the VMM").is_none() {
        assert!(t.elapsed() < WAIT, "the VMM did not end after the guest");
        std::thread::sleep(Duration::from_millis(10));
    }
    let m = Metrics::read(&metrics);
    assert!(m.get("balloon.inflated_pages") >= 8192, "{m:?}");
    assert!(m.get("balloon.inflate_count") >= 32, "{m:?}");
    assert!(m.get("balloon.stats_updates_count") >= 1, "{m:?}");
    assert_eq!(m.get("balloon.invalid_pfns"), 0);
    assert_eq!(m.get("balloon.event_fails"), 0);
    // PATCH /balloon three times (one refused), /balloon/statistics twice (one refused).
    assert_eq!(m.get("patch_api_requests.balloon_count"), 5, "{m:?}");
    assert_eq!(m.get("patch_api_requests.balloon_fails"), 2, "{m:?}");
    assert_eq!(m.get("put_api_requests.balloon_count"), 2, "{m:?}");
    assert_eq!(m.get("put_api_requests.balloon_fails"), 1, "{m:?}");
    assert_eq!(m.get("balloon.deflated_pages"), 6144, "{m:?}");
}

/// With transparent huge pages the touched range may be backed by 2 MiB pages; giving back
/// its 4 KiB pages still frees them (the kernel splits what it must).
#[test]
fn transparent_huge_pages_are_given_back_too() {
    let scratch = kiln_tests::ScratchDir::new("kiln-balloon-thp");
    let vmm = balloon_vmm_with(
        &scratch.join("metrics.json"),
        r#", "huge_pages": "Transparent""#,
    );
    let before = rss_kib(&vmm);
    vmm.ok(
        "PATCH",
        "/balloon",
        &format!(r#"{{"amount_mib": {TOUCHED_MIB}}}"#),
    );
    wait_line(&vmm, "balloon inflated");
    let after = rss_kib(&vmm);
    let freed = before.saturating_sub(after);
    assert!(
        freed >= (TOUCHED_MIB - 2) << 10,
        "RSS {before} KiB -> {after} KiB: only {freed} KiB given back"
    );
    vmm.ok("PATCH", "/balloon", r#"{"amount_mib": 0}"#);
    wait_line(&vmm, "balloon deflated");
    let out = TinyOutput::parse(&vmm.serial());
    assert_eq!(
        field(&line(&out, "balloon deflated"), "zeroed"),
        Some("8192")
    );
}

#[test]
fn a_snapshot_with_an_inflated_balloon_restores_and_deflates() {
    let scratch = kiln_tests::ScratchDir::new("kiln-balloon-snap");
    let (state, mem) = (scratch.join("vm.snap"), scratch.join("vm.mem"));
    let a = balloon_vmm(&scratch.join("metrics-a.json"));
    a.ok(
        "PATCH",
        "/balloon",
        &format!(r#"{{"amount_mib": {TOUCHED_MIB}}}"#),
    );
    wait_line(&a, "balloon inflated");
    wait_stats(&a, |s| s["minor_faults"].as_u64().unwrap_or(0) >= 1);
    a.set_state("Paused");
    a.ok(
        "PUT",
        "/snapshot/create",
        &create_body("Full", &state, &mem),
    );
    let config_a = a.get("/vm/config");
    drop(a);
    let b = Vmm::start(&[]);
    b.ok(
        "PUT",
        "/snapshot/load",
        &load_body(&state, "File", &mem, r#""resume_vm": true"#),
    );
    assert_eq!(b.get("/vm/config")["balloon"], config_a["balloon"]);
    // The driver's `actual` and the statistics came back with the device.
    let s = wait_stats(&b, |s| {
        s["actual_mib"] == TOUCHED_MIB && s["total_memory"] == 64u64 << 20
    });
    assert_eq!(s["target_mib"], TOUCHED_MIB);
    // The statistics keep flowing: the held buffer was offered again.
    let answered = s["minor_faults"].as_u64().unwrap();
    wait_stats(&b, |s| s["minor_faults"].as_u64().unwrap_or(0) > answered);
    b.ok("PATCH", "/balloon", r#"{"amount_mib": 0}"#);
    wait_line(&b, "balloon deflated");
    let out = TinyOutput::parse(&b.serial());
    let deflated = line(&out, "balloon deflated");
    assert_eq!(field(&deflated, "pages"), Some("8192"));
    assert_eq!(field(&deflated, "actual"), Some("0"));
    assert_eq!(field(&deflated, "zeroed"), Some("8192"));
}

/// A hostile driver: frames outside RAM, duplicates, malformed lists, a looping chain, a
/// flooding stats queue and a broken available index. Every chain comes back, the device
/// breaks only at the broken index, works again after a reset, the VMM stays up and the
/// metrics count each kind.
#[test]
fn a_hostile_driver_is_counted_and_the_vmm_stays_up() {
    require_kvm();
    let dir = kiln_tests::ScratchDir::new("kiln-balloon-hostile");
    let metrics = dir.join("metrics.json");
    let cfg = dir.write(
        "vm.json",
        format!(
            "{{\"boot-source\": {{\"kernel_image_path\": {:?}, \"boot_args\": \"kiln.test=balloon-hostile\"}},\n \"machine-config\": {{\"vcpu_count\": 1, \"mem_size_mib\": 32}},\n \"balloon\": {{\"amount_mib\": 0, \"deflate_on_oom\": false, \"stats_polling_interval_s\": 1}}}}\n",
            kiln_tests::tiny::tiny_guest().to_str().expect("utf-8 path")
        ),
    );
    let f = kiln_tests::run_with_timeout(
        std::process::Command::new(kiln_tests::require_bin("vmm"))
            .arg("--config-file")
            .arg(&cfg)
            .arg("--no-api")
            .arg("--metrics-path")
            .arg(&metrics),
        WAIT,
    );
    let out = kiln_tests::tiny::assert_clean_run(&f);
    let cases = out.topic("balloon hostile");
    let names: Vec<&str> = cases.iter().filter_map(|c| field(c, "case")).collect();
    assert_eq!(
        names,
        [
            "outside",
            "duplicate",
            "writable",
            "odd",
            "long",
            "list-outside",
            "loop",
            "deflate-writable",
            "stats-flood",
            "avail"
        ],
        "{f}"
    );
    for c in &cases[..8] {
        assert_eq!(field(c, "used"), Some("0"), "{f}");
    }
    let flood = &cases[8];
    let returned: u64 = field(flood, "returned").unwrap().parse().unwrap();
    assert!(
        returned >= 100,
        "extra stats buffers come back at once: {f}"
    );
    let status = kiln_tests::tiny::parse_hex(field(&cases[9], "status").unwrap()).unwrap();
    assert_eq!(status & 0x40, 0x40, "DEVICE_NEEDS_RESET: {f}");
    assert_eq!(
        field(&line(&out, "balloon after-reset"), "used"),
        Some("0"),
        "{f}"
    );
    let m = Metrics::read(&metrics);
    assert!(m.get("balloon.invalid_pfns") >= 3, "{m:?}");
    assert!(m.get("balloon.duplicate_pfns") >= 2, "{m:?}");
    // writable, odd, long, list-outside, loop, deflate-writable.
    assert!(m.get("balloon.event_fails") >= 6, "{m:?}");
    assert!(m.get("balloon.stats_update_fails") >= returned, "{m:?}");
    assert!(m.get("virtio.needs_reset") >= 1, "{m:?}");
    assert!(m.get("virtio.invalid_chains") >= 1, "{m:?}");
    // The free page given twice and once after the reset.
    assert!(m.get("balloon.inflated_pages") >= 2, "{m:?}");
}

/// A VMM with the metrics file, a 64 MiB tiny guest running `balloon-free` (`runs` hinting
/// runs) and a balloon with free page hinting and reporting, started; the hinting commands
/// are refused before the start as Firecracker refuses them.
fn free_page_vmm(metrics: &Path, runs: u32) -> Vmm {
    require_kvm();
    let vmm = Vmm::start(&["--metrics-path", metrics.to_str().unwrap()]);
    vmm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
    );
    vmm.boot_tiny_guest(&format!(
        "kiln.test=balloon-free kiln.mib={TOUCHED_MIB} kiln.base=16 kiln.runs={runs}"
    ));
    vmm.ok(
        "PUT",
        "/balloon",
        r#"{"amount_mib": 0, "deflate_on_oom": false, "free_page_hinting": true,
            "free_page_reporting": true}"#,
    );
    assert_eq!(
        vmm.get("/balloon"),
        serde_json::json!({"amount_mib": 0, "deflate_on_oom": false,
            "stats_polling_interval_s": 0, "free_page_hinting": true,
            "free_page_reporting": true})
    );
    for (method, path) in [
        ("PATCH", "/balloon/hinting/start"),
        ("GET", "/balloon/hinting/status"),
        ("PATCH", "/balloon/hinting/stop"),
    ] {
        vmm.refuses(method, path, None, 400, "only possible after InstanceStart");
    }
    vmm.action("InstanceStart");
    wait_line(&vmm, "balloon-free touched pages=8192");
    vmm
}

/// The RSS fell from `before` by at least `mib` - 2 MiB.
fn assert_fell(vmm: &Vmm, before: u64, mib: u64, what: &str) -> u64 {
    let after = rss_kib(vmm);
    let freed = before.saturating_sub(after);
    assert!(
        freed >= (mib - 2) << 10,
        "{what}: RSS {before} KiB -> {after} KiB: only {freed} KiB given back"
    );
    after
}

fn status(vmm: &Vmm) -> Value {
    vmm.get("/balloon/hinting/status")
}

#[test]
fn free_page_reporting_and_hinting_give_memory_back() {
    let scratch = kiln_tests::ScratchDir::new("kiln-balloon-free");
    let metrics = scratch.join("metrics.json");
    let mut vmm = free_page_vmm(&metrics, 2);
    let serial = vmm.serial();
    let first = TinyOutput::parse(&serial);
    let dev = line(&first, "balloon");
    // VERSION_1, FREE_PAGE_HINT and REPORTING.
    assert_eq!(field(&dev, "features"), Some("0x100000028"), "{serial}");
    assert_eq!(
        status(&vmm),
        serde_json::json!({"host_cmd": 0, "guest_cmd": null})
    );
    // Reporting: the guest reports the first 16 MiB on the host's signal.
    let before = rss_kib(&vmm);
    assert!(before > TOUCHED_MIB << 10, "RSS {before} KiB");
    vmm.ok("PATCH", "/balloon", r#"{"amount_mib": 1}"#);
    wait_line(&vmm, "balloon-free reported");
    let out = TinyOutput::parse(&vmm.serial());
    assert_eq!(
        field(&line(&out, "balloon-free reported"), "bytes"),
        Some("16777216")
    );
    let before = assert_fell(&vmm, before, TOUCHED_MIB / 2, "reported");
    // Run 2 (acknowledged on stop, the default): hints, STOP, then DONE from the device.
    vmm.ok("PATCH", "/balloon/hinting/start", "");
    wait_line(&vmm, "balloon-free done id=2");
    let out = TinyOutput::parse(&vmm.serial());
    assert_eq!(
        field(&line(&out, "balloon-free hinted"), "bytes"),
        Some("16777216")
    );
    assert_eq!(
        field(&line(&out, "balloon-free done"), "zeroed"),
        Some("4096"),
        "the host dropped the hinted pages"
    );
    assert_eq!(
        status(&vmm),
        serde_json::json!({"host_cmd": 1, "guest_cmd": 0})
    );
    assert_fell(&vmm, before, TOUCHED_MIB / 2, "hinted");
    // Run 3 without acknowledgement: the id stays until the host stops the run.
    vmm.ok(
        "PATCH",
        "/balloon/hinting/start",
        r#"{"acknowledge_on_stop": false}"#,
    );
    wait_line(&vmm, "balloon-free hinted id=3");
    let t = Instant::now();
    while status(&vmm)["guest_cmd"] != 0 {
        assert!(t.elapsed() < WAIT, "the guest never ended run 3");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        status(&vmm),
        serde_json::json!({"host_cmd": 3, "guest_cmd": 0}),
        "no DONE without acknowledge_on_stop"
    );
    assert!(!vmm.serial().contains("balloon-free done id=3"));
    vmm.refuses(
        "PATCH",
        "/balloon/hinting/start",
        Some(r#"{"acknowledge_on_stop": "no"}"#),
        400,
        "expected a boolean",
    );
    // The host's stop is the guest's DONE (after which the guest ends).
    vmm.ok("PATCH", "/balloon/hinting/stop", "{}");
    wait_line(&vmm, "balloon-free done id=3");
    vmm.wait_serial("the guest's end", "KILN-TINY: done");
    let t = Instant::now();
    while vmm.child.try_wait().expect("wait for the VMM").is_none() {
        assert!(t.elapsed() < WAIT, "the VMM did not end after the guest");
        std::thread::sleep(Duration::from_millis(10));
    }
    let m = Metrics::read(&metrics);
    assert_eq!(m.get("balloon.free_page_report_count"), 16, "{m:?}");
    assert_eq!(m.get("balloon.free_page_report_freed"), 16 << 20, "{m:?}");
    assert_eq!(m.get("balloon.free_page_report_fails"), 0, "{m:?}");
    assert_eq!(m.get("balloon.free_page_hint_count"), 8, "{m:?}");
    assert_eq!(m.get("balloon.free_page_hint_freed"), 32 << 20, "{m:?}");
    assert_eq!(m.get("balloon.free_page_hint_fails"), 0, "{m:?}");
    assert_eq!(m.get("balloon.invalid_ranges"), 0, "{m:?}");
}

#[test]
fn a_snapshot_with_free_page_hinting_restores_with_it() {
    let scratch = kiln_tests::ScratchDir::new("kiln-balloon-free-snap");
    let (state, mem) = (scratch.join("vm.snap"), scratch.join("vm.mem"));
    let a = free_page_vmm(&scratch.join("metrics-a.json"), 2);
    a.ok("PATCH", "/balloon", r#"{"amount_mib": 1}"#);
    wait_line(&a, "balloon-free reported");
    a.ok("PATCH", "/balloon/hinting/start", "");
    wait_line(&a, "balloon-free done id=2");
    a.set_state("Paused");
    a.ok(
        "PUT",
        "/snapshot/create",
        &create_body("Full", &state, &mem),
    );
    drop(a);
    let metrics_b = scratch.join("metrics-b.json");
    let mut b = Vmm::start(&["--metrics-path", metrics_b.to_str().unwrap()]);
    b.ok(
        "PUT",
        "/snapshot/load",
        &load_body(&state, "File", &mem, r#""resume_vm": true"#),
    );
    let cfg = b.get("/balloon");
    assert_eq!(
        (&cfg["free_page_hinting"], &cfg["free_page_reporting"]),
        (&Value::Bool(true), &Value::Bool(true))
    );
    // The restored device says DONE, and remembers the guest's STOP and the last run.
    assert_eq!(
        status(&b),
        serde_json::json!({"host_cmd": 1, "guest_cmd": 0})
    );
    // Run 3: the guest writes its markers again, hints, and reads back what the memory
    // file had there: zeros (the pages were given back when the snapshot was taken).
    b.ok("PATCH", "/balloon/hinting/start", "");
    wait_line(&b, "balloon-free done id=3");
    let out = TinyOutput::parse(&b.serial());
    assert_eq!(
        field(&line(&out, "balloon-free done"), "zeroed"),
        Some("4096")
    );
    let t = Instant::now();
    while b.child.try_wait().expect("wait for the VMM").is_none() {
        assert!(t.elapsed() < WAIT, "the VMM did not end after the guest");
        std::thread::sleep(Duration::from_millis(10));
    }
    let m = Metrics::read(&metrics_b);
    assert_eq!(m.get("balloon.free_page_hint_freed"), 16 << 20, "{m:?}");
}

/// A hostile driver on the reporting and hinting queues: every chain comes back, the
/// ranges that cannot be guest RAM are counted, the VMM stays up and reports again.
#[test]
fn a_hostile_free_page_driver_is_counted_and_the_vmm_stays_up() {
    require_kvm();
    let dir = kiln_tests::ScratchDir::new("kiln-balloon-free-hostile");
    let metrics = dir.join("metrics.json");
    let cfg = dir.write(
        "vm.json",
        format!(
            "{{\"boot-source\": {{\"kernel_image_path\": {:?}, \"boot_args\": \"kiln.test=balloon-free-hostile\"}},\n \"machine-config\": {{\"vcpu_count\": 1, \"mem_size_mib\": 32}},\n \"balloon\": {{\"amount_mib\": 0, \"deflate_on_oom\": false, \"free_page_hinting\": true, \"free_page_reporting\": true}}}}\n",
            kiln_tests::tiny::tiny_guest().to_str().expect("utf-8 path")
        ),
    );
    let f = kiln_tests::run_with_timeout(
        std::process::Command::new(kiln_tests::require_bin("vmm"))
            .arg("--config-file")
            .arg(&cfg)
            .arg("--no-api")
            .arg("--metrics-path")
            .arg(&metrics),
        WAIT,
    );
    let out = kiln_tests::tiny::assert_clean_run(&f);
    let cases = out.topic("balloon-free hostile");
    let names: Vec<&str> = cases.iter().filter_map(|c| field(c, "case")).collect();
    assert_eq!(
        names,
        [
            "report-outside",
            "report-past-ram",
            "report-zero",
            "report-unaligned",
            "report-overflow",
            "report-huge",
            "report-loop",
            "hint-before-id",
            "hint-writable-id",
            "hint-short-id",
            "hint-loop"
        ],
        "{f}"
    );
    for c in &cases {
        assert_eq!(field(c, "used"), Some("0"), "{f}");
    }
    assert_eq!(
        field(&line(&out, "balloon-free after"), "used"),
        Some("0"),
        "{f}"
    );
    let m = Metrics::read(&metrics);
    // Chains refused whole: outside, past-ram, overflow, huge, and the two loops.
    assert!(m.get("virtio.invalid_chains") >= 6, "{m:?}");
    // Ranges refused: zero, unaligned, the writable and the short id.
    assert_eq!(m.get("balloon.invalid_ranges"), 4, "{m:?}");
    // report: 5 chains refused, 2 ranges; hint: the loop.
    assert_eq!(m.get("balloon.free_page_report_fails"), 7, "{m:?}");
    assert_eq!(m.get("balloon.free_page_hint_fails"), 1, "{m:?}");
    assert_eq!(m.get("balloon.free_page_hint_count"), 0, "no run: {m:?}");
    assert_eq!(m.get("balloon.free_page_report_freed"), 4096, "{m:?}");
}
