//! Loading what the guest boots: the kernel (ELF `vmlinux`, with or without a PVH note, or a
//! bzImage), the initrd, the command line, and the boot information that points at them.
//!
//! Every size and address read from an image is checked against guest RAM before anything
//! is copied: a segment outside RAM or below 1 MiB, an entry point outside the loaded
//! segments, a bzImage too large for the memory below the MMIO gap, an initrd that does
//! not fit under the kernel's `initrd_addr_max` are each a clear error. The copying itself
//! is linux-loader's.

use crate::arch::x86_64::boot_params::{self, BootParamsError, Initrd};
use crate::arch::x86_64::e820::memory_map;
use crate::arch::x86_64::layout::{
    low_ram_end, ram_ranges, CMDLINE_ADDR, CMDLINE_MAX_SIZE, HIMEM_START,
};
use crate::arch::x86_64::mptable::{self, MptableError};
use crate::arch::x86_64::regs::{self, BootEntry, BootProtocol, BootTables, RegsError};
use crate::devices::manager::{DeviceError, DeviceManager};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, ReadVolatile};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
}

/// A kernel in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub format: KernelFormat,
    pub entry: BootEntry,
    /// The bzImage's setup header (goes into the zero page).
    pub setup_header: Option<setup_header>,
    /// First byte after everything the kernel occupies (including bss / decompression room).
    pub end: u64,
    /// Highest address the initrd may occupy.
    pub initrd_addr_max: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot open {what} {path:?}: {source}")]
    Open {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
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
    #[error(transparent)]
    Devices(#[from] DeviceError),
    #[error(transparent)]
    BootParams(#[from] BootParamsError),
    #[error(transparent)]
    Mptable(#[from] MptableError),
    #[error(transparent)]
    Regs(#[from] RegsError),
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const EHDR_LEN: usize = 64;
const PHDR_LEN: usize = 56;
/// More program headers than any kernel has; bounds the work a hostile image can cause.
const MAX_PHDRS: u16 = 128;

const BZ_HEADER_OFFSET: u64 = 0x1f1;
const HDRS: u32 = 0x5372_6448;
const XLF_KERNEL_64: u16 = 1 << 0;
const LOADED_HIGH: u8 = 1 << 0;
/// The boot protocol's 64-bit entry is 0x200 bytes into the protected-mode kernel.
const BZ_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// `initrd_addr_max` when the image does not say (boot protocol < 2.03, and ELF vmlinux):
/// every x86-64 kernel declares at least this.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
const PAGE: u64 = 4096;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
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

/// A loadable segment, as checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    paddr: u64,
    memsz: u64,
}

/// Checks an ELF's headers against the file and guest RAM; returns (entry, segments).
fn check_elf(
    head: &[u8],
    file: &File,
    file_len: u64,
    mem_size: u64,
) -> Result<(u64, Vec<Segment>), String> {
    if head.len() < EHDR_LEN {
        return Err(format!(
            "the file is {file_len} bytes, too short for an ELF header"
        ));
    }
    if head[4] != ELFCLASS64 {
        return Err("not a 64-bit ELF (EI_CLASS is not ELFCLASS64)".into());
    }
    if head[5] != ELFDATA2LSB {
        return Err("not a little-endian ELF".into());
    }
    let machine = le16(head, 18);
    if machine != EM_X86_64 {
        return Err(format!("not an x86-64 ELF (e_machine {machine})"));
    }
    let entry = le64(head, 24);
    let phoff = le64(head, 32);
    let phentsize = le16(head, 54);
    let phnum = le16(head, 56);
    if usize::from(phentsize) != PHDR_LEN {
        return Err(format!(
            "program header size {phentsize}, expected {PHDR_LEN}"
        ));
    }
    if phnum == 0 || phnum > MAX_PHDRS {
        return Err(format!(
            "{phnum} program headers (1 to {MAX_PHDRS} accepted)"
        ));
    }
    let table_len = u64::from(phnum) * PHDR_LEN as u64;
    if phoff
        .checked_add(table_len)
        .is_none_or(|end| end > file_len)
    {
        return Err(format!("the program header table at offset {phoff:#x} ({phnum} entries) runs past the end of the file ({file_len} bytes)"));
    }
    let mut table = vec![0u8; usize::from(phnum) * PHDR_LEN];
    file.read_exact_at(&mut table, phoff)
        .map_err(|e| format!("cannot read the program headers: {e}"))?;
    let mut segments = Vec::new();
    for (i, ph) in table.chunks_exact(PHDR_LEN).enumerate() {
        if le32(ph, 0) != PT_LOAD {
            continue;
        }
        let (offset, paddr, filesz, memsz) =
            (le64(ph, 8), le64(ph, 24), le64(ph, 32), le64(ph, 40));
        if filesz > memsz {
            return Err(format!(
                "segment {i}: p_filesz {filesz:#x} is larger than p_memsz {memsz:#x}"
            ));
        }
        if offset.checked_add(filesz).is_none_or(|end| end > file_len) {
            return Err(format!("segment {i}: file range {offset:#x}+{filesz:#x} runs past the end of the file ({file_len} bytes)"));
        }
        if memsz == 0 {
            continue;
        }
        if paddr < HIMEM_START {
            return Err(format!("segment {i} loads at {paddr:#x}, below 1 MiB where the VMM keeps its boot structures"));
        }
        if !in_ram(mem_size, paddr, memsz) {
            return Err(format!(
                "segment {i} ({paddr:#x}+{memsz:#x}) does not fit in guest RAM ({} MiB)",
                mem_size >> 20
            ));
        }
        segments.push(Segment { paddr, memsz });
    }
    if segments.is_empty() {
        return Err("no loadable segment".into());
    }
    if !inside(&segments, entry) {
        return Err(format!(
            "entry point {entry:#x} is not inside a loaded segment"
        ));
    }
    Ok((entry, segments))
}

fn inside(segments: &[Segment], addr: u64) -> bool {
    segments
        .iter()
        .any(|s| addr >= s.paddr && addr - s.paddr < s.memsz)
}

/// Checks a bzImage's setup header; returns (header, load address, end of what it occupies).
fn check_bzimage(file: &File, file_len: u64, mem_size: u64) -> Result<setup_header, String> {
    let mut raw = [0u8; std::mem::size_of::<setup_header>()];
    file.read_exact_at(&mut raw, BZ_HEADER_OFFSET)
        .map_err(|_| "the file is too short for a setup header".to_string())?;
    let mut hdr = setup_header::default();
    vm_memory::ByteValued::as_mut_slice(&mut hdr).copy_from_slice(&raw);
    let (version, xloadflags, loadflags) = (hdr.version, hdr.xloadflags, hdr.loadflags);
    if version < 0x020c {
        return Err(format!(
            "boot protocol {}.{:02} is too old (2.12 or later has the 64-bit entry)",
            version >> 8,
            version & 0xff
        ));
    }
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err("the kernel has no 64-bit entry point (XLF_KERNEL_64 not set)".into());
    }
    if loadflags & LOADED_HIGH == 0 {
        return Err("the kernel is not loadable at 1 MiB (LOADED_HIGH not set)".into());
    }
    let setup_sects = if hdr.setup_sects == 0 {
        4
    } else {
        u64::from(hdr.setup_sects)
    };
    let setup_len = (setup_sects + 1) * 512;
    let Some(pm_len) = file_len.checked_sub(setup_len).filter(|l| *l > 0) else {
        return Err(format!(
            "the setup code ({setup_len} bytes) is longer than the file ({file_len} bytes)"
        ));
    };
    let need = pm_len.max(u64::from(hdr.init_size));
    if !in_ram(mem_size, HIMEM_START, need) {
        return Err(format!(
            "the kernel needs {need} bytes from 1 MiB to decompress, more than guest RAM ({} MiB) has there",
            mem_size >> 20
        ));
    }
    Ok(hdr)
}

/// Loads the kernel at `path` into `mem` and picks its entry.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &str,
    mem_size: u64,
    pref: EntryPreference,
) -> Result<LoadedKernel, LoadError> {
    let what = "kernel image";
    let mut file = File::open(path).map_err(|source| LoadError::Open {
        what,
        path: path.into(),
        source,
    })?;
    let file_len = file
        .metadata()
        .map_err(|source| LoadError::Read {
            what,
            path: path.into(),
            source,
        })?
        .len();
    let mut head = vec![0u8; EHDR_LEN.min(usize::try_from(file_len).unwrap_or(EHDR_LEN))];
    file.read_exact_at(&mut head, 0)
        .map_err(|source| LoadError::Read {
            what,
            path: path.into(),
            source,
        })?;
    let loader_err = |source| LoadError::Loader {
        path: path.into(),
        source,
    };

    if head.starts_with(ELF_MAGIC) {
        let (entry, segments) =
            check_elf(&head, &file, file_len, mem_size).map_err(|reason| LoadError::BadElf {
                path: path.into(),
                reason,
            })?;
        let res =
            Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(loader_err)?;
        let pvh = match res.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(a) => Some(a.0),
            _ => None,
        };
        if let Some(a) = pvh {
            if !inside(&segments, a) {
                return Err(LoadError::BadElf {
                    path: path.into(),
                    reason: format!("PVH entry point {a:#x} is not inside a loaded segment"),
                });
            }
        }
        let entry = match (pref, pvh) {
            (EntryPreference::Auto | EntryPreference::Pvh, Some(a)) => BootEntry {
                protocol: BootProtocol::Pvh,
                addr: a,
            },
            (EntryPreference::Pvh, None) => return Err(LoadError::NoPvhNote { path: path.into() }),
            _ => BootEntry {
                protocol: BootProtocol::Linux64,
                addr: entry,
            },
        };
        let end = segments
            .iter()
            .map(|s| s.paddr + s.memsz)
            .max()
            .unwrap_or(HIMEM_START);
        return Ok(LoadedKernel {
            format: KernelFormat::Elf,
            entry,
            setup_header: None,
            end,
            initrd_addr_max: DEFAULT_INITRD_ADDR_MAX,
        });
    }

    let mut magic = [0u8; 4];
    let is_bz = file.read_exact_at(&mut magic, 0x202).is_ok() && u32::from_le_bytes(magic) == HDRS;
    if !is_bz {
        return Err(LoadError::UnknownFormat { path: path.into() });
    }
    if pref == EntryPreference::Pvh {
        return Err(LoadError::PvhOnBzImage { path: path.into() });
    }
    let hdr = check_bzimage(&file, file_len, mem_size).map_err(|reason| LoadError::BadBzImage {
        path: path.into(),
        reason,
    })?;
    let res = BzImage::load(
        mem,
        Some(GuestAddress(HIMEM_START)),
        &mut file,
        Some(GuestAddress(HIMEM_START)),
    )
    .map_err(loader_err)?;
    let header = res.setup_header.unwrap_or(hdr);
    let initrd_addr_max = if hdr.initrd_addr_max == 0 {
        DEFAULT_INITRD_ADDR_MAX
    } else {
        u64::from(hdr.initrd_addr_max)
    };
    Ok(LoadedKernel {
        format: KernelFormat::BzImage,
        entry: BootEntry {
            protocol: BootProtocol::Linux64,
            addr: HIMEM_START + BZ_64BIT_ENTRY_OFFSET,
        },
        setup_header: Some(header),
        end: res.kernel_end.max(HIMEM_START + u64::from(hdr.init_size)),
        initrd_addr_max,
    })
}

/// Where an initrd of `size` bytes goes: page-aligned, as high as possible below both the
/// kernel's `initrd_addr_max` and the end of RAM under the MMIO gap, above the kernel.
pub fn place_initrd(size: u64, kernel: &LoadedKernel, mem_size: u64) -> Option<u64> {
    let limit = low_ram_end(mem_size).min(kernel.initrd_addr_max.saturating_add(1));
    let start = limit.checked_sub(size)? & !(PAGE - 1);
    let kernel_end = kernel.end.checked_add(PAGE - 1)? & !(PAGE - 1);
    (start >= kernel_end && size > 0).then_some(start)
}

/// Loads the initrd at `path` high in guest memory.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &str,
    kernel: &LoadedKernel,
    mem_size: u64,
) -> Result<Initrd, LoadError> {
    let what = "initrd";
    let mut file = File::open(path).map_err(|source| LoadError::Open {
        what,
        path: path.into(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|source| LoadError::Read {
            what,
            path: path.into(),
            source,
        })?
        .len();
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
    read_into(mem, addr, &mut file, len).map_err(|source| LoadError::Read {
        what,
        path: path.into(),
        source,
    })?;
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

/// The kernel command line: `boot_args` (the part before ` -- `), the device manager's
/// `virtio_mmio.device=` entries, then the init arguments (after ` -- `).
pub fn build_cmdline(boot_args: &str, devices: &DeviceManager) -> Result<Cmdline, LoadError> {
    let (kernel_args, init_args) = match boot_args.split_once(" -- ") {
        Some((k, i)) => (k, i),
        None => match boot_args.strip_prefix("-- ") {
            Some(i) => ("", i),
            None => (boot_args, ""),
        },
    };
    let explain = |e: linux_loader::cmdline::Error| match e {
        linux_loader::cmdline::Error::TooLarge => LoadError::Cmdline(format!(
            "the command line is longer than {} bytes",
            CMDLINE_MAX_SIZE - 1
        )),
        linux_loader::cmdline::Error::InvalidAscii => {
            LoadError::Cmdline("the command line may only hold printable ASCII characters".into())
        }
        other => LoadError::Cmdline(other.to_string()),
    };
    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(explain)?;
    if !kernel_args.trim().is_empty() {
        cl.insert_str(kernel_args).map_err(explain)?;
    }
    devices.add_cmdline_entries(&mut cl)?;
    if !init_args.trim().is_empty() {
        cl.insert_init_args(init_args).map_err(explain)?;
    }
    // Catches "init arguments but no kernel arguments" before the guest would.
    cl.as_cstring().map_err(explain)?;
    Ok(cl)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MEM: u64 = 16 << 20;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), usize::try_from(MEM).unwrap())])
            .unwrap()
    }

    struct Tmp(std::path::PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    fn tmp(name: &str, bytes: &[u8]) -> Tmp {
        let p = std::env::temp_dir().join(format!("kiln-loader-{}-{name}", std::process::id()));
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        Tmp(p)
    }

    /// A minimal x86-64 ELF: one PT_LOAD of `code` at `paddr`, entry `entry`, and optionally
    /// a PT_NOTE with a PVH entry.
    fn elf(paddr: u64, memsz: u64, entry: u64, pvh: Option<u32>) -> Vec<u8> {
        let code = vec![0xf4u8; 16];
        let phnum: u16 = if pvh.is_some() { 2 } else { 1 };
        let data_off = 64 + 56 * u64::from(phnum);
        let note_off = data_off + code.len() as u64;
        let mut f = Vec::new();
        f.extend_from_slice(b"\x7fELF");
        f.extend_from_slice(&[2, 1, 1, 0]);
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f.extend_from_slice(&62u16.to_le_bytes());
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&entry.to_le_bytes());
        f.extend_from_slice(&64u64.to_le_bytes()); // phoff
        f.extend_from_slice(&0u64.to_le_bytes()); // shoff
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(&64u16.to_le_bytes());
        f.extend_from_slice(&56u16.to_le_bytes());
        f.extend_from_slice(&phnum.to_le_bytes());
        f.extend_from_slice(&[0; 6]);
        let ph = |f: &mut Vec<u8>, ty: u32, off: u64, addr: u64, filesz: u64, memsz: u64| {
            f.extend_from_slice(&ty.to_le_bytes());
            f.extend_from_slice(&7u32.to_le_bytes());
            f.extend_from_slice(&off.to_le_bytes());
            f.extend_from_slice(&addr.to_le_bytes());
            f.extend_from_slice(&addr.to_le_bytes());
            f.extend_from_slice(&filesz.to_le_bytes());
            f.extend_from_slice(&memsz.to_le_bytes());
            f.extend_from_slice(&4u64.to_le_bytes());
        };
        ph(&mut f, PT_LOAD, data_off, paddr, code.len() as u64, memsz);
        if pvh.is_some() {
            ph(&mut f, 4, note_off, 0, 20, 20);
        }
        f.extend_from_slice(&code);
        if let Some(a) = pvh {
            f.extend_from_slice(&4u32.to_le_bytes());
            f.extend_from_slice(&4u32.to_le_bytes());
            f.extend_from_slice(&18u32.to_le_bytes());
            f.extend_from_slice(b"Xen\0");
            f.extend_from_slice(&a.to_le_bytes());
        }
        f
    }

    fn load(bytes: &[u8], pref: EntryPreference) -> Result<LoadedKernel, LoadError> {
        let t = tmp("k", bytes);
        load_kernel(&mem(), t.0.to_str().unwrap(), MEM, pref)
    }

    #[test]
    fn elf_entries() {
        let k = load(
            &elf(0x10_0000, 0x2000, 0x10_0004, Some(0x10_0008)),
            EntryPreference::Auto,
        )
        .unwrap();
        assert_eq!(
            k.entry,
            BootEntry {
                protocol: BootProtocol::Pvh,
                addr: 0x10_0008
            }
        );
        assert_eq!(k.end, 0x10_2000);
        let k = load(
            &elf(0x10_0000, 0x2000, 0x10_0004, Some(0x10_0008)),
            EntryPreference::Linux64,
        )
        .unwrap();
        assert_eq!(
            k.entry,
            BootEntry {
                protocol: BootProtocol::Linux64,
                addr: 0x10_0004
            }
        );
        let k = load(
            &elf(0x10_0000, 0x2000, 0x10_0004, None),
            EntryPreference::Auto,
        )
        .unwrap();
        assert_eq!(k.entry.protocol, BootProtocol::Linux64);
        let e = load(
            &elf(0x10_0000, 0x2000, 0x10_0004, None),
            EntryPreference::Pvh,
        )
        .unwrap_err();
        assert!(matches!(e, LoadError::NoPvhNote { .. }), "{e}");
    }

    /// Table of bad kernel images and the words their error must contain.
    #[test]
    fn bad_images_are_clear_errors() {
        let mut not_64 = elf(0x10_0000, 0x1000, 0x10_0000, None);
        not_64[4] = 1;
        let mut arm = elf(0x10_0000, 0x1000, 0x10_0000, None);
        arm[18] = 183;
        let mut phdrs_past_end = elf(0x10_0000, 0x1000, 0x10_0000, None);
        phdrs_past_end[56] = 100;
        let mut big_filesz = elf(0x10_0000, 0x1000, 0x10_0000, None);
        big_filesz[64 + 32..64 + 40].copy_from_slice(&0x10_0000u64.to_le_bytes());
        big_filesz[64 + 40..64 + 48].copy_from_slice(&0x10_0000u64.to_le_bytes());
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", vec![], "neither an ELF vmlinux nor a bzImage"),
            (
                "garbage",
                vec![0x55; 4096],
                "neither an ELF vmlinux nor a bzImage",
            ),
            (
                "truncated ELF header",
                b"\x7fELF\x02\x01".to_vec(),
                "too short for an ELF header",
            ),
            ("32-bit ELF", not_64, "not a 64-bit ELF"),
            ("wrong machine", arm, "not an x86-64 ELF"),
            ("phdrs past end", phdrs_past_end, "program header"),
            (
                "segment past end of file",
                big_filesz,
                "runs past the end of the file",
            ),
            (
                "segment beyond RAM",
                elf(0x10_0000, 64 << 20, 0x10_0000, None),
                "does not fit in guest RAM",
            ),
            (
                "segment in the MMIO gap",
                elf(0xd000_0000, 0x1000, 0xd000_0000, None),
                "does not fit in guest RAM",
            ),
            (
                "segment below 1 MiB",
                elf(0x7000, 0x1000, 0x7000, None),
                "below 1 MiB",
            ),
            (
                "address overflow",
                elf(u64::MAX - 10, 0x1000, u64::MAX - 10, None),
                "does not fit in guest RAM",
            ),
            (
                "entry outside",
                elf(0x10_0000, 0x1000, 0x20_0000, None),
                "entry point 0x200000 is not inside",
            ),
            (
                "PVH entry outside",
                elf(0x10_0000, 0x1000, 0x10_0000, Some(0x30_0000)),
                "PVH entry point 0x300000",
            ),
        ];
        for (name, bytes, want) in cases {
            let err = load(&bytes, EntryPreference::Auto)
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(want),
                "{name}: {err:?} does not contain {want:?}"
            );
        }
    }

    fn bzimage(version: u16, xloadflags: u16, init_size: u32, pm_len: usize) -> Vec<u8> {
        let setup_sects = 4u8;
        let mut f = vec![0u8; (usize::from(setup_sects) + 1) * 512 + pm_len];
        f[0x1f1] = setup_sects;
        f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        f[0x202..0x206].copy_from_slice(&HDRS.to_le_bytes());
        f[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        f[0x211] = LOADED_HIGH;
        f[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        f[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes());
        f[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        f[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
        f
    }

    #[test]
    fn bzimage_uses_the_64bit_entry() {
        let k = load(&bzimage(0x020f, 3, 0x40_0000, 4096), EntryPreference::Auto).unwrap();
        assert_eq!(k.format, KernelFormat::BzImage);
        assert_eq!(
            k.entry,
            BootEntry {
                protocol: BootProtocol::Linux64,
                addr: 0x10_0200
            }
        );
        assert_eq!(k.end, 0x50_0000);
        assert_eq!(k.initrd_addr_max, 0x37ff_ffff);
        assert!(k.setup_header.is_some());
        let e = load(&bzimage(0x020f, 3, 0x40_0000, 4096), EntryPreference::Pvh).unwrap_err();
        assert!(matches!(e, LoadError::PvhOnBzImage { .. }), "{e}");
    }

    #[test]
    fn bad_bzimages_are_clear_errors() {
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("old protocol", bzimage(0x0206, 3, 0, 4096), "too old"),
            (
                "32-bit only",
                bzimage(0x020f, 0, 0, 4096),
                "no 64-bit entry point",
            ),
            (
                "needs more memory",
                bzimage(0x020f, 3, 64 << 20, 4096),
                "to decompress",
            ),
            (
                "no protected-mode part",
                bzimage(0x020f, 3, 0, 0),
                "longer than the file",
            ),
        ];
        for (name, bytes, want) in cases {
            let err = load(&bytes, EntryPreference::Auto)
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(want),
                "{name}: {err:?} does not contain {want:?}"
            );
        }
    }

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        let k = LoadedKernel {
            format: KernelFormat::Elf,
            entry: BootEntry {
                protocol: BootProtocol::Linux64,
                addr: 0x10_0000,
            },
            setup_header: None,
            end: 0x20_0000,
            initrd_addr_max: DEFAULT_INITRD_ADDR_MAX,
        };
        assert_eq!(place_initrd(0x1234, &k, MEM), Some(MEM - 0x2000));
        assert_eq!(place_initrd(MEM - 0x20_0000, &k, MEM), Some(0x20_0000));
        assert_eq!(place_initrd(MEM - 0x20_0000 + 1, &k, MEM), None);
        assert_eq!(place_initrd(u64::MAX, &k, MEM), None);
        let low_max = LoadedKernel {
            initrd_addr_max: 0x80_0000 - 1,
            ..k
        };
        assert_eq!(place_initrd(0x1000, &low_max, MEM), Some(0x7f_f000));
        // With 8 GiB the initrd stays below the MMIO gap.
        assert_eq!(place_initrd(0x1000, &k, 8 << 30), Some(0x7fff_f000));
    }

    #[test]
    fn initrd_errors() {
        let k = load(
            &elf(0x10_0000, 0x2000, 0x10_0000, None),
            EntryPreference::Auto,
        )
        .unwrap();
        let empty = tmp("rd0", b"");
        let e = load_initrd(&mem(), empty.0.to_str().unwrap(), &k, MEM).unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
        let big = tmp("rdbig", &vec![1u8; 15 << 20]);
        let e = load_initrd(&mem(), big.0.to_str().unwrap(), &k, MEM).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
        let ok = tmp("rd", b"initrd!");
        let m = mem();
        let rd = load_initrd(&m, ok.0.to_str().unwrap(), &k, MEM).unwrap();
        assert_eq!(
            rd,
            Initrd {
                addr: MEM - 0x1000,
                size: 7
            }
        );
        let mut back = [0u8; 7];
        m.read_slice(&mut back, GuestAddress(rd.addr)).unwrap();
        assert_eq!(&back, b"initrd!");
    }

    #[test]
    fn cmdline_keeps_init_args_last() {
        let mut dm = DeviceManager::new();
        let s = dm.allocate_mmio_slot().unwrap();
        struct D;
        impl crate::devices::bus::BusDevice for D {
            fn read(&mut self, _: u64, _: &mut [u8]) {}
            fn write(&mut self, _: u64, _: &[u8]) {}
        }
        dm.attach_mmio_device(s, std::sync::Arc::new(std::sync::Mutex::new(D)))
            .unwrap();
        let cl = build_cmdline("console=ttyS0 quiet -- init-arg1 x", &dm).unwrap();
        assert_eq!(
            cl.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 quiet virtio_mmio.device=4K@0xd0000000:5 -- init-arg1 x"
        );
        let plain = build_cmdline("a=b", &DeviceManager::new()).unwrap();
        assert_eq!(plain.as_cstring().unwrap().to_str().unwrap(), "a=b");
    }

    #[test]
    fn cmdline_errors() {
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        let e = build_cmdline(&long, &DeviceManager::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("longer than 2047 bytes"), "{e}");
        let e = build_cmdline("caf\u{e9}", &DeviceManager::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("printable ASCII"), "{e}");
        let e = build_cmdline("tab\there", &DeviceManager::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("printable ASCII"), "{e}");
    }
}
