//! Guest RAM: anonymous private mappings, one per RAM range of
//! [`crate::arch::x86_64::layout::ram_ranges`] (below the MMIO gap, and above 4 GiB when the
//! guest has more memory than fits below it).

use crate::arch::x86_64::layout::ram_ranges;
use vm_memory::{GuestAddress, GuestMemoryMmap};

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory of {0} bytes cannot be mapped on this host (address space)")]
    TooLarge(u64),
    #[error("cannot map {size} bytes of guest memory: {reason}")]
    Mmap { size: u64, reason: String },
}

/// Maps `mem_size` bytes of guest RAM (not yet registered with KVM).
pub fn create_guest_memory(mem_size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(mem_size)
        .into_iter()
        .map(|(start, len)| {
            Ok((
                GuestAddress(start),
                usize::try_from(len).map_err(|_| MemoryError::TooLarge(mem_size))?,
            ))
        })
        .collect::<Result<_, MemoryError>>()?;
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| MemoryError::Mmap {
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
        let m = create_guest_memory(64 << 20).unwrap();
        let regions: Vec<(u64, u64)> = m.iter().map(|r| (r.start_addr().0, r.len())).collect();
        assert_eq!(regions, vec![(0, 64 << 20)]);
    }
}
