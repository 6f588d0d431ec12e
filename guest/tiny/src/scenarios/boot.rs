//! `boot`: where the VMM put the boot information, as the guest found it.
//!
//! Output: `KILN-TINY: boot entry=linux64|pvh info=0x... cmdline=0x... cmdline_len=N
//! memmap=0x... memmap_entries=N` (0 for absent addresses).

use crate::boot_info::BootInfo;
use crate::serial::Console;

pub fn run(info: &BootInfo, con: &mut Console) {
    con.line()
        .s("boot entry=")
        .s(info.entry.name())
        .s(" info=")
        .hex(info.info_addr)
        .s(" cmdline=")
        .hex(info.cmdline_addr)
        .s(" cmdline_len=")
        .dec(info.cmdline.len() as u64)
        .s(" memmap=")
        .hex(info.memmap_addr())
        .s(" memmap_entries=")
        .dec(info.memmap_len().into())
        .end();
}
