//! One vsock connection's state machine and credit accounting
//! (`vmm/src/devices/virtio/vsock/connection/`) between a hostile guest and a host peer on
//! a real Unix socket: the guest's packets (validated by `packet::check_tx` first, as the
//! device does), the host peer writing, reading, shutting down or hanging up, the event
//! loop's readable/writable/timer events, and the packets the connection sends back. Both
//! ends of the socket have the kernel's smallest buffers (a few KiB), so that what the guest
//! sends soon stops fitting: the connection's own buffer, its draining when the host reads,
//! the shutdown that waits for it, and the kill of a guest that sends past its credit run.
//!
//! Input, little endian, zeros past the end:
//!
//! ```text
//! u8   bit 0: host-initiated (CONNECT from the host), else guest-initiated (a REQUEST)
//! u32  local port, u32 peer port, u32 buf_alloc, u32 fwd_cnt (the guest's REQUEST)
//! then events until the input ends, each an opcode byte (mod 10) and its operands:
//!   0 guest packet: u16 op, u16 type, u32 flags, u32 buf_alloc, u32 fwd_cnt,
//!     u16 len, then min(len, 4096) payload bytes
//!   1 host writes u16 n bytes (n mod 8192, from the input)     2 host reads up to u16 bytes
//!   3 host shuts down its writing side      4 host hangs up (closes its socket)
//!   5 the stream is writable                6 the guest gives a receive buffer of u16 bytes
//!   7 time passes: u16 milliseconds * 4     8 a spurious readable event
//!   9 the guest sends u16 n filler bytes (byte u8) in one RW packet: u32 buf_alloc,
//!     u32 fwd_cnt, u16 n (at most 64 KiB, a packet's limit), u8 the filler byte
//! ```
//!
//! Besides "no panic": every packet for the guest is addressed from the host to this
//! connection, carries at most the room and the credit the guest gave, and its data is
//! exactly what the host peer wrote, in order; what the host peer reads is exactly what the
//! guest sent (after the `OK <port>` line of a host-initiated connection); the buffer for the
//! host never exceeds the advertised `buf_alloc`; a finished connection says nothing more.
#![no_main]

use kiln_fuzz::host::set_buffers;
use kiln_fuzz::Input;
use libfuzzer_sys::fuzz_target;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};
use vmm::devices::virtio::vsock::connection::{Connection, BUF_ALLOC};
use vmm::devices::virtio::vsock::packet::{check_tx, Header, Op, Verdict, HOST_CID, TYPE_STREAM};
use vmm::devices::virtio::vsock::unix::Stream;

const CID: u64 = 3;

