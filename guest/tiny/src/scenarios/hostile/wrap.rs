//! `virtio-wrap` (first virtio-blk): an available index of 0xffff on a fresh queue (65535
//! entries "ahead"): `wrap avail_idx=0xffff used_idx=N status=0x..` (DEVICE_NEEDS_RESET,
//! nothing processed); then a 256-entry queue driven through `kiln.rounds=N` (default 513)
//! rounds of 128 requests (an unsupported type, answered UNSUPP), so that the 16-bit
//! available and used indices wrap past 65535: `wrap rounds=N requests=N avail_idx=0x..
//! used_idx=0x.. errors=N unsupp=N`; then a `blk read` of sector 0 on a fresh queue.

// Register values, lengths and indices are cut to the width of their ring or register
// field; every such value is in range by construction.
#![allow(clippy::cast_possible_truncation)]

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use super::wait_needs_reset;
use crate::arch::rdtsc;
use crate::boot_info::BootInfo;
use crate::scenarios::blk::{open, read};
use crate::serial::Console;
use crate::virtio::blk::Blk;
use crate::virtio::ring::{RingExt, DESC_F_NEXT, DESC_F_WRITE};
use crate::virtio::{STATUS_DRIVER_OK, STATUS_NEEDS_RESET, WAIT_CYCLES};
use kiln_guest_boot::cmdline::param_num;
use kiln_guest_virtio::{DeviceShared, Queue, RingMem};

/// Entries of the big queue.
const BIG_QUEUE: usize = 256;
/// Chains posted per round: two descriptors each (header, status).
const PER_ROUND: u16 = 128;

/// The request header every chain shares and one status byte per chain.
#[repr(C, align(16))]
struct Buffers {
    header: [u8; 16],
    status: [u8; PER_ROUND as usize],
}

static BIG_RING: DeviceShared<RingMem<BIG_QUEUE>> = DeviceShared::new(RingMem::EMPTY);
static BUFFERS: DeviceShared<Buffers> = DeviceShared::new(Buffers {
    header: [0; 16],
    status: [0; PER_ROUND as usize],
});

pub fn run(info: &BootInfo, con: &mut Console) {
    let Some(mut b) = open(info, con) else { return };
    let m = b.mmio;
    // 0xffff on a fresh queue: 65535 entries "ahead" of the device's 0.
    b.ring.set_avail_idx(0xffff);
    m.notify(0);
    let status = wait_needs_reset(&m);
    con.line()
        .s("wrap avail_idx=0xffff used_idx=")
        .dec(b.ring.used_idx().into())
        .s(" status=")
        .hex(status.into())
        .end();

    // The 256-entry queue: chain i = descriptors 2i (header) and 2i+1 (status byte i).
    if m.negotiate(0).is_err() {
        con.error().s("wrap negotiation failed").end();
        return;
    }
    let mut q = Queue::new(&BIG_RING);
    q.clear();
    let bufs = BUFFERS.ptr();
    // SAFETY: the static buffers are not in use by the device (it was reset by negotiate).
    let hdr = unsafe {
        core::ptr::write_bytes(bufs, 0, 1);
        // An unsupported request type: the device answers UNSUPP without touching the disk.
        write_volatile(addr_of_mut!((*bufs).header[0]), 0x7f);
        addr_of!((*bufs).header) as u64
    };
    for i in 0..PER_ROUND {
        // SAFETY: only the address is computed.
        let st = unsafe { addr_of!((*bufs).status[usize::from(i)]) as u64 };
        let d = usize::from(2 * i);
        q.set_desc(d, hdr, 16, DESC_F_NEXT, 2 * i + 1);
        q.set_desc(d + 1, st, 1, DESC_F_WRITE, 0);
    }
    m.setup_queue(0, BIG_QUEUE as u32, &q);
    let st = m.driver_ok();
    if st & STATUS_DRIVER_OK == 0 || st & STATUS_NEEDS_RESET != 0 {
        con.error()
            .s("wrap 256-entry queue refused status=")
            .hex(st.into())
            .end();
        return;
    }
    // Each round writes its 128 entries, then publishes them with one available index.
    let r = q.mem();
    let rounds = param_num(info.cmdline, b"kiln.rounds", 513);
    let mut idx: u16 = 0;
    let mut errors = 0u64;
    let mut done = 0u64;
    for _ in 0..rounds {
        for k in 0..PER_ROUND {
            let slot = usize::from(idx.wrapping_add(k)) % BIG_QUEUE;
            // SAFETY: in bounds of the static ring; the device reads entries only up to the
            // index published below.
            unsafe { write_volatile(addr_of_mut!((*r).avail.ring[slot]), 2 * k) };
        }
        let next = idx.wrapping_add(PER_ROUND);
        // SAFETY: as above; the index is published after the entries (x86 keeps stores in
        // order).
        unsafe { write_volatile(addr_of_mut!((*r).avail.idx), next) };
        m.notify(0);
        let start = rdtsc();
        while q.used_idx() != next {
            if rdtsc().wrapping_sub(start) > WAIT_CYCLES {
                con.error()
                    .s("wrap round timed out at avail_idx=")
                    .hex(next.into())
                    .end();
                return;
            }
        }
        let last = usize::from(next.wrapping_sub(1)) % BIG_QUEUE;
        // SAFETY: in bounds; written by the device before the index.
        let u = unsafe { read_volatile(addr_of!((*r).used.ring[last])) };
        if u.id != u32::from(2 * (PER_ROUND - 1)) {
            errors += 1;
        }
        idx = next;
        done += u64::from(PER_ROUND);
    }
    let unsupp = (0..usize::from(PER_ROUND))
        // SAFETY: in bounds of the static buffers; the device is done with them.
        .filter(|&i| unsafe { read_volatile(addr_of!((*bufs).status[i])) } == 2)
        .count();
    let used_idx = q.used_idx();
    con.line()
        .s("wrap rounds=")
        .dec(rounds)
        .s(" requests=")
        .dec(done)
        .s(" avail_idx=")
        .hex(idx.into())
        .s(" used_idx=")
        .hex(used_idx.into())
        .s(" errors=")
        .dec(errors)
        .s(" unsupp=")
        .dec(unsupp as u64)
        .end();
    match Blk::start(m, 8) {
        Ok(mut b) => {
            read(&mut b, con, 0, 1);
        }
        Err(_) => con.error().s("wrap restart failed").end(),
    }
}
