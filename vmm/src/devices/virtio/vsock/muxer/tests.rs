use super::*;
use crate::devices::virtio::vsock::packet::{SHUTDOWN_BOTH, SHUTDOWN_SEND};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

const CID: u64 = 3;

#[test]
fn connect_lines() {
    let ok: &[(&[u8], u32)] = &[
        (b"CONNECT 52", 52),
        (b"connect 0", 0),
        (b"Connect 4294967295", u32::MAX),
        (b"CONNECT 52\r", 52),
        (b"  CONNECT\t1234  ", 1234),
        (b"CONNECT 007", 7),
    ];
    for (line, port) in ok {
        assert_eq!(parse_connect_line(line), Ok(*port), "{line:?}");
    }
    let bad: &[(&[u8], ConnectLineError)] = &[
        (b"", ConnectLineError::NotConnect),
        (b"CONNECT", ConnectLineError::NoPort),
        (b"CONNECTX 5", ConnectLineError::NotConnect),
        (b"GET / HTTP/1.1", ConnectLineError::NotConnect),
        (b"CONNECT -1", ConnectLineError::BadPort("-1".into())),
        (b"CONNECT +5", ConnectLineError::BadPort("+5".into())),
        (b"CONNECT 0x10", ConnectLineError::BadPort("0x10".into())),
        (
            b"CONNECT 4294967296",
            ConnectLineError::BadPort("4294967296".into()),
        ),
        (
            b"CONNECT 99999999999",
            ConnectLineError::BadPort("99999999999".into()),
        ),
        (b"CONNECT 5 6", ConnectLineError::TrailingWords),
        (b"CONNECT \xff5", ConnectLineError::NotAscii),
        (b"\0\0\0", ConnectLineError::NotConnect),
    ];
    for (line, err) in bad {
        assert_eq!(parse_connect_line(line).as_ref(), Err(err), "{line:?}");
    }
}

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("kiln-vsock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn guest_pkt(op: Op, src_port: u32, dst_port: u32, len: u32) -> TxPacket {
    TxPacket {
        hdr: crate::devices::virtio::vsock::tests::hdr(op, src_port, dst_port, len),
        op,
    }
}

fn drain(m: &mut Muxer) -> Vec<(Op, Header, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4096];
    let now = Instant::now();
    while let Some(h) = m.next_rx_packet(&mut buf, now) {
        let data = buf[..h.len as usize].to_vec();
        out.push((Op::from_raw(h.op).unwrap(), h, data));
    }
    out
}

/// Processes events until `cond` holds (at most ~2 s).
fn pump(m: &mut Muxer, mut cond: impl FnMut(&mut Muxer) -> bool) {
    for _ in 0..400 {
        m.process_events(Instant::now());
        if cond(m) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("condition not reached");
}

#[test]
fn an_existing_file_is_a_clear_error() {
    let d = Dir::new("exists");
    let p = d.path("v.sock");
    std::fs::write(&p, b"").unwrap();
    let err = Muxer::new(CID, &p).err().unwrap();
    assert!(matches!(err, MuxerError::SocketExists { .. }));
    assert!(err.to_string().contains("already exists"), "{err}");
}

#[test]
fn guest_initiated_round_trip() {
    let d = Dir::new("g2h");
    let uds = d.path("v.sock");
    let mut m = Muxer::new(CID, &uds).unwrap();
    let host = UnixListener::bind(format!("{uds}_1234")).unwrap();
    let now = Instant::now();
    m.on_guest_packet(&guest_pkt(Op::Request, 5000, 1234, 0), &[], now);
    let got = drain(&mut m);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, Op::Response);
    assert_eq!((got[0].1.src_port, got[0].1.dst_port), (1234, 5000));
    let (mut s, _) = host.accept().unwrap();
    m.on_guest_packet(&guest_pkt(Op::Rw, 5000, 1234, 5), b"hello", now);
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    s.write_all(b"HELLO").unwrap();
    let mut data = Vec::new();
    pump(&mut m, |m| {
        data.extend(drain(m).into_iter().flat_map(|p| p.2));
        data.len() >= 5
    });
    assert_eq!(data, b"HELLO");
    // The guest closes: both directions, then an RST and the host stream is closed.
    let mut sd = guest_pkt(Op::Shutdown, 5000, 1234, 0);
    sd.hdr.flags = SHUTDOWN_BOTH;
    m.on_guest_packet(&sd, &[], now);
    let got = drain(&mut m);
    assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), [Op::Rst]);
    assert_eq!(m.connection_count(), 0);
    assert_eq!(s.read(&mut buf).unwrap(), 0);
}

