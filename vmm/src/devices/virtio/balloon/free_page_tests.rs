//! Free page reporting and hinting: the queues' places, ranges dropped or refused, the
//! hinting run's ids, and their snapshot state.

use super::tests::{fill, mem4, page, start, used_idx};
use super::*;
use crate::devices::virtio::queue::tests::{desc, queue_at, F_NEXT, F_WRITE};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

fn params(hinting: bool, reporting: bool) -> BalloonParams {
    BalloonParams {
        amount_mib: 0,
        deflate_on_oom: false,
        stats_polling_interval_s: 0,
        free_page_hinting: hinting,
        free_page_reporting: reporting,
    }
}

/// Makes `head` available as the queue's `slot`-th entry.
fn post(vq: &MockSplitQueue<'_, GuestMemoryMmap>, slot: u16, head: u16) {
    vq.avail()
        .ring()
        .ref_at(usize::from(slot))
        .unwrap()
        .store(u16::to_le(head));
    vq.avail().idx().store(u16::to_le(slot + 1));
}

fn hint_cmd(b: &Balloon) -> u32 {
    let mut c = [0u8; 4];
    b.read_config(8, &mut c);
    u32::from_le_bytes(c)
}

fn untouched(m: &GuestMemoryMmap, pfn: u64) -> bool {
    page(m, pfn).iter().all(|&x| x == 0xaa)
}

#[test]
fn queues_follow_the_negotiated_features_in_the_spec_order() {
    let b = Balloon::new(BalloonParams {
        stats_polling_interval_s: 1,
        ..params(true, true)
    })
    .unwrap();
    assert_eq!(b.queue_max_sizes().len(), 5);
    assert_eq!(
        b.features(),
        VIRTIO_F_VERSION_1 | F_STATS_VQ | F_FREE_PAGE_HINT | F_REPORTING
    );
    assert_eq!(
        Balloon::new(params(false, true))
            .unwrap()
            .queue_max_sizes()
            .len(),
        3
    );
    let all = Layout::of(F_STATS_VQ | F_FREE_PAGE_HINT | F_REPORTING);
    assert_eq!(
        (all.count, all.stats, all.hint, all.report),
        (5, Some(2), Some(3), Some(4))
    );
    let no_stats = Layout::of(F_FREE_PAGE_HINT | F_REPORTING);
    assert_eq!((no_stats.hint, no_stats.report), (Some(2), Some(3)));
    assert_eq!(Layout::of(F_REPORTING).report, Some(2));
    // The configuration space: num_pages, actual, free_page_hint_cmd_id (STOP), no more.
    let mut b = b;
    let mut c = [0xffu8; 16];
    b.read_config(0, &mut c);
    assert_eq!(c, [0; 16]);
    assert!(
        !b.write_config(8, &5u32.to_le_bytes()),
        "the hint id is the host's"
    );
    // A driver that acks less: fewer queues, the later ones moved down.
    let m = mem4();
    let (_a, q0) = queue_at(&m, GuestAddress(0), 16, &[], &[]);
    let (_b, q1) = queue_at(&m, GuestAddress(0x10000), 16, &[], &[]);
    let (_c, q2) = queue_at(&m, GuestAddress(0x20000), 16, &[], &[]);
    start(
        &mut b,
        &m,
        vec![q0, q1, q2],
        VIRTIO_F_VERSION_1 | F_REPORTING,
    );
    assert_eq!(b.active.as_ref().unwrap().layout.report, Some(2));
}

