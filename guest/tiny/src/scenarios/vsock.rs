//! virtio-vsock scenarios. Each starts the virtio-vsock device and prints
//! `vsock base=0x.. irq=N cid=N`; the port is `kiln.port=N` (default 1234). Then:
//!
//! * `vsock-connect`: connects to the host's port (the host listens on `<uds_path>_<port>`):
//!   `vsock connected port=P cycles=N` (or `vsock refused port=P`, an error), sends
//!   [`CONNECT_MESSAGE`], waits (about 10 s) for the host's answer: `vsock reply len=N
//!   cycles=N data=<escaped>`, then shuts the connection down: `vsock closed op=3` (the
//!   device's RST). `cycles`: TSC cycles from the REQUEST to the RESPONSE, and from sending
//!   the message to the first byte of the answer.
//! * `vsock-listen`: `vsock listen port=P`, then waits (about 20 s) for the host to connect
//!   (the host writes `CONNECT <port>\n` on `uds_path`). A REQUEST for another port is
//!   refused with an RST: `vsock refused port=Q`. For its port: `vsock accepted port=P
//!   from=N`, then the host's first message, which it sends back in upper case before
//!   printing `vsock got len=N data=<escaped>` and `vsock echoed len=N`, then shuts down:
//!   `vsock closed op=3`.
//! * `vsock-bad`: hostile packets, each answered or not: `vsock bad case=NAME answer=rst`
//!   (an RST from the ports it was sent to), `answer=none` (nothing within ~0.1 s) or
//!   `answer=op<N>`; cases `src_cid` (wrong source CID: none), `dst_cid` (not to the host:
//!   none), `short` (a 10-byte chain: none), `op` (op 99: rst), `type` (SEQPACKET: rst),
//!   `len` (len 4096 in a 60-byte chain: rst), `unknown` (RW for no connection: rst),
//!   `refused` (REQUEST to port P+1, where nobody listens: rst). Then a normal connection as
//!   in `vsock-connect`, proving the device still works.

// Lengths are cut to the header fields' widths; every value is in range by construction.
#![allow(clippy::cast_possible_truncation)]

use crate::arch::rdtsc;
use crate::boot_info::BootInfo;
use crate::serial::Console;
use crate::virtio::vsock::{Hdr, Packet, Vsock, HDR};
use crate::virtio::WAIT_CYCLES;
use kiln_guest_boot::cmdline::param_num;
use kiln_guest_virtio::vsock::{
    OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN,
    SHUTDOWN_BOTH,
};

/// What `vsock-connect` (and the end of `vsock-bad`) sends the host.
pub const CONNECT_MESSAGE: &[u8] = b"KILN-TINY-VSOCK hello from the guest";
/// The guest's own port for the connections it makes.
const GUEST_PORT: u32 = 40000;
/// About 10 s and 20 s at 2-3 GHz.
const REPLY_CYCLES: u64 = 25_000_000_000;
const LISTEN_CYCLES: u64 = 50_000_000_000;
/// How long "no answer" is waited for (about 0.1 s).
const SILENCE_CYCLES: u64 = 250_000_000;

fn open(info: &BootInfo, con: &mut Console) -> Option<Vsock> {
    match Vsock::open(info.cmdline) {
        Ok(v) => {
            con.line()
                .s("vsock base=")
                .hex(v.mmio.base())
                .s(" irq=")
                .dec(v.mmio.irq().into())
                .s(" cid=")
                .dec(v.cid)
                .end();
            Some(v)
        }
        Err(0) => {
            con.error().s("no virtio-vsock device").end();
            None
        }
        Err(status) => {
            con.error()
                .s("virtio-vsock refused to start status=")
                .hex(status.into())
                .end();
            None
        }
    }
}

fn port(info: &BootInfo) -> u32 {
    param_num(info.cmdline, b"kiln.port", 1234) as u32
}

/// The next packet that is not a credit message (a CREDIT_REQUEST is answered).
fn next(v: &mut Vsock, cycles: u64) -> Option<Packet> {
    let start = rdtsc();
    loop {
        let left = cycles.saturating_sub(rdtsc().wrapping_sub(start));
        let p = v.recv(left)?;
        match p.hdr.op {
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => {
                let h = v.hdr(OP_CREDIT_UPDATE, p.hdr.dst_port, p.hdr.src_port);
                v.send(&h, &[]);
            }
            _ => return Some(p),
        }
    }
}

