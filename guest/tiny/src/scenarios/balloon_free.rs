//! virtio-balloon scenario `balloon-free`: free page reporting and hinting, as Linux's
//! driver does them. It starts the first virtio-balloon device (`balloon base=0x..
//! features=0x..`), writes a marker in every 4 KiB page of `kiln.mib=M` MiB (default 32, at
//! most 64) of RAM from `kiln.base=B` MiB (default 16) and prints `balloon-free touched
//! pages=N`. Then:
//!
//! 1. with `VIRTIO_BALLOON_F_REPORTING`: it waits for the host's balloon target to become
//!    non-zero (the test's signal: nothing is inflated), reports the first half of the
//!    touched range in chains of four device-writable 1 MiB ranges, and prints
//!    `balloon-free reported bytes=B chains=C`;
//! 2. with `VIRTIO_BALLOON_F_FREE_PAGE_HINT`, `kiln.runs=R` runs (default 1): it waits for a
//!    host id (`free_page_hint_cmd_id`) that is neither STOP, DONE nor the last run's,
//!    answers it (a 4-byte device-readable buffer), hints the second half of the touched
//!    range as device-writable 4 MiB ranges, one chain each, sends STOP and prints
//!    `balloon-free hinted id=I bytes=B`; it waits for DONE, counts the hinted pages whose
//!    marker is gone (the host dropped them) and prints `balloon-free done id=I zeroed=Z`.
//!    In the next run, once it has the new id, it first writes its markers again
//!    (`balloon-free retouched`).
//!
//! Each wait lasts at most `kiln.wait=S` seconds (default 30).

// Page counts and addresses are cut to the width of their fields; each is in range.
#![allow(clippy::cast_possible_truncation)]

use crate::arch::rdtsc;
use crate::boot_info::BootInfo;
use crate::scenarios::balloon::open;
use crate::serial::Console;
use crate::virtio::balloon::{Balloon, FeatureQueue, CMD_ID_DONE, CMD_ID_STOP};
use crate::virtio::ring::{RingExt, DESC_F_NEXT, DESC_F_WRITE};
use crate::virtio::WAIT_CYCLES;
use kiln_guest_boot::cmdline::param_num;

const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;
const MARK: u64 = 0x6b69_6c6e_0000_0000;
/// Ranges per reporting chain and bytes per range.
const REPORT_CHAIN: u64 = 4;
const REPORT_RANGE: u64 = MIB;
/// Bytes per hinted range (Linux's hint buffers are 4 MiB blocks).
const HINT_RANGE: u64 = 4 * MIB;

/// Writes the marker of every page of `from..from + len`.
fn touch(from: u64, len: u64) {
    for addr in (from..from + len).step_by(PAGE as usize) {
        // SAFETY: the touched range is guest RAM the image does not use (it ends below
        // 2 MiB; the base is at least 4 MiB), identity-mapped; one aligned word per page.
        unsafe { core::ptr::write_volatile(addr as *mut u64, MARK | addr >> 12) }
    }
}

/// Pages of `from..from + len` whose marker is gone.
fn zeroed(from: u64, len: u64) -> u64 {
    (from..from + len)
        .step_by(PAGE as usize)
        // SAFETY: as in `touch`.
        .filter(|&addr| unsafe { core::ptr::read_volatile(addr as *const u64) } == 0)
        .count() as u64
}

/// Waits up to `seconds` for `done()`, about a millisecond between looks.
fn wait(seconds: u64, mut done: impl FnMut() -> bool) -> bool {
    let start = rdtsc();
    loop {
        if done() {
            return true;
        }
        if rdtsc().wrapping_sub(start) > seconds * WAIT_CYCLES {
            return false;
        }
        let t = rdtsc();
        while rdtsc().wrapping_sub(t) < WAIT_CYCLES / 1000 {}
    }
}

/// Posts the chain at descriptor 0 of `q` and waits for the device to return it.
fn post(b: &Balloon, q: &mut FeatureQueue) -> bool {
    q.ring.push(0);
    b.mmio.notify(q.index);
    q.ring.wait_used(WAIT_CYCLES).is_some()
}

