//! Hostile driving of the first virtio-blk device. Each does what a broken or
//! malicious driver would, prints what the device answered, then (after a reset where the
//! device needed one) a normal `blk read` of sector 0, to show the VMM and the device
//! survived. `status` values are the device status register.
//!
//! * `virtio-loop`: a chain 0 -> 1 -> 0 (all readable), then a self-loop 2 -> 2:
//!   `loop used id=N len=N` for each (the device returns them with length 0),
//!   `loop status=0x..`.
//! * `virtio-oob`: a data buffer at 256 GiB (past guest memory), a `next` index of 200 (past
//!   the 8-entry table), a buffer wrapping around the address space: `oob used id=N len=N`
//!   for each, `oob status=0x..`.
//! * `virtio-qsize`: `qsize max=N`; QueueNum 512 (over the maximum) and 3 (not a power of
//!   two) then DRIVER_OK: `qsize num=N status=0x..` (DEVICE_NEEDS_RESET, 0x40, expected);
//!   an available index 1000 entries ahead: `qsize avail_idx=1000 status=0x..`; a head index
//!   of 200: `qsize head=200 status=0x..`; each followed by a reset.
//! * `virtio-kicks`: `kiln.kicks=N` (default 100000) queue notifications with nothing posted:
//!   `kicks n=N cycles=N`, then a `blk read` of sector 0.
//! * `virtio-mmio-junk`: a 2-byte read of the magic value and reads of undefined and
//!   write-only registers (`junk read16=0x.. undefined=0x.. notify=0x..`), then writes of
//!   the wrong width, to read-only and undefined registers, to a queue that does not exist,
//!   an invalid QueueNotify, DRIVER_OK without the earlier steps, and config-space writes:
//!   `junk magic=0x.. version=N status=0x..` (the registers are unchanged).

use super::{post_and_report, wait_needs_reset};
use crate::arch::rdtsc;
use crate::boot_info::BootInfo;
use crate::scenarios::blk::{open, read};
use crate::serial::Console;
use crate::virtio;
use crate::virtio::blk::{Blk, F_RO, T_IN};
use crate::virtio::ring::{ring, RingExt, DESC_F_NEXT, DESC_F_WRITE};
use kiln_guest_boot::cmdline::param_num;

pub fn run_loop(info: &BootInfo, con: &mut Console) {
    let Some(mut b) = open(info, con) else { return };
    Blk::prepare(T_IN, 0);
    b.ring.set_desc(0, Blk::header_addr(), 16, DESC_F_NEXT, 1);
    b.ring.set_desc(1, Blk::data_addr(), 512, DESC_F_NEXT, 0);
    post_and_report(&mut b, con, "loop", 0, false);
    b.ring.set_desc(2, Blk::header_addr(), 16, DESC_F_NEXT, 2);
    post_and_report(&mut b, con, "loop", 2, false);
    con.line()
        .s("loop status=")
        .hex(b.mmio.status().into())
        .end();
    read(&mut b, con, 0, 1);
}

pub fn run_oob(info: &BootInfo, con: &mut Console) {
    let Some(mut b) = open(info, con) else { return };
    let status = Blk::status_addr();
    Blk::prepare(T_IN, 0);
    b.ring.set_desc(0, Blk::header_addr(), 16, DESC_F_NEXT, 1);
    b.ring
        .set_desc(1, 0x40_0000_0000, 512, DESC_F_NEXT | DESC_F_WRITE, 2);
    b.ring.set_desc(2, status, 1, DESC_F_WRITE, 0);
    post_and_report(&mut b, con, "oob", 0, false);
    b.ring.set_desc(3, Blk::header_addr(), 16, DESC_F_NEXT, 200);
    post_and_report(&mut b, con, "oob", 3, false);
    b.ring.set_desc(4, Blk::header_addr(), 16, DESC_F_NEXT, 5);
    b.ring.set_desc(
        5,
        0xffff_ffff_ffff_f000,
        0x2000,
        DESC_F_NEXT | DESC_F_WRITE,
        2,
    );
    post_and_report(&mut b, con, "oob", 4, false);
    con.line()
        .s("oob status=")
        .hex(b.mmio.status().into())
        .end();
    read(&mut b, con, 0, 1);
}

