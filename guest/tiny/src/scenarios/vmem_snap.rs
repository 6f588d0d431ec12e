//! virtio-mem scenario `vmem-snap`: plugged memory across a snapshot. Like `vmem` it starts
//! the device (`vmem base=...`), waits for the host to raise `requested_size`, plugs it and
//! writes a marker into every 4 KiB page (`vmem plug ...`, `vmem wrote pages=N ok=K`).
//! Then (the host pauses, snapshots and restores the microVM into another VMM here):
//!
//! 1. waits for `requested_size` to fall below `plugged_size`, reads every marker back
//!    (`vmem reread pages=N ok=K`: the plugged memory came back from the memory file), and
//!    UNPLUGs the blocks above the new request (`vmem unplug resp=K plugged=0x..`);
//! 2. waits for `requested_size` to rise again, PLUGs those blocks once more, writes and
//!    reads their markers (`vmem replug resp=K plugged=0x.. pages=N ok=K`).
//!
//! Each wait lasts at most `kiln.wait=S` seconds (default 30).

use super::vmem::{open, wait_change};
use crate::boot_info::BootInfo;
use crate::serial::Console;
use crate::virtio::mem::{map_region, REQ_PLUG, REQ_UNPLUG};
use crate::virtio::WAIT_CYCLES;
use kiln_guest_boot::cmdline::param_num;

const PAGE: u64 = 4096;
const MARK: u64 = 0x6b69_6c6e_0000_0000;

/// Writes the marker of every page of `[from, from + bytes)`.
fn mark(from: u64, bytes: u64) {
    for p in 0..bytes / PAGE {
        let at = from + p * PAGE;
        // SAFETY: the caller plugged [from, from + bytes) (ACK) and map_region maps it; no
        // Rust object lives there. One aligned word per page.
        unsafe { core::ptr::write_volatile(at as *mut u64, MARK | at >> 12) }
    }
}

/// The pages of `[from, from + bytes)` whose marker is right.
fn check(from: u64, bytes: u64) -> u64 {
    (0..bytes / PAGE)
        .filter(|p| {
            let at = from + p * PAGE;
            // SAFETY: as in `mark`.
            unsafe { core::ptr::read_volatile(at as *const u64) == MARK | at >> 12 }
        })
        .count() as u64
}

pub fn run(info: &BootInfo, con: &mut Console) {
    let Some(mut m) = open(info, con) else { return };
    let wait = param_num(info.cmdline, b"kiln.wait", 30).clamp(1, 300);
    if wait_change(&m, con, wait, |req, plugged| req > plugged).is_none() {
        return;
    }
    let (addr, block) = (m.addr(), m.block_size().max(1));
    // At most the 1 GiB the page tables map.
    let size = m.requested().min(1 << 30);
    let blocks = u16::try_from(size / block).unwrap_or(u16::MAX);
    map_region(addr);
    let Some(a) = m.request(REQ_PLUG, addr, blocks, WAIT_CYCLES) else {
        con.error().s("vmem: PLUG never answered").end();
        return;
    };
    con.line()
        .s("vmem plug resp=")
        .dec(a.kind.into())
        .s(" plugged=")
        .hex(m.plugged())
        .end();
    let bytes = u64::from(blocks) * block;
    mark(addr, bytes);
    con.line()
        .s("vmem wrote pages=")
        .dec(bytes / PAGE)
        .s(" ok=")
        .dec(check(addr, bytes))
        .end();
    if wait_change(&m, con, wait, |req, plugged| req < plugged).is_none() {
        return;
    }
    con.line()
        .s("vmem reread pages=")
        .dec(bytes / PAGE)
        .s(" ok=")
        .dec(check(addr, bytes))
        .end();
    let keep = u16::try_from(m.requested() / block)
        .unwrap_or(u16::MAX)
        .min(blocks);
    let (upper, count) = (addr + u64::from(keep) * block, blocks - keep);
    let Some(a) = m.request(REQ_UNPLUG, upper, count, WAIT_CYCLES) else {
        con.error().s("vmem: UNPLUG never answered").end();
        return;
    };
    con.line()
        .s("vmem unplug resp=")
        .dec(a.kind.into())
        .s(" plugged=")
        .hex(m.plugged())
        .end();
    if wait_change(&m, con, wait, |req, plugged| req > plugged).is_none() {
        return;
    }
    let Some(a) = m.request(REQ_PLUG, upper, count, WAIT_CYCLES) else {
        con.error().s("vmem: PLUG never answered").end();
        return;
    };
    let again = u64::from(count) * block;
    mark(upper, again);
    con.line()
        .s("vmem replug resp=")
        .dec(a.kind.into())
        .s(" plugged=")
        .hex(m.plugged())
        .s(" pages=")
        .dec(again / PAGE)
        .s(" ok=")
        .dec(check(upper, again))
        .end();
}