/// A connected pair: the VMM's end (`Stream`, as the muxer makes it) and the host peer's.
fn socket_pair() -> (Stream, UnixStream) {
    let path = std::env::temp_dir().join(format!("kiln-fuzz-vsock-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind the host socket");
    let vmm_end = Stream::connect(path.to_str().expect("a UTF-8 temp path")).expect("connect");
    let (host, _) = listener.accept().expect("accept");
    let _ = std::fs::remove_file(&path);
    host.set_nonblocking(true).expect("nonblocking");
    // The kernel's minimum (it rounds 0 up to it): a few KiB in flight either way.
    set_buffers(vmm_end.as_raw_fd(), 0, 0);
    set_buffers(host.as_raw_fd(), 0, 0);
    (vmm_end, host)
}

fn read_all(host: &mut UnixStream, into: &mut Vec<u8>, max: usize) {
    let mut buf = vec![0u8; max.max(1)];
    loop {
        match host.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                into.extend_from_slice(&buf[..n]);
                if n < buf.len() {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    kiln_fuzz::setup();
    let mut input = Input::new(data);
    let host_initiated = input.u8() & 1 != 0;
    let local_port = input.u32();
    let peer_port = input.u32();
    let buf_alloc = input.u32();
    let fwd_cnt = input.u32();

    let (vmm_end, host) = socket_pair();
    let mut host = Some(host);
    let mut conn = if host_initiated {
        Connection::host_initiated(vmm_end, CID, local_port, peer_port)
    } else {
        let req = Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: peer_port,
            dst_port: local_port,
            len: 0,
            type_: TYPE_STREAM,
            op: Op::Request as u16,
            flags: 0,
            buf_alloc,
            fwd_cnt,
        };
        Connection::guest_initiated(vmm_end, CID, &req)
    };

    let start = Instant::now();
    let mut now = start;
    // What the guest sent in RW packets the connection accepted for handling, and what the
    // host peer read; what the host peer wrote, and what reached the guest.
    let mut guest_sent: Vec<u8> = Vec::new();
    let mut host_read: Vec<u8> = Vec::new();
    let mut host_wrote: Vec<u8> = Vec::new();
    let mut guest_got: Vec<u8> = Vec::new();

    while !input.is_empty() {
        let event = input.u8() % 10;
        match event {
            0 => {
                let (op, type_, flags) = (input.u16(), input.u16(), input.u32());
                let (buf_alloc, fwd_cnt, len) = (input.u32(), input.u32(), input.u16());
                let hdr = Header {
                    src_cid: CID,
                    dst_cid: HOST_CID,
                    src_port: peer_port,
                    dst_port: local_port,
                    op,
                    type_,
                    flags,
                    buf_alloc,
                    fwd_cnt,
                    len: u32::from(len),
                };
                let payload = input.bytes(usize::from(len).min(4096));
                if let Verdict::Accept(pkt) = check_tx(&hdr.to_bytes(), payload.len() as u64, CID) {
                    let body = if pkt.op == Op::Rw {
                        &payload[..hdr.len as usize]
                    } else {
                        &[][..]
                    };
                    if pkt.op == Op::Rw && !conn.is_done() {
                        guest_sent.extend_from_slice(body);
                    }
                    conn.on_guest_packet(&pkt, body, now);
                }
            }
            1 => {
                let n = usize::from(input.u16() % 8192);
                let bytes = input.bytes(n);
                if let Some(h) = host.as_mut() {
                    if let Ok(w) = h.write(bytes) {
                        host_wrote.extend_from_slice(&bytes[..w]);
                    }
                }
                conn.on_readable(false);
            }
            2 => {
                let n = usize::from(input.u16());
                if let Some(h) = host.as_mut() {
                    read_all(h, &mut host_read, n);
                }
            }
            3 => {
                if let Some(h) = host.as_ref() {
                    let _ = h.shutdown(std::net::Shutdown::Write);
                }
                conn.on_readable(false);
            }
            4 => {
                if let Some(mut h) = host.take() {
                    read_all(&mut h, &mut host_read, 1 << 20);
                }
                conn.on_readable(true);
            }
            5 => conn.on_writable(now),
            6 => {
                let room = usize::from(input.u16());
                let credit = conn.peer_credit();
                let was_done = conn.is_done();
                let mut buf = vec![0u8; room];
                let packet = conn.next_packet(&mut buf, now);
                kiln_fuzz::debug(|| {
                    format!("to the guest ({room} bytes of room, credit {credit}): {packet:?}")
                });
                if let Some(h) = packet {
                    assert!(!was_done, "a finished connection sent {h:?}");
                    assert_eq!(h.src_cid, HOST_CID);
                    assert_eq!(h.dst_cid, CID);
                    assert_eq!((h.src_port, h.dst_port), (local_port, peer_port));
                    assert_eq!(h.type_, TYPE_STREAM);
                    assert!(Op::from_raw(h.op).is_some(), "op {}", h.op);
                    assert_eq!(h.buf_alloc, BUF_ALLOC);
                    if h.op == Op::Rw as u16 {
                        let len = h.len as usize;
                        assert!(len > 0 && len <= room, "RW of {len} bytes in {room}");
                        assert!(h.len <= credit, "RW of {len} bytes with credit {credit}");
                        guest_got.extend_from_slice(&buf[..len]);
                    } else {
                        assert_eq!(h.len, 0, "a control packet with a payload");
                    }
                }
            }
            7 => {
                now += Duration::from_millis(u64::from(input.u16()) * 4);
                conn.on_tick(now);
            }
            9 => {
                let (buf_alloc, fwd_cnt) = (input.u32(), input.u32());
                let n = input.u16();
                let filler = vec![input.u8(); usize::from(n)];
                let hdr = Header {
                    src_cid: CID,
                    dst_cid: HOST_CID,
                    src_port: peer_port,
                    dst_port: local_port,
                    op: Op::Rw as u16,
                    type_: TYPE_STREAM,
                    flags: 0,
                    buf_alloc,
                    fwd_cnt,
                    len: u32::from(n),
                };
                if let Verdict::Accept(pkt) = check_tx(&hdr.to_bytes(), u64::from(n), CID) {
                    if !conn.is_done() {
                        guest_sent.extend_from_slice(&filler);
                    }
                    conn.on_guest_packet(&pkt, &filler, now);
                }
            }
            _ => conn.on_readable(false),
        }
        kiln_fuzz::debug(|| {
            format!(
                "event {event}: {:?}, deadline {:?}",
                conn.state(),
                conn.deadline().map(|d| d - start)
            )
        });
        assert!(
            conn.buffered() <= BUF_ALLOC as usize,
            "{} bytes buffered",
            conn.buffered()
        );
        if conn.is_done() {
            assert!(!conn.has_rx_work(), "a finished connection has work");
        }
    }
    if let Some(h) = host.as_mut() {
        read_all(h, &mut host_read, 1 << 20);
    }

    // The host peer reads the guest's bytes, in order (after the OK line it was promised).
    let mut read = &host_read[..];
    if host_initiated {
        let ok = format!("OK {local_port}\n");
        if let Some(rest) = read.strip_prefix(ok.as_bytes()) {
            read = rest;
        }
    }
    assert!(
        guest_sent.starts_with(read),
        "the host read bytes the guest did not send"
    );
    assert!(
        host_wrote.starts_with(&guest_got),
        "the guest got bytes the host did not write"
    );
    kiln_fuzz::debug(|| {
        format!(
            "state {:?} ({:?}); guest sent {} host read {}; host wrote {} guest got {}",
            conn.state(),
            conn.kill_reason(),
            guest_sent.len(),
            read.len(),
            host_wrote.len(),
            guest_got.len()
        )
    });
});
