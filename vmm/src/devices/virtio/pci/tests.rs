//! The transport as a guest drives it: through 0xCF8/0xCFC and the BAR window of a bus
//! with one device on it.

use super::persist::{restore_bus, save_bus, PciFunctionStateError};
use super::*;
use crate::devices::pci::config::ConfigError;
use crate::devices::pci::persist::PciStateError;
use crate::devices::pci::platform::NoPlatform;
use crate::devices::pci::root::{BarWindow, ConfigPorts, PciRoot};
use crate::devices::virtio::{
    ActivateError, Activation, EventCtx, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::sync::lock;
use std::sync::Mutex;
use vm_memory::{GuestAddress, GuestMemoryMmap};

const WINDOW: u64 = 0xe000_0000;

#[derive(Default)]
struct Fake {
    activated: Option<Activation>,
}

impl VirtioDevice for Fake {
    fn device_type(&self) -> u32 {
        4
    }
    fn id(&self) -> &str {
        "fake"
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::virtio::read_config_bytes(&[7, 8, 9, 10], offset, data);
    }
    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        self.activated = Some(a);
        Ok(())
    }
    fn reset(&mut self) {
        self.activated = None;
    }
    fn is_activated(&self) -> bool {
        self.activated.is_some()
    }
    fn process_queue(&mut self, _: usize, _: &mut EventCtx) {}
}

struct Guest {
    ports: ConfigPorts,
    window: BarWindow,
    dev: Arc<Mutex<Fake>>,
    irqfds: Vec<EventFd>,
    handles: PciHandles,
}

fn guest() -> Guest {
    let dev = Arc::new(Mutex::new(Fake::default()));
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let fds: Vec<EventFd> = (0..3)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let irqfds = fds.iter().map(|f| f.try_clone().unwrap()).collect();
    let msix = Arc::new(MsixVectors::new(
        fds,
        vec![24, 25, 26],
        Arc::new(NoPlatform),
    ));
    let vectors = VirtioPciFunction::vectors_for(2, msix);
    let interrupt = Arc::new(Interrupt::with_vectors(vectors.clone()));
    let evts: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let notify = evts.iter().map(|e| e.try_clone().unwrap()).collect();
    let core = MmioTransport::new(dev.clone(), mem, interrupt, evts);
    let f = VirtioPciFunction::new(
        core,
        vectors,
        notify,
        Arc::new(NoPlatform),
        4,
        WINDOW as u32,
    )
    .unwrap();
    let root = Arc::new(Mutex::new(PciRoot::new(WINDOW, WINDOW + 0x10_0000)));
    let mut handles = PciHandles::new(root.clone());
    assert_eq!(handles.add(f), Some(1));
    Guest {
        ports: ConfigPorts(root.clone()),
        window: BarWindow { root, base: WINDOW },
        dev,
        irqfds,
        handles,
    }
}

impl Guest {
    fn cfg_read(&mut self, slot: u32, off: u32, len: usize) -> u32 {
        self.ports
            .write(0, &(0x8000_0000 | slot << 11 | (off & 0xfc)).to_le_bytes());
        let mut d = vec![0u8; len];
        self.ports.read(4 + u64::from(off & 3), &mut d);
        d.resize(4, 0);
        u32::from_le_bytes(d.try_into().unwrap())
    }
    fn cfg_write(&mut self, slot: u32, off: u32, len: usize, v: u32) {
        self.ports
            .write(0, &(0x8000_0000 | slot << 11 | (off & 0xfc)).to_le_bytes());
        self.ports
            .write(4 + u64::from(off & 3), &v.to_le_bytes()[..len]);
    }
    fn bar_read(&mut self, off: u64, len: usize) -> u64 {
        let mut d = vec![0u8; len];
        self.window.read(off, &mut d);
        d.resize(8, 0);
        u64::from_le_bytes(d.try_into().unwrap())
    }
    fn bar_write(&mut self, off: u64, len: usize, v: u64) {
        self.window.write(off, &v.to_le_bytes()[..len]);
    }
}

#[test]
fn the_bus_shows_a_host_bridge_and_the_device_with_its_capabilities() {
    let mut g = guest();
    assert_eq!(g.cfg_read(0, 0x08, 4) >> 16, 0x0600, "class: host bridge");
    assert_eq!(g.cfg_read(1, 0, 4), 0x1044_1af4);
    assert_eq!(g.cfg_read(2, 0, 4), u32::MAX, "an empty slot");
    // The capability list: four vendor capabilities (types 1, 3, 4, 2), then MSI-X.
    let mut at = g.cfg_read(1, 0x34, 1);
    let mut seen = Vec::new();
    while at != 0 && seen.len() < 8 {
        let id = g.cfg_read(1, at, 1);
        seen.push((id, if id == 9 { g.cfg_read(1, at + 3, 1) } else { 0 }));
        at = g.cfg_read(1, at + 1, 1);
    }
    assert_eq!(seen, [(9, 1), (9, 3), (9, 4), (9, 2), (0x11, 0)]);
    // BAR sizing.
    g.cfg_write(1, 0x10, 4, u32::MAX);
    assert_eq!(g.cfg_read(1, 0x10, 4), !(BAR_SIZE as u32 - 1));
    g.cfg_write(1, 0x10, 4, WINDOW as u32);
}

