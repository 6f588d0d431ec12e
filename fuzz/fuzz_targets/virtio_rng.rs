//! The virtio-rng device as a guest drives it (`vmm/src/devices/virtio/rng/` behind
//! `devices/virtio/mmio/`): an `Entropy` device, optionally behind a rate limiter with tiny
//! buckets, attached to the MMIO bus and served by the VMM thread's event loop
//! (`kiln_fuzz::machine`); the guest (`kiln_fuzz::driver`) sets it up with the ring
//! addresses and size it likes, posts chains, notifies, corrupts its rings, resets.
//!
//! Input (structured, `arbitrary`): the limiter (none, or 3 requests and 4 KiB refilled once
//! an hour), the driver's initialisation, then guest operations.
//!
//! Checks, besides the machine's (writes only in device-writable buffers and used rings,
//! used entries only for heads the ring held, status follows the device): a used entry
//! never claims more than its chain's writable buffers nor more than 64 KiB, and, limited,
//! the device answers no more requests than its ops bucket holds and no more bytes than its
//! bandwidth bucket (or one request larger than it) allows.
#![no_main]

use arbitrary::Arbitrary;
use kiln_fuzz::driver::{Driver, Op, QueueLayout};
use kiln_fuzz::machine::Machine;
use libfuzzer_sys::fuzz_target;
use vmm::devices::rate_limiter::RateLimiter;
use vmm::devices::virtio::rng::{Entropy, MAX_REQUEST_BYTES};
use vmm::resources::{RateLimiterConfig, TokenBucketConfig};

/// The limited device's buckets: 3 requests, 4 KiB.
const LIMIT_OPS: u64 = 3;
const LIMIT_BYTES: u64 = 4096;

#[derive(Debug, Arbitrary)]
struct Case {
    limited: bool,
    accept: u64,
    queue: QueueLayout,
    ops: Vec<Op>,
}

fuzz_target!(|case: Case| {
    kiln_fuzz::setup();
    let mut dev = Entropy::new();
    if case.limited {
        let bucket = |size| TokenBucketConfig {
            size,
            one_time_burst: None,
            // An hour: nothing refills within an input, however slow the build.
            refill_time: 3_600_000,
        };
        let cfg = RateLimiterConfig {
            bandwidth: Some(bucket(LIMIT_BYTES)),
            ops: Some(bucket(LIMIT_OPS)),
        };
        dev = dev.with_rate_limiter(RateLimiter::new(Some(&cfg)).expect("a timerfd"));
    }
    let (mut m, _spy) = Machine::new(dev);
    let mut driver = Driver::default();
    driver.init(&mut m, case.accept, false, &[case.queue]);
    let mut answered = 0u64;
    let mut claimed = 0u64;
    for op in case.ops.iter().chain([&Op::Run { waits: 3 }]) {
        // A reset gives the device a new activation, but not the limiter new tokens.
        for (id, len) in driver.apply(&mut m, op).into_iter().flatten() {
            let room: u64 = m
                .writable_buffers(0, id)
                .iter()
                .map(|b| u64::from(b.1))
                .sum();
            assert!(
                len as usize <= MAX_REQUEST_BYTES && u64::from(len) <= room,
                "a used length of {len} for a chain of {room} writable bytes"
            );
            claimed += u64::from(len);
            answered += u64::from(len > 0);
        }
    }
    kiln_fuzz::debug(|| format!("{answered} requests answered, {claimed} bytes"));
    if case.limited {
        // Chains returned empty (not requests) take no tokens; answers each took an op.
        assert!(
            answered <= LIMIT_OPS,
            "{answered} requests answered by a limiter of {LIMIT_OPS}"
        );
        assert!(
            claimed <= LIMIT_BYTES.max(MAX_REQUEST_BYTES as u64),
            "{claimed} bytes served by a 4 KiB bucket"
        );
    }
});
