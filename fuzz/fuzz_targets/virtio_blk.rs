//! The virtio-blk device as a guest drives it (`vmm/src/devices/virtio/block/` behind
//! `devices/virtio/mmio/`): a `Block` with its rate limiter, on a sparse in-memory disk of
//! any size up to what a file can be (2^63 bytes), attached to the MMIO bus and served by the
//! VMM thread's event loop (`kiln_fuzz::machine`). The guest (`kiln_fuzz::driver`) sets the
//! device up through its registers with the queue size and ring addresses it likes, posts
//! chains (headers, data and status buffers anywhere), notifies, corrupts its rings, resets.
//!
//! Input (structured, `arbitrary`): the drive (read-only, cache type, disk size, a tiny rate
//! limiter or none), the driver's initialisation, then guest operations: well-formed
//! requests (any type, sector near the start or the end of the disk or anywhere, up to 16
//! sectors, buffers anywhere) or anything a driver can do.
//!
//! Checks, besides the machine's (writes only in device-writable buffers and used rings,
//! used entries only for heads the ring held, status follows the device): the disk image
//! never changes size (nothing is written past its end), a read-only disk never changes, and
//! a used entry never claims more than the request's data and status.
#![no_main]

use arbitrary::Arbitrary;
use kiln_fuzz::driver::{Addr, Buf, Driver, Op, QueueLayout};
use kiln_fuzz::machine::Machine;
use kiln_fuzz::MemFile;
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use vmm::devices::rate_limiter::RateLimiter;
use vmm::devices::virtio::block::{Block, MAX_REQUEST_BYTES};
use vmm::resources::{CacheType, DriveConfig, RateLimiterConfig, TokenBucketConfig};

thread_local! {
    static DISK: RefCell<MemFile> = RefCell::new(MemFile::new("kiln-fuzz-disk"));
}

/// The largest file: what a drive's capacity can come from.
const MAX_FILE: u64 = i64::MAX as u64;
/// Disks up to this size get a recognisable image and are compared whole.
const SMALL: u64 = 64 * 1024;

#[derive(Debug, Arbitrary)]
enum DiskSize {
    /// `n % 128` sectors, with a recognisable image.
    Small(u8),
    /// `2^(bits % 64)` bytes, plus `extra % 512` (a partial last sector), sparse.
    Large { bits: u8, extra: u16 },
    /// Any size, sparse (clipped to the largest file).
    Raw(u64),
}

impl DiskSize {
    fn bytes(&self) -> u64 {
        match self {
            DiskSize::Small(n) => u64::from(n % 128) * 512,
            DiskSize::Large { bits, extra } => {
                (1u64 << (bits % 63)).saturating_add(u64::from(extra % 512))
            }
            DiskSize::Raw(v) => *v,
        }
        .min(MAX_FILE)
    }
}

#[derive(Debug, Arbitrary)]
struct Case {
    read_only: bool,
    writeback: bool,
    disk: DiskSize,
    /// Token buckets of (bytes, ops), refilled once a second: they run dry within an input.
    limiter: Option<(u16, u8)>,
    accept: u64,
    queue: QueueLayout,
    steps: Vec<Step>,
}

