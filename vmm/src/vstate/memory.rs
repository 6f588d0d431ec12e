//! Guest RAM: anonymous private mappings, one per RAM range of
//! [`crate::arch::x86_64::layout::ram_ranges`] (below the MMIO gap, and above 4 GiB when the
//! guest has more memory than fits below it), backed as `machine-config.huge_pages` asks:
//!
//! - `None`: regular pages, reserved lazily (`MAP_NORESERVE`);
//! - `Transparent`: the same mapping, marked `MADV_HUGEPAGE` so the host backs it with
//!   transparent huge pages where it can;
//! - `2M`: hugetlbfs 2 MiB pages (`MAP_HUGETLB | MAP_HUGE_2MB`), reserved when mapped (no
//!   `MAP_NORESERVE`): a host without enough free huge pages refuses the mapping here, at
//!   `InstanceStart`, instead of killing the VMM with SIGBUS at a later guest access.
//!
//! A microVM restored from a snapshot with the `File` backend maps the memory file
//! privately instead ([`map_snapshot_file`]).

use crate::arch::x86_64::layout::ram_ranges;
use crate::resources::HugePages;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory of {0} bytes cannot be mapped on this host (address space)")]
    TooLarge(u64),
    #[error("cannot map {size} bytes of guest memory: {reason}")]
    Mmap { size: u64, reason: String },
    #[error("cannot map {size} bytes of guest memory in 2 MiB huge pages (huge_pages \"2M\"): {source}; the host needs that many free hugetlbfs pages (HugePages_Free in /proc/meminfo, set with vm.nr_hugepages)")]
    HugePages { size: u64, source: std::io::Error },
    #[error("cannot ask for transparent huge pages (huge_pages \"Transparent\"): madvise(MADV_HUGEPAGE): {0}; is transparent_hugepage disabled on this host?")]
    Transparent(std::io::Error),
}

/// Maps `mem_size` bytes of guest RAM (not yet registered with KVM), backed as `huge`
/// asks.
pub fn create_guest_memory(mem_size: u64, huge: HugePages) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges = region_ranges(mem_size)?;
    let mem = match huge {
        HugePages::None | HugePages::Transparent => {
            GuestMemoryMmap::from_ranges(&ranges).map_err(|e| MemoryError::Mmap {
                size: mem_size,
                reason: e.to_string(),
            })?
        }
        HugePages::Hugetlbfs2M => hugetlbfs_2m(mem_size, &ranges)?,
    };
    if huge == HugePages::Transparent {
        advise_transparent(&mem, mem_size, &ranges)?;
    }
    Ok(mem)
}

