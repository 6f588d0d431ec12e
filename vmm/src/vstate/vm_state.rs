//! The KVM VM's state for snapshots: the in-kernel irqchip (both PICs and the IOAPIC), the
//! PIT (if the VM has one) and the kvmclock; what snapshots need to know of the host's KVM
//! ([`SnapshotCaps`]); and KVM's dirty-page log for diff snapshots.
//!
//! Functions take the VM's descriptor ([`VmFd`]), so that [`super::vm`] can hold the
//! capabilities without the two modules importing each other.

use super::vcpu_state::msrs_to_save;
use crate::snapshot::{CodecError, Decoder, Encoder, Persist};
use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, kvm_xsave, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Cap, Kvm, VmFd};

/// The format minor version from which the PIT's state has a presence byte.
const PIT_OPTIONAL_SINCE: u16 = 2;
/// `KVM_CLOCK_REALTIME` (Linux 5.16): the clock data carries the host's wall-clock time.
const KVM_CLOCK_REALTIME: u32 = 1 << 2;
/// Bytes of a page in the dirty log.
pub const PAGE_BYTES: usize = 4096;
/// [`PAGE_BYTES`] as a guest address or file offset.
pub const PAGE_SIZE: u64 = PAGE_BYTES as u64;

#[derive(Debug, thiserror::Error)]
pub enum VmStateError {
    #[error("{op} failed: {source}")]
    Ioctl {
        op: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("clock_realtime: the snapshot's clock has no wall-clock time (KVM_CLOCK_REALTIME; the host that took it runs Linux before 5.16)")]
    NoRealtime,
    #[error(
        "KVM_GET_DIRTY_LOG failed for memory slot {slot}: {source} (is track_dirty_pages set?)"
    )]
    DirtyLog {
        slot: u32,
        source: kvm_ioctls::Error,
    },
}

fn ioctl<T>(op: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, VmStateError> {
    r.map_err(|source| VmStateError::Ioctl { op, source })
}

/// What snapshots need to know of the host's KVM, asked when the VM is created.
#[derive(Debug, Clone, Default)]
pub struct SnapshotCaps {
    /// The MSRs a vCPU state saves (KVM's list and the boot MSRs).
    pub msrs: Vec<u32>,
    /// Size of the vCPU XSAVE state (`KVM_CAP_XSAVE2`; 0 when the cap is missing).
    pub xsave_size: usize,
    /// KVM can run the guest's TSC at another frequency (`KVM_CAP_TSC_CONTROL`).
    pub tsc_control: bool,
    /// Guest memory is registered with `KVM_MEM_LOG_DIRTY_PAGES`.
    pub track_dirty_pages: bool,
}

impl SnapshotCaps {
    pub fn query(kvm: &Kvm, track_dirty_pages: bool) -> SnapshotCaps {
        let list = kvm
            .get_msr_index_list()
            .map(|l| l.as_slice().to_vec())
            .unwrap_or_default();
        SnapshotCaps {
            msrs: msrs_to_save(&list),
            xsave_size: usize::try_from(kvm.check_extension_int(Cap::Xsave2)).unwrap_or(0),
            tsc_control: kvm.check_extension(Cap::TscControl),
            track_dirty_pages,
        }
    }

    /// Adds `extra` to the MSRs a vCPU state saves, each once.
    pub fn add_msrs(&mut self, extra: impl IntoIterator<Item = u32>) {
        for index in extra {
            if !self.msrs.contains(&index) {
                self.msrs.push(index);
            }
        }
    }

    /// True when a vCPU's XSAVE state fits the 4 KiB `kvm_xsave` snapshots save (it does
    /// not on hosts with AMX, whose state Kiln cannot save yet).
    pub fn xsave_fits(&self) -> bool {
        self.xsave_size <= std::mem::size_of::<kvm_xsave>()
    }
}

/// The in-kernel irqchip, PIT and clock.
#[derive(Clone)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    /// `None`: the VM has no in-kernel PIT (`"pit": false`). Formats before v1.2 have a PIT
    /// always; v1.2 writes a presence byte before it.
    pub pit: Option<kvm_pit_state2>,
    pub clock: kvm_clock_data,
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmState")
            .field("clock", &self.clock.clock)
            .field("pit", &self.pit.is_some())
            .finish_non_exhaustive()
    }
}

fn irqchip(fd: &VmFd, chip_id: u32) -> Result<kvm_irqchip, VmStateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    ioctl("KVM_GET_IRQCHIP", fd.get_irqchip(&mut chip))?;
    Ok(chip)
}

