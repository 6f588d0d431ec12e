//! What the VMM told the guest at boot, read from either protocol into one [`BootInfo`].
//!
//! * Linux 64-bit boot protocol: `boot_params` (the "zero page", 4 KiB;
//!   Documentation/arch/x86/zero-page.rst and boot.rst): `hdr.header` (0x202) must be
//!   "HdrS"; command line at `hdr.cmd_line_ptr` (0x228, u32) with its high half in
//!   `ext_cmd_line_ptr` (0x0c8, u32); `e820_entries` (0x1e8, u8) entries of `struct
//!   boot_e820_entry` (20 bytes, packed: u64 addr, u64 size, u32 type) at `e820_table`
//!   (0x2d0), at most 128.
//! * PVH: `struct hvm_start_info` (xen/include/public/arch-x86/hvm/start_info.h): magic
//!   0x336ec578 at 0x00, version (u32) at 0x04, `cmdline_paddr` (u64) at 0x18,
//!   `memmap_paddr` (u64) at 0x28 and `memmap_entries` (u32) at 0x30 (version >= 1), each
//!   entry `struct hvm_memmap_table_entry` (24 bytes: u64 addr, u64 size, u32 type,
//!   u32 reserved).
//!
//! Whatever is wrong with that information is handed to the caller as a [`Problem`] (the
//! test guest prints each, the function runtime has no one to tell) and the field is treated
//! as absent; no pointer outside the guest's [`IdentityMap`] is ever followed.

use crate::cmdline;
use crate::entry::Entry;
use crate::phys::IdentityMap;

/// Longest command line read (bytes, without the NUL).
pub const CMDLINE_MAX: usize = 4096;
/// Most memory-map entries read from either protocol (the zero page holds 128).
pub const MEMMAP_MAX: u32 = 128;
/// E820 type of usable RAM (others: 2 reserved, 3 ACPI, 4 NVS, 5 unusable, ...).
pub const E820_RAM: u32 = 1;

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

/// Something wrong with the boot information, in the order the parser meets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The 4 KiB zero page at `addr` is not mapped: nothing is read.
    BootParamsUnmapped { addr: u64 },
    /// `hdr.header` of the zero page is `found`, not "HdrS" (the rest is read anyway).
    BootParamsMagic { found: u32 },
    /// `e820_entries` is `count`, over [`MEMMAP_MAX`]: the first 128 are read.
    E820Entries { count: u32 },
    /// The `hvm_start_info` at `addr` is not mapped: nothing is read.
    StartInfoUnmapped { addr: u64 },
    /// The `hvm_start_info` magic is `found`: nothing else is read.
    StartInfoMagic { found: u32 },
    /// `memmap_entries` is `count`, over [`MEMMAP_MAX`]: the first 128 are read.
    MemmapEntries { count: u32 },
    /// The PVH memory map at `addr` is not mapped: there is no memory map.
    MemmapUnmapped { addr: u64 },
    /// No NUL within [`CMDLINE_MAX`] bytes of the command line at `addr`: it was cut.
    CmdlineUnterminated { addr: u64 },
    /// The command line at `addr` is not mapped: there is none.
    CmdlineUnmapped { addr: u64 },
}

/// One memory-map entry, the same for both protocols.
#[derive(Clone, Copy, Debug)]
pub struct MemRegion {
    pub addr: u64,
    pub size: u64,
    /// The E820 type ([`E820_RAM`], ...).
    pub kind: u32,
}

/// Where the memory map lives and how to read it.
#[derive(Clone, Copy)]
struct MemMap {
    addr: u64,
    count: u32,
    stride: u64,
}

const NO_MEMMAP: MemMap = MemMap {
    addr: 0,
    count: 0,
    stride: 0,
};

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
    map: IdentityMap,
}

impl BootInfo {
    /// Reads the boot information at `info_addr` for `entry`, through `map`, handing every
    /// problem to `report` as it is found.
    pub fn parse(
        entry: Entry,
        info_addr: u64,
        map: &IdentityMap,
        report: &mut impl FnMut(Problem),
    ) -> BootInfo {
        let mut info = BootInfo {
            entry,
            info_addr,
            cmdline_addr: 0,
            cmdline: &[],
            memmap: NO_MEMMAP,
            map: map.clone(),
        };
        match entry {
            Entry::Linux64 => info.parse_linux(report),
            Entry::Pvh => info.parse_pvh(report),
        }
        info
    }

