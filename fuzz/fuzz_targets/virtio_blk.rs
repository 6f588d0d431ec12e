//! The virtio-blk device end to end (`vmm/src/devices/virtio/block/`): a `Block` over a small
//! in-memory disk image, activated with a queue the input lays out, then notified; it pops
//! chains, walks them, parses each request (`request::parse`, `check_range`) and does the
//! disk I/O, exactly as on the VMM thread.
//!
//! Input: one byte of device options (bit 0 read-only, bit 1 `Writeback` cache, bits 2-7 the
//! disk size in sectors, 0 to 63), then the queue (see `kiln_fuzz::guest`).
//!
//! Besides "no panic", it checks the threat model's promises: the device writes guest memory
//! only inside device-writable descriptors and the used ring, never grows (or, read-only,
//! changes) the disk image, and publishes at most as many used entries as it took.
#![no_main]

use kiln_fuzz::guest::{GuestQueue, DESC_TABLE, MAX_QUEUE_SIZE, USED_RING};
use kiln_fuzz::{Input, MemFile};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::sync::Arc;
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::{Queue, QueueT};
use vmm::devices::virtio::block::Block;
use vmm::devices::virtio::{Activation, EventCtx, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use vmm::resources::{CacheType, DriveConfig};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

thread_local! {
    static DISK: RefCell<MemFile> = RefCell::new(MemFile::new("kiln-fuzz-disk"));
}

/// A recognisable disk: sector n is filled with byte n.
fn disk_image(sectors: usize) -> Vec<u8> {
    let mut image = vec![0u8; sectors * 512];
    for (n, sector) in image.chunks_mut(512).enumerate() {
        sector.fill(n as u8);
    }
    image
}

fuzz_target!(|data: &[u8]| {
    kiln_fuzz::setup();
    let mut input = Input::new(data);
    let options = input.u8();
    let read_only = options & 1 != 0;
    let cache_type = if options & 2 != 0 {
        CacheType::Writeback
    } else {
        CacheType::Unsafe
    };
    let sectors = usize::from(options >> 2);
    let Some(mut g) = GuestQueue::from_input(&mut input) else {
        return;
    };
    DISK.with(|disk| {
        let mut disk = disk.borrow_mut();
        let image = disk_image(sectors);
        let path = disk.set(&image).to_string();
        let cfg = DriveConfig {
            drive_id: "fuzz".into(),
            path_on_host: path,
            is_root_device: true,
            is_read_only: read_only,
            partuuid: None,
            cache_type,
            io_engine: Default::default(),
            rate_limiter: None,
        };
        let mut dev = Block::new(&cfg).expect("the in-memory disk opens");
        assert_eq!(dev.capacity(), sectors as u64);

        let size = g.queue.size();
        let queue = std::mem::replace(
            &mut g.queue,
            Queue::new(MAX_QUEUE_SIZE).expect("a queue of the maximum size"),
        );
        let before = g.snapshot();
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let interrupt = Arc::new(Interrupt::new(irq));
        let activation = Activation {
            mem: g.mem.clone(),
            queues: vec![queue],
            features: dev.features() & VIRTIO_F_VERSION_1,
            interrupt: interrupt.clone(),
        };
        if dev.activate(activation).is_err() {
            return;
        }
        // A few notifications: the device bounds its work per event and asks for more turns.
        for _ in 0..4 {
            let mut ctx = EventCtx::default();
            dev.process_queue(0, &mut ctx);
        }
        let after = g.snapshot();
        dev.reset();
        kiln_fuzz::debug(|| {
            let used = g.used_idx().wrapping_sub(g.start);
            format!(
                "{used} used entries, needs reset: {}, status bytes at 0x2300: {:?}",
                interrupt.needs_reset(),
                &after[0x2300..0x2304]
            )
        });

        // The disk: never grown; untouched when read-only.
        assert_eq!(
            disk.len(),
            image.len() as u64,
            "the disk image changed size"
        );
        if read_only {
            let now = std::fs::read(disk.path()).expect("the disk reads back");
            assert!(now == image, "a read-only disk was written");
        }

        // Guest memory: only device-writable buffers and the used ring may have changed.
        let writable: Vec<(u64, u64)> = g
            .descriptors
            .iter()
            .filter(|d| u32::from(d.2) & VRING_DESC_F_WRITE != 0)
            .map(|d| (d.0, u64::from(d.1)))
            .collect();
        let used_end = USED_RING + g.used_ring_len();
        // A driver may hand out its own rings as buffers; then the device rewrites them and
        // what it does next is no longer predictable from the initial table: check only the
        // inputs where no writable buffer overlaps the rings.
        if writable
            .iter()
            .any(|&(a, l)| a < used_end && a.saturating_add(l) > DESC_TABLE)
        {
            return;
        }
        for addr in GuestQueue::changed(&before, &after) {
            let ok = (USED_RING..used_end).contains(&addr)
                || writable.iter().any(|&(a, l)| addr >= a && addr - a < l);
            assert!(
                ok,
                "the device wrote guest memory at {addr:#x}, outside every device-writable buffer"
            );
        }
        // Used entries: never more than the driver made available.
        let published = g.used_idx().wrapping_sub(g.start);
        assert!(
            published <= size,
            "{published} used entries in a queue of {size}"
        );
    });
});
