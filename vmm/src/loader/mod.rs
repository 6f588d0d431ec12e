//! Loading what the guest boots: the kernel (ELF `vmlinux`, with or without a PVH note, or a
//! bzImage), the initrd, the command line, and the boot information that points at them.
//!
//! - `kernel`: checking and loading the kernel image, and choosing its entry;
//! - `initrd`: placing the initrd high in RAM and loading it;
//! - `cmdline`: the kernel command line, with the virtio-mmio devices' entries;
//! - [`write_boot_info`] (here): the command line, zero page or PVH start info, MP table and
//!   boot page tables in guest memory.
//!
//! Every size and address read from an image is checked against guest RAM before anything
//! is copied: a segment outside RAM or below 1 MiB, an entry point outside the loaded
//! segments, a bzImage too large for the memory below the MMIO gap, an initrd that does
//! not fit under the kernel's `initrd_addr_max` are each a clear error. The copying itself
//! is linux-loader's.

mod cmdline;
mod initrd;
mod kernel;

pub use cmdline::build_cmdline;
pub use initrd::{load_initrd, place_initrd};
pub use kernel::{load_kernel, KernelFormat, LoadedKernel};

use crate::arch::x86_64::boot_params::{self, BootParamsError, Initrd};
use crate::arch::x86_64::e820::memory_map;
use crate::arch::x86_64::layout::{ram_ranges, CMDLINE_ADDR};
use crate::arch::x86_64::mptable::{self, MptableError};
use crate::arch::x86_64::regs::{self, BootProtocol, BootTables, RegsError};
use linux_loader::cmdline::Cmdline;
use std::fs::File;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Which kernel entry to use when the image offers a choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EntryPreference {
    /// PVH when the ELF has a PVH note, else the 64-bit Linux entry (Firecracker's choice).
    #[default]
    Auto,
    /// The PVH entry; an image without a PVH note is an error.
    Pvh,
    /// The 64-bit Linux entry, even if a PVH note exists.
    Linux64,
}

impl std::str::FromStr for EntryPreference {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(EntryPreference::Auto),
            "pvh" => Ok(EntryPreference::Pvh),
            "linux64" => Ok(EntryPreference::Linux64),
            _ => Err(format!(
                "{s:?} is not a boot entry (use auto, pvh or linux64)"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {what} {path:?}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("kernel image {path:?} is neither an ELF vmlinux nor a bzImage (no ELF magic, no \"HdrS\" setup header)")]
    UnknownFormat { path: String },
    #[error("kernel image {path:?}: {reason}")]
    BadElf { path: String, reason: String },
    #[error("kernel image {path:?}: {reason}")]
    BadBzImage { path: String, reason: String },
    #[error("kernel image {path:?} has no PVH entry note, but the PVH entry was requested")]
    NoPvhNote { path: String },
    #[error("kernel image {path:?} is a bzImage, which has no PVH entry")]
    PvhOnBzImage { path: String },
    #[error("cannot load kernel image {path:?}: {source}")]
    Loader {
        path: String,
        source: linux_loader::loader::Error,
    },
    #[error("initrd {path:?} is empty")]
    EmptyInitrd { path: String },
    #[error("initrd {path:?} ({size} bytes) does not fit in guest memory between the kernel's end ({kernel_end:#x}) and {limit:#x}")]
    InitrdTooLarge {
        path: String,
        size: u64,
        kernel_end: u64,
        limit: u64,
    },
    #[error("boot-source.boot_args: {0}")]
    Cmdline(String),
    #[error("the kernel command line has no room for the device entry {entry:?}: {reason}")]
    DeviceEntry { entry: String, reason: String },
    #[error(transparent)]
    BootParams(#[from] BootParamsError),
    #[error(transparent)]
    Mptable(#[from] MptableError),
    #[error(transparent)]
    Regs(#[from] RegsError),
}

/// Writes the command line, the boot information for the entry (zero page or PVH start
/// info), the MP table, and the boot GDT/IDT/page tables. Returns what the vCPUs' special
/// registers need.
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initrd: Option<Initrd>,
    mem_size: u64,
    vcpu_count: u8,
) -> Result<BootTables, LoadError> {
    let text = cmdline
        .as_cstring()
        .map_err(|e| LoadError::Cmdline(e.to_string()))?;
    let bytes = text.as_bytes_with_nul();
    mem.write_slice(bytes, GuestAddress(CMDLINE_ADDR))
        .map_err(|e| LoadError::Cmdline(format!("cannot write it into guest memory: {e}")))?;
    let e820 = memory_map(mem_size);
    match kernel.entry.protocol {
        BootProtocol::Linux64 => {
            boot_params::write_zero_page(mem, kernel.setup_header, bytes.len() - 1, initrd, &e820)?
        }
        BootProtocol::Pvh => boot_params::write_pvh_start_info(mem, initrd, &e820)?,
    }
    mptable::write_mptable(mem, vcpu_count)?;
    Ok(regs::write_boot_tables(mem, kernel.entry.protocol)?)
}

/// True when `[start, start + len)` lies inside one RAM range of a `mem_size` guest.
pub fn in_ram(mem_size: u64, start: u64, len: u64) -> bool {
    let Some(end) = start.checked_add(len) else {
        return false;
    };
    ram_ranges(mem_size)
        .iter()
        .any(|&(s, l)| start >= s && end <= s + l)
}

/// The length of an image the guest boots (`what`: "kernel image", "initrd"), opened by the
/// caller (the configuration opens it when it is accepted; `path` is for messages).
fn image_len(what: &'static str, file: &File, path: &str) -> Result<u64, LoadError> {
    Ok(file
        .metadata()
        .map_err(|e| LoadError::read(what, path, e))?
        .len())
}

impl LoadError {
    fn read(what: &'static str, path: &str, source: std::io::Error) -> LoadError {
        LoadError::Read {
            what,
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests;
