//! virtio-vsock as a guest and host processes drive it (`vmm/src/devices/virtio/vsock/`:
//! the device's queue handling, its muxer with the listening socket, host connections and
//! their `CONNECT` lines, guest connections to `<uds_path>_<port>`, the connection table;
//! behind `devices/virtio/mmio/`): a `Vsock` bound in a scratch directory, attached to the
//! MMIO bus and served by the VMM thread's event loop (`kiln_fuzz::machine`), which runs the
//! queues on the guest's notifications and the muxer when its epoll set is readable.
//!
//! Guest side (`kiln_fuzz::driver`, plus packets built from fields): transmit packets (any
//! op, ports, credit, flags, payload; a wrong CID or a short header now and then), receive
//! buffers, ring corruption, resets. Host side: processes connecting to `uds_path` and
//! sending a `CONNECT` line (or something else), listeners at `<uds_path>_<port>` for the
//! guest's connections, and each connection's host end writing, reading, shutting down,
//! hanging up.
//!
//! Input (structured, `arbitrary`): the guest's CID, the driver's initialisation of the
//! three queues, then guest and host operations.
//!
//! Checks, besides the machine's (writes only in device-writable buffers and used rings,
//! used entries only for heads the ring held, status follows the device): every packet the
//! device puts in a receive buffer is from the host (CID 2) to the guest's CID, of type
//! STREAM, a known op, its length what the used entry says after the header and at most
//! 64 KiB, data only in RW packets; the guest never receives more data than the host
//! processes wrote, and they never read more than the guest sent (plus `OK` lines).
#![no_main]

use arbitrary::Arbitrary;
use kiln_fuzz::driver::{read_buffers, Buf, Driver, Op, QueueLayout};
use kiln_fuzz::host::vsock_dir;
use kiln_fuzz::machine::{disjoint, Machine};
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use vmm::devices::virtio::vsock::packet::{Header, Op as VOp, HDR_LEN, HOST_CID, MAX_PAYLOAD};
use vmm::devices::virtio::vsock::Vsock;
use vmm::resources::VsockConfig;

const RX: u8 = 0;
const TX: u8 = 1;