    fn parse_linux(&mut self, report: &mut impl FnMut(Problem)) {
        let (bp, map) = (self.info_addr, &self.map);
        if !map.is_mapped(bp, BP_SIZE) {
            report(Problem::BootParamsUnmapped { addr: bp });
            return;
        }
        let header = map.read_u32(bp + BP_HDR_HEADER).unwrap_or(0);
        if header != HDR_MAGIC {
            report(Problem::BootParamsMagic { found: header });
        }
        let low = map.read_u32(bp + BP_HDR_CMD_LINE_PTR).unwrap_or(0);
        let high = map.read_u32(bp + BP_EXT_CMD_LINE_PTR).unwrap_or(0);
        (self.cmdline_addr, self.cmdline) =
            read_cmdline(map, u64::from(high) << 32 | u64::from(low), report);

        let mut count = u32::from(map.read_u8(bp + BP_E820_ENTRIES).unwrap_or(0));
        if count > MEMMAP_MAX {
            report(Problem::E820Entries { count });
            count = MEMMAP_MAX;
        }
        self.memmap = MemMap {
            addr: bp + BP_E820_TABLE,
            count,
            stride: BP_E820_ENTRY_SIZE,
        };
    }

    fn parse_pvh(&mut self, report: &mut impl FnMut(Problem)) {
        let (si, map) = (self.info_addr, &self.map);
        if !map.is_mapped(si, HVM_SIZE_V1) {
            report(Problem::StartInfoUnmapped { addr: si });
            return;
        }
        let magic = map.read_u32(si).unwrap_or(0);
        if magic != HVM_START_MAGIC {
            report(Problem::StartInfoMagic { found: magic });
            return;
        }
        let cmdline = map.read_u64(si + HVM_CMDLINE_PADDR).unwrap_or(0);
        (self.cmdline_addr, self.cmdline) = read_cmdline(map, cmdline, report);

        let version = map.read_u32(si + HVM_VERSION).unwrap_or(0);
        if version < 1 {
            // Version 0 has no memory map.
            return;
        }
        let addr = map.read_u64(si + HVM_MEMMAP_PADDR).unwrap_or(0);
        let mut count = map.read_u32(si + HVM_MEMMAP_ENTRIES).unwrap_or(0);
        if count > MEMMAP_MAX {
            report(Problem::MemmapEntries { count });
            count = MEMMAP_MAX;
        }
        if count > 0 && !map.is_mapped(addr, u64::from(count) * HVM_MEMMAP_ENTRY_SIZE) {
            report(Problem::MemmapUnmapped { addr });
            return;
        }
        self.memmap = MemMap {
            addr,
            count,
            stride: HVM_MEMMAP_ENTRY_SIZE,
        };
    }

    /// Value of the last `key=value` word of the command line, `Some(b"")` for a bare `key`.
    pub fn param(&self, key: &[u8]) -> Option<&'static [u8]> {
        cmdline::param(self.cmdline, key)
    }

    /// Physical address of the memory map (0 when absent).
    pub fn memmap_addr(&self) -> u64 {
        self.memmap.addr
    }

    /// Number of memory-map entries.
    pub fn memmap_len(&self) -> u32 {
        self.memmap.count
    }

    /// Memory-map entry `index` (`None` past the end or when unreadable).
    pub fn memmap_entry(&self, index: u32) -> Option<MemRegion> {
        if index >= self.memmap.count {
            return None;
        }
        let at = self.memmap.addr + u64::from(index) * self.memmap.stride;
        Some(MemRegion {
            addr: self.map.read_u64(at)?,
            size: self.map.read_u64(at + 8)?,
            kind: self.map.read_u32(at + 16)?,
        })
    }

    /// The end (exclusive) of the first RAM region of the memory map that contains `addr`,
    /// capped at `limit`.
    pub fn ram_end_containing(&self, addr: u64, limit: u64) -> Option<u64> {
        (0..self.memmap.count)
            .filter_map(|i| self.memmap_entry(i))
            .filter(|r| r.kind == E820_RAM && r.addr <= addr)
            .map(|r| r.addr.saturating_add(r.size).min(limit))
            .find(|&end| end > addr)
    }
}

/// The command line at `addr` (0: none) and its address (0 when it cannot be read).
fn read_cmdline(
    map: &IdentityMap,
    addr: u64,
    report: &mut impl FnMut(Problem),
) -> (u64, &'static [u8]) {
    if addr == 0 {
        return (0, &[]);
    }
    match map.c_string(addr, CMDLINE_MAX) {
        Some((bytes, terminated)) => {
            if !terminated {
                report(Problem::CmdlineUnterminated { addr });
            }
            (addr, bytes)
        }
        None => {
            report(Problem::CmdlineUnmapped { addr });
            (0, &[])
        }
    }
}
