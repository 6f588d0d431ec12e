//! `net-hostile` (first virtio-net): transmit chains that loop, point outside RAM, carry a
//! 1 MiB frame, are shorter than the 12-byte header, or are device-writable (`nethostile tx
//! WHAT used id=N len=N`); an available index 100 ahead on the transmit queue (`nethostile
//! tx avail_idx status=0x..`, then a reset); receive buffers that are read-only or outside
//! RAM (`nethostile rx ready`, then, once the host sent frames, `nethostile rx bad used=N
//! intact=1`: the read-only buffer was not written); a good receive buffer (`nethostile rx
//! good len=N`), and a proper frame (`nethostile tx ok used=1`). Hostile frames carry
//! `HOSTILE` in their payload: none may reach the tap.

// Register values, lengths and indices are cut to the width of their ring or register
// field; every such value is in range by construction.
#![allow(clippy::cast_possible_truncation)]

use core::ptr::{addr_of, addr_of_mut};

use super::{ram_end, wait_needs_reset, BIG_BASE};
use crate::boot_info::BootInfo;
use crate::serial::Console;
use crate::virtio::net::F_MAC;
use crate::virtio::ring::{ring, Ring, RingExt, DESC_F_NEXT, DESC_F_WRITE};
use crate::virtio::{self, Mmio, DEVICE_NET, STATUS_NEEDS_RESET, WAIT_CYCLES};
use kiln_guest_virtio::{DeviceShared, UsedElem};

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
pub(super) struct NetDev {
    m: Mmio,
    rx: Ring,
    tx: Ring,
    mac: [u8; 6],
}

impl NetDev {
    pub(super) fn open(info: &BootInfo, con: &mut Console) -> Option<NetDev> {
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
        let (rx, tx) = (ring(1), ring(2));
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
        unsafe { addr_of!((*NET_BUFS.ptr()).tx) as u64 }
    }

    fn rx_addr(i: usize) -> u64 {
        // SAFETY: only the address is computed.
        unsafe { addr_of!((*NET_BUFS.ptr()).rx[i % 2]) as u64 }
    }

    /// Fills the transmit buffer with a virtio header and a broadcast frame of EtherType
    /// 0x88b5 carrying `payload`; returns its length.
    fn fill_tx(&self, payload: &[u8]) -> u32 {
        let b = NET_BUFS.ptr();
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

    pub(super) fn send_frame(&mut self, payload: &[u8]) -> Option<UsedElem> {
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

pub fn run(info: &BootInfo, con: &mut Console) {
    let Some(mut n) = NetDev::open(info, con) else {
        return;
    };
    let end = ram_end(info);
    let tx = NetDev::tx_addr();
    let len = n.fill_tx(b"HOSTILE frame: must never reach the tap");
    // A loop, a buffer outside RAM, a 1 MiB frame, a frame shorter than the header, a
    // device-writable transmit buffer.
    n.tx.set_desc(0, tx, len, DESC_F_NEXT, 1);
    n.tx.set_desc(1, tx, len, DESC_F_NEXT, 0);
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
    n.tx.set_desc(5, tx, len, DESC_F_WRITE, 0);
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
    n.rx.set_desc(1, 0x40_0000_0000, RX_LEN as u32, DESC_F_WRITE, 0);
    n.rx.set_desc(2, end - 64, RX_LEN as u32, DESC_F_WRITE, 0);
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
    n.rx.set_desc(3, rx1, RX_LEN as u32, DESC_F_WRITE, 0);
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