impl VmState {
    /// Reads the VM's state (every vCPU stopped); `pit`: the VM has an in-kernel PIT.
    pub fn save(fd: &VmFd, pit: bool) -> Result<VmState, VmStateError> {
        Ok(VmState {
            pit: match pit {
                true => Some(ioctl("KVM_GET_PIT2", fd.get_pit2())?),
                false => None,
            },
            clock: ioctl("KVM_GET_CLOCK", fd.get_clock())?,
            pic_master: irqchip(fd, KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: irqchip(fd, KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: irqchip(fd, KVM_IRQCHIP_IOAPIC)?,
        })
    }

    /// Loads it into a new VM whose vCPUs are restored, and which has a PIT if and only if
    /// the state has one (the snapshot's configuration says so; checked by
    /// `MicrovmState::check`). `realtime`: advance kvmclock by the wall-clock time since the
    /// snapshot (`clock_realtime`); else it goes on from where it stopped.
    pub fn restore(&self, fd: &VmFd, realtime: bool) -> Result<(), VmStateError> {
        if let Some(pit) = &self.pit {
            ioctl("KVM_SET_PIT2", fd.set_pit2(pit))?;
        }
        let mut clock = self.clock;
        clock.flags = if realtime {
            if self.clock.flags & KVM_CLOCK_REALTIME == 0 {
                return Err(VmStateError::NoRealtime);
            }
            KVM_CLOCK_REALTIME
        } else {
            0
        };
        ioctl("KVM_SET_CLOCK", fd.set_clock(&clock))?;
        for chip in [&self.pic_master, &self.pic_slave, &self.ioapic] {
            ioctl("KVM_SET_IRQCHIP", fd.set_irqchip(chip))?;
        }
        Ok(())
    }
}

impl Persist for VmState {
    fn encode(&self, e: &mut Encoder) {
        e.pod(&self.pic_master);
        e.pod(&self.pic_slave);
        e.pod(&self.ioapic);
        e.bool(self.pit.is_some());
        if let Some(pit) = &self.pit {
            e.pod(pit);
        }
        e.pod(&self.clock);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        let s = VmState {
            pic_master: d.pod("PIC (master)")?,
            pic_slave: d.pod("PIC (slave)")?,
            ioapic: d.pod("IOAPIC")?,
            // Before v1.2 (the PIT optional): always there, no presence byte.
            pit: if d.minor() < PIT_OPTIONAL_SINCE || d.bool("PIT present")? {
                Some(d.pod("PIT")?)
            } else {
                None
            },
            clock: d.pod("kvmclock")?,
        };
        for (chip, want, what) in [
            (&s.pic_master, KVM_IRQCHIP_PIC_MASTER, "PIC (master)"),
            (&s.pic_slave, KVM_IRQCHIP_PIC_SLAVE, "PIC (slave)"),
            (&s.ioapic, KVM_IRQCHIP_IOAPIC, "IOAPIC"),
        ] {
            if chip.chip_id != want {
                return Err(CodecError::Invalid {
                    what,
                    value: format!("chip id {}", chip.chip_id),
                });
            }
        }
        Ok(s)
    }
}

/// The pages of each memory slot the guest wrote since the last call (KVM's dirty log,
/// which this read clears): one bitmap of 64-page words per RAM region (guest address,
/// length: slots 0, 1, ... in order). The virtio-mem region's slots are not logged.
pub fn take_dirty_log(fd: &VmFd, ram: &[(u64, u64)]) -> Result<Vec<Vec<u64>>, VmStateError> {
    let mut out = Vec::with_capacity(ram.len());
    for (slot, &(_, len)) in (0u32..).zip(ram) {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let bitmap = fd
            .get_dirty_log(slot, len)
            .map_err(|source| VmStateError::DirtyLog { slot, source })?;
        out.push(bitmap);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    fn state(pit: Option<kvm_pit_state2>) -> VmState {
        let chip = |chip_id| kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        VmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER),
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE),
            ioapic: chip(KVM_IRQCHIP_IOAPIC),
            pit,
            clock: kvm_clock_data {
                clock: 0x1234_5678,
                ..Default::default()
            },
        }
    }

    fn a_pit() -> kvm_pit_state2 {
        let mut pit = kvm_pit_state2::default();
        pit.channels[0].count = 0xffff;
        pit.channels[0].mode = 2;
        pit.flags = 1;
        pit
    }

    fn encoded(s: &VmState) -> Vec<u8> {
        let mut e = Encoder::new();
        e.put(s);
        e.into_bytes()
    }

    #[test]
    fn a_state_with_or_without_a_pit_round_trips() {
        for pit in [Some(a_pit()), None] {
            let bytes = encoded(&state(pit));
            let back: VmState = Decoder::new(&bytes).get().unwrap();
            assert_eq!(back.pit.is_some(), pit.is_some());
            if let (Some(a), Some(b)) = (back.pit, pit) {
                assert_eq!(a.as_bytes(), b.as_bytes());
            }
            assert_eq!(back.clock.clock, 0x1234_5678);
            assert_eq!(encoded(&back), bytes, "canonical");
        }
        // No PIT: one byte instead of a presence byte and the PIT's state.
        let with = encoded(&state(Some(a_pit()))).len();
        let without = encoded(&state(None)).len();
        assert_eq!(with - without, 4 + std::mem::size_of::<kvm_pit_state2>());
    }

    #[test]
    fn formats_before_v1_2_always_have_a_pit_and_no_presence_byte() {
        let s = state(Some(a_pit()));
        let mut e = Encoder::new();
        e.pod(&s.pic_master);
        e.pod(&s.pic_slave);
        e.pod(&s.ioapic);
        e.pod(&a_pit());
        e.pod(&s.clock);
        let old = e.into_bytes();
        for minor in 0..PIT_OPTIONAL_SINCE {
            let mut d = Decoder::with_minor(&old, minor);
            let back: VmState = d.get().unwrap();
            d.finish().unwrap();
            assert_eq!(back.pit.map(|p| p.channels[0].count), Some(0xffff));
            assert_eq!(back.clock.clock, 0x1234_5678);
        }
        // The same bytes read as v1.2 are not a state (the PIT's length prefix is taken
        // for a presence byte).
        assert!(Decoder::new(&old).get::<VmState>().is_err());
    }

    #[test]
    fn a_presence_byte_other_than_0_or_1_is_refused() {
        let mut bytes = encoded(&state(None));
        let at = 3 * (4 + std::mem::size_of::<kvm_irqchip>());
        assert_eq!(bytes[at], 0);
        bytes[at] = 2;
        let err = Decoder::new(&bytes).get::<VmState>().unwrap_err();
        assert!(err.to_string().contains("PIT present"), "{err}");
    }
}
