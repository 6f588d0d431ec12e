//! A guest's accesses to the PCI bus of `--enable-pci` (`vmm/src/devices/pci/`,
//! `devices/virtio/pci/`): configuration mechanism #1 (the address register at 0xCF8, the
//! data window at 0xCFC-0xCFF) and the BAR window on the MMIO bus, with two virtio-pci
//! functions behind them (an entropy device and a balloon, on the register file they
//! share with virtio-mmio, their MSI-X tables on a platform that routes nothing).
//!
//! Input (structured, `arbitrary`): accesses — to the ports (offset, width, value), to the
//! window (an address near a function's current BAR or anywhere, width, value), or the
//! device raising an interrupt on a queue or its configuration.
//!
//! Checks: nothing panics; the host bridge and the functions keep their read-only
//! identification (vendor, device, class) whatever the guest writes; a BAR register always
//! reads with its size bits clear; MSI-X's table size never changes; an empty slot and
//! another bus read all ones. At the end, the bus is snapshotted (`devices/virtio/pci/
//! persist.rs`): the state's encoding round-trips, and restored into a fresh bus it saves
//! again as the same state (or the restore refuses it, never panics).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, Mutex};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm::devices::bus::BusDevice;
use vmm::devices::pci::msix::MsixVectors;
use vmm::devices::pci::platform::NoPlatform;
use vmm::devices::pci::root::{BarWindow, ConfigPorts, PciRoot};
use vmm::devices::virtio::balloon::{Balloon, BalloonParams};
use vmm::devices::virtio::mmio::MmioTransport;
use vmm::devices::virtio::pci::persist::{restore_bus, save_bus, PciBusState};
use vmm::devices::virtio::pci::{PciHandles, VirtioPciFunction, BAR_SIZE};
use vmm::devices::virtio::rng::Entropy;
use vmm::devices::virtio::{Interrupt, VirtioDevice};
use vmm::snapshot::{Decoder, Encoder};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const WINDOW: u64 = 0xe000_0000;
const WINDOW_LEN: u64 = 0x10_0000;

#[derive(Debug, Arbitrary)]
enum Op {
    /// An access to 0xCF8 + `port % 8`.
    Port {
        port: u8,
        width: u8,
        write: Option<u32>,
    },
    /// Sets the address register to slot `slot % 4`, register `reg`, then accesses the data
    /// window (the common case, made likely).
    Config {
        slot: u8,
        reg: u8,
        width: u8,
        write: Option<u32>,
    },
    /// An access at `offset` from function `func`'s current BAR (or from the window's start).
    Bar {
        func: u8,
        offset: u16,
        width: u8,
        write: Option<u64>,
    },
    /// An access anywhere in the window.
    Window {
        offset: u32,
        width: u8,
        write: Option<u64>,
    },
    /// The device signals queue `q` (or a configuration change).
    Signal { func: u8, queue: Option<u8> },
}

fn width(w: u8) -> usize {
    [1, 2, 4, 8, 0, 3, 16][usize::from(w) % 7]
}

struct Function {
    interrupt: Arc<Interrupt>,
}

fn function(
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: &GuestMemoryMmap,
    bar: u32,
    dtype: u32,
) -> (VirtioPciFunction, Function) {
    let queues = device.lock().unwrap().queue_max_sizes().len();
    let evt = || EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let irqfds = (0..=queues).map(|_| evt()).collect();
    let gsis = (0..=queues as u32).map(|i| 24 + i).collect();
    let msix = Arc::new(MsixVectors::new(irqfds, gsis, Arc::new(NoPlatform)));
    let vectors = VirtioPciFunction::vectors_for(queues, msix);
    let interrupt = Arc::new(Interrupt::with_vectors(vectors.clone()));
    let core_evts: Vec<EventFd> = (0..queues).map(|_| evt()).collect();
    let notify = core_evts
        .iter()
        .map(|e| e.try_clone().expect("dup"))
        .collect();
    let core = MmioTransport::new(device, mem.clone(), interrupt.clone(), core_evts);
    let f = VirtioPciFunction::new(core, vectors, notify, Arc::new(NoPlatform), dtype, bar)
        .expect("the configuration space fits");
    (f, Function { interrupt })
}

fn cfg_read(ports: &mut ConfigPorts, slot: u32, reg: u32) -> u32 {
    ports.write(0, &(0x8000_0000 | slot << 11 | reg).to_le_bytes());
    let mut d = [0u8; 4];
    ports.read(4, &mut d);
    u32::from_le_bytes(d)
}

/// Bus 0 with an entropy device (slot 1) and a balloon (slot 2), their BARs at the
/// window's start.
fn bus(mem: &GuestMemoryMmap) -> (PciHandles, Vec<Function>) {
    let rng: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(Entropy::new()));
    let balloon = Balloon::new(BalloonParams {
        amount_mib: 0,
        deflate_on_oom: false,
        stats_polling_interval_s: 1,
        free_page_hinting: true,
        free_page_reporting: true,
    })
    .expect("balloon");
    let balloon: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(balloon));
    let root = Arc::new(Mutex::new(PciRoot::new(WINDOW, WINDOW + WINDOW_LEN)));
    let mut handles = PciHandles::new(root.clone());
    let mut funcs = Vec::new();
    for (i, (dev, t)) in [(rng, 4u32), (balloon, 5)].into_iter().enumerate() {
        let (f, h) = function(dev, mem, (WINDOW + BAR_SIZE * i as u64) as u32, t);
        handles.add(f).expect("a slot");
        funcs.push(h);
    }
    (handles, funcs)
}

