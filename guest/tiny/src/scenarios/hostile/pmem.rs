//! `pmem-hostile`: what a broken or malicious driver posts to the first virtio-pmem
//! device, each printed as `pmem hostile case=NAME used=U status=0x..` (`status`: the
//! status word the chain named, 0xdeadbeef when the device did not write it): a request
//! the device may write (`writable`), a 3-byte request (`short`), an unknown type (`type`),
//! no status buffer (`no-status`), a device-readable status (`readonly-status`), an 8-byte
//! status (`long-status`), a status in the pmem window itself, which is not guest RAM
//! (`in-window`), a chain that loops (`loop`); then a well-formed flush
//! (`pmem hostile flush used=4 status=0x0`), an available index 100 entries ahead
//! (`pmem hostile case=avail status=0x..`, DEVICE_NEEDS_RESET expected), and after a reset
//! a flush again: `pmem after-reset used=4 status=0x0`.

use crate::boot_info::BootInfo;
use crate::scenarios::pmem::{flush, open};
use crate::serial::Console;
use crate::virtio::pmem::{Pmem, NO_STATUS, REQ_FLUSH};
use crate::virtio::ring::{RingExt, DESC_F_NEXT, DESC_F_WRITE};
use crate::virtio::WAIT_CYCLES;

/// One malformed request: its name, and its two descriptors (address, length, flags).
type Case = (&'static str, [(u64, u32, u16); 2]);

/// Posts the chain at `head` and prints its line.
fn case(p: &mut Pmem, con: &mut Console, name: &str, head: u16) {
    match p.post(head, WAIT_CYCLES) {
        Some(u) => con
            .line()
            .s("pmem hostile case=")
            .s(name)
            .s(" used=")
            .dec(u.len.into())
            .s(" status=")
            .hex(Pmem::word(4).into())
            .end(),
        None => con
            .error()
            .s("pmem hostile case=")
            .s(name)
            .s(" never returned")
            .end(),
    }
}

pub fn run(info: &BootInfo, con: &mut Console) {
    let Some(mut p) = open(info, con) else { return };
    let (req, other, status) = (Pmem::word_addr(0), Pmem::word_addr(1), Pmem::word_addr(4));
    Pmem::set_word(0, REQ_FLUSH);
    Pmem::set_word(1, 5);
    let cases: [Case; 8] = [
        (
            "writable",
            [
                (req, 4, DESC_F_WRITE | DESC_F_NEXT),
                (status, 4, DESC_F_WRITE),
            ],
        ),
        ("short", [(req, 3, DESC_F_NEXT), (status, 4, DESC_F_WRITE)]),
        ("type", [(other, 4, DESC_F_NEXT), (status, 4, DESC_F_WRITE)]),
        ("no-status", [(req, 4, 0), (0, 0, 0)]),
        ("readonly-status", [(req, 4, DESC_F_NEXT), (status, 4, 0)]),
        (
            "long-status",
            [(req, 4, DESC_F_NEXT), (status, 8, DESC_F_WRITE)],
        ),
        (
            "in-window",
            [(req, 4, DESC_F_NEXT), (p.start, 4, DESC_F_WRITE)],
        ),
        (
            "loop",
            [
                (req, 4, DESC_F_NEXT),
                (status, 4, DESC_F_WRITE | DESC_F_NEXT),
            ],
        ),
    ];
    for (name, descs) in cases {
        Pmem::set_word(4, NO_STATUS);
        // Descriptor 1 chains back to 0 for `loop`; otherwise its NEXT flag is clear.
        let (a0, l0, f0) = descs[0];
        let (a1, l1, f1) = descs[1];
        p.ring.set_desc(0, a0, l0, f0, 1);
        p.ring.set_desc(1, a1, l1, f1, 0);
        case(&mut p, con, name, 0);
    }
    flush(&mut p, con, "pmem hostile flush");
    // An available index far ahead: the device breaks the queue.
    let idx = p.ring.used_idx().wrapping_add(100);
    p.ring.set_avail_idx(idx);
    p.mmio.notify(0);
    let status = super::wait_needs_reset(&p.mmio);
    con.line()
        .s("pmem hostile case=avail status=")
        .hex(status.into())
        .end();
    let Ok(mut p) = Pmem::start(p.mmio) else {
        con.error().s("pmem did not restart after the reset").end();
        return;
    };
    flush(&mut p, con, "pmem after-reset");
}
