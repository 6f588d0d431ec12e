//! Register state at the kernel's entry point, for the two boot entries:
//!
//! - **Linux 64-bit** (`vmlinux` e_entry, bzImage at load address + 0x200): long mode, paging
//!   on with the identity map of [`super::paging`], flat segments from the boot GDT, RSI =
//!   the zero page.
//! - **PVH** (the ELF's `XEN_ELFNOTE_PHYS32_ENTRY`): 32-bit protected mode, paging off, flat
//!   segments, EBX = the `hvm_start_info`.

use super::gdt::{self, Descriptor, CODE_INDEX, DATA_INDEX, GDT_ENTRIES, TSS_INDEX};
use super::layout::{BOOT_STACK_POINTER, GDT_ADDR, IDT_ADDR, PVH_INFO_ADDR, ZERO_PAGE_ADDR};
use super::paging;
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS with only the always-one bit 1 set (interrupts disabled).
const RFLAGS_RESERVED: u64 = 1 << 1;

/// Which entry point protocol the vCPUs start in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    Linux64,
    Pvh,
}

impl std::fmt::Display for BootProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BootProtocol::Linux64 => "Linux 64-bit",
            BootProtocol::Pvh => "PVH",
        })
    }
}

/// Where and how the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootEntry {
    pub protocol: BootProtocol,
    pub addr: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write the boot GDT/IDT into guest memory: {0}")]
    WriteTables(vm_memory::GuestMemoryError),
    #[error(transparent)]
    Paging(#[from] paging::PagingError),
    #[error("KVM_SET_REGS failed: {0}")]
    SetRegs(kvm_ioctls::Error),
    #[error("KVM_GET_SREGS failed: {0}")]
    GetSregs(kvm_ioctls::Error),
    #[error("KVM_SET_SREGS failed: {0}")]
    SetSregs(kvm_ioctls::Error),
    #[error("KVM_SET_FPU failed: {0}")]
    SetFpu(kvm_ioctls::Error),
}

/// What the per-vCPU special registers need from the one-time memory set-up.
#[derive(Debug, Clone, Copy)]
pub struct BootTables {
    protocol: BootProtocol,
    cr3: u64,
}

fn descriptors(protocol: BootProtocol) -> (Descriptor, Descriptor) {
    match protocol {
        BootProtocol::Linux64 => (gdt::CODE64, gdt::TSS64),
        BootProtocol::Pvh => (gdt::CODE32, gdt::TSS32),
    }
}

/// Writes the boot GDT, the empty IDT and (for the Linux entry) the page tables into guest
/// memory. Done once; [`setup_sregs`] then loads them into each vCPU.
pub fn write_boot_tables(
    mem: &GuestMemoryMmap,
    protocol: BootProtocol,
) -> Result<BootTables, RegsError> {
    let (code, tss) = descriptors(protocol);
    let mut bytes = Vec::with_capacity(GDT_ENTRIES * 8);
    for d in gdt::boot_gdt(code, tss) {
        bytes.extend_from_slice(&d.to_le_bytes());
    }
    mem.write_slice(&bytes, GuestAddress(GDT_ADDR))
        .map_err(RegsError::WriteTables)?;
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
        .map_err(RegsError::WriteTables)?;
    let cr3 = match protocol {
        BootProtocol::Linux64 => paging::write_identity_map(mem)?,
        BootProtocol::Pvh => 0,
    };
    Ok(BootTables { protocol, cr3 })
}

/// The special registers for the entry protocol, starting from the vCPU's reset state.
pub fn boot_sregs(mut sregs: kvm_sregs, tables: &BootTables) -> kvm_sregs {
    let (code, tss) = descriptors(tables.protocol);
    let data = gdt::DATA.segment(DATA_INDEX);
    sregs.cs = code.segment(CODE_INDEX);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss.segment(TSS_INDEX);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = u16::try_from(GDT_ENTRIES * 8 - 1).unwrap_or(u16::MAX);
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    match tables.protocol {
        BootProtocol::Linux64 => {
            sregs.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG;
            sregs.cr3 = tables.cr3;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        BootProtocol::Pvh => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

/// The general registers at the entry point.
pub fn boot_regs(entry: BootEntry) -> kvm_regs {
    match entry.protocol {
        BootProtocol::Linux64 => kvm_regs {
            rflags: RFLAGS_RESERVED,
            rip: entry.addr,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: ZERO_PAGE_ADDR,
            ..Default::default()
        },
        BootProtocol::Pvh => kvm_regs {
            rflags: RFLAGS_RESERVED,
            rip: entry.addr,
            rbx: PVH_INFO_ADDR,
            ..Default::default()
        },
    }
}

/// Loads general, special and FPU registers into a vCPU.
pub fn setup_vcpu_regs(
    vcpu: &VcpuFd,
    entry: BootEntry,
    tables: &BootTables,
) -> Result<(), RegsError> {
    let sregs = vcpu.get_sregs().map_err(RegsError::GetSregs)?;
    vcpu.set_sregs(&boot_sregs(sregs, tables))
        .map_err(RegsError::SetSregs)?;
    vcpu.set_regs(&boot_regs(entry))
        .map_err(RegsError::SetRegs)?;
    // x87 control word and MXCSR at their power-on values (all exceptions masked).
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(RegsError::SetFpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    #[test]
    fn linux_entry_is_long_mode_with_paging() {
        let m = mem();
        let t = write_boot_tables(&m, BootProtocol::Linux64).unwrap();
        let s = boot_sregs(kvm_sregs::default(), &t);
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!(s.cr4 & CR4_PAE, CR4_PAE);
        assert_eq!(s.cr3, crate::arch::x86_64::layout::PML4_ADDR);
        assert_eq!(
            (s.cs.selector, s.cs.l, s.ds.selector, s.ss.selector),
            (0x10, 1, 0x18, 0x18)
        );
        let code: u64 = m.read_obj(GuestAddress(GDT_ADDR + 16)).unwrap();
        assert_eq!(code, gdt::CODE64.encode());
        let r = boot_regs(BootEntry {
            protocol: BootProtocol::Linux64,
            addr: 0x100000,
        });
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rflags),
            (0x100000, ZERO_PAGE_ADDR, BOOT_STACK_POINTER, 2)
        );
    }

    #[test]
    fn pvh_entry_is_protected_mode_without_paging() {
        let m = mem();
        let t = write_boot_tables(&m, BootProtocol::Pvh).unwrap();
        let s = boot_sregs(kvm_sregs::default(), &t);
        assert_eq!(s.cr0, CR0_PE | CR0_ET);
        assert_eq!((s.cr3, s.cr4, s.efer), (0, 0, 0));
        assert_eq!((s.cs.db, s.cs.l, s.cs.limit), (1, 0, 0xffff_ffff));
        assert_eq!((s.tr.limit, s.tr.type_), (0x67, 0xb));
        let r = boot_regs(BootEntry {
            protocol: BootProtocol::Pvh,
            addr: 0x100123,
        });
        assert_eq!((r.rip, r.rbx), (0x100123, PVH_INFO_ADDR));
    }
}
