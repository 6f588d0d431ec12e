//! The virtio-rng device end to end (`vmm/src/devices/virtio/rng/`): an `Entropy` device
//! activated with a queue the input lays out, then notified; it pops chains, walks them,
//! refuses device-readable ones, fills device-writable ones with random bytes (at most 64 KiB
//! per request), exactly as on the VMM thread; optionally behind a rate limiter whose tiny
//! buckets make it hold requests back in the ring.
//!
//! Input: one byte of options (bit 0: a rate limiter of 3 requests and 4 KiB, refilled once
//! a second; bits 1-2: how many extra notifications, 0 to 3), then the queue (see
//! `kiln_fuzz::guest`).
//!
//! Besides "no panic", it checks the threat model's promises: the device writes guest memory
//! only inside device-writable descriptors and the used ring, publishes at most as many used
//! entries as it took, never claims more bytes than a chain's writable buffers hold (nor
//! more than 64 KiB), and, limited, answers no more requests than its ops bucket holds and
//! no more bytes than its bandwidth bucket (or one request larger than it) allows.
#![no_main]

use kiln_fuzz::guest::{GuestQueue, DESC_TABLE, MAX_QUEUE_SIZE, USED_RING};
use kiln_fuzz::Input;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm::devices::rate_limiter::RateLimiter;
use vmm::devices::virtio::rng::{Entropy, MAX_REQUEST_BYTES};
use vmm::devices::virtio::{Activation, EventCtx, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use vmm::resources::{RateLimiterConfig, TokenBucketConfig};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The limited device's buckets: 3 requests, 4 KiB.
const LIMIT_OPS: u64 = 3;
const LIMIT_BYTES: u64 = 4096;

fuzz_target!(|data: &[u8]| {
    kiln_fuzz::setup();
    let mut input = Input::new(data);
    let options = input.u8();
    let limited = options & 1 != 0;
    let turns = 1 + usize::from((options >> 1) & 3);
    let Some(mut g) = GuestQueue::from_input(&mut input) else {
        return;
    };
    let mut dev = Entropy::new();
    if limited {
        let bucket = |size| TokenBucketConfig {
            size,
            one_time_burst: None,
            refill_time: 1000,
        };
        let cfg = RateLimiterConfig {
            bandwidth: Some(bucket(LIMIT_BYTES)),
            ops: Some(bucket(LIMIT_OPS)),
        };
        dev = dev.with_rate_limiter(RateLimiter::new(Some(&cfg)).expect("a timerfd"));
    }
    let size = g.queue.size();
    let queue = std::mem::replace(
        &mut g.queue,
        Queue::new(MAX_QUEUE_SIZE).expect("a queue of the maximum size"),
    );
    let before = g.snapshot();
    let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd")));
    let activation = Activation {
        mem: g.mem.clone(),
        queues: vec![queue],
        features: VIRTIO_F_VERSION_1,
        interrupt: interrupt.clone(),
    };
    if dev.activate(activation).is_err() {
        return;
    }
    for _ in 0..turns {
        let mut ctx = EventCtx::default();
        dev.process_queue(0, &mut ctx);
    }
    let after = g.snapshot();
    dev.reset();
    let published = g.used_idx().wrapping_sub(g.start);
    kiln_fuzz::debug(|| {
        format!(
            "{published} used entries, needs reset: {}",
            interrupt.needs_reset()
        )
    });

    // Used entries: never more than the driver made available.
    assert!(
        published <= size,
        "{published} used entries in a queue of {size}"
    );
    let writable: Vec<(u64, u64)> = g
        .descriptors
        .iter()
        .filter(|d| u32::from(d.2) & VRING_DESC_F_WRITE != 0)
        .map(|d| (d.0, u64::from(d.1)))
        .collect();
    let used_end = USED_RING + g.used_ring_len();
    // A driver may hand out its own rings as buffers; then what the device does next is no
    // longer predictable from the initial table: check only the other inputs.
    if writable
        .iter()
        .any(|&(a, l)| a < used_end && a.saturating_add(l) > DESC_TABLE)
    {
        return;
    }
    let total_writable: u64 = writable.iter().map(|&(_, l)| l).sum();
    let mut claimed = 0u64;
    let mut answered = 0u64;
    for i in 0..published {
        let slot = u64::from(g.start.wrapping_add(i) % size);
        let len: u32 = g
            .mem
            .read_obj(GuestAddress(USED_RING + 4 + slot * 8 + 4))
            .expect("the used ring is in guest memory");
        let len = u32::from_le(len);
        assert!(
            len as usize <= MAX_REQUEST_BYTES,
            "a used length of {len} bytes"
        );
        claimed += u64::from(len);
        answered += u64::from(len > 0);
    }
    if limited {
        // Chains returned empty (not requests) take no tokens; answers each took an op.
        assert!(
            answered <= LIMIT_OPS,
            "{answered} requests answered by a limiter of {LIMIT_OPS}"
        );
    }
    // Every byte claimed lies in some writable buffer (chains may share buffers, so the
    // total can exceed the table's writable bytes only by reuse: bound it by requests).
    assert!(
        claimed <= total_writable.saturating_mul(u64::from(published.max(1))),
        "{claimed} bytes claimed, the writable buffers hold {total_writable}"
    );
    if limited {
        // The bandwidth bucket (it does not refill within a run): 4 KiB, or one larger
        // request (let through once, when the bucket is full, leaving a debt).
        assert!(
            claimed <= LIMIT_BYTES.max(MAX_REQUEST_BYTES as u64),
            "{claimed} bytes served by a 4 KiB bucket"
        );
    }
    for addr in GuestQueue::changed(&before, &after) {
        let ok = (USED_RING..used_end).contains(&addr)
            || writable.iter().any(|&(a, l)| addr >= a && addr - a < l);
        assert!(
            ok,
            "the device wrote guest memory at {addr:#x}, outside every device-writable buffer"
        );
    }
});
