//! `memmap`: the memory map, one line per entry, in the VMM's order.
//!
//! Output: `KILN-TINY: mem addr=0x... size=0x... type=N` per entry, or `KILN-TINY: mem none`
//! when the VMM gave no map (PVH start info version 0, or zero entries).

use crate::boot_info::BootInfo;
use crate::serial::Console;

pub fn run(info: &BootInfo, con: &mut Console) {
    if info.memmap_len() == 0 {
        con.line().s("mem none").end();
        return;
    }
    for index in 0..info.memmap_len() {
        match info.memmap_entry(index) {
            Some(r) => con
                .line()
                .s("mem addr=")
                .hex(r.addr)
                .s(" size=")
                .hex(r.size)
                .s(" type=")
                .dec(r.kind.into())
                .end(),
            None => con
                .error()
                .s("mem entry unreadable index=")
                .dec(index.into())
                .end(),
        }
    }
}
