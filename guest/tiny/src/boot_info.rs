//! What the VMM told the guest at boot, read from either protocol into one [`BootInfo`].
//!
//! * Linux 64-bit boot protocol: `boot_params` (the "zero page", 4 KiB;
//!   Documentation/arch/x86/zero-page.rst and boot.rst): command line at
//!   `hdr.cmd_line_ptr` (0x228, u32) with its high half in `ext_cmd_line_ptr` (0x0c8, u32);
//!   `e820_entries` (0x1e8, u8) entries of `struct boot_e820_entry` (20 bytes, packed:
//!   u64 addr, u64 size, u32 type) at `e820_table` (0x2d0), at most 128.
//! * PVH: `struct hvm_start_info` (xen/include/public/arch-x86/hvm/start_info.h): magic
//!   0x336ec578 at 0x00, version (u32) at 0x04, `cmdline_paddr` (u64) at 0x18,
//!   `memmap_paddr` (u64) at 0x28 and `memmap_entries` (u32) at 0x30 (version >= 1), each
//!   entry `struct hvm_memmap_table_entry` (24 bytes: u64 addr, u64 size, u32 type,
//!   u32 reserved).
//!
//! Whatever is wrong with that information is reported as an `error` line and the field is
//! treated as absent; the guest never follows a pointer outside its identity map.

use crate::entry::{ENTRY_LINUX64, ENTRY_PVH};
use crate::phys;
use crate::serial::Console;

/// How the guest was entered.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Linux64,
    Pvh,
}

impl Entry {
    /// The name printed in the start marker (by the assembly) and by the `boot` scenario.
    pub fn name(self) -> &'static str {
        match self {
            Entry::Linux64 => "linux64",
            Entry::Pvh => "pvh",
        }
    }

    /// The entry kind passed by the assembly stubs.
    pub fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            ENTRY_LINUX64 => Some(Entry::Linux64),
            ENTRY_PVH => Some(Entry::Pvh),
            _ => None,
        }
    }
}

/// Longest command line read (bytes, without the NUL).
pub const CMDLINE_MAX: usize = 4096;
/// Most memory-map entries read from either protocol (the zero page holds 128).
pub const MEMMAP_MAX: u32 = 128;

/// One memory-map entry, the same for both protocols (E820 types: 1 RAM, 2 reserved,
/// 3 ACPI, 4 NVS, 5 unusable, ...).
#[derive(Clone, Copy)]
pub struct MemRegion {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// Where the memory map lives and how to read it.
#[derive(Clone, Copy)]
struct MemMap {
    addr: u64,
    count: u32,
    stride: u64,
}

/// The boot information of either entry.
pub struct BootInfo {
    pub entry: Entry,
    /// Physical address the VMM passed (RSI: boot_params, EBX: hvm_start_info).
    pub info_addr: u64,
    /// Physical address of the command line (0 when absent).
    pub cmdline_addr: u64,
    /// The command line, without its NUL (empty when absent).
    pub cmdline: &'static [u8],
    memmap: MemMap,
}

// boot_params (zero page) layout.
const BP_SIZE: u64 = 4096;
const BP_EXT_CMD_LINE_PTR: u64 = 0x0c8;
const BP_E820_ENTRIES: u64 = 0x1e8;
const BP_HDR_HEADER: u64 = 0x202;
const BP_HDR_CMD_LINE_PTR: u64 = 0x228;
const BP_E820_TABLE: u64 = 0x2d0;
const BP_E820_ENTRY_SIZE: u64 = 20;
const HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"

// hvm_start_info layout.
const HVM_START_MAGIC: u32 = 0x336e_c578;
const HVM_SIZE_V1: u64 = 56;
const HVM_VERSION: u64 = 0x04;
const HVM_CMDLINE_PADDR: u64 = 0x18;
const HVM_MEMMAP_PADDR: u64 = 0x28;
const HVM_MEMMAP_ENTRIES: u64 = 0x30;
const HVM_MEMMAP_ENTRY_SIZE: u64 = 24;

const NO_MEMMAP: MemMap = MemMap {
    addr: 0,
    count: 0,
    stride: 0,
};

impl BootInfo {
    /// Reads the boot information at `info_addr` for `entry`, reporting problems on `con`.
    pub fn parse(entry: Entry, info_addr: u64, con: &mut Console) -> Self {
        let mut info = BootInfo {
            entry,
            info_addr,
            cmdline_addr: 0,
            cmdline: &[],
            memmap: NO_MEMMAP,
        };
        match entry {
            Entry::Linux64 => info.parse_linux(con),
            Entry::Pvh => info.parse_pvh(con),
        }
        info
    }

