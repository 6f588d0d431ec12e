//! The device on mock queues: validation of what the guest transmits, round trips through real
//! Unix sockets, activation and resets.

#![allow(clippy::cast_possible_truncation)]

use super::packet::{Header, Op, HOST_CID, SHUTDOWN_BOTH, TYPE_STREAM};
use super::*;
use crate::devices::virtio::queue::tests::{mem, F_WRITE};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const CID: u32 = 3;
const SIZE: u16 = 16;
const RX_BUFS: u64 = 0x40000;
const TX_BUFS: u64 = 0x80000;
const BUF: u64 = 0x1000;

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("kiln-vsockdev-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn uds(&self) -> String {
        self.0.join("v.sock").to_str().unwrap().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A split ring laid out by hand (descriptors at `base`, available ring at `base + 0x1000`,
/// used ring at `base + 0x2000`), as a driver would.
struct TestRing {
    m: &'static GuestMemoryMmap,
    base: u64,
    size: u16,
}

impl TestRing {
    fn queue(&self) -> Queue {
        let mut q = Queue::new(QUEUE_SIZE).unwrap();
        q.set_size(self.size);
        q.try_set_desc_table_address(GuestAddress(self.base))
            .unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.base + 0x1000))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(self.base + 0x2000))
            .unwrap();
        q.set_ready(true);
        q
    }

    fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16) {
        let at = self.base + 16 * u64::from(i);
        self.m.write_obj(addr.to_le(), GuestAddress(at)).unwrap();
        self.m.write_obj(len.to_le(), GuestAddress(at + 8)).unwrap();
        self.m
            .write_obj(flags.to_le(), GuestAddress(at + 12))
            .unwrap();
    }

    fn set_avail(&self, slot: u16, head: u16) {
        let at = self.base + 0x1004 + 2 * u64::from(slot % self.size);
        self.m.write_obj(head.to_le(), GuestAddress(at)).unwrap();
    }

    fn set_avail_idx(&self, idx: u16) {
        self.m
            .write_obj(idx.to_le(), GuestAddress(self.base + 0x1002))
            .unwrap();
    }

    fn used_idx(&self) -> u16 {
        u16::from_le(self.m.read_obj(GuestAddress(self.base + 0x2002)).unwrap())
    }

    /// (id, len) of used entry `i`.
    fn used(&self, i: u16) -> (u32, u32) {
        let at = self.base + 0x2004 + 8 * u64::from(i % self.size);
        let id: u32 = self.m.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.m.read_obj(GuestAddress(at + 4)).unwrap();
        (u32::from_le(id), u32::from_le(len))
    }
}

/// A started device with three queues in 1 MiB of guest memory.
struct Rig {
    m: &'static GuestMemoryMmap,
    dev: Vsock,
    irq: Arc<Interrupt>,
    rxq: TestRing,
    txq: TestRing,
    rx_posted: u16,
    rx_seen: u16,
    tx_sent: u16,
    _dir: Dir,
}

fn config(dir: &Dir) -> VsockConfig {
    VsockConfig {
        vsock_id: None,
        guest_cid: CID,
        uds_path: dir.uds(),
    }
}

impl Rig {
    fn new(name: &str) -> Rig {
        Rig::with_size(name, SIZE)
    }

    fn with_size(name: &str, size: u16) -> Rig {
        let dir = Dir::new(name);
        let m: &'static GuestMemoryMmap = Box::leak(Box::new(mem()));
        let mut dev = Vsock::new(&config(&dir)).unwrap();
        let rxq = TestRing { m, base: 0, size };
        let txq = TestRing {
            m,
            base: 0x10000,
            size,
        };
        let evq = TestRing {
            m,
            base: 0x20000,
            size,
        };
        let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        dev.activate(Activation {
            mem: m.clone(),
            queues: vec![rxq.queue(), txq.queue(), evq.queue()],
            features: VIRTIO_F_VERSION_1,
            interrupt: irq.clone(),
        })
        .unwrap();
        Rig {
            m,
            dev,
            irq,
            rxq,
            txq,
            rx_posted: 0,
            rx_seen: 0,
            tx_sent: 0,
            _dir: dir,
        }
    }

