//! virtio-net scenarios. Each starts the first virtio-net device and prints
//! `net base=0x.. irq=N features=0x.. mac=xx:xx:xx:xx:xx:xx` (with ` mtu=N` when the device
//! offers an MTU), then:
//!
//! * `net-tx`: sends `kiln.count=C` (default 1, at most 64) broadcast frames of EtherType
//!   0x88b5 (local experimental) whose payload is [`TX_PAYLOAD`], from the device's MAC, one
//!   after the other, each waited for at most `kiln.wait=S` seconds (default 1): `net tx
//!   len=N used=1` each.
//! * `net-rx`: posts its receive buffers (1536 bytes each, or 128 with `kiln.mrg=1`, which
//!   also negotiates merged receive buffers), prints `net rx ready`, and waits (about 10 s
//!   each) for `kiln.count=C` frames (default 1, at most 64) of EtherType 0x88b5, skipping
//!   up to 16 others (`net rx skipped ethertype=0x..`): `net rx len=N buffers=B
//!   ethertype=0x88b5 payload=<first 64 payload bytes, escaped>` each (N: frame bytes
//!   without the virtio header; B: buffers it used).

// Register values, sector numbers and lengths are deliberately cut to the width the device
// or the ring field has (32, 16 or 8 bits); every such value is in range by construction.
#![allow(clippy::cast_possible_truncation)]

use crate::boot_info::BootInfo;
use crate::serial::Console;
use crate::virtio::net::{Net, F_MRG_RXBUF, HDR, RX_BUFS, RX_BUF_LEN};
use crate::virtio::WAIT_CYCLES;
use kiln_guest_boot::cmdline::param_num;

pub const ETHERTYPE: u16 = 0x88b5;
pub const TX_PAYLOAD: &[u8] = b"KILN-TINY-NET-TX frame from the guest";
/// MAC used as the source when the device has none.
const FALLBACK_MAC: [u8; 6] = [0x02, 0x4b, 0x49, 0x4c, 0x4e, 0x01];
/// About 10 s at 2-3 GHz.
const RX_WAIT_CYCLES: u64 = 25_000_000_000;
/// Receive buffer size with merged buffers: small, so that one frame spans several.
const MRG_BUF_LEN: u32 = 128;

fn open(info: &BootInfo, con: &mut Console, mergeable: bool) -> Option<Net> {
    match Net::open(info.cmdline, 0, mergeable) {
        Ok(n) => {
            let mac = n.mac();
            let mut line = con
                .line()
                .s("net base=")
                .hex(n.mmio.base())
                .s(" irq=")
                .dec(n.mmio.irq().into())
                .s(" features=")
                .hex(n.features)
                .s(" mac=");
            for (i, b) in mac.iter().enumerate() {
                if i > 0 {
                    line = line.s(":");
                }
                line = super::blk::hex_bytes(line, &[*b]);
            }
            match n.mtu() {
                Some(mtu) => line.s(" mtu=").dec(mtu.into()).end(),
                None => line.end(),
            }
            Some(n)
        }
        Err(0) => {
            con.error().s("no virtio-net device").end();
            None
        }
        Err(status) => {
            con.error()
                .s("virtio-net refused to start status=")
                .hex(status.into())
                .end();
            None
        }
    }
}

pub fn run_tx(info: &BootInfo, con: &mut Console) {
    let Some(mut n) = open(info, con, false) else {
        return;
    };
    let mut src = n.mac();
    if src == [0; 6] {
        src = FALLBACK_MAC;
    }
    let mut frame = [0u8; 14 + 64];
    frame[..6].fill(0xff);
    frame[6..12].copy_from_slice(&src);
    frame[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    frame[14..14 + TX_PAYLOAD.len()].copy_from_slice(TX_PAYLOAD);
    let len = 14 + TX_PAYLOAD.len();
    let wait = param_num(info.cmdline, b"kiln.wait", 1).clamp(1, 60) * WAIT_CYCLES;
    for _ in 0..param_num(info.cmdline, b"kiln.count", 1).clamp(1, 64) {
        match n.send_wait(&frame[..len], wait) {
            Some(_) => con
                .line()
                .s("net tx len=")
                .dec(len as u64)
                .s(" used=1")
                .end(),
            None => {
                con.error().s("net tx timed out").end();
                return;
            }
        }
    }
}

pub fn run_rx(info: &BootInfo, con: &mut Console) {
    let mergeable = param_num(info.cmdline, b"kiln.mrg", 0) == 1;
    let Some(mut n) = open(info, con, mergeable) else {
        return;
    };
    let mergeable = n.features & F_MRG_RXBUF != 0;
    let buf_len = if mergeable {
        MRG_BUF_LEN
    } else {
        RX_BUF_LEN as u32
    };
    for i in 0..RX_BUFS {
        n.post(i, buf_len);
    }
    n.kick_rx();
    con.line().s("net rx ready").end();
    let wanted = param_num(info.cmdline, b"kiln.count", 1).clamp(1, 64);
    let mut received = 0;
    let mut frame = [0u8; RX_BUFS * RX_BUF_LEN];
    for _ in 0..16 + wanted {
        let Some(first) = n.recv(RX_WAIT_CYCLES) else {
            con.error().s("net rx timed out").end();
            return;
        };
        let id = first.id as usize % RX_BUFS;
        let buf = Net::rx_buf(id);
        let used = (first.len as usize).min(RX_BUF_LEN);
        let buffers = if mergeable {
            usize::from(u16::from_le_bytes([buf[10], buf[11]])).clamp(1, RX_BUFS)
        } else {
            1
        };
        let mut len = used.saturating_sub(HDR);
        frame[..len].copy_from_slice(&buf[HDR.min(used)..used]);
        n.post(id, buf_len);
        for _ in 1..buffers {
            let Some(more) = n.recv(RX_WAIT_CYCLES) else {
                con.error().s("net rx missing merged buffer").end();
                return;
            };
            let id = more.id as usize % RX_BUFS;
            let part = (more.len as usize).min(RX_BUF_LEN).min(frame.len() - len);
            frame[len..len + part].copy_from_slice(&Net::rx_buf(id)[..part]);
            len += part;
            n.post(id, buf_len);
        }
        n.kick_rx();
        let ethertype = if len >= 14 {
            u16::from_be_bytes([frame[12], frame[13]])
        } else {
            0
        };
        if ethertype != ETHERTYPE {
            con.line()
                .s("net rx skipped ethertype=")
                .hex(ethertype.into())
                .end();
            continue;
        }
        let payload = &frame[14..len];
        con.line()
            .s("net rx len=")
            .dec(len as u64)
            .s(" buffers=")
            .dec(buffers as u64)
            .s(" ethertype=")
            .hex(ethertype.into())
            .s(" payload=")
            .escaped(&payload[..payload.len().min(64)])
            .end();
        received += 1;
        if received == wanted {
            return;
        }
    }
    con.error().s("net rx no frame of ethertype 0x88b5").end();
}
