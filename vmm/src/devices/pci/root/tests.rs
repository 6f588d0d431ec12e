use super::*;
use std::sync::atomic::{AtomicU32, Ordering};

/// A function with a 0x1000-byte BAR (moved by a 4-byte write at 0x10) that counts the
/// BAR accesses it gets.
struct Stub {
    bar: Option<(u64, u64)>,
    accepted: Arc<Mutex<Option<u64>>>,
    hits: Arc<AtomicU32>,
}

impl PciFunction for Stub {
    fn config_read(&mut self, _: u64, data: &mut [u8]) {
        data.fill(0x11);
    }
    fn config_write(&mut self, offset: u64, data: &[u8]) {
        if let (0x10, Ok(b)) = (offset, <[u8; 4]>::try_from(data)) {
            self.bar = Some((u64::from(u32::from_le_bytes(b)), 0x1000));
        }
    }
    fn bar(&self) -> Option<(u64, u64)> {
        self.bar
    }
    fn bar_read(&mut self, _: u64, data: &mut [u8]) {
        self.hits.fetch_add(1, Ordering::SeqCst);
        data.fill(0);
    }
    fn bar_write(&mut self, _: u64, _: &[u8]) {
        self.hits.fetch_add(1, Ordering::SeqCst);
    }
    fn bar_accepted(&mut self, at: Option<u64>) {
        *lock(&self.accepted) = at;
    }
}

type Probe = (Arc<AtomicU32>, Arc<Mutex<Option<u64>>>);

fn stub(root: &Arc<Mutex<PciRoot>>, at: u64) -> Probe {
    let hits = Arc::new(AtomicU32::new(0));
    let accepted = Arc::new(Mutex::new(None));
    lock(root)
        .add(Box::new(Stub {
            bar: Some((at, 0x1000)),
            accepted: accepted.clone(),
            hits: hits.clone(),
        }))
        .unwrap();
    (hits, accepted)
}

fn set_bar(ports: &mut ConfigPorts, slot: u32, v: u32) {
    ports.write(0, &(0x8000_0010 | slot << 11).to_le_bytes());
    ports.write(4, &v.to_le_bytes());
}

fn hits(p: &Probe) -> u32 {
    p.0.swap(0, Ordering::SeqCst)
}

#[test]
fn the_address_register_reads_back_and_probes_see_a_host_bridge() {
    let root = Arc::new(Mutex::new(PciRoot::new(0xe000_0000, 0xe010_0000)));
    let mut ports = ConfigPorts(root);
    ports.write(0, &0x8000_0000u32.to_le_bytes());
    let mut d = [0u8; 4];
    ports.read(0, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0x8000_0000);
    ports.write(0, &0x8000_0008u32.to_le_bytes());
    let mut w = [0u8; 2];
    ports.read(6, &mut w);
    assert_eq!(u16::from_le_bytes(w), 0x0600);
    // A byte write to 0xCFB (Linux's probe) changes nothing.
    ports.write(3, &[1]);
    ports.read(0, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0x8000_0008);
}

#[test]
fn overlapping_and_outside_bars_decode_nothing() {
    let root = Arc::new(Mutex::new(PciRoot::new(0xe000_0000, 0xe010_0000)));
    let a = stub(&root, 0xe000_0000);
    let b = stub(&root, 0xe000_1000);
    let mut ports = ConfigPorts(root.clone());
    let mut window = BarWindow {
        root: root.clone(),
        base: 0xe000_0000,
    };
    window.write(0x1004, &[1, 2, 3, 4]);
    window.write(0x0004, &[1]);
    assert_eq!((hits(&a), hits(&b)), (1, 1));
    // Slot 2's BAR moved over slot 1's: neither gets the accesses there, and both are told.
    set_bar(&mut ports, 2, 0xe000_0000);
    assert_eq!((*lock(&a.1), *lock(&b.1)), (None, None));
    window.write(0x4, &[1]);
    window.write(0x1004, &[1]);
    assert_eq!((hits(&a), hits(&b)), (0, 0));
    // Moved away again: both decode; an access straddling a BAR's end reaches nobody.
    set_bar(&mut ports, 2, 0xe000_2000);
    assert_eq!(
        (*lock(&a.1), *lock(&b.1)),
        (Some(0xe000_0000), Some(0xe000_2000))
    );
    window.write(0x0ffe, &[0; 4]);
    window.write(0x2000, &[0; 4]);
    assert_eq!((hits(&a), hits(&b)), (0, 1));
    // Outside the window (over RAM): refused.
    set_bar(&mut ports, 1, 0x10_0000);
    assert_eq!(*lock(&a.1), None);
    let mut d = [0u8; 4];
    window.read(0, &mut d);
    assert_eq!(d, [0xff; 4]);
    assert_eq!(hits(&a), 0);
    // Straddling the window's end.
    set_bar(&mut ports, 2, 0xe00f_f800);
    assert_eq!(*lock(&b.1), None);
}

#[test]
fn without_a_bus_the_ports_read_all_ones_and_latch_nothing() {
    let mut ports = NoBus;
    ports.write(0, &0x8000_0000u32.to_le_bytes());
    for (off, len) in [(0u64, 4usize), (4, 4), (7, 1), (3, 1), (6, 2)] {
        let mut d = vec![0u8; len];
        ports.read(off, &mut d);
        assert!(d.iter().all(|&b| b == 0xff), "{off} {len}");
    }
}

#[test]
fn restored_bars_decode_where_they_were_and_one_outside_the_window_decodes_nothing() {
    let root = Arc::new(Mutex::new(PciRoot::new(0xe000_0000, 0xe010_0000)));
    let a = stub(&root, 0xe000_4000);
    let b = stub(&root, 0xe000_8000);
    let mut ports = ConfigPorts(root.clone());
    ports.write(0, &0x8000_0804u32.to_le_bytes());
    let saved = lock(&root).save_state();
    let fresh = Arc::new(Mutex::new(PciRoot::new(0xe000_0000, 0xe010_0000)));
    lock(&fresh).restore_state(&saved).unwrap();
    assert_eq!(lock(&fresh).save_state(), saved);
    assert_eq!(lock(&fresh).address, 0x8000_0804);
    // Nothing accepted until the bus is told the functions are restored.
    assert_eq!(*lock(&a.1), None);
    lock(&root).accept_restored_bars();
    assert_eq!(*lock(&a.1), Some(0xe000_4000));
    assert_eq!(*lock(&b.1), Some(0xe000_8000));
    // A BAR the guest moved outside the window: restored as it was, decoding nothing.
    set_bar(&mut ports, 2, 0xf000_0000);
    assert_eq!(*lock(&b.1), None);
    lock(&root).accept_restored_bars();
    assert_eq!(*lock(&a.1), Some(0xe000_4000));
    assert_eq!(*lock(&b.1), None);
}
