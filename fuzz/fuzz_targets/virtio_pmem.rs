//! The virtio-pmem device as a guest drives it (`vmm/src/devices/virtio/pmem/` behind
//! `devices/virtio/mmio/`): a `Pmem` device over a small in-memory backing file, optionally
//! behind a rate limiter with tiny buckets, attached to the MMIO bus and served by the VMM
//! thread's event loop (`kiln_fuzz::machine`); the guest (`kiln_fuzz::driver`) sets it up
//! with the ring addresses and size it likes, posts chains (flush requests well-formed or
//! not: `pmem::request::parse`), notifies, corrupts its rings, resets, writes the read-only
//! configuration space.
//!
//! Input (structured, `arbitrary`): the limiter (none, or 2 flushes refilled once an hour),
//! the driver's initialisation, then guest operations.
//!
//! Checks, besides the machine's (writes only in device-writable buffers and used rings,
//! used entries only for heads the ring held, status follows the device): a used entry is
//! 0 (refused) or 4 (a status written into a writable buffer of at least 4 bytes).
#![no_main]

use arbitrary::Arbitrary;
use kiln_fuzz::driver::{Driver, Op, QueueLayout};
use kiln_fuzz::machine::Machine;
use kiln_fuzz::MemFile;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use vmm::devices::rate_limiter::RateLimiter;
use vmm::devices::virtio::pmem::mapping::PmemMapping;
use vmm::devices::virtio::pmem::Pmem;
use vmm::resources::{RateLimiterConfig, TokenBucketConfig};

#[derive(Debug, Arbitrary)]
struct Case {
    limited: bool,
    accept: u64,
    queue: QueueLayout,
    ops: Vec<Op>,
}

/// One mapping of a 4 KiB file for every run (mapping is the slow part).
fn mapping() -> Arc<PmemMapping> {
    static MAP: OnceLock<Arc<PmemMapping>> = OnceLock::new();
    MAP.get_or_init(|| {
        let mut f = MemFile::new("pmem");
        let path = f.set(&[0x5a; 4096]).to_string();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .expect("the memfd");
        Arc::new(PmemMapping::new(&file, false).expect("a mapping"))
    })
    .clone()
}

fuzz_target!(|case: Case| {
    kiln_fuzz::setup();
    let mut dev = Pmem::new("p0", mapping(), 512 << 30);
    if case.limited {
        let bucket = |size| TokenBucketConfig {
            size,
            one_time_burst: None,
            // An hour: nothing refills within an input, however slow the build.
            refill_time: 3_600_000,
        };
        let cfg = RateLimiterConfig {
            bandwidth: None,
            ops: Some(bucket(2)),
        };
        dev = dev.with_rate_limiter(RateLimiter::new(Some(&cfg)).expect("a timerfd"));
    }
    let (mut m, _spy) = Machine::new(dev);
    let mut driver = Driver::default();
    driver.init(&mut m, case.accept, false, &[case.queue]);
    let mut answered = 0u64;
    for op in case.ops.iter().chain([&Op::Run { waits: 3 }]) {
        for (id, len) in driver.apply(&mut m, op).into_iter().flatten() {
            let room: u64 = m
                .writable_buffers(0, id)
                .iter()
                .map(|b| u64::from(b.1))
                .sum();
            assert!(
                len == 0 || (len == 4 && room >= 4),
                "a used length of {len} for a chain of {room} writable bytes"
            );
            answered += u64::from(len > 0);
        }
    }
    kiln_fuzz::debug(|| format!("{answered} flushes answered"));
});
