//! More hostile virtio scenarios (the security suite, `tests/tests/security_guest.rs`):
//! giant lengths, a real 16-bit index wrap, configuration-space writes to every device, and
//! a hostile driver of virtio-net. Each prints what the device answered, then shows that the
//! device still works.
//!
//! * `virtio-giant` (first virtio-blk; needs >= 32 MiB of RAM): a data buffer of 4 GiB - 1
//!   bytes, reads and writes of 24 MiB inside guest RAM (over the 15.9 MiB a request may
//!   carry), a header of 4 bytes, a status buffer of 0 bytes, GET_ID into a 20 MiB buffer, a
//!   buffer straddling the end of RAM, and 8 buffers of 2 GiB: `giant WHAT used id=N len=N
//!   status=N` each (status 255: never written), then `giant canaries intact=1` (the words
//!   the guest planted in the 24 MiB area are unchanged: nothing was written where the device
//!   refused to) and a `blk read` of sector 0.
//! * `virtio-wrap` (first virtio-blk): an available index of 0xffff on a fresh queue (65535
//!   entries "ahead"): `wrap avail_idx=0xffff used_idx=N status=0x..` (DEVICE_NEEDS_RESET,
//!   nothing processed); then a 256-entry queue driven through `kiln.rounds=N` (default 513)
//!   rounds of 128 requests (an unsupported type, answered UNSUPP), so that the 16-bit
//!   available and used indices wrap past 65535: `wrap rounds=N requests=N avail_idx=0x..
//!   used_idx=0x.. errors=N unsupp=N`; then a `blk read` of sector 0 on a fresh queue.
//! * `virtio-config` (every virtio-blk and virtio-net device): writes of every width (1, 2, 4,
//!   8 bytes) over the first 256 bytes of configuration space and sparse ones up to the end
//!   of the window, once after a reset and once with the device started: `config dev=blk|net
//!   index=N writes=N changed=0|1 generation=N..N` (`changed`: the first 32 configuration
//!   bytes differ afterwards), then `blk read` / `config net tx used=1`.
//! * `net-hostile` (first virtio-net): transmit chains that loop, point outside RAM, carry a
//!   1 MiB frame, are shorter than the 12-byte header, or are device-writable (`nethostile tx
//!   WHAT used id=N len=N`); an available index 100 ahead on the transmit queue (`nethostile
//!   tx avail_idx status=0x..`, then a reset); receive buffers that are read-only or outside
//!   RAM (`nethostile rx ready`, then, once the host sent frames, `nethostile rx bad used=N
//!   intact=1`: the read-only buffer was not written); a good receive buffer (`nethostile rx
//!   good len=N`), and a proper frame (`nethostile tx ok used=1`). Hostile frames carry
//!   `HOSTILE` in their payload: none may reach the tap.

// Register values, lengths and indices are cut to the width of their ring or register
// field; every such value is in range by construction.
#![allow(clippy::cast_possible_truncation)]

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use super::blk::{open, read};
use crate::boot_info::BootInfo;
use crate::serial::Console;
use crate::virtio::blk::{Blk, T_GET_ID, T_IN, T_OUT};
use crate::virtio::net::F_MAC;
use crate::virtio::ring::{Desc, DeviceShared, Ring, UsedElem, F_NEXT, F_WRITE};
use crate::virtio::{self, Mmio, DEVICE_BLK, DEVICE_NET, STATUS_NEEDS_RESET, WAIT_CYCLES};

/// Guest RAM the giant requests point into: 24 MiB from 4 MiB (free: the image ends below
/// 2 MiB and the VMM keeps nothing above 1 MiB).
const BIG_BASE: u64 = 0x40_0000;
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

/// End of the RAM region that holds 1 MiB, from the memory map (0 when unknown).
fn ram_end(info: &BootInfo) -> u64 {
    (0..info.memmap_len())
        .filter_map(|i| info.memmap_entry(i))
        .filter(|r| r.kind == 1 && r.addr <= 0x10_0000)
        .map(|r| r.addr.saturating_add(r.size))
        .max()
        .unwrap_or(0)
}

