//! Scenarios that end (or never end) the VM on their own.
//!
//! * `reset`: `KILN-TINY: reset via i8042`, then 0xFE to port 0x64. If the VMM ignores it,
//!   `KILN-TINY: error reset ignored` and the scenario returns (so `done` follows).
//! * `triple`: `KILN-TINY: triple fault now`, then an empty IDT and a read of an unmapped
//!   address (4 GiB): #PF cannot be delivered, nor can #DF: a triple fault (shutdown).
//!   If the guest somehow survives, `KILN-TINY: error triple fault survived`.
//! * `hang`: `KILN-TINY: hang`, then spin forever with interrupts off (the vCPU stays
//!   busy: for timeout and SIGTERM tests).
//! * `halt`: `KILN-TINY: halt`, then `cli; hlt` forever (the vCPU sleeps).

use crate::arch;
use crate::boot_info::BootInfo;
use crate::phys;
use crate::serial::Console;

/// The i8042 command port and its "pulse reset line" command.
pub const I8042_COMMAND_PORT: u16 = 0x64;
pub const I8042_RESET: u8 = 0xfe;

pub fn reset(_info: &BootInfo, con: &mut Console) {
    con.line().s("reset via i8042").end();
    arch::outb(I8042_COMMAND_PORT, I8042_RESET);
    con.error().s("reset ignored").end();
}

pub fn triple(_info: &BootInfo, con: &mut Console) {
    con.line().s("triple fault now").end();
    arch::load_empty_idt();
    let unmapped = phys::MAPPED_LIMIT as *const u8;
    // SAFETY: deliberately reads an address the page tables do not map: the #PF it raises
    // cannot be delivered through the empty IDT, which shuts the VM down. No value is ever
    // produced, so no Rust object is observed.
    let _ = unsafe { core::ptr::read_volatile(unmapped) };
    con.error().s("triple fault survived").end();
}

pub fn hang(_info: &BootInfo, con: &mut Console) {
    con.line().s("hang").end();
    arch::spin_forever();
}

pub fn halt(_info: &BootInfo, con: &mut Console) {
    con.line().s("halt").end();
    arch::halt_forever();
}
