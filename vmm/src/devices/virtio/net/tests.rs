use super::*;
use crate::devices::virtio::queue::tests::{desc, mem, queue_at, queue_with, F_WRITE};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

fn active(m: &GuestMemoryMmap, rx: Queue, tx: Queue, mergeable: bool) -> Active {
    let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    Active {
        mem: m.clone(),
        rx,
        tx,
        interrupt,
        mergeable,
        broken: false,
    }
}

fn frame(len: usize) -> Vec<u8> {
    (0..len).map(|i| i as u8).collect()
}

fn used(vq: &MockSplitQueue<'_, GuestMemoryMmap>, i: usize) -> (u32, u32) {
    let e = vq.used().ring().ref_at(i).unwrap().load();
    (e.id(), e.len())
}

#[test]
fn delivers_into_one_buffer() {
    let m = mem();
    let (vq, rx) = queue_with(&m, 16, &[desc(0x8000, 2048, F_WRITE, 0)], &[0]);
    let (_vq2, tx) = queue_at(&m, GuestAddress(0x40000), 16, &[], &[]);
    let mut a = active(&m, rx, tx, false);
    let mut f = frame(100);
    assert_eq!(deliver(&mut a, &mut f).unwrap(), Delivery::Delivered);
    assert_eq!(used(&vq, 0), (0, 100));
    let mut got = [0u8; 100];
    m.read_slice(&mut got, GuestAddress(0x8000)).unwrap();
    assert_eq!(&got[..10], &f[..10]);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
    assert_eq!(&got[12..], &f[12..]);
    // No more buffers: the next frame waits.
    assert_eq!(
        deliver(&mut a, &mut frame(100)).unwrap(),
        Delivery::NoBuffers
    );
}

#[test]
fn small_buffers_drop_the_frame_without_mergeable() {
    let m = mem();
    let (vq, rx) = queue_with(&m, 16, &[desc(0x8000, 64, F_WRITE, 0)], &[0]);
    let (_vq2, tx) = queue_at(&m, GuestAddress(0x40000), 16, &[], &[]);
    let mut a = active(&m, rx, tx, false);
    assert_eq!(deliver(&mut a, &mut frame(100)).unwrap(), Delivery::Dropped);
    assert_eq!(used(&vq, 0), (0, 0));
}

#[test]
fn merges_buffers_when_negotiated() {
    let m = mem();
    let descs = [
        desc(0x8000, 64, F_WRITE, 0),
        desc(0x9000, 64, F_WRITE, 0),
        desc(0xa000, 64, F_WRITE, 0),
    ];
    let (vq, rx) = queue_with(&m, 16, &descs, &[0, 1, 2]);
    let (_vq2, tx) = queue_at(&m, GuestAddress(0x40000), 16, &[], &[]);
    let mut a = active(&m, rx, tx, true);
    let mut f = frame(150);
    assert_eq!(deliver(&mut a, &mut f).unwrap(), Delivery::Delivered);
    assert_eq!(u16::from_le(vq.used().idx().load()), 3);
    assert_eq!(
        [used(&vq, 0), used(&vq, 1), used(&vq, 2)],
        [(0, 64), (1, 64), (2, 22)]
    );
    let mut hdr = [0u8; 12];
    m.read_slice(&mut hdr, GuestAddress(0x8000)).unwrap();
    assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 3);
    let mut tail = [0u8; 22];
    m.read_slice(&mut tail, GuestAddress(0xa000)).unwrap();
    assert_eq!(&tail[..], &f[128..]);
}

#[test]
fn too_few_mergeable_buffers_wait_and_are_put_back() {
    let m = mem();
    let (vq, rx) = queue_with(&m, 16, &[desc(0x8000, 64, F_WRITE, 0)], &[0]);
    let (_vq2, tx) = queue_at(&m, GuestAddress(0x40000), 16, &[], &[]);
    let mut a = active(&m, rx, tx, true);
    assert_eq!(
        deliver(&mut a, &mut frame(150)).unwrap(),
        Delivery::NoBuffers
    );
    assert_eq!(a.rx.next_avail(), 0, "the buffer is available again");
    assert_eq!(u16::from_le(vq.used().idx().load()), 0);
}

#[test]
fn hostile_receive_chains() {
    let m = mem();
    // A readable (not writable) chain pointing outside memory, then a good buffer.
    let descs = [
        desc(0xffff_0000, 64, F_WRITE, 0),
        desc(0x9000, 2048, F_WRITE, 0),
    ];
    let (vq, rx) = queue_with(&m, 16, &descs, &[0, 1]);
    let (_vq2, tx) = queue_at(&m, GuestAddress(0x40000), 16, &[], &[]);
    let mut a = active(&m, rx, tx, false);
    assert_eq!(
        deliver(&mut a, &mut frame(100)).unwrap(),
        Delivery::Delivered
    );
    assert_eq!([used(&vq, 0), used(&vq, 1)], [(0, 0), (1, 100)]);
    // The available index jumping ahead is a broken queue.
    let (vq, rx) = queue_with(&m, 16, &[desc(0x9000, 2048, F_WRITE, 0)], &[0]);
    vq.avail().idx().store(u16::to_le(999));
    let (_vq2, tx) = queue_at(&m, GuestAddress(0x40000), 16, &[], &[]);
    let mut a = active(&m, rx, tx, false);
    assert!(matches!(
        deliver(&mut a, &mut frame(100)),
        Err(QueueError::AvailIndex { .. })
    ));
}
