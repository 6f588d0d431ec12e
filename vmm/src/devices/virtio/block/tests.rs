use super::*;
use crate::devices::virtio::queue::tests::{desc, mem, queue_with, F_NEXT, F_WRITE};
use crate::devices::virtio::Interrupt;
use std::sync::Arc;
use std::time::Duration;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

struct TempImage(std::path::PathBuf);
impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn image(name: &str, sectors: usize) -> TempImage {
    let p = std::env::temp_dir().join(format!("kiln-blk-{}-{name}", std::process::id()));
    let data: Vec<u8> = (0..sectors * 512).map(|i| (i / 512) as u8).collect();
    std::fs::write(&p, data).unwrap();
    TempImage(p)
}

fn block(img: &TempImage, read_only: bool, cache: CacheType) -> Block {
    Block::new(&DriveConfig {
        drive_id: "rootfs".into(),
        path_on_host: img.0.to_string_lossy().into_owned(),
        is_root_device: true,
        is_read_only: read_only,
        partuuid: None,
        cache_type: cache,
        io_engine: Default::default(),
        ..Default::default()
    })
    .unwrap()
}

fn header(m: &GuestMemoryMmap, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    m.write_slice(&h, GuestAddress(0x8000)).unwrap();
}

/// Resets `b` and starts it on queue `q`; returns its interrupt.
fn start(b: &mut Block, m: &GuestMemoryMmap, q: virtio_queue::Queue) -> Arc<Interrupt> {
    let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    b.reset();
    b.activate(Activation {
        mem: m.clone(),
        queues: vec![q],
        features: 0,
        interrupt: irq.clone(),
    })
    .unwrap();
    irq
}

/// Runs one request (header at 0x8000, data at 0x9000 of `len`, status at 0xa000) and
/// returns (status, used length).
fn run(
    b: &mut Block,
    m: &GuestMemoryMmap,
    kind: u32,
    sector: u64,
    len: u32,
    write_data: bool,
) -> (u8, u32) {
    header(m, kind, sector);
    m.write_obj(0xffu8, GuestAddress(0xa000)).unwrap();
    let data_flags = if write_data { F_NEXT } else { F_NEXT | F_WRITE };
    let descs = [
        desc(0x8000, 16, F_NEXT, 1),
        desc(0x9000, len, data_flags, 2),
        desc(0xa000, 1, F_WRITE, 0),
    ];
    let (vq, q) = queue_with(m, 16, &descs, &[0]);
    let irq = start(b, m, q);
    b.process_queue(0, &mut EventCtx::default());
    let used = vq.used().ring().ref_at(0).unwrap().load();
    assert_eq!(u16::from_le(vq.used().idx().load()), 1);
    assert_eq!(irq.status() & 1, 1, "used-buffer interrupt");
    (m.read_obj::<u8>(GuestAddress(0xa000)).unwrap(), used.len())
}

#[test]
fn status_bytes_are_the_spec_values() {
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
    assert_eq!(u32::from(S_OK), VIRTIO_BLK_S_OK);
    assert_eq!(u32::from(S_IOERR), VIRTIO_BLK_S_IOERR);
    assert_eq!(u32::from(S_UNSUPP), VIRTIO_BLK_S_UNSUPP);
}

#[test]
fn reads_and_writes_sectors() {
    let img = image("rw", 8);
    let m = mem();
    let mut b = block(&img, false, CacheType::Unsafe);
    assert_eq!(run(&mut b, &m, VIRTIO_BLK_T_IN, 3, 1024, false), (0, 1025));
    let mut got = [0u8; 1024];
    m.read_slice(&mut got, GuestAddress(0x9000)).unwrap();
    assert!(got[..512].iter().all(|&x| x == 3) && got[512..].iter().all(|&x| x == 4));
    m.write_slice(&[0xab; 512], GuestAddress(0x9000)).unwrap();
    assert_eq!(run(&mut b, &m, VIRTIO_BLK_T_OUT, 7, 512, true), (0, 1));
    let file = std::fs::read(&img.0).unwrap();
    assert_eq!(file.len(), 8 * 512);
    assert!(file[7 * 512..].iter().all(|&x| x == 0xab));
    assert!(file[6 * 512..7 * 512].iter().all(|&x| x == 6));
}

#[test]
fn out_of_range_and_odd_requests_are_errors() {
    let img = image("oob", 8);
    let m = mem();
    let mut b = block(&img, false, CacheType::Unsafe);
    let before = std::fs::read(&img.0).unwrap();
    assert_eq!(run(&mut b, &m, VIRTIO_BLK_T_IN, 8, 512, false), (1, 1));
    assert_eq!(run(&mut b, &m, VIRTIO_BLK_T_OUT, 7, 1024, true), (1, 1));
    assert_eq!(
        run(&mut b, &m, VIRTIO_BLK_T_OUT, u64::MAX, 512, true),
        (1, 1)
    );
    assert_eq!(run(&mut b, &m, VIRTIO_BLK_T_OUT, 0, 100, true), (1, 1));
    assert_eq!(run(&mut b, &m, 77, 0, 512, false), (2, 1));
    assert_eq!(
        std::fs::read(&img.0).unwrap(),
        before,
        "nothing was written"
    );
}

