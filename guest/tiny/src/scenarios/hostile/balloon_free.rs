//! `balloon-free-hostile`: what a broken or malicious driver gives the free page reporting
//! and hinting queues of the first virtio-balloon device, each printed as
//! `balloon-free hostile case=NAME used=U` (every chain is expected back, length 0).
//! Reporting: a range at 256 GiB (`report-outside`), one over the end of RAM
//! (`report-past-ram`), a zero length (`report-zero`), less than a page (`report-unaligned`),
//! a range that wraps the address space (`report-overflow`), a length of almost 4 GiB
//! (`report-huge`), a looping chain (`report-loop`). Hinting (no run started): a range
//! before any id (`hint-before-id`), an id in a device-writable buffer
//! (`hint-writable-id`), an id of 3 bytes (`hint-short-id`), a looping chain (`hint-loop`).
//! Then one good page reported: `balloon-free after used=0`.

// Lengths and indices are cut to the width of their ring field; each is in range.
#![allow(clippy::cast_possible_truncation)]

use super::{ram_end, BIG_BASE};
use crate::boot_info::BootInfo;
use crate::scenarios::balloon::open;
use crate::serial::Console;
use crate::virtio::balloon::{Balloon, FeatureQueue};
use crate::virtio::ring::{RingExt, DESC_F_NEXT, DESC_F_WRITE};
use crate::virtio::WAIT_CYCLES;

/// Posts the chain at `head` and prints `balloon-free hostile case=NAME used=U`.
fn case(b: &Balloon, q: &mut FeatureQueue, con: &mut Console, name: &str, head: u16) {
    q.ring.push(head);
    b.mmio.notify(q.index);
    match q.ring.wait_used(WAIT_CYCLES) {
        Some(u) => con
            .line()
            .s("balloon-free hostile case=")
            .s(name)
            .s(" used=")
            .dec(u.len.into())
            .end(),
        None => con
            .error()
            .s("balloon-free hostile case=")
            .s(name)
            .s(" never returned")
            .end(),
    }
}

pub fn run(info: &BootInfo, con: &mut Console) {
    let Some(mut b) = open(info, con) else { return };
    let (Some(mut report), Some(mut hint)) = (b.report.take(), b.hint.take()) else {
        con.error()
            .s("balloon-free-hostile needs reporting and hinting")
            .end();
        return;
    };
    let w = DESC_F_WRITE;
    let page = BIG_BASE;
    let r = &mut report.ring;
    r.set_desc(0, 0x40_0000_0000, 4096, w, 0);
    r.set_desc(1, ram_end(info) - 4096, 8192, w, 0);
    r.set_desc(2, page, 0, w, 0);
    r.set_desc(3, page + 0x800, 0x800, w, 0);
    r.set_desc(4, u64::MAX - 0xfff, 0x2000, w, 0);
    r.set_desc(5, page, 0xffff_f000, w, 0);
    r.set_desc(6, page, 4096, w | DESC_F_NEXT, 7);
    r.set_desc(7, page, 4096, w | DESC_F_NEXT, 6);
    for (head, name) in [
        "report-outside",
        "report-past-ram",
        "report-zero",
        "report-unaligned",
        "report-overflow",
        "report-huge",
        "report-loop",
    ]
    .iter()
    .enumerate()
    {
        case(&b, &mut report, con, name, head as u16);
    }
    let h = &mut hint.ring;
    h.set_desc(0, page, 4096, w, 0);
    h.set_desc(1, Balloon::cmd_id_addr(0, 2), 4, w, 0);
    h.set_desc(2, Balloon::cmd_id_addr(1, 2), 3, 0, 0);
    h.set_desc(3, page, 4096, w | DESC_F_NEXT, 4);
    h.set_desc(4, page, 4096, w | DESC_F_NEXT, 3);
    for (head, name) in [
        "hint-before-id",
        "hint-writable-id",
        "hint-short-id",
        "hint-loop",
    ]
    .iter()
    .enumerate()
    {
        case(&b, &mut hint, con, name, head as u16);
    }
    report.ring.set_desc(0, page, 4096, w, 0);
    report.ring.push(0);
    b.mmio.notify(report.index);
    match report.ring.wait_used(WAIT_CYCLES) {
        Some(u) => con
            .line()
            .s("balloon-free after used=")
            .dec(u.len.into())
            .end(),
        None => con.error().s("balloon-free after timed out").end(),
    }
}
