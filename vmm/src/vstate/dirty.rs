//! The guest pages the VMM itself writes, for diff snapshots.
//!
//! KVM's dirty log (`KVM_MEM_LOG_DIRTY_PAGES`) records the pages the guest writes through
//! its vCPUs, not those the VMM writes through its own mapping: virtio used rings and the
//! data devices put in guest buffers (a disk read, a received frame, a vsock packet). A
//! diff snapshot needs both, so the few places where device code writes guest memory
//! (`devices::virtio::queue`'s used-ring and stream writers, the disk's read) call [`mark`].
//!
//! One microVM per process: the tracker is process-wide, armed by [`track`] when memory is
//! registered with dirty logging, and costs one relaxed atomic load per write otherwise.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;
use vm_memory::GuestAddress;

const PAGE_SHIFT: u64 = 12;

struct Region {
    start: u64,
    len: u64,
    bits: Vec<AtomicU64>,
}

static ARMED: AtomicBool = AtomicBool::new(false);
static REGIONS: RwLock<Vec<Region>> = RwLock::new(Vec::new());

/// Starts tracking writes to guest memory made of `regions` (guest address, length), with
/// nothing marked yet.
pub fn track(regions: &[(u64, u64)]) {
    let new: Vec<Region> = regions
        .iter()
        .map(|&(start, len)| {
            let pages = len.div_ceil(1 << PAGE_SHIFT);
            let words = usize::try_from(pages.div_ceil(64)).unwrap_or(0);
            Region {
                start,
                len,
                bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
            }
        })
        .collect();
    let mut r = REGIONS.write().unwrap_or_else(|p| p.into_inner());
    *r = new;
    ARMED.store(true, Ordering::Release);
}

/// Stops tracking.
pub fn stop() {
    ARMED.store(false, Ordering::Release);
    REGIONS.write().unwrap_or_else(|p| p.into_inner()).clear();
}

/// The VMM wrote `len` bytes of guest memory at `addr`.
pub fn mark(addr: GuestAddress, len: usize) {
    if !ARMED.load(Ordering::Relaxed) || len == 0 {
        return;
    }
    let regions = REGIONS.read().unwrap_or_else(|p| p.into_inner());
    let first = addr.0;
    let last = first.saturating_add(len as u64 - 1);
    for r in regions.iter() {
        let end = r.start.saturating_add(r.len);
        if last < r.start || first >= end {
            continue;
        }
        let from = (first.max(r.start) - r.start) >> PAGE_SHIFT;
        let to = (last.min(end - 1) - r.start) >> PAGE_SHIFT;
        for page in from..=to {
            if let Some(w) = usize::try_from(page / 64).ok().and_then(|i| r.bits.get(i)) {
                w.fetch_or(1 << (page % 64), Ordering::Relaxed);
            }
        }
    }
}

/// The pages marked since the last call, one bitmap of 64-page words per region (KVM's
/// dirty-log layout), and clears them. Empty when not tracking.
pub fn take() -> Vec<Vec<u64>> {
    let regions = REGIONS.read().unwrap_or_else(|p| p.into_inner());
    regions
        .iter()
        .map(|r| {
            r.bits
                .iter()
                .map(|w| w.swap(0, Ordering::Relaxed))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_pages_of_each_region() {
        track(&[(0, 64 << 12), (1 << 32, 128 << 12)]);
        mark(GuestAddress(0x1fff), 2);
        mark(GuestAddress((1 << 32) + (100 << 12)), 1);
        mark(GuestAddress(0xd000_0000), 4096);
        mark(GuestAddress(u64::MAX), 10);
        let t = take();
        assert_eq!(t[0], vec![0b110]);
        assert_eq!(t[1], vec![0, 1 << 36]);
        assert_eq!(take()[0], vec![0]);
        stop();
        mark(GuestAddress(0), 1);
        assert!(take().is_empty());
    }
}
