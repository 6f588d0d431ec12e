//! What the VMM told the guest at boot: kiln-guest-boot's [`BootInfo`] (both protocols, see
//! its `info` module), read through [`crate::phys::MAP`], with every problem it finds
//! printed as an `error` line; the field concerned is then treated as absent.

use crate::phys;
use crate::serial::Console;
use kiln_guest_boot::Problem;

pub use kiln_guest_boot::{BootInfo, Entry};

/// Reads the boot information at `info_addr` for `entry`, reporting problems on `con`.
pub fn parse(entry: Entry, info_addr: u64, con: &mut Console) -> BootInfo {
    BootInfo::parse(entry, info_addr, &phys::MAP, &mut |p| report(p, con))
}

fn report(problem: Problem, con: &mut Console) {
    match problem {
        Problem::BootParamsUnmapped { addr } => {
            con.error().s("boot_params unmapped addr=").hex(addr).end()
        }
        Problem::BootParamsMagic { found } => con
            .error()
            .s("boot_params hdr.header=")
            .hex(found.into())
            .s(" (want HdrS)")
            .end(),
        Problem::E820Entries { count } => con
            .error()
            .s("e820_entries=")
            .dec(count.into())
            .s(" above 128")
            .end(),
        Problem::StartInfoUnmapped { addr } => con
            .error()
            .s("hvm_start_info unmapped addr=")
            .hex(addr)
            .end(),
        Problem::StartInfoMagic { found } => con
            .error()
            .s("hvm_start_info magic=")
            .hex(found.into())
            .end(),
        Problem::MemmapEntries { count } => con
            .error()
            .s("memmap_entries=")
            .dec(count.into())
            .s(" above 128")
            .end(),
        Problem::MemmapUnmapped { addr } => con.error().s("memmap unmapped addr=").hex(addr).end(),
        Problem::CmdlineUnterminated { addr } => {
            con.error().s("cmdline unterminated addr=").hex(addr).end()
        }
        Problem::CmdlineUnmapped { addr } => {
            con.error().s("cmdline unmapped addr=").hex(addr).end()
        }
    }
}
