//! `msr`: the model-specific register `kiln.msr=INDEX` (default 0x277, IA32_PAT, which every
//! x86-64 CPU has) as the guest reads it: `msr index=0x.. value=0x..`. For checking what a
//! VMM's CPU template set; an index the VMM does not have ends the VM (#GP, triple fault).

use crate::arch::rdmsr;
use crate::boot_info::BootInfo;
use crate::serial::Console;
use kiln_guest_boot::cmdline::param_num;

/// IA32_PAT.
const DEFAULT_MSR: u64 = 0x277;

pub fn run(info: &BootInfo, con: &mut Console) {
    let index = u32::try_from(param_num(info.cmdline, b"kiln.msr", DEFAULT_MSR)).unwrap_or(0x277);
    // SAFETY: the test names an MSR its VMM gives the guest (the default, IA32_PAT, is
    // architectural); another one is the test's own #GP.
    let value = unsafe { rdmsr(index) };
    con.line()
        .s("msr index=")
        .hex(index.into())
        .s(" value=")
        .hex(value)
        .end();
}