    fn uds(&self) -> String {
        self.dev.uds_path().to_string()
    }

    /// Posts `n` receive buffers of `len` bytes and notifies.
    fn post_rx(&mut self, n: u16, len: u32) {
        for _ in 0..n {
            let slot = self.rx_posted % self.rxq.size;
            self.rxq
                .set_desc(slot, RX_BUFS + u64::from(slot) * BUF, len, F_WRITE);
            self.rxq.set_avail(slot, slot);
            self.rx_posted = self.rx_posted.wrapping_add(1);
        }
        self.rxq.set_avail_idx(self.rx_posted);
        self.dev.process_queue(RX_QUEUE, &mut EventCtx::default());
    }

    /// Transmits one chain of `bytes` (readable; `flags` for hostile layouts), returns its used
    /// length.
    fn send_raw(&mut self, bytes: &[u8], flags: u16) -> u32 {
        let slot = self.tx_sent % self.txq.size;
        let addr = TX_BUFS + u64::from(slot) * BUF;
        self.m.write_slice(bytes, GuestAddress(addr)).unwrap();
        self.txq.set_desc(slot, addr, bytes.len() as u32, flags);
        self.txq.set_avail(slot, slot);
        self.tx_sent = self.tx_sent.wrapping_add(1);
        self.txq.set_avail_idx(self.tx_sent);
        self.dev.process_queue(TX_QUEUE, &mut EventCtx::default());
        assert_eq!(self.txq.used_idx(), self.tx_sent);
        self.txq.used(slot).1
    }

    fn send(&mut self, h: Header, payload: &[u8]) {
        let mut bytes = h.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        assert_eq!(self.send_raw(&bytes, 0), 0);
    }

    /// The packets the device put in receive buffers since the last call.
    fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        let used = self.rxq.used_idx();
        while self.rx_seen != used {
            let (id, len) = self.rxq.used(self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let mut bytes = vec![0u8; len as usize];
            self.m
                .read_slice(&mut bytes, GuestAddress(RX_BUFS + u64::from(id) * BUF))
                .unwrap();
            let h = Header::from_bytes(&bytes).expect("a whole header");
            assert_eq!(h.len as usize + HDR_LEN, bytes.len());
            out.push((h, bytes[HDR_LEN..].to_vec()));
        }
        out
    }

