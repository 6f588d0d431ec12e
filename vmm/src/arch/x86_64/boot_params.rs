//! The boot information a kernel reads at its entry: the Linux zero page (`boot_params`, for
//! the 64-bit Linux entry) or the PVH `hvm_start_info` (for the PVH entry). Both carry the
//! command line's address, the initrd and the memory map; they are written with
//! linux-loader's boot configurators, which check they fit in guest memory.

use super::e820::E820Entry;
use super::layout::{
    addr32, CMDLINE_ADDR, PVH_INFO_ADDR, PVH_MEMMAP_ADDR, PVH_MEMMAP_MAX_ENTRIES, PVH_MODLIST_ADDR,
    ZERO_PAGE_ADDR,
};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{
    boot_e820_entry, boot_params, setup_header, E820_MAX_ENTRIES_ZEROPAGE,
};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// `boot_flag` of a valid setup header.
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// "HdrS".
const HDRS_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader` for a boot loader without an assigned id.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Alignment the 64-bit kernel is built for (used when the image has no setup header).
const KERNEL_ALIGNMENT: u32 = 0x0100_0000;
/// `hvm_start_info.magic`.
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

/// The initrd as loaded in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Initrd {
    pub addr: u64,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    #[error("the memory map has {0} entries, more than the {max} the boot information holds", max = E820_MAX_ENTRIES_ZEROPAGE)]
    TooManyE820Entries(usize),
    #[error("the initrd at {addr:#x} ({size} bytes) is not addressable by the 32-bit fields of the zero page")]
    InitrdAbove4G { addr: u64, size: u64 },
    #[error("the command line ({0} bytes) is too long for the zero page")]
    CmdlineTooLong(usize),
    #[error("cannot write the boot information into guest memory: {0}")]
    Write(#[from] linux_loader::configurator::Error),
}

/// Writes the zero page for the 64-bit Linux entry. `header` is the bzImage's setup header
/// (its fields are kept, as the boot protocol asks); an ELF vmlinux has none.
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<Initrd>,
    e820: &[E820Entry],
) -> Result<(), BootParamsError> {
    let mut params = boot_params::default();
    match header {
        Some(h) => params.hdr = h,
        None => params.hdr.kernel_alignment = KERNEL_ALIGNMENT,
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = HDRS_MAGIC;
    params.hdr.cmd_line_ptr = const { addr32(CMDLINE_ADDR) };
    params.hdr.cmdline_size =
        u32::try_from(cmdline_len).map_err(|_| BootParamsError::CmdlineTooLong(cmdline_len))?;
    if let Some(rd) = initrd {
        let too_high = || BootParamsError::InitrdAbove4G {
            addr: rd.addr,
            size: rd.size,
        };
        params.hdr.ramdisk_image = u32::try_from(rd.addr).map_err(|_| too_high())?;
        params.hdr.ramdisk_size = u32::try_from(rd.size).map_err(|_| too_high())?;
    }
    if e820.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(BootParamsError::TooManyE820Entries(e820.len()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries =
        u8::try_from(e820.len()).map_err(|_| BootParamsError::TooManyE820Entries(e820.len()))?;
    let bp = BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_ADDR));
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(&bp, mem)?;
    Ok(())
}

/// Writes the PVH `hvm_start_info`, its module list (the initrd) and the memory map.
pub fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    initrd: Option<Initrd>,
    e820: &[E820Entry],
) -> Result<(), BootParamsError> {
    let too_many = || BootParamsError::TooManyE820Entries(e820.len());
    if e820.len() > PVH_MEMMAP_MAX_ENTRIES {
        return Err(too_many());
    }
    let memmap: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: u32::try_from(e820.len()).map_err(|_| too_many())?,
        ..Default::default()
    };
    let modules: Vec<hvm_modlist_entry> = initrd
        .map(|rd| hvm_modlist_entry {
            paddr: rd.addr,
            size: rd.size,
            ..Default::default()
        })
        .into_iter()
        .collect();
    if !modules.is_empty() {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_ADDR;
    }
    let mut bp = BootParams::new::<hvm_start_info>(&info, GuestAddress(PVH_INFO_ADDR));
    bp.set_sections::<hvm_memmap_table_entry>(&memmap, GuestAddress(PVH_MEMMAP_ADDR));
    if !modules.is_empty() {
        bp.set_modules::<hvm_modlist_entry>(&modules, GuestAddress(PVH_MODLIST_ADDR));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&bp, mem)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::e820::memory_map;
    use vm_memory::Bytes;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    #[test]
    fn zero_page_carries_cmdline_initrd_and_e820() {
        let m = mem();
        let map = memory_map(16 << 20);
        let rd = Initrd {
            addr: 0xf0_0000,
            size: 0x1234,
        };
        write_zero_page(&m, None, 42, Some(rd), &map).unwrap();
        let bp: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        assert_eq!(u64::from(bp.hdr.cmd_line_ptr), CMDLINE_ADDR);
        assert_eq!({ bp.hdr.cmdline_size }, 42);
        assert_eq!({ bp.hdr.ramdisk_image }, 0xf0_0000);
        assert_eq!({ bp.hdr.ramdisk_size }, 0x1234);
        assert_eq!({ bp.hdr.boot_flag }, BOOT_FLAG_MAGIC);
        assert_eq!({ bp.hdr.type_of_loader }, LOADER_TYPE_UNDEFINED);
        assert_eq!(usize::from(bp.e820_entries), map.len());
        let last = bp.e820_table[map.len() - 1];
        assert_eq!(
            ({ last.addr }, { last.size }, { last.r#type }),
            (0x10_0000, (16 << 20) - 0x10_0000, 1)
        );
    }

    #[test]
    fn zero_page_keeps_the_bzimage_header() {
        let m = mem();
        let hdr = setup_header {
            version: 0x020f,
            xloadflags: 3,
            code32_start: 0x100000,
            ..Default::default()
        };
        write_zero_page(&m, Some(hdr), 0, None, &memory_map(16 << 20)).unwrap();
        let bp: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        assert_eq!(
            ({ bp.hdr.version }, { bp.hdr.xloadflags }, {
                bp.hdr.ramdisk_size
            }),
            (0x020f, 3, 0)
        );
    }

    #[test]
    fn pvh_start_info_points_at_memmap_and_module() {
        let m = mem();
        let map = memory_map(16 << 20);
        write_pvh_start_info(
            &m,
            Some(Initrd {
                addr: 0xf0_0000,
                size: 99,
            }),
            &map,
        )
        .unwrap();
        let info: hvm_start_info = m.read_obj(GuestAddress(PVH_INFO_ADDR)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(
            (info.cmdline_paddr, info.memmap_paddr),
            (CMDLINE_ADDR, PVH_MEMMAP_ADDR)
        );
        assert_eq!(info.memmap_entries as usize, map.len());
        assert_eq!((info.nr_modules, info.modlist_paddr), (1, PVH_MODLIST_ADDR));
        let module: hvm_modlist_entry = m.read_obj(GuestAddress(PVH_MODLIST_ADDR)).unwrap();
        assert_eq!((module.paddr, module.size), (0xf0_0000, 99));
        let e: hvm_memmap_table_entry = m.read_obj(GuestAddress(PVH_MEMMAP_ADDR)).unwrap();
        assert_eq!((e.addr, e.size, e.type_), (0, 0x9fc00, 1));
    }

    #[test]
    fn initrd_above_4g_is_refused() {
        let m = mem();
        let err = write_zero_page(
            &m,
            None,
            0,
            Some(Initrd {
                addr: 1 << 32,
                size: 1,
            }),
            &[],
        )
        .unwrap_err();
        assert!(
            matches!(err, BootParamsError::InitrdAbove4G { .. }),
            "{err}"
        );
    }
}
