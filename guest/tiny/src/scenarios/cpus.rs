//! `cpus`: counts the processors the Intel MultiProcessor table lists.
//!
//! The MP floating pointer structure (signature `_MP_`, 16 bytes, on a 16-byte boundary)
//! is searched where the MP specification (1.4, section 4) puts it: the last KiB of base
//! memory (0x9fc00, where Firecracker and QEMU's qboot write it), the first KiB of the EBDA
//! (segment at BDA 0x40e), and the BIOS ROM area 0xf0000-0xfffff. Its checksum is checked,
//! then the configuration table it points at (signature `PCMP`) is walked, like Linux does,
//! over its whole base table length (qboot leaves the entry count at 0): processor entries
//! (type 0, 20 bytes) with the enabled flag are counted; types 1-4 are 8 bytes.
//!
//! Output:
//! ```text
//! KILN-TINY: mp floating=0x... config=0x...
//! KILN-TINY: cpus=N
//! ```
//! or just `KILN-TINY: cpus=none` when there is no floating pointer. A bad checksum,
//! signature or entry is reported as an `error` line (the count is still printed when the
//! table could be walked).

use crate::boot_info::BootInfo;
use crate::phys;
use crate::serial::Console;

const FLOATING_SIGNATURE: u32 = u32::from_le_bytes(*b"_MP_");
const CONFIG_SIGNATURE: u32 = u32::from_le_bytes(*b"PCMP");
const BDA_EBDA_SEGMENT: u64 = 0x40e;
const CONFIG_HEADER_SIZE: u64 = 44;
const PROCESSOR_ENTRY: u8 = 0;
const PROCESSOR_ENTRY_SIZE: u64 = 20;
const OTHER_ENTRY_SIZE: u64 = 8;
const CPU_ENABLED: u8 = 1;

/// Sum of `len` bytes at `addr` modulo 256 (0 for a valid MP structure), `None` if unmapped.
fn checksum(addr: u64, len: u64) -> Option<u8> {
    let mut sum = 0u8;
    for i in 0..len {
        sum = sum.wrapping_add(phys::MAP.read_u8(addr + i)?);
    }
    Some(sum)
}

/// Address of a valid MP floating pointer structure in `[start, end)`.
fn scan(start: u64, end: u64, con: &mut Console) -> Option<u64> {
    let mut from = start;
    while let Some(addr) = phys::MAP.find_u32(from, end, 16, FLOATING_SIGNATURE) {
        if checksum(addr, 16) == Some(0) {
            return Some(addr);
        }
        con.error().s("mp floating checksum addr=").hex(addr).end();
        from = addr + 16;
    }
    None
}

fn find_floating(con: &mut Console) -> Option<u64> {
    if let Some(found) = scan(0x9fc00, 0xa0000, con) {
        return Some(found);
    }
    let ebda = u64::from(phys::MAP.read_u16(BDA_EBDA_SEGMENT).unwrap_or(0)) << 4;
    if (0x80000..0xa0000).contains(&ebda) {
        if let Some(found) = scan(ebda, ebda + 1024, con) {
            return Some(found);
        }
    }
    scan(0xf0000, 0x100000, con)
}

/// Counts enabled processor entries of the configuration table at `table`.
fn count_cpus(table: u64, con: &mut Console) -> Option<u32> {
    if phys::MAP.read_u32(table) != Some(CONFIG_SIGNATURE) {
        con.error().s("mp config signature addr=").hex(table).end();
        return None;
    }
    let length = u64::from(phys::MAP.read_u16(table + 4)?);
    if checksum(table, length) != Some(0) {
        con.error().s("mp config checksum addr=").hex(table).end();
    }
    let end = table + length;
    let mut at = table + CONFIG_HEADER_SIZE;
    let mut cpus = 0u32;
    while at < end {
        let kind = phys::MAP.read_u8(at)?;
        let size = match kind {
            PROCESSOR_ENTRY => PROCESSOR_ENTRY_SIZE,
            1..=4 => OTHER_ENTRY_SIZE,
            _ => {
                con.error()
                    .s("mp config entry type=")
                    .dec(kind.into())
                    .s(" addr=")
                    .hex(at)
                    .end();
                return Some(cpus);
            }
        };
        if at + size > end {
            con.error()
                .s("mp config entry past table end addr=")
                .hex(at)
                .end();
            return Some(cpus);
        }
        if kind == PROCESSOR_ENTRY && phys::MAP.read_u8(at + 3)? & CPU_ENABLED != 0 {
            cpus += 1;
        }
        at += size;
    }
    Some(cpus)
}

pub fn run(_info: &BootInfo, con: &mut Console) {
    let Some(floating) = find_floating(con) else {
        con.line().s("cpus=none").end();
        return;
    };
    let table = u64::from(phys::MAP.read_u32(floating + 4).unwrap_or(0));
    con.line()
        .s("mp floating=")
        .hex(floating)
        .s(" config=")
        .hex(table)
        .end();
    if table == 0 {
        con.error()
            .s("mp default configuration (no table) is not supported")
            .end();
        con.line().s("cpus=none").end();
        return;
    }
    match count_cpus(table, con) {
        Some(n) => con.line().s("cpus=").dec(n.into()).end(),
        None => con.line().s("cpus=none").end(),
    }
}
