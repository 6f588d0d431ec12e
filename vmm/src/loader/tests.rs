use super::kernel::{DEFAULT_INITRD_ADDR_MAX, HDRS, LOADED_HIGH, PT_LOAD};
use super::*;
use crate::arch::x86_64::layout::{MmioSlot, CMDLINE_MAX_SIZE};
use crate::arch::x86_64::regs::BootEntry;
use std::io::Write;
use vm_memory::GuestAddress;

const MEM: u64 = 16 << 20;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), usize::try_from(MEM).unwrap())]).unwrap()
}

struct Tmp(std::path::PathBuf);
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
fn tmp(name: &str, bytes: &[u8]) -> Tmp {
    let p = std::env::temp_dir().join(format!("kiln-loader-{}-{name}", std::process::id()));
    std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
    Tmp(p)
}

/// A minimal x86-64 ELF: one PT_LOAD of `code` at `paddr`, entry `entry`, and optionally
/// a PT_NOTE with a PVH entry.
fn elf(paddr: u64, memsz: u64, entry: u64, pvh: Option<u32>) -> Vec<u8> {
    let code = vec![0xf4u8; 16];
    let phnum: u16 = if pvh.is_some() { 2 } else { 1 };
    let data_off = 64 + 56 * u64::from(phnum);
    let note_off = data_off + code.len() as u64;
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF");
    f.extend_from_slice(&[2, 1, 1, 0]);
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&62u16.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&entry.to_le_bytes());
    f.extend_from_slice(&64u64.to_le_bytes()); // phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // shoff
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(&64u16.to_le_bytes());
    f.extend_from_slice(&56u16.to_le_bytes());
    f.extend_from_slice(&phnum.to_le_bytes());
    f.extend_from_slice(&[0; 6]);
    let ph = |f: &mut Vec<u8>, ty: u32, off: u64, addr: u64, filesz: u64, memsz: u64| {
        f.extend_from_slice(&ty.to_le_bytes());
        f.extend_from_slice(&7u32.to_le_bytes());
        f.extend_from_slice(&off.to_le_bytes());
        f.extend_from_slice(&addr.to_le_bytes());
        f.extend_from_slice(&addr.to_le_bytes());
        f.extend_from_slice(&filesz.to_le_bytes());
        f.extend_from_slice(&memsz.to_le_bytes());
        f.extend_from_slice(&4u64.to_le_bytes());
    };
    ph(&mut f, PT_LOAD, data_off, paddr, code.len() as u64, memsz);
    if pvh.is_some() {
        ph(&mut f, 4, note_off, 0, 20, 20);
    }
    f.extend_from_slice(&code);
    if let Some(a) = pvh {
        f.extend_from_slice(&4u32.to_le_bytes());
        f.extend_from_slice(&4u32.to_le_bytes());
        f.extend_from_slice(&18u32.to_le_bytes());
        f.extend_from_slice(b"Xen\0");
        f.extend_from_slice(&a.to_le_bytes());
    }
    f
}

/// Loads `bytes` as a kernel, from a file of its own: tests run in parallel, and one that
/// rewrote a shared file could change what another test's loader reads.
fn load(bytes: &[u8], pref: EntryPreference) -> Result<LoadedKernel, LoadError> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = tmp(&format!("k{n}"), bytes);
    let path = t.0.to_str().unwrap();
    load_kernel(&mem(), std::fs::File::open(path).unwrap(), path, MEM, pref)
}

#[test]
fn elf_entries() {
    let k = load(
        &elf(0x10_0000, 0x2000, 0x10_0004, Some(0x10_0008)),
        EntryPreference::Auto,
    )
    .unwrap();
    assert_eq!(
        k.entry,
        BootEntry {
            protocol: BootProtocol::Pvh,
            addr: 0x10_0008
        }
    );
    assert_eq!(k.end, 0x10_2000);
    let k = load(
        &elf(0x10_0000, 0x2000, 0x10_0004, Some(0x10_0008)),
        EntryPreference::Linux64,
    )
    .unwrap();
    assert_eq!(
        k.entry,
        BootEntry {
            protocol: BootProtocol::Linux64,
            addr: 0x10_0004
        }
    );
    let k = load(
        &elf(0x10_0000, 0x2000, 0x10_0004, None),
        EntryPreference::Auto,
    )
    .unwrap();
    assert_eq!(k.entry.protocol, BootProtocol::Linux64);
    let e = load(
        &elf(0x10_0000, 0x2000, 0x10_0004, None),
        EntryPreference::Pvh,
    )
    .unwrap_err();
    assert!(matches!(e, LoadError::NoPvhNote { .. }), "{e}");
}