    /// Runs the muxer's event handler until `cond` holds on what arrived (at most ~2 s).
    fn pump(
        &mut self,
        mut cond: impl FnMut(&[(Header, Vec<u8>)]) -> bool,
    ) -> Vec<(Header, Vec<u8>)> {
        let mut all = Vec::new();
        for _ in 0..400 {
            self.dev
                .process_fd(MUXER_TOKEN, EventSet::IN, &mut EventCtx::default());
            all.extend(self.received());
            if cond(&all) {
                return all;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("condition not reached; got {all:?}");
    }
}

/// A STREAM packet's header from the guest (CID 3) to the host, 64 KiB of credit offered.
pub(super) fn hdr(op: Op, src_port: u32, dst_port: u32, len: u32) -> Header {
    Header {
        src_cid: u64::from(CID),
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len,
        type_: TYPE_STREAM,
        op: op as u16,
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 0,
    }
}

fn ops(p: &[(Header, Vec<u8>)]) -> Vec<(u16, u32, u32)> {
    p.iter()
        .map(|(h, _)| (h.op, h.src_port, h.dst_port))
        .collect()
}

#[test]
fn identity_and_config() {
    let rig = Rig::new("config");
    assert_eq!(rig.dev.device_type(), 19);
    assert_eq!(rig.dev.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(rig.dev.features(), VIRTIO_F_VERSION_1);
    let mut d = [0u8; 8];
    rig.dev.read_config(0, &mut d);
    assert_eq!(u64::from_le_bytes(d), 3);
    let mut d = [0xffu8; 4];
    rig.dev.read_config(4, &mut d);
    assert_eq!(d, [0; 4]);
    rig.dev.read_config(8, &mut d);
    assert_eq!(d, [0; 4]);
}

#[test]
fn activation_needs_receive_and_transmit_queues() {
    let dir = Dir::new("activate");
    let m = mem();
    let mut dev = Vsock::new(&config(&dir)).unwrap();
    let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    let m: &'static GuestMemoryMmap = Box::leak(Box::new(m));
    let vq = TestRing {
        m,
        base: 0,
        size: SIZE,
    };
    let two = vec![vq.queue(), vq.queue()];
    let act = |queues| Activation {
        mem: m.clone(),
        queues,
        features: VIRTIO_F_VERSION_1,
        interrupt: irq.clone(),
    };
    assert_eq!(
        dev.activate(act(two)),
        Err(ActivateError::QueueCount { need: 3, got: 2 })
    );
    let not_ready = Queue::new(SIZE).unwrap();
    let qs = vec![vq.queue(), not_ready, vq.queue()];
    assert_eq!(
        dev.activate(act(qs)),
        Err(ActivateError::QueueNotReady(TX_QUEUE))
    );
    assert!(!dev.is_activated());
}

#[test]
fn hostile_packets_are_dropped_or_reset() {
    let mut rig = Rig::new("hostile");
    rig.post_rx(8, 0x1000);
    let cid_before = METRICS.vsock.bad_cid_packets.total();
    let bad_before = METRICS.vsock.bad_packets.total();
    let mal_before = METRICS.vsock.malformed_packets.total();
    // Wrong CIDs: dropped silently.
    rig.send(
        Header {
            src_cid: 4,
            ..hdr(Op::Request, 1, 2, 0)
        },
        &[],
    );
    rig.send(
        Header {
            dst_cid: 7,
            ..hdr(Op::Request, 1, 2, 0)
        },
        &[],
    );
    assert!(rig.received().is_empty());
    assert!(METRICS.vsock.bad_cid_packets.total() >= cid_before + 2);
    // Unknown op, wrong type, len beyond the chain, oversized len, RW for no connection: RST.
    rig.send(hdr(Op::Rw, 10, 20, 0), &[]);
    let mut h = hdr(Op::Rw, 11, 21, 0);
    h.op = 99;
    rig.send(h, &[]);
    let mut h = hdr(Op::Request, 12, 22, 0);
    h.type_ = 2;
    rig.send(h, &[]);
    rig.send(hdr(Op::Rw, 13, 23, 4096), b"only sixteen....");
    rig.send(hdr(Op::Rw, 14, 24, u32::MAX), &[]);
    let got = rig.received();
    let rst = Op::Rst as u16;
    assert_eq!(
        ops(&got),
        [
            (rst, 20, 10),
            (rst, 21, 11),
            (rst, 22, 12),
            (rst, 23, 13),
            (rst, 24, 14)
        ]
    );
    for (h, _) in &got {
        assert_eq!((h.src_cid, h.dst_cid, h.type_), (HOST_CID, 3, TYPE_STREAM));
    }
    assert!(METRICS.vsock.bad_packets.total() >= bad_before + 4);
    // An RST for nothing: no answer.
    rig.send(hdr(Op::Rst, 15, 25, 0), &[]);
    assert!(rig.received().is_empty());
    // Short chains and chains with writable buffers: dropped, the chain returned.
    assert_eq!(rig.send_raw(&[1u8; 10], 0), 0);
    assert_eq!(
        rig.send_raw(&hdr(Op::Request, 1, 2, 0).to_bytes(), F_WRITE),
        0
    );
    assert!(rig.received().is_empty());
    assert!(METRICS.vsock.malformed_packets.total() >= mal_before + 2);
    assert!(!rig.irq.needs_reset());
}

#[test]
fn guest_connects_to_a_host_listener() {
    let mut rig = Rig::new("g2h");
    let listener = UnixListener::bind(format!("{}_1234", rig.uds())).unwrap();
    rig.post_rx(4, 0x1000);
    rig.send(hdr(Op::Request, 49152, 1234, 0), &[]);
    let got = rig.received();
    assert_eq!(ops(&got), [(Op::Response as u16, 1234, 49152)]);
    assert_eq!(got[0].0.buf_alloc, connection::BUF_ALLOC);
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    rig.send(hdr(Op::Rw, 49152, 1234, 5), b"hello");
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    assert_eq!(rig.irq.status() & 1, 1, "used-buffer interrupt");
    s.write_all(b"HELLO!").unwrap();
    let got = rig.pump(|p| p.iter().map(|(_, d)| d.len()).sum::<usize>() >= 6);
    assert_eq!(got[0].0.op, Op::Rw as u16);
    assert_eq!(got[0].1, b"HELLO!");
    assert_eq!(got[0].0.fwd_cnt, 5);
    // The guest shuts down: RST, and the host reads end of file.
    let mut sd = hdr(Op::Shutdown, 49152, 1234, 0);
    sd.flags = SHUTDOWN_BOTH;
    rig.send(sd, &[]);
    assert_eq!(ops(&rig.received()), [(Op::Rst as u16, 1234, 49152)]);
    assert_eq!(s.read(&mut buf).unwrap(), 0);
}

#[test]
fn host_connects_to_a_guest_listener() {
    let mut rig = Rig::new("h2g");
    rig.post_rx(4, 0x1000);
    let mut s = UnixStream::connect(rig.uds()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"CONNECT 5000\n").unwrap();
    let got = rig.pump(|p| !p.is_empty());
    assert_eq!(ops(&got), [(Op::Request as u16, 1 << 30, 5000)]);
    rig.send(hdr(Op::Response, 5000, 1 << 30, 0), &[]);
    let mut line = [0u8; 14];
    s.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"OK 1073741824\n");
    s.write_all(b"ping").unwrap();
    let got = rig.pump(|p| !p.is_empty());
    assert_eq!(got[0].1, b"ping");
    rig.send(hdr(Op::Rw, 5000, 1 << 30, 4), b"PING");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"PING");
}

#[test]
fn no_receive_buffers_means_waiting_not_spinning() {
    let mut rig = Rig::new("starved");
    let listener = UnixListener::bind(format!("{}_7", rig.uds())).unwrap();
    // The REQUEST is handled, the RESPONSE waits for a buffer.
    rig.send(hdr(Op::Request, 100, 7, 0), &[]);
    assert!(rig.received().is_empty());
    let (mut s, _) = listener.accept().unwrap();
    rig.post_rx(1, 0x1000);
    assert_eq!(ops(&rig.received()), [(Op::Response as u16, 7, 100)]);
    s.write_all(b"data").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    // Readable, but nowhere to put it: handled once, then the socket is not watched.
    for _ in 0..3 {
        rig.dev
            .process_fd(MUXER_TOKEN, EventSet::IN, &mut EventCtx::default());
    }
    assert!(rig.received().is_empty());
    rig.post_rx(1, 0x1000);
    let got = rig.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, b"data");
}

