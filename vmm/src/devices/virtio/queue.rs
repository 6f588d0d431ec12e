//! Queue mechanics shared by the devices, around virtio-queue's split-ring `Queue`.
//!
//! Everything here reads memory the guest controls, so every index and address is checked
//! and every loop is bounded:
//!
//! - [`pop_head`] takes the next head from the available ring, refusing an available index
//!   more than the queue size ahead of the device's (a driver cannot make the device process
//!   an entry twice in one pass, or spin through 65535 stale entries).
//! - [`walk_chain`] follows a chain's `next` links: at most the queue size descriptors (a
//!   loop ends there), every index inside the table, every buffer inside guest memory, no
//!   indirect descriptors (not offered), device-readable buffers before device-writable
//!   ones, at most 4 GiB in total.
//! - [`Chain`]'s readers and writers see the readable and writable buffers as two byte
//!   streams, so devices accept any descriptor layout (virtio 1.x).
//! - [`add_used`] / [`add_used_batch`] write used entries; the batch form publishes several
//!   entries with one index update (merged receive buffers).

use std::num::Wrapping;
use std::sync::atomic::Ordering;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Bytes of the available ring before its entries (flags, idx).
const AVAIL_HEADER: u64 = 4;
/// Bytes of the used ring before its entries (flags, idx).
const USED_HEADER: u64 = 4;
const USED_ELEM: u64 = 8;
const DESC_SIZE: u64 = 16;

/// The driver broke the queue itself: the device cannot go on with it until a reset.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueueError {
    #[error("the available index {avail} is {ahead} entries ahead of the device's {next} (queue size {size})")]
    AvailIndex {
        avail: u16,
        next: u16,
        ahead: u16,
        size: u16,
    },
    #[error("head descriptor index {index} is outside the queue (size {size})")]
    HeadIndex { index: u16, size: u16 },
    #[error("cannot read the available ring at {addr:#x}")]
    AvailRead { addr: u64 },
    #[error("cannot write the used ring at {addr:#x}")]
    UsedWrite { addr: u64 },
    #[error("the queue is not ready")]
    NotReady,
}

/// One chain was malformed; the queue itself is fine.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("descriptor index {index} is outside the queue (size {size})")]
    IndexOutOfRange { index: u16, size: u16 },
    #[error("the chain is longer than the queue size {size} (a loop)")]
    TooLong { size: u16 },
    #[error("descriptor {index} points outside guest memory ({addr:#x}, {len} bytes)")]
    OutsideMemory { index: u16, addr: u64, len: u32 },
    #[error("cannot read descriptor {index} at {addr:#x}")]
    DescriptorRead { index: u16, addr: u64 },
    #[error("descriptor {index} is indirect, and indirect descriptors were not offered")]
    Indirect { index: u16 },
    #[error("device-readable descriptor {index} follows a device-writable one")]
    ReadableAfterWritable { index: u16 },
    #[error("the chain's buffers add up to more than 4 GiB")]
    TooLarge,
}

/// One buffer of a validated chain: inside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A validated descriptor chain: its head index, and its device-readable and
/// device-writable buffers in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    pub readable: Vec<Buffer>,
    pub writable: Vec<Buffer>,
}

/// Takes the next available head, or `None` when the driver has posted nothing new.
pub fn pop_head(queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<Option<u16>, QueueError> {
    if !queue.ready() {
        return Err(QueueError::NotReady);
    }
    let size = queue.size();
    let avail_addr = queue.avail_ring();
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|_| QueueError::AvailRead {
            addr: avail_addr.wrapping_add(2),
        })?;
    let next = Wrapping(queue.next_avail());
    if avail == next {
        return Ok(None);
    }
    let ahead = (avail - next).0;
    if ahead > size {
        return Err(QueueError::AvailIndex {
            avail: avail.0,
            next: next.0,
            ahead,
            size,
        });
    }
    // `size` is a power of two, non-zero for a ready queue (checked at activation).
    let slot = u64::from(next.0 % size.max(1));
    let addr = avail_addr
        .checked_add(AVAIL_HEADER + slot * 2)
        .ok_or(QueueError::AvailRead { addr: avail_addr })?;
    let head: u16 = mem
        .read_obj::<u16>(GuestAddress(addr))
        .map_err(|_| QueueError::AvailRead { addr })?;
    let head = u16::from_le(head);
    queue.set_next_avail((next + Wrapping(1)).0);
    if head >= size {
        return Err(QueueError::HeadIndex { index: head, size });
    }
    Ok(Some(head))
}

/// True when the driver has posted chains the device has not taken yet (or the ring cannot
/// be read, so that the caller looks and finds out).
pub fn has_available(queue: &Queue, mem: &GuestMemoryMmap) -> bool {
    queue
        .avail_idx(mem, Ordering::Acquire)
        .map_or(true, |idx| idx.0 != queue.next_avail())
}