#[test]
fn nobody_listening_is_an_rst_and_unknown_packets_too() {
    let d = Dir::new("refused");
    let mut m = Muxer::new(CID, &d.path("v.sock")).unwrap();
    let now = Instant::now();
    m.on_guest_packet(&guest_pkt(Op::Request, 1, 9999, 0), &[], now);
    m.on_guest_packet(&guest_pkt(Op::Rw, 2, 9999, 1), b"x", now);
    m.on_guest_packet(&guest_pkt(Op::Rst, 3, 9999, 0), &[], now);
    let got = drain(&mut m);
    let ports: Vec<_> = got.iter().map(|p| (p.0, p.1.dst_port)).collect();
    assert_eq!(ports, [(Op::Rst, 1), (Op::Rst, 2)]);
    assert_eq!(m.connection_count(), 0);
}

#[test]
fn queued_rsts_are_bounded() {
    let d = Dir::new("rstq");
    let mut m = Muxer::new(CID, &d.path("v.sock")).unwrap();
    let now = Instant::now();
    for port in 0..(MAX_QUEUED_RSTS as u32 + 50) {
        m.on_guest_packet(&guest_pkt(Op::Rw, port, 7, 0), &[], now);
    }
    assert_eq!(drain(&mut m).len(), MAX_QUEUED_RSTS);
}

fn host_connect(uds: &str, line: &[u8]) -> UnixStream {
    let mut s = UnixStream::connect(uds).unwrap();
    s.write_all(line).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

#[test]
fn host_initiated_round_trip() {
    let d = Dir::new("h2g");
    let uds = d.path("v.sock");
    let mut m = Muxer::new(CID, &uds).unwrap();
    // The line and the first data in one write: the data must wait for the guest.
    let mut s = host_connect(&uds, b"CONNECT 52\nearly");
    let mut req = None;
    pump(&mut m, |m| {
        req = drain(m).into_iter().find(|p| p.0 == Op::Request);
        req.is_some()
    });
    let req = req.unwrap().1;
    assert_eq!(req.dst_port, 52);
    assert_eq!(req.src_port, FIRST_LOCAL_PORT);
    let mut resp = guest_pkt(Op::Response, 52, req.src_port, 0);
    resp.hdr.buf_alloc = 4096;
    m.on_guest_packet(&resp, &[], Instant::now());
    let mut line = [0u8; 14];
    s.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"OK 1073741824\n");
    let mut data = Vec::new();
    pump(&mut m, |m| {
        data.extend(drain(m).into_iter().flat_map(|p| p.2));
        data.len() >= 5
    });
    assert_eq!(data, b"early");
    // The host hangs up: SHUTDOWN both; the guest's RST removes it.
    drop(s);
    let mut sd = None;
    pump(&mut m, |m| {
        sd = drain(m).into_iter().find(|p| p.0 == Op::Shutdown);
        sd.is_some()
    });
    assert_eq!(sd.unwrap().1.flags, SHUTDOWN_BOTH);
    m.on_guest_packet(
        &guest_pkt(Op::Rst, 52, req.src_port, 0),
        &[],
        Instant::now(),
    );
    assert_eq!(m.connection_count(), 0);
    // A second connection gets the next port.
    let _s2 = host_connect(&uds, b"connect 53\n");
    let mut req2 = None;
    pump(&mut m, |m| {
        req2 = drain(m).into_iter().find(|p| p.0 == Op::Request);
        req2.is_some()
    });
    assert_eq!(req2.unwrap().1.src_port, FIRST_LOCAL_PORT + 1);
}

