//! The initrd: placed page-aligned as high as RAM below the MMIO gap and the kernel's
//! `initrd_addr_max` allow, above the kernel, and read straight into guest memory.

use super::kernel::LoadedKernel;
use super::{image_len, LoadError};
use crate::arch::x86_64::boot_params::Initrd;
use crate::arch::x86_64::layout::low_ram_end;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, ReadVolatile};

const PAGE: u64 = 4096;

/// Where an initrd of `size` bytes goes: page-aligned, as high as possible below both the
/// kernel's `initrd_addr_max` and the end of RAM under the MMIO gap, above the kernel.
pub fn place_initrd(size: u64, kernel: &LoadedKernel, mem_size: u64) -> Option<u64> {
    let limit = low_ram_end(mem_size).min(kernel.initrd_addr_max.saturating_add(1));
    let start = limit.checked_sub(size)? & !(PAGE - 1);
    let kernel_end = kernel.end.checked_add(PAGE - 1)? & !(PAGE - 1);
    (start >= kernel_end && size > 0).then_some(start)
}

/// Loads the initrd `file` (opened from `path`, which messages name) high in guest memory,
/// from the file's start.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    mut file: File,
    path: &str,
    kernel: &LoadedKernel,
    mem_size: u64,
) -> Result<Initrd, LoadError> {
    let what = "initrd";
    let size = image_len(what, &file, path)?;
    if size == 0 {
        return Err(LoadError::EmptyInitrd { path: path.into() });
    }
    let limit = low_ram_end(mem_size).min(kernel.initrd_addr_max.saturating_add(1));
    let addr = place_initrd(size, kernel, mem_size).ok_or(LoadError::InitrdTooLarge {
        path: path.into(),
        size,
        kernel_end: kernel.end,
        limit,
    })?;
    let len = usize::try_from(size).map_err(|_| LoadError::InitrdTooLarge {
        path: path.into(),
        size,
        kernel_end: kernel.end,
        limit,
    })?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| LoadError::read(what, path, e))?;
    read_into(mem, addr, &mut file, len).map_err(|e| LoadError::read(what, path, e))?;
    Ok(Initrd { addr, size })
}

fn read_into(
    mem: &GuestMemoryMmap,
    addr: u64,
    file: &mut (impl Read + ReadVolatile),
    len: usize,
) -> std::io::Result<()> {
    mem.read_exact_volatile_from(GuestAddress(addr), file, len)
        .map_err(|e| std::io::Error::other(e.to_string()))
}
