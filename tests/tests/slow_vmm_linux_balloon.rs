//! Slow tier: the project's Linux guest kernel (scripts/assets.sh, built with
//! `CONFIG_VIRTIO_BALLOON`) with Kiln's virtio-balloon, driven over the API as an orchestrator
//! would: `PUT /balloon` (`deflate_on_oom`, statistics every second) before boot, then
//! `PATCH /balloon` to inflate and deflate a booted guest, `GET /balloon/statistics` to watch.
//!
//! The guest boots the ELF vmlinux with an initramfs the test writes: only `/kiln-touch`
//! ([`touch_init`]), a static program that never makes a system call, started by `rdinit=`.
//! On kvm_pvm hosts a guest's user space cannot make a system call
//! (shared/notes/host-kvm.md), so a real init would crash and panic the kernel; this one
//! spins, the kernel stays up, and everything checked is the kernel's own doing:
//! virtio_balloon inflates and deflates from its work queue when the host changes the target,
//! answers the statistics queue, and deflates from the kernel's OOM notifier.
//!
//! 1. Resident memory. A page the guest has not touched has no host memory behind it, and
//!    this kernel touches little of its RAM while it boots (guest ring 0 is emulated here; it
//!    could not touch 100 MiB in useful time either). A guest that has run a while has touched
//!    most of its memory; the test stands in for that by making every page of guest RAM
//!    resident from the host while the VM is paused: it writes zeros, through
//!    `/proc/<vmm>/mem`, to exactly the pages `/proc/<vmm>/pagemap` shows absent (an absent
//!    page of the private anonymous mapping reads as zeros, so the guest sees no change).
//!    Then every page the balloon takes is a resident one, and the VMM's RSS must fall by the
//!    inflated amount (48 of 96 MiB): guaranteed, not a matter of which pages the guest's
//!    allocator picked. `pagemap` shows the balloon's pages absent afterwards.
//! 2. Statistics: total, free and available memory, caches, the swap and fault counters; free
//!    memory falls by the inflated amount.
//! 3. `deflate_on_oom`: the balloon is inflated until only a few MiB are free, then the test
//!    rings the init's doorbell (a word in a page the init marked with [`MAGIC`], found in
//!    guest RAM and written through `/proc/<vmm>/mem`) and the init touches more memory than
//!    is free, one page fault per page. Nothing is left to reclaim and init is never
//!    OOM-killed, so without the driver's OOM notifier the kernel panics (tried with
//!    `deflate_on_oom` false: "Out of memory and no killable processes...", "Kernel panic -
//!    not syncing: System is deadlocked on memory"); with it the driver gives pages back,
//!    `actual` falls below the unchanged target, and the init gets its memory.
//! 4. Deflation: the target back to 0, `actual` follows and free memory comes back.
//!
//! The `balloon.*` metrics count the pages, with no invalid frame numbers from a real driver.
//! About 2.5 minutes here (one boot).
//!
//! Run with `cargo test -p kiln-tests --test slow_vmm_linux_balloon -- --ignored --nocapture`.

mod api_common;

use api_common::Vmm;
use kiln_tests::assets::{assets_dir, require_linux_assets, KERNEL_CMDLINE};
use kiln_tests::elf::{user_program, USER_BASE};
use kiln_tests::initramfs::{newc, Member};
use kiln_tests::metrics::Metrics;
use kiln_tests::{is_pvm_host, require_kvm, require_root, ScratchDir};
use serde_json::Value;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// The kernel starts its init at ~30-80 s on kvm_pvm hosts; the margin covers a loaded host.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// For each inflation or deflation, and for the statistics to show it.
const BALLOON_TIMEOUT: Duration = Duration::from_secs(120);
const MEM_MIB: u64 = 96;
/// What the host takes back: half the guest's memory.
const BALLOON_MIB: u64 = 48;
const INIT: &str = "/kiln-touch";
/// What the init touches when the host rings: more than the guest has free by then.
const TOUCH_MIB: u64 = 20;
/// What the last inflation leaves free (above the kernel's watermarks, so that the balloon
/// reaches its target without an allocation failure).
const LEFT_FREE_MIB: u64 = 4;
/// The init's doorbell page starts with these 16 bytes; then the host's "go" word, then
/// the init's "done" word.
const MAGIC: &[u8; 16] = b"KILN-BALLOON-OOM";
const PAGE: u64 = 4096;
/// [`PAGE`] for buffer sizes.
const PAGE_LEN: usize = 4096;
const MIB: u64 = 1 << 20;

