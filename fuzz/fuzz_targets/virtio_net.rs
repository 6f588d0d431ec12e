//! virtio-net as a guest and the host drive it (`vmm/src/devices/virtio/net/` behind
//! `devices/virtio/mmio/`): a `Net` on a tap stand-in (one end of a `SOCK_SEQPACKET` pair,
//! `Tap::from_file`: one frame per read and write, as a tap), optionally with tiny rate
//! limiters, attached to the MMIO bus and served by the VMM thread's event loop
//! (`kiln_fuzz::machine`). The guest (`kiln_fuzz::driver`) sets up both queues, posts receive
//! buffers and transmit chains anywhere, notifies, corrupts its rings, resets; the host sends
//! frames (whole, short, in bursts) and reads what the guest sent. The device's receive path
//! runs when the event loop sees the tap readable (it watches the tap while the guest has
//! buffers), its transmit path on the guest's notifications.
//!
//! Input (structured, `arbitrary`): MAC, MTU, rate limiters, the driver's initialisation,
//! then guest and host operations.
//!
//! Checks, besides the machine's (writes only in device-writable buffers and used rings,
//! used entries only for heads the ring held, status follows the device):
//! - every frame the host reads is 12 to 65548 bytes with a zeroed virtio-net header, and
//!   there are no more of them than transmit chains the device returned;
//! - what the guest receives, read back from its buffers in used-ring order, is a sequence
//!   of the host's frames, whole and in order (some dropped), each with its header's
//!   `num_buffers` set to the number of buffers it took (1 without `MRG_RXBUF`). Host frames
//!   carry their sequence number after the header, so the stream can be cut back into them.
#![no_main]

use arbitrary::Arbitrary;
use kiln_fuzz::driver::{read_buffers, Addr, Buf, Driver, Op, QueueLayout};
use kiln_fuzz::host::tap_pair;
use kiln_fuzz::machine::{disjoint, Machine};
use libfuzzer_sys::fuzz_target;
use std::fs::File;
use std::io::{Read, Write};
use vmm::devices::rate_limiter::RateLimiter;
use vmm::devices::virtio::net::{Net, MAX_FRAME};
use vmm::resources::{MacAddr, NetworkInterfaceConfig, RateLimiterConfig, TokenBucketConfig};

const HDR: usize = 12;
/// A host frame: header, u32 sequence number, then its body.
const MIN_FRAME: usize = HDR + 4;

#[derive(Debug, Arbitrary)]
enum Step {
    Guest(Op),
    /// `n % 8 + 1` receive buffers of `len % 0x2000 + 1` bytes from `at` on, each in a
    /// chain of its own (two buffers when `split`), posted and notified.
    RxBuffers {
        n: u8,
        len: u16,
        at: Addr,
        split: bool,
    },
    /// One frame to send (a 12-byte header, then `body`), from `at`, in two buffers when
    /// `split`; posted and notified.
    Transmit {
        body: Vec<u8>,
        at: Addr,
        split: bool,
    },
    /// One frame from the host: this header, the frame's sequence number, `body`, and
    /// `pad` more bytes (up to 64 KiB frames).
    HostSend {
        hdr: [u8; HDR],
        body: Vec<u8>,
        pad: u16,
    },
    /// A frame shorter than the header (the device drops it).
    HostShort(u8),
    /// `n % 80` frames of `len` bytes at once.
    Burst {
        n: u8,
        len: u16,
    },
    /// The host reads every frame waiting.
    HostRecv,
}

#[derive(Debug, Arbitrary)]
struct Case {
    mac: Option<[u8; 6]>,
    mtu: Option<u16>,
    /// (bytes, ops) buckets, refilled once an hour, for receive and transmit.
    rx_limit: Option<(u16, u8)>,
    tx_limit: Option<(u16, u8)>,
    accept: u64,
    rx: QueueLayout,
    tx: QueueLayout,
    steps: Vec<Step>,
}

fn limiter(limit: Option<(u16, u8)>) -> RateLimiter {
    let cfg = limit.map(|(bytes, ops)| {
        let bucket = |size: u64| TokenBucketConfig {
            size: size.max(1),
            one_time_burst: None,
            refill_time: 3_600_000,
        };
        RateLimiterConfig {
            bandwidth: Some(bucket(u64::from(bytes))),
            ops: Some(bucket(u64::from(ops))),
        }
    });
    RateLimiter::new(cfg.as_ref()).expect("a timerfd")
}

/// The host's side: frames sent (by sequence number) and what it read.
struct Host {
    tap: File,
    sent: Vec<Vec<u8>>,
    /// The next frame the guest may receive (frames before it were delivered or dropped).
    cursor: usize,
    received: usize,
}

impl Host {
    fn send(&mut self, hdr: &[u8; HDR], body: &[u8], pad: usize) {
        let mut frame = hdr.to_vec();
        frame.extend_from_slice(&(self.sent.len() as u32).to_le_bytes());
        frame.extend_from_slice(body);
        frame.resize((frame.len() + pad).min(MAX_FRAME), 0x5a);
        if self.tap.write(&frame).is_ok() {
            self.sent.push(frame);
        }
    }

    fn recv(&mut self) {
        let mut buf = vec![0u8; MAX_FRAME + 64];
        while let Ok(n) = self.tap.read(&mut buf) {
            assert!(
                (HDR..=MAX_FRAME).contains(&n),
                "the device sent a frame of {n} bytes"
            );
            assert!(
                buf[..HDR].iter().all(|&b| b == 0),
                "the device sent a virtio-net header it did not clear: {:?}",
                &buf[..HDR]
            );
            self.received += 1;
        }
    }

