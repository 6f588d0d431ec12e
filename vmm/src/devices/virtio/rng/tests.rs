use super::*;
use crate::devices::virtio::queue::tests::{desc, mem, queue_with, F_NEXT, F_WRITE};
use crate::devices::virtio::Interrupt;
use crate::resources::{RateLimiterConfig, TokenBucketConfig};
use std::sync::Arc;
use std::time::Duration;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

fn start(dev: &mut Entropy, m: &GuestMemoryMmap, q: Queue) -> Arc<Interrupt> {
    let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    dev.activate(Activation {
        mem: m.clone(),
        queues: vec![q],
        features: VIRTIO_F_VERSION_1,
        interrupt: irq.clone(),
    })
    .unwrap();
    irq
}

fn used(vq: &MockSplitQueue<'_, GuestMemoryMmap>, i: usize) -> (u32, u32) {
    let e = vq.used().ring().ref_at(i).unwrap().load();
    (e.id(), e.len())
}

fn used_idx(vq: &MockSplitQueue<'_, GuestMemoryMmap>) -> u16 {
    u16::from_le(vq.used().idx().load())
}

fn bytes(m: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    m.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

#[test]
fn fills_each_writable_chain_with_fresh_random_bytes() {
    let m = mem();
    let descs = [
        desc(0x8000, 100, F_NEXT | F_WRITE, 1),
        desc(0x9000, 156, F_WRITE, 0),
        desc(0xa000, 256, F_WRITE, 0),
    ];
    let (vq, q) = queue_with(&m, 16, &descs, &[0, 2]);
    let mut dev = Entropy::new();
    assert_eq!(dev.device_type(), 4);
    assert_eq!(dev.features(), VIRTIO_F_VERSION_1);
    let irq = start(&mut dev, &m, q);
    let before = METRICS.entropy.entropy_bytes.total();
    dev.process_queue(0, &mut EventCtx::default());
    assert_eq!(used_idx(&vq), 2);
    assert_eq!(used(&vq, 0), (0, 256));
    assert_eq!(used(&vq, 1), (2, 256));
    assert!(METRICS.entropy.entropy_bytes.total() >= before + 512);
    assert_eq!(irq.status() & 1, 1);
    let first: Vec<u8> = [bytes(&m, 0x8000, 100), bytes(&m, 0x9000, 156)].concat();
    let second = bytes(&m, 0xa000, 256);
    assert_ne!(first, second, "two requests, two different answers");
    assert!(first.iter().any(|&b| b != 0) && second.iter().any(|&b| b != 0));
    // Nothing beyond the buffers was written.
    assert!(bytes(&m, 0x8000 + 100, 16).iter().all(|&b| b == 0));
    assert!(bytes(&m, 0xa000 + 256, 16).iter().all(|&b| b == 0));
}

#[test]
fn a_request_gets_at_most_64_kib() {
    let m = mem();
    let descs = [desc(0x10000, 0x20000, F_WRITE, 0)];
    let (vq, q) = queue_with(&m, 16, &descs, &[0]);
    let mut dev = Entropy::new();
    start(&mut dev, &m, q);
    dev.process_queue(0, &mut EventCtx::default());
    assert_eq!(used(&vq, 0), (0, MAX_REQUEST_BYTES as u32));
    assert!(bytes(&m, 0x10000 + MAX_REQUEST_BYTES as u64, 4096)
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn hostile_chains_are_returned_empty() {
    let m = mem();
    let descs = [
        // Device-readable: not a request.
        desc(0x8000, 64, 0, 0),
        // Outside guest memory.
        desc(0xffff_0000, 64, F_WRITE, 0),
        // A loop.
        desc(0x9000, 64, F_NEXT | F_WRITE, 3),
        desc(0x9100, 64, F_NEXT | F_WRITE, 2),
        // Empty.
        desc(0x9200, 0, F_WRITE, 0),
        // A good one after them.
        desc(0xa000, 32, F_WRITE, 0),
    ];
    let (vq, q) = queue_with(&m, 16, &descs, &[0, 1, 2, 4, 5]);
    let mut dev = Entropy::new();
    start(&mut dev, &m, q);
    let fails = METRICS.entropy.entropy_event_fails.total();
    dev.process_queue(0, &mut EventCtx::default());
    assert_eq!(used_idx(&vq), 5);
    assert_eq!(
        [used(&vq, 0), used(&vq, 1), used(&vq, 2), used(&vq, 3)],
        [(0, 0), (1, 0), (2, 0), (4, 0)]
    );
    assert_eq!(used(&vq, 4), (5, 32));
    assert!(METRICS.entropy.entropy_event_fails.total() >= fails + 3);
    assert!(
        bytes(&m, 0x8000, 64).iter().all(|&b| b == 0),
        "readable buffer untouched"
    );
}

#[test]
fn a_broken_ring_needs_a_reset() {
    let m = mem();
    let (vq, q) = queue_with(&m, 16, &[desc(0xa000, 32, F_WRITE, 0)], &[0]);
    vq.avail().idx().store(u16::to_le(500));
    let mut dev = Entropy::new();
    let irq = start(&mut dev, &m, q);
    dev.process_queue(0, &mut EventCtx::default());
    assert!(irq.needs_reset());
    assert_eq!(used_idx(&vq), 0);
    // Broken: later notifications do nothing.
    dev.process_queue(0, &mut EventCtx::default());
    dev.reset();
    assert!(!dev.is_activated());
}

#[test]
fn work_per_event_is_bounded() {
    let m = mem();
    let (vq, q) = queue_with(&m, 128, &[desc(0xa000, 16, F_WRITE, 0)], &[0; 128]);
    let mut dev = Entropy::new();
    start(&mut dev, &m, q);
    let mut ctx = EventCtx::default();
    dev.process_queue(0, &mut ctx);
    assert!(ctx.wants_again());
    assert_eq!(usize::from(used_idx(&vq)), REQUESTS_PER_EVENT);
    let mut ctx = EventCtx::default();
    dev.process_queue(0, &mut ctx);
    assert!(!ctx.wants_again());
    assert_eq!(used_idx(&vq), 128);
}

#[test]
fn the_rate_limiter_holds_requests_in_the_ring_until_its_timer() {
    let m = mem();
    let (vq, q) = queue_with(&m, 16, &[desc(0xa000, 100, F_WRITE, 0)], &[0, 0, 0]);
    // 150 bytes per 30 ms: one 100-byte request, then a wait.
    let cfg = RateLimiterConfig {
        bandwidth: Some(TokenBucketConfig {
            size: 150,
            one_time_burst: None,
            refill_time: 30,
        }),
        ops: None,
    };
    let mut dev = Entropy::new().with_rate_limiter(RateLimiter::new(Some(&cfg)).unwrap());
    start(&mut dev, &m, q);
    let throttled = METRICS.entropy.entropy_rate_limiter_throttled.total();
    let mut ctx = EventCtx::default();
    dev.process_queue(0, &mut ctx);
    assert_eq!(used_idx(&vq), 1);
    assert!(METRICS.entropy.entropy_rate_limiter_throttled.total() > throttled);
    let timer = dev.limiter.as_ref().unwrap().timer_fd();
    assert_eq!(ctx.take_changes(), vec![(LIMITER_TOKEN, Some(timer))]);
    std::thread::sleep(Duration::from_millis(40));
    dev.process_fd(LIMITER_TOKEN, EventSet::IN, &mut EventCtx::default());
    assert_eq!(used_idx(&vq), 2);
    // After a reset the timer only clears the block and drops the watch.
    dev.reset();
    std::thread::sleep(Duration::from_millis(40));
    let mut ctx = EventCtx::default();
    dev.process_fd(LIMITER_TOKEN, EventSet::IN, &mut ctx);
    assert_eq!(ctx.take_changes(), vec![(LIMITER_TOKEN, None)]);
    assert!(!dev.limiter.as_ref().unwrap().is_blocked());
}

#[test]
fn fill_random_fills_the_whole_buffer() {
    let mut a = vec![0u8; 70_000];
    fill_random(&mut a).unwrap();
    assert!(a[69_000..].iter().any(|&b| b != 0));
    fill_random(&mut []).unwrap();
}
