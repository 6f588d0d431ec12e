//! The kernel image loader (`vmm/src/loader/`) as the builder calls it, on what a tenant
//! supplies (function images are booted as kernels): `load_kernel` (ELF vmlinux with or
//! without a PVH note, or bzImage) into guest memory made by
//! `vstate::memory::create_guest_memory` of any size up to the largest a microVM may have
//! (2 MiB to 256 GiB, with layouts at and above 3 GiB: RAM up to the MMIO gap, split around
//! it, far above 4 GiB; the mappings are reserved lazily and handed back after every run, so
//! only what the loader writes is ever touched), `load_initrd` and `place_initrd`,
//! `with_root_arg`, `build_cmdline` (with virtio-mmio device entries) and `write_boot_info`
//! (command line, zero page or PVH start info, MP table, boot page tables).
//!
//! Input (structured, `arbitrary`): guest memory size, vCPUs, entry preference, devices,
//! root drive, initrd size; the command line as words (known arguments, `key=value` pairs of
//! printable characters, ` -- ` and init arguments, and raw bytes now and then); and the
//! image: raw bytes, or an ELF or a bzImage built from its fields (segments placed relative
//! to the guest's memory: at 1 MiB, below the end of low RAM, above 4 GiB, anywhere), so
//! that most inputs get past the format checks to the placement ones.
//!
//! Every input must give Ok or a typed error. When the kernel loads, its entry point must be
//! in guest RAM; a placed initrd must sit above the kernel, below its limits, in low RAM; a
//! command line that builds fits its 2 KiB and holds every device entry.
#![no_main]

use arbitrary::Arbitrary;
use kiln_fuzz::MemFile;
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm::arch::x86_64::layout::{low_ram_end, CMDLINE_MAX_SIZE, MMIO_GAP_END, MMIO_GAP_START};
use vmm::devices::bus::BusDevice;
use vmm::devices::manager::DeviceManager;
use vmm::devices::virtio::setup::with_root_arg;
use vmm::loader::{self, EntryPreference};
use vmm::resources::{CacheType, DriveConfig, HugePages};
use vmm::vstate::memory::create_guest_memory;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Guest memory sizes: tiny, small, 3 GiB, up to the MMIO gap, split around it, the largest.
const MEM_SIZES: [u64; 6] = [
    2 * MIB,
    64 * MIB,
    3 * GIB,
    MMIO_GAP_START,
    4 * GIB + 64 * MIB,
    256 * GIB,
];
/// Initrd file sizes (sparse in-memory files); those over [`LOADED_INITRD`] are only placed,
/// not read (reading hundreds of MiB per input would only measure memcpy).
const INITRD_SIZES: [u64; 8] = [1, 4095, 4096, 4097, MIB + 1, 15 * MIB, 1536 * MIB, 3 * GIB];
const LOADED_INITRD: u64 = 2 * MIB;

#[derive(Debug, Arbitrary)]
struct Case {
    mem: u8,
    vcpus: u8,
    pref: u8,
    devices: u8,
    root: Option<(bool, bool)>,
    initrd: Option<u8>,
    args: Vec<Arg>,
    image: Image,
}

#[derive(Debug, Arbitrary)]
enum Arg {
    Known(u8),
    Pair { key: u8, value: Vec<u8> },
    Init,
    Raw(Vec<u8>),
}

const KNOWN: &[&str] = &[
    "console=ttyS0",
    "reboot=k",
    "panic=1",
    "pci=off",
    "nomodule",
    "quiet",
    "root=/dev/vda",
    "ro",
    "rw",
    "init=/init",
    "i8042.noaux",
    "8250.nr_uarts=0",
    "virtio_mmio.device=4K@0xd0000000:5",
    "noapic",
];
const KEYS: &[&str] = &[
    "console",
    "root",
    "init",
    "panic",
    "virtio_mmio.device",
    "kiln.exec",
    "kiln.name",
    "ip",
    "mem",
    "loglevel",
];

/// The printable character (space included) a byte stands for, or a quote now and then.
fn printable(b: u8) -> char {
    match b {
        0xfe => '"',
        0xff => ' ',
        b => char::from(33 + b % 94),
    }
}