fuzz_target!(|ops: Vec<Op>| {
    kiln_fuzz::setup();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("memory");
    let (handles, funcs) = bus(&mem);
    let root = handles.root.clone();
    let mut ports = ConfigPorts(root.clone());
    let mut window = BarWindow {
        root: root.clone(),
        base: WINDOW,
    };
    let ids = [0x0008_1b36u32, 0x1044_1af4, 0x1045_1af4];
    let classes: Vec<u32> = (0..3).map(|s| cfg_read(&mut ports, s, 8)).collect();
    let msix_ctl =
        |ports: &mut ConfigPorts, s: u32| cfg_read(ports, s, 0x40 + 16 * 3 + 20) & 0x07ff_0000;
    let sizes: Vec<u32> = (1..3).map(|s| msix_ctl(&mut ports, s)).collect();
    for op in ops.into_iter().take(512) {
        match op {
            Op::Port {
                port,
                width: w,
                write,
            } => {
                let mut d = vec![0u8; width(w)];
                let off = u64::from(port % 8);
                match write {
                    Some(v) => {
                        let b = v.to_le_bytes();
                        let n = d.len().min(4);
                        d[..n].copy_from_slice(&b[..n]);
                        ports.write(off, &d);
                    }
                    None => ports.read(off, &mut d),
                }
            }
            Op::Config {
                slot,
                reg,
                width: w,
                write,
            } => {
                let slot = u32::from(slot % 4);
                ports.write(
                    0,
                    &(0x8000_0000 | slot << 11 | u32::from(reg & 0xfc)).to_le_bytes(),
                );
                let w = width(w).min(4);
                let off = 4 + u64::from(reg & 3);
                match write {
                    Some(v) => ports.write(off, &v.to_le_bytes()[..w]),
                    None => {
                        let mut d = vec![0u8; w];
                        ports.read(off, &mut d);
                        if slot == 3 {
                            assert!(d.iter().all(|&b| b == 0xff), "an empty slot reads all ones");
                        }
                    }
                }
            }
            Op::Bar {
                func,
                offset,
                width: w,
                write,
            } => {
                let slot = u32::from(func % 2) + 1;
                let bar = u64::from(cfg_read(&mut ports, slot, 0x10) & !0xf);
                let off = bar.wrapping_add(u64::from(offset)).wrapping_sub(WINDOW);
                let mut d = vec![0u8; width(w)];
                match write {
                    Some(v) => {
                        let b = v.to_le_bytes();
                        let n = d.len().min(8);
                        d[..n].copy_from_slice(&b[..n]);
                        if off < WINDOW_LEN {
                            window.write(off, &d);
                        }
                    }
                    None if off < WINDOW_LEN => window.read(off, &mut d),
                    None => {}
                }
            }
            Op::Window {
                offset,
                width: w,
                write,
            } => {
                let off = u64::from(offset) % WINDOW_LEN;
                let mut d = vec![0u8; width(w)];
                match write {
                    Some(v) => {
                        let n = d.len().min(8);
                        d[..n].copy_from_slice(&v.to_le_bytes()[..n]);
                        window.write(off, &d);
                    }
                    None => window.read(off, &mut d),
                }
            }
            Op::Signal { func, queue } => {
                let f = &funcs[usize::from(func % 2)];
                match queue {
                    Some(q) => f.interrupt.signal_used_queue(usize::from(q % 4)),
                    None => f.interrupt.signal_config_change(),
                }
            }
        }
        for s in 0..3u32 {
            assert_eq!(
                cfg_read(&mut ports, s, 0),
                ids[s as usize],
                "slot {s}: identification"
            );
            assert_eq!(
                cfg_read(&mut ports, s, 8),
                classes[s as usize],
                "slot {s}: class"
            );
        }
        for s in 1..3u32 {
            let bar = cfg_read(&mut ports, s, 0x10);
            assert_eq!(bar & (BAR_SIZE as u32 - 1), 0, "slot {s}: BAR {bar:#x}");
            assert_eq!(
                msix_ctl(&mut ports, s),
                sizes[s as usize - 1],
                "slot {s}: MSI-X table size"
            );
        }
        assert_eq!(cfg_read(&mut ports, 3, 0), u32::MAX);
        assert_eq!(cfg_read(&mut ports, 1 | 1 << 5, 0), u32::MAX, "bus 1");
        assert_eq!(cfg_read(&mut ports, 1, 0), ids[1]);
    }
    // A snapshot of what the guest left: its encoding is canonical, and it restores into a
    // fresh bus as the same state (or is refused, naming why: a BAR left decoding outside
    // the window, a device that cannot restart).
    match save_bus(&handles) {
        Ok((state, transports)) => {
            let mut e = Encoder::new();
            e.put(&state);
            let bytes = e.into_bytes();
            let decoded: PciBusState = Decoder::new(&bytes).get().expect("decodes");
            assert_eq!(decoded, state, "the encoding round-trips");
            let (fresh, _) = bus(&mem);
            match restore_bus(&fresh, &state, &transports) {
                Ok(()) => assert_eq!(
                    save_bus(&fresh).expect("saved again"),
                    (state, transports),
                    "a restored bus saves as it was saved"
                ),
                Err(e) => kiln_fuzz::debug(|| format!("restore: {e}")),
            }
        }
        Err(e) => kiln_fuzz::debug(|| format!("save: {e}")),
    }
});