#[test]
fn reported_ranges_leave_the_mapping_and_bad_ones_are_counted() {
    let m = mem4();
    for pfn in 0x100..0x106 {
        fill(&m, pfn, 0xaa);
    }
    let descs = [
        // Linux's shape: device-writable ranges, two in one chain.
        desc(0x10_0000, 0x2000, F_WRITE | F_NEXT, 1),
        desc(0x10_3000, 0x1000, F_WRITE, 0),
        // Not one whole page: refused.
        desc(0x10_4800, 0x1000, 0, 0),
        // Zero length: refused.
        desc(0x10_5000, 0, F_WRITE, 0),
        // Outside guest RAM: the chain is refused.
        desc(4 << 20, 0x1000, F_WRITE, 0),
        // Overflowing the address space.
        desc(u64::MAX - 0xfff, 0x2000, F_WRITE, 0),
        // A chain that loops.
        desc(0x10_5000, 0x1000, F_WRITE | F_NEXT, 6),
    ];
    let (_a, q0) = queue_at(&m, GuestAddress(0), 16, &[], &[]);
    let (_b, q1) = queue_at(&m, GuestAddress(0x10000), 16, &[], &[]);
    let (vq, q2) = queue_at(&m, GuestAddress(0x20000), 16, &descs, &[0, 2, 3, 4, 5, 6]);
    let mut b = Balloon::new(params(false, true)).unwrap();
    let irq = start(
        &mut b,
        &m,
        vec![q0, q1, q2],
        VIRTIO_F_VERSION_1 | F_REPORTING,
    );
    let r = &METRICS.balloon;
    let (freed, fails, invalid) = (
        r.free_page_report_freed.total(),
        r.free_page_report_fails.total(),
        r.invalid_ranges.total(),
    );
    b.process_queue(2, &mut EventCtx::default());
    assert_eq!(used_idx(&vq), 6, "every chain is returned");
    assert_eq!(irq.status() & 1, 1);
    for pfn in [0x100, 0x101, 0x103] {
        assert!(page(&m, pfn).iter().all(|&x| x == 0), "{pfn:#x} given back");
    }
    for pfn in [0x102, 0x104, 0x105] {
        assert!(untouched(&m, pfn), "{pfn:#x} kept");
    }
    assert!(r.free_page_report_freed.total() >= freed + 3 * 4096);
    assert!(r.free_page_report_fails.total() >= fails + 5);
    assert!(r.invalid_ranges.total() >= invalid + 2);
}

#[test]
fn a_hinting_run_drops_the_ranges_of_its_id_only() {
    let m = mem4();
    for pfn in 0x100..0x108 {
        fill(&m, pfn, 0xaa);
    }
    let ids: [u32; 4] = [2, 0, 3, 1];
    for (i, id) in ids.iter().enumerate() {
        m.write_slice(&id.to_le_bytes(), GuestAddress(0x5000 + 4 * i as u64))
            .unwrap();
    }
    let descs = [
        desc(0x5000, 4, 0, 0),               // 0: id 2
        desc(0x10_0000, 0x2000, F_WRITE, 0), // 1: pages 0x100-0x101
        desc(0x5004, 4, 0, 0),               // 2: STOP
        desc(0x5008, 4, 0, 0),               // 3: id 3
        desc(0x10_2000, 0x1000, F_WRITE, 0), // 4: page 0x102
        desc(0x10_3000, 0x1000, F_WRITE, 0), // 5: page 0x103
        desc(0x5004, 4, F_WRITE, 0),         // 6: a "writable id": a range, refused
    ];
    let (_a, q0) = queue_at(&m, GuestAddress(0), 16, &[], &[]);
    let (_b, q1) = queue_at(&m, GuestAddress(0x10000), 16, &[], &[]);
    let (vq, q2) = queue_at(&m, GuestAddress(0x20000), 16, &descs, &[]);
    let mut b = Balloon::new(params(true, false)).unwrap();
    assert_eq!(
        b.hinting_status().unwrap(),
        hinting::HintingStatus {
            host_cmd: 0,
            guest_cmd: None
        }
    );
    assert_eq!(b.start_hinting(true), Err(BalloonError::NotActivated));
    let irq = start(
        &mut b,
        &m,
        vec![q0, q1, q2],
        VIRTIO_F_VERSION_1 | F_FREE_PAGE_HINT,
    );
    // A range before any id is returned untouched.
    post(&vq, 0, 1);
    b.process_queue(2, &mut EventCtx::default());
    assert!(untouched(&m, 0x100));
    // Run 3 (the failed start above counted as run 2, as in Firecracker).
    b.start_hinting(true).unwrap();
    assert_eq!(hint_cmd(&b), 3);
    let generation = irq.generation();
    post(&vq, 1, 3);
    post(&vq, 2, 4);
    post(&vq, 3, 1);
    b.process_queue(2, &mut EventCtx::default());
    assert_eq!(used_idx(&vq), 4);
    assert!(page(&m, 0x102).iter().all(|&x| x == 0), "a range of run 3");
    assert!(page(&m, 0x100).iter().all(|&x| x == 0), "a range of run 3");
    // The guest's STOP is acknowledged with DONE.
    post(&vq, 4, 2);
    b.process_queue(2, &mut EventCtx::default());
    assert_eq!(
        b.hinting_status().unwrap(),
        hinting::HintingStatus {
            host_cmd: 1,
            guest_cmd: Some(0)
        }
    );
    assert_eq!(
        irq.generation(),
        generation + 1,
        "DONE is told to the driver"
    );
    // After DONE, ranges are not dropped.
    post(&vq, 5, 5);
    b.process_queue(2, &mut EventCtx::default());
    assert!(untouched(&m, 0x103));
    // Run 4 without acknowledgement: STOP leaves the id; the host stops it.
    b.start_hinting(false).unwrap();
    assert_eq!(hint_cmd(&b), 4);
    m.write_slice(&4u32.to_le_bytes(), GuestAddress(0x5008))
        .unwrap();
    post(&vq, 6, 3);
    post(&vq, 7, 6);
    post(&vq, 8, 2);
    let invalid = METRICS.balloon.invalid_ranges.total();
    b.process_queue(2, &mut EventCtx::default());
    assert!(METRICS.balloon.invalid_ranges.total() > invalid);
    assert_eq!(b.hinting_status().unwrap().host_cmd, 4);
    b.stop_hinting().unwrap();
    assert_eq!(b.hinting_status().unwrap().host_cmd, 1);
    b.reset();
    assert_eq!(hint_cmd(&b), 0, "a reset device says STOP");
}

