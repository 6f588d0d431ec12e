//! Giving inflated pages back to the host: the guest's page frame numbers checked against
//! guest RAM, sorted, made unique, merged into runs, and each run dropped from the VMM's
//! mapping with `madvise(MADV_DONTNEED)`, so the host's RSS of the VMM falls.
//!
//! What `MADV_DONTNEED` does depends on how the region is mapped (`vstate::memory`):
//!
//! - anonymous private memory (with or without transparent huge pages): the pages are
//!   freed; the guest reads zeros when it touches them again;
//! - a snapshot's memory file mapped privately (`File` restores): the VMM's private copies
//!   are dropped; a later touch reads the file's page again (the same VM's own memory,
//!   never another VM's);
//! - hugetlbfs 2 MiB pages: the kernel can only drop whole huge pages, so only the runs'
//!   whole, aligned 2 MiB pages are dropped; the rest stays resident and is counted
//!   (`balloon.unaligned_ranges`) rather than freeing memory around the guest's page.
//!
//! Nothing outside a guest RAM region is ever advised: a page frame out of RAM is counted
//! (`balloon.invalid_pfns`) and skipped, and each run stays within one region.
//!
//! Free page reporting and hinting give guest-physical ranges (address, length) instead
//! ([`discard_range`]): only the whole 4 KiB pages inside a range are dropped (a range cut
//! at either end is counted in `balloon.unaligned_ranges`), and a range that is empty once
//! aligned, overflows, or is not wholly guest RAM is refused whole and counted
//! (`balloon.invalid_ranges`); a range over two regions is dropped region by region.

use crate::metrics::METRICS;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// The balloon's page size (virtio-balloon's PFNs are always 4 KiB frames).
pub const PAGE_SHIFT: u32 = 12;
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
const HUGE_PAGE: u64 = 2 << 20;

/// What one batch of page frame numbers did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Discarded {
    /// Pages dropped from the host mapping.
    pub pages: u64,
    /// Frame numbers outside guest RAM (or a range refused: see [`discard_range`]).
    pub invalid: u64,
    /// Frame numbers given more than once in the batch.
    pub duplicates: u64,
    /// Runs (or parts) that could not be dropped because the backing's pages are larger,
    /// or ranges cut to their whole 4 KiB pages.
    pub unaligned: u64,
    /// `madvise` calls that failed.
    pub fails: u64,
}

/// Drops the pages of `pfns` (sorted and made unique here) from the host mapping of `mem`.
pub fn discard_pfns(mem: &GuestMemoryMmap, pfns: &mut Vec<u32>) -> Discarded {
    let mut out = Discarded::default();
    pfns.sort_unstable();
    let before = pfns.len();
    pfns.dedup();
    out.duplicates = (before - pfns.len()) as u64;
    let mut i = 0usize;
    while let Some(&first) = pfns.get(i) {
        let start = u64::from(first) << PAGE_SHIFT;
        let Some((region_end, huge)) = region_of(mem, start) else {
            out.invalid += 1;
            i += 1;
            continue;
        };
        // Extend the run while the next frame follows and stays in the region.
        let mut end = start + PAGE_SIZE;
        i += 1;
        while let Some(&next) = pfns.get(i) {
            let addr = u64::from(next) << PAGE_SHIFT;
            if addr != end || addr + PAGE_SIZE > region_end {
                break;
            }
            end += PAGE_SIZE;
            i += 1;
        }
        discard_run(mem, start, end, huge, &mut out);
    }
    METRICS.balloon.inflated_pages.add(out.pages);
    METRICS.balloon.invalid_pfns.add(out.invalid);
    METRICS.balloon.duplicate_pfns.add(out.duplicates);
    METRICS.balloon.unaligned_ranges.add(out.unaligned);
    METRICS.balloon.discard_fails.add(out.fails);
    out
}