#[test]
fn small_receive_buffers_are_refused_and_data_fits_the_buffer() {
    let mut rig = Rig::new("small");
    let listener = UnixListener::bind(format!("{}_8", rig.uds())).unwrap();
    rig.post_rx(1, 20);
    rig.send(hdr(Op::Request, 100, 8, 0), &[]);
    assert_eq!(rig.rxq.used_idx(), 1);
    assert_eq!(
        rig.rxq.used(0),
        (0, 0),
        "the 20-byte buffer came back empty"
    );
    rig.rx_seen = 1;
    rig.post_rx(1, (HDR_LEN + 3) as u32);
    assert_eq!(ops(&rig.received()), [(Op::Response as u16, 8, 100)]);
    let (mut s, _) = listener.accept().unwrap();
    s.write_all(b"abcdefgh").unwrap();
    rig.post_rx(3, (HDR_LEN + 3) as u32);
    let got = rig.pump(|p| p.iter().map(|(_, d)| d.len()).sum::<usize>() >= 8);
    let data: Vec<u8> = got.iter().flat_map(|(_, d)| d.clone()).collect();
    assert_eq!(data, b"abcdefgh");
    assert!(got.iter().all(|(_, d)| d.len() <= 3));
}

#[test]
fn a_broken_ring_needs_a_reset_and_reset_closes_connections() {
    let mut rig = Rig::new("reset");
    let listener = UnixListener::bind(format!("{}_9", rig.uds())).unwrap();
    rig.post_rx(2, 0x1000);
    rig.send(hdr(Op::Request, 100, 9, 0), &[]);
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    rig.txq.set_avail_idx(1000);
    rig.dev.process_queue(TX_QUEUE, &mut EventCtx::default());
    assert!(rig.irq.needs_reset());
    // The driver resets (vCPU thread); the VMM thread closes the host side.
    rig.dev.reset();
    let mut ctx = EventCtx::default();
    rig.dev.process_fd(MUXER_TOKEN, EventSet::IN, &mut ctx);
    assert_eq!(ctx.take_changes(), vec![(MUXER_TOKEN, None)]);
    let mut buf = [0u8; 4];
    assert_eq!(s.read(&mut buf).unwrap(), 0);
}

