use super::region::MemorySlots;
use super::request::{BlockRange, BlockState};
use super::*;
use crate::arch::x86_64::layout::DEVICE_MEMORY_START;
use crate::devices::virtio::queue::tests::{desc, queue_at, F_NEXT, F_WRITE};
use crate::devices::virtio::Interrupt;
use std::sync::Arc;
use std::sync::Mutex;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const MIB: u64 = 1 << 20;
const BASE: u64 = DEVICE_MEMORY_START;

/// Records every slot change (slot, guest address, size).
#[derive(Clone, Default)]
struct FakeSlots(Arc<Mutex<Vec<(u32, u64, u64)>>>);

impl MemorySlots for FakeSlots {
    unsafe fn set_slot(&self, slot: u32, guest: u64, size: u64, _host: u64) -> Result<(), String> {
        self.0.lock().unwrap().push((slot, guest, size));
        Ok(())
    }
}

/// 1 MiB of RAM at 0 and a 256 MiB region (two 128 MiB slots, 2 MiB blocks).
fn setup() -> (GuestMemoryMmap, VirtioMem, FakeSlots) {
    let ram = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let m = crate::vstate::memory::add_hotplug_region(&ram, BASE, 256 * MIB).unwrap();
    let mut dev = VirtioMem::new(&m, BASE, 256 * MIB, 2 * MIB, 128 * MIB).unwrap();
    let slots = FakeSlots::default();
    dev.region_mut().set_slots(Box::new(slots.clone()), 32);
    (m, dev, slots)
}

fn start(dev: &mut VirtioMem, m: &GuestMemoryMmap, q: Queue) -> Arc<Interrupt> {
    let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    dev.activate(Activation {
        mem: m.clone(),
        queues: vec![q],
        features: VIRTIO_F_VERSION_1 | F_UNPLUGGED_INACCESSIBLE,
        interrupt: irq.clone(),
    })
    .unwrap();
    irq
}

fn idle_queue(m: &GuestMemoryMmap) -> (MockSplitQueue<'_, GuestMemoryMmap>, Queue) {
    queue_at(m, GuestAddress(0), 16, &[], &[])
}

fn config_u64(dev: &VirtioMem, offset: u64) -> u64 {
    let mut b = [0u8; 8];
    dev.read_config(offset, &mut b);
    u64::from_le_bytes(b)
}

fn range(block: u64, n: u16) -> BlockRange {
    BlockRange {
        addr: BASE + block * 2 * MIB,
        nb_blocks: n,
    }
}

#[test]
fn config_space_has_the_region_and_the_driver_must_accept_unplugged_inaccessible() {
    let (m, mut dev, _) = setup();
    assert_eq!(dev.device_type(), 24);
    assert_eq!(
        dev.features(),
        VIRTIO_F_VERSION_1 | F_UNPLUGGED_INACCESSIBLE
    );
    assert_eq!(config_u64(&dev, 0), 2 * MIB);
    assert_eq!(config_u64(&dev, 8), 0, "node_id and padding");
    assert_eq!(config_u64(&dev, 16), BASE);
    assert_eq!(config_u64(&dev, 24), 256 * MIB);
    assert_eq!(config_u64(&dev, 32), 0, "nothing usable before a request");
    assert_eq!(config_u64(&dev, 40), 0);
    assert_eq!(config_u64(&dev, 48), 0);
    // Past the end: zeros; a read across the end: the part inside.
    assert_eq!(config_u64(&dev, 56), 0);
    let mut b = [0xffu8; 4];
    dev.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0; 4]);
    let (_vq, q) = idle_queue(&m);
    let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    let before = METRICS.memory_hotplug.activate_fails.total();
    let e = dev
        .activate(Activation {
            mem: m.clone(),
            queues: vec![q],
            features: VIRTIO_F_VERSION_1,
            interrupt: irq,
        })
        .unwrap_err();
    assert_eq!(
        e,
        ActivateError::MissingFeature("VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE")
    );
    assert!(METRICS.memory_hotplug.activate_fails.total() > before);
    assert!(!dev.is_activated());
}

