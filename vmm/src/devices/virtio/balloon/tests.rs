use super::discard::{discard_pfns, Discarded};
use super::*;
use crate::devices::virtio::queue::tests::{desc, queue_at, F_NEXT, F_WRITE};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const MIB: u64 = 1 << 20;
/// The stats queue's index with statistics negotiated.
const STATS: usize = 2;

pub(super) fn mem4() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 * MIB as usize)]).unwrap()
}

fn params(stats: u16) -> BalloonParams {
    BalloonParams {
        amount_mib: 1,
        deflate_on_oom: true,
        stats_polling_interval_s: stats,
        free_page_hinting: false,
        free_page_reporting: false,
    }
}

pub(super) fn used_idx(vq: &MockSplitQueue<'_, GuestMemoryMmap>) -> u16 {
    u16::from_le(vq.used().idx().load())
}

fn used_id(vq: &MockSplitQueue<'_, GuestMemoryMmap>, i: usize) -> u32 {
    vq.used().ring().ref_at(i).unwrap().load().id()
}

pub(super) fn start(
    dev: &mut Balloon,
    m: &GuestMemoryMmap,
    queues: Vec<Queue>,
    features: u64,
) -> Arc<Interrupt> {
    let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    dev.activate(Activation {
        mem: m.clone(),
        queues,
        features,
        interrupt: irq.clone(),
    })
    .unwrap();
    irq
}

pub(super) fn fill(m: &GuestMemoryMmap, pfn: u64, byte: u8) {
    m.write_slice(&[byte; 4096], GuestAddress(pfn << 12))
        .unwrap();
}

pub(super) fn page(m: &GuestMemoryMmap, pfn: u64) -> Vec<u8> {
    let mut v = vec![0u8; 4096];
    m.read_slice(&mut v, GuestAddress(pfn << 12)).unwrap();
    v
}

fn pfn_bytes(pfns: &[u32]) -> Vec<u8> {
    pfns.iter().flat_map(|p| p.to_le_bytes()).collect()
}

#[test]
fn features_queues_and_configuration_space() {
    let b = Balloon::new(params(0)).unwrap();
    assert_eq!(b.device_type(), 5);
    assert_eq!(b.queue_max_sizes().len(), 2);
    assert_eq!(b.features(), VIRTIO_F_VERSION_1 | F_DEFLATE_ON_OOM);
    let mut b = Balloon::new(BalloonParams {
        deflate_on_oom: false,
        ..params(5)
    })
    .unwrap();
    assert_eq!(b.queue_max_sizes().len(), 3);
    assert_eq!(b.features(), VIRTIO_F_VERSION_1 | F_STATS_VQ);
    let mut c = [0u8; 8];
    b.read_config(0, &mut c);
    assert_eq!(c, [0, 1, 0, 0, 0, 0, 0, 0], "num_pages 256, actual 0");
    assert!(b.write_config(4, &7u32.to_le_bytes()));
    assert!(b.write_config(6, &[1]));
    assert!(!b.write_config(0, &[9; 4]), "num_pages is the device's");
    assert!(!b.write_config(6, &[1; 4]), "past the end");
    assert!(!b.write_config(u64::MAX, &[1]));
    b.read_config(4, &mut c[..4]);
    assert_eq!(u32::from_le_bytes(c[..4].try_into().unwrap()), 0x1_0007);
    b.reset();
    b.read_config(4, &mut c[..4]);
    assert_eq!(&c[..4], &[0; 4], "a reset driver holds nothing");
}

#[test]
fn inflated_pages_leave_the_mapping_and_bad_frames_are_counted() {
    let m = mem4();
    for pfn in 0x100..0x105 {
        fill(&m, pfn, 0xaa);
    }
    let list = [0x100, 0x101, 0x101, 0x103, 0xffff_ffff, 0x400];
    m.write_slice(&pfn_bytes(&list), GuestAddress(0x3000))
        .unwrap();
    let (vq, q) = queue_at(&m, GuestAddress(0), 16, &[desc(0x3000, 24, 0, 0)], &[0]);
    let (_vq2, q2) = queue_at(&m, GuestAddress(0x10000), 16, &[], &[]);
    let mut b = Balloon::new(params(0)).unwrap();
    let irq = start(&mut b, &m, vec![q, q2], VIRTIO_F_VERSION_1);
    let (inv, dup) = (
        METRICS.balloon.invalid_pfns.total(),
        METRICS.balloon.duplicate_pfns.total(),
    );
    b.process_queue(0, &mut EventCtx::default());
    assert_eq!(used_idx(&vq), 1);
    assert_eq!(irq.status() & 1, 1);
    for pfn in [0x100, 0x101, 0x103] {
        assert!(
            page(&m, pfn).iter().all(|&x| x == 0),
            "page {pfn:#x} was given back"
        );
    }
    for pfn in [0x102, 0x104] {
        assert!(
            page(&m, pfn).iter().all(|&x| x == 0xaa),
            "page {pfn:#x} untouched"
        );
    }
    assert!(METRICS.balloon.invalid_pfns.total() >= inv + 2);
    assert!(METRICS.balloon.duplicate_pfns.total() > dup);
}

#[test]
fn frame_numbers_are_sorted_merged_and_bounded_by_ram() {
    let m = mem4();
    let mut pfns = vec![5, 3, 4, 4, 0x3ff, 0x400, u32::MAX, 7];
    let d = discard_pfns(&m, &mut pfns);
    assert_eq!(
        d,
        Discarded {
            pages: 5,
            invalid: 2,
            duplicates: 1,
            unaligned: 0,
            fails: 0
        }
    );
}