/// Sends SHUTDOWN (both directions) and waits for the device's RST.
fn close(v: &mut Vsock, con: &mut Console, local: u32, remote: u32) {
    let mut h = v.hdr(OP_SHUTDOWN, local, remote);
    h.flags = SHUTDOWN_BOTH;
    v.send(&h, &[]);
    loop {
        match next(v, WAIT_CYCLES) {
            Some(p) if p.hdr.op == OP_RST => {
                con.line().s("vsock closed op=").dec(OP_RST.into()).end();
                return;
            }
            // Data still in flight, or the host's own SHUTDOWN: keep waiting for the RST.
            Some(p) if p.hdr.op == OP_RW || p.hdr.op == OP_SHUTDOWN => {}
            Some(p) => {
                con.error()
                    .s("vsock close answered op=")
                    .dec(p.hdr.op.into())
                    .end();
                return;
            }
            None => {
                con.error().s("vsock close never answered").end();
                return;
            }
        }
    }
}

/// Connects from [`GUEST_PORT`] to host port `port`, sends [`CONNECT_MESSAGE`], prints the
/// answer and closes.
fn connect_and_talk(v: &mut Vsock, con: &mut Console, port: u32) {
    let t0 = rdtsc();
    let h = v.hdr(OP_REQUEST, GUEST_PORT, port);
    v.send(&h, &[]);
    match next(v, WAIT_CYCLES) {
        Some(p) if p.hdr.op == OP_RESPONSE && p.hdr.src_port == port => {
            con.line()
                .s("vsock connected port=")
                .dec(port.into())
                .s(" cycles=")
                .dec(rdtsc().wrapping_sub(t0))
                .end();
        }
        Some(p) if p.hdr.op == OP_RST => {
            con.error().s("vsock refused port=").dec(port.into()).end();
            return;
        }
        Some(p) => {
            con.error()
                .s("vsock connect answered op=")
                .dec(p.hdr.op.into())
                .end();
            return;
        }
        None => {
            con.error().s("vsock connect never answered").end();
            return;
        }
    }
    let t1 = rdtsc();
    let h = v.hdr(OP_RW, GUEST_PORT, port);
    if v.send(&h, CONNECT_MESSAGE).is_none() {
        con.error().s("vsock send timed out").end();
        return;
    }
    match next(v, REPLY_CYCLES) {
        Some(p) if p.hdr.op == OP_RW => {
            let cycles = rdtsc().wrapping_sub(t1);
            con.line()
                .s("vsock reply len=")
                .dec(p.len as u64)
                .s(" cycles=")
                .dec(cycles)
                .s(" data=")
                .escaped(p.data())
                .end();
        }
        Some(p) => {
            con.error().s("vsock reply op=").dec(p.hdr.op.into()).end();
            return;
        }
        None => {
            con.error().s("vsock reply timed out").end();
            return;
        }
    }
    close(v, con, GUEST_PORT, port);
}

pub fn run_connect(info: &BootInfo, con: &mut Console) {
    let Some(mut v) = open(info, con) else { return };
    connect_and_talk(&mut v, con, port(info));
}