/// The init: it writes [`MAGIC`] at the start of its doorbell page (the page after its code),
/// spins until the host writes a non-zero word after it, then writes one byte into each of
/// [`TOUCH_MIB`] MiB of its zero-filled memory (each a page fault, served by the kernel),
/// sets the word after that to 1 and spins. It never makes a system call.
fn touch_init() -> Vec<u8> {
    let doorbell = USER_BASE + 0x1000;
    let pages = TOUCH_MIB * MIB / PAGE;
    let mut c = Vec::new();
    c.extend_from_slice(&[0x48, 0xbf]); // mov rdi, doorbell
    c.extend_from_slice(&doorbell.to_le_bytes());
    c.extend_from_slice(&[0x48, 0xb8]); // mov rax, MAGIC[..8]
    c.extend_from_slice(&MAGIC[..8]);
    c.extend_from_slice(&[0x48, 0x89, 0x07]); // mov [rdi], rax
    c.extend_from_slice(&[0x48, 0xb8]); // mov rax, MAGIC[8..]
    c.extend_from_slice(&MAGIC[8..]);
    c.extend_from_slice(&[0x48, 0x89, 0x47, 0x08]); // mov [rdi+8], rax
    c.extend_from_slice(&[0xf3, 0x90]); // wait: pause
    c.extend_from_slice(&[0x48, 0x83, 0x7f, 0x10, 0x00]); // cmp qword [rdi+16], 0
    c.extend_from_slice(&[0x74, 0xf7]); // je wait
    c.extend_from_slice(&[0x48, 0x8d, 0xb7, 0x00, 0x10, 0x00, 0x00]); // lea rsi, [rdi+0x1000]
    c.extend_from_slice(&[0x48, 0xb9]); // mov rcx, pages
    c.extend_from_slice(&pages.to_le_bytes());
    c.extend_from_slice(&[0xc6, 0x06, 0x01]); // touch: mov byte [rsi], 1
    c.extend_from_slice(&[0x48, 0x81, 0xc6, 0x00, 0x10, 0x00, 0x00]); // add rsi, 4096
    c.extend_from_slice(&[0x48, 0xff, 0xc9]); // dec rcx
    c.extend_from_slice(&[0x75, 0xf1]); // jnz touch
    c.extend_from_slice(&[0x48, 0xc7, 0x47, 0x18, 0x01, 0x00, 0x00, 0x00]); // mov qword [rdi+24], 1
    c.extend_from_slice(&[0xeb, 0xfe]); // jmp .
    user_program(&c, 0x2000 + TOUCH_MIB * MIB)
}

/// The VMM's address of the init's doorbell page: the one page of guest RAM that starts
/// with [`MAGIC`].
fn find_doorbell(mem: &File, ram: u64) -> u64 {
    let mut buf = vec![0u8; 1024 * PAGE_LEN];
    let mut found = Vec::new();
    for off in (0..MEM_MIB * MIB).step_by(buf.len()) {
        mem.read_exact_at(&mut buf, ram + off)
            .expect("read guest RAM through the VMM's /proc mem");
        for (i, page) in buf.chunks_exact(PAGE_LEN).enumerate() {
            if page.starts_with(MAGIC) {
                found.push(ram + off + i as u64 * PAGE);
            }
        }
    }
    assert_eq!(
        found.len(),
        1,
        "pages starting with the init's magic: {found:x?}"
    );
    found[0]
}

fn read_word(mem: &File, at: u64) -> u64 {
    let mut w = [0u8; 8];
    mem.read_exact_at(&mut w, at).expect("read guest RAM");
    u64::from_le_bytes(w)
}