/// Table of bad kernel images and the words their error must contain.
#[test]
fn bad_images_are_clear_errors() {
    let mut not_64 = elf(0x10_0000, 0x1000, 0x10_0000, None);
    not_64[4] = 1;
    let mut arm = elf(0x10_0000, 0x1000, 0x10_0000, None);
    arm[18] = 183;
    let mut phdrs_past_end = elf(0x10_0000, 0x1000, 0x10_0000, None);
    phdrs_past_end[56] = 100;
    let mut big_filesz = elf(0x10_0000, 0x1000, 0x10_0000, None);
    big_filesz[64 + 32..64 + 40].copy_from_slice(&0x10_0000u64.to_le_bytes());
    big_filesz[64 + 40..64 + 48].copy_from_slice(&0x10_0000u64.to_le_bytes());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "neither an ELF vmlinux nor a bzImage"),
        (
            "garbage",
            vec![0x55; 4096],
            "neither an ELF vmlinux nor a bzImage",
        ),
        (
            "truncated ELF header",
            b"\x7fELF\x02\x01".to_vec(),
            "too short for an ELF header",
        ),
        ("32-bit ELF", not_64, "not a 64-bit ELF"),
        ("wrong machine", arm, "not an x86-64 ELF"),
        ("phdrs past end", phdrs_past_end, "program header"),
        (
            "segment past end of file",
            big_filesz,
            "runs past the end of the file",
        ),
        (
            "segment beyond RAM",
            elf(0x10_0000, 64 << 20, 0x10_0000, None),
            "does not fit in guest RAM",
        ),
        (
            "segment in the MMIO gap",
            elf(0xd000_0000, 0x1000, 0xd000_0000, None),
            "does not fit in guest RAM",
        ),
        (
            "segment below 1 MiB",
            elf(0x7000, 0x1000, 0x7000, None),
            "below 1 MiB",
        ),
        (
            "address overflow",
            elf(u64::MAX - 10, 0x1000, u64::MAX - 10, None),
            "does not fit in guest RAM",
        ),
        (
            "entry outside",
            elf(0x10_0000, 0x1000, 0x20_0000, None),
            "entry point 0x200000 is not inside",
        ),
        (
            "PVH entry outside",
            elf(0x10_0000, 0x1000, 0x10_0000, Some(0x30_0000)),
            "PVH entry point 0x300000",
        ),
    ];
    refused_with(&cases);
}

/// Each image (named) is refused with a message containing the text given.
fn refused_with(cases: &[(&str, Vec<u8>, &str)]) {
    for (name, bytes, want) in cases {
        let err = load(bytes, EntryPreference::Auto)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(want),
            "{name}: {err:?} does not contain {want:?}"
        );
    }
}