pub fn run_listen(info: &BootInfo, con: &mut Console) {
    let Some(mut v) = open(info, con) else { return };
    let port = port(info);
    con.line().s("vsock listen port=").dec(port.into()).end();
    let start = rdtsc();
    let peer = loop {
        let left = LISTEN_CYCLES.saturating_sub(rdtsc().wrapping_sub(start));
        let Some(p) = next(&mut v, left) else {
            con.error().s("vsock nobody connected").end();
            return;
        };
        if p.hdr.op != OP_REQUEST {
            // Whatever it is, there is no such connection here.
            if p.hdr.op != OP_RST {
                let h = v.hdr(OP_RST, p.hdr.dst_port, p.hdr.src_port);
                v.send(&h, &[]);
            }
            continue;
        }
        if p.hdr.dst_port != port {
            let h = v.hdr(OP_RST, p.hdr.dst_port, p.hdr.src_port);
            v.send(&h, &[]);
            con.line()
                .s("vsock refused port=")
                .dec(p.hdr.dst_port.into())
                .end();
            continue;
        }
        break p.hdr.src_port;
    };
    let h = v.hdr(OP_RESPONSE, port, peer);
    v.send(&h, &[]);
    con.line()
        .s("vsock accepted port=")
        .dec(port.into())
        .s(" from=")
        .dec(peer.into())
        .end();
    let msg = match next(&mut v, REPLY_CYCLES) {
        Some(p) if p.hdr.op == OP_RW => p,
        Some(p) => {
            con.error().s("vsock got op=").dec(p.hdr.op.into()).end();
            return;
        }
        None => {
            con.error().s("vsock got nothing").end();
            return;
        }
    };
    // Echo first, print after: the host measures the round trip.
    let data = msg.data();
    let len = data.len();
    let mut h = v.hdr(OP_RW, port, peer);
    h.len = len as u32;
    let buf = v.tx_buffer();
    buf[..HDR].copy_from_slice(&h.to_bytes());
    buf[HDR..HDR + len].copy_from_slice(data);
    buf[HDR..HDR + len].make_ascii_uppercase();
    v.send_raw((HDR + len) as u32);
    con.line()
        .s("vsock got len=")
        .dec(len as u64)
        .s(" data=")
        .escaped(data)
        .end();
    con.line().s("vsock echoed len=").dec(len as u64).end();
    close(&mut v, con, port, peer);
}

/// Waits briefly for an answer to a packet sent from `src` to `dst` and prints it.
fn report(v: &mut Vsock, con: &mut Console, case: &str, src: u32, dst: u32) {
    let answer = v.recv(SILENCE_CYCLES);
    let line = con.line().s("vsock bad case=").s(case).s(" answer=");
    match answer {
        None => line.s("none").end(),
        Some(p) if p.hdr.op == OP_RST && p.hdr.src_port == dst && p.hdr.dst_port == src => {
            line.s("rst").end()
        }
        Some(p) => line.s("op").dec(p.hdr.op.into()).end(),
    }
}

/// Writes `hdr` into the transmit buffer and sends `len` bytes of it.
fn send_hostile(v: &mut Vsock, hdr: &Hdr, len: u32) {
    let buf = v.tx_buffer();
    buf[..HDR].copy_from_slice(&hdr.to_bytes());
    buf[HDR..HDR + 16].copy_from_slice(b"0123456789abcdef");
    v.send_raw(len);
}

pub fn run_bad(info: &BootInfo, con: &mut Console) {
    let Some(mut v) = open(info, con) else { return };
    let port = port(info);
    let full = HDR as u32;

    let mut h = v.hdr(OP_REQUEST, 40001, port);
    h.src_cid = v.cid + 1;
    send_hostile(&mut v, &h, full);
    report(&mut v, con, "src_cid", 40001, port);

    let mut h = v.hdr(OP_REQUEST, 40002, port);
    h.dst_cid = v.cid;
    send_hostile(&mut v, &h, full);
    report(&mut v, con, "dst_cid", 40002, port);

    let h = v.hdr(OP_REQUEST, 40003, port);
    send_hostile(&mut v, &h, 10);
    report(&mut v, con, "short", 40003, port);

    let h = v.hdr(99, 40004, port);
    send_hostile(&mut v, &h, full);
    report(&mut v, con, "op", 40004, port);

    let mut h = v.hdr(OP_REQUEST, 40005, port);
    h.kind = 2;
    send_hostile(&mut v, &h, full);
    report(&mut v, con, "type", 40005, port);

    let mut h = v.hdr(OP_RW, 40006, port);
    h.len = 4096;
    send_hostile(&mut v, &h, full + 16);
    report(&mut v, con, "len", 40006, port);

    let mut h = v.hdr(OP_RW, 40007, 7777);
    h.len = 16;
    send_hostile(&mut v, &h, full + 16);
    report(&mut v, con, "unknown", 40007, 7777);

    let h = v.hdr(OP_REQUEST, 40008, port + 1);
    send_hostile(&mut v, &h, full);
    report(&mut v, con, "refused", 40008, port + 1);

    // The device still works.
    connect_and_talk(&mut v, con, port);
}
