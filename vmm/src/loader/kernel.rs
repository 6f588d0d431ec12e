//! The kernel image: an ELF `vmlinux` (with or without a PVH note) or a bzImage, checked
//! against the file and guest RAM before linux-loader copies it, and its entry chosen.

use super::{image_len, in_ram, EntryPreference, LoadError};
use crate::arch::x86_64::layout::HIMEM_START;
use crate::arch::x86_64::regs::{BootEntry, BootProtocol};
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use std::fs::File;
use std::os::unix::fs::FileExt;
use vm_memory::{GuestAddress, GuestMemoryMmap};

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

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
pub(super) const PT_LOAD: u32 = 1;
const EHDR_LEN: usize = 64;
const PHDR_LEN: usize = 56;
/// More program headers than any kernel has; bounds the work a hostile image can cause.
const MAX_PHDRS: u16 = 128;

const BZ_HEADER_OFFSET: u64 = 0x1f1;
pub(super) const HDRS: u32 = 0x5372_6448;
const XLF_KERNEL_64: u16 = 1 << 0;
pub(super) const LOADED_HIGH: u8 = 1 << 0;
/// The boot protocol's 64-bit entry is 0x200 bytes into the protected-mode kernel.
const BZ_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// `initrd_addr_max` when the image does not say (boot protocol < 2.03, and ELF vmlinux):
/// every x86-64 kernel declares at least this.
pub(super) const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;

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

/// Loads the kernel image `file` (opened from `path`, which messages name) into `mem` and
/// picks its entry. The image is read at explicit offsets from its start.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    mut file: File,
    path: &str,
    mem_size: u64,
    pref: EntryPreference,
) -> Result<LoadedKernel, LoadError> {
    let what = "kernel image";
    let file_len = image_len(what, &file, path)?;
    let mut head = vec![0u8; EHDR_LEN.min(usize::try_from(file_len).unwrap_or(EHDR_LEN))];
    file.read_exact_at(&mut head, 0)
        .map_err(|e| LoadError::read(what, path, e))?;
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