/// Posts the chain at `head` on `ring`, notifies `queue`, prints the used entry and the
/// blk status byte.
fn post(mmio: &Mmio, ring: &mut Ring, queue: u32, head: u16, con: &mut Console, what: &str) {
    ring.push(head);
    mmio.notify(queue);
    match ring.wait_used(WAIT_CYCLES) {
        Some(u) => con
            .line()
            .s(what)
            .s(" used id=")
            .dec(u.id.into())
            .s(" len=")
            .dec(u.len.into())
            .s(" status=")
            .dec(Blk::status_byte().into())
            .end(),
        None => con.error().s(what).s(" chain never returned").end(),
    }
}

pub fn run_giant(info: &BootInfo, con: &mut Console) {
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
    let m = b.mmio;
    let chains: [(&str, u32, u64, u32, u32); 4] = [
        ("giant len=0xffffffff", T_IN, data, u32::MAX, F_WRITE as u32),
        (
            "giant in=24MiB",
            T_IN,
            BIG_BASE,
            BIG_LEN as u32,
            F_WRITE as u32,
        ),
        ("giant out=24MiB", T_OUT, BIG_BASE, BIG_LEN as u32, 0),
        ("giant end-of-ram", T_IN, end - 512, 1024, F_WRITE as u32),
    ];
    for (what, kind, addr, len, flags) in chains {
        Blk::prepare(kind, 0);
        b.ring.set_desc(0, hdr, 16, F_NEXT, 1);
        b.ring.set_desc(1, addr, len, F_NEXT | flags as u16, 2);
        b.ring.set_desc(2, status, 1, F_WRITE, 0);
        post(&m, &mut b.ring, 0, 0, con, what);
    }
    // A header of 4 bytes; a status buffer of 0 bytes.
    Blk::prepare(T_IN, 0);
    b.ring.set_desc(0, hdr, 4, F_NEXT, 1);
    b.ring.set_desc(1, data, 512, F_NEXT | F_WRITE, 2);
    b.ring.set_desc(2, status, 1, F_WRITE, 0);
    post(&m, &mut b.ring, 0, 0, con, "giant header=4");
    Blk::prepare(T_IN, 0);
    b.ring.set_desc(0, hdr, 16, F_NEXT, 1);
    b.ring.set_desc(1, data, 512, F_NEXT | F_WRITE, 2);
    b.ring.set_desc(2, status, 0, F_WRITE, 0);
    post(&m, &mut b.ring, 0, 0, con, "giant status=0");
    // GET_ID into 20 MiB: only the id (20 bytes) may be written.
    Blk::prepare(T_GET_ID, 0);
    b.ring.set_desc(0, hdr, 16, F_NEXT, 1);
    b.ring
        .set_desc(1, BIG_BASE + 32, 20 << 20, F_NEXT | F_WRITE, 2);
    b.ring.set_desc(2, status, 1, F_WRITE, 0);
    post(&m, &mut b.ring, 0, 0, con, "giant get-id=20MiB");
    // 8 buffers of 2 GiB each (16 GiB in all), chained.
    Blk::prepare(T_IN, 0);
    b.ring.set_desc(0, hdr, 16, F_NEXT, 1);
    for i in 1..7u16 {
        b.ring.set_desc(
            usize::from(i),
            BIG_BASE,
            0x8000_0000,
            F_NEXT | F_WRITE,
            i + 1,
        );
    }
    b.ring.set_desc(7, status, 1, F_WRITE, 0);
    post(&m, &mut b.ring, 0, 0, con, "giant 6x2GiB");
    let ok = canaries.iter().all(|&c| intact(c));
    con.line()
        .s("giant canaries intact=")
        .dec(u64::from(ok))
        .end();
    read(&mut b, con, 0, 1);
}

