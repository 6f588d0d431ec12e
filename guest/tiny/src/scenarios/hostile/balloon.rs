//! `balloon-hostile`: what a broken or malicious driver gives the first virtio-balloon
//! device, each printed as `balloon hostile case=NAME used=U` (the chain came back; every
//! one is expected back, length 0): frame numbers outside RAM (`outside`: past 4 GiB, at
//! the first page past RAM, `u32::MAX`), one free page three times (`duplicate`), a
//! device-writable list (`writable`), a length that is not whole frame numbers (`odd`),
//! more than 256 frame numbers (`long`), a list at 256 GiB (`list-outside`), a loop
//! (`loop`), and a writable list on the deflate queue (`deflate-writable`). Then a stats
//! queue that floods (all its descriptors posted, 20 times over, with unknown tags):
//! `balloon hostile case=stats-flood returned=R`; an available index 100 entries ahead on
//! the inflate queue: `balloon hostile case=avail status=0x..` (DEVICE_NEEDS_RESET
//! expected); a reset and one good page inflated: `balloon after-reset used=0`.

// Lengths and indices are cut to the width of their ring or register field; each is in
// range.
#![allow(clippy::cast_possible_truncation)]

use super::{ram_end, wait_needs_reset, BIG_BASE};
use crate::arch::rdtsc;
use crate::boot_info::BootInfo;
use crate::scenarios::balloon::open;
use crate::serial::Console;
use crate::virtio::balloon::{Balloon, STATS};
use crate::virtio::ring::{Ring, RingExt, DESC_F_NEXT, DESC_F_WRITE, QUEUE_SIZE};
use crate::virtio::WAIT_CYCLES;

/// Posts the chain at `head` on queue `q` and prints `balloon hostile case=NAME used=U`.
fn case(b: &mut Balloon, con: &mut Console, q: u32, name: &str, head: u16) {
    let ring: &mut Ring = if q == 0 {
        &mut b.inflate
    } else {
        &mut b.deflate
    };
    ring.push(head);
    b.mmio.notify(q);
    match ring.wait_used(WAIT_CYCLES) {
        Some(u) => con
            .line()
            .s("balloon hostile case=")
            .s(name)
            .s(" used=")
            .dec(u.len.into())
            .end(),
        None => con
            .error()
            .s("balloon hostile case=")
            .s(name)
            .s(" never returned")
            .end(),
    }
}

/// Puts `pfns` in the frame number buffer and describes it (device-readable) at `index`.
fn list(b: &mut Balloon, q: u32, index: usize, pfns: &[u32]) {
    Balloon::pfns()[..pfns.len()].copy_from_slice(pfns);
    let ring = if q == 0 {
        &mut b.inflate
    } else {
        &mut b.deflate
    };
    ring.set_desc(index, Balloon::pfn_addr(), (pfns.len() * 4) as u32, 0, 0);
}

pub fn run(info: &BootInfo, con: &mut Console) {
    let Some(mut b) = open(info, con) else { return };
    let pfn_buf = Balloon::pfn_addr();
    let past_ram = (ram_end(info) >> 12) as u32;
    let free = (BIG_BASE >> 12) as u32;
    list(&mut b, 0, 0, &[0x1000_0000, past_ram, u32::MAX]);
    case(&mut b, con, 0, "outside", 0);
    list(&mut b, 0, 1, &[free, free, free]);
    case(&mut b, con, 0, "duplicate", 1);
    b.inflate.set_desc(2, pfn_buf, 8, DESC_F_WRITE, 0);
    case(&mut b, con, 0, "writable", 2);
    b.inflate.set_desc(3, pfn_buf, 6, 0, 0);
    case(&mut b, con, 0, "odd", 3);
    b.inflate.set_desc(4, pfn_buf, 257 * 4, 0, 0);
    case(&mut b, con, 0, "long", 4);
    b.inflate.set_desc(5, 0x40_0000_0000, 4, 0, 0);
    case(&mut b, con, 0, "list-outside", 5);
    b.inflate.set_desc(6, pfn_buf, 4, DESC_F_NEXT, 7);
    b.inflate.set_desc(7, pfn_buf + 4, 4, DESC_F_NEXT, 6);
    case(&mut b, con, 0, "loop", 6);
    b.deflate.set_desc(0, pfn_buf, 4, DESC_F_WRITE, 0);
    case(&mut b, con, 1, "deflate-writable", 0);
    // Statistics with an unknown tag, posted on every descriptor again and again.
    let mut returned = 0u64;
    if let Some(stats) = b.stats.as_mut() {
        let buf = Balloon::stats_buf();
        for (i, chunk) in buf.chunks_exact_mut(10).enumerate() {
            chunk[..2].copy_from_slice(&(90 + i as u16).to_le_bytes());
            chunk[2..].copy_from_slice(&(i as u64).to_le_bytes());
        }
        for d in 0..QUEUE_SIZE {
            stats.set_desc(d, Balloon::stats_addr(), (STATS * 10) as u32, 0, 0);
        }
        for _ in 0..20 {
            for d in 0..QUEUE_SIZE - 1 {
                stats.push(d as u16);
            }
            b.mmio.notify(2);
            let start = rdtsc();
            while rdtsc().wrapping_sub(start) < WAIT_CYCLES / 50 {
                while stats.pop_used().is_some() {
                    returned += 1;
                }
            }
        }
    }
    con.line()
        .s("balloon hostile case=stats-flood returned=")
        .dec(returned)
        .end();
    // An available index far ahead: the device breaks the queue.
    let idx = b.inflate.used_idx().wrapping_add(100);
    b.inflate.set_avail_idx(idx);
    b.mmio.notify(0);
    let status = wait_needs_reset(&b.mmio);
    con.line()
        .s("balloon hostile case=avail status=")
        .hex(status.into())
        .end();
    // A reset (open negotiates from a reset) and one good page.
    let Ok(mut b) = Balloon::open(info.cmdline) else {
        con.error()
            .s("balloon did not restart after the reset")
            .end();
        return;
    };
    Balloon::pfns()[0] = free;
    match b.send(0, 1, WAIT_CYCLES) {
        Some(u) => con
            .line()
            .s("balloon after-reset used=")
            .dec(u.len.into())
            .end(),
        None => con.error().s("balloon after-reset timed out").end(),
    }
}
