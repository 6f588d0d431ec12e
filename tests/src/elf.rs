//! Guest kernels written by a test: a few bytes of x86-64 code in the smallest ELF the VMM's
//! loader takes, for tests that need a guest doing one exact thing; and the same for a Linux
//! guest's user space ([`spin_init`]).

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

/// Where [`user_program`] is loaded (the usual base of a static x86-64 executable).
pub const USER_BASE: u64 = 0x40_0000;

/// A static x86-64 Linux executable: `code` at [`USER_BASE`] + 120 (after the headers),
/// entered at its first byte. Its one segment maps the whole file at [`USER_BASE`], read and
/// execute; with `mem_size` above the file's size, also writable, and zero-filled up to
/// `mem_size` bytes (the kernel's ELF loader maps anonymous memory for the rest).
pub fn user_program(code: &[u8], mem_size: u64) -> Vec<u8> {
    let size = HEADERS + code.len() as u64;
    let (flags, mem_size) = if mem_size > size {
        (7u32, mem_size) // R+W+X
    } else {
        (5u32, size) // R+X
    };
    let mut e = Vec::new();
    e.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&62u16.to_le_bytes()); // x86-64
    e.extend_from_slice(&1u32.to_le_bytes()); // version
    e.extend_from_slice(&(USER_BASE + HEADERS).to_le_bytes()); // entry
    e.extend_from_slice(&64u64.to_le_bytes()); // program headers
    e.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    e.extend_from_slice(&0u32.to_le_bytes()); // flags
    for v in [64u16, 56, 1, 0, 0, 0] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    e.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e.extend_from_slice(&flags.to_le_bytes());
    for v in [0u64, USER_BASE, USER_BASE, size, mem_size, 0x1000] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    e.extend_from_slice(code);
    e
}

/// A [`user_program`] whose only instruction is `jmp .`: an init that never makes a system
/// call. On kvm_pvm hosts a Linux guest's user space cannot make one
/// (shared/notes/host-kvm.md), so the slow-tier tests boot this as `init=`/`rdinit=` to keep
/// the kernel up (a crashing init panics it).
pub fn spin_init() -> Vec<u8> {
    user_program(&[0xeb, 0xfe], 0)
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

    #[test]
    fn the_spinning_init_maps_itself_and_enters_its_jump() {
        let elf = spin_init();
        assert_eq!(elf.len(), 122);
        assert_eq!(&elf[120..], &[0xeb, 0xfe], "jmp .");
        assert_eq!(&elf[24..32], &0x40_0078u64.to_le_bytes(), "e_entry");
        let ph = &elf[64..120];
        assert_eq!(&ph[4..8], &5u32.to_le_bytes(), "p_flags R+X");
        assert_eq!(&ph[8..16], &0u64.to_le_bytes(), "p_offset");
        assert_eq!(&ph[32..40], &122u64.to_le_bytes(), "p_filesz");
        assert_eq!(&ph[40..48], &122u64.to_le_bytes(), "p_memsz");
    }

    #[test]
    fn a_program_with_more_memory_is_writable_and_zero_filled() {
        let elf = user_program(&[0xeb, 0xfe], 0x3000);
        let ph = &elf[64..120];
        assert_eq!(&ph[4..8], &7u32.to_le_bytes(), "p_flags R+W+X");
        assert_eq!(&ph[32..40], &122u64.to_le_bytes(), "p_filesz");
        assert_eq!(&ph[40..48], &0x3000u64.to_le_bytes(), "p_memsz");
    }
}
