//! A small guest with one split virtqueue laid out by the fuzz input.
//!
//! Guest memory is two RAM regions with a hole between them (so buffers that straddle the
//! end of a region or fall in the hole are tried):
//!
//! ```text
//! 0x00000 .. 0x10000   region 0: descriptor table 0x0000, available ring 0x1000,
//!                      used ring 0x1400, data from 0x2000
//! 0x10000 .. 0x20000   hole
//! 0x20000 .. 0x30000   region 1: data
//! ```
//!
//! Input layout ([`GuestQueue::from_input`]), little endian, zeros past the end:
//!
//! ```text
//! u8      queue size: 1 << (b % 9)  (1 to 256)
//! u16     the device's next available index (and next used index): where a long-running
//!         queue would be after wrapping
//! u16     available ring flags
//! u16     available ring idx, as the driver published it
//! size x u16         available ring entries
//! size x 16 bytes    descriptor table (addr u64, len u32, flags u16, next u16)
//! rest               data: written at 0x2000 up to the end of region 0, then region 1
//! ```
//!
//! The queue is built as the virtio-mmio transport builds it at `DRIVER_OK` (sizes,
//! alignments and ring placement checked by virtio-queue), so what the device sees is what a
//! guest could make it see.

use crate::Input;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const REGION0: u64 = 0;
pub const REGION1: u64 = 0x2_0000;
pub const REGION_LEN: usize = 0x1_0000;
pub const DESC_TABLE: u64 = 0x0000;
pub const AVAIL_RING: u64 = 0x1000;
pub const USED_RING: u64 = 0x1400;
pub const DATA: u64 = 0x2000;
/// Largest queue the devices offer (virtio-blk's and virtio-net's `QUEUE_SIZE`).
pub const MAX_QUEUE_SIZE: u16 = 256;

pub struct GuestQueue {
    pub mem: GuestMemoryMmap,
    pub queue: Queue,
    /// Where the device started (its next available and next used index).
    pub start: u16,
    /// The raw descriptor table, as written into guest memory: (addr, len, flags, next).
    pub descriptors: Vec<(u64, u32, u16, u16)>,
}

/// Two 64 KiB regions with a hole between them.
pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(REGION0), REGION_LEN),
        (GuestAddress(REGION1), REGION_LEN),
    ])
    .expect("guest memory maps")
}

impl GuestQueue {
    /// Lays out a queue from `input` (see the module documentation). `None` when the
    /// transport would refuse the queue (it never is refused with this fixed placement).
    pub fn from_input(input: &mut Input<'_>) -> Option<GuestQueue> {
        let mem = memory();
        let size: u16 = 1 << (input.u8() % 9);
        let start = input.u16();
        let avail_flags = input.u16();
        let avail_idx = input.u16();
        mem.write_obj(avail_flags.to_le(), GuestAddress(AVAIL_RING))
            .ok()?;
        mem.write_obj(avail_idx.to_le(), GuestAddress(AVAIL_RING + 2))
            .ok()?;
        for i in 0..u64::from(size) {
            let head = input.u16();
            mem.write_obj(head.to_le(), GuestAddress(AVAIL_RING + 4 + 2 * i))
                .ok()?;
        }
        let mut descriptors = Vec::with_capacity(usize::from(size));
        for i in 0..u64::from(size) {
            let raw = input.bytes(16);
            let mut d = [0u8; 16];
            d[..raw.len()].copy_from_slice(raw);
            mem.write_slice(&d, GuestAddress(DESC_TABLE + 16 * i))
                .ok()?;
            let addr = u64::from_le_bytes(d[0..8].try_into().ok()?);
            let len = u32::from_le_bytes(d[8..12].try_into().ok()?);
            let flags = u16::from_le_bytes(d[12..14].try_into().ok()?);
            let next = u16::from_le_bytes(d[14..16].try_into().ok()?);
            descriptors.push((addr, len, flags, next));
        }
        let data = input.rest();
        let room0 = REGION_LEN - usize::try_from(DATA).ok()?;
        let (first, second) = data.split_at(data.len().min(room0));
        mem.write_slice(first, GuestAddress(DATA)).ok()?;
        let second = &second[..second.len().min(REGION_LEN)];
        mem.write_slice(second, GuestAddress(REGION1)).ok()?;

        let mut queue = Queue::new(MAX_QUEUE_SIZE).ok()?;
        queue.try_set_size(size).ok()?;
        queue
            .try_set_desc_table_address(GuestAddress(DESC_TABLE))
            .ok()?;
        queue
            .try_set_avail_ring_address(GuestAddress(AVAIL_RING))
            .ok()?;
        queue
            .try_set_used_ring_address(GuestAddress(USED_RING))
            .ok()?;
        queue.set_ready(true);
        if !queue.is_valid(&mem) {
            return None;
        }
        queue.set_next_avail(start);
        queue.set_next_used(start);
        // The used ring as a device that has been running would have left it.
        mem.write_obj(start.to_le(), GuestAddress(USED_RING + 2))
            .ok()?;
        Some(GuestQueue {
            mem,
            queue,
            start,
            descriptors,
        })
    }

    /// Bytes of the used ring (flags, idx, size entries, avail_event).
    pub fn used_ring_len(&self) -> u64 {
        4 + 8 * u64::from(self.queue.size()) + 2
    }

    /// The used ring's idx as the device published it.
    pub fn used_idx(&self) -> u16 {
        self.mem
            .read_obj::<u16>(GuestAddress(USED_RING + 2))
            .map(u16::from_le)
            .unwrap_or(0)
    }

    /// A copy of both regions (to compare after the device ran).
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = vec![0u8; 2 * REGION_LEN];
        let (a, b) = out.split_at_mut(REGION_LEN);
        self.mem
            .read_slice(a, GuestAddress(REGION0))
            .expect("region 0 reads");
        self.mem
            .read_slice(b, GuestAddress(REGION1))
            .expect("region 1 reads");
        out
    }

    /// Guest addresses whose bytes differ between two snapshots. (Whole blocks are compared
    /// first: a byte-by-byte loop here would be instrumented and dominate the run time.)
    pub fn changed(before: &[u8], after: &[u8]) -> Vec<u64> {
        const BLOCK: usize = 256;
        let mut out = Vec::new();
        for (i, (a, b)) in before.chunks(BLOCK).zip(after.chunks(BLOCK)).enumerate() {
            if a == b {
                continue;
            }
            for (j, (x, y)) in a.iter().zip(b).enumerate() {
                if x != y {
                    let at = (i * BLOCK + j) as u64;
                    let len = REGION_LEN as u64;
                    out.push(if at < len {
                        REGION0 + at
                    } else {
                        REGION1 + (at - len)
                    });
                }
            }
        }
        out
    }
}
