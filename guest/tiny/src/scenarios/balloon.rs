//! virtio-balloon scenario `balloon`: a driver that gives the host back pages it touched.
//! It starts the first virtio-balloon device (`balloon base=0x.. irq=N features=0x..`),
//! posts its statistics buffer (when the device offers the stats queue), writes a marker in
//! every 4 KiB page of `kiln.mib=M` MiB (default 16, at most 64) of RAM from
//! `kiln.base=B` MiB (default 16) and prints `balloon touched pages=N`. Then:
//!
//! 1. it waits (answering statistics requests) for the host's target (`num_pages`) to
//!    become non-zero, gives that many of its touched pages (at most N) on the inflate
//!    queue in requests of 256 frame numbers, raising `actual` after each, and prints
//!    `balloon inflated pages=P actual=A target=T`;
//! 2. it waits for the target to fall below `actual`, gives the difference back on the
//!    deflate queue, lowers `actual`, reads the deflated pages (`zeroed`: those whose marker
//!    is gone, the host having dropped them) and prints
//!    `balloon deflated pages=D actual=A zeroed=Z stats=K` (`K`: statistics requests
//!    answered so far).
//!
//! Each wait lasts at most `kiln.wait=S` seconds (default 30). The statistics it reports:
//! total memory (tag 5, `kiln.ram=R` MiB, default 64), free memory (tag 4, that minus the
//! touched range), minor faults (tag 3, the number of answers so far), major faults (tag 2,
//! 0).

// Page counts and addresses are cut to the width of their fields; each is in range.
#![allow(clippy::cast_possible_truncation)]

use crate::arch::rdtsc;
use crate::boot_info::BootInfo;
use crate::serial::Console;
use crate::virtio::balloon::{Balloon, PFNS, STATS};
use crate::virtio::WAIT_CYCLES;
use kiln_guest_boot::cmdline::param_num;

const PAGE: u64 = 4096;
const MARK: u64 = 0x6b69_6c6e_0000_0000;

/// Finds and starts the first virtio-balloon device, printing it (or an error line).
pub fn open(info: &BootInfo, con: &mut Console) -> Option<Balloon> {
    match Balloon::open(info.cmdline) {
        Ok(b) => {
            con.line()
                .s("balloon base=")
                .hex(b.mmio.base())
                .s(" irq=")
                .dec(b.mmio.irq().into())
                .s(" features=")
                .hex(b.features)
                .end();
            Some(b)
        }
        Err(0) => {
            con.error().s("no virtio-balloon device").end();
            None
        }
        Err(status) => {
            con.error()
                .s("virtio-balloon refused to start status=")
                .hex(status.into())
                .end();
            None
        }
    }
}

/// The driver's statistics side: the buffer is posted, and reposted with fresh values each
/// time the device returns it.
pub struct Stats {
    pub answered: u64,
    total: u64,
    free: u64,
}

impl Stats {
    fn fill(&self) {
        let buf = Balloon::stats_buf();
        let entries: [(u16, u64); STATS] =
            [(5, self.total), (4, self.free), (3, self.answered), (2, 0)];
        for (i, (tag, value)) in entries.iter().enumerate() {
            buf[i * 10..i * 10 + 2].copy_from_slice(&tag.to_le_bytes());
            buf[i * 10 + 2..i * 10 + 10].copy_from_slice(&value.to_le_bytes());
        }
    }

    fn post(&self, b: &mut Balloon) {
        let Some(ring) = b.stats.as_mut() else { return };
        self.fill();
        ring.set_desc(0, Balloon::stats_addr(), (STATS * 10) as u32, 0, 0);
        ring.push(0);
        b.mmio.notify(2);
    }

    /// Answers a request (the device returned the buffer): fresh values, posted again.
    pub fn service(&mut self, b: &mut Balloon) {
        let Some(ring) = b.stats.as_mut() else { return };
        if ring.pop_used().is_some() {
            self.answered += 1;
            self.post(b);
        }
    }
}