/// The VMM's resident memory in KiB (`VmRSS`).
fn rss_kib(pid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the VMM's /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// The VMM's mapping of guest RAM: the one private anonymous read-write mapping of exactly
/// the guest's size (below 3 GiB guest RAM is one region). Returns its start address.
fn guest_ram(pid: u32, len: u64) -> u64 {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("the VMM's maps");
    let found: Vec<u64> = maps
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (range, perms) = (f.next()?, f.next()?);
            let named = f.nth(3).is_some();
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            );
            (perms == "rw-p" && !named && b - a == len).then_some(a)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one anonymous rw-p mapping of {len} bytes (guest RAM) in the VMM:\n{maps}"
    );
    found[0]
}

/// Which pages of `[start, start + len)` are resident in the VMM (`pagemap` bit 63).
fn resident(pid: u32, start: u64, len: u64) -> Vec<bool> {
    let pagemap = File::open(format!("/proc/{pid}/pagemap")).expect("open the VMM's pagemap");
    let pages = usize::try_from(len / PAGE).expect("guest RAM's page count fits usize");
    let mut raw = vec![0u8; pages * 8];
    pagemap
        .read_exact_at(&mut raw, start / PAGE * 8)
        .expect("read the VMM's pagemap");
    raw.chunks_exact(8)
        .map(|e| u64::from_le_bytes(e.try_into().unwrap()) >> 63 == 1)
        .collect()
}

fn absent_mib(present: &[bool]) -> f64 {
    present.iter().filter(|p| !**p).count() as f64 * PAGE as f64 / MIB as f64
}

/// Writes zeros to every absent page of guest RAM (which reads as zeros already): the guest
/// sees no change, the host now backs every page. Only while the VM is paused.
fn make_resident(pid: u32, start: u64, present: &[bool]) {
    let mem = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .expect("open the VMM's /proc mem for writing");
    let zeros = vec![0u8; 256 * PAGE_LEN];
    let mut i = 0;
    while i < present.len() {
        if present[i] {
            i += 1;
            continue;
        }
        let run = present[i..].iter().take(256).take_while(|p| !**p).count();
        mem.write_all_at(&zeros[..run * PAGE_LEN], start + i as u64 * PAGE)
            .expect("write zeros to an absent guest page");
        i += run;
    }
}