#[test]
fn malformed_chains_are_returned_unread() {
    let m = mem4();
    fill(&m, 0x200, 0x55);
    m.write_slice(&pfn_bytes(&[0x200, 0x200]), GuestAddress(0x3000))
        .unwrap();
    let descs = [
        // Device-writable: not a list of frames.
        desc(0x3000, 4, F_WRITE, 0),
        // Not whole frame numbers.
        desc(0x3000, 6, 0, 0),
        // Longer than the limit.
        desc(0x3000, (MAX_PFNS_PER_CHAIN as u32 + 1) * 4, 0, 0),
        // A chain whose next is out of the table.
        desc(0x3000, 4, F_NEXT, 99),
    ];
    let (vq, q) = queue_at(&m, GuestAddress(0), 16, &descs, &[0, 1, 2, 3]);
    let (_vq2, q2) = queue_at(&m, GuestAddress(0x10000), 16, &[], &[]);
    let mut b = Balloon::new(params(0)).unwrap();
    start(&mut b, &m, vec![q, q2], VIRTIO_F_VERSION_1);
    let fails = METRICS.balloon.event_fails.total();
    b.process_queue(0, &mut EventCtx::default());
    assert_eq!(used_idx(&vq), 4);
    assert!(METRICS.balloon.event_fails.total() >= fails + 4);
    assert!(page(&m, 0x200).iter().all(|&x| x == 0x55));
}

#[test]
fn a_size_update_needs_the_driver_and_fits_the_memory() {
    let m = mem4();
    let mut b = Balloon::new(params(0)).unwrap();
    assert_eq!(b.update_size(2), Err(BalloonError::NotActivated));
    let (_v1, q1) = queue_at(&m, GuestAddress(0), 16, &[], &[]);
    let (_v2, q2) = queue_at(&m, GuestAddress(0x10000), 16, &[], &[]);
    let irq = start(&mut b, &m, vec![q1, q2], VIRTIO_F_VERSION_1);
    assert_eq!(
        b.update_size(5),
        Err(BalloonError::TooLarge {
            amount_mib: 5,
            mem_mib: 4
        })
    );
    b.update_size(3).unwrap();
    assert_eq!(irq.generation(), 1);
    let mut c = [0u8; 4];
    b.read_config(0, &mut c);
    assert_eq!(u32::from_le_bytes(c), 3 * 256);
    assert_eq!(b.params().amount_mib, 3);
    assert_eq!(b.latest_stats(), Err(BalloonError::StatsDisabled));
    assert!(matches!(
        b.update_stats_interval(1),
        Err(BalloonError::StatsStateChange { from: 0, to: 1 })
    ));
}

fn stat(tag: u16, v: u64) -> Vec<u8> {
    [tag.to_le_bytes().as_slice(), &v.to_le_bytes()].concat()
}

#[test]
fn statistics_are_read_held_and_returned() {
    let m = mem4();
    m.write_slice(
        &[stat(4, 1000), stat(5, 4000)].concat(),
        GuestAddress(0x5000),
    )
    .unwrap();
    m.write_slice(&stat(4, 900), GuestAddress(0x6000)).unwrap();
    let (_v1, q1) = queue_at(&m, GuestAddress(0), 16, &[], &[]);
    let (_v2, q2) = queue_at(&m, GuestAddress(0x10000), 16, &[], &[]);
    let descs = [desc(0x5000, 20, 0, 0), desc(0x6000, 10, 0, 0)];
    let (vs, qs) = queue_at(&m, GuestAddress(0x20000), 16, &descs, &[0]);
    let mut b = Balloon::new(params(60)).unwrap();
    start(
        &mut b,
        &m,
        vec![q1, q2, qs],
        VIRTIO_F_VERSION_1 | F_STATS_VQ,
    );
    let mut ctx = EventCtx::default();
    b.process_queue(STATS, &mut ctx);
    assert_eq!(ctx.take_changes().len(), 1, "the timer is watched");
    let s = b.latest_stats().unwrap();
    assert_eq!((s.free_memory, s.total_memory), (Some(1000), Some(4000)));
    assert_eq!((s.target_pages, s.target_mib), (256, 1));
    assert_eq!(used_idx(&vs), 0, "the buffer is held until the next poll");
    // Snapshots offer the held buffer again.
    assert_eq!(b.positions()[STATS].next_avail, 0);
    // A second buffer (a driver that floods): the first comes back.
    vs.avail().ring().ref_at(1).unwrap().store(u16::to_le(1));
    vs.avail().idx().store(u16::to_le(2));
    b.process_queue(STATS, &mut EventCtx::default());
    assert_eq!(used_idx(&vs), 1);
    assert_eq!(used_id(&vs, 0), 0);
    assert_eq!(b.latest_stats().unwrap().free_memory, Some(900));
    assert_eq!(b.positions()[STATS].next_avail, 1);
    // A new interval returns the held buffer (fresh values).
    assert!(matches!(
        b.update_stats_interval(0),
        Err(BalloonError::StatsStateChange { from: 60, to: 0 })
    ));
    b.update_stats_interval(30).unwrap();
    assert_eq!(used_idx(&vs), 2);
    assert_eq!(used_id(&vs, 1), 1);
    assert_eq!(b.positions()[STATS].next_avail, 2);
}

#[test]
fn actual_comes_back_from_a_saved_configuration() {
    let mut b = Balloon::new(params(0)).unwrap();
    b.take_saved_config(&[0, 1, 0, 0, 9, 0, 0, 0]);
    let mut c = [0u8; 8];
    b.read_config(0, &mut c);
    assert_eq!(c, [0, 1, 0, 0, 9, 0, 0, 0]);
    b.take_saved_config(&[1]);
    b.read_config(4, &mut c[..4]);
    assert_eq!(c[0], 9, "a short saved configuration changes nothing");
}
