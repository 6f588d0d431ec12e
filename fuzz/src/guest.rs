//! A small guest memory, and one split virtqueue laid out in it by the fuzz input.
//!
//! Guest memory is two RAM regions with a hole between them (so rings and buffers that
//! straddle the end of a region or fall in the hole are tried):
//!
//! ```text
//! 0x00000 .. 0x10000   region 0
//! 0x10000 .. 0x20000   hole
//! 0x20000 .. 0x30000   region 1
//! ```
//!
//! Input layout ([`GuestQueue::from_input`]), little endian, zeros past the end:
//!
//! ```text
//! u8      queue size: 1 << (b % 9)  (1 to 256)
//! u16     the device's next available index (and next used index): where a long-running
//!         queue would be after wrapping
//! u16 x 3 where the descriptor table, the available ring and the used ring are: each
//!         (v * its alignment) % 0x30000 (16, 2 and 4 bytes), as a driver writes them to
//!         the queue's registers; they may overlap each other and the data
//! u16     available ring flags
//! u16     available ring idx, as the driver published it
//! size x u16         available ring entries
//! size x 16 bytes    descriptor table (addr u64, len u32, flags u16, next u16)
//! rest               data: written from 0 up to the end of region 0, then region 1, under
//!                    the rings (the rings are written last)
//! ```
//!
//! The queue is checked as the virtio-mmio transport checks it at `DRIVER_OK` (sizes,
//! alignments and ring placement by virtio-queue): a placement the transport refuses is no
//! input for the device.

use crate::Input;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const REGION0: u64 = 0;
pub const REGION1: u64 = 0x2_0000;
pub const REGION_LEN: usize = 0x1_0000;
/// End of guest memory (of region 1).
pub const MEM_END: u64 = REGION1 + REGION_LEN as u64;
/// Largest queue the devices offer (virtio-blk's and virtio-net's `QUEUE_SIZE`).
pub const MAX_QUEUE_SIZE: u16 = 256;

pub struct GuestQueue {
    pub mem: GuestMemoryMmap,
    pub queue: Queue,
    /// Where the device started (its next available and next used index).
    pub start: u16,
    /// The rings' addresses.
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
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
        let desc = u64::from(input.u16()) * 16 % MEM_END;
        let avail = u64::from(input.u16()) * 2 % MEM_END;
        let used = u64::from(input.u16()) * 4 % MEM_END;
        let avail_flags = input.u16();
        let avail_idx = input.u16();
        let heads: Vec<u16> = (0..size).map(|_| input.u16()).collect();
        let mut table = vec![0u8; 16 * usize::from(size)];
        for d in table.chunks_mut(16) {
            let raw = input.bytes(16);
            d[..raw.len()].copy_from_slice(raw);
        }
        // Data first, then the rings over it (each write clipped to its region).
        let data = input.rest();
        let room0 = REGION_LEN;
        let (first, second) = data.split_at(data.len().min(room0));
        mem.write_slice(first, GuestAddress(REGION0)).ok()?;
        let second = &second[..second.len().min(REGION_LEN)];
        mem.write_slice(second, GuestAddress(REGION1)).ok()?;
        let _ = mem.write_slice(&table, GuestAddress(desc));
        let _ = mem.write_obj(avail_flags.to_le(), GuestAddress(avail));
        let _ = mem.write_obj(avail_idx.to_le(), GuestAddress(avail + 2));
        for (i, h) in heads.iter().enumerate() {
            let _ = mem.write_obj(h.to_le(), GuestAddress(avail + 4 + 2 * i as u64));
        }
        // The used ring as a device that has been running would have left it.
        let _ = mem.write_obj(start.to_le(), GuestAddress(used + 2));

        let mut queue = Queue::new(MAX_QUEUE_SIZE).ok()?;
        queue.try_set_size(size).ok()?;
        queue.try_set_desc_table_address(GuestAddress(desc)).ok()?;
        queue.try_set_avail_ring_address(GuestAddress(avail)).ok()?;
        queue.try_set_used_ring_address(GuestAddress(used)).ok()?;
        queue.set_ready(true);
        if !queue.is_valid(&mem) {
            return None;
        }
        queue.set_next_avail(start);
        queue.set_next_used(start);
        // The table as it ended up in memory (a ring written over it wins).
        let mut descriptors = Vec::with_capacity(usize::from(size));
        for i in 0..u64::from(size) {
            let mut d = [0u8; 16];
            mem.read_slice(&mut d, GuestAddress(desc + 16 * i)).ok()?;
            descriptors.push((
                u64::from_le_bytes(d[0..8].try_into().ok()?),
                u32::from_le_bytes(d[8..12].try_into().ok()?),
                u16::from_le_bytes(d[12..14].try_into().ok()?),
                u16::from_le_bytes(d[14..16].try_into().ok()?),
            ));
        }
        Some(GuestQueue {
            mem,
            queue,
            start,
            desc,
            avail,
            used,
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
            .read_obj::<u16>(GuestAddress(self.used + 2))
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