#[derive(Debug, Arbitrary)]
struct Packet {
    /// `op % 8`: 1 to 7 are the ops (0 is none).
    op: u8,
    /// The guest's port.
    src_port: Port,
    /// The host's port.
    dst_port: Port,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
    payload: Vec<u8>,
    /// Header and payload in one buffer (else two).
    one_buffer: bool,
    /// Mostly 0; by the top nibble 0xf, something wrong, from `raw`: 0xf0 the source CID,
    /// 0xf1 the destination CID, 0xf2 the type, 0xf3 the header cut short, 0xf4 the claimed
    /// length, 0xf5 the op.
    quirk: u8,
    raw: u64,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Port {
    /// One of the ports the host listens on (`LISTEN_PORTS`).
    Listening(u8),
    /// The n-th port the muxer hands host connections (from 2^30).
    Local(u8),
    Any(u32),
}

const LISTEN_PORTS: [u32; 3] = [52, 1024, 7000];

impl Port {
    fn get(self) -> u32 {
        match self {
            Port::Listening(n) => LISTEN_PORTS[usize::from(n) % LISTEN_PORTS.len()],
            Port::Local(n) => (1 << 30) + u32::from(n % 4),
            Port::Any(p) => p,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Step {
    Guest(Op),
    /// A packet on the transmit queue, notified.
    Send(Packet),
    /// `n % 8 + 1` receive buffers of `len % 4096 + 1` bytes, in two pieces when `split`,
    /// notified.
    RxBuffers {
        n: u8,
        len: u16,
        split: bool,
    },
    /// A host process connects to `uds_path` and sends `CONNECT <port>\n` (or `line`).
    Connect {
        port: Port,
        line: Option<Vec<u8>>,
    },
    /// The host accepts what the guest connected to its listeners.
    Accept,
    /// The host end of connection `conn` writes `n % 8192` bytes of `fill`.
    HostWrite {
        conn: u8,
        fill: u8,
        n: u16,
    },
    HostRead {
        conn: u8,
    },
    HostShutdown {
        conn: u8,
    },
    HostClose {
        conn: u8,
    },
}

#[derive(Debug, Arbitrary)]
struct Case {
    cid: u8,
    accept: u64,
    queues: [QueueLayout; 3],
    steps: Vec<Step>,
}

/// The host's processes: listeners, connections, and the byte counts the checks need.
#[derive(Default)]
struct Host {
    listeners: Vec<UnixListener>,
    conns: Vec<UnixStream>,
    wrote: u64,
    read: u64,
}

impl Host {
    fn conn(&mut self, n: u8) -> Option<&mut UnixStream> {
        let len = self.conns.len();
        (len > 0).then(|| &mut self.conns[usize::from(n) % len])
    }

    fn drain(&mut self, n: u8) {
        if let Some(c) = self.conn(n) {
            let mut buf = [0u8; 16384];
            let mut got = 0u64;
            while let Ok(k) = c.read(&mut buf) {
                if k == 0 {
                    break;
                }
                got += k as u64;
            }
            self.read += got;
        }
    }
}

fuzz_target!(|case: Case| {
    kiln_fuzz::setup();
    let cid = 3 + u64::from(case.cid % 4);
    let dir = vsock_dir();
    let uds = dir.join("v.sock");
    let uds_path = uds.to_str().expect("a UTF-8 path").to_string();
    let mut host = Host::default();
    for port in LISTEN_PORTS {
        let l = UnixListener::bind(format!("{uds_path}_{port}")).expect("a listener binds");
        l.set_nonblocking(true).expect("nonblocking");
        host.listeners.push(l);
    }
    let cfg = VsockConfig {
        vsock_id: None,
        guest_cid: cid as u32,
        uds_path: uds_path.clone(),
    };
    let (mut m, _spy) = Machine::new(Vsock::new(&cfg).expect("the vsock socket binds"));
    let mut driver = Driver::default();
    driver.init(&mut m, case.accept, false, &case.queues);

    let mut guest_sent = 0u64;
    let mut guest_got = 0u64;
    let mut ok_lines = 0u64;
    let end = [Step::Guest(Op::Run { waits: 4 }), Step::Accept];
    for step in case.steps.iter().chain(&end) {
        let used = match step {
            Step::Guest(op) => driver.apply(&mut m, op),
            Step::Send(p) => {
                let mut hdr = Header {
                    src_cid: cid,
                    dst_cid: HOST_CID,
                    src_port: p.src_port.get(),
                    dst_port: p.dst_port.get(),
                    len: p.payload.len() as u32,
                    type_: 1,
                    op: u16::from(p.op % 8),
                    flags: p.flags,
                    buf_alloc: p.buf_alloc,
                    fwd_cnt: p.fwd_cnt,
                };
                match p.quirk {
                    0xf0 => hdr.src_cid = p.raw,
                    0xf1 => hdr.dst_cid = p.raw,
                    0xf2 => hdr.type_ = p.raw as u16,
                    0xf4 => hdr.len = p.raw as u32,
                    0xf5 => hdr.op = p.raw as u16,
                    _ => {}
                }
                if hdr.op == VOp::Rw as u16 {
                    guest_sent += u64::from(hdr.len.min(p.payload.len() as u32));
                }
                let mut bytes = hdr.to_bytes().to_vec();
                if p.quirk == 0xf3 {
                    bytes.truncate(p.raw as usize % HDR_LEN);
                }
                let bufs = if p.one_buffer {
                    bytes.extend_from_slice(&p.payload);
                    vec![data_buf(0x100, bytes)]
                } else {
                    vec![
                        data_buf(0x100, bytes),
                        data_buf(0x2_4000, p.payload.clone()),
                    ]
                };
                driver.apply(&mut m, &post(TX, bufs, false));
                Vec::new()
            }
            Step::RxBuffers { n, len, split } => {
                let len = u32::from(len % 4096) + 1;
                for i in 0..u64::from(n % 8) + 1 {
                    // Each buffer in its own part of region 1, beside the data of `Send`.
                    let at = 0x2_8000 + i * 0x1000;
                    let bufs = if *split && len > 1 {
                        vec![
                            rx_buf(at, len / 2),
                            rx_buf(at + u64::from(len / 2), len - len / 2),
                        ]
                    } else {
                        vec![rx_buf(at, len)]
                    };
                    driver.apply(&mut m, &post(RX, bufs, true));
                }
                driver.apply(
                    &mut m,
                    &Op::Publish {
                        queue: RX,
                        jump: None,
                    },
                );
                driver.apply(
                    &mut m,
                    &Op::Notify {
                        queue: RX,
                        raw: None,
                    },
                );
                Vec::new()
            }
            Step::Connect { port, line } => {
                if let Ok(mut s) = UnixStream::connect(&uds) {
                    let _ = s.set_nonblocking(true);
                    let text = match line {
                        Some(l) => l.clone(),
                        None => format!("CONNECT {}\n", port.get()).into_bytes(),
                    };
                    let _ = s.write(&text);
                    host.conns.push(s);
                    ok_lines += 1;
                }
                Vec::new()
            }
            Step::Accept => {
                for l in &host.listeners {
                    while let Ok((s, _)) = l.accept() {
                        let _ = s.set_nonblocking(true);
                        host.conns.push(s);
                    }
                }
                Vec::new()
            }
            Step::HostWrite { conn, fill, n } => {
                if let Some(c) = host.conn(*conn) {
                    let bytes = vec![*fill; usize::from(n % 8192)];
                    if let Ok(k) = c.write(&bytes) {
                        host.wrote += k as u64;
                    }
                }
                Vec::new()
            }
            Step::HostRead { conn } => {
                host.drain(*conn);
                Vec::new()
            }
            Step::HostShutdown { conn } => {
                if let Some(c) = host.conn(*conn) {
                    let _ = c.shutdown(std::net::Shutdown::Write);
                }
                Vec::new()
            }
            Step::HostClose { conn } => {
                let len = host.conns.len();
                if len > 0 {
                    host.drain(*conn);
                    host.conns.remove(usize::from(*conn) % len);
                }
                Vec::new()
            }
        };
        // Every packet the guest received (when its buffers do not overlap: then what the
        // device wrote first is gone).
        let rx: Vec<(Vec<(u64, u32)>, u32)> = used
            .first()
            .into_iter()
            .flatten()
            .map(|&(id, len)| (m.writable_buffers(usize::from(RX), id), len))
            .collect();
        if !disjoint(rx.iter().flat_map(|c| &c.0)) {
            continue;
        }
        for (bufs, len) in &rx {
            let len = *len;
            if len == 0 {
                continue;
            }
            let bytes = read_buffers(&m, bufs, len as usize);
            assert!(bytes.len() >= HDR_LEN, "a receive entry of {len} bytes");
            let h = Header::from_bytes(&bytes).expect("a whole header");
            assert_eq!((h.src_cid, h.dst_cid), (HOST_CID, cid), "{h:?}");
            assert_eq!(h.type_, 1, "{h:?}");
            let op = VOp::from_raw(h.op).expect("a known op");
            assert_eq!(
                h.len as usize,
                bytes.len() - HDR_LEN,
                "{h:?} in {len} bytes"
            );
            assert!(h.len <= MAX_PAYLOAD);
            if op == VOp::Rw {
                assert!(h.len > 0, "an empty RW packet");
                guest_got += u64::from(h.len);
            } else {
                assert_eq!(h.len, 0, "a {op:?} packet with data");
            }
        }
    }
    for n in 0..host.conns.len() {
        host.drain(n as u8);
    }
    kiln_fuzz::debug(|| {
        format!(
            "{} host connections; the host wrote {} and read {}; the guest sent {guest_sent}, got {guest_got}",
            host.conns.len(),
            host.wrote,
            host.read
        )
    });
    assert!(
        guest_got <= host.wrote,
        "the guest got {guest_got} bytes, the host wrote {}",
        host.wrote
    );
    // `OK <port>\n` is at most 14 bytes per connection the host made.
    assert!(
        host.read <= guest_sent + 14 * ok_lines,
        "the host read {} bytes, the guest sent {guest_sent}",
        host.read
    );
});

fn data_buf(at: u64, data: Vec<u8>) -> Buf {
    Buf::new(at, data.len() as u32, false, data)
}

fn rx_buf(at: u64, len: u32) -> Buf {
    Buf::new(at, len, true, Vec::new())
}

fn post(queue: u8, bufs: Vec<Buf>, hold: bool) -> Op {
    Op::Post {
        queue,
        first: None,
        bufs,
        hold,
    }
}
