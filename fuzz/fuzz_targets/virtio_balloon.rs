//! The virtio-balloon device end to end (`vmm/src/devices/virtio/balloon/`): a `Balloon`
//! with statistics, free page hinting and free page reporting, activated with the input's
//! queue in the place of its inflate, deflate, stats, hinting or reporting queue, then
//! notified, exactly as on the VMM thread: chains popped and walked, frame number lists
//! read and checked against guest RAM, the pages of valid ones dropped from the mapping
//! (`madvise(MADV_DONTNEED)` on the fuzz process's own guest memory), statistics entries
//! parsed, extra stats buffers returned, hinting ids taken and reported or hinted ranges
//! checked, cut to whole pages and dropped.
//!
//! Input: one byte of options (bits 0-1: which queue the input is, 0 inflate, 1 deflate,
//! else stats, unless bit 5 is set: then bit 6 chooses hinting (0) or reporting (1); bits
//! 2-3: how many extra notifications, 0 to 3; bit 4: write `actual` into the configuration
//! space and read it back; bit 7: a hinting run is started first), 4 bytes (`actual`, little
//! endian; with bit 7, its low bit is `acknowledge_on_stop`), then the queue (see
//! `kiln_fuzz::guest`).
//!
//! Besides "no panic", it checks the threat model's promises: every used entry has length 0
//! (the device never writes into the guest's buffers), it publishes at most as many used
//! entries as the driver made available, and guest memory changes only in the used ring
//! or in whole pages given back (now zero, but for the used ring if it lies there): for the
//! inflate queue pages whose frame numbers the guest wrote somewhere in its memory, for the
//! reporting queue (and the hinting queue in a run) pages wholly inside a range a
//! descriptor gave; the hinting queue without a run gives nothing back. The hinting status
//! shows an id only the guest could have sent, and the host's id is STOP, the run's or
//! DONE.
#![no_main]