/// Puts back the last `n` heads taken by [`pop_head`] (a device that could not use them yet).
pub fn unpop(queue: &mut Queue, n: u16) {
    queue.set_next_avail((Wrapping(queue.next_avail()) - Wrapping(n)).0);
}

/// Follows the chain starting at `head` and checks it (see the module documentation).
pub fn walk_chain(queue: &Queue, mem: &GuestMemoryMmap, head: u16) -> Result<Chain, ChainError> {
    let size = queue.size();
    let table = queue.desc_table();
    let mut chain = Chain {
        head,
        ..Chain::default()
    };
    let mut index = head;
    let mut total: u64 = 0;
    for _ in 0..size {
        if index >= size {
            return Err(ChainError::IndexOutOfRange { index, size });
        }
        let addr = table
            .checked_add(u64::from(index) * DESC_SIZE)
            .ok_or(ChainError::DescriptorRead { index, addr: table })?;
        let desc: Descriptor = mem
            .read_obj(GuestAddress(addr))
            .map_err(|_| ChainError::DescriptorRead { index, addr })?;
        let flags = u32::from(desc.flags());
        if flags & VRING_DESC_F_INDIRECT != 0 {
            return Err(ChainError::Indirect { index });
        }
        let buf = Buffer {
            addr: desc.addr(),
            len: desc.len(),
        };
        let len = usize::try_from(buf.len).map_err(|_| ChainError::TooLarge)?;
        if !GuestMemoryBackend::check_range(mem, buf.addr, len) {
            return Err(ChainError::OutsideMemory {
                index,
                addr: buf.addr.raw_value(),
                len: buf.len,
            });
        }
        total += u64::from(buf.len);
        if total > u64::from(u32::MAX) {
            return Err(ChainError::TooLarge);
        }
        if flags & VRING_DESC_F_WRITE != 0 {
            chain.writable.push(buf);
        } else if chain.writable.is_empty() {
            chain.readable.push(buf);
        } else {
            return Err(ChainError::ReadableAfterWritable { index });
        }
        if flags & VRING_DESC_F_NEXT == 0 {
            return Ok(chain);
        }
        index = desc.next();
    }
    Err(ChainError::TooLong { size })
}

/// Writes one used entry and publishes it.
pub fn add_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    head: u16,
    len: u32,
) -> Result<(), QueueError> {
    queue
        .add_used(mem, head, len)
        .map_err(|_| QueueError::UsedWrite {
            addr: queue.used_ring(),
        })?;
    mark_used_ring(queue);
    Ok(())
}

/// Diff snapshots: the used ring (header, entries, avail_event) was written by the VMM.
fn mark_used_ring(queue: &Queue) {
    let len = USED_HEADER + USED_ELEM * u64::from(queue.size()) + 2;
    crate::vstate::dirty::mark(
        GuestAddress(queue.used_ring()),
        usize::try_from(len).unwrap_or(0),
    );
}

/// Writes several used entries, then publishes them with a single index update, so the
/// driver never sees part of them.
pub fn add_used_batch(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    entries: &[(u16, u32)],
) -> Result<(), QueueError> {
    let size = queue.size();
    let ring = queue.used_ring();
    let fail = |addr: u64| QueueError::UsedWrite { addr };
    let mut next = Wrapping(queue.next_used());
    for &(head, len) in entries {
        if head >= size {
            return Err(QueueError::HeadIndex { index: head, size });
        }
        let slot = u64::from(next.0 % size.max(1));
        let addr = ring
            .checked_add(USED_HEADER + slot * USED_ELEM)
            .ok_or(fail(ring))?;
        mem.write_obj(u32::from(head).to_le(), GuestAddress(addr))
            .map_err(|_| fail(addr))?;
        mem.write_obj(len.to_le(), GuestAddress(addr + 4))
            .map_err(|_| fail(addr))?;
        next += Wrapping(1);
    }
    let idx_addr = GuestAddress(ring.checked_add(2).ok_or(fail(ring))?);
    mem.store(next.0.to_le(), idx_addr, Ordering::Release)
        .map_err(|_| fail(idx_addr.0))?;
    queue.set_next_used(next.0);
    mark_used_ring(queue);
    Ok(())
}

/// A byte range of a chain's readable or writable stream, cut into guest-memory pieces.
pub fn segments(buffers: &[Buffer], offset: u64, len: u64) -> Segments<'_> {
    Segments {
        buffers,
        index: 0,
        skip: offset,
        left: len,
    }
}