#[test]
fn requested_size_is_checked_and_raises_a_config_change() {
    let (m, mut dev, _) = setup();
    assert_eq!(dev.update_requested_size(4), Err(VirtioMemError::NotActive));
    let (_vq, q) = idle_queue(&m);
    let irq = start(&mut dev, &m, q);
    assert_eq!(
        dev.update_requested_size(3),
        Err(VirtioMemError::NotBlockMultiple {
            requested: 3,
            block: 2
        })
    );
    assert_eq!(
        dev.update_requested_size(258),
        Err(VirtioMemError::TooLarge {
            requested: 258,
            total: 256
        })
    );
    assert_eq!(irq.generation(), 0);
    dev.update_requested_size(4).unwrap();
    assert_eq!(irq.generation(), 1);
    assert_eq!(irq.status() & 2, 2, "configuration change interrupt");
    assert_eq!(config_u64(&dev, 48), 4 * MIB);
    assert_eq!(config_u64(&dev, 32), 128 * MIB, "usable: a whole slot");
    dev.update_requested_size(130).unwrap();
    assert_eq!(config_u64(&dev, 32), 256 * MIB);
    // Lowering the request keeps the usable region (only UNPLUG_ALL shrinks it).
    dev.update_requested_size(0).unwrap();
    assert_eq!(config_u64(&dev, 32), 256 * MIB);
    assert_eq!(dev.status().requested_size_mib, 0);
}

#[test]
fn plug_and_unplug_follow_the_spec_and_move_kvm_slots() {
    let (m, mut dev, slots) = setup();
    let (_vq, q) = idle_queue(&m);
    start(&mut dev, &m, q);
    dev.update_requested_size(6).unwrap();
    let nacks = METRICS.memory_hotplug.plug_nacks.total();
    // Two blocks at the start: the first slot is registered.
    assert_eq!(dev.handle(Request::Plug(range(0, 2))), Response::Ack);
    assert_eq!(slots.0.lock().unwrap().as_slice(), &[(32, BASE, 128 * MIB)]);
    assert_eq!(config_u64(&dev, 40), 4 * MIB);
    // Past requested_size: NACK, nothing changes.
    assert_eq!(dev.handle(Request::Plug(range(2, 2))), Response::Nack);
    assert!(METRICS.memory_hotplug.plug_nacks.total() > nacks);
    // Already plugged, unaligned, empty, outside the usable region: ERROR.
    assert_eq!(dev.handle(Request::Plug(range(1, 1))), Response::Error);
    let unaligned = BlockRange {
        addr: BASE + 4096,
        nb_blocks: 1,
    };
    assert_eq!(dev.handle(Request::Plug(unaligned)), Response::Error);
    assert_eq!(dev.handle(Request::Plug(range(2, 0))), Response::Error);
    assert_eq!(dev.handle(Request::Plug(range(64, 1))), Response::Error);
    assert_eq!(dev.handle(Request::State(range(64, 1))), Response::Error);
    // STATE.
    assert_eq!(
        dev.handle(Request::State(range(0, 2))),
        Response::State(BlockState::Plugged)
    );
    assert_eq!(
        dev.handle(Request::State(range(1, 2))),
        Response::State(BlockState::Mixed)
    );
    assert_eq!(
        dev.handle(Request::State(range(2, 62))),
        Response::State(BlockState::Unplugged)
    );
    // The third block, at the end of the first slot.
    assert_eq!(dev.handle(Request::Plug(range(63, 1))), Response::Ack);
    assert_eq!(slots.0.lock().unwrap().len(), 1, "same slot");
    // Write into a plugged block; unplugging it gives it back (reads as zero).
    m.write_obj(0x6b69_6c6eu64, GuestAddress(BASE + 63 * 2 * MIB))
        .unwrap();
    // UNPLUG of an unplugged block: ERROR; of a mixed range: ERROR.
    assert_eq!(dev.handle(Request::Unplug(range(2, 1))), Response::Error);
    assert_eq!(dev.handle(Request::Unplug(range(1, 2))), Response::Error);
    assert_eq!(dev.handle(Request::Unplug(range(63, 1))), Response::Ack);
    assert_eq!(
        m.read_obj::<u64>(GuestAddress(BASE + 63 * 2 * MIB))
            .unwrap(),
        0
    );
    assert_eq!(slots.0.lock().unwrap().len(), 1, "blocks 0-1 keep the slot");
    assert_eq!(dev.handle(Request::Unplug(range(0, 2))), Response::Ack);
    assert_eq!(
        slots.0.lock().unwrap().last(),
        Some(&(32, BASE, 0)),
        "the slot's last block went: the slot is removed"
    );
    assert!(!dev.region().slot_registered(0));
    assert_eq!(dev.status().plugged_size_mib, 0);
}