use kiln_fuzz::guest::{GuestQueue, MAX_QUEUE_SIZE, REGION0, REGION1, REGION_LEN};
use kiln_fuzz::Input;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;
use std::sync::Arc;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm::devices::virtio::balloon::{
    Balloon, BalloonParams, F_FREE_PAGE_HINT, F_REPORTING, F_STATS_VQ,
};
use vmm::devices::virtio::{Activation, EventCtx, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const PAGE: u64 = 4096;

fuzz_target!(|data: &[u8]| {
    kiln_fuzz::setup();
    let mut input = Input::new(data);
    let options = input.u8();
    let index = if options & 0x20 != 0 {
        3 + usize::from((options >> 6) & 1)
    } else {
        usize::from(options & 3).min(2)
    };
    let run = options & 0x80 != 0;
    let turns = 1 + usize::from((options >> 2) & 3);
    let config = options & 0x10 != 0;
    let actual = u32::from_le_bytes([input.u8(), input.u8(), input.u8(), input.u8()]);
    let Some(mut g) = GuestQueue::from_input(&mut input) else {
        return;
    };
    let size = g.queue.size();
    let fuzzed = std::mem::replace(
        &mut g.queue,
        Queue::new(MAX_QUEUE_SIZE).expect("a queue of the maximum size"),
    );
    let mut dev = Balloon::new(BalloonParams {
        amount_mib: 0,
        deflate_on_oom: true,
        stats_polling_interval_s: 1,
        free_page_hinting: true,
        free_page_reporting: true,
    })
    .expect("a timerfd");
    // The other queues: ready, never notified.
    let mut queues: Vec<Queue> = (0..5)
        .map(|_| {
            let mut q = Queue::new(MAX_QUEUE_SIZE).expect("a queue");
            q.set_ready(true);
            q
        })
        .collect();
    queues[index] = fuzzed;
    let before = g.snapshot();
    let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd")));
    let activation = Activation {
        mem: g.mem.clone(),
        queues,
        features: VIRTIO_F_VERSION_1 | F_STATS_VQ | F_FREE_PAGE_HINT | F_REPORTING,
        interrupt: interrupt.clone(),
    };
    if dev.activate(activation).is_err() {
        return;
    }
    if run {
        dev.start_hinting(actual & 1 != 0)
            .expect("hinting is enabled and the device started");
    }
    if config {
        let _ = dev.write_config(4, &actual.to_le_bytes());
        let mut c = [0u8; 16];
        dev.read_config(0, &mut c);
        assert_eq!(&c[4..8], &actual.to_le_bytes(), "actual reads back");
    }
    for _ in 0..turns {
        let mut ctx = EventCtx::default();
        dev.process_queue(index, &mut ctx);
    }
    let stats = dev.latest_stats().expect("statistics are enabled");
    let hinting = dev.hinting_status().expect("hinting is enabled");
    let after = g.snapshot();
    dev.reset();
    let published = g.used_idx().wrapping_sub(g.start);
    kiln_fuzz::debug(|| {
        format!(
            "queue {index}: {published} used entries, needs reset: {}, stats {stats:?}, \
             hinting {hinting:?}",
            interrupt.needs_reset()
        )
    });
    assert!(
        published <= size,
        "{published} used entries in a queue of {size}"
    );
    for i in 0..published {
        let slot = u64::from(g.start.wrapping_add(i) % size);
        let len: u32 = g
            .mem
            .read_obj(GuestAddress(g.used + 4 + slot * 8 + 4))
            .expect("the used ring is in guest memory");
        assert_eq!(u32::from_le(len), 0, "a used length of {len} bytes");
    }
    // Whether frame number `page` was in guest memory (at any byte: a list need not be
    // aligned) before the device ran, or after it: a list may lie over the used ring, where
    // the device's own entries of an earlier turn become the frame numbers of a later one.
    let written = |page: u64| {
        [&before, &after].iter().any(|m| {
            m.windows(4)
                .any(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])) == page)
        })
    };
    // The host's id: STOP (no run), the run's (2) or DONE (the guest's end, acknowledged).
    let host_ids: &[u32] = if run { &[2, 1] } else { &[0] };
    assert!(
        host_ids.contains(&hinting.host_cmd),
        "host id {} (run: {run})",
        hinting.host_cmd
    );
    if index != 3 {
        assert_eq!(hinting.guest_cmd, None, "an id from another queue");
    }
    let used_end = g.used + g.used_ring_len();
    // Whether page `page` lies wholly inside a range a descriptor gave.
    let in_range = |page: u64| {
        let (start, end) = (page * PAGE, page * PAGE + PAGE);
        g.descriptors
            .iter()
            .any(|&(addr, len, _, _)| addr <= start && addr.saturating_add(u64::from(len)) >= end)
    };
    let table_end = g.desc + 16 * u64::from(size);
    let table_over_used_ring = g.desc < used_end && table_end > g.used;
    // Whether a descriptor (as the guest left the table) points into the used ring.
    let lists_over_used_ring = g
        .descriptors
        .iter()
        .any(|&(addr, len, _, _)| addr < used_end && addr.saturating_add(u64::from(len)) > g.used);
    // Each page with a change outside the used ring, once.
    let pages: BTreeSet<u64> = GuestQueue::changed(&before, &after)
        .into_iter()
        .filter(|a| !(g.used..used_end).contains(a))
        .map(|a| a / PAGE)
        .collect();
    for page in pages {
        let start = page * PAGE;
        let offset = if start >= REGION1 {
            REGION_LEN as u64 + (start - REGION1)
        } else {
            start - REGION0
        };
        // Given back, the page reads zero, except where the device wrote its used ring
        // afterwards (a guest may give the page its rings are in).
        let zero = (0..PAGE).all(|i| {
            (g.used..used_end).contains(&(start + i)) || after[(offset + i) as usize] == 0
        });
        // A list over the used ring is read after the device wrote entries there, so its
        // frame numbers may be values the used ring held only for a while (an index).
        let given = match index {
            0 => written(page) || lists_over_used_ring,
            // Ranges are taken from the table as the device read it, which the used ring
            // may have changed when it lies over the table.
            3 if run => in_range(page) || table_over_used_ring,
            4 => in_range(page) || table_over_used_ring,
            _ => false,
        };
        assert!(
            zero && given,
            "the device changed guest memory in page {page:#x} (queue {index}, page zero: {zero})"
        );
    }
});
