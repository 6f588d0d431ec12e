//! The Intel MultiProcessor Specification 1.4 table: how a guest without ACPI learns about
//! its CPUs (one processor entry per vCPU, APIC id = vCPU index, vCPU 0 the bootstrap
//! processor), the ISA bus, the IOAPIC and how the 24 legacy IRQs reach it.
//!
//! Layout in guest memory, at [`MPTABLE_ADDR`]: the 16-byte floating pointer structure, then
//! the configuration table (44-byte header + entries). Each structure's bytes sum to zero.

use super::layout::{addr32, IOAPIC_ADDR, IRQ_DEVICES_END, LAPIC_ADDR, MPTABLE_ADDR, MPTABLE_END};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
const APIC_VERSION: u8 = 0x14;
/// Family 6 in the processor entry's signature (informational).
const CPU_SIGNATURE: u32 = 0x600;
/// FPU and APIC present (informational).
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const PROCESSOR_LEN: usize = 20;
const SMALL_ENTRY_LEN: usize = 8;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MptableError {
    #[error("an MP table for {0} vCPUs does not fit in the {room} bytes reserved for it", room = MPTABLE_END - MPTABLE_ADDR)]
    TooLarge(u8),
    #[error("cannot write the MP table at {MPTABLE_ADDR:#x}: {0}")]
    Write(String),
}

/// The value that makes `bytes` sum to zero (mod 256) once stored in them.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// Size of the whole table for `num_cpus` CPUs.
pub fn table_size(num_cpus: u8) -> usize {
    let irqs = IRQ_DEVICES_END as usize + 1;
    FLOATING_LEN
        + HEADER_LEN
        + PROCESSOR_LEN * usize::from(num_cpus)
        + SMALL_ENTRY_LEN * (2 + irqs + 2)
}

/// Builds the floating pointer and the configuration table for a table placed at `base`.
pub fn mptable_bytes(base: u32, num_cpus: u8) -> Result<Vec<u8>, MptableError> {
    if table_size(num_cpus) as u64 > MPTABLE_END - MPTABLE_ADDR {
        return Err(MptableError::TooLarge(num_cpus));
    }
    let ioapic_id = num_cpus;
    let mut entries: Vec<u8> = Vec::with_capacity(table_size(num_cpus));
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, APIC_VERSION, 1]);
    entries.extend_from_slice(&const { addr32(IOAPIC_ADDR) }.to_le_bytes());
    count += 2;
    // ISA IRQ n reaches IOAPIC pin n, as in KVM's default GSI routing.
    for irq in (0..=IRQ_DEVICES_END).filter_map(|i| u8::try_from(i).ok()) {
        // Polarity and trigger "conform to the bus" (flags 0).
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            0,
            irq,
            ioapic_id,
            irq,
        ]);
        count += 1;
    }
    // LINT0: ExtINT from the 8259 (virtual wire mode); LINT1: NMI, on every local APIC.
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_len =
        u16::try_from(HEADER_LEN + entries.len()).map_err(|_| MptableError::TooLarge(num_cpus))?;
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&table_len.to_le_bytes());
    header.extend_from_slice(&[4, 0]); // spec revision 1.4, checksum (filled below)
    header.extend_from_slice(b"KILN    ");
    header.extend_from_slice(b"MICROVM     ");
    header.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&const { addr32(LAPIC_ADDR) }.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes()); // extended table length + checksum + reserved
    debug_assert_eq!(header.len(), HEADER_LEN);
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let config_addr = base
        .checked_add(16)
        .ok_or(MptableError::TooLarge(num_cpus))?;
    let mut floating = Vec::with_capacity(FLOATING_LEN);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&config_addr.to_le_bytes());
    floating.extend_from_slice(&[1, 4, 0]); // length in 16-byte units, revision 1.4, checksum
    floating.extend_from_slice(&[0u8; 5]); // feature bytes: a configuration table is present
    floating[10] = checksum(&floating);

    floating.extend_from_slice(&table);
    Ok(floating)
}

/// Writes the MP table for `num_cpus` vCPUs at [`MPTABLE_ADDR`].
pub fn write_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    let bytes = mptable_bytes(const { addr32(MPTABLE_ADDR) }, num_cpus)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_ADDR))
        .map_err(|e| MptableError::Write(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_are_zero_and_pointer_is_right() {
        for cpus in [1u8, 2, 32] {
            let t = mptable_bytes(0x9fc00, cpus).unwrap();
            assert_eq!(t.len(), table_size(cpus));
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0, "floating pointer checksum, {cpus} cpus");
            assert_eq!(u32::from_le_bytes(t[4..8].try_into().unwrap()), 0x9fc10);
            let table = &t[16..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = usize::from(u16::from_le_bytes([table[4], table[5]]));
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "configuration table checksum, {cpus} cpus");
        }
    }

    #[test]
    fn one_processor_entry_per_vcpu_with_bsp_first() {
        let t = mptable_bytes(0x9fc00, 3).unwrap();
        let table = &t[16..];
        let count = u16::from_le_bytes([table[34], table[35]]);
        assert_eq!(usize::from(count), 3 + 1 + 1 + 24 + 2);
        let cpus: Vec<&[u8]> = table[44..].chunks(20).take(3).collect();
        for (i, c) in cpus.iter().enumerate() {
            assert_eq!(c[0], ENTRY_PROCESSOR);
            assert_eq!(usize::from(c[1]), i);
            assert_eq!(c[3] & CPU_ENABLED, CPU_ENABLED);
            assert_eq!(c[3] & CPU_BOOTSTRAP != 0, i == 0);
        }
    }

    #[test]
    fn the_largest_machine_fits() {
        // machine-config accepts up to 32 vCPUs.
        assert!(mptable_bytes(addr32(MPTABLE_ADDR), 32).is_ok());
        assert_eq!(
            mptable_bytes(addr32(MPTABLE_ADDR), 255),
            Err(MptableError::TooLarge(255))
        );
    }
}