#[test]
fn hinting_commands_need_the_feature() {
    let mut b = Balloon::new(params(false, true)).unwrap();
    assert_eq!(b.start_hinting(true), Err(BalloonError::HintingNotEnabled));
    assert_eq!(b.stop_hinting(), Err(BalloonError::HintingNotEnabled));
    assert_eq!(b.hinting_status(), Err(BalloonError::HintingNotEnabled));
}

#[test]
fn the_hinting_run_survives_a_snapshot_and_the_restored_device_says_done() {
    let m = mem4();
    let mut b = Balloon::new(params(true, false)).unwrap();
    let queues = || {
        (0..3u64)
            .map(|i| queue_at(&m, GuestAddress(i * 0x10000), 16, &[], &[]).1)
            .collect::<Vec<_>>()
    };
    start(&mut b, &m, queues(), VIRTIO_F_VERSION_1 | F_FREE_PAGE_HINT);
    b.start_hinting(false).unwrap();
    b.hinting.guest_cmd = Some(2);
    let mut config = [0u8; 12];
    b.read_config(0, &mut config);
    let saved = b.save_device_state();
    let mut r = Balloon::new(params(true, false)).unwrap();
    r.restore_config(&config);
    r.restore_device_state(&saved).unwrap();
    assert_eq!(r.hinting, b.hinting, "as saved until it starts");
    let irq = start(&mut r, &m, queues(), VIRTIO_F_VERSION_1 | F_FREE_PAGE_HINT);
    assert_eq!(hint_cmd(&r), 1, "DONE");
    assert_eq!(irq.generation(), 1);
    assert_eq!(r.hinting_status().unwrap().guest_cmd, Some(2));
    r.start_hinting(true).unwrap();
    assert_eq!(hint_cmd(&r), 3, "the next run's id follows the saved one");
    // A snapshot without the state (format v1.0), and one with a broken state.
    let mut old = Balloon::new(params(true, false)).unwrap();
    old.restore_device_state(&[]).unwrap();
    assert!(old.restore_device_state(&[1, 2, 3]).is_err());
    let mut bad = saved.clone();
    bad[4] = 7;
    assert!(old.restore_device_state(&bad).is_err());
    // A device without hinting keeps no state but takes an empty one.
    let plain = Balloon::new(params(false, false)).unwrap();
    assert_eq!(plain.save_device_state().len(), 10);
}
