//! virtio-rng scenarios. Each starts the first virtio-rng device and prints
//! `rng base=0x.. irq=N features=0x..`, then:
//!
//! * `rng-read`: `kiln.count=C` requests (default 2, at most 16) of `kiln.len=L` bytes
//!   (default 64, at most 4096), each waited for at most `kiln.wait=S` seconds (default 1):
//!   `rng read n=I len=L used=U cycles=N nonzero=K sum=0x.. head=<first 16 bytes in hex>`
//!   (`nonzero`: bytes that are not 0; `cycles`: TSC cycles from the notification to the used
//!   entry), then `rng done count=C repeats=R` (`R`: answers whose first 16 bytes equal the
//!   previous answer's).
//!
//! The hostile driver is `rng-hostile` (`hostile::rng`).

// Lengths and indices are cut to the width of their ring or register field; each is in
// range.
#![allow(clippy::cast_possible_truncation)]

use crate::arch::rdtsc;
use crate::boot_info::BootInfo;
use crate::serial::Console;
use crate::virtio::rng::{Rng, BUF_LEN};
use crate::virtio::{fnv1a, WAIT_CYCLES};
use kiln_guest_boot::cmdline::param_num;

/// Finds and starts the first virtio-rng device, printing it (or an error line).
pub fn open(info: &BootInfo, con: &mut Console) -> Option<Rng> {
    match Rng::open(info.cmdline, 0) {
        Ok(r) => {
            con.line()
                .s("rng base=")
                .hex(r.mmio.base())
                .s(" irq=")
                .dec(r.mmio.irq().into())
                .s(" features=")
                .hex(r.features)
                .end();
            Some(r)
        }
        Err(0) => {
            con.error().s("no virtio-rng device").end();
            None
        }
        Err(status) => {
            con.error()
                .s("virtio-rng refused to start status=")
                .hex(status.into())
                .end();
            None
        }
    }
}

pub fn run_read(info: &BootInfo, con: &mut Console) {
    let Some(mut r) = open(info, con) else { return };
    let count = param_num(info.cmdline, b"kiln.count", 2).clamp(1, 16);
    let len = param_num(info.cmdline, b"kiln.len", 64).clamp(1, BUF_LEN as u64) as u32;
    let wait = param_num(info.cmdline, b"kiln.wait", 1).clamp(1, 60) * WAIT_CYCLES;
    let mut previous = [0u8; 16];
    let mut repeats = 0u64;
    for n in 0..count {
        Rng::buf().fill(0);
        let start = rdtsc();
        let Some(used) = r.request(len, wait) else {
            con.error().s("rng read timed out n=").dec(n).end();
            return;
        };
        let cycles = rdtsc().wrapping_sub(start);
        let got = &Rng::buf()[..(used.len as usize).min(BUF_LEN)];
        let mut head = [0u8; 16];
        let h = got.len().min(16);
        head[..h].copy_from_slice(&got[..h]);
        if n > 0 && head == previous {
            repeats += 1;
        }
        previous = head;
        let line = con
            .line()
            .s("rng read n=")
            .dec(n)
            .s(" len=")
            .dec(len.into())
            .s(" used=")
            .dec(used.len.into())
            .s(" cycles=")
            .dec(cycles)
            .s(" nonzero=")
            .dec(got.iter().filter(|&&b| b != 0).count() as u64)
            .s(" sum=")
            .hex(fnv1a(got).into())
            .s(" head=");
        super::blk::hex_bytes(line, &head[..h]).end();
    }
    con.line()
        .s("rng done count=")
        .dec(count)
        .s(" repeats=")
        .dec(repeats)
        .end();
}