/// Waits up to `seconds` for `done(num_pages, actual)`, answering statistics meanwhile.
/// Returns the target seen, or `None` on timeout.
pub fn wait_target(
    b: &mut Balloon,
    stats: &mut Stats,
    seconds: u64,
    done: impl Fn(u32, u32) -> bool,
) -> Option<u32> {
    let start = rdtsc();
    loop {
        stats.service(b);
        let target = b.num_pages();
        if done(target, b.actual()) {
            return Some(target);
        }
        if rdtsc().wrapping_sub(start) > seconds * WAIT_CYCLES {
            return None;
        }
        // About a millisecond between looks at the configuration space.
        let t = rdtsc();
        while rdtsc().wrapping_sub(t) < WAIT_CYCLES / 1000 {}
    }
}

fn page_word(addr: u64) -> *mut u64 {
    addr as *mut u64
}

/// Sends `count` frame numbers from `first` on queue `q` in requests of [`PFNS`]; returns
/// how many the device took (used entries seen). On the inflate queue (0) `actual` follows
/// each request the device took.
fn send_range(b: &mut Balloon, q: u32, first: u64, count: u64) -> u64 {
    let mut sent = 0u64;
    while sent < count {
        let n = (count - sent).min(PFNS as u64) as usize;
        for (i, slot) in Balloon::pfns()[..n].iter_mut().enumerate() {
            *slot = (first + sent + i as u64) as u32;
        }
        if b.send(q, n, WAIT_CYCLES).is_none() {
            return sent;
        }
        sent += n as u64;
        if q == 0 {
            b.set_actual(sent as u32);
        }
    }
    sent
}

pub fn run(info: &BootInfo, con: &mut Console) {
    let Some(mut b) = open(info, con) else { return };
    let mib = param_num(info.cmdline, b"kiln.mib", 16).clamp(1, 64);
    let base = param_num(info.cmdline, b"kiln.base", 16).clamp(4, 1024) << 20;
    let wait = param_num(info.cmdline, b"kiln.wait", 30).clamp(1, 300);
    let pages = mib << 8;
    let ram = param_num(info.cmdline, b"kiln.ram", 64) << 20;
    let mut stats = Stats {
        answered: 0,
        total: ram,
        free: ram.saturating_sub(mib << 20),
    };
    stats.post(&mut b);
    for p in 0..pages {
        let addr = base + p * PAGE;
        // SAFETY: [base, base + mib MiB) is guest RAM the image does not use (it ends
        // below 2 MiB; base is at least 4 MiB), identity-mapped; one aligned word per page.
        unsafe { core::ptr::write_volatile(page_word(addr), MARK | addr >> 12) }
    }
    con.line().s("balloon touched pages=").dec(pages).end();
    let Some(target) = wait_target(&mut b, &mut stats, wait, |t, _| t > 0) else {
        con.error().s("balloon: no target from the host").end();
        return;
    };
    let give = u64::from(target).min(pages);
    let first = base >> 12;
    let inflated = send_range(&mut b, 0, first, give);
    con.line()
        .s("balloon inflated pages=")
        .dec(inflated)
        .s(" actual=")
        .dec(b.actual().into())
        .s(" target=")
        .dec(target.into())
        .end();
    let Some(target) = wait_target(&mut b, &mut stats, wait, |t, a| t < a) else {
        con.error()
            .s("balloon: the host never lowered the target")
            .end();
        return;
    };
    let back = inflated.saturating_sub(u64::from(target));
    let from = first + inflated - back;
    let deflated = send_range(&mut b, 1, from, back);
    b.set_actual((inflated - deflated) as u32);
    let mut zeroed = 0u64;
    for p in 0..deflated {
        let addr = (from + p) * PAGE;
        // SAFETY: as above: a page of the touched range, given back to the guest.
        let word = unsafe { core::ptr::read_volatile(page_word(addr)) };
        if word == 0 {
            zeroed += 1;
        }
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(page_word(addr), MARK | addr >> 12) }
    }
    stats.service(&mut b);
    con.line()
        .s("balloon deflated pages=")
        .dec(deflated)
        .s(" actual=")
        .dec(b.actual().into())
        .s(" zeroed=")
        .dec(zeroed)
        .s(" stats=")
        .dec(stats.answered)
        .end();
}
