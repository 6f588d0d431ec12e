//! `cpuid`: the CPUID leaves a VMM's CPU template shapes, as the guest sees them.
//!
//! Output (hex values):
//! ```text
//! KILN-TINY: cpuid leaf=0x0 max=0x... vendor=GenuineIntel
//! KILN-TINY: cpuid leaf=0x1 eax=0x... ecx=0x... edx=0x...
//! KILN-TINY: cpuid leaf=0x7 ebx=0x... ecx=0x... edx=0x...     (or `leaf=0x7 absent`)
//! KILN-TINY: cpuid leaf=0x40000000 max=0x... sig=KVMKVMKVM   (or `leaf=0x40000000 absent`)
//! KILN-TINY: cpuid leaf=0x40000001 eax=0x... edx=0x...         (KVM's features, when max says so)
//! ```
//! Leaf 7 is read (subleaf 0) only when leaf 0 reports it; the hypervisor leaf only when
//! CPUID.1:ECX bit 31 (hypervisor present) is set. Vendor and signature are printed with
//! NULs and other non-printable bytes escaped.

use crate::arch::cpuid;
use crate::boot_info::BootInfo;
use crate::serial::Console;

const HYPERVISOR_BIT: u32 = 1 << 31;
const HYPERVISOR_LEAF: u32 = 0x4000_0000;

fn regs_text(a: u32, b: u32, c: u32) -> [u8; 12] {
    let mut text = [0u8; 12];
    text[..4].copy_from_slice(&a.to_le_bytes());
    text[4..8].copy_from_slice(&b.to_le_bytes());
    text[8..].copy_from_slice(&c.to_le_bytes());
    text
}

pub fn run(_info: &BootInfo, con: &mut Console) {
    let leaf0 = cpuid(0, 0);
    let vendor = regs_text(leaf0.ebx, leaf0.edx, leaf0.ecx);
    con.line()
        .s("cpuid leaf=0x0 max=")
        .hex(leaf0.eax.into())
        .s(" vendor=")
        .escaped(&vendor)
        .end();

    let leaf1 = cpuid(1, 0);
    con.line()
        .s("cpuid leaf=0x1 eax=")
        .hex(leaf1.eax.into())
        .s(" ecx=")
        .hex(leaf1.ecx.into())
        .s(" edx=")
        .hex(leaf1.edx.into())
        .end();

    if leaf0.eax >= 7 {
        let leaf7 = cpuid(7, 0);
        con.line()
            .s("cpuid leaf=0x7 ebx=")
            .hex(leaf7.ebx.into())
            .s(" ecx=")
            .hex(leaf7.ecx.into())
            .s(" edx=")
            .hex(leaf7.edx.into())
            .end();
    } else {
        con.line().s("cpuid leaf=0x7 absent").end();
    }

    if leaf1.ecx & HYPERVISOR_BIT != 0 {
        let hv = cpuid(HYPERVISOR_LEAF, 0);
        let sig = regs_text(hv.ebx, hv.ecx, hv.edx);
        let sig = match sig.iter().position(|&b| b == 0) {
            Some(end) => &sig[..end],
            None => &sig[..],
        };
        con.line()
            .s("cpuid leaf=0x40000000 max=")
            .hex(hv.eax.into())
            .s(" sig=")
            .escaped(sig)
            .end();
        if hv.eax > HYPERVISOR_LEAF {
            let features = cpuid(HYPERVISOR_LEAF + 1, 0);
            con.line()
                .s("cpuid leaf=0x40000001 eax=")
                .hex(features.eax.into())
                .s(" edx=")
                .hex(features.edx.into())
                .end();
        }
    } else {
        con.line().s("cpuid leaf=0x40000000 absent").end();
    }
}