/// Iterator of [`segments`]: `(guest address, length)` pieces, in stream order.
pub struct Segments<'a> {
    buffers: &'a [Buffer],
    index: usize,
    skip: u64,
    left: u64,
}

impl Iterator for Segments<'_> {
    type Item = (GuestAddress, usize);

    fn next(&mut self) -> Option<Self::Item> {
        while self.left > 0 {
            let buf = self.buffers.get(self.index)?;
            self.index += 1;
            let blen = u64::from(buf.len);
            if self.skip >= blen {
                self.skip -= blen;
                continue;
            }
            let start = self.skip;
            self.skip = 0;
            let n = (blen - start).min(self.left);
            self.left -= n;
            // Both fit: a buffer is at most 4 GiB and was checked inside guest memory.
            let addr = buf.addr.checked_add(start)?;
            return Some((addr, usize::try_from(n).ok()?));
        }
        None
    }
}

/// Total length of `buffers`.
pub fn total_len(buffers: &[Buffer]) -> u64 {
    buffers.iter().map(|b| u64::from(b.len)).sum()
}

/// Copies `buf.len()` bytes of the stream at `offset` out of guest memory; returns how many
/// were available.
pub fn read_stream(
    mem: &GuestMemoryMmap,
    buffers: &[Buffer],
    offset: u64,
    buf: &mut [u8],
) -> usize {
    let mut done = 0usize;
    for (addr, n) in segments(buffers, offset, buf.len() as u64) {
        let Some(dst) = buf.get_mut(done..done + n) else {
            break;
        };
        if mem.read_slice(dst, addr).is_err() {
            break;
        }
        done += n;
    }
    done
}