/// Reports `from..from + len` in chains of [`REPORT_CHAIN`] ranges; returns the chains the
/// device returned.
fn report(b: &mut Balloon, from: u64, len: u64) -> u64 {
    let Some(mut q) = b.report.take() else {
        return 0;
    };
    let mut chains = 0;
    for chain in (from..from + len).step_by((REPORT_CHAIN * REPORT_RANGE) as usize) {
        for i in 0..REPORT_CHAIN {
            let last = i + 1 == REPORT_CHAIN;
            let flags = if last {
                DESC_F_WRITE
            } else {
                DESC_F_WRITE | DESC_F_NEXT
            };
            let addr = chain + i * REPORT_RANGE;
            q.ring
                .set_desc(i as usize, addr, REPORT_RANGE as u32, flags, i as u16 + 1);
        }
        if !post(b, &mut q) {
            break;
        }
        chains += 1;
    }
    b.report = Some(q);
    chains
}

/// One hinting run of id `id` over `from..from + len`; returns the bytes hinted.
fn hint_run(b: &mut Balloon, id: u32, from: u64, len: u64) -> u64 {
    let Some(mut q) = b.hint.take() else {
        return 0;
    };
    let mut hinted = 0;
    q.ring.set_desc(0, Balloon::cmd_id_addr(0, id), 4, 0, 0);
    if post(b, &mut q) {
        for addr in (from..from + len).step_by(HINT_RANGE as usize) {
            q.ring.set_desc(0, addr, HINT_RANGE as u32, DESC_F_WRITE, 0);
            if !post(b, &mut q) {
                break;
            }
            hinted += HINT_RANGE;
        }
        q.ring
            .set_desc(0, Balloon::cmd_id_addr(1, CMD_ID_STOP), 4, 0, 0);
        post(b, &mut q);
    }
    b.hint = Some(q);
    hinted
}

pub fn run(info: &BootInfo, con: &mut Console) {
    let Some(mut b) = open(info, con) else { return };
    let mib = param_num(info.cmdline, b"kiln.mib", 32).clamp(2, 64);
    let base = param_num(info.cmdline, b"kiln.base", 16).clamp(4, 1024) * MIB;
    let secs = param_num(info.cmdline, b"kiln.wait", 30).clamp(1, 300);
    let runs = param_num(info.cmdline, b"kiln.runs", 1).clamp(1, 16);
    let half = mib / 2 * MIB;
    touch(base, mib * MIB);
    con.line()
        .s("balloon-free touched pages=")
        .dec(mib * MIB / PAGE)
        .end();
    if b.report.is_some() {
        if !wait(secs, || b.num_pages() > 0) {
            con.error().s("balloon-free: no signal to report").end();
            return;
        }
        let chains = report(&mut b, base, half);
        con.line()
            .s("balloon-free reported bytes=")
            .dec(chains * REPORT_CHAIN * REPORT_RANGE)
            .s(" chains=")
            .dec(chains)
            .end();
    }
    if b.hint.is_none() {
        return;
    }
    let hinted_from = base + half;
    let mut last = CMD_ID_STOP;
    for run in 0..runs {
        let mut id = CMD_ID_STOP;
        let fresh = wait(secs, || {
            id = b.hint_cmd();
            id != CMD_ID_STOP && id != CMD_ID_DONE && id != last
        });
        if !fresh {
            con.error().s("balloon-free: no hinting run started").end();
            return;
        }
        if run > 0 {
            touch(hinted_from, half);
            con.line().s("balloon-free retouched").end();
        }
        last = id;
        let bytes = hint_run(&mut b, id, hinted_from, half);
        con.line()
            .s("balloon-free hinted id=")
            .dec(id.into())
            .s(" bytes=")
            .dec(bytes)
            .end();
        if !wait(secs, || b.hint_cmd() == CMD_ID_DONE) {
            con.error()
                .s("balloon-free: the host never said DONE")
                .end();
            return;
        }
        con.line()
            .s("balloon-free done id=")
            .dec(id.into())
            .s(" zeroed=")
            .dec(zeroed(hinted_from, half))
            .end();
    }
}