#[test]
fn read_only_drives_refuse_writes() {
    let img = image("ro", 4);
    let m = mem();
    let mut b = block(&img, true, CacheType::Writeback);
    assert_ne!(b.features() & 1 << VIRTIO_BLK_F_RO, 0);
    m.write_slice(&[0xcd; 512], GuestAddress(0x9000)).unwrap();
    assert_eq!(run(&mut b, &m, VIRTIO_BLK_T_OUT, 0, 512, true), (1, 1));
    assert!(std::fs::read(&img.0).unwrap()[..512]
        .iter()
        .all(|&x| x == 0));
    assert_eq!(run(&mut b, &m, VIRTIO_BLK_T_FLUSH, 0, 0, false).0, 0);
    assert_eq!(run(&mut b, &m, VIRTIO_BLK_T_IN, 1, 512, false), (0, 513));
}

#[test]
fn get_id_and_flush() {
    let img = image("id", 2);
    let m = mem();
    let mut b = block(&img, false, CacheType::Writeback);
    assert_eq!(run(&mut b, &m, VIRTIO_BLK_T_GET_ID, 0, 20, false), (0, 21));
    let mut id = [0u8; 20];
    m.read_slice(&mut id, GuestAddress(0x9000)).unwrap();
    assert_eq!(&id[..7], b"rootfs\0");
    assert_eq!(run(&mut b, &m, VIRTIO_BLK_T_FLUSH, 0, 0, false).0, 0);
}

#[test]
fn hostile_chains_are_returned_empty() {
    let img = image("hostile", 2);
    let m = mem();
    let mut b = block(&img, false, CacheType::Unsafe);
    // A loop, and a buffer outside guest memory.
    for descs in [
        vec![
            desc(0x8000, 16, F_NEXT, 1),
            desc(0x9000, 512, F_NEXT | F_WRITE, 0),
        ],
        vec![
            desc(0x8000, 16, F_NEXT, 1),
            desc(0x7fff_0000, 512, F_NEXT | F_WRITE, 2),
            desc(0xa000, 1, F_WRITE, 0),
        ],
    ] {
        header(&m, VIRTIO_BLK_T_IN, 0);
        let (vq, q) = queue_with(&m, 16, &descs, &[0]);
        let irq = start(&mut b, &m, q);
        b.process_queue(0, &mut EventCtx::default());
        assert_eq!(u16::from_le(vq.used().idx().load()), 1);
        assert_eq!(vq.used().ring().ref_at(0).unwrap().load().len(), 0);
        assert!(!irq.needs_reset());
    }
    // An available index far ahead breaks the queue.
    let (vq, q) = queue_with(&m, 16, &[desc(0x8000, 16, 0, 0)], &[0]);
    vq.avail().idx().store(u16::to_le(5000));
    let irq = start(&mut b, &m, q);
    b.process_queue(0, &mut EventCtx::default());
    assert!(irq.needs_reset());
    assert_eq!(u16::from_le(vq.used().idx().load()), 0);
}

#[test]
fn work_per_event_is_bounded() {
    let img = image("flood", 2);
    let m = mem();
    let mut b = block(&img, false, CacheType::Unsafe);
    header(&m, VIRTIO_BLK_T_FLUSH, 0);
    // 128 identical flush requests sharing descriptors 0 and 1.
    let descs = [desc(0x8000, 16, F_NEXT, 1), desc(0xa000, 1, F_WRITE, 0)];
    let heads = vec![0u16; 128];
    let (vq, q) = queue_with(&m, 128, &descs, &heads);
    start(&mut b, &m, q);
    let mut ctx = EventCtx::default();
    b.process_queue(0, &mut ctx);
    assert!(ctx.wants_again());
    assert_eq!(
        u16::from_le(vq.used().idx().load()),
        REQUESTS_PER_EVENT as u16
    );
    let mut ctx = EventCtx::default();
    b.process_queue(0, &mut ctx);
    assert!(!ctx.wants_again());
    assert_eq!(u16::from_le(vq.used().idx().load()), 128);
}

#[test]
fn swapping_the_backing_file_changes_capacity() {
    let a = image("swap-a", 2);
    let c = image("swap-b", 6);
    let mut b = block(&a, false, CacheType::Unsafe);
    let mut cap = [0u8; 8];
    b.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 2);
    b.swap_backing(&c.0.to_string_lossy()).unwrap();
    b.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 6);
    assert!(b.swap_backing("/nonexistent/kiln").is_err());
    assert_eq!(b.capacity(), 6);
}