    /// Cuts what the guest received in one run back into host frames.
    fn check_received(&mut self, stream: &[u8]) {
        let mut pos = 0;
        while pos < stream.len() {
            let rest = &stream[pos..];
            assert!(
                rest.len() >= MIN_FRAME,
                "a received frame of {} bytes",
                rest.len()
            );
            let seq = u32::from_le_bytes(rest[HDR..HDR + 4].try_into().unwrap()) as usize;
            assert!(
                seq >= self.cursor && seq < self.sent.len(),
                "received frame {seq}, expected one from {} to {}",
                self.cursor,
                self.sent.len()
            );
            let want = &self.sent[seq];
            let got = &rest[..want.len().min(rest.len())];
            assert_eq!(got.len(), want.len(), "frame {seq} cut short");
            assert!(
                got[..10] == want[..10] && got[HDR..] == want[HDR..],
                "frame {seq} arrived changed"
            );
            let num_buffers = u16::from_le_bytes([got[10], got[11]]);
            assert!(
                num_buffers >= 1,
                "frame {seq} says it took {num_buffers} buffers"
            );
            self.cursor = seq + 1;
            pos += want.len();
        }
    }
}

fuzz_target!(|case: Case| {
    kiln_fuzz::setup();
    let cfg = NetworkInterfaceConfig {
        iface_id: "eth0".into(),
        host_dev_name: "fuzz-tap".into(),
        guest_mac: case.mac.map(MacAddr),
        mtu: case.mtu.map(|m| u64::from(m.max(68))),
        ..Default::default()
    };
    let (tap, host_end) = tap_pair();
    let dev =
        Net::with_tap(&cfg, tap).with_rate_limiters(limiter(case.rx_limit), limiter(case.tx_limit));
    let (mut m, _spy) = Machine::new(dev);
    let mut driver = Driver::default();
    driver.init(&mut m, case.accept, false, &[case.rx, case.tx]);
    let mut host = Host {
        tap: host_end,
        sent: Vec::new(),
        cursor: 0,
        received: 0,
    };
    let mut tx_used = 0usize;
    let end = [Step::Guest(Op::Run { waits: 4 }), Step::HostRecv];
    for step in case.steps.iter().chain(&end) {
        let used = match step {
            Step::Guest(op) => driver.apply(&mut m, op),
            Step::RxBuffers { n, len, at, split } => {
                let len = u32::from(len % 0x2000) + 1;
                let mut addr = at.get(1);
                for _ in 0..n % 8 + 1 {
                    let bufs = if *split && len > 1 {
                        vec![
                            Buf::new(addr, len / 2, true, Vec::new()),
                            Buf::new(
                                addr.wrapping_add(u64::from(len / 2)),
                                len - len / 2,
                                true,
                                Vec::new(),
                            ),
                        ]
                    } else {
                        vec![Buf::new(addr, len, true, Vec::new())]
                    };
                    driver.apply(&mut m, &post(0, bufs, true));
                    addr = addr.wrapping_add(u64::from(len));
                }
                driver.apply(
                    &mut m,
                    &Op::Publish {
                        queue: 0,
                        jump: None,
                    },
                );
                driver.apply(
                    &mut m,
                    &Op::Notify {
                        queue: 0,
                        raw: None,
                    },
                )
            }
            Step::Transmit { body, at, split } => {
                let mut frame = vec![0u8; HDR];
                frame.extend_from_slice(body);
                let addr = at.get(1);
                let bufs = if *split {
                    let tail = frame.split_off(HDR);
                    let n = tail.len() as u32;
                    vec![
                        Buf::new(addr, HDR as u32, false, frame),
                        Buf::new(addr.wrapping_add(HDR as u64 + 16), n, false, tail),
                    ]
                } else {
                    let n = frame.len() as u32;
                    vec![Buf::new(addr, n, false, frame)]
                };
                driver.apply(&mut m, &post(1, bufs, false))
            }
            Step::HostSend { hdr, body, pad } => {
                host.send(hdr, body, usize::from(*pad));
                Vec::new()
            }
            Step::HostShort(n) => {
                let _ = host.tap.write(&vec![0u8; usize::from(n % 12)]);
                Vec::new()
            }
            Step::Burst { n, len } => {
                for _ in 0..n % 80 {
                    host.send(&[0; HDR], &[], usize::from(*len));
                }
                Vec::new()
            }
            Step::HostRecv => {
                host.recv();
                Vec::new()
            }
        };
        tx_used += used.get(1).map_or(0, Vec::len);
        // What the guest received in this run, in used-ring order.
        if let Some(rx) = used.first() {
            let chains: Vec<(Vec<(u64, u32)>, u32)> = rx
                .iter()
                .map(|&(id, len)| (m.writable_buffers(0, id), len))
                .collect();
            // Buffers over each other: what the device wrote first is gone (not checked).
            if disjoint(chains.iter().flat_map(|c| &c.0)) {
                let mut stream = Vec::new();
                for (bufs, len) in &chains {
                    stream.extend(read_buffers(&m, bufs, *len as usize));
                }
                host.check_received(&stream);
            }
        }
    }
    kiln_fuzz::debug(|| {
        format!(
            "host sent {} frames, the guest got up to #{}, the host received {} ({tx_used} transmit chains used)",
            host.sent.len(),
            host.cursor,
            host.received
        )
    });
    if m.unchecked_runs == 0 {
        assert!(
            host.received <= tx_used,
            "the host received {} frames, the device used {tx_used} transmit chains",
            host.received
        );
    }
});

fn post(queue: u8, bufs: Vec<Buf>, hold: bool) -> Op {
    Op::Post {
        queue,
        first: None,
        bufs,
        hold,
    }
}
