//! `ports`: writes to I/O ports where none of the target VMMs has a device, then carries on.
//! A VMM must ignore such writes (or log them), never stop the VM.
//!
//! Output: one `KILN-TINY: port out addr=0x... width=N value=0x...` line before each write,
//! then `KILN-TINY: ports survived`.

use crate::arch::{outb, outl, outw};
use crate::boot_info::BootInfo;
use crate::serial::Console;

/// One write: port and value, of 1, 2 or 4 bytes.
#[derive(Clone, Copy)]
enum Write {
    Byte(u16, u8),
    Word(u16, u16),
    Long(u16, u32),
}

/// The POST code port, COM2's data register, and two ports in otherwise unused ranges.
const WRITES: &[Write] = &[
    Write::Byte(0x80, 0x4b),
    Write::Byte(0x2f8, 0x4b),
    Write::Word(0x1234, 0x4b49),
    Write::Long(0xbeec, 0x4b49_4c4e),
];

pub fn run(_info: &BootInfo, con: &mut Console) {
    for &write in WRITES {
        let (port, width, value) = match write {
            Write::Byte(port, value) => (port, 1u64, u64::from(value)),
            Write::Word(port, value) => (port, 2, u64::from(value)),
            Write::Long(port, value) => (port, 4, u64::from(value)),
        };
        con.line()
            .s("port out addr=")
            .hex(port.into())
            .s(" width=")
            .dec(width)
            .s(" value=")
            .hex(value)
            .end();
        match write {
            Write::Byte(port, value) => outb(port, value),
            Write::Word(port, value) => outw(port, value),
            Write::Long(port, value) => outl(port, value),
        }
    }
    con.line().s("ports survived").end();
}