fn limited(b: Block, bandwidth: Option<(u64, u64)>, ops: Option<(u64, u64)>) -> Block {
    let bucket = |(size, refill_time)| crate::resources::TokenBucketConfig {
        size,
        one_time_burst: None,
        refill_time,
    };
    let cfg = RateLimiterConfig {
        bandwidth: bandwidth.map(bucket),
        ops: ops.map(bucket),
    };
    b.with_rate_limiter(RateLimiter::new(Some(&cfg)).unwrap())
}

#[test]
fn a_request_over_the_limit_waits_in_the_ring_for_the_timer() {
    let img = image("limit-ops", 2);
    let m = mem();
    // One request per 30 ms.
    let mut b = limited(block(&img, false, CacheType::Unsafe), None, Some((1, 30)));
    header(&m, VIRTIO_BLK_T_FLUSH, 0);
    let descs = [desc(0x8000, 16, F_NEXT, 1), desc(0xa000, 1, F_WRITE, 0)];
    let (vq, q) = queue_with(&m, 16, &descs, &[0, 0, 0]);
    start(&mut b, &m, q);
    let throttled = METRICS.block.rate_limiter_throttled_events.total();
    let mut ctx = EventCtx::default();
    b.process_queue(0, &mut ctx);
    assert_eq!(u16::from_le(vq.used().idx().load()), 1);
    assert!(METRICS.block.rate_limiter_throttled_events.total() > throttled);
    let timer = b.limiter.as_ref().unwrap().timer_fd();
    assert_eq!(ctx.take_changes(), vec![(LIMITER_TOKEN, Some(timer))]);
    assert!(
        !ctx.wants_again(),
        "the timer, not the queue, brings it back"
    );
    // Notifications while blocked do nothing.
    b.process_queue(0, &mut EventCtx::default());
    assert_eq!(u16::from_le(vq.used().idx().load()), 1);
    // The timer fires after the refill: one more request.
    std::thread::sleep(Duration::from_millis(40));
    let mut ctx = EventCtx::default();
    b.process_fd(LIMITER_TOKEN, EventSet::IN, &mut ctx);
    assert_eq!(u16::from_le(vq.used().idx().load()), 2);
    // PATCH: no more ops bucket; the last request goes at the next timer.
    b.update_rate_limiter(&RateLimiterConfig {
        bandwidth: None,
        ops: Some(crate::resources::TokenBucketConfig::default()),
    })
    .unwrap();
    assert_eq!(b.rate_limiter(), Some(RateLimiterConfig::default()));
    std::thread::sleep(Duration::from_millis(40));
    b.process_fd(LIMITER_TOKEN, EventSet::IN, &mut EventCtx::default());
    assert_eq!(u16::from_le(vq.used().idx().load()), 3);
}

#[test]
fn reads_take_their_bytes_from_the_bandwidth_bucket() {
    let img = image("limit-bw", 8);
    let m = mem();
    // 1024 bytes per 10 s: two one-sector reads, then the third waits.
    let mut b = limited(
        block(&img, false, CacheType::Unsafe),
        Some((1024, 10_000)),
        None,
    );
    header(&m, VIRTIO_BLK_T_IN, 1);
    let descs = [
        desc(0x8000, 16, F_NEXT, 1),
        desc(0x9000, 512, F_NEXT | F_WRITE, 2),
        desc(0xa000, 1, F_WRITE, 0),
    ];
    let (vq, q) = queue_with(&m, 16, &descs, &[0, 0, 0]);
    start(&mut b, &m, q);
    let mut ctx = EventCtx::default();
    b.process_queue(0, &mut ctx);
    assert_eq!(u16::from_le(vq.used().idx().load()), 2);
    assert!(b.limiter.as_ref().unwrap().is_blocked());
    // A spurious timer event (it has not fired) lets nothing through.
    b.process_fd(LIMITER_TOKEN, EventSet::IN, &mut EventCtx::default());
    assert_eq!(u16::from_le(vq.used().idx().load()), 2);
    // Unknown tokens are dropped.
    let mut ctx = EventCtx::default();
    b.process_fd(99, EventSet::IN, &mut ctx);
    assert_eq!(ctx.take_changes(), vec![(99, None)]);
}

#[test]
fn a_drive_without_a_limiter_cannot_be_patched() {
    let img = image("limit-none", 2);
    let mut b = block(&img, false, CacheType::Unsafe);
    let e = b
        .update_rate_limiter(&RateLimiterConfig::default())
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "drive rootfs: the device has no rate limiter to update"
    );
    assert_eq!(b.rate_limiter(), None);
}
