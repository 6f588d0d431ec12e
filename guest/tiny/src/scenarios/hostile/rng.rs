//! `rng-hostile`: what a broken or malicious driver posts to the first virtio-rng device,
//! each printed as `rng hostile case=NAME used=U`: a device-readable buffer (`readable`),
//! readable then writable (`mixed`), a buffer past guest memory (`outside`), a loop
//! (`loop`), an empty buffer (`empty`), a 128 KiB buffer in RAM at 4 MiB (`giant`: the
//! device fills at most 64 KiB of it; then `rng hostile case=giant checked used=U beyond=0|1
//! changed_pages=N`, `beyond`: whether anything past 64 KiB changed, `changed_pages`: of the
//! 16 pages of the answer, those that were written); then an available
//! index 100 entries ahead: `rng hostile case=avail status=0x..` (DEVICE_NEEDS_RESET
//! expected); a reset and a normal request: `rng after-reset used=64 nonzero=K`.

// Lengths and indices are cut to the width of their ring or register field; each is in
// range.
#![allow(clippy::cast_possible_truncation)]

use super::BIG_BASE;
use crate::arch::rdtsc;
use crate::boot_info::BootInfo;
use crate::scenarios::rng::open;
use crate::serial::Console;
use crate::virtio::ring::{RingExt, DESC_F_NEXT, DESC_F_WRITE};
use crate::virtio::rng::Rng;
use crate::virtio::{STATUS_NEEDS_RESET, WAIT_CYCLES};

/// Posts the chain at `head` and prints `rng hostile case=NAME used=U`.
fn case(r: &mut Rng, con: &mut Console, name: &str, head: u16) -> Option<u32> {
    let Some(u) = r.post(head, WAIT_CYCLES) else {
        con.error()
            .s("rng hostile case=")
            .s(name)
            .s(" never returned")
            .end();
        return None;
    };
    con.line()
        .s("rng hostile case=")
        .s(name)
        .s(" used=")
        .dec(u.len.into())
        .end();
    Some(u.len)
}

/// Fills `len` bytes of RAM at `addr` with `byte`.
fn fill_ram(addr: u64, len: usize, byte: u8) {
    // SAFETY: [BIG_BASE, BIG_BASE + 128 KiB) is guest RAM the image does not use (see
    // `hostile::BIG_BASE`), identity-mapped, and the device does not hold it now (it is
    // posted afterwards).
    unsafe { core::ptr::write_bytes(addr as *mut u8, byte, len) }
}

fn ram_byte(addr: u64) -> u8 {
    // SAFETY: as for `fill_ram`: a read of guest RAM the image does not use; volatile, since
    // the device wrote it behind the compiler's back.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

pub fn run(info: &BootInfo, con: &mut Console) {
    let Some(mut r) = open(info, con) else { return };
    let buf = Rng::buf_addr();
    Rng::buf().fill(0);
    r.ring.set_desc(0, buf, 64, 0, 0);
    case(&mut r, con, "readable", 0);
    r.ring.set_desc(1, buf, 16, DESC_F_NEXT, 2);
    r.ring.set_desc(2, buf + 16, 48, DESC_F_WRITE, 0);
    case(&mut r, con, "mixed", 1);
    if Rng::buf()[..64].iter().any(|&b| b != 0) {
        con.error().s("rng wrote a chain it returned empty").end();
    }
    r.ring.set_desc(3, 0x40_0000_0000, 64, DESC_F_WRITE, 0);
    case(&mut r, con, "outside", 3);
    r.ring.set_desc(4, buf, 32, DESC_F_WRITE | DESC_F_NEXT, 5);
    r.ring
        .set_desc(5, buf + 32, 32, DESC_F_WRITE | DESC_F_NEXT, 4);
    case(&mut r, con, "loop", 4);
    r.ring.set_desc(6, buf, 0, DESC_F_WRITE, 0);
    case(&mut r, con, "empty", 6);
    // 128 KiB of RAM at 4 MiB, marked; the device may fill only the first 64 KiB.
    const GIANT: usize = 128 << 10;
    const ANSWER: usize = 64 << 10;
    fill_ram(BIG_BASE, GIANT, 0xa5);
    r.ring.set_desc(7, BIG_BASE, GIANT as u32, DESC_F_WRITE, 0);
    if let Some(used) = case(&mut r, con, "giant", 7) {
        let beyond = (ANSWER..GIANT)
            .step_by(512)
            .any(|i| ram_byte(BIG_BASE + i as u64) != 0xa5);
        // A page counts as written when its first 16 bytes are not all the mark (random
        // bytes all equal to it: 2^-128).
        let changed = (0..ANSWER)
            .step_by(4096)
            .filter(|&i| (0..16).any(|k| ram_byte(BIG_BASE + (i + k) as u64) != 0xa5))
            .count();
        con.line()
            .s("rng hostile case=giant checked used=")
            .dec(used.into())
            .s(" beyond=")
            .dec(u64::from(beyond))
            .s(" changed_pages=")
            .dec(changed as u64)
            .end();
    }
    // An available index far ahead: the device breaks the queue.
    let idx = r.ring.used_idx().wrapping_add(100);
    r.ring.set_avail_idx(idx);
    r.mmio.notify(0);
    let start = rdtsc();
    let mut status = r.mmio.status();
    while status & STATUS_NEEDS_RESET == 0 && rdtsc().wrapping_sub(start) < WAIT_CYCLES {
        status = r.mmio.status();
    }
    con.line()
        .s("rng hostile case=avail status=")
        .hex(status.into())
        .end();
    // A reset and a normal request.
    let Ok(mut r) = Rng::start(r.mmio) else {
        con.error().s("rng did not restart after the reset").end();
        return;
    };
    Rng::buf().fill(0);
    match r.request(64, WAIT_CYCLES) {
        Some(u) => con
            .line()
            .s("rng after-reset used=")
            .dec(u.len.into())
            .s(" nonzero=")
            .dec(Rng::buf()[..64].iter().filter(|&&b| b != 0).count() as u64)
            .end(),
        None => con.error().s("rng after-reset timed out").end(),
    }
}