/// Marks every region `MADV_HUGEPAGE`.
fn advise_transparent(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    ranges: &[(GuestAddress, usize)],
) -> Result<(), MemoryError> {
    for (start, len) in ranges {
        let host = mem_host_address(mem, *start).ok_or(MemoryError::TooLarge(mem_size))?;
        // SAFETY: `host..host + len` is exactly one mapping `mem` owns (the region that
        // starts at `start` has length `len`); MADV_HUGEPAGE only changes how the kernel
        // backs it, never its contents or validity.
        let rc = unsafe { libc::madvise(host.cast(), *len, libc::MADV_HUGEPAGE) };
        if rc != 0 {
            return Err(MemoryError::Transparent(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Guest RAM from a snapshot's memory file: each region a private mapping of the file at
/// its offset (regions one after the other in the file), so nothing is read now: a page
/// comes from the file when first touched, and a write copies it into the process's own
/// memory (the file is never written). `huge` may be `None` or `Transparent`.
pub fn map_snapshot_file(
    file: &std::fs::File,
    mem_size: u64,
    huge: HugePages,
) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges = region_ranges(mem_size)?;
    let mut regions = Vec::with_capacity(ranges.len());
    let mut offset = 0u64;
    for &(start, len) in &ranges {
        let fd = file.try_clone().map_err(|e| MemoryError::Mmap {
            size: mem_size,
            reason: format!("cannot duplicate the memory file's descriptor: {e}"),
        })?;
        let region = MmapRegionBuilder::new(len)
            .with_file_offset(FileOffset::new(fd, offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| MemoryError::Mmap {
                size: mem_size,
                reason: format!("mapping the memory file: {e}"),
            })?;
        let region = GuestRegionMmap::new(region, start).ok_or(MemoryError::TooLarge(mem_size))?;
        regions.push(region);
        offset += len as u64;
    }
    let mem = GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Mmap {
        size: mem_size,
        reason: e.to_string(),
    })?;
    if huge == HugePages::Transparent {
        advise_transparent(&mem, mem_size, &ranges)?;
    }
    Ok(mem)
}

/// Adds the virtio-mem hot-plug region to `mem`: `size` bytes at `addr` (past the RAM, in
/// device memory), an anonymous private mapping reserved lazily (`MAP_NORESERVE`: nothing
/// is allocated until the guest writes a plugged block). Not registered with KVM here: the
/// device registers its slots as blocks are plugged.
pub fn add_hotplug_region(
    mem: &GuestMemoryMmap,
    addr: u64,
    size: u64,
) -> Result<GuestMemoryMmap, MemoryError> {
    let len = usize::try_from(size).map_err(|_| MemoryError::TooLarge(size))?;
    let region = MmapRegionBuilder::new(len)
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
        .build()
        .map_err(|e| MemoryError::Mmap {
            size,
            reason: format!("the hot-plug region: {e}"),
        })?;
    let region =
        GuestRegionMmap::new(region, GuestAddress(addr)).ok_or(MemoryError::TooLarge(size))?;
    mem.insert_region(std::sync::Arc::new(region))
        .map_err(|e| MemoryError::Mmap {
            size,
            reason: format!("the hot-plug region: {e}"),
        })
}

fn region_ranges(mem_size: u64) -> Result<Vec<(GuestAddress, usize)>, MemoryError> {
    ram_ranges(mem_size)
        .into_iter()
        .map(|(start, len)| {
            Ok((
                GuestAddress(start),
                usize::try_from(len).map_err(|_| MemoryError::TooLarge(mem_size))?,
            ))
        })
        .collect()
}

/// The host address where guest address `start` (the first byte of a region) is mapped.
fn mem_host_address(mem: &GuestMemoryMmap, start: GuestAddress) -> Option<*mut u8> {
    use vm_memory::GuestMemoryBackend;
    mem.get_host_address(start).ok()
}

/// Each range in its own private, anonymous 2 MiB hugetlbfs mapping, reserved now.
fn hugetlbfs_2m(
    mem_size: u64,
    ranges: &[(GuestAddress, usize)],
) -> Result<GuestMemoryMmap, MemoryError> {
    let mut regions = Vec::with_capacity(ranges.len());
    for &(start, len) in ranges {
        let region = MmapRegionBuilder::new(len)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_HUGE_2MB,
            )
            .with_hugetlbfs(true)
            .build()
            .map_err(|e| match e {
                vm_memory::mmap::MmapRegionError::Mmap(source) => MemoryError::HugePages {
                    size: mem_size,
                    source,
                },
                other => MemoryError::Mmap {
                    size: mem_size,
                    reason: other.to_string(),
                },
            })?;
        let region = GuestRegionMmap::new(region, start).ok_or(MemoryError::TooLarge(mem_size))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Mmap {
        size: mem_size,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn regions_follow_the_layout() {
        let m = create_guest_memory(64 << 20, HugePages::None).unwrap();
        let regions: Vec<(u64, u64)> = m.iter().map(|r| (r.start_addr().0, r.len())).collect();
        assert_eq!(regions, vec![(0, 64 << 20)]);
    }

    /// `Transparent` marks the mapping MADV_HUGEPAGE: the kernel lists it with the `hg`
    /// flag in /proc/self/smaps.
    #[test]
    fn transparent_huge_pages_are_asked_for() {
        let m = create_guest_memory(64 << 20, HugePages::Transparent).unwrap();
        let host = mem_host_address(&m, GuestAddress(0)).unwrap() as usize;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut in_mapping = false;
        let mut flags = None;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((lo, hi)) = range.split_once('-') {
                    if let (Ok(lo), Ok(hi)) =
                        (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                    {
                        in_mapping = (lo..hi).contains(&host);
                        continue;
                    }
                }
            }
            if in_mapping {
                if let Some(f) = line.strip_prefix("VmFlags:") {
                    flags = Some(f.to_string());
                }
            }
        }
        let flags = flags.expect("the guest memory mapping in /proc/self/smaps");
        assert!(
            flags.split_whitespace().any(|f| f == "hg"),
            "VmFlags:{flags}"
        );
        let plain = create_guest_memory(64 << 20, HugePages::None).unwrap();
        assert_ne!(mem_host_address(&plain, GuestAddress(0)), None);
    }

    /// More 2 MiB pages than the host has free: refused when mapped, with a message saying
    /// what the host lacks (never a SIGBUS later).
    #[test]
    fn hugetlbfs_without_enough_free_pages_is_refused_at_mapping() {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let free: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("HugePages_Free:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("HugePages_Free in /proc/meminfo");
        let size = (free + 1) * (2 << 20);
        let e = create_guest_memory(size, HugePages::Hugetlbfs2M).unwrap_err();
        assert!(matches!(e, MemoryError::HugePages { .. }), "{e}");
        assert!(e.to_string().contains("vm.nr_hugepages"), "{e}");
    }
}
