//! The local APIC's LINT0/LINT1 pins in "virtual wire" mode, as Linux expects at boot:
//! LINT0 delivers the 8259's interrupts (ExtINT), LINT1 delivers NMIs.

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

/// Offset of the LVT LINT0 register in the APIC page.
const APIC_LVT_LINT0: usize = 0x350;
/// Offset of the LVT LINT1 register.
const APIC_LVT_LINT1: usize = 0x360;
const DELIVERY_MODE_MASK: u32 = 0x700;
const DELIVERY_NMI: u32 = 0x400;
const DELIVERY_EXTINT: u32 = 0x700;

#[derive(Debug, thiserror::Error)]
pub enum LapicError {
    #[error("KVM_GET_LAPIC failed: {0}")]
    Get(kvm_ioctls::Error),
    #[error("KVM_SET_LAPIC failed: {0}")]
    Set(kvm_ioctls::Error),
}

fn read_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let mut b = [0u8; 4];
    for (dst, src) in b.iter_mut().zip(&state.regs[offset..offset + 4]) {
        *dst = src.to_ne_bytes()[0];
    }
    u32::from_le_bytes(b)
}

fn write_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (dst, src) in state.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *dst = std::ffi::c_char::from_ne_bytes([src]);
    }
}

/// Sets the delivery modes of LINT0 and LINT1 in an APIC register page (other bits kept).
pub fn set_lint_delivery(state: &mut kvm_lapic_state) {
    for (offset, mode) in [
        (APIC_LVT_LINT0, DELIVERY_EXTINT),
        (APIC_LVT_LINT1, DELIVERY_NMI),
    ] {
        let v = read_reg(state, offset);
        write_reg(state, offset, (v & !DELIVERY_MODE_MASK) | mode);
    }
}

/// Programs LINT0/LINT1 of a vCPU's in-kernel LAPIC.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), LapicError> {
    let mut state = vcpu.get_lapic().map_err(LapicError::Get)?;
    set_lint_delivery(&mut state);
    vcpu.set_lapic(&state).map_err(LapicError::Set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_pins_get_extint_and_nmi_and_keep_other_bits() {
        let mut s = kvm_lapic_state::default();
        write_reg(&mut s, APIC_LVT_LINT0, 0x1_0000); // masked
        write_reg(&mut s, APIC_LVT_LINT1, 0x1_0000 | 0x500);
        set_lint_delivery(&mut s);
        assert_eq!(read_reg(&s, APIC_LVT_LINT0), 0x1_0700);
        assert_eq!(read_reg(&s, APIC_LVT_LINT1), 0x1_0400);
        assert_eq!(read_reg(&s, 0x340), 0);
    }
}
