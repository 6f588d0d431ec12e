//! Kiln's tiny freestanding test guest.
//!
//! One x86-64 ELF, loaded at 1 MiB physical, that Kiln's VMM, QEMU's microvm and
//! Firecracker all boot: through the Linux 64-bit boot entry (`e_entry`, `boot_params` in
//! RSI) or the PVH entry (Xen ELF note, `hvm_start_info` in EBX). It runs a few thousand
//! instructions at most, because on some hosts guest ring-0 code is emulated.
//!
//! Output contract (see README.md): `KILN-TINY: start entry=linux64|pvh`, the lines of the
//! scenario named by `kiln.test=NAME` (default `print`), `KILN-TINY: done`; then the VM is
//! ended: 0xFE to the i8042 command port 0x64 (Kiln, Firecracker), then a write to port
//! 0xf4 (QEMU's isa-debug-exit: 0 when no error line was printed, 1 otherwise), then
//! `cli; hlt` forever.
//!
//! Modules: `entry` (assembly entries, page tables, GDT, stack, PVH note), `serial`
//! (output), `boot_info` (both boot protocols into one struct, problems printed), `phys`
//! (the identity map checked reads of physical memory go through), `scenarios`, `arch`
//! (instruction wrappers), `virtio` (polling virtio-mmio device drivers). Shared with the
//! function runtime: the entry building blocks, boot information and command line
//! (guest/boot), the virtio transport and rings (guest/virtio), the C memory routines
//! (guest/mem).

#![no_std]
#![no_main]

mod arch;
mod boot_info;
mod entry;
// The C memory routines the compiler calls (no libc here).
use kiln_guest_mem as _;
mod phys;
mod scenarios;
mod serial;
mod virtio;

use boot_info::Entry;
use kiln_guest_boot::cmdline;
use serial::Console;

/// Port of QEMU's isa-debug-exit device (`-device isa-debug-exit,iobase=0xf4`): writing V
/// makes QEMU exit with status `(V << 1) | 1`.
const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Called by the entry stubs on the image's stack, page tables and GDT, in 64-bit mode.
/// `entry` is [`kiln_guest_boot::ENTRY_LINUX64`] or [`kiln_guest_boot::ENTRY_PVH`]; `info`
/// the physical address of `boot_params` or `hvm_start_info`.
#[no_mangle]
pub extern "C" fn kiln_tiny_main(entry: u32, info: u64) -> ! {
    let mut con = Console::new();
    let Some(entry) = Entry::from_raw(entry) else {
        con.error().s("entry kind=").dec(entry.into()).end();
        end_vm(&mut con);
    };
    let info = boot_info::parse(entry, info, &mut con);
    let name = cmdline::param(info.cmdline, scenarios::PARAM).unwrap_or(scenarios::DEFAULT);
    scenarios::run(name, &info, &mut con);
    con.line().s("done").end();
    end_vm(&mut con)
}

/// Ends the VM: i8042 reset (Kiln's VMM and Firecracker exit on it), then QEMU's
/// isa-debug-exit with 0 (no error line) or 1, then halt forever.
fn end_vm(con: &mut Console) -> ! {
    arch::outb(scenarios::RESET_PORT, scenarios::RESET_VALUE);
    arch::outb(DEBUG_EXIT_PORT, u8::from(con.errors() != 0));
    arch::halt_forever()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut con = Console::new();
    let line = con.error().s("panic");
    match info.location() {
        Some(at) => line
            .s(" at ")
            .s(at.file())
            .s(":")
            .dec(at.line().into())
            .end(),
        None => line.end(),
    }
    end_vm(&mut con)
}