#[test]
fn unplug_all_empties_everything_and_shrinks_the_usable_region() {
    let (m, mut dev, slots) = setup();
    let (_vq, q) = idle_queue(&m);
    start(&mut dev, &m, q);
    dev.update_requested_size(256).unwrap();
    assert_eq!(dev.handle(Request::Plug(range(0, 1))), Response::Ack);
    assert_eq!(dev.handle(Request::Plug(range(100, 2))), Response::Ack);
    assert_eq!(slots.0.lock().unwrap().len(), 2);
    dev.update_requested_size(2).unwrap();
    assert_eq!(dev.handle(Request::UnplugAll), Response::Ack);
    assert_eq!(dev.status().plugged_size_mib, 0);
    assert!(!dev.region().slot_registered(0) && !dev.region().slot_registered(1));
    assert_eq!(dev.usable_size(), 128 * MIB);
    // A reset keeps the blocks' state.
    assert_eq!(dev.handle(Request::Plug(range(0, 1))), Response::Ack);
    dev.reset();
    assert_eq!(dev.status().plugged_size_mib, 2);
}

#[test]
fn requests_on_the_queue_and_hostile_chains() {
    let (m, mut dev, _) = setup();
    let put = |addr: u64, req: Request| m.write_slice(&req.encode(), GuestAddress(addr)).unwrap();
    put(0x8000, Request::Plug(range(0, 1)));
    put(0x8100, Request::State(range(0, 1)));
    m.write_slice(&[9u8; 24], GuestAddress(0x8200)).unwrap();
    let descs = [
        // 0-1: PLUG, answered ACK.
        desc(0x8000, 24, F_NEXT, 1),
        desc(0x9000, 10, F_WRITE, 0),
        // 2-3: STATE, answered PLUGGED.
        desc(0x8100, 24, F_NEXT, 3),
        desc(0x9100, 16, F_WRITE, 0),
        // 4-5: an unknown type: ERROR.
        desc(0x8200, 24, F_NEXT, 5),
        desc(0x9200, 10, F_WRITE, 0),
        // 6-7: a short request: ERROR.
        desc(0x8000, 8, F_NEXT, 7),
        desc(0x9300, 10, F_WRITE, 0),
        // 8: no response buffer: returned empty.
        desc(0x8000, 24, 0, 0),
        // 9: outside guest memory.
        desc(0xffff_0000, 24, 0, 0),
    ];
    let (vq, q) = queue_at(&m, GuestAddress(0), 16, &descs, &[0, 2, 4, 6, 8, 9]);
    let irq = start(&mut dev, &m, q);
    dev.update_requested_size(2).unwrap();
    let invalid = METRICS.memory_hotplug.invalid_requests.total();
    dev.process_queue(0, &mut EventCtx::default());
    let used = |i: usize| {
        let e = vq.used().ring().ref_at(i).unwrap().load();
        (e.id(), e.len())
    };
    assert_eq!(u16::from_le(vq.used().idx().load()), 6);
    assert_eq!(used(0), (0, 10));
    assert_eq!(used(1), (2, 10));
    assert_eq!(used(2), (4, 10));
    assert_eq!(used(3), (6, 10));
    assert_eq!(used(4), (8, 0));
    assert_eq!(used(5), (9, 0));
    let resp = |addr: u64| {
        let mut r = [0u8; 10];
        m.read_slice(&mut r, GuestAddress(addr)).unwrap();
        r
    };
    assert_eq!(resp(0x9000), Response::Ack.encode());
    assert_eq!(resp(0x9100), Response::State(BlockState::Plugged).encode());
    assert_eq!(resp(0x9200), Response::Error.encode());
    assert_eq!(resp(0x9300), Response::Error.encode());
    assert!(METRICS.memory_hotplug.invalid_requests.total() >= invalid + 4);
    assert_eq!(irq.status() & 1, 1);
    assert_eq!(dev.status().plugged_size_mib, 2);
}

fn saved_state() -> persist::VirtioMemState {
    persist::VirtioMemState {
        addr: BASE,
        total: 256 * MIB,
        block: 2 * MIB,
        slot: 128 * MIB,
        requested: 200 * MIB,
        usable: 256 * MIB,
        // Blocks 1, 2 and 67 (the second slot's fourth).
        plugged: vec![0b110, 1 << 3],
    }
}

