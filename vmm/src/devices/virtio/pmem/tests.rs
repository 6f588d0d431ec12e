use super::*;
use crate::devices::virtio::queue::tests::{desc, mem, queue_with, F_NEXT, F_WRITE};
use crate::devices::virtio::Interrupt;
use crate::resources::{RateLimiterConfig, TokenBucketConfig};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

fn backing(tag: &str, bytes: &[u8]) -> (std::path::PathBuf, Arc<PmemMapping>) {
    let p = crate::test_scratch::dir("kiln-pmem-dev").join(tag);
    std::fs::write(&p, bytes).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    (p, Arc::new(PmemMapping::new(&f, false).unwrap()))
}

fn start(dev: &mut Pmem, m: &GuestMemoryMmap, q: Queue) -> Arc<Interrupt> {
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

#[test]
fn config_space_is_start_and_size_and_refuses_writes() {
    let (p, map) = backing("cfg", &[1u8; 5000]);
    let mut dev = Pmem::new("p0", map, DEVICE_MEMORY_START_FOR_TEST);
    assert_eq!(dev.device_type(), 27);
    let mut cfg = [0u8; 16];
    dev.read_config(0, &mut cfg);
    assert_eq!(
        u64::from_le_bytes(cfg[..8].try_into().unwrap()),
        DEVICE_MEMORY_START_FOR_TEST
    );
    assert_eq!(u64::from_le_bytes(cfg[8..].try_into().unwrap()), 2 << 20);
    let mut size = [0xffu8; 4];
    dev.read_config(8, &mut size);
    assert_eq!(size, [0, 0, 0x20, 0]);
    let mut tail = [0xffu8; 8];
    dev.read_config(12, &mut tail);
    assert_eq!(tail, [0; 8], "past the end reads as zero");
    let fails = METRICS.pmem.cfg_fails.total();
    assert!(!dev.write_config(0, &[0; 8]));
    assert!(METRICS.pmem.cfg_fails.total() > fails);
    let _ = std::fs::remove_file(p);
}

const DEVICE_MEMORY_START_FOR_TEST: u64 = crate::arch::x86_64::layout::DEVICE_MEMORY_START;

#[test]
fn flushes_answer_ok_and_malformed_chains_are_returned_empty() {
    let m = mem();
    m.write_obj(0u32, GuestAddress(0x8000)).unwrap();
    m.write_obj(5u32, GuestAddress(0x8100)).unwrap();
    m.write_obj(0x55u32, GuestAddress(0x9000)).unwrap();
    m.write_obj(0x55u32, GuestAddress(0x9100)).unwrap();
    m.write_obj(0x55u32, GuestAddress(0x9200)).unwrap();
    let descs = [
        // 0-1: a flush.
        desc(0x8000, 4, F_NEXT, 1),
        desc(0x9000, 4, F_WRITE, 0),
        // 2-3: an unknown type.
        desc(0x8100, 4, F_NEXT, 3),
        desc(0x9100, 4, F_WRITE, 0),
        // 4: no status.
        desc(0x8000, 4, 0, 0),
        // 5-6: a status of 8 bytes.
        desc(0x8000, 4, F_NEXT, 6),
        desc(0x9200, 8, F_WRITE, 0),
        // 7-8: another flush, answered by the same msync.
        desc(0x8000, 4, F_NEXT, 8),
        desc(0x9300, 4, F_WRITE, 0),
    ];
    let (vq, q) = queue_with(&m, 16, &descs, &[0, 2, 4, 5, 7]);
    let (p, map) = backing("flush", b"data");
    let mut dev = Pmem::new("p0", map, DEVICE_MEMORY_START_FOR_TEST);
    let irq = start(&mut dev, &m, q);
    let (fails, flushes) = (
        METRICS.pmem.event_fails.total(),
        METRICS.pmem.flush_count.total(),
    );
    dev.process_queue(0, &mut EventCtx::default());
    assert_eq!(used(&vq, 0), (0, 4));
    assert_eq!(used(&vq, 1), (2, 0));
    assert_eq!(used(&vq, 2), (4, 0));
    assert_eq!(used(&vq, 3), (5, 0));
    assert_eq!(used(&vq, 4), (7, 4));
    assert_eq!(m.read_obj::<u32>(GuestAddress(0x9000)).unwrap(), 0);
    assert_eq!(m.read_obj::<u32>(GuestAddress(0x9300)).unwrap(), 0);
    // Refused requests' status buffers are untouched.
    assert_eq!(m.read_obj::<u32>(GuestAddress(0x9100)).unwrap(), 0x55);
    assert_eq!(m.read_obj::<u32>(GuestAddress(0x9200)).unwrap(), 0x55);
    assert!(METRICS.pmem.event_fails.total() >= fails + 3);
    assert!(METRICS.pmem.flush_count.total() > flushes);
    assert_eq!(irq.status() & 1, 1);
    let _ = std::fs::remove_file(p);
}

#[test]
fn the_ops_bucket_holds_a_second_notification_back() {
    let m = mem();
    m.write_obj(0u32, GuestAddress(0x8000)).unwrap();
    let descs = [desc(0x8000, 4, F_NEXT, 1), desc(0x9000, 4, F_WRITE, 0)];
    let (vq, q) = queue_with(&m, 16, &descs, &[0]);
    let (p, map) = backing("limit", b"data");
    let cfg = RateLimiterConfig {
        bandwidth: None,
        ops: Some(TokenBucketConfig {
            size: 1,
            one_time_burst: None,
            refill_time: 1000,
        }),
    };
    let mut dev = Pmem::new("p0", map, DEVICE_MEMORY_START_FOR_TEST)
        .with_rate_limiter(RateLimiter::new(Some(&cfg)).unwrap());
    start(&mut dev, &m, q);
    dev.process_queue(0, &mut EventCtx::default());
    assert_eq!(used(&vq, 0), (0, 4));
    // The driver posts the same chain again: the bucket is empty.
    vq.avail().ring().ref_at(1).unwrap().store(0);
    vq.avail().idx().store(2u16.to_le());
    let throttled = METRICS.pmem.rate_limiter_throttled_events.total();
    let mut ctx = EventCtx::default();
    dev.process_queue(0, &mut ctx);
    assert_eq!(u16::from_le(vq.used().idx().load()), 1);
    assert!(METRICS.pmem.rate_limiter_throttled_events.total() > throttled);
    let _ = std::fs::remove_file(p);
}
