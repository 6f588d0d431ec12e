//! The guest's memory map, as the e820 table of the Linux zero page and as the PVH memory
//! map (both use the same entry types).

use super::layout::{ram_ranges, HIMEM_START, MPTABLE_ADDR};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The memory map of a guest with `mem_size` bytes of RAM: base memory up to the MP table,
/// the MP table and the legacy 640 KiB–1 MiB hole reserved, then RAM from 1 MiB to the MMIO
/// gap and RAM above 4 GiB when there is any.
pub fn memory_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = Vec::with_capacity(4);
    let mut push = |addr: u64, end: u64, kind: u32| {
        if end > addr {
            map.push(E820Entry {
                addr,
                size: end - addr,
                kind,
            });
        }
    };
    for (start, len) in ram_ranges(mem_size) {
        let end = start + len;
        if start < HIMEM_START {
            push(start, end.min(MPTABLE_ADDR), E820_RAM);
            push(MPTABLE_ADDR, end.min(HIMEM_START), E820_RESERVED);
            push(HIMEM_START, end, E820_RAM);
        } else {
            push(start, end, E820_RAM);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::MMIO_GAP_START;

    #[test]
    fn small_guest() {
        let map = memory_map(128 << 20);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x9fc00,
                    size: 0x10_0000 - 0x9fc00,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: 0x10_0000,
                    size: (128 << 20) - 0x10_0000,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn guest_above_the_gap() {
        let size = 5u64 << 30;
        let map = memory_map(size);
        assert_eq!(map.len(), 4);
        assert_eq!(
            map[2],
            E820Entry {
                addr: 0x10_0000,
                size: MMIO_GAP_START - 0x10_0000,
                kind: E820_RAM
            }
        );
        assert_eq!(
            map[3],
            E820Entry {
                addr: 1 << 32,
                size: size - MMIO_GAP_START,
                kind: E820_RAM
            }
        );
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, size - (0x10_0000 - 0x9fc00));
    }

    #[test]
    fn entries_are_sorted_and_disjoint() {
        for mib in [2u64, 3, 128, 3328, 3329, 65536] {
            let map = memory_map(mib << 20);
            for w in map.windows(2) {
                assert!(w[0].addr + w[0].size <= w[1].addr, "{mib} MiB: {map:x?}");
            }
        }
    }
}
