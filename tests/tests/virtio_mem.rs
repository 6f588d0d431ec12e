//! Fast tier: memory hot-plug (`PUT`/`PATCH`/`GET /hotplug/memory`, virtio-mem) with the
//! tiny test guest.
//!
//! The guest's `vmem` scenario reads the device's configuration, waits for the host's
//! `PATCH` (a configuration-change interrupt), plugs what is asked, writes every page of
//! it, and unplugs it after the host lowers the request; the test follows `GET
//! /hotplug/memory`, measures the VMM's resident memory rise and fall, and checks that the
//! unplugged memory is no longer reachable (the KVM slot is gone). `vmem-hostile` sends
//! what a broken driver would (unaligned, outside, beyond the request, unplug of unplugged
//! blocks, malformed chains) and the answers and metrics are checked. The API's refusals
//! (Firecracker's limits, pre-/post-boot) and the PCI transport are here too. `vmem-snap`
//! plugs and writes memory that is then snapshotted and restored into another VMM, whose
//! guest reads it back and unplugs and plugs again; tampered hot-plug state is refused.
//!
//! Needs /dev/kvm and the `vmm` binary (`cargo build --workspace`).

mod api_common;
mod snapshot_common;

use api_common::Vmm;
use kiln_tests::metrics::Metrics;
use kiln_tests::tiny::{self, field, parse_hex, TinyOutput};
use kiln_tests::{require_bin, require_kvm, run_with_timeout, ScratchDir};
use snapshot_common::{create_body, edit_config, load_body, reseal, write_key};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
/// What the host asks the guest to plug (and the guest writes), in MiB.
const PLUG_MIB: u64 = 64;
/// Where the region is (Firecracker's first address past the 64-bit MMIO window).
const REGION: u64 = 512 << 30;

/// The VMM's anonymous resident memory in KiB (`RssAnon`).
fn rss_anon_kib(vmm: &Vmm) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", vmm.child.id()))
        .expect("the VMM's /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssAnon")
}

/// Waits for a whole serial line containing `text`.
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
        .unwrap_or_else(|| panic!("no {topic:?} line in {:?}", out.lines))
}

/// A VMM with the metrics file, a 32 MiB tiny guest running `scenario`, and a 256 MiB
/// hot-plug region (2 MiB blocks, 128 MiB slots), started.
fn vmem_vmm(metrics: &Path, scenario: &str) -> Vmm {
    require_kvm();
    let vmm = Vmm::start(&["--metrics-path", metrics.to_str().unwrap()]);
    vmm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
    );
    vmm.boot_tiny_guest(&format!("kiln.test={scenario}"));
    vmm.ok("PUT", "/hotplug/memory", r#"{"total_size_mib": 256}"#);
    let cfg = vmm.get("/vm/config");
    assert_eq!(
        cfg["memory-hotplug"],
        serde_json::json!({"total_size_mib": 256, "block_size_mib": 2, "slot_size_mib": 128})
    );
    vmm.action("InstanceStart");
    wait_line(&vmm, "vmem base=");
    vmm
}