    fn parse_linux(&mut self, con: &mut Console) {
        let bp = self.info_addr;
        if !phys::is_mapped(bp, BP_SIZE) {
            con.error().s("boot_params unmapped addr=").hex(bp).end();
            return;
        }
        let header = phys::read_u32(bp + BP_HDR_HEADER).unwrap_or(0);
        if header != HDR_MAGIC {
            con.error()
                .s("boot_params hdr.header=")
                .hex(header.into())
                .s(" (want HdrS)")
                .end();
        }
        let low = phys::read_u32(bp + BP_HDR_CMD_LINE_PTR).unwrap_or(0);
        let high = phys::read_u32(bp + BP_EXT_CMD_LINE_PTR).unwrap_or(0);
        self.read_cmdline(u64::from(high) << 32 | u64::from(low), con);

        let mut count = u32::from(phys::read_u8(bp + BP_E820_ENTRIES).unwrap_or(0));
        if count > MEMMAP_MAX {
            con.error()
                .s("e820_entries=")
                .dec(count.into())
                .s(" above 128")
                .end();
            count = MEMMAP_MAX;
        }
        self.memmap = MemMap {
            addr: bp + BP_E820_TABLE,
            count,
            stride: BP_E820_ENTRY_SIZE,
        };
    }

    fn parse_pvh(&mut self, con: &mut Console) {
        let si = self.info_addr;
        if !phys::is_mapped(si, HVM_SIZE_V1) {
            con.error().s("hvm_start_info unmapped addr=").hex(si).end();
            return;
        }
        let magic = phys::read_u32(si).unwrap_or(0);
        if magic != HVM_START_MAGIC {
            con.error()
                .s("hvm_start_info magic=")
                .hex(magic.into())
                .end();
            return;
        }
        self.read_cmdline(phys::read_u64(si + HVM_CMDLINE_PADDR).unwrap_or(0), con);

        let version = phys::read_u32(si + HVM_VERSION).unwrap_or(0);
        if version < 1 {
            // Version 0 has no memory map; the memmap scenario reports it as absent.
            return;
        }
        let addr = phys::read_u64(si + HVM_MEMMAP_PADDR).unwrap_or(0);
        let mut count = phys::read_u32(si + HVM_MEMMAP_ENTRIES).unwrap_or(0);
        if count > MEMMAP_MAX {
            con.error()
                .s("memmap_entries=")
                .dec(count.into())
                .s(" above 128")
                .end();
            count = MEMMAP_MAX;
        }
        if count > 0 && !phys::is_mapped(addr, u64::from(count) * HVM_MEMMAP_ENTRY_SIZE) {
            con.error().s("memmap unmapped addr=").hex(addr).end();
            return;
        }
        self.memmap = MemMap {
            addr,
            count,
            stride: HVM_MEMMAP_ENTRY_SIZE,
        };
    }

    fn read_cmdline(&mut self, addr: u64, con: &mut Console) {
        if addr == 0 {
            return;
        }
        match phys::c_string(addr, CMDLINE_MAX) {
            Some((bytes, terminated)) => {
                self.cmdline_addr = addr;
                if !terminated {
                    con.error().s("cmdline unterminated addr=").hex(addr).end();
                }
                self.cmdline = bytes;
            }
            None => con.error().s("cmdline unmapped addr=").hex(addr).end(),
        }
    }

    /// Physical address of the memory map (0 when absent).
    pub fn memmap_addr(&self) -> u64 {
        self.memmap.addr
    }

    /// Number of memory-map entries.
    pub fn memmap_len(&self) -> u32 {
        self.memmap.count
    }

    /// Memory-map entry `index` (`None` past the end).
    pub fn memmap_entry(&self, index: u32) -> Option<MemRegion> {
        if index >= self.memmap.count {
            return None;
        }
        let at = self.memmap.addr + u64::from(index) * self.memmap.stride;
        Some(MemRegion {
            addr: phys::read_u64(at)?,
            size: phys::read_u64(at + 8)?,
            kind: phys::read_u32(at + 16)?,
        })
    }
}