/// A 256-entry split virtqueue in static memory.
const BIG_QUEUE: usize = 256;
/// Chains posted per round: two descriptors each (header, status).
const PER_ROUND: u16 = 128;

#[repr(C)]
struct BigAvail {
    flags: u16,
    idx: u16,
    ring: [u16; BIG_QUEUE],
    used_event: u16,
}

#[repr(C, align(4))]
struct BigUsed {
    flags: u16,
    idx: u16,
    ring: [UsedElem; BIG_QUEUE],
    avail_event: u16,
}

#[repr(C, align(16))]
struct BigRing {
    desc: [Desc; BIG_QUEUE],
    avail: BigAvail,
    used: BigUsed,
    header: [u8; 16],
    status: [u8; PER_ROUND as usize],
}

static BIG_RING: DeviceShared<BigRing> = DeviceShared::new(BigRing {
    desc: [Desc {
        addr: 0,
        len: 0,
        flags: 0,
        next: 0,
    }; BIG_QUEUE],
    avail: BigAvail {
        flags: 0,
        idx: 0,
        ring: [0; BIG_QUEUE],
        used_event: 0,
    },
    used: BigUsed {
        flags: 0,
        idx: 0,
        ring: [UsedElem { id: 0, len: 0 }; BIG_QUEUE],
        avail_event: 0,
    },
    header: [0; 16],
    status: [0; PER_ROUND as usize],
});

fn wait_needs_reset(mmio: &Mmio) -> u32 {
    let start = virtio::rdtsc();
    loop {
        let s = mmio.status();
        if s & STATUS_NEEDS_RESET != 0 || virtio::rdtsc().wrapping_sub(start) > WAIT_CYCLES {
            return s;
        }
    }
}