#[test]
fn a_driver_starts_the_device_and_gets_msix_interrupts() {
    let mut g = guest();
    assert_eq!(
        g.bar_read(0x12, 2),
        0xffff,
        "the BAR does not decode before memory is enabled"
    );
    g.cfg_write(1, 0x04, 2, 0x6);
    assert_eq!(g.bar_read(0x12, 2), 2, "num_queues");
    // MSI-X: entry 1 to the APIC, enabled.
    g.bar_write(MSIX_TABLE + 16, 8, 0xfee0_0000);
    g.bar_write(MSIX_TABLE + 24, 4, 0x45);
    g.bar_write(MSIX_TABLE + 28, 4, 0);
    let msix_cap = 0x40 + 16 * 3 + 20;
    g.cfg_write(1, msix_cap + 2, 2, 0x8000);
    g.bar_write(0x14, 1, 1);
    g.bar_write(0x14, 1, 3);
    g.bar_write(0x08, 4, 1);
    g.bar_write(0x0c, 4, 1);
    assert_eq!(g.bar_read(0x0c, 4), 1, "driver features read back");
    g.bar_write(0x14, 1, 0xb);
    assert_eq!(g.bar_read(0x14, 1), 0xb, "FEATURES_OK accepted");
    for (q, size) in [(0u64, 16u64), (1, 8)] {
        g.bar_write(0x16, 2, q);
        assert_eq!(g.bar_read(0x18, 2), size);
        g.bar_write(0x1a, 2, 1);
        assert_eq!(g.bar_read(0x1a, 2), 1);
        g.bar_write(0x20, 8, 0x1000 * (q + 1));
        g.bar_write(0x28, 4, 0x4000 + 0x1000 * q);
        g.bar_write(0x30, 4, 0x8000 + 0x1000 * q);
        g.bar_write(0x1c, 2, 1);
        assert_eq!(g.bar_read(0x1e, 2), q, "notify offset");
    }
    g.bar_write(0x1a, 2, 9);
    assert_eq!(g.bar_read(0x1a, 2), u64::from(NO_VECTOR), "no such vector");
    g.bar_write(0x1a, 2, 1);
    g.bar_write(0x14, 1, 0xf);
    assert_eq!(g.bar_read(0x14, 1), 0xf);
    assert_eq!(g.bar_read(0x2000, 1), 7, "device configuration");
    let a = lock(&g.dev).activated.as_ref().unwrap().interrupt.clone();
    a.signal_used_queue(1);
    assert_eq!(g.irqfds[1].read().unwrap(), 1, "vector 1 fired");
    assert_eq!(g.bar_read(ISR, 1), 1, "ISR shows the queue interrupt, once");
    assert_eq!(g.bar_read(ISR, 1), 0);
    // Reset.
    g.bar_write(0x14, 1, 0);
    assert!(lock(&g.dev).activated.is_none());
    assert_eq!(g.bar_read(0x10, 2), u64::from(NO_VECTOR));
}

#[test]
fn hostile_accesses_are_refused_without_harm() {
    let mut g = guest();
    g.cfg_write(1, 0x04, 2, 0x6);
    let before = METRICS.pci.invalid_bar_accesses.total();
    for (off, len) in [
        (0x01u64, 2usize),
        (0x14, 4),
        (0x3fff, 1),
        (0x7fff, 2),
        (0x5008, 4),
        (0x4001, 4),
        (0x6000, 4),
    ] {
        g.bar_read(off, len);
        g.bar_write(off, len, u64::MAX);
    }
    for len in [0usize, 3, 5, 16] {
        let mut d = vec![0u8; len];
        g.window.read(0x14, &mut d);
        g.window.write(0x14, &d);
    }
    assert!(METRICS.pci.invalid_bar_accesses.total() > before);
    // Configuration space: odd sizes and offsets, other buses and functions.
    for addr in [
        0x8000_0800u32 | 0x1_0000,
        0x8000_0900,
        0x0000_0800,
        0xffff_ffff,
    ] {
        g.ports.write(0, &addr.to_le_bytes());
        let mut d = [0u8; 4];
        g.ports.read(4, &mut d);
        assert_eq!(d, [0xff; 4], "{addr:#x}");
        g.ports.write(4, &d);
    }
    g.ports.write(0, &0x8000_0800u32.to_le_bytes());
    g.ports.read(5, &mut [0u8; 4]);
    g.ports.write(7, &[1, 2]);
    g.ports.write(1, &[1]);
    // A BAR moved out of the window, then back.
    g.cfg_write(1, 0x10, 4, 0x1000);
    assert_eq!(
        g.bar_read(0x12, 2),
        0xff_ff,
        "no longer decodes at its old address"
    );
    g.cfg_write(1, 0x10, 4, (WINDOW + BAR_SIZE) as u32);
    assert_eq!(g.bar_read(BAR_SIZE + 0x12, 2), 2);
}

