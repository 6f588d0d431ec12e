//! Guest kernels written by a test: a few bytes of x86-64 code in the smallest ELF the VMM's
//! loader takes, for tests that need a guest doing one exact thing.

/// Size of the ELF header plus one program header: where the code starts in the file.
const HEADERS: u64 = 64 + 56;

/// An x86-64 ELF executable with one loadable segment (read, write, execute) holding
/// `code` at physical = virtual address `load`, entered at its first byte.
pub fn code_at(load: u64, code: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&62u16.to_le_bytes()); // x86-64
    f.extend_from_slice(&1u32.to_le_bytes()); // version
    f.extend_from_slice(&load.to_le_bytes()); // entry
    f.extend_from_slice(&64u64.to_le_bytes()); // program headers
    f.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    f.extend_from_slice(&0u32.to_le_bytes()); // flags
    for v in [64u16, 56, 1, 0, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    let len = code.len() as u64;
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&7u32.to_le_bytes()); // R+W+X
    for v in [HEADERS, load, load, len, len, 0x1000] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(code);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_follows_the_headers_and_is_the_entry() {
        let elf = code_at(0x10_0000, &[0xf4]);
        assert_eq!(elf.len(), 121);
        assert_eq!(elf[120], 0xf4);
        assert_eq!(&elf[24..32], &0x10_0000u64.to_le_bytes(), "e_entry");
        let ph = &elf[64..120];
        assert_eq!(&ph[8..16], &120u64.to_le_bytes(), "p_offset");
        assert_eq!(&ph[24..32], &0x10_0000u64.to_le_bytes(), "p_paddr");
        assert_eq!(&ph[32..40], &1u64.to_le_bytes(), "p_filesz");
    }
}
