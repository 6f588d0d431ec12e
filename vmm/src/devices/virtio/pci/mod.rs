//! The virtio-pci transport (virtio 1.2, section 4.1: a modern, non-transitional device),
//! shared by every device when the VMM runs with `--enable-pci`.
//!
//! A [`VirtioPciFunction`] is one PCI function (vendor 0x1AF4, device 0x1040 + the virtio
//! device type) with one 32-bit memory BAR laid out as [`BAR_SIZE`] bytes: the common
//! configuration at [`COMMON`], the ISR at [`ISR`], the device's configuration at
//! [`DEVICE`], the queue notification addresses at [`NOTIFY`] (queue `i` at `NOTIFY + 4 i`,
//! each an ioeventfd while the BAR decodes), the MSI-X table at [`MSIX_TABLE`] and its
//! pending bits at [`MSIX_PBA`]. The configuration space lists one vendor capability per
//! region and the MSI-X capability.
//!
//! The state machine (status, features, queue registers, starting and resetting the
//! device) is the virtio-mmio transport's register file, which this transport drives from
//! the common configuration ([`common`]); what PCI adds is here: the vectors the driver
//! assigns to the configuration change and to each queue ([`VectorMap`], the device's
//! [`VectorSink`]), and the BAR that follows the guest. Legacy INTx is not offered
//! (interrupt pin 0): a driver that cannot use MSI-X gets no interrupts. Snapshots of the
//! functions: [`persist`].

mod common;
pub mod persist;
pub mod setup;

use super::mmio::{MmioTransport, CONFIG_OFFSET};
use super::{Interrupt, VectorSink};
use crate::devices::bus::BusDevice;
use crate::devices::pci::config::{ConfigError, ConfigSpace, Identity};
use crate::devices::pci::msix::{self, MsixVectors};
use crate::devices::pci::platform::Platform;
use crate::devices::pci::root::{PciFunction, PciRoot};
use crate::metrics::METRICS;
use crate::sync::lock;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// Red Hat / Qumranet, the virtio vendor.
pub const VENDOR: u16 = 0x1af4;
/// Device ID of a modern virtio device: this plus the virtio device type.
pub const DEVICE_BASE: u16 = 0x1040;
/// The BAR's size and regions.
pub const BAR_SIZE: u64 = 0x8000;
pub const COMMON: u64 = 0x0000;
pub const ISR: u64 = 0x1000;
pub const DEVICE: u64 = 0x2000;
pub const NOTIFY: u64 = 0x3000;
pub const MSIX_TABLE: u64 = 0x4000;
pub const MSIX_PBA: u64 = 0x5000;
/// Bytes between two queues' notification addresses.
pub const NOTIFY_MULTIPLIER: u32 = 4;
const REGION: u64 = 0x1000;
/// Bytes of the common configuration structure (without the optional fields after
/// `queue_device`).
const COMMON_LEN: u32 = 0x38;
/// "No vector".
pub const NO_VECTOR: u16 = 0xffff;

/// Vendor capability types (`cfg_type`).
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const CAP_VENDOR: u8 = 0x09;

/// A BAR offset or length as a capability's 32-bit field (all of them are below
/// [`BAR_SIZE`]).
const fn field32(v: u64) -> u32 {
    (v & 0xffff_ffff) as u32
}

/// The vectors the driver assigned; the device raises its interrupts through them.
pub struct VectorMap {
    config: AtomicU16,
    queues: Vec<AtomicU16>,
    msix: Arc<MsixVectors>,
}

impl VectorMap {
    fn new(queues: usize, msix: Arc<MsixVectors>) -> Self {
        VectorMap {
            config: AtomicU16::new(NO_VECTOR),
            queues: (0..queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
            msix,
        }
    }

    /// A vector the table has, or [`NO_VECTOR`] (what the driver reads back).
    fn checked(&self, v: u16) -> u16 {
        if usize::from(v) < self.msix.count() {
            v
        } else {
            NO_VECTOR
        }
    }

    fn raise(&self, v: u16) {
        if v == NO_VECTOR {
            METRICS.pci.msix_dropped.inc();
        } else {
            self.msix.fire(v);
        }
    }

    fn reset(&self) {
        self.config.store(NO_VECTOR, Ordering::SeqCst);
        for q in &self.queues {
            q.store(NO_VECTOR, Ordering::SeqCst);
        }
    }
}

impl VectorSink for VectorMap {
    fn queue(&self, index: usize) {
        match self.queues.get(index) {
            Some(v) => self.raise(v.load(Ordering::SeqCst)),
            None => METRICS.pci.msix_dropped.inc(),
        }
    }