#[derive(Debug, Arbitrary)]
enum Step {
    Guest(Op),
    /// A request as a driver makes one: a 16-byte header (type, sector) in a readable
    /// buffer, `sectors % 17` sectors of data (writable for a read, readable for a write), a
    /// status byte, each where the input says; posted and notified.
    Request {
        kind: Kind,
        sector: Sector,
        sectors: u8,
        header: Addr,
        data: Addr,
        status: Addr,
        fill: u8,
    },
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Kind {
    In,
    Out,
    Flush,
    GetId,
    Other(u32),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Sector {
    /// From the start of the disk.
    Start(u8),
    /// Counting back from the end of the disk (and past it).
    End(u8),
    Any(u64),
}

/// The request's chain.
fn request(kind: Kind, sector: u64, sectors: u8, at: (Addr, Addr, Addr), fill: u8) -> Vec<Buf> {
    let t = match kind {
        Kind::In => 0,
        Kind::Out => 1,
        Kind::Flush => 4,
        Kind::GetId => 8,
        Kind::Other(t) => t,
    };
    let mut header = t.to_le_bytes().to_vec();
    header.extend_from_slice(&[0; 4]);
    header.extend_from_slice(&sector.to_le_bytes());
    let len = u32::from(sectors % 17) * 512;
    let reading = matches!(kind, Kind::In | Kind::GetId);
    let mut bufs = vec![Buf::new(at.0.get(1), 16, false, header)];
    if len > 0 {
        let data = if reading {
            Vec::new()
        } else {
            vec![fill; len as usize]
        };
        bufs.push(Buf::new(at.1.get(1), len, reading, data));
    }
    bufs.push(Buf::new(at.2.get(1), 1, true, Vec::new()));
    bufs
}

/// A recognisable image: sector n is filled with byte n.
fn image(len: u64) -> Vec<u8> {
    let mut image = vec![0u8; len as usize];
    for (n, sector) in image.chunks_mut(512).enumerate() {
        sector.fill(n as u8);
    }
    image
}

fuzz_target!(|case: Case| {
    kiln_fuzz::setup();
    let len = case.disk.bytes();
    DISK.with(|disk| {
        let mut disk = disk.borrow_mut();
        let small = len <= SMALL;
        let initial = if small { image(len) } else { Vec::new() };
        let path = if small {
            disk.set(&initial).to_string()
        } else {
            disk.set(&[]);
            disk.set_len(len).to_string()
        };
        let cfg = DriveConfig {
            drive_id: "fuzz".into(),
            path_on_host: path,
            is_root_device: true,
            is_read_only: case.read_only,
            partuuid: None,
            cache_type: if case.writeback {
                CacheType::Writeback
            } else {
                CacheType::Unsafe
            },
            ..Default::default()
        };
        let limiter = case.limiter.map(|(bytes, ops)| {
            let bucket = |size: u64| TokenBucketConfig {
                size: size.max(1),
                one_time_burst: None,
                refill_time: 1000,
            };
            RateLimiterConfig {
                bandwidth: Some(bucket(u64::from(bytes))),
                ops: Some(bucket(u64::from(ops))),
            }
        });
        let dev = Block::new(&cfg)
            .expect("the in-memory disk opens")
            .with_rate_limiter(RateLimiter::new(limiter.as_ref()).expect("a timerfd"));
        assert_eq!(dev.capacity(), len / 512);
        let (mut m, _spy) = Machine::new(dev);
        let mut driver = Driver::default();
        driver.init(&mut m, case.accept, false, &[case.queue]);
        let mut used = 0usize;
        let sectors = len / 512;
        let end = [Step::Guest(Op::Run { waits: 3 })];
        for step in case.steps.iter().chain(&end) {
            let new = match step {
                Step::Guest(op) => driver.apply(&mut m, op),
                Step::Request {
                    kind,
                    sector,
                    sectors: n,
                    header,
                    data,
                    status,
                    fill,
                } => {
                    let sector = match sector {
                        Sector::Start(s) => u64::from(*s),
                        Sector::End(s) => sectors.wrapping_sub(u64::from(*s)),
                        Sector::Any(s) => *s,
                    };
                    let bufs = request(*kind, sector, *n, (*header, *data, *status), *fill);
                    driver.apply(
                        &mut m,
                        &Op::Post {
                            queue: 0,
                            first: None,
                            bufs,
                            hold: false,
                        },
                    )
                }
            };
            for (id, claimed) in new.into_iter().flatten() {
                used += 1;
                // Data and one status byte at most, never more than the chain holds.
                let desc = m.seen.lock().unwrap().queues[0].desc;
                let room: u64 = m
                    .writable_buffers(0, id)
                    .iter()
                    .map(|b| u64::from(b.1))
                    .sum();
                assert!(
                    u64::from(claimed) <= MAX_REQUEST_BYTES + 1 && u64::from(claimed) <= room,
                    "a used length of {claimed} for chain {id} of {room} writable bytes (table at {desc:#x})",
                );
            }
        }
        kiln_fuzz::debug(|| {
            format!(
                "disk {len} bytes, status {:#x}, {used} used entries ({} runs unchecked)",
                m.status(),
                m.unchecked_runs
            )
        });
        drop(m);
        assert_eq!(disk.len(), len, "the disk image changed size");
        if small && case.read_only {
            let now = std::fs::read(disk.path()).expect("the disk reads back");
            assert!(now == initial, "a read-only disk was written");
        }
    });
});
