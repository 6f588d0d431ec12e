//! `virtio-giant` (first virtio-blk; needs >= 32 MiB of RAM): a data buffer of 4 GiB - 1
//! bytes, reads and writes of 24 MiB inside guest RAM (over the 15.9 MiB a request may
//! carry), a header of 4 bytes, a status buffer of 0 bytes, GET_ID into a 20 MiB buffer, a
//! buffer straddling the end of RAM, and 8 buffers of 2 GiB: `giant WHAT used id=N len=N
//! status=N` each (status 255: never written), then `giant canaries intact=1` (the words
//! the guest planted in the 24 MiB area are unchanged: nothing was written where the device
//! refused to) and a `blk read` of sector 0.

// Register values, lengths and indices are cut to the width of their ring or register
// field; every such value is in range by construction.
#![allow(clippy::cast_possible_truncation)]

use core::ptr::{read_volatile, write_volatile};

use super::{post_and_report, ram_end, BIG_BASE};
use crate::boot_info::BootInfo;
use crate::scenarios::blk::{open, read};
use crate::serial::Console;
use crate::virtio::blk::{Blk, T_GET_ID, T_IN, T_OUT};
use crate::virtio::ring::{DESC_F_NEXT, DESC_F_WRITE};

/// The giant area: 24 MiB from [`BIG_BASE`].
const BIG_LEN: u64 = 24 << 20;
const CANARY: u64 = 0x4b49_4c4e_4341_4e59;

fn plant(addr: u64) {
    // SAFETY: inside guest RAM above the image (checked by the caller against the memory
    // map), identity-mapped; nothing else uses it.
    unsafe { write_volatile(addr as *mut u64, CANARY) }
}

fn intact(addr: u64) -> bool {
    // SAFETY: as for `plant`.
    unsafe { read_volatile(addr as *const u64) == CANARY }
}

pub fn run(info: &BootInfo, con: &mut Console) {
    let Some(mut b) = open(info, con) else { return };
    let end = ram_end(info);
    if end < BIG_BASE + BIG_LEN {
        con.error()
            .s("giant needs 32 MiB of RAM, has end=")
            .hex(end)
            .end();
        return;
    }
    let canaries = [
        BIG_BASE,
        BIG_BASE + 64,
        BIG_BASE + (16 << 20),
        BIG_BASE + BIG_LEN - 8,
    ];
    for &c in &canaries {
        plant(c);
    }
    let (hdr, data, status) = (Blk::header_addr(), Blk::data_addr(), Blk::status_addr());
    let chains: [(&str, u32, u64, u32, u32); 4] = [
        (
            "giant len=0xffffffff",
            T_IN,
            data,
            u32::MAX,
            DESC_F_WRITE as u32,
        ),
        (
            "giant in=24MiB",
            T_IN,
            BIG_BASE,
            BIG_LEN as u32,
            DESC_F_WRITE as u32,
        ),
        ("giant out=24MiB", T_OUT, BIG_BASE, BIG_LEN as u32, 0),
        (
            "giant end-of-ram",
            T_IN,
            end - 512,
            1024,
            DESC_F_WRITE as u32,
        ),
    ];
    for (what, kind, addr, len, flags) in chains {
        Blk::prepare(kind, 0);
        b.ring.set_desc(0, hdr, 16, DESC_F_NEXT, 1);
        b.ring.set_desc(1, addr, len, DESC_F_NEXT | flags as u16, 2);
        b.ring.set_desc(2, status, 1, DESC_F_WRITE, 0);
        post_and_report(&mut b, con, what, 0, true);
    }
    // A header of 4 bytes; a status buffer of 0 bytes.
    Blk::prepare(T_IN, 0);
    b.ring.set_desc(0, hdr, 4, DESC_F_NEXT, 1);
    b.ring.set_desc(1, data, 512, DESC_F_NEXT | DESC_F_WRITE, 2);
    b.ring.set_desc(2, status, 1, DESC_F_WRITE, 0);
    post_and_report(&mut b, con, "giant header=4", 0, true);
    Blk::prepare(T_IN, 0);
    b.ring.set_desc(0, hdr, 16, DESC_F_NEXT, 1);
    b.ring.set_desc(1, data, 512, DESC_F_NEXT | DESC_F_WRITE, 2);
    b.ring.set_desc(2, status, 0, DESC_F_WRITE, 0);
    post_and_report(&mut b, con, "giant status=0", 0, true);
    // GET_ID into 20 MiB: only the id (20 bytes) may be written.
    Blk::prepare(T_GET_ID, 0);
    b.ring.set_desc(0, hdr, 16, DESC_F_NEXT, 1);
    b.ring
        .set_desc(1, BIG_BASE + 32, 20 << 20, DESC_F_NEXT | DESC_F_WRITE, 2);
    b.ring.set_desc(2, status, 1, DESC_F_WRITE, 0);
    post_and_report(&mut b, con, "giant get-id=20MiB", 0, true);
    // 8 buffers of 2 GiB each (16 GiB in all), chained.
    Blk::prepare(T_IN, 0);
    b.ring.set_desc(0, hdr, 16, DESC_F_NEXT, 1);
    for i in 1..7u16 {
        b.ring.set_desc(
            usize::from(i),
            BIG_BASE,
            0x8000_0000,
            DESC_F_NEXT | DESC_F_WRITE,
            i + 1,
        );
    }
    b.ring.set_desc(7, status, 1, DESC_F_WRITE, 0);
    post_and_report(&mut b, con, "giant 6x2GiB", 0, true);
    let ok = canaries.iter().all(|&c| intact(c));
    con.line()
        .s("giant canaries intact=")
        .dec(u64::from(ok))
        .end();
    read(&mut b, con, 0, 1);
}
