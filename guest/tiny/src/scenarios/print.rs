//! `print`: echoes the command line the guest read.
//!
//! Output: `KILN-TINY: cmdline=<command line>` (bytes outside printable ASCII, and `\`,
//! escaped as `\xNN`).

use crate::boot_info::BootInfo;
use crate::serial::Console;

pub fn run(info: &BootInfo, con: &mut Console) {
    con.line().s("cmdline=").escaped(info.cmdline).end();
}