pub fn run_wrap(info: &BootInfo, con: &mut Console) {
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
    let r = BIG_RING.get();
    // SAFETY: the static ring is not in use by the device (it was reset by negotiate).
    unsafe {
        core::ptr::write_bytes(r.cast::<u8>(), 0, core::mem::size_of::<BigRing>());
        // An unsupported request type: the device answers UNSUPP without touching the disk.
        write_volatile(addr_of_mut!((*r).header[0]), 0x7f);
        let hdr = addr_of!((*r).header) as u64;
        for i in 0..PER_ROUND {
            let st = addr_of!((*r).status[usize::from(i)]) as u64;
            let d = usize::from(2 * i);
            write_volatile(
                addr_of_mut!((*r).desc[d]),
                Desc {
                    addr: hdr,
                    len: 16,
                    flags: F_NEXT,
                    next: 2 * i + 1,
                },
            );
            write_volatile(
                addr_of_mut!((*r).desc[d + 1]),
                Desc {
                    addr: st,
                    len: 1,
                    flags: F_WRITE,
                    next: 0,
                },
            );
        }
    }
    // SAFETY: only addresses are computed.
    let (desc, avail, used) = unsafe {
        (
            addr_of!((*r).desc) as u64,
            addr_of!((*r).avail) as u64,
            addr_of!((*r).used) as u64,
        )
    };
    m.write(virtio::REG_QUEUE_SEL, 0);
    m.write(virtio::REG_QUEUE_NUM, BIG_QUEUE as u32);
    for (low, value) in [
        (virtio::REG_QUEUE_DESC_LOW, desc),
        (virtio::REG_QUEUE_AVAIL_LOW, avail),
        (virtio::REG_QUEUE_USED_LOW, used),
    ] {
        m.write(low, value as u32);
        m.write(low + 4, (value >> 32) as u32);
    }
    m.write(virtio::REG_QUEUE_READY, 1);
    let st = m.driver_ok();
    if st & virtio::STATUS_DRIVER_OK == 0 || st & STATUS_NEEDS_RESET != 0 {
        con.error()
            .s("wrap 256-entry queue refused status=")
            .hex(st.into())
            .end();
        return;
    }
    let rounds = virtio::param_num(info.cmdline, b"kiln.rounds", 513);
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
        let start = virtio::rdtsc();
        // SAFETY: in bounds of the static ring; the device writes it.
        while unsafe { read_volatile(addr_of!((*r).used.idx)) } != next {
            if virtio::rdtsc().wrapping_sub(start) > WAIT_CYCLES {
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
        // SAFETY: in bounds of the static ring.
        .filter(|&i| unsafe { read_volatile(addr_of!((*r).status[i])) } == 2)
        .count();
    // SAFETY: in bounds of the static ring.
    let used_idx = unsafe { read_volatile(addr_of!((*r).used.idx)) };
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

/// The first 32 configuration bytes.
fn config_bytes(m: &Mmio) -> [u8; 32] {
    let mut c = [0u8; 32];
    for (i, b) in c.iter_mut().enumerate() {
        *b = m.read_width(virtio::REG_CONFIG + i as u32, 1) as u8;
    }
    c
}

/// Writes junk of every width over the configuration space; returns how many writes.
fn config_junk(m: &Mmio) -> u64 {
    let mut n = 0;
    for width in [1u32, 2, 4, 8] {
        for off in (0..0x100).step_by(width as usize) {
            m.write_width(virtio::REG_CONFIG + off, width, 0xa5a5_a5a5_a5a5_a5a5);
            n += 1;
        }
    }
    // Past the first 256 bytes, up to the end of the 4 KiB window.
    for off in (0x100..0xf00).step_by(0x100) {
        m.write_width(virtio::REG_CONFIG + off, 4, 0x5a5a_5a5a);
        n += 1;
    }
    n
}

fn config_device(con: &mut Console, m: Mmio, name: &str, index: u32) -> bool {
    m.reset();
    let before = config_bytes(&m);
    let gen0 = m.read(virtio::REG_CONFIG_GENERATION);
    let mut writes = config_junk(&m);
    let wanted = if name == "net" { F_MAC } else { 0 };
    if m.negotiate(wanted).is_err() {
        con.error()
            .s("config negotiation failed dev=")
            .s(name)
            .end();
        return false;
    }
    let (q0, q1) = (Ring::new(0), Ring::new(1));
    m.setup_queue(0, 8, &q0);
    if name == "net" {
        m.setup_queue(1, 8, &q1);
    }
    m.driver_ok();
    writes += config_junk(&m);
    let after = config_bytes(&m);
    let gen1 = m.read(virtio::REG_CONFIG_GENERATION);
    con.line()
        .s("config dev=")
        .s(name)
        .s(" index=")
        .dec(index.into())
        .s(" writes=")
        .dec(writes)
        .s(" changed=")
        .dec(u64::from(before != after))
        .s(" generation=")
        .dec(gen0.into())
        .s("..")
        .dec(gen1.into())
        .end();
    true
}

pub fn run_config(info: &BootInfo, con: &mut Console) {
    let mut devices = 0;
    for (id, name) in [(DEVICE_BLK, "blk"), (DEVICE_NET, "net")] {
        for index in 0..4 {
            let Some(m) = virtio::find(info.cmdline, id, index) else {
                break;
            };
            if config_device(con, m, name, index) {
                devices += 1;
            }
        }
    }
    if devices == 0 {
        con.error().s("config no virtio device").end();
        return;
    }
    // Every device still works.
    if let Some(mut b) = open(info, con) {
        read(&mut b, con, 0, 1);
    }
    if let Some(mut n) = NetDev::open(info, con) {
        let sent = n.send_frame(b"KILN-TINY config: the device still sends");
        con.line()
            .s("config net tx used=")
            .dec(u64::from(sent.is_some()))
            .end();
    }
}

/// Transmit and receive buffers of `net-hostile`.
const TX_LEN: usize = 256;
const RX_LEN: usize = 1536;

#[repr(C, align(16))]
struct NetBufs {
    tx: [u8; TX_LEN],
    rx: [[u8; RX_LEN]; 2],
}

static NET_BUFS: DeviceShared<NetBufs> = DeviceShared::new(NetBufs {
    tx: [0; TX_LEN],
    rx: [[0; RX_LEN]; 2],
});

/// A virtio-net device driven by hand (rings 1 and 2: receive and transmit).
struct NetDev {
    m: Mmio,
    rx: Ring,
    tx: Ring,
    mac: [u8; 6],
}

impl NetDev {
    fn open(info: &BootInfo, con: &mut Console) -> Option<NetDev> {
        let Some(m) = virtio::find(info.cmdline, DEVICE_NET, 0) else {
            con.error().s("no virtio-net device").end();
            return None;
        };
        NetDev::start(m, con)
    }

    fn start(m: Mmio, con: &mut Console) -> Option<NetDev> {
        let features = match m.negotiate(F_MAC) {
            Ok(f) => f,
            Err(s) => {
                con.error()
                    .s("virtio-net refused features status=")
                    .hex(s.into())
                    .end();
                return None;
            }
        };
        let (rx, tx) = (Ring::new(1), Ring::new(2));
        m.setup_queue(0, 8, &rx);
        m.setup_queue(1, 8, &tx);
        let st = m.driver_ok();
        if st & virtio::STATUS_DRIVER_OK == 0 || st & STATUS_NEEDS_RESET != 0 {
            con.error()
                .s("virtio-net refused to start status=")
                .hex(st.into())
                .end();
            return None;
        }
        let mut mac = [0x02, 0x4b, 0x49, 0x4c, 0x4e, 0x01];
        if features & F_MAC != 0 {
            for (i, b) in mac.iter_mut().enumerate() {
                *b = m.config_u8(i as u32);
            }
        }
        Some(NetDev { m, rx, tx, mac })
    }

    fn tx_addr() -> u64 {
        // SAFETY: only the address is computed.
        unsafe { addr_of!((*NET_BUFS.get()).tx) as u64 }
    }

    fn rx_addr(i: usize) -> u64 {
        // SAFETY: only the address is computed.
        unsafe { addr_of!((*NET_BUFS.get()).rx[i % 2]) as u64 }
    }

    /// Fills the transmit buffer with a virtio header and a broadcast frame of EtherType
    /// 0x88b5 carrying `payload`; returns its length.
    fn fill_tx(&self, payload: &[u8]) -> u32 {
        let b = NET_BUFS.get();
        // SAFETY: the transmit buffer is not in use by the device (one frame at a time).
        let buf = unsafe { &mut *addr_of_mut!((*b).tx) };
        buf.fill(0);
        let frame = &mut buf[12..];
        frame[..6].fill(0xff);
        frame[6..12].copy_from_slice(&self.mac);
        frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        let n = payload.len().min(TX_LEN - 12 - 14);
        frame[14..14 + n].copy_from_slice(&payload[..n]);
        (12 + 14 + n) as u32
    }

    fn send_frame(&mut self, payload: &[u8]) -> Option<UsedElem> {
        let len = self.fill_tx(payload);
        self.tx.set_desc(0, Self::tx_addr(), len, 0, 0);
        self.tx.push(0);
        self.m.notify(1);
        self.tx.wait_used(WAIT_CYCLES)
    }

    fn tx_report(&mut self, con: &mut Console, what: &str, head: u16) {
        self.tx.push(head);
        self.m.notify(1);
        match self.tx.wait_used(WAIT_CYCLES) {
            Some(u) => con
                .line()
                .s("nethostile tx ")
                .s(what)
                .s(" used id=")
                .dec(u.id.into())
                .s(" len=")
                .dec(u.len.into())
                .end(),
            None => con
                .error()
                .s("nethostile tx ")
                .s(what)
                .s(" never returned")
                .end(),
        }
    }
}

/// About 3 s at 2-3 GHz.
const RX_WAIT: u64 = 8_000_000_000;

pub fn run_net(info: &BootInfo, con: &mut Console) {
    let Some(mut n) = NetDev::open(info, con) else {
        return;
    };
    let end = ram_end(info);
    let tx = NetDev::tx_addr();
    let len = n.fill_tx(b"HOSTILE frame: must never reach the tap");
    // A loop, a buffer outside RAM, a 1 MiB frame, a frame shorter than the header, a
    // device-writable transmit buffer.
    n.tx.set_desc(0, tx, len, F_NEXT, 1);
    n.tx.set_desc(1, tx, len, F_NEXT, 0);
    n.tx_report(con, "loop", 0);
    n.tx.set_desc(2, 0x40_0000_0000, len, 0, 0);
    n.tx_report(con, "oob", 2);
    if end >= BIG_BASE + (1 << 20) {
        // SAFETY: BIG_BASE.. lies in RAM (checked against the memory map), above the image.
        unsafe {
            core::ptr::write_bytes(BIG_BASE as *mut u8, 0, 12);
            core::ptr::copy_nonoverlapping(
                (tx + 12) as *const u8,
                (BIG_BASE + 12) as *mut u8,
                len as usize - 12,
            );
        }
        n.tx.set_desc(3, BIG_BASE, 1 << 20, 0, 0);
        n.tx_report(con, "giant=1MiB", 3);
    } else {
        con.error().s("nethostile needs 8 MiB of RAM").end();
    }
    n.tx.set_desc(4, tx, 4, 0, 0);
    n.tx_report(con, "short=4", 4);
    n.tx.set_desc(5, tx, len, F_WRITE, 0);
    n.tx_report(con, "writable", 5);
    // An available index 100 ahead: the queue is broken until a reset.
    n.tx.set_avail_idx(n.tx.used_idx().wrapping_add(100));
    n.m.notify(1);
    con.line()
        .s("nethostile tx avail_idx status=")
        .hex(wait_needs_reset(&n.m).into())
        .end();
    let Some(mut n) = NetDev::start(n.m, con) else {
        return;
    };

    // Receive: a read-only buffer (with a canary), one outside RAM, one straddling the end
    // of RAM. The host sends frames once it sees `ready`.
    let rx0 = NetDev::rx_addr(0);
    // SAFETY: receive buffer 0 is not available to the device yet.
    unsafe { core::ptr::write_bytes(rx0 as *mut u8, 0x5a, RX_LEN) };
    n.rx.set_desc(0, rx0, RX_LEN as u32, 0, 0);
    n.rx.set_desc(1, 0x40_0000_0000, RX_LEN as u32, F_WRITE, 0);
    n.rx.set_desc(2, end - 64, RX_LEN as u32, F_WRITE, 0);
    for head in [0, 1, 2] {
        n.rx.push(head);
    }
    n.m.notify(0);
    con.line().s("nethostile rx ready").end();
    let mut used = 0;
    for _ in 0..3 {
        match n.rx.wait_used(RX_WAIT) {
            Some(_) => used += 1,
            None => break,
        }
    }
    // SAFETY: the device returned (or never took) the read-only buffer; it may not have
    // written it either way.
    let ok = unsafe { core::slice::from_raw_parts(rx0 as *const u8, RX_LEN) }
        .iter()
        .all(|&b| b == 0x5a);
    con.line()
        .s("nethostile rx bad used=")
        .dec(used)
        .s(" intact=")
        .dec(u64::from(ok))
        .end();
    // A good buffer: the next frame lands in it.
    let rx1 = NetDev::rx_addr(1);
    n.rx.set_desc(3, rx1, RX_LEN as u32, F_WRITE, 0);
    n.rx.push(3);
    n.m.notify(0);
    match n.rx.wait_used(RX_WAIT) {
        Some(u) => con
            .line()
            .s("nethostile rx good len=")
            .dec(u.len.into())
            .end(),
        None => con.error().s("nethostile rx good buffer never used").end(),
    }
    match n.send_frame(b"KILN-TINY net-hostile: the device still sends") {
        Some(_) => con.line().s("nethostile tx ok used=1").end(),
        None => con.error().s("nethostile tx ok timed out").end(),
    }
}
