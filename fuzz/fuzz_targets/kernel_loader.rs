//! The kernel image loader (`vmm/src/loader/`) as the builder calls it: `load_kernel` (ELF
//! vmlinux with or without a PVH note, or bzImage) into a small guest memory made by
//! `vstate::memory::create_guest_memory`, `load_initrd` and `place_initrd`, `with_root_arg`,
//! `build_cmdline` (with virtio-mmio device entries) and `write_boot_info` (command line, zero
//! page or PVH start info, MP table, boot page tables).
//!
//! Input, little endian, zeros past the end:
//!
//! ```text
//! u8   options: bits 0-1 entry preference (auto, pvh, linux64, auto), bits 2-3 guest memory
//!      (2, 16, 64, 64 MiB), bits 4-5 virtio-mmio devices (0 to 3), bit 6 a root drive,
//!      bit 7 an initrd
//! u8   vCPU count - 1 (mod 32)
//! u8   initrd size selector (see INITRD_SIZES)
//! u16  command line length L
//! L    command line (boot_args), lossy UTF-8
//! rest the kernel image
//! ```
//!
//! Every input must give Ok or a typed error. When the kernel loads, its entry point must be
//! in guest RAM and a placed initrd must sit above the kernel and below its limits.
#![no_main]

use kiln_fuzz::{Input, MemFile};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use vm_memory::GuestMemoryMmap;
use vmm::arch::x86_64::layout::low_ram_end;
use vmm::devices::bus::BusDevice;
use vmm::devices::manager::DeviceManager;
use vmm::devices::virtio::setup::with_root_arg;
use vmm::loader::{self, EntryPreference};
use vmm::resources::{CacheType, DriveConfig};
use vmm::vstate::memory::create_guest_memory;

const MIB: u64 = 1 << 20;
const MEM_SIZES: [u64; 4] = [2 * MIB, 16 * MIB, 64 * MIB, 64 * MIB];
/// Initrd file sizes (sparse in-memory files): tiny, page edges, larger than the small
/// guests, larger than any guest here.
const INITRD_SIZES: [u64; 8] = [1, 4095, 4096, 4097, MIB + 1, 15 * MIB, 63 * MIB, 3 << 30];

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
        mems: vec![None, None, None, None],
    });
}

/// A virtio-mmio window with nothing behind it: only its command-line entry matters here.
struct NoDevice;
impl BusDevice for NoDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

fuzz_target!(|data: &[u8]| {
    kiln_fuzz::setup();
    let mut input = Input::new(data);
    let options = input.u8();
    let pref = match options & 3 {
        1 => EntryPreference::Pvh,
        2 => EntryPreference::Linux64,
        _ => EntryPreference::Auto,
    };
    let mem_index = usize::from((options >> 2) & 3);
    let mem_size = MEM_SIZES[mem_index];
    let devices = (options >> 4) & 3;
    let root_drive = options & 0x40 != 0;
    let with_initrd = options & 0x80 != 0;
    let vcpus = 1 + input.u8() % 32;
    let initrd_size = INITRD_SIZES[usize::from(input.u8() % 8)];
    let cmdline_len = usize::from(input.u16());
    let boot_args = String::from_utf8_lossy(input.bytes(cmdline_len)).into_owned();
    let image = input.rest();

    FILES.with(|files| {
        let files = &mut *files.borrow_mut();
        let mem = files.mems[mem_index]
            .get_or_insert_with(|| create_guest_memory(mem_size).expect("guest memory maps"))
            .clone();
        let kernel_path = files.kernel.set(image).to_string();
        let kernel = match loader::load_kernel(&mem, &kernel_path, mem_size, pref) {
            Ok(k) => k,
            Err(e) => {
                kiln_fuzz::debug(|| format!("kernel refused: {e}"));
                return;
            }
        };
        kiln_fuzz::debug(|| {
            format!(
                "kernel loaded: {:?} entry {:?} end {:#x}",
                kernel.format, kernel.entry, kernel.end
            )
        });
        assert!(
            loader::in_ram(mem_size, kernel.entry.addr, 1),
            "entry point {:#x} outside guest RAM",
            kernel.entry.addr
        );

        let initrd = if with_initrd {
            let path = files.initrd.set_len(initrd_size).to_string();
            if let Some(at) = loader::place_initrd(initrd_size, &kernel, mem_size) {
                let kernel_end = kernel.end.next_multiple_of(4096);
                assert!(
                    at >= kernel_end,
                    "initrd at {at:#x} overlaps the kernel (end {kernel_end:#x})"
                );
                assert_eq!(at % 4096, 0);
                let end = at + initrd_size;
                assert!(
                    end <= low_ram_end(mem_size),
                    "initrd past the end of low RAM"
                );
                assert!(
                    end <= kernel.initrd_addr_max.saturating_add(1),
                    "initrd past initrd_addr_max"
                );
            }
            match loader::load_initrd(&mem, &path, &kernel, mem_size) {
                Ok(rd) => Some(rd),
                Err(e) => {
                    kiln_fuzz::debug(|| format!("initrd refused: {e}"));
                    return;
                }
            }
        } else {
            None
        };

        // The resources refuse a NUL in boot_args before the loader sees it.
        if boot_args.contains('\0') {
            return;
        }
        let drives: Vec<DriveConfig> = if root_drive {
            vec![DriveConfig {
                drive_id: "rootfs".into(),
                path_on_host: "/dev/null".into(),
                is_root_device: true,
                is_read_only: options & 1 != 0,
                partuuid: (options & 2 != 0).then(|| "0eaa91a0-01".to_string()),
                cache_type: CacheType::Unsafe,
                io_engine: Default::default(),
                rate_limiter: None,
            }]
        } else {
            Vec::new()
        };
        let args = with_root_arg(&boot_args, &drives);
        let mut dm = DeviceManager::new();
        for _ in 0..devices {
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
        let info = loader::write_boot_info(&mem, &kernel, &cmdline, initrd, mem_size, vcpus);
        kiln_fuzz::debug(|| format!("boot info for {cmdline:?}: {:?}", info.map(|_| ())));
    });
});
