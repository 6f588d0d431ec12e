//! `vmem-hostile`: what a broken or malicious driver asks of the first virtio-mem device,
//! once the host has set `requested_size` (it waits for the configuration change, as
//! `vmem` does). Each case prints `vmem hostile case=NAME resp=K len=L` (K: the response
//! type, 0 ACK, 1 NACK, 2 BUSY, 3 ERROR; L: the used length):
//!
//! `unaligned` (a PLUG 4 KiB into the region), `outside` (a PLUG just past the usable
//! region), `below` (a PLUG before the region), `empty` (zero blocks), `beyond-requested`
//! (a PLUG of one block more than requested: NACK), `unplug-unplugged`, `state-outside`,
//! `unknown-type` (type 7), `short` (an 8-byte request), `no-response` (no writable buffer:
//! returned with length 0), `plug` (the requested blocks: ACK), `plug-again` (the same
//! blocks: ERROR), `state` (`state=S` added: 0 PLUGGED), `unplug-all` (ACK); then
//! `vmem hostile done plugged=0x..`, and it lingers as `vmem` does (`vmem end ...`).

use crate::boot_info::BootInfo;
use crate::scenarios::vmem::{linger, open, wait_change};
use crate::serial::Console;
use crate::virtio::mem::{Answer, VirtioMem, REQ_PLUG, REQ_STATE, REQ_UNPLUG, REQ_UNPLUG_ALL};
use crate::virtio::WAIT_CYCLES;
use kiln_guest_boot::cmdline::param_num;

fn report(con: &mut Console, name: &str, a: Option<Answer>) {
    match a {
        Some(a) => con
            .line()
            .s("vmem hostile case=")
            .s(name)
            .s(" resp=")
            .dec(a.kind.into())
            .s(" len=")
            .dec(a.len.into())
            .s(" state=")
            .dec(a.state.into())
            .end(),
        None => con
            .error()
            .s("vmem hostile case=")
            .s(name)
            .s(" never answered")
            .end(),
    }
}

pub fn run(info: &BootInfo, con: &mut Console) {
    let Some(mut m) = open(info, con) else { return };
    let wait = param_num(info.cmdline, b"kiln.wait", 30).clamp(1, 300);
    if wait_change(&m, con, wait, |req, _| req > 0).is_none() {
        return;
    }
    let (addr, block) = (m.addr(), m.block_size().max(1));
    let requested = m.requested();
    let n = (requested / block).min(1000) as u16;
    let usable_end = addr + m.usable();
    let cases: [(&str, u16, u64, u16); 7] = [
        ("unaligned", REQ_PLUG, addr + 4096, 1),
        ("outside", REQ_PLUG, usable_end, 1),
        ("below", REQ_PLUG, addr - block, 1),
        ("empty", REQ_PLUG, addr, 0),
        ("beyond-requested", REQ_PLUG, addr, n + 1),
        ("unplug-unplugged", REQ_UNPLUG, addr, 1),
        ("state-outside", REQ_STATE, usable_end - block, 2),
    ];
    for (name, kind, at, blocks) in cases {
        let a = m.request(kind, at, blocks, WAIT_CYCLES);
        report(con, name, a);
    }
    VirtioMem::write_request(7, addr, 1);
    let a = m.post(24, 10, WAIT_CYCLES);
    report(con, "unknown-type", a);
    VirtioMem::write_request(REQ_PLUG, addr, 1);
    let a = m.post(8, 10, WAIT_CYCLES);
    report(con, "short", a);
    let a = m.post(24, 0, WAIT_CYCLES);
    report(con, "no-response", a);
    let a = m.request(REQ_PLUG, addr, n, WAIT_CYCLES);
    report(con, "plug", a);
    let a = m.request(REQ_PLUG, addr, n, WAIT_CYCLES);
    report(con, "plug-again", a);
    let a = m.request(REQ_STATE, addr, n, WAIT_CYCLES);
    report(con, "state", a);
    let a = m.request(REQ_UNPLUG_ALL, 0, 0, WAIT_CYCLES);
    report(con, "unplug-all", a);
    con.line()
        .s("vmem hostile done plugged=")
        .hex(m.plugged())
        .end();
    linger(&m, con, wait, requested);
}