/// Copies `data` into the stream at `offset`; returns how many bytes fitted.
pub fn write_stream(mem: &GuestMemoryMmap, buffers: &[Buffer], offset: u64, data: &[u8]) -> usize {
    let mut done = 0usize;
    for (addr, n) in segments(buffers, offset, data.len() as u64) {
        let Some(src) = data.get(done..done + n) else {
            break;
        };
        if mem.write_slice(src, addr).is_err() {
            break;
        }
        crate::vstate::dirty::mark(addr, n);
        done += n;
    }
    done
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
pub(crate) mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    pub(crate) const F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
    pub(crate) const F_WRITE: u16 = VRING_DESC_F_WRITE as u16;

    pub(crate) fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    pub(crate) fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    /// A mock queue of `size` with `descs` in its table and `heads` made available.
    pub(crate) fn queue_with<'a>(
        m: &'a GuestMemoryMmap,
        size: u16,
        descs: &[RawDescriptor],
        heads: &[u16],
    ) -> (MockSplitQueue<'a, GuestMemoryMmap>, Queue) {
        queue_at(m, GuestAddress(0), size, descs, heads)
    }

    /// As [`queue_with`], with the queue's rings from `base`.
    pub(crate) fn queue_at<'a>(
        m: &'a GuestMemoryMmap,
        base: GuestAddress,
        size: u16,
        descs: &[RawDescriptor],
        heads: &[u16],
    ) -> (MockSplitQueue<'a, GuestMemoryMmap>, Queue) {
        let vq = MockSplitQueue::create(m, base, size);
        for (i, d) in descs.iter().enumerate() {
            vq.desc_table().store(i as u16, *d).unwrap();
        }
        for (i, h) in heads.iter().enumerate() {
            vq.avail().ring().ref_at(i).unwrap().store(u16::to_le(*h));
        }
        vq.avail().idx().store(u16::to_le(heads.len() as u16));
        let q: Queue = vq.create_queue().unwrap();
        (vq, q)
    }

    #[test]
    fn walks_a_normal_chain() {
        let m = mem();
        let descs = [
            desc(0x8000, 16, F_NEXT, 1),
            desc(0x9000, 512, F_NEXT | F_WRITE, 2),
            desc(0xa000, 1, F_WRITE, 0),
        ];
        let (_vq, mut q) = queue_with(&m, 16, &descs, &[0]);
        let head = pop_head(&mut q, &m).unwrap().unwrap();
        let c = walk_chain(&q, &m, head).unwrap();
        assert_eq!(
            c.readable,
            vec![Buffer {
                addr: GuestAddress(0x8000),
                len: 16
            }]
        );
        assert_eq!(c.writable.len(), 2);
        assert_eq!(pop_head(&mut q, &m).unwrap(), None);
    }

    #[test]
    fn a_loop_ends_at_the_queue_size() {
        let m = mem();
        let descs = [desc(0x8000, 16, F_NEXT, 1), desc(0x9000, 16, F_NEXT, 0)];
        let (_vq, mut q) = queue_with(&m, 16, &descs, &[0]);
        let head = pop_head(&mut q, &m).unwrap().unwrap();
        assert_eq!(
            walk_chain(&q, &m, head),
            Err(ChainError::TooLong { size: 16 })
        );
        // A self-loop too.
        let descs = [desc(0x8000, 16, F_NEXT, 0)];
        let (_vq, mut q) = queue_with(&m, 4, &descs, &[0]);
        let head = pop_head(&mut q, &m).unwrap().unwrap();
        assert_eq!(
            walk_chain(&q, &m, head),
            Err(ChainError::TooLong { size: 4 })
        );
    }

    #[test]
    fn refuses_bad_descriptors() {
        let m = mem();
        let cases = [
            (
                desc(0x8000, 16, F_NEXT, 99),
                ChainError::IndexOutOfRange {
                    index: 99,
                    size: 16,
                },
            ),
            (
                desc(0xffff_0000, 16, 0, 0),
                ChainError::OutsideMemory {
                    index: 0,
                    addr: 0xffff_0000,
                    len: 16,
                },
            ),
            (
                desc(0xff000, 0x2000, 0, 0),
                ChainError::OutsideMemory {
                    index: 0,
                    addr: 0xff000,
                    len: 0x2000,
                },
            ),
            (
                desc(u64::MAX, 2, 0, 0),
                ChainError::OutsideMemory {
                    index: 0,
                    addr: u64::MAX,
                    len: 2,
                },
            ),
            (
                desc(0x8000, 16, VRING_DESC_F_INDIRECT as u16, 0),
                ChainError::Indirect { index: 0 },
            ),
        ];
        for (d, want) in cases {
            let (_vq, mut q) = queue_with(&m, 16, &[d], &[0]);
            let head = pop_head(&mut q, &m).unwrap().unwrap();
            assert_eq!(walk_chain(&q, &m, head), Err(want));
        }
        let descs = [
            desc(0x8000, 16, F_NEXT | F_WRITE, 1),
            desc(0x9000, 16, 0, 0),
        ];
        let (_vq, mut q) = queue_with(&m, 16, &descs, &[0]);
        let head = pop_head(&mut q, &m).unwrap().unwrap();
        assert_eq!(
            walk_chain(&q, &m, head),
            Err(ChainError::ReadableAfterWritable { index: 1 })
        );
        // Four descriptors of 1.5 GiB each would exceed 4 GiB before any memory check
        // matters; here the memory check stops them first, but the sum never overflows.
        let descs = [desc(0x8000, u32::MAX, F_NEXT, 1)];
        let (_vq, mut q) = queue_with(&m, 16, &descs, &[0]);
        let head = pop_head(&mut q, &m).unwrap().unwrap();
        assert!(walk_chain(&q, &m, head).is_err());
    }

    #[test]
    fn avail_index_abuse_breaks_the_queue() {
        let m = mem();
        let (vq, mut q) = queue_with(&m, 16, &[desc(0x8000, 16, 0, 0)], &[0]);
        vq.avail().idx().store(u16::to_le(1000));
        assert!(matches!(
            pop_head(&mut q, &m),
            Err(QueueError::AvailIndex {
                ahead: 1000,
                size: 16,
                ..
            })
        ));
        let (_vq, mut q) = queue_with(&m, 16, &[desc(0x8000, 16, 0, 0)], &[300]);
        assert_eq!(
            pop_head(&mut q, &m),
            Err(QueueError::HeadIndex {
                index: 300,
                size: 16
            })
        );
    }

    #[test]
    fn streams_span_buffers() {
        let m = mem();
        let bufs = [
            Buffer {
                addr: GuestAddress(0x1000),
                len: 3,
            },
            Buffer {
                addr: GuestAddress(0x2000),
                len: 5,
            },
        ];
        let segs: Vec<_> = segments(&bufs, 2, 4).collect();
        assert_eq!(
            segs,
            vec![(GuestAddress(0x1002), 1), (GuestAddress(0x2000), 3)]
        );
        assert_eq!(segments(&bufs, 8, 4).count(), 0);
        assert_eq!(write_stream(&m, &bufs, 1, b"abcdefghij"), 7);
        let mut out = [0u8; 8];
        assert_eq!(read_stream(&m, &bufs, 0, &mut out), 8);
        assert_eq!(&out, b"\0abcdefg");
    }

    #[test]
    fn batch_used_entries_publish_once() {
        let m = mem();
        let (vq, mut q) = queue_with(&m, 16, &[desc(0x8000, 16, 0, 0)], &[0]);
        add_used_batch(&mut q, &m, &[(0, 10), (1, 20)]).unwrap();
        assert_eq!(u16::from_le(vq.used().idx().load()), 2);
        assert_eq!(q.next_used(), 2);
        assert!(add_used_batch(&mut q, &m, &[(16, 1)]).is_err());
    }
}