#[test]
fn a_saved_state_restores_the_blocks_and_exactly_the_slots_holding_them() {
    let (m, mut dev, slots) = setup();
    let saved = saved_state();
    dev.restore_state(&saved).unwrap();
    assert_eq!(
        *slots.0.lock().unwrap(),
        vec![(32, BASE, 128 * MIB), (33, BASE + 128 * MIB, 128 * MIB)]
    );
    assert_eq!(config_u64(&dev, 32), 256 * MIB, "usable");
    assert_eq!(config_u64(&dev, 40), 6 * MIB, "plugged");
    assert_eq!(config_u64(&dev, 48), 200 * MIB, "requested");
    assert_eq!(dev.save_state(), saved);
    assert_eq!(saved.runs(true), vec![(1, 2), (67, 1)]);
    assert_eq!(saved.runs(false), vec![(0, 1), (3, 64), (68, 60)]);
    // The restored blocks answer as plugged ones: an UNPLUG of block 67 removes slot 33.
    let q = idle_queue(&m).1;
    start(&mut dev, &m, q);
    assert_eq!(dev.handle(Request::Unplug(range(67, 1))), Response::Ack);
    assert_eq!(
        slots.0.lock().unwrap().last(),
        Some(&(33, BASE + 128 * MIB, 0))
    );
    let mut e = crate::snapshot::Encoder::new();
    e.put(&saved);
    let bytes = e.into_bytes();
    let decoded: persist::VirtioMemState = crate::snapshot::Decoder::new(&bytes).get().unwrap();
    assert_eq!(decoded, saved);
}

#[test]
fn a_saved_state_that_disagrees_with_the_device_is_refused_naming_what() {
    type Edit = fn(&mut persist::VirtioMemState);
    let cases: [(&str, Edit); 8] = [
        ("the snapshot's hot-plug region is at 0x0, the device's at 0x8000000000", |s| s.addr = 0),
        ("the snapshot's hot-plug region size is 0x20000000 bytes, the configuration's (memory-hotplug) 0x10000000", |s| s.total = 512 * MIB),
        ("the snapshot's hot-plug block size is 0x400000 bytes", |s| s.block = 4 * MIB),
        ("the snapshot's hot-plug slot size is 0x10000000 bytes", |s| s.slot = 256 * MIB),
        ("the snapshot's hot-plug bitmap has 3 words, 128 blocks need 2", |s| s.plugged.push(0)),
        ("the snapshot's hot-plug usable region (0x1000000 bytes) is not whole slots", |s| s.usable = 16 * MIB),
        ("the snapshot's hot-plug requested size (0x100000 bytes) is not whole blocks", |s| s.requested = MIB),
        ("the snapshot's hot-plug bitmap marks block 67 plugged, outside the usable region (0x8000000 bytes)", |s| s.usable = 128 * MIB),
    ];
    for (words, edit) in cases {
        let (_m, mut dev, slots) = setup();
        let mut s = saved_state();
        edit(&mut s);
        let err = dev.restore_state(&s).unwrap_err().to_string();
        assert!(err.contains(words), "{err:?} should say {words:?}");
        assert!(slots.0.lock().unwrap().is_empty(), "{words}: no slot");
        assert_eq!(dev.status().plugged_size_mib, 0, "{words}: nothing plugged");
    }
    // A bit past the region's blocks (a region whose blocks do not fill the last word).
    let mut s = persist::VirtioMemState {
        total: 130 * MIB,
        slot: 2 * MIB,
        plugged: vec![0, 1 << 1],
        usable: 0,
        requested: 0,
        ..saved_state()
    };
    assert_eq!(
        s.check(BASE, 130 * MIB, 2 * MIB, 2 * MIB)
            .unwrap_err()
            .to_string(),
        "the snapshot's hot-plug bitmap marks block 65 plugged, past the region's 65 blocks"
    );
    s.plugged[1] = 1;
    s.usable = 130 * MIB;
    assert_eq!(s.check(BASE, 130 * MIB, 2 * MIB, 2 * MIB), Ok(()));
}

#[test]
fn a_hostile_bitmap_length_is_refused_before_anything_is_allocated() {
    let mut e = crate::snapshot::Encoder::new();
    e.put(&saved_state());
    let mut bytes = e.into_bytes();
    let count_at = bytes.len() - 16 - 4;
    for (count, words) in [
        (
            u32::MAX,
            "hot-plug bitmap: 4294967295 entries, more than the 524288 allowed",
        ),
        (1 << 19, "hot-plug bitmap"),
    ] {
        bytes[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
        let err = crate::snapshot::Decoder::new(&bytes)
            .get::<persist::VirtioMemState>()
            .unwrap_err()
            .to_string();
        assert!(err.contains(words), "{err}");
    }
}