    fn config(&self) {
        self.raise(self.config.load(Ordering::SeqCst));
    }
}

/// The PCI class of a virtio device type: network, storage, or "other system
/// peripheral".
fn class_of(device_type: u32) -> u32 {
    match device_type {
        1 => 0x02_00_00,
        2 => 0x01_80_00,
        _ => 0x08_80_00,
    }
}

/// One virtio device on the PCI bus.
pub struct VirtioPciFunction {
    core: MmioTransport,
    config: ConfigSpace,
    vectors: Arc<VectorMap>,
    msix_cap: usize,
    /// One per queue (clones of the device's queue eventfds), as ioeventfds at the notify
    /// addresses while the BAR decodes.
    notify_evts: Vec<EventFd>,
    platform: Arc<dyn Platform>,
    /// Where the bus accepted the BAR (ioeventfds registered there).
    bar_at: Option<u64>,
}

impl VirtioPciFunction {
    /// `core` is the device's register file, whose interrupt must have been made with
    /// [`Interrupt::with_vectors`] on `vectors` ([`Self::vectors_for`]); the BAR starts at
    /// `bar` with decoding off.
    pub fn new(
        core: MmioTransport,
        vectors: Arc<VectorMap>,
        notify_evts: Vec<EventFd>,
        platform: Arc<dyn Platform>,
        device_type: u32,
        bar: u32,
    ) -> Result<Self, ConfigError> {
        let id = Identity {
            vendor: VENDOR,
            device: DEVICE_BASE.saturating_add(u16::try_from(device_type).unwrap_or(0)),
            class: class_of(device_type),
            revision: 1,
            subsystem_vendor: VENDOR,
            subsystem: 0x40,
        };
        let mut config = ConfigSpace::new(id);
        config.set_bar0(BAR_SIZE, bar)?;
        let region = |t: u8, off: u64, len: u32, extra: &[u8]| {
            let cap_len = u8::try_from(16 + extra.len()).unwrap_or(0);
            let mut body = vec![cap_len, t, 0, 0, 0, 0];
            body.extend_from_slice(&field32(off).to_le_bytes());
            body.extend_from_slice(&len.to_le_bytes());
            body.extend_from_slice(extra);
            body
        };
        let dev_len = field32(REGION);
        config.add_capability(
            CAP_VENDOR,
            &region(CAP_COMMON, COMMON, COMMON_LEN, &[]),
            &[],
        )?;
        config.add_capability(CAP_VENDOR, &region(CAP_ISR, ISR, 1, &[]), &[])?;
        config.add_capability(CAP_VENDOR, &region(CAP_DEVICE, DEVICE, dev_len, &[]), &[])?;
        let queues = u32::try_from(notify_evts.len()).unwrap_or(0).max(1);
        config.add_capability(
            CAP_VENDOR,
            &region(
                CAP_NOTIFY,
                NOTIFY,
                queues * NOTIFY_MULTIPLIER,
                &NOTIFY_MULTIPLIER.to_le_bytes(),
            ),
            &[],
        )?;
        let table_size = u16::try_from(vectors.msix.count().saturating_sub(1)).unwrap_or(0);
        let mut msix_body = table_size.to_le_bytes().to_vec();
        msix_body.extend_from_slice(&field32(MSIX_TABLE).to_le_bytes());
        msix_body.extend_from_slice(&field32(MSIX_PBA).to_le_bytes());
        // Message Control's enable and function mask bits are the guest's.
        let msix_cap = config.add_capability(msix::CAP_ID, &msix_body, &[(1, 0xc0)])?;
        Ok(VirtioPciFunction {
            core,
            config,
            vectors,
            msix_cap,
            notify_evts,
            platform,
            bar_at: None,
        })
    }

    /// The vector map of a device with `queues` queues on `msix`, to make its
    /// [`Interrupt`] with.
    pub fn vectors_for(queues: usize, msix: Arc<MsixVectors>) -> Arc<VectorMap> {
        Arc::new(VectorMap::new(queues, msix))
    }

    fn interrupt(&self) -> &Interrupt {
        self.core.interrupt()
    }