#[test]
fn a_full_ring_of_answers_is_delivered() {
    let mut rig = Rig::new("fullring");
    for port in 0..u32::from(SIZE) {
        rig.send(hdr(Op::Rw, port, 1, 0), &[]);
    }
    assert!(rig.received().is_empty(), "no receive buffers yet");
    rig.post_rx(SIZE, 0x1000);
    let got = rig.received();
    assert_eq!(got.len(), usize::from(SIZE));
    assert!(got.iter().all(|(h, _)| h.op == Op::Rst as u16));
    assert!(!rig.irq.needs_reset());
}

#[test]
fn transmit_work_per_event_is_bounded() {
    // 100 packets in one notification: 64 in the first turn, which asks for another.
    let mut rig = Rig::with_size("txbound", 128);
    let n: u16 = 100;
    for i in 0..n {
        let addr = TX_BUFS + u64::from(i % 64) * 0x100;
        let h = hdr(Op::Rw, u32::from(i), 1, 0);
        rig.m
            .write_slice(&h.to_bytes(), GuestAddress(addr))
            .unwrap();
        rig.txq.set_desc(i, addr, HDR_LEN as u32, 0);
        rig.txq.set_avail(i, i);
    }
    rig.txq.set_avail_idx(n);
    let mut ctx = EventCtx::default();
    rig.dev.process_queue(TX_QUEUE, &mut ctx);
    assert!(ctx.wants_again());
    assert_eq!(rig.txq.used_idx(), PACKETS_PER_EVENT as u16);
    let mut ctx = EventCtx::default();
    rig.dev.process_queue(TX_QUEUE, &mut ctx);
    assert!(!ctx.wants_again());
    assert_eq!(rig.txq.used_idx(), n);
    // The RSTs wait for receive buffers, 64 per turn as well.
    rig.post_rx(100, 0x100);
    assert_eq!(rig.rxq.used_idx(), PACKETS_PER_EVENT as u16);
    rig.dev
        .process_fd(MUXER_TOKEN, EventSet::IN, &mut EventCtx::default());
    assert_eq!(rig.rxq.used_idx(), n);
}