#[test]
fn host_half_close_keeps_the_guest_direction() {
    let d = Dir::new("half");
    let uds = d.path("v.sock");
    let mut m = Muxer::new(CID, &uds).unwrap();
    let mut s = host_connect(&uds, b"CONNECT 52\n");
    let mut req = None;
    pump(&mut m, |m| {
        req = drain(m).into_iter().find(|p| p.0 == Op::Request);
        req.is_some()
    });
    let port = req.unwrap().1.src_port;
    m.on_guest_packet(&guest_pkt(Op::Response, 52, port, 0), &[], Instant::now());
    s.write_all(b"request").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    pump(&mut m, |m| {
        got.extend(drain(m));
        got.iter().any(|p| p.0 == Op::Shutdown)
    });
    let sd = got.iter().find(|p| p.0 == Op::Shutdown).unwrap();
    assert_eq!(sd.1.flags, SHUTDOWN_SEND);
    m.on_guest_packet(&guest_pkt(Op::Rw, 52, port, 5), b"reply", Instant::now());
    let mut buf = vec![0u8; 14 + 5];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf[14..], b"reply");
}

#[test]
fn bad_connect_lines_close_the_host_connection() {
    let d = Dir::new("garbage");
    let uds = d.path("v.sock");
    let mut m = Muxer::new(CID, &uds).unwrap();
    let long = [b'7'; 100];
    let lines: Vec<&[u8]> = vec![
        b"GARBAGE\n",
        b"CONNECT x\n",
        b"CONNECT 1 2\n",
        &long,
        b"CONNECT 5", // then end of file
    ];
    let mut streams = Vec::new();
    for l in &lines {
        let s = host_connect(&uds, l);
        if l == b"CONNECT 5" {
            s.shutdown(std::net::Shutdown::Write).unwrap();
        }
        streams.push(s);
    }
    let before = METRICS.vsock.host_connects_rejected.total();
    pump(&mut m, |m| {
        m.pending.is_empty() && METRICS.vsock.host_connects_rejected.total() >= before + 5
    });
    for mut s in streams {
        // End of file, or a reset when the muxer left bytes unread.
        let mut buf = [0u8; 8];
        match s.read(&mut buf) {
            Ok(n) => assert_eq!(n, 0, "closed without an answer"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        }
    }
    assert_eq!(m.connection_count(), 0);
    assert!(drain(&mut m).is_empty(), "the guest heard nothing");
}

#[test]
fn a_split_connect_line_is_assembled() {
    let d = Dir::new("split");
    let uds = d.path("v.sock");
    let mut m = Muxer::new(CID, &uds).unwrap();
    let mut s = host_connect(&uds, b"CONN");
    pump(&mut m, |m| {
        !m.pending.is_empty() && m.pending.values().all(|p| p.line.len() == 4)
    });
    s.write_all(b"ECT 77\n").unwrap();
    let mut req = None;
    pump(&mut m, |m| {
        req = drain(m).into_iter().find(|p| p.0 == Op::Request);
        req.is_some()
    });
    assert_eq!(req.unwrap().1.dst_port, 77);
}

#[test]
fn reset_drops_everything_but_keeps_listening() {
    let d = Dir::new("reset");
    let uds = d.path("v.sock");
    let mut m = Muxer::new(CID, &uds).unwrap();
    let mut s = host_connect(&uds, b"CONNECT 52\n");
    pump(&mut m, |m| m.connection_count() == 1);
    m.reset();
    assert_eq!(m.connection_count(), 0);
    assert!(!m.has_rx_work());
    let mut buf = [0u8; 4];
    assert_eq!(s.read(&mut buf).unwrap(), 0);
    let _s2 = host_connect(&uds, b"CONNECT 52\n");
    pump(&mut m, |m| m.connection_count() == 1);
}

#[test]
fn a_refused_packet_resets_its_connection() {
    let d = Dir::new("reject");
    let uds = d.path("v.sock");
    let mut m = Muxer::new(CID, &uds).unwrap();
    let _host = UnixListener::bind(format!("{uds}_80")).unwrap();
    m.on_guest_packet(&guest_pkt(Op::Request, 9, 80, 0), &[], Instant::now());
    let _ = drain(&mut m);
    assert_eq!(m.connection_count(), 1);
    m.reject(&guest_pkt(Op::Rw, 9, 80, 99).hdr);
    assert_eq!(m.connection_count(), 0);
    let got = drain(&mut m);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, Op::Rst);
}