    fn bar_region(&mut self, offset: u64, data: &mut [u8]) -> bool {
        let len = data.len();
        let region = offset - offset % REGION;
        let off = offset % REGION;
        match region {
            COMMON => match self.common_read(off, len) {
                Some(v) => {
                    data.copy_from_slice(&v.to_le_bytes()[..len]);
                    true
                }
                None => false,
            },
            ISR if off == 0 && len == 1 => {
                data[0] = u8::try_from(self.interrupt().take_status() & 0xff).unwrap_or(0);
                true
            }
            DEVICE => {
                self.core.read(CONFIG_OFFSET + off, data);
                true
            }
            MSIX_TABLE => self.vectors.msix.read_table(off, data),
            MSIX_PBA => self.vectors.msix.read_pba(off, data),
            _ => false,
        }
    }
}

impl PciFunction for VirtioPciFunction {
    fn config_read(&mut self, offset: u64, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: u64, data: &[u8]) {
        let Some(changes) = self.config.write(offset, data) else {
            return;
        };
        if changes.capability == Some(self.msix_cap) {
            let control = self.config.u16_at(self.msix_cap + 2);
            self.vectors.msix.set_control(control);
        }
    }

    fn bar(&self) -> Option<(u64, u64)> {
        self.config.bar0()
    }

    fn bar_accepted(&mut self, at: Option<u64>) {
        if at == self.bar_at {
            return;
        }
        let notify = |base: Option<u64>, i: usize| {
            base.map(|b| b + NOTIFY + u64::from(NOTIFY_MULTIPLIER) * i as u64)
        };
        for (i, evt) in self.notify_evts.iter().enumerate() {
            // A refused ioeventfd is counted; notifications then reach the VMM as writes.
            let _ = self
                .platform
                .move_ioevent(evt, notify(self.bar_at, i), notify(at, i));
        }
        self.bar_at = at;
    }

    fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        let ok = matches!(data.len(), 1 | 2 | 4 | 8) && self.bar_region(offset, data);
        if !ok {
            data.fill(0);
            METRICS.pci.invalid_bar_accesses.inc();
        }
    }

    fn bar_write(&mut self, offset: u64, data: &[u8]) {
        let len = data.len();
        let region = offset - offset % REGION;
        let off = offset % REGION;
        let ok = matches!(len, 1 | 2 | 4 | 8)
            && match region {
                COMMON => self.common_write(off, data),
                DEVICE => {
                    self.core.write(CONFIG_OFFSET + off, data);
                    true
                }
                NOTIFY => self.notify(off, len),
                MSIX_TABLE => self.vectors.msix.write_table(off, data),
                _ => false,
            };
        if !ok {
            METRICS.pci.invalid_bar_accesses.inc();
        }
    }
}

impl VirtioPciFunction {
    /// A notification that reached the VMM (no ioeventfd: the BAR moved, or KVM refused
    /// it): forwarded as virtio-mmio's QueueNotify.
    fn notify(&mut self, off: u64, len: usize) -> bool {
        let step = u64::from(NOTIFY_MULTIPLIER);
        if !off.is_multiple_of(step) || !matches!(len, 2 | 4) {
            return false;
        }
        u32::try_from(off / step).is_ok_and(|q| {
            self.core
                .write_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY, q)
        })
    }
}

/// The bus and its virtio functions in slot order, kept with the running VM (snapshots
/// save and restore them).
#[derive(Clone)]
pub struct PciHandles {
    pub root: Arc<Mutex<PciRoot>>,
    pub functions: Vec<Arc<Mutex<VirtioPciFunction>>>,
}

impl PciHandles {
    /// The bus `root`, with no function yet.
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        PciHandles {
            root,
            functions: Vec::new(),
        }
    }

    /// Puts `f` in the next slot of the bus (and keeps it); returns its device number, or
    /// `None` when the bus is full.
    pub fn add(&mut self, f: VirtioPciFunction) -> Option<u8> {
        let f = Arc::new(Mutex::new(f));
        let slot = lock(&self.root).add(Box::new(Shared(f.clone())))?;
        self.functions.push(f);
        Some(slot)
    }
}

/// A function on the bus that is also kept outside it ([`PciHandles`]).
struct Shared(Arc<Mutex<VirtioPciFunction>>);

impl PciFunction for Shared {
    fn config_read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.0).config_read(offset, data);
    }
    fn config_write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.0).config_write(offset, data);
    }
    fn bar(&self) -> Option<(u64, u64)> {
        lock(&self.0).bar()
    }
    fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.0).bar_read(offset, data);
    }
    fn bar_write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.0).bar_write(offset, data);
    }
    fn bar_accepted(&mut self, at: Option<u64>) {
        lock(&self.0).bar_accepted(at);
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests;