fn bzimage(version: u16, xloadflags: u16, init_size: u32, pm_len: usize) -> Vec<u8> {
    let setup_sects = 4u8;
    let mut f = vec![0u8; (usize::from(setup_sects) + 1) * 512 + pm_len];
    f[0x1f1] = setup_sects;
    f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    f[0x202..0x206].copy_from_slice(&HDRS.to_le_bytes());
    f[0x206..0x208].copy_from_slice(&version.to_le_bytes());
    f[0x211] = LOADED_HIGH;
    f[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    f[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes());
    f[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
    f[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
    f
}

#[test]
fn bzimage_uses_the_64bit_entry() {
    let k = load(&bzimage(0x020f, 3, 0x40_0000, 4096), EntryPreference::Auto).unwrap();
    assert_eq!(k.format, KernelFormat::BzImage);
    assert_eq!(
        k.entry,
        BootEntry {
            protocol: BootProtocol::Linux64,
            addr: 0x10_0200
        }
    );
    assert_eq!(k.end, 0x50_0000);
    assert_eq!(k.initrd_addr_max, 0x37ff_ffff);
    assert!(k.setup_header.is_some());
    let e = load(&bzimage(0x020f, 3, 0x40_0000, 4096), EntryPreference::Pvh).unwrap_err();
    assert!(matches!(e, LoadError::PvhOnBzImage { .. }), "{e}");
}

#[test]
fn bad_bzimages_are_clear_errors() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("old protocol", bzimage(0x0206, 3, 0, 4096), "too old"),
        (
            "32-bit only",
            bzimage(0x020f, 0, 0, 4096),
            "no 64-bit entry point",
        ),
        (
            "needs more memory",
            bzimage(0x020f, 3, 64 << 20, 4096),
            "to decompress",
        ),
        (
            "no protected-mode part",
            bzimage(0x020f, 3, 0, 0),
            "longer than the file",
        ),
    ];
    refused_with(&cases);
}

#[test]
fn initrd_goes_high_and_page_aligned() {
    let k = LoadedKernel {
        format: KernelFormat::Elf,
        entry: BootEntry {
            protocol: BootProtocol::Linux64,
            addr: 0x10_0000,
        },
        setup_header: None,
        end: 0x20_0000,
        initrd_addr_max: DEFAULT_INITRD_ADDR_MAX,
    };
    assert_eq!(place_initrd(0x1234, &k, MEM), Some(MEM - 0x2000));
    assert_eq!(place_initrd(MEM - 0x20_0000, &k, MEM), Some(0x20_0000));
    assert_eq!(place_initrd(MEM - 0x20_0000 + 1, &k, MEM), None);
    assert_eq!(place_initrd(u64::MAX, &k, MEM), None);
    let low_max = LoadedKernel {
        initrd_addr_max: 0x80_0000 - 1,
        ..k
    };
    assert_eq!(place_initrd(0x1000, &low_max, MEM), Some(0x7f_f000));
    // With 8 GiB the initrd stays below the MMIO gap.
    assert_eq!(place_initrd(0x1000, &k, 8 << 30), Some(0x7fff_f000));
}

fn initrd(
    m: &GuestMemoryMmap,
    t: &Tmp,
    k: &LoadedKernel,
) -> Result<crate::arch::x86_64::boot_params::Initrd, LoadError> {
    let path = t.0.to_str().unwrap();
    load_initrd(m, std::fs::File::open(path).unwrap(), path, k, MEM)
}

#[test]
fn initrd_errors() {
    let k = load(
        &elf(0x10_0000, 0x2000, 0x10_0000, None),
        EntryPreference::Auto,
    )
    .unwrap();
    let empty = tmp("rd0", b"");
    let e = initrd(&mem(), &empty, &k).unwrap_err();
    assert!(e.to_string().contains("is empty"), "{e}");
    let big = tmp("rdbig", &vec![1u8; 15 << 20]);
    let e = initrd(&mem(), &big, &k).unwrap_err();
    assert!(e.to_string().contains("does not fit"), "{e}");
    let ok = tmp("rd", b"initrd!");
    let m = mem();
    let rd = initrd(&m, &ok, &k).unwrap();
    assert_eq!(
        rd,
        Initrd {
            addr: MEM - 0x1000,
            size: 7
        }
    );
    let mut back = [0u8; 7];
    m.read_slice(&mut back, GuestAddress(rd.addr)).unwrap();
    assert_eq!(&back, b"initrd!");
}

const SLOT_A: MmioSlot = MmioSlot {
    base: 0xd000_0000,
    size: 0x1000,
    irq: 5,
};
const SLOT_B: MmioSlot = MmioSlot {
    base: 0xd000_1000,
    size: 0x1000,
    irq: 6,
};

#[test]
fn cmdline_keeps_init_args_last() {
    let cl = build_cmdline("console=ttyS0 quiet -- init-arg1 x", &[SLOT_A]).unwrap();
    assert_eq!(
        cl.as_cstring().unwrap().to_str().unwrap(),
        "console=ttyS0 quiet virtio_mmio.device=4K@0xd0000000:5 -- init-arg1 x"
    );
    let plain = build_cmdline("a=b", &[]).unwrap();
    assert_eq!(plain.as_cstring().unwrap().to_str().unwrap(), "a=b");
}

#[test]
fn every_device_window_reaches_the_cmdline_in_order() {
    let cl = build_cmdline("console=ttyS0", &[SLOT_A, SLOT_B]).unwrap();
    assert_eq!(
        cl.as_cstring().unwrap().to_str().unwrap(),
        "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
    );
}

#[test]
fn a_full_cmdline_is_an_error_naming_the_device_entry() {
    let args = "x".repeat(CMDLINE_MAX_SIZE - 16);
    let err = build_cmdline(&args, &[SLOT_A]).unwrap_err();
    assert!(
        err.to_string()
            .contains("virtio_mmio.device=4K@0xd0000000:5"),
        "{err}"
    );
}

#[test]
fn cmdline_errors() {
    let long = "x".repeat(CMDLINE_MAX_SIZE);
    let e = build_cmdline(&long, &[]).unwrap_err().to_string();
    assert!(e.contains("longer than 2047 bytes"), "{e}");
    let e = build_cmdline("caf\u{e9}", &[]).unwrap_err().to_string();
    assert!(e.contains("printable ASCII"), "{e}");
    let e = build_cmdline("tab\there", &[]).unwrap_err().to_string();
    assert!(e.contains("printable ASCII"), "{e}");
}