/// Drops the whole 4 KiB pages of guest range `addr..addr + len` from the host mapping of
/// `mem` (see the module documentation for what is refused).
pub fn discard_range(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Discarded {
    let mut out = Discarded::default();
    match whole_pages(mem, addr, len) {
        Some((from, to, cut)) => {
            if cut {
                out.unaligned += 1;
            }
            let mut at = from;
            while at < to {
                let Some((region_end, huge)) = region_of(mem, at) else {
                    out.invalid += 1;
                    break;
                };
                let end = region_end.min(to);
                discard_run(mem, at, end, huge, &mut out);
                at = end;
            }
        }
        _ => out.invalid += 1,
    }
    METRICS.balloon.invalid_ranges.add(out.invalid);
    METRICS.balloon.unaligned_ranges.add(out.unaligned);
    METRICS.balloon.discard_fails.add(out.fails);
    out
}

/// The whole 4 KiB pages of guest range `addr..addr + len` (`from..to`, and whether the
/// range was cut to them), if there are any and they are all guest RAM.
pub fn whole_pages(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Option<(u64, u64, bool)> {
    let end = addr.checked_add(len)?;
    let from = addr.checked_next_multiple_of(PAGE_SIZE)?;
    let to = end / PAGE_SIZE * PAGE_SIZE;
    if from >= to {
        return None;
    }
    let n = usize::try_from(to - from).ok()?;
    mem.check_range(GuestAddress(from), n)
        .then_some((from, to, from != addr || to != end))
}

/// The guest RAM region holding the whole page at `addr`: its end guest address, and
/// whether it is backed by hugetlbfs pages.
fn region_of(mem: &GuestMemoryMmap, addr: u64) -> Option<(u64, bool)> {
    let r = mem.find_region(GuestAddress(addr))?;
    let start = r.start_addr().0;
    let end = start.checked_add(r.len())?;
    if addr.checked_add(PAGE_SIZE)? > end {
        return None;
    }
    Some((end, r.is_hugetlbfs() == Some(true)))
}

/// The whole 2 MiB pages inside `start..end`, if any.
fn whole_huge_pages(start: u64, end: u64) -> Option<(u64, u64)> {
    let from = start.div_ceil(HUGE_PAGE).checked_mul(HUGE_PAGE)?;
    let to = end / HUGE_PAGE * HUGE_PAGE;
    (from < to).then_some((from, to))
}

/// Drops guest addresses `start..end` (within one region) from the host mapping; with
/// hugetlbfs backing only the whole 2 MiB pages inside.
fn discard_run(mem: &GuestMemoryMmap, start: u64, end: u64, huge: bool, out: &mut Discarded) {
    let (from, to) = if huge {
        let whole = whole_huge_pages(start, end);
        if whole != Some((start, end)) {
            out.unaligned += 1;
        }
        match whole {
            Some(w) => w,
            None => return,
        }
    } else {
        (start, end)
    };
    let len = to - from;
    let Ok(ulen) = usize::try_from(len) else {
        out.fails += 1;
        return;
    };
    let Ok(slice) = mem.get_slice(GuestAddress(from), ulen) else {
        out.fails += 1;
        return;
    };
    let host = slice.ptr_guard_mut().as_ptr();
    // SAFETY: `host..host + len` lies inside one mapping `mem` owns (get_slice checked the
    // whole range is in one region) and guest RAM only: the range was checked against the
    // region's bounds. MADV_DONTNEED only drops the pages' contents (the guest sees zeros
    // or its memory file's page on the next touch, as a balloon's page may); no Rust
    // reference into guest memory relies on those bytes.
    let rc = unsafe { libc::madvise(host.cast(), ulen, libc::MADV_DONTNEED) };
    if rc == 0 {
        out.pages += len / PAGE_SIZE;
    } else {
        out.fails += 1;
        crate::log_debug!(
            "balloon: madvise of {len} bytes at guest {from:#x} failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hugetlbfs_runs_keep_only_their_whole_huge_pages() {
        const M2: u64 = 2 << 20;
        assert_eq!(whole_huge_pages(0, M2), Some((0, M2)));
        assert_eq!(whole_huge_pages(PAGE_SIZE, 3 * M2), Some((M2, 3 * M2)));
        assert_eq!(whole_huge_pages(M2, 2 * M2 + PAGE_SIZE), Some((M2, 2 * M2)));
        assert_eq!(whole_huge_pages(PAGE_SIZE, M2 + PAGE_SIZE), None);
        assert_eq!(whole_huge_pages(u64::MAX - PAGE_SIZE, u64::MAX), None);
    }

    #[test]
    fn ranges_are_cut_to_whole_pages_and_refused_outside_ram() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 1 << 20),
            (GuestAddress(1 << 20), 1 << 20),
        ])
        .unwrap();
        let d = discard_range(&mem, 0x1800, 0x3000);
        assert_eq!(
            (d.pages, d.unaligned, d.invalid),
            (2, 1, 0),
            "0x2000..0x4000: {d:?}"
        );
        let d = discard_range(&mem, 0xff000, 0x3000);
        assert_eq!((d.pages, d.invalid), (3, 0), "over two regions: {d:?}");
        for (addr, len) in [
            (0, 0),
            (0x1000, 0x800),
            (0x1001, 0x1000),
            (u64::MAX - 0xfff, 0x2000),
            ((2 << 20) - 0x1000, 0x2000),
            (4 << 20, 0x1000),
            (0, u64::MAX),
        ] {
            let d = discard_range(&mem, addr, len);
            assert_eq!((d.pages, d.invalid), (0, 1), "{addr:#x}+{len:#x}: {d:?}");
        }
    }
}