pub fn run_qsize(info: &BootInfo, con: &mut Console) {
    let Some(b) = open(info, con) else { return };
    let mmio = b.mmio;
    mmio.write(virtio::REG_QUEUE_SEL, 0);
    con.line()
        .s("qsize max=")
        .dec(mmio.read(virtio::REG_QUEUE_NUM_MAX).into())
        .end();
    for num in [512u32, 3] {
        if mmio.negotiate(F_RO).is_err() {
            con.error().s("qsize negotiation failed").end();
            return;
        }
        let ring = ring(0);
        mmio.setup_queue(0, num, &ring);
        let status = mmio.driver_ok();
        con.line()
            .s("qsize num=")
            .dec(num.into())
            .s(" status=")
            .hex(status.into())
            .end();
        mmio.reset();
    }
    let Ok(mut b) = Blk::start(mmio, 8) else {
        con.error().s("qsize restart failed").end();
        return;
    };
    b.ring.set_avail_idx(1000);
    b.mmio.notify(0);
    con.line()
        .s("qsize avail_idx=1000 status=")
        .hex(wait_needs_reset(&mmio).into())
        .end();
    let Ok(mut b) = Blk::start(mmio, 8) else {
        con.error().s("qsize restart failed").end();
        return;
    };
    b.ring.push(200);
    b.mmio.notify(0);
    con.line()
        .s("qsize head=200 status=")
        .hex(wait_needs_reset(&mmio).into())
        .end();
    match Blk::start(mmio, 8) {
        Ok(mut b) => {
            read(&mut b, con, 0, 1);
        }
        Err(_) => con.error().s("qsize restart failed").end(),
    }
}

pub fn run_mmio_junk(info: &BootInfo, con: &mut Console) {
    let Some(b) = open(info, con) else { return };
    let m = b.mmio;
    m.reset();
    let read16 = m.read_width(virtio::REG_MAGIC, 2);
    let undefined = m.read(0x0c8);
    let notify = m.read(virtio::REG_QUEUE_NOTIFY);
    con.line()
        .s("junk read16=")
        .hex(read16)
        .s(" undefined=")
        .hex(undefined.into())
        .s(" notify=")
        .hex(notify.into())
        .end();
    m.write_width(virtio::REG_STATUS, 1, 1);
    m.write_width(virtio::REG_STATUS, 2, 1);
    m.write_width(virtio::REG_QUEUE_SEL, 8, u64::MAX);
    m.write(virtio::REG_MAGIC, 0);
    m.write(virtio::REG_VERSION, 1);
    m.write(virtio::REG_DEVICE_ID, 9);
    m.write(0x0c8, 0xdead_beef);
    m.write(0x0f0, 1);
    m.write(0x0fc, 1);
    m.write(virtio::REG_QUEUE_SEL, 99);
    m.write(virtio::REG_QUEUE_NUM, 4);
    m.write(virtio::REG_QUEUE_READY, 1);
    m.write(virtio::REG_QUEUE_NOTIFY, 77);
    m.write(virtio::REG_STATUS, virtio::STATUS_DRIVER_OK);
    m.write(virtio::REG_CONFIG, 0x1234_5678);
    m.write_width(0xffc, 4, 0x1234_5678);
    m.write_width(virtio::REG_CONFIG + 3, 1, 0xff);
    con.line()
        .s("junk magic=")
        .hex(m.read(virtio::REG_MAGIC).into())
        .s(" version=")
        .dec(m.read(virtio::REG_VERSION).into())
        .s(" status=")
        .hex(m.status().into())
        .end();
    match Blk::start(m, 8) {
        Ok(mut b) => {
            read(&mut b, con, 0, 1);
        }
        Err(_) => con.error().s("junk restart failed").end(),
    }
}

pub fn run_kicks(info: &BootInfo, con: &mut Console) {
    let Some(mut b) = open(info, con) else { return };
    let n = param_num(info.cmdline, b"kiln.kicks", 100_000);
    let start = rdtsc();
    for _ in 0..n {
        b.mmio.notify(0);
    }
    let cycles = rdtsc().wrapping_sub(start);
    con.line()
        .s("kicks n=")
        .dec(n)
        .s(" cycles=")
        .dec(cycles)
        .end();
    read(&mut b, con, 0, 1);
}