#[test]
fn a_saved_function_comes_back_in_a_fresh_bus_as_the_guest_left_it() {
    let mut g = guest();
    // The BAR moved by the guest, MSI-X on, vector 1 masked with an interrupt pending.
    let moved = 0x8000u64;
    g.cfg_write(1, 0x10, 4, (WINDOW + moved) as u32);
    g.cfg_write(1, 0x04, 2, 0x6);
    g.bar_write(moved + MSIX_TABLE + 16, 8, 0xfee0_0000);
    g.bar_write(moved + MSIX_TABLE + 24, 4, 0x45);
    g.bar_write(moved + MSIX_TABLE + 28, 4, 1);
    let msix_cap = 0x40 + 16 * 3 + 20;
    g.cfg_write(1, msix_cap + 2, 2, 0x8000);
    g.bar_write(moved + 0x14, 1, 3);
    g.bar_write(moved + 0x10, 2, 0);
    g.bar_write(moved + 0x16, 2, 1);
    g.bar_write(moved + 0x18, 2, 8);
    g.bar_write(moved + 0x1a, 2, 1);
    lock(&g.handles.functions[0]).vectors.queue(1);
    assert!(g.irqfds[1].read().is_err(), "masked");
    let (bus, transports) = save_bus(&g.handles).unwrap();
    assert_eq!(bus.functions[0].queue_vectors, [NO_VECTOR, 1]);
    assert_eq!(bus.functions[0].config_vector, 0);

    let mut h = guest();
    restore_bus(&h.handles, &bus, &transports).unwrap();
    assert_eq!(
        save_bus(&h.handles).unwrap(),
        (bus.clone(), transports.clone())
    );
    assert_eq!(
        h.bar_read(0x12, 2),
        0xffff,
        "nothing at the firmware's place"
    );
    assert_eq!(
        h.bar_read(moved + 0x12, 2),
        2,
        "the BAR decodes where it was"
    );
    assert_eq!(h.bar_read(moved + 0x18, 2), 8, "queue 1's size");
    assert_eq!(h.bar_read(moved + MSIX_PBA, 8), 0b10, "still pending");
    h.bar_write(moved + MSIX_TABLE + 28, 4, 0);
    assert!(h.irqfds[1].read().is_ok(), "unmasking delivers it");

    // Hostile or mismatched states are refused, naming what is wrong.
    let refused = |edit: &dyn Fn(&mut crate::devices::virtio::pci::persist::PciBusState)| {
        let mut bad = bus.clone();
        edit(&mut bad);
        restore_bus(&guest().handles, &bad, &transports).unwrap_err()
    };
    let e = refused(&|b| b.functions[0].queue_vectors[1] = 3);
    assert!(
        matches!(
            &e,
            PciFunctionStateError::Vector {
                vector: 3,
                count: 3,
                slot: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("queue 1"), "{e}");
    let e = refused(&|b| b.functions[0].config_vector = 0x7ff);
    assert!(matches!(e, PciFunctionStateError::Vector { .. }), "{e}");
    // A BAR left outside the window is restored as it was, decoding nothing (as at run time).
    let mut outside = bus.clone();
    outside.functions[0].config.bytes[0x10..0x14].copy_from_slice(&0xf000_0000u32.to_le_bytes());
    let g = guest();
    restore_bus(&g.handles, &outside, &transports).expect("restored");
    assert_eq!(save_bus(&g.handles).unwrap().0, outside);
    let e = refused(&|b| b.functions[0].config.bytes[2] = 0x41);
    assert!(
        matches!(
            e,
            PciFunctionStateError::Pci {
                source: PciStateError::Config(ConfigError::ReadOnly { offset: 2, .. }),
                ..
            }
        ),
        "another kind of device: {e}"
    );
    let e = refused(&|b| b.functions[0].msix.entries.pop().map(drop).unwrap_or(()));
    assert!(
        matches!(
            e,
            PciFunctionStateError::Pci {
                source: PciStateError::VectorCount { saved: 2, here: 3 },
                ..
            }
        ),
        "{e}"
    );
    let e = refused(&|b| b.functions[0].queue_vectors.push(0));
    assert!(
        matches!(
            e,
            PciFunctionStateError::QueueVectors {
                saved: 3,
                here: 2,
                ..
            }
        ),
        "{e}"
    );
    let e = refused(&|b| b.functions.clear());
    assert!(
        matches!(
            e,
            PciFunctionStateError::FunctionCount {
                saved: 0,
                here: 1,
                ..
            }
        ),
        "{e}"
    );
}