/// Polls `GET /balloon/statistics` until `cond` holds; returns the answer.
fn wait_stats(vmm: &Vmm, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let s = vmm.get("/balloon/statistics");
        if cond(&s) {
            return s;
        }
        assert!(
            t.elapsed() < BALLOON_TIMEOUT,
            "timed out after {BALLOON_TIMEOUT:?} waiting for {what}; statistics: {s}\n--- serial:\n{}",
            vmm.serial()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits for the kernel to start the init (the balloon driver probes among the initcalls,
/// before), failing on a panic, the VMM's end or [`BOOT_TIMEOUT`].
fn wait_init(vmm: &mut Vmm) {
    let started = format!("Run {INIT} as init process");
    vmm.wait_linux("the kernel to start init", BOOT_TIMEOUT, |s| {
        s.contains(&started)
    });
}

fn stat(s: &Value, name: &str) -> u64 {
    s[name]
        .as_u64()
        .unwrap_or_else(|| panic!("the driver reported no {name}: {s}"))
}

#[test]
#[ignore = "slow tier: boots a Linux kernel and inflates, deflates and OOM-deflates its balloon (about 2.5 min here); run with ./test.sh slow"]
fn linux_inflates_its_balloon_the_vmm_gives_the_memory_back_and_statistics_fill() {
    require_root();
    require_kvm();
    let assets = require_linux_assets();
    let config = std::fs::read_to_string(assets_dir().join("config")).expect("the kernel config");
    assert!(
        config.lines().any(|l| l == "CONFIG_VIRTIO_BALLOON=y"),
        "MISSING PRECONDITION: the guest kernel in {} has no balloon driver; run scripts/assets.sh",
        assets_dir().display()
    );
    let scratch = ScratchDir::new("kiln-linux-balloon");
    let init = touch_init();
    let initramfs = scratch.write(
        "initramfs.cpio",
        newc(&[Member {
            path: &INIT[1..],
            mode: 0o100755,
            data: &init,
        }]),
    );
    let metrics = scratch.join("metrics.json");

    let start = Instant::now();
    let at = || start.elapsed().as_secs_f64();
    let mut vmm = Vmm::start(&["--metrics-path", metrics.to_str().expect("utf-8 path")]);
    let pid = vmm.child.id();
    vmm.ok(
        "PUT",
        "/machine-config",
        &format!(r#"{{"vcpu_count": 1, "mem_size_mib": {MEM_MIB}}}"#),
    );
    vmm.ok(
        "PUT",
        "/boot-source",
        &serde_json::json!({
            "kernel_image_path": assets.vmlinux,
            "initrd_path": initramfs,
            "boot_args": format!("{KERNEL_CMDLINE} rdinit={INIT}"),
        })
        .to_string(),
    );
    vmm.ok(
        "PUT",
        "/balloon",
        r#"{"amount_mib": 0, "deflate_on_oom": true, "stats_polling_interval_s": 1}"#,
    );
    vmm.action("InstanceStart");

    // The kernel's own milestones: the balloon driver probes among the initcalls, before init.
    wait_init(&mut vmm);
    println!(
        "[{:7.2}s] init started (kvm_pvm host: {})",
        at(),
        is_pvm_host()
    );

    // The first report is the one the driver fills at probe, before init; the init's page
    // faults show in a later one.
    let booted = wait_stats(&vmm, "statistics counting the init's page faults", |s| {
        s.get("total_memory").is_some() && s["minor_faults"].as_u64().is_some_and(|n| n > 0)
    });
    println!("[{:7.2}s] first statistics: {booted}", at());
    let total = stat(&booted, "total_memory");
    assert!(
        total > (MEM_MIB - 32) * MIB && total <= MEM_MIB * MIB,
        "total_memory {total} for a {MEM_MIB} MiB guest"
    );
    for name in ["available_memory", "disk_caches"] {
        stat(&booted, name);
    }
    // CONFIG_VM_EVENT_COUNTERS: the swap and fault counters.
    for name in ["swap_in", "swap_out", "major_faults"] {
        stat(&booted, name);
    }
    let free_before = stat(&booted, "free_memory");
    assert!(
        free_before > (BALLOON_MIB + 8) * MIB,
        "the guest has only {free_before} bytes free: too little for a {BALLOON_MIB} MiB balloon"
    );
    assert_eq!(booted["actual_mib"], 0);

    // Every page of guest RAM resident, as in a guest that used all of its memory.
    let ram = guest_ram(pid, MEM_MIB * MIB);
    let rss_booted = rss_kib(pid);
    vmm.set_state("Paused");
    let present = resident(pid, ram, MEM_MIB * MIB);
    let untouched = absent_mib(&present);
    make_resident(pid, ram, &present);
    let still = absent_mib(&resident(pid, ram, MEM_MIB * MIB));
    vmm.set_state("Resumed");
    assert_eq!(still, 0.0, "guest pages still absent after writing them");
    let rss_full = rss_kib(pid);
    println!(
        "[{:7.2}s] VmRSS {rss_booted} KiB after boot ({untouched:.1} of {MEM_MIB} MiB of guest RAM never touched); {rss_full} KiB with all of it resident",
        at()
    );

    // Inflate.
    let t = Instant::now();
    vmm.ok(
        "PATCH",
        "/balloon",
        &format!(r#"{{"amount_mib": {BALLOON_MIB}}}"#),
    );
    let inflated = wait_stats(&vmm, "the driver to inflate", |s| {
        s["actual_mib"] == BALLOON_MIB
    });
    let inflate_time = t.elapsed();
    let rss_inflated = rss_kib(pid);
    let gone = absent_mib(&resident(pid, ram, MEM_MIB * MIB));
    let fell = rss_full.saturating_sub(rss_inflated);
    println!(
        "[{:7.2}s] inflated to {BALLOON_MIB} MiB in {:.1} s: VmRSS {rss_full} -> {rss_inflated} KiB (fell {:.1} MiB); {gone:.1} MiB of guest RAM absent",
        at(),
        inflate_time.as_secs_f64(),
        fell as f64 / 1024.0
    );
    assert_eq!(inflated["target_mib"], BALLOON_MIB);
    assert!(
        gone >= BALLOON_MIB as f64,
        "the balloon holds {BALLOON_MIB} MiB, but only {gone:.1} MiB of guest RAM is absent in the host"
    );
    // Every balloon page was resident, so RSS falls by the balloon's size; the margin (2 MiB)
    // is for the VMM's own memory moving meanwhile.
    assert!(
        fell >= (BALLOON_MIB - 2) * 1024,
        "VmRSS fell by {fell} KiB only ({rss_full} -> {rss_inflated}) for a {BALLOON_MIB} MiB balloon taken from resident memory"
    );
    // The guest sees its free memory gone into the balloon (statistics after the inflation).
    let seen = wait_stats(&vmm, "free memory to fall in the statistics", |s| {
        s["free_memory"]
            .as_u64()
            .is_some_and(|f| f + (BALLOON_MIB - 4) * MIB <= free_before)
    });
    let free_inflated = stat(&seen, "free_memory");
    println!(
        "[{:7.2}s] statistics: free_memory {} -> {} MiB",
        at(),
        free_before / MIB,
        free_inflated / MIB
    );

    // deflate_on_oom: inflate further until LEFT_FREE_MIB are free, then have the init touch
    // more than that. Without the balloon's OOM notifier the kernel would find nothing to
    // reclaim and nothing to kill (init is never killed) and panic; with it, the driver gives
    // pages back each time the kernel runs out, and the init gets its memory.
    let target = BALLOON_MIB + (free_inflated / MIB).saturating_sub(LEFT_FREE_MIB);
    let t = Instant::now();
    vmm.ok(
        "PATCH",
        "/balloon",
        &format!(r#"{{"amount_mib": {target}}}"#),
    );
    wait_stats(&vmm, "the driver to fill the guest", |s| {
        s["actual_mib"] == target
    });
    let full = wait_stats(&vmm, "statistics of the full guest", |s| {
        s["free_memory"]
            .as_u64()
            .is_some_and(|f| f + (target - BALLOON_MIB - 4) * MIB <= free_inflated)
    });
    let free_full = stat(&full, "free_memory");
    let free_full_mib = free_full.div_ceil(MIB);
    println!(
        "[{:7.2}s] inflated to {target} MiB in {:.1} s; free_memory {:.1} MiB; the init touches {TOUCH_MIB} MiB",
        at(),
        t.elapsed().as_secs_f64(),
        free_full as f64 / MIB as f64
    );
    // The margin: memory the kernel may still reclaim (caches) instead of deflating.
    assert!(
        free_full_mib + 4 < TOUCH_MIB,
        "the init must need more than the guest has free: {full}"
    );
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .expect("open the VMM's /proc mem");
    let doorbell = find_doorbell(&mem, ram);
    let t = Instant::now();
    mem.write_all_at(&1u64.to_le_bytes(), doorbell + 16)
        .expect("ring the init's doorbell");
    loop {
        if read_word(&mem, doorbell + 24) == 1 {
            break;
        }
        let serial = vmm.serial();
        for fatal in ["Kernel panic", "Out of memory"] {
            assert!(
                !serial.contains(fatal),
                "the guest printed {fatal:?}\n--- serial:\n{serial}"
            );
        }
        assert!(
            t.elapsed() < BALLOON_TIMEOUT,
            "the init did not get its {TOUCH_MIB} MiB within {BALLOON_TIMEOUT:?}; statistics: {}\n--- serial:\n{serial}",
            vmm.get("/balloon/statistics")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let after_oom = vmm.get("/balloon/statistics");
    let actual = after_oom["actual_mib"].as_u64().expect("actual_mib");
    let given = target - actual;
    println!(
        "[{:7.2}s] the init touched {TOUCH_MIB} MiB in {:.1} s; the driver deflated {given} MiB on OOM (target still {})",
        at(),
        t.elapsed().as_secs_f64(),
        after_oom["target_mib"]
    );
    assert_eq!(
        after_oom["target_mib"], target,
        "the host's target is unchanged"
    );
    // The init's memory beyond what was free can only have come from the balloon (or, up to
    // the margin, from caches the kernel reclaimed).
    assert!(
        given + free_full_mib + 4 >= TOUCH_MIB,
        "the balloon gave back only {given} MiB while the init took {TOUCH_MIB} MiB with {free_full_mib} MiB free: {after_oom}"
    );
    vmm.action("FlushMetrics");
    let m = Metrics::read(&metrics);
    assert!(
        m.get("balloon.deflated_pages") >= given * MIB / PAGE,
        "the OOM deflation in the metrics: {m:?}"
    );

    // Deflate: the target back to 0.
    let free_oom = stat(&vmm.get("/balloon/statistics"), "free_memory");
    let t = Instant::now();
    vmm.ok("PATCH", "/balloon", r#"{"amount_mib": 0}"#);
    let deflated = wait_stats(&vmm, "the driver to deflate", |s| s["actual_mib"] == 0);
    let deflate_time = t.elapsed();
    assert_eq!(deflated["target_mib"], 0);
    wait_stats(&vmm, "free memory to come back in the statistics", |s| {
        s["free_memory"]
            .as_u64()
            .is_some_and(|f| f >= free_oom + actual.saturating_sub(4) * MIB)
    });
    let rss_deflated = rss_kib(pid);
    println!(
        "[{:7.2}s] deflated {actual} MiB in {:.1} s; VmRSS {rss_deflated} KiB (the pages come back when the guest touches them)",
        at(),
        deflate_time.as_secs_f64()
    );

    vmm.action("FlushMetrics");
    let m = Metrics::read(&metrics);
    let pages = target * MIB / PAGE;
    assert!(m.get("balloon.inflated_pages") >= pages, "{m:?}");
    assert!(m.get("balloon.deflated_pages") >= pages, "{m:?}");
    assert!(m.get("balloon.stats_updates_count") >= 2, "{m:?}");
    assert_eq!(m.get("balloon.invalid_pfns"), 0, "{m:?}");
    assert_eq!(m.get("balloon.event_fails"), 0, "{m:?}");
    assert!(
        !vmm.serial().contains("Kernel panic"),
        "--- serial:\n{}",
        vmm.serial()
    );
    println!("[{:7.2}s] done", at());
}

/// The guest for free page reporting: Linux 6.1 reports blocks of `pageblock_order` (4 MiB
/// without `CONFIG_HUGETLBFS`, as this kernel is built) and only while a zone has more than
/// 32 such blocks (128 MiB) free above its low watermark, so the guest needs more than that.
const REPORT_MEM_MIB: u64 = 256;

/// Free page reporting with Linux's driver (`CONFIG_PAGE_REPORTING`): every page of guest
/// RAM is made resident from the host right after `InstanceStart` (paused, before the kernel
/// has freed its memory into its allocator); when the driver registers, the kernel reports
/// its free memory (whole 4 MiB blocks, after a short delay, while more than 128 MiB are
/// free), and the VMM's RSS falls by about what the statistics show free. The driver's
/// chains (device-writable ranges) are all taken: no refusals in the metrics.
#[test]
#[ignore = "slow tier: boots a Linux kernel whose balloon driver reports its free memory (about 2 min here); run with ./test.sh slow"]
fn linux_reports_its_free_memory_and_the_vmm_gives_it_back() {
    require_root();
    require_kvm();
    let assets = require_linux_assets();
    let config = std::fs::read_to_string(assets_dir().join("config")).expect("the kernel config");
    for option in ["CONFIG_VIRTIO_BALLOON=y", "CONFIG_PAGE_REPORTING=y"] {
        assert!(
            config.lines().any(|l| l == option),
            "MISSING PRECONDITION: the guest kernel in {} lacks {option}; run scripts/assets.sh",
            assets_dir().display()
        );
    }
    let scratch = ScratchDir::new("kiln-linux-balloon-report");
    let init = touch_init();
    let initramfs = scratch.write(
        "initramfs.cpio",
        newc(&[Member {
            path: &INIT[1..],
            mode: 0o100755,
            data: &init,
        }]),
    );
    let metrics = scratch.join("metrics.json");
    let start = Instant::now();
    let at = || start.elapsed().as_secs_f64();
    let mut vmm = Vmm::start(&["--metrics-path", metrics.to_str().expect("utf-8 path")]);
    let pid = vmm.child.id();
    vmm.ok(
        "PUT",
        "/machine-config",
        &format!(r#"{{"vcpu_count": 1, "mem_size_mib": {REPORT_MEM_MIB}}}"#),
    );
    vmm.ok(
        "PUT",
        "/boot-source",
        &serde_json::json!({
            "kernel_image_path": assets.vmlinux,
            "initrd_path": initramfs,
            "boot_args": format!("{KERNEL_CMDLINE} rdinit={INIT}"),
        })
        .to_string(),
    );
    vmm.ok(
        "PUT",
        "/balloon",
        r#"{"amount_mib": 0, "deflate_on_oom": false, "stats_polling_interval_s": 1,
            "free_page_reporting": true}"#,
    );
    vmm.action("InstanceStart");
    vmm.set_state("Paused");
    let ram = guest_ram(pid, REPORT_MEM_MIB * MIB);
    let present = resident(pid, ram, REPORT_MEM_MIB * MIB);
    make_resident(pid, ram, &present);
    let rss_full = rss_kib(pid);
    vmm.set_state("Resumed");
    assert!(
        rss_full > REPORT_MEM_MIB << 10,
        "VmRSS {rss_full} KiB with all {REPORT_MEM_MIB} MiB of guest RAM resident"
    );
    println!(
        "[{:7.2}s] all guest RAM resident: VmRSS {rss_full} KiB",
        at()
    );
    wait_init(&mut vmm);
    println!("[{:7.2}s] init started", at());
    let booted = wait_stats(&vmm, "the driver's statistics", |s| {
        s.get("free_memory").is_some()
    });
    let free_mib = stat(&booted, "free_memory") / MIB;
    // Most of what is free is in 4 MiB blocks the kernel reports; some stays (smaller
    // blocks, and the kernel stops at its 128 MiB threshold): at least half of it.
    let want_kib = (free_mib / 2) << 10;
    let t = Instant::now();
    let mut rss = rss_kib(pid);
    while rss_full.saturating_sub(rss) < want_kib {
        if t.elapsed() > BALLOON_TIMEOUT {
            vmm.action("FlushMetrics");
            panic!(
                "VmRSS {rss_full} KiB -> {rss} KiB in {BALLOON_TIMEOUT:?}: less than half of the \
                 {free_mib} MiB free given back\n--- metrics: {:?}\n--- serial:\n{}",
                Metrics::read(&metrics),
                vmm.serial()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
        rss = rss_kib(pid);
    }
    // Let the kernel finish its reports before the metrics are read.
    std::thread::sleep(Duration::from_secs(5));
    let rss = rss_kib(pid);
    println!(
        "[{:7.2}s] VmRSS {rss_full} KiB -> {rss} KiB ({:.1} MiB given back; {free_mib} MiB free in the guest)",
        at(),
        rss_full.saturating_sub(rss) as f64 / 1024.0
    );
    vmm.action("FlushMetrics");
    let m = Metrics::read(&metrics);
    assert!(m.get("balloon.free_page_report_count") > 0, "{m:?}");
    assert!(
        m.get("balloon.free_page_report_freed") >= want_kib << 10,
        "{m:?}"
    );
    assert_eq!(m.get("balloon.free_page_report_fails"), 0, "{m:?}");
    assert_eq!(m.get("balloon.invalid_ranges"), 0, "{m:?}");
    assert_eq!(m.get("balloon.unaligned_ranges"), 0, "{m:?}");
    assert!(
        !vmm.serial().contains("Kernel panic"),
        "--- serial:\n{}",
        vmm.serial()
    );
    println!("[{:7.2}s] done", at());
}
