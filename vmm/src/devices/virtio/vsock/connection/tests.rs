use super::*;
use crate::devices::virtio::vsock::packet::SHUTDOWN_RCV;

const CID: u64 = 3;

fn guest(op: Op, len: u32) -> TxPacket {
    TxPacket {
        hdr: Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: 1025,
            dst_port: 52,
            len,
            type_: TYPE_STREAM,
            op: op as u16,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 0,
        },
        op,
    }
}

fn established() -> (Connection, Stream) {
    let (host_end, peer) = Stream::pair().unwrap();
    let req = guest(Op::Request, 0).hdr;
    let mut c = Connection::guest_initiated(host_end, CID, &req);
    let mut buf = [0u8; 64];
    let h = c.next_packet(&mut buf, Instant::now()).unwrap();
    assert_eq!(Op::from_raw(h.op), Some(Op::Response));
    assert_eq!((h.src_port, h.dst_port, h.dst_cid), (52, 1025, CID));
    assert_eq!(c.state(), State::Established);
    (c, peer)
}

fn read_all(s: &Stream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.recv(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[test]
fn host_initiated_handshake_writes_ok() {
    let (host_end, peer) = Stream::pair().unwrap();
    let mut c = Connection::host_initiated(host_end, CID, 1 << 30, 52);
    let now = Instant::now();
    assert!(c.has_rx_work());
    // A RESPONSE before our REQUEST went out is a protocol error.
    let mut early = Connection::host_initiated(Stream::pair().unwrap().0, CID, 7, 8);
    early.on_guest_packet(&guest(Op::Response, 0), &[], now);
    assert_eq!(early.state(), State::Killed);

    let mut buf = [0u8; 16];
    let h = c.next_packet(&mut buf, now).unwrap();
    assert_eq!(Op::from_raw(h.op), Some(Op::Request));
    assert_eq!(
        (h.src_cid, h.dst_cid, h.src_port, h.dst_port),
        (2, CID, 1 << 30, 52)
    );
    assert_eq!(h.buf_alloc, BUF_ALLOC);
    assert_eq!(c.deadline(), Some(now + REQUEST_TIMEOUT));
    assert!(c.next_packet(&mut buf, now).is_none());
    c.on_guest_packet(&guest(Op::Response, 0), &[], now);
    assert_eq!(c.state(), State::Established);
    assert_eq!(c.deadline(), None);
    assert_eq!(read_all(&peer), b"OK 1073741824\n");
}

#[test]
fn an_unanswered_request_times_out() {
    let (host_end, _peer) = Stream::pair().unwrap();
    let mut c = Connection::host_initiated(host_end, CID, 1 << 30, 52);
    let now = Instant::now();
    let _ = c.next_packet(&mut [0u8; 8], now);
    c.on_tick(now + Duration::from_millis(100));
    assert_eq!(c.state(), State::LocalInit);
    c.on_tick(now + REQUEST_TIMEOUT);
    assert_eq!(c.state(), State::Killed);
    assert_eq!(c.kill_reason(), Some(KillReason::Timeout));
}

#[test]
fn data_both_ways() {
    let (mut c, peer) = established();
    let now = Instant::now();
    c.on_guest_packet(&guest(Op::Rw, 5), b"hello", now);
    assert_eq!(read_all(&peer), b"hello");
    assert_eq!(c.buffered(), 0);
    assert_eq!(c.interest(), (true, false));
    peer.send(b"world!").unwrap();
    c.on_readable(false);
    assert_eq!(c.interest(), (false, false), "no re-arm until drained");
    let mut buf = [0u8; 4];
    let h = c.next_packet(&mut buf, now).unwrap();
    assert_eq!((Op::from_raw(h.op), h.len), (Some(Op::Rw), 4));
    assert_eq!(&buf, b"worl");
    assert_eq!(h.fwd_cnt, 5, "our fwd_cnt rides along");
    let h = c.next_packet(&mut buf, now).unwrap();
    assert_eq!(h.len, 2);
    assert!(c.next_packet(&mut buf, now).is_none(), "drained");
    assert_eq!(c.interest(), (true, false));
}

#[test]
fn credit_limits_host_to_guest() {
    let (mut c, peer) = established();
    let now = Instant::now();
    // The guest has 10 bytes of buffer.
    let mut p = guest(Op::CreditUpdate, 0);
    p.hdr.buf_alloc = 10;
    c.on_guest_packet(&p, &[], now);
    peer.send(&[7u8; 64]).unwrap();
    c.on_readable(false);
    let mut buf = [0u8; 64];
    assert_eq!(c.next_packet(&mut buf, now).unwrap().len, 10);
    assert_eq!(c.peer_credit(), 0);
    // Out of credit: one CREDIT_REQUEST, then silence.
    let h = c.next_packet(&mut buf, now).unwrap();
    assert_eq!(Op::from_raw(h.op), Some(Op::CreditRequest));
    assert!(!c.has_rx_work());
    assert!(c.next_packet(&mut buf, now).is_none());
    // The guest consumed 6 bytes.
    p.hdr.fwd_cnt = 6;
    c.on_guest_packet(&p, &[], now);
    assert_eq!(c.peer_credit(), 6);
    assert!(c.has_rx_work());
    assert_eq!(c.next_packet(&mut buf, now).unwrap().len, 6);
    // A guest claiming to have consumed more than it got gets nothing more.
    p.hdr.fwd_cnt = 1000;
    p.hdr.buf_alloc = 0;
    c.on_guest_packet(&p, &[], now);
    assert_eq!(c.peer_credit(), 0);
    // Wrapping counters: in flight is computed modulo 2^32.
    c.rx_cnt = Wrapping(5);
    c.peer_fwd_cnt = Wrapping(u32::MAX - 4);
    c.peer_buf_alloc = 100;
    assert_eq!(c.peer_credit(), 90);
}

#[test]
fn a_host_peer_that_never_reads_exhausts_the_guests_credit() {
    let (mut c, peer) = established();
    let now = Instant::now();
    let chunk = vec![0x5au8; 4096];
    let mut sent = 0usize;
    let mut updates = 0;
    // The guest sends within the credit it believes it has (fwd_cnt it last saw).
    let mut seen_fwd = Wrapping(0u32);
    loop {
        let credit = BUF_ALLOC - (Wrapping(sent as u32) - seen_fwd).0;
        if credit < chunk.len() as u32 {
            break;
        }
        c.on_guest_packet(&guest(Op::Rw, 4096), &chunk, now);
        assert_ne!(c.state(), State::Killed);
        sent += chunk.len();
        if c.has_rx_work() {
            let h = c.next_packet(&mut [0u8; 0], now).unwrap();
            seen_fwd = Wrapping(h.fwd_cnt);
            updates += 1;
        }
        assert!(sent < 64 << 20, "the guest never ran out of credit");
    }
    assert!(c.buffered() > 0 && c.buffered() <= BUF_ALLOC as usize);
    assert!(
        updates > 0,
        "the socket buffer took data first, with updates"
    );
    assert!(c.interest().1, "waits for the host to read");
    // One byte over the credit is a violation.
    let over = vec![1u8; BUF_ALLOC as usize - c.buffered() + 1];
    c.on_guest_packet(&guest(Op::Rw, over.len() as u32), &over, now);
    assert_eq!(c.kill_reason(), Some(KillReason::CreditViolation));
    drop(peer);
}

#[test]
fn buffered_data_drains_and_credit_is_updated() {
    let (mut c, peer) = established();
    let now = Instant::now();
    let chunk = vec![1u8; 32 * 1024];
    // The socket takes everything until it is full; the rest is buffered.
    while c.buffered() == 0 {
        c.on_guest_packet(&guest(Op::Rw, chunk.len() as u32), &chunk, now);
        assert_ne!(c.state(), State::Killed);
    }
    assert_eq!(c.interest(), (true, true));
    let before = c.fwd_cnt;
    let _ = read_all(&peer);
    c.on_writable(now);
    assert_eq!(c.buffered(), 0);
    assert_ne!(c.fwd_cnt, before);
    assert_eq!(c.interest(), (true, false));
    // The guest never heard of any of it: an update is due, carrying the new count.
    assert!(c.has_rx_work());
    let h = c.next_packet(&mut [0u8; 0], now).unwrap();
    assert_eq!(Op::from_raw(h.op), Some(Op::CreditUpdate));
    assert_eq!(h.fwd_cnt, c.fwd_cnt.0);
    assert!(!c.has_rx_work());
}

#[test]
fn guest_shutdown_send_half_closes_the_host_stream() {
    let (mut c, peer) = established();
    let now = Instant::now();
    c.on_guest_packet(&guest(Op::Rw, 3), b"abc", now);
    let mut p = guest(Op::Shutdown, 0);
    p.hdr.flags = SHUTDOWN_SEND;
    c.on_guest_packet(&p, &[], now);
    assert_eq!(read_all(&peer), b"abc", "then end of file");
    assert_eq!(peer.recv(&mut [0u8; 4]).unwrap(), 0);
    // The host can still answer.
    peer.send(b"reply").unwrap();
    c.on_readable(false);
    let mut buf = [0u8; 16];
    assert_eq!(c.next_packet(&mut buf, now).unwrap().len, 5);
    // Data after SHUTDOWN(SEND) is a protocol error.
    c.on_guest_packet(&guest(Op::Rw, 1), b"x", now);
    assert_eq!(c.kill_reason(), Some(KillReason::Protocol));
}

#[test]
fn guest_shutdown_both_finishes() {
    let (mut c, _peer) = established();
    let mut p = guest(Op::Shutdown, 0);
    p.hdr.flags = SHUTDOWN_RCV;
    c.on_guest_packet(&p, &[], Instant::now());
    assert_eq!(c.state(), State::Established);
    assert_eq!(
        c.interest(),
        (false, false),
        "the guest receives nothing more"
    );
    p.hdr.flags = SHUTDOWN_SEND;
    c.on_guest_packet(&p, &[], Instant::now());
    assert_eq!(c.kill_reason(), Some(KillReason::Finished));
}

#[test]
fn host_eof_becomes_shutdown() {
    // Half close: SEND only; the guest may still write.
    let (mut c, peer) = established();
    let now = Instant::now();
    peer.shutdown_write().unwrap();
    c.on_readable(false);
    let h = c.next_packet(&mut [0u8; 16], now).unwrap();
    assert_eq!(
        (Op::from_raw(h.op), h.flags),
        (Some(Op::Shutdown), SHUTDOWN_SEND)
    );
    assert_eq!(c.deadline(), None);
    c.on_guest_packet(&guest(Op::Rw, 2), b"ok", now);
    assert_eq!(read_all(&peer), b"ok");
    // Hang-up: both, with a deadline for the guest's RST.
    let (mut c, peer) = established();
    drop(peer);
    c.on_readable(true);
    let h = c.next_packet(&mut [0u8; 16], now).unwrap();
    assert_eq!(h.flags, SHUTDOWN_BOTH);
    assert_eq!(c.deadline(), Some(now + SHUTDOWN_TIMEOUT));
    c.on_guest_packet(&guest(Op::Rst, 0), &[], now);
    assert_eq!(c.state(), State::Closed);
}

#[test]
fn protocol_errors_kill() {
    let now = Instant::now();
    for op in [Op::Request, Op::Response] {
        let (mut c, _peer) = established();
        c.on_guest_packet(&guest(op, 0), &[], now);
        assert_eq!(c.kill_reason(), Some(KillReason::Protocol), "{op:?}");
        assert!(!c.has_rx_work());
        assert_eq!(c.interest(), (false, false));
    }
    // RW before the handshake finished.
    let (host_end, _peer) = Stream::pair().unwrap();
    let mut c = Connection::host_initiated(host_end, CID, 1 << 30, 52);
    c.on_guest_packet(&guest(Op::Rw, 1), b"x", now);
    assert_eq!(c.kill_reason(), Some(KillReason::Protocol));
}

#[test]
fn credit_request_is_answered_and_writing_to_a_dead_peer_kills() {
    let (mut c, peer) = established();
    let now = Instant::now();
    c.on_guest_packet(&guest(Op::CreditRequest, 0), &[], now);
    let h = c.next_packet(&mut [0u8; 16], now).unwrap();
    assert_eq!(Op::from_raw(h.op), Some(Op::CreditUpdate));
    assert_eq!(h.buf_alloc, BUF_ALLOC);
    drop(peer);
    c.on_guest_packet(&guest(Op::Rw, 1), b"x", now);
    assert_eq!(c.kill_reason(), Some(KillReason::HostIo));
}
