use super::*;
use crate::devices::pci::platform::PlatformError;

/// Records the routes it is given.
#[derive(Default)]
struct Routes(Mutex<Vec<(u32, Option<MsiMessage>)>>);

impl Platform for Routes {
    fn set_msi_route(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<(), PlatformError> {
        lock(&self.0).push((gsi, msg));
        Ok(())
    }
    fn move_ioevent(
        &self,
        _: &EventFd,
        _: Option<u64>,
        _: Option<u64>,
    ) -> Result<(), PlatformError> {
        Ok(())
    }
}

fn vectors(n: usize) -> (MsixVectors, Arc<Routes>) {
    let routes = Arc::new(Routes::default());
    let fds = (0..n)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let gsis = (0..n as u32).map(|i| 24 + i).collect();
    (MsixVectors::new(fds, gsis, routes.clone()), routes)
}

fn program(v: &MsixVectors, i: u64, addr: u64, data: u32, masked: bool) {
    assert!(v.write_table(i * 16, &addr.to_le_bytes()));
    assert!(v.write_table(i * 16 + 8, &data.to_le_bytes()));
    assert!(v.write_table(i * 16 + 12, &u32::from(masked).to_le_bytes()));
}

fn fired(v: &MsixVectors, i: usize) -> bool {
    v.irqfds[i].read().is_ok()
}

#[test]
fn a_programmed_vector_is_routed_and_delivered() {
    let (v, routes) = vectors(2);
    program(&v, 1, 0xfee0_0000, 0x41, false);
    assert_eq!(
        lock(&routes.0).last(),
        Some(&(
            25,
            Some(MsiMessage {
                address: 0xfee0_0000,
                data: 0x41
            })
        ))
    );
    v.fire(1);
    assert!(!fired(&v, 1), "MSI-X is not enabled yet");
    v.set_control(CONTROL_ENABLE);
    v.fire(1);
    assert!(fired(&v, 1));
    let mut d = [0u8; 4];
    assert!(v.read_table(16 + 8, &mut d));
    assert_eq!(u32::from_le_bytes(d), 0x41);
}

#[test]
fn masked_vectors_hold_their_interrupt_until_unmasked() {
    let (v, _) = vectors(2);
    v.set_control(CONTROL_ENABLE);
    program(&v, 0, 0xfee0_0000, 0x50, true);
    v.fire(0);
    assert!(!fired(&v, 0));
    let mut pba = [0u8; 8];
    assert!(v.read_pba(0, &mut pba));
    assert_eq!(pba[0], 1);
    assert!(v.write_table(12, &0u32.to_le_bytes()));
    assert!(fired(&v, 0), "unmasking delivers the pending interrupt");
    assert!(v.read_pba(0, &mut pba));
    assert_eq!(pba[0], 0);
    // The function mask holds every vector.
    v.set_control(CONTROL_ENABLE | CONTROL_MASK);
    v.fire(0);
    assert!(!fired(&v, 0));
    v.set_control(CONTROL_ENABLE);
    assert!(fired(&v, 0));
}

#[test]
fn garbage_is_refused_and_bad_addresses_get_no_route() {
    let (v, routes) = vectors(2);
    program(&v, 0, 0x1234_5678, 7, false);
    assert_eq!(lock(&routes.0).last(), Some(&(24, None)));
    v.set_control(CONTROL_ENABLE);
    v.fire(0);
    assert!(
        !fired(&v, 0),
        "no interrupt to an address outside the APICs'"
    );
    v.fire(7);
    let mut d = [0u8; 4];
    for (off, len) in [(2u64, 4usize), (32, 4), (u64::MAX - 3, 4), (0, 2), (4, 8)] {
        let mut buf = vec![0u8; len];
        assert!(!v.read_table(off, &mut buf), "{off} {len}");
        assert!(!v.write_table(off, &buf), "{off} {len}");
    }
    assert!(!v.read_pba(8, &mut d));
    assert!(!v.read_pba(1, &mut d));
    // Reserved bits of Vector Control read as zero.
    assert!(v.write_table(12, &u32::MAX.to_le_bytes()));
    assert!(v.read_table(12, &mut d));
    assert_eq!(u32::from_le_bytes(d), 1);
}

#[test]
fn a_saved_table_restores_routes_and_keeps_pending_bits() {
    let (v, _) = vectors(3);
    v.set_control(CONTROL_ENABLE);
    program(&v, 0, 0xfee0_0000, 0x41, false);
    program(&v, 1, 0xfee0_1000, 0x52, true);
    program(&v, 2, 0x1234_0000, 0x53, false);
    v.fire(1);
    assert!(!fired(&v, 1), "masked");
    let saved = v.save_state();
    assert_eq!(
        saved.entries[1],
        MsixEntryState {
            addr: 0xfee0_1000,
            data: 0x52,
            masked: true,
            pending: true
        }
    );
    let (w, routes) = vectors(3);
    w.restore_state(&saved, CONTROL_ENABLE).unwrap();
    assert_eq!(w.save_state(), saved);
    // Routes for the two vectors aimed at the local APICs, none for the other.
    let r = lock(&routes.0).clone();
    assert_eq!(
        r,
        [
            (
                24,
                Some(MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x41
                })
            ),
            (
                25,
                Some(MsiMessage {
                    address: 0xfee0_1000,
                    data: 0x52
                })
            )
        ]
    );
    assert!(!fired(&w, 1), "nothing delivered by the restore");
    // Unmasking delivers what was pending before the snapshot.
    assert!(w.write_table(16 + 12, &0u32.to_le_bytes()));
    assert!(fired(&w, 1));
    let mut pba = [0u8; 8];
    assert!(w.read_pba(0, &mut pba));
    assert_eq!(pba, [0; 8]);
    // A table of another size is refused.
    let (x, _) = vectors(2);
    assert_eq!(
        x.restore_state(&saved, 0).unwrap_err(),
        PciStateError::VectorCount { saved: 3, here: 2 }
    );
}
