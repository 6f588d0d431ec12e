//! virtio-mem scenario `vmem`: a driver that plugs what the host asks for, uses it, and
//! unplugs it again. It starts the first virtio-mem device (accepting
//! `VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE`) and prints
//! `vmem base=0x.. features=0x.. block=0x.. addr=0x.. region=0x.. usable=0x.. plugged=0x..
//! requested=0x..`, then:
//!
//! 1. waits for the host to raise `requested_size` (a configuration-change interrupt):
//!    `vmem config-change isr=0x.. requested=0x.. usable=0x..`;
//! 2. maps the region, plugs the requested blocks from its start in one PLUG and prints
//!    `vmem plug resp=K plugged=0x..` (K: 0 ACK, 1 NACK, 2 BUSY, 3 ERROR);
//! 3. writes a marker into every 4 KiB page of the plugged memory, reads them back and
//!    prints `vmem wrote pages=N ok=K`;
//! 4. waits for `requested_size` to fall below `plugged_size`
//!    (`vmem config-change isr=0x.. requested=0x.. usable=0x..`), UNPLUGs everything it
//!    plugged (`vmem unplug resp=K plugged=0x..`), asks for its STATE
//!    (`vmem state resp=K state=S`, S: 0 PLUGGED, 1 UNPLUGGED, 2 MIXED), and reads the first
//!    marker once more: `vmem after-unplug word=0x..` (the host removed the KVM slot: the
//!    read is no RAM any more, the marker is gone);
//! 5. [`linger`]s: waits for the host to change `requested_size` once more (so that the
//!    host can look at the device before the guest ends) and prints
//!    `vmem end requested=0x..`.
//!
//! Each wait lasts at most `kiln.wait=S` seconds (default 30). The hostile driver is
//! `vmem-hostile` (`hostile::vmem`).

use crate::arch::rdtsc;
use crate::boot_info::BootInfo;
use crate::serial::Console;
use crate::virtio::mem::{map_region, VirtioMem, REQ_PLUG, REQ_STATE, REQ_UNPLUG};
use crate::virtio::WAIT_CYCLES;
use kiln_guest_boot::cmdline::param_num;

const PAGE: u64 = 4096;
const MARK: u64 = 0x6b69_6c6e_0000_0000;

/// Finds and starts the first virtio-mem device, printing it (or an error line).
pub fn open(info: &BootInfo, con: &mut Console) -> Option<VirtioMem> {
    match VirtioMem::open(info.cmdline, true) {
        Ok(m) => {
            con.line()
                .s("vmem base=")
                .hex(m.mmio.base())
                .s(" features=")
                .hex(m.features)
                .s(" block=")
                .hex(m.block_size())
                .s(" addr=")
                .hex(m.addr())
                .s(" region=")
                .hex(m.region_size())
                .s(" usable=")
                .hex(m.usable())
                .s(" plugged=")
                .hex(m.plugged())
                .s(" requested=")
                .hex(m.requested())
                .end();
            Some(m)
        }
        Err(0) => {
            con.error().s("no virtio-mem device").end();
            None
        }
        Err(status) => {
            con.error()
                .s("virtio-mem refused to start status=")
                .hex(status.into())
                .end();
            None
        }
    }
}

/// Waits up to `seconds` for a configuration change after which `done(requested,
/// plugged)`; prints it. Returns the interrupt bits seen, or `None` on timeout.
pub fn wait_change(
    m: &VirtioMem,
    con: &mut Console,
    seconds: u64,
    done: impl Fn(u64, u64) -> bool,
) -> Option<u32> {
    let start = rdtsc();
    let mut isr = 0u32;
    loop {
        isr |= m.take_interrupt();
        if isr & 2 != 0 && done(m.requested(), m.plugged()) {
            con.line()
                .s("vmem config-change isr=")
                .hex(isr.into())
                .s(" requested=")
                .hex(m.requested())
                .s(" usable=")
                .hex(m.usable())
                .end();
            return Some(isr);
        }
        if rdtsc().wrapping_sub(start) > seconds * WAIT_CYCLES {
            con.error().s("vmem: no configuration change").end();
            return None;
        }
        let t = rdtsc();
        while rdtsc().wrapping_sub(t) < WAIT_CYCLES / 1000 {}
    }
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
    let pages = bytes / PAGE;
    for p in 0..pages {
        let at = addr + p * PAGE;
        // SAFETY: [addr, addr + bytes) was just plugged (ACK) and is mapped by map_region;
        // no Rust object lives there. One aligned word per page.
        unsafe { core::ptr::write_volatile(at as *mut u64, MARK | at >> 12) }
    }
    let mut ok = 0u64;
    for p in 0..pages {
        let at = addr + p * PAGE;
        // SAFETY: as above.
        if unsafe { core::ptr::read_volatile(at as *const u64) } == MARK | at >> 12 {
            ok += 1;
        }
    }
    con.line()
        .s("vmem wrote pages=")
        .dec(pages)
        .s(" ok=")
        .dec(ok)
        .end();
    if wait_change(&m, con, wait, |req, plugged| req < plugged).is_none() {
        return;
    }
    // Read before the lines the host reacts to: its next change cannot be missed.
    let lowered = m.requested();
    let Some(a) = m.request(REQ_UNPLUG, addr, blocks, WAIT_CYCLES) else {
        con.error().s("vmem: UNPLUG never answered").end();
        return;
    };
    con.line()
        .s("vmem unplug resp=")
        .dec(a.kind.into())
        .s(" plugged=")
        .hex(m.plugged())
        .end();
    if let Some(s) = m.request(REQ_STATE, addr, blocks, WAIT_CYCLES) {
        con.line()
            .s("vmem state resp=")
            .dec(s.kind.into())
            .s(" state=")
            .dec(s.state.into())
            .end();
    }
    // SAFETY: the address is mapped by the page tables; the host removed the memory behind
    // it (the access becomes an MMIO exit the VMM answers), no Rust object lives there.
    let word = unsafe { core::ptr::read_volatile(addr as *const u64) };
    con.line().s("vmem after-unplug word=").hex(word).end();
    linger(&m, con, wait, lowered);
}

/// Waits (at most `seconds`) for the host to change `requested_size` from `now` (read
/// before the guest printed the lines the host waits for, so that a change made as soon as
/// the host saw them is not missed), then prints `vmem end requested=0x..`.
pub fn linger(m: &VirtioMem, con: &mut Console, seconds: u64, now: u64) {
    let start = rdtsc();
    while m.requested() == now {
        if rdtsc().wrapping_sub(start) > seconds * WAIT_CYCLES {
            con.error().s("vmem: the host never let go").end();
            return;
        }
        let t = rdtsc();
        while rdtsc().wrapping_sub(t) < WAIT_CYCLES / 1000 {}
    }
    con.line().s("vmem end requested=").hex(m.requested()).end();
}
