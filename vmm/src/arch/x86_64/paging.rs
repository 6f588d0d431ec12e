//! Identity-mapped page tables for the 64-bit Linux entry: the first
//! [`IDENTITY_MAP_GIB`] GiB of guest-physical space mapped 1:1 with 2 MiB pages, so the
//! kernel, the zero page and the command line are all reachable at their physical address.

use super::layout::{IDENTITY_MAP_GIB, PDPT_ADDR, PD_ADDR, PML4_ADDR};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const HUGE: u64 = 1 << 7;
const ENTRIES: u64 = 512;

#[derive(Debug, thiserror::Error)]
#[error("cannot write the boot page tables at {addr:#x}: {source}")]
pub struct PagingError {
    addr: u64,
    source: vm_memory::GuestMemoryError,
}

fn table_bytes(entries: impl Iterator<Item = u64>) -> Vec<u8> {
    let mut out = vec![0u8; 4096];
    for (slot, e) in out.chunks_exact_mut(8).zip(entries) {
        slot.copy_from_slice(&e.to_le_bytes());
    }
    out
}

/// Writes the PML4, the PDPT and the page directories; returns the value for CR3.
pub fn write_identity_map(mem: &GuestMemoryMmap) -> Result<u64, PagingError> {
    let write = |addr: u64, bytes: &[u8]| {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|source| PagingError { addr, source })
    };
    write(
        PML4_ADDR,
        &table_bytes(std::iter::once(PDPT_ADDR | PRESENT | WRITABLE)),
    )?;
    let pds = (0..IDENTITY_MAP_GIB).map(|i| (PD_ADDR + i * 4096) | PRESENT | WRITABLE);
    write(PDPT_ADDR, &table_bytes(pds))?;
    for gib in 0..IDENTITY_MAP_GIB {
        let pages = (0..ENTRIES).map(|i| ((gib * ENTRIES + i) << 21) | PRESENT | WRITABLE | HUGE);
        write(PD_ADDR + gib * 4096, &table_bytes(pages))?;
    }
    Ok(PML4_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the tables the way the MMU does for a 2 MiB page.
    fn translate(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<u64> {
        let entry = |table: u64, idx: u64| -> u64 {
            mem.read_obj(GuestAddress((table & !0xfff) + idx * 8))
                .unwrap()
        };
        let pml4e = entry(cr3, (va >> 39) & 0x1ff);
        if pml4e & PRESENT == 0 {
            return None;
        }
        let pdpte = entry(pml4e, (va >> 30) & 0x1ff);
        if pdpte & PRESENT == 0 {
            return None;
        }
        let pde = entry(pdpte, (va >> 21) & 0x1ff);
        if pde & PRESENT == 0 || pde & HUGE == 0 {
            return None;
        }
        Some((pde & !0x1f_ffff & 0x000f_ffff_ffff_f000) | (va & 0x1f_ffff))
    }

    #[test]
    fn maps_the_first_gibibytes_one_to_one() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let cr3 = write_identity_map(&mem).unwrap();
        for va in [
            0u64,
            0x7000,
            0x10_0000,
            0x3fff_ffff,
            0x4000_0000,
            0xd000_0000,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&mem, cr3, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&mem, cr3, 1 << 32), None);
    }

    #[test]
    fn fails_cleanly_without_memory_for_the_tables() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x9000)]).unwrap();
        let err = write_identity_map(&mem).unwrap_err();
        assert!(err.to_string().contains("0x9000"), "{err}");
    }
}