fn wait_exit(vmm: &mut Vmm) {
    let t = Instant::now();
    while vmm.child.try_wait().expect("wait for the VMM").is_none() {
        assert!(t.elapsed() < WAIT, "the VMM did not end after the guest");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_guest_plugs_uses_and_unplugs_memory_and_the_host_gets_it_back() {
    let scratch = ScratchDir::new("kiln-vmem");
    let metrics = scratch.join("metrics.json");
    let mut vmm = vmem_vmm(&metrics, "vmem");
    let out = TinyOutput::parse(&vmm.serial());
    let dev = line(&out, "vmem");
    // VERSION_1 and UNPLUGGED_INACCESSIBLE.
    assert_eq!(field(&dev, "features"), Some("0x100000002"), "{dev:?}");
    assert_eq!(field(&dev, "block").and_then(parse_hex), Some(2 << 20));
    assert_eq!(field(&dev, "addr").and_then(parse_hex), Some(REGION));
    assert_eq!(field(&dev, "region").and_then(parse_hex), Some(256 << 20));
    for f in ["usable", "plugged", "requested"] {
        assert_eq!(field(&dev, f), Some("0x0"), "{f}: {dev:?}");
    }
    let status = vmm.get("/hotplug/memory");
    assert_eq!(
        status,
        serde_json::json!({"total_size_mib": 256, "slot_size_mib": 128, "block_size_mib": 2,
            "plugged_size_mib": 0, "requested_size_mib": 0})
    );
    let before = rss_anon_kib(&vmm);
    vmm.refuses(
        "PATCH",
        "/hotplug/memory",
        Some(r#"{"requested_size_mib": 3}"#),
        400,
        "requested_size_mib 3 is not a multiple of block_size_mib (2 MiB)",
    );
    vmm.refuses(
        "PATCH",
        "/hotplug/memory",
        Some(r#"{"requested_size_mib": 258}"#),
        400,
        "requested_size_mib 258 is more than total_size_mib (256 MiB)",
    );
    vmm.ok(
        "PATCH",
        "/hotplug/memory",
        &format!(r#"{{"requested_size_mib": {PLUG_MIB}}}"#),
    );
    wait_line(&vmm, "vmem wrote");
    let out = TinyOutput::parse(&vmm.serial());
    let change = line(&out, "vmem config-change");
    assert_eq!(field(&change, "isr"), Some("0x2"), "configuration change");
    assert_eq!(
        field(&change, "requested").and_then(parse_hex),
        Some(PLUG_MIB << 20)
    );
    assert_eq!(
        field(&change, "usable").and_then(parse_hex),
        Some(128 << 20),
        "the usable region grows by whole slots"
    );
    let plug = line(&out, "vmem plug");
    assert_eq!(field(&plug, "resp"), Some("0"), "ACK");
    assert_eq!(
        field(&plug, "plugged").and_then(parse_hex),
        Some(PLUG_MIB << 20)
    );
    let wrote = line(&out, "vmem wrote");
    let pages = (PLUG_MIB << 20) / 4096;
    assert_eq!(field(&wrote, "pages"), Some(pages.to_string().as_str()));
    assert_eq!(field(&wrote, "ok"), Some(pages.to_string().as_str()));
    let status = vmm.get("/hotplug/memory");
    assert_eq!(status["plugged_size_mib"], PLUG_MIB, "{status}");
    assert_eq!(status["requested_size_mib"], PLUG_MIB, "{status}");
    let plugged = rss_anon_kib(&vmm);
    assert!(
        plugged >= before + ((PLUG_MIB - 4) << 10),
        "RssAnon {before} KiB -> {plugged} KiB after the guest wrote {PLUG_MIB} MiB"
    );
    vmm.ok("PATCH", "/hotplug/memory", r#"{"requested_size_mib": 0}"#);
    wait_line(&vmm, "vmem after-unplug");
    let after = rss_anon_kib(&vmm);
    assert!(
        plugged.saturating_sub(after) >= (PLUG_MIB - 4) << 10,
        "RssAnon {plugged} KiB -> {after} KiB: the unplugged blocks were not given back"
    );
    let out = TinyOutput::parse(&vmm.serial());
    let unplug = line(&out, "vmem unplug");
    assert_eq!(field(&unplug, "resp"), Some("0"), "ACK");
    assert_eq!(field(&unplug, "plugged"), Some("0x0"));
    let state = line(&out, "vmem state");
    assert_eq!(
        (field(&state, "resp"), field(&state, "state")),
        (Some("0"), Some("1")),
        "ACK, UNPLUGGED"
    );
    // The slot is gone: the guest's read is an MMIO exit, not its memory.
    let word = line(&out, "vmem after-unplug");
    let marker = 0x6b69_6c6e_0000_0000u64 | REGION >> 12;
    assert_ne!(field(&word, "word").and_then(parse_hex), Some(marker));
    assert_eq!(vmm.get("/hotplug/memory")["plugged_size_mib"], 0);
    vmm.ok("PATCH", "/hotplug/memory", r#"{"requested_size_mib": 2}"#);
    vmm.wait_serial("the guest's end", "KILN-TINY: done");
    wait_exit(&mut vmm);
    let m = Metrics::read(&metrics);
    assert_eq!(m.get("memory_hotplug.plug_count"), 1, "{m:?}");
    assert_eq!(m.get("memory_hotplug.plug_bytes"), PLUG_MIB << 20);
    assert_eq!(m.get("memory_hotplug.unplug_count"), 1);
    assert_eq!(m.get("memory_hotplug.unplug_bytes"), PLUG_MIB << 20);
    assert_eq!(m.get("memory_hotplug.slots_added"), 1);
    assert_eq!(m.get("memory_hotplug.slots_removed"), 1);
    assert_eq!(m.get("memory_hotplug.unplug_discard_fails"), 0);
    assert!(
        m.get("vcpu.unhandled_mmio") >= 1,
        "the read after the unplug"
    );
    assert_eq!(m.get("patch_api_requests.hotplug_memory_count"), 5);
    assert_eq!(m.get("patch_api_requests.hotplug_memory_fails"), 2);
    assert_eq!(m.get("put_api_requests.hotplug_memory_count"), 1);
}

#[test]
fn a_hostile_driver_is_answered_error_or_nack_and_counted() {
    let scratch = ScratchDir::new("kiln-vmem-hostile");
    let metrics = scratch.join("metrics.json");
    let mut vmm = vmem_vmm(&metrics, "vmem-hostile");
    vmm.ok("PATCH", "/hotplug/memory", r#"{"requested_size_mib": 4}"#);
    wait_line(&vmm, "vmem hostile done");
    let out = TinyOutput::parse(&vmm.serial());
    let cases = out.topic("vmem hostile");
    let case = |name: &str| {
        cases
            .iter()
            .find(|c| field(c, "case") == Some(name))
            .unwrap_or_else(|| panic!("no case {name}: {:?}", out.lines))
    };
    // (case, response type, used length): 0 ACK, 1 NACK, 3 ERROR.
    let want = [
        ("unaligned", "3", "10"),
        ("outside", "3", "10"),
        ("below", "3", "10"),
        ("empty", "3", "10"),
        ("beyond-requested", "1", "10"),
        ("unplug-unplugged", "3", "10"),
        ("state-outside", "3", "10"),
        ("unknown-type", "3", "10"),
        ("short", "3", "10"),
        ("no-response", "238", "0"),
        ("plug", "0", "10"),
        ("plug-again", "3", "10"),
        ("state", "0", "10"),
        ("unplug-all", "0", "10"),
    ];
    for (name, resp, len) in want {
        let c = case(name);
        assert_eq!(field(c, "len"), Some(len), "{name}: {c:?}");
        if len != "0" {
            assert_eq!(field(c, "resp"), Some(resp), "{name}: {c:?}");
        }
    }
    assert_eq!(field(case("state"), "state"), Some("0"), "PLUGGED");
    let done = line(&out, "vmem hostile done");
    assert_eq!(field(&done, "plugged"), Some("0x0"));
    assert_eq!(vmm.get("/hotplug/memory")["plugged_size_mib"], 0);
    vmm.assert_alive("the hostile driver");
    vmm.ok("PATCH", "/hotplug/memory", r#"{"requested_size_mib": 0}"#);
    vmm.wait_serial("the guest's end", "KILN-TINY: done");
    wait_exit(&mut vmm);
    let m = Metrics::read(&metrics);
    assert_eq!(m.get("memory_hotplug.plug_nacks"), 1, "{m:?}");
    // unaligned, outside, below, empty, beyond-requested, plug-again.
    assert_eq!(m.get("memory_hotplug.plug_fails"), 6);
    assert_eq!(m.get("memory_hotplug.unplug_fails"), 1);
    assert_eq!(m.get("memory_hotplug.state_fails"), 1);
    // unknown-type, short, no-response.
    assert_eq!(m.get("memory_hotplug.invalid_requests"), 3);
    assert_eq!(m.get("memory_hotplug.unplug_all_count"), 1);
    assert_eq!(m.get("memory_hotplug.slots_added"), 1);
    assert_eq!(m.get("memory_hotplug.slots_removed"), 1);
}

#[test]
fn the_api_keeps_firecrackers_limits_and_order() {
    require_kvm();
    let vmm = Vmm::start(&[]);
    for (body, words) in [
        (
            r#"{"total_size_mib": 1024, "block_size_mib": 1}"#,
            "block_size_mib 1 is lower than 2 MiB",
        ),
        (
            r#"{"total_size_mib": 1024, "block_size_mib": 6}"#,
            "block_size_mib 6 is not a power of 2",
        ),
        (
            r#"{"total_size_mib": 1024, "slot_size_mib": 100}"#,
            "slot_size_mib 100 is lower than 128 MiB",
        ),
        (
            r#"{"total_size_mib": 1024, "block_size_mib": 256, "slot_size_mib": 384}"#,
            "slot_size_mib 384 is not a multiple of block_size_mib (256 MiB)",
        ),
        (
            r#"{"total_size_mib": 64}"#,
            "total_size_mib 64 is lower than slot_size_mib (128 MiB)",
        ),
        (
            r#"{"total_size_mib": 200}"#,
            "total_size_mib 200 is not a multiple of slot_size_mib (128 MiB)",
        ),
        (
            r#"{"total_size_mib": 128, "bogus": 1}"#,
            "unknown field `bogus`",
        ),
    ] {
        vmm.refuses("PUT", "/hotplug/memory", Some(body), 400, words);
    }
    vmm.refuses(
        "GET",
        "/hotplug/memory",
        None,
        400,
        "GET /hotplug/memory is only possible after InstanceStart",
    );
    vmm.refuses(
        "PATCH",
        "/hotplug/memory",
        Some(r#"{"requested_size_mib": 2}"#),
        400,
        "PATCH /hotplug/memory is only possible after InstanceStart",
    );
    vmm.refuses(
        "DELETE",
        "/hotplug/memory",
        None,
        400,
        "allowed: GET, PUT, PATCH",
    );
    vmm.ok("PUT", "/hotplug/memory", r#"{"total_size_mib": 128}"#);
    assert!(vmm.get("/vm/config")["memory-hotplug"]["total_size_mib"] == 128);
    // A region that cannot fit the guest-physical address space fails InstanceStart.
    vmm.ok(
        "PUT",
        "/hotplug/memory",
        r#"{"total_size_mib": 4294967168}"#,
    );
    vmm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
    );
    vmm.boot_tiny_guest("kiln.test=print");
    vmm.refuses(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
        400,
        "does not fit the guest-physical address space",
    );
    vmm.assert_alive("a refused start");
}

/// The state body's tail for this test's microVM (256 MiB in 2 MiB blocks: two bitmap
/// words): the virtio-mem section ends the body, its fields from the end being the bitmap
/// (2 words), its count (u32), then usable, requested, slot, block, total, addr (u64 each).
const TAIL_WORDS: usize = 16;
const TAIL_COUNT: usize = TAIL_WORDS + 4;
const TAIL_USABLE: usize = TAIL_COUNT + 8;
const TAIL_BLOCK: usize = TAIL_USABLE + 8 * 3;

/// `body`'s u64 field `from_end` bytes before its end, replaced by `v`.
fn set_tail_u64(mut body: Vec<u8>, from_end: usize, v: u64) -> Vec<u8> {
    let at = body.len() - from_end;
    body[at..at + 8].copy_from_slice(&v.to_le_bytes());
    body
}

/// A microVM with plugged and written hot-plug memory is snapshotted (the memory file holds
/// the plugged blocks only: the unplugged ones are holes) and restored into a new VMM, which
/// first refuses tampered state files naming what is wrong. The restored VMM shows the saved
/// configuration and status, holds only the plugged blocks, and its guest reads its markers
/// back, unplugs and plugs again as the host asks.
#[test]
fn plugged_memory_survives_a_snapshot_and_tampered_hotplug_state_is_refused() {
    let scratch = ScratchDir::new("kiln-vmem-snap");
    let metrics = scratch.join("metrics.json");
    let a = vmem_vmm(&metrics, "vmem-snap");
    a.ok(
        "PATCH",
        "/hotplug/memory",
        &format!(r#"{{"requested_size_mib": {PLUG_MIB}}}"#),
    );
    wait_line(&a, "vmem wrote");
    let pages = ((PLUG_MIB << 20) / 4096).to_string();
    let out = TinyOutput::parse(&a.serial());
    assert_eq!(field(&line(&out, "vmem wrote"), "ok"), Some(pages.as_str()));
    a.set_state("Paused");
    let (state, mem) = (scratch.join("state"), scratch.join("mem"));
    a.ok(
        "PUT",
        "/snapshot/create",
        &create_body("Full", &state, &mem),
    );
    drop(a);
    let m = std::fs::metadata(&mem).expect("the memory file");
    assert_eq!(m.len(), (32 + 256) << 20, "the RAM, then the whole region");
    assert!(
        m.blocks() * 512 < (32 + PLUG_MIB + 8) << 20,
        "{} bytes on disk: the unplugged blocks must be holes",
        m.blocks() * 512
    );

    let b_metrics = scratch.join("b-metrics.json");
    let mut b = Vmm::start(&["--metrics-path", b_metrics.to_str().unwrap()]);
    let load = load_body(&state, "File", &mem, "");
    let tampered = |name: &str, edit: &dyn Fn(Vec<u8>) -> Vec<u8>, words: &str| {
        let out = scratch.join(name);
        reseal(&state, &out, None, edit);
        b.refuses(
            "PUT",
            "/snapshot/load",
            Some(&load_body(&out, "File", &mem, "")),
            400,
            words,
        );
    };
    tampered(
        "outside",
        &|mut body| {
            let n = body.len();
            body[n - 1] |= 0x80;
            body
        },
        "the snapshot's hot-plug bitmap marks block 127 plugged, outside the usable region (0x8000000 bytes)",
    );
    tampered(
        "block",
        &|body| set_tail_u64(body, TAIL_BLOCK, 4 << 20),
        "the snapshot's hot-plug block size is 0x400000 bytes, the configuration's (memory-hotplug) 0x200000",
    );
    tampered(
        "usable",
        &|body| set_tail_u64(body, TAIL_USABLE, 512 << 20),
        "the snapshot's hot-plug usable region (0x20000000 bytes) is not whole slots of the region (0x10000000 bytes)",
    );
    tampered(
        "length",
        &|mut body| {
            let at = body.len() - TAIL_COUNT;
            body[at..at + 4].copy_from_slice(&3u32.to_le_bytes());
            body.extend_from_slice(&[0; 8]);
            body
        },
        "the snapshot's hot-plug bitmap has 3 words, 128 blocks need 2",
    );
    tampered(
        "huge",
        &|mut body| {
            let at = body.len() - TAIL_COUNT;
            body[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
            body
        },
        "hot-plug bitmap: 4294967295 entries, more than the 524288 allowed",
    );
    let unconfigured = scratch.join("unconfigured");
    edit_config(&state, &unconfigured, |c| {
        let mut v: serde_json::Value = serde_json::from_str(&c).unwrap();
        v["memory-hotplug"] = serde_json::Value::Null;
        v.to_string()
    });
    b.refuses(
        "PUT",
        "/snapshot/load",
        Some(&load_body(&unconfigured, "File", &mem, "")),
        400,
        "the snapshot's configuration has no memory-hotplug, and it holds the state of a virtio-mem device",
    );
    b.refuses(
        "PUT",
        "/snapshot/load",
        Some(&load_body(&state, "Uffd", &scratch.join("no-handler"), "")),
        400,
        "this snapshot has a virtio-mem device (memory-hotplug)",
    );
    assert_eq!(
        b.state(),
        "Not started",
        "the refused loads left nothing behind"
    );

    b.ok("PUT", "/snapshot/load", &load);
    assert_eq!(
        b.get("/vm/config")["memory-hotplug"],
        serde_json::json!({"total_size_mib": 256, "block_size_mib": 2, "slot_size_mib": 128})
    );
    assert_eq!(
        b.get("/hotplug/memory"),
        serde_json::json!({"total_size_mib": 256, "slot_size_mib": 128, "block_size_mib": 2,
            "plugged_size_mib": PLUG_MIB, "requested_size_mib": PLUG_MIB})
    );
    let rss = rss_anon_kib(&b);
    assert!(
        ((PLUG_MIB - 4) << 10..(PLUG_MIB + 64) << 10).contains(&rss),
        "RssAnon {rss} KiB after the restore: the {PLUG_MIB} MiB plugged, not the 256 MiB region"
    );
    b.set_state("Resumed");
    b.ok(
        "PATCH",
        "/hotplug/memory",
        &format!(r#"{{"requested_size_mib": {}}}"#, PLUG_MIB / 2),
    );
    wait_line(&b, "vmem unplug");
    let out = TinyOutput::parse(&b.serial());
    let reread = line(&out, "vmem reread");
    assert_eq!(field(&reread, "pages"), Some(pages.as_str()));
    assert_eq!(
        field(&reread, "ok"),
        Some(pages.as_str()),
        "the plugged memory's markers after the restore"
    );
    let unplug = line(&out, "vmem unplug");
    assert_eq!(field(&unplug, "resp"), Some("0"), "ACK");
    assert_eq!(
        field(&unplug, "plugged").and_then(parse_hex),
        Some((PLUG_MIB / 2) << 20)
    );
    assert_eq!(b.get("/hotplug/memory")["plugged_size_mib"], PLUG_MIB / 2);
    b.ok(
        "PATCH",
        "/hotplug/memory",
        &format!(r#"{{"requested_size_mib": {PLUG_MIB}}}"#),
    );
    wait_line(&b, "vmem replug");
    let out = TinyOutput::parse(&b.serial());
    let replug = line(&out, "vmem replug");
    let half = ((PLUG_MIB / 2) << 20) / 4096;
    assert_eq!(field(&replug, "resp"), Some("0"), "ACK");
    assert_eq!(
        field(&replug, "plugged").and_then(parse_hex),
        Some(PLUG_MIB << 20)
    );
    assert_eq!(field(&replug, "ok"), Some(half.to_string().as_str()));
    b.wait_serial("the guest's end", "KILN-TINY: done");
    wait_exit(&mut b);
    let m = Metrics::read(&b_metrics);
    // The restore registered the one slot holding plugged blocks (the second holds none);
    // the unplug and the plug again stayed inside it.
    assert_eq!(m.get("memory_hotplug.slots_added"), 1, "{m:?}");
    assert_eq!(m.get("memory_hotplug.slots_removed"), 0);
    assert_eq!(m.get("memory_hotplug.unplug_bytes"), (PLUG_MIB / 2) << 20);
    assert_eq!(m.get("memory_hotplug.plug_bytes"), (PLUG_MIB / 2) << 20);
}

/// As in Firecracker, a snapshot loads only into a fresh VMM: not after `PUT
/// /hotplug/memory`. A Diff snapshot of a microVM with virtio-mem is refused by name, and
/// so is an authenticated one whose memory is more than its digests can cover (256 GiB).
#[test]
fn a_load_after_memory_hotplug_a_diff_and_an_unhashable_snapshot_are_refused() {
    let scratch = ScratchDir::new("kiln-vmem-snap-refused");
    let fresh = Vmm::start(&[]);
    fresh.ok("PUT", "/hotplug/memory", r#"{"total_size_mib": 256}"#);
    fresh.refuses(
        "PUT",
        "/snapshot/load",
        Some(&load_body(
            &scratch.join("s"),
            "File",
            &scratch.join("m"),
            "",
        )),
        400,
        "and memory-hotplug is already configured",
    );
    let metrics = scratch.join("metrics.json");
    let vmm = vmem_vmm(&metrics, "vmem");
    vmm.set_state("Paused");
    vmm.refuses(
        "PUT",
        "/snapshot/create",
        Some(&create_body("Diff", &scratch.join("s"), &scratch.join("m"))),
        400,
        "snapshot_type Diff: this microVM has a virtio-mem device (memory-hotplug)",
    );
    assert!(!scratch.join("s").exists() && !scratch.join("m").exists());
    drop(vmm);
    let key = scratch.join("key");
    write_key(&key, 7);
    let big = Vmm::start(&["--snapshot-key-file", key.to_str().unwrap()]);
    big.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
    );
    big.boot_tiny_guest("kiln.test=vmem");
    big.ok("PUT", "/hotplug/memory", r#"{"total_size_mib": 262144}"#);
    big.action("InstanceStart");
    wait_line(&big, "vmem base=");
    big.set_state("Paused");
    big.refuses(
        "PUT",
        "/snapshot/create",
        Some(&create_body("Full", &scratch.join("s"), &scratch.join("m"))),
        400,
        "an authenticated snapshot hashes at most 274877906944 bytes of memory, and this microVM's RAM and memory hot-plug region are 274911461376 bytes",
    );
    assert!(!scratch.join("s").exists() && !scratch.join("m").exists());
}

/// With `--enable-pci` the device is a PCI function (virtio device id 24: PCI device
/// 0x1058) next to the others, found by the guest's bus scan.
#[test]
fn the_device_is_on_pci_with_enable_pci() {
    require_kvm();
    let dir = ScratchDir::short("kiln-vmem-pci");
    let cfg = dir.write(
        "vm.json",
        format!(
            "{{\"boot-source\": {{\"kernel_image_path\": {:?}, \"boot_args\": \"kiln.test=pci-scan\"}},\n \"machine-config\": {{\"vcpu_count\": 1, \"mem_size_mib\": 32}},\n \"entropy\": {{}},\n \"memory-hotplug\": {{\"total_size_mib\": 128}}}}\n",
            tiny::tiny_guest().to_str().expect("utf-8 path")
        ),
    );
    let mut cmd = Command::new(require_bin("vmm"));
    cmd.arg("--config-file")
        .arg(&cfg)
        .arg("--no-api")
        .arg("--enable-pci");
    let f = run_with_timeout(&mut cmd, WAIT);
    let out = tiny::assert_clean_run(&f);
    let devs = out.topic("pci dev");
    assert!(
        devs.iter().any(|d| field(d, "device") == Some("0x1058")),
        "no virtio-mem function: {f}"
    );
}