fn cmdline(args: &[Arg]) -> String {
    let words: Vec<String> = args
        .iter()
        .map(|a| match a {
            Arg::Known(i) => KNOWN[usize::from(*i) % KNOWN.len()].to_string(),
            Arg::Pair { key, value } => format!(
                "{}={}",
                KEYS[usize::from(*key) % KEYS.len()],
                value.iter().map(|&b| printable(b)).collect::<String>()
            ),
            Arg::Init => "--".to_string(),
            Arg::Raw(b) => String::from_utf8_lossy(b).into_owned(),
        })
        .collect();
    words.join(" ")
}

/// A guest-physical address relative to the guest's memory.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Addr {
    /// 1 MiB + v (the usual kernel load address and above).
    Himem(u32),
    /// v below the end of RAM under the MMIO gap.
    BelowLowEnd(u32),
    /// 4 GiB + v (RAM above the gap, when there is some).
    High(u32),
    /// v below the end of all RAM (or a little past it).
    BelowEnd(u32),
    Any(u64),
}

impl Addr {
    fn get(self, mem: u64) -> u64 {
        let end = if mem > MMIO_GAP_START {
            MMIO_GAP_END + (mem - MMIO_GAP_START)
        } else {
            mem
        };
        match self {
            Addr::Himem(v) => MIB + u64::from(v),
            Addr::BelowLowEnd(v) => low_ram_end(mem).wrapping_sub(u64::from(v)),
            Addr::High(v) => MMIO_GAP_END + u64::from(v),
            Addr::BelowEnd(v) => end.wrapping_sub(u64::from(v)),
            Addr::Any(v) => v,
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Segment {
    /// PT_LOAD unless `kind` is given.
    kind: Option<u32>,
    paddr: Addr,
    /// Its size in memory: the file's bytes plus `extra` (or `huge` instead).
    extra: u32,
    huge: Option<u64>,
    code: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
enum Image {
    Raw(Vec<u8>),
    Elf {
        entry: Addr,
        segments: Vec<Segment>,
        pvh: Option<Addr>,
        /// Header fields a broken image gets wrong: (e_machine, e_phentsize), class/data.
        header_quirk: Option<(u16, u16, u8, u8)>,
    },
    Bz {
        setup_sects: u8,
        version: u16,
        loadflags: u8,
        xloadflags: u16,
        init_size: u32,
        initrd_addr_max: u32,
        code: Vec<u8>,
        pad: u16,
    },
}

fn elf(
    mem: u64,
    entry: Addr,
    segments: &[Segment],
    pvh: Option<Addr>,
    quirk: Option<(u16, u16, u8, u8)>,
) -> Vec<u8> {
    let segments = &segments[..segments.len().min(8)];
    let phnum = segments.len() + usize::from(pvh.is_some());
    let (machine, phentsize, class, data) = quirk.unwrap_or((62, 56, 2, 1));
    let mut f = b"\x7fELF".to_vec();
    f.extend_from_slice(&[class, data, 1, 0]);
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&machine.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&entry.get(mem).to_le_bytes());
    f.extend_from_slice(&64u64.to_le_bytes());
    f.extend_from_slice(&0u64.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(&64u16.to_le_bytes());
    f.extend_from_slice(&phentsize.to_le_bytes());
    f.extend_from_slice(&(phnum as u16).to_le_bytes());
    f.extend_from_slice(&[0; 6]);
    let mut offset = 64 + 56 * phnum as u64;
    let mut table = Vec::new();
    let mut bodies = Vec::new();
    let mut ph = |kind: u32, off: u64, addr: u64, filesz: u64, memsz: u64| {
        table.extend_from_slice(&kind.to_le_bytes());
        table.extend_from_slice(&7u32.to_le_bytes());
        for v in [off, addr, addr, filesz, memsz, 4] {
            table.extend_from_slice(&v.to_le_bytes());
        }
    };
    for s in segments {
        let filesz = s.code.len() as u64;
        let memsz = s.huge.unwrap_or(filesz + u64::from(s.extra));
        ph(s.kind.unwrap_or(1), offset, s.paddr.get(mem), filesz, memsz);
        offset += filesz;
        bodies.extend_from_slice(&s.code);
    }
    if let Some(p) = pvh {
        ph(4, offset, 0, 20, 20);
        bodies.extend_from_slice(&4u32.to_le_bytes());
        bodies.extend_from_slice(&4u32.to_le_bytes());
        bodies.extend_from_slice(&18u32.to_le_bytes());
        bodies.extend_from_slice(b"Xen\0");
        bodies.extend_from_slice(&(p.get(mem) as u32).to_le_bytes());
    }
    f.extend_from_slice(&table);
    f.extend_from_slice(&bodies);
    f
}

#[allow(clippy::too_many_arguments)]
fn bzimage(
    setup_sects: u8,
    version: u16,
    loadflags: u8,
    xloadflags: u16,
    init_size: u32,
    initrd_addr_max: u32,
    code: &[u8],
    pad: u16,
) -> Vec<u8> {
    let sects = if setup_sects.is_multiple_of(8) {
        4
    } else {
        setup_sects % 8
    };
    let mut f = vec![0u8; (usize::from(sects) + 1) * 512];
    f[0x1f1] = setup_sects % 8;
    f[0x1fe..0x200].copy_from_slice(b"\x55\xaa");
    f[0x202..0x206].copy_from_slice(b"HdrS");
    f[0x206..0x208].copy_from_slice(&version.to_le_bytes());
    f[0x211] = loadflags;
    f[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    f[0x22c..0x230].copy_from_slice(&initrd_addr_max.to_le_bytes());
    f[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
    f[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
    f.extend_from_slice(code);
    f.resize(f.len() + usize::from(pad), 0xf4);
    f
}

struct Files {
    kernel: MemFile,
    initrd: MemFile,
    /// One guest memory per size, made once (the loader writes into it on every run).
    mems: Vec<Option<GuestMemoryMmap>>,
}

thread_local! {
    static FILES: RefCell<Files> = RefCell::new(Files {
        kernel: MemFile::new("kiln-fuzz-kernel"),
        initrd: MemFile::new("kiln-fuzz-initrd"),
        mems: (0..MEM_SIZES.len()).map(|_| None).collect(),
    });
}

/// Gives back every page the last run touched (the next run finds zeros, as a new guest).
fn release(mem: &GuestMemoryMmap) {
    for region in mem.iter() {
        let (Ok(host), Ok(len)) = (
            region.get_host_address(vm_memory::MemoryRegionAddress(0)),
            usize::try_from(region.len()),
        ) else {
            continue;
        };
        // SAFETY: `host..host + len` is exactly one region's mapping, which `mem` owns and
        // keeps mapped; MADV_DONTNEED on a private anonymous mapping only drops its pages
        // (they read as zeros again), never the mapping.
        unsafe { libc::madvise(host.cast(), len, libc::MADV_DONTNEED) };
    }
}

/// A virtio-mmio window with nothing behind it: only its command-line entry matters here.
struct NoDevice;
impl BusDevice for NoDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

fuzz_target!(|case: Case| {
    kiln_fuzz::setup();
    let mem_index = usize::from(case.mem) % MEM_SIZES.len();
    let mem_size = MEM_SIZES[mem_index];
    let pref = match case.pref % 3 {
        1 => EntryPreference::Pvh,
        2 => EntryPreference::Linux64,
        _ => EntryPreference::Auto,
    };
    let vcpus = 1 + case.vcpus % 32;
    let boot_args = cmdline(&case.args);
    let image = match &case.image {
        Image::Raw(b) => b.clone(),
        Image::Elf {
            entry,
            segments,
            pvh,
            header_quirk,
        } => elf(mem_size, *entry, segments, *pvh, *header_quirk),
        Image::Bz {
            setup_sects,
            version,
            loadflags,
            xloadflags,
            init_size,
            initrd_addr_max,
            code,
            pad,
        } => bzimage(
            *setup_sects,
            *version,
            *loadflags,
            *xloadflags,
            *init_size,
            *initrd_addr_max,
            code,
            *pad,
        ),
    };

    FILES.with(|files| {
        let files = &mut *files.borrow_mut();
        let mem = files.mems[mem_index]
            .get_or_insert_with(|| {
                create_guest_memory(mem_size, HugePages::None).expect("guest memory maps")
            })
            .clone();
        run(
            files, &mem, mem_size, pref, vcpus, &boot_args, &image, &case,
        );
        release(&mem);
    });
});

#[allow(clippy::too_many_arguments)]
fn run(
    files: &mut Files,
    mem: &GuestMemoryMmap,
    mem_size: u64,
    pref: EntryPreference,
    vcpus: u8,
    boot_args: &str,
    image: &[u8],
    case: &Case,
) {
    let kernel_path = files.kernel.set(image).to_string();
    let kernel_file = std::fs::File::open(&kernel_path).expect("the in-memory kernel file opens");
    let kernel = match loader::load_kernel(mem, kernel_file, &kernel_path, mem_size, pref) {
        Ok(k) => k,
        Err(e) => {
            kiln_fuzz::debug(|| format!("kernel refused: {e}"));
            return;
        }
    };
    kiln_fuzz::debug(|| {
        format!(
            "kernel loaded in {} MiB: {:?} entry {:?} end {:#x}",
            mem_size >> 20,
            kernel.format,
            kernel.entry,
            kernel.end
        )
    });
    assert!(
        loader::in_ram(mem_size, kernel.entry.addr, 1),
        "entry point {:#x} outside guest RAM",
        kernel.entry.addr
    );

    let initrd = match case.initrd {
        None => None,
        Some(sel) => {
            let size = INITRD_SIZES[usize::from(sel) % INITRD_SIZES.len()];
            let path = files.initrd.set_len(size).to_string();
            let placed = loader::place_initrd(size, &kernel, mem_size);
            if let Some(at) = placed {
                let kernel_end = kernel.end.next_multiple_of(4096);
                assert!(
                    at >= kernel_end,
                    "initrd at {at:#x} overlaps the kernel (end {kernel_end:#x})"
                );
                assert_eq!(at % 4096, 0);
                let end = at + size;
                assert!(
                    end <= low_ram_end(mem_size),
                    "initrd past the end of low RAM"
                );
                assert!(
                    end <= kernel.initrd_addr_max.saturating_add(1),
                    "initrd past initrd_addr_max"
                );
            }
            if placed.is_some() && size > LOADED_INITRD {
                return;
            }
            let file = std::fs::File::open(&path).expect("the in-memory initrd file opens");
            match loader::load_initrd(mem, file, &path, &kernel, mem_size) {
                Ok(rd) => Some(rd),
                Err(e) => {
                    kiln_fuzz::debug(|| format!("initrd refused: {e}"));
                    return;
                }
            }
        }
    };

    // The resources refuse a NUL in boot_args before the loader sees it.
    if boot_args.contains('\0') {
        return;
    }
    let drives: Vec<DriveConfig> = match case.root {
        Some((read_only, partuuid)) => vec![DriveConfig {
            drive_id: "rootfs".into(),
            path_on_host: "/dev/null".into(),
            is_root_device: true,
            is_read_only: read_only,
            partuuid: partuuid.then(|| "0eaa91a0-01".to_string()),
            cache_type: CacheType::Unsafe,
            ..Default::default()
        }],
        None => Vec::new(),
    };
    let args = with_root_arg(boot_args, &drives, &[]);
    let mut dm = DeviceManager::new();
    for _ in 0..case.devices % 20 {
        let slot = dm.allocate_mmio_slot().expect("a free virtio-mmio window");
        dm.attach_mmio_device(slot, Arc::new(Mutex::new(NoDevice)))
            .expect("the window is free");
    }
    let cmdline = match loader::build_cmdline(&args, dm.mmio_slots()) {
        Ok(c) => c,
        Err(e) => {
            kiln_fuzz::debug(|| format!("command line refused: {e}"));
            return;
        }
    };
    let text = cmdline
        .as_cstring()
        .expect("a built command line converts")
        .into_string()
        .expect("a command line is ASCII");
    assert!(
        text.len() < CMDLINE_MAX_SIZE,
        "a command line of {} bytes",
        text.len()
    );
    for s in dm.mmio_slots() {
        let entry = format!("virtio_mmio.device=4K@{:#x}:{}", s.base, s.irq);
        assert!(text.contains(&entry), "{entry} missing from {text:?}");
    }
    let info = loader::write_boot_info(mem, &kernel, &cmdline, initrd, mem_size, vcpus);
    kiln_fuzz::debug(|| format!("boot info for {text:?}: {:?}", info.map(|_| ())));
}
