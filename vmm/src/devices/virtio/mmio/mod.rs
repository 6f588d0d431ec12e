//! The virtio-mmio transport (virtio 1.2, section 4.2.2: "version 2"), shared by every
//! device.
//!
//! A [`MmioTransport`] is the register file of one device window, on the MMIO bus: magic,
//! version, device and vendor IDs, feature selection, queue configuration, interrupt status
//! and acknowledgement, the device status state machine, the configuration generation, and
//! the device's configuration space from offset 0x100.
//!
//! It runs on the vCPU threads and touches only registers, except that `DRIVER_OK` hands the
//! configured queues to the device ([`VirtioDevice::activate`]) and a status write of 0
//! resets it ([`VirtioDevice::reset`]). Queue notifications normally never reach it: KVM
//! signals the queue's ioeventfd (registered by [`super::setup`] with the queue index as
//! datamatch); a notification that does reach it (another width or value) is forwarded to the
//! same eventfd when the index is valid.
//!
//! The guest is hostile: registers are 32 bits wide and aligned, config space accepts
//! 1, 2, 4 and 8 bytes; anything else, a write to a read-only register, a read of a
//! write-only one, an undefined offset, a queue register of a queue that does not exist or
//! written in the wrong status, and a status write that skips a step are ignored and counted
//! (`virtio.invalid_mmio_accesses`, `virtio.invalid_status_writes`). Queue sizes and
//! addresses are checked at `DRIVER_OK`; a bad one, or a device that refuses to start, sets
//! `DEVICE_NEEDS_RESET` instead of `DRIVER_OK`.

use super::{Activation, Interrupt, LogBudget, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::bus::BusDevice;
use crate::metrics::METRICS;
use crate::sync::lock;
use std::sync::{Arc, Mutex};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio as reg;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
pub const MMIO_VERSION: u32 = 2;
/// "KILN" in little endian.
pub const VENDOR_ID: u32 = 0x4e4c_494b;
/// Offset of the device's configuration space in the window.
pub const CONFIG_OFFSET: u64 = reg::VIRTIO_MMIO_CONFIG as u64;
/// Offset of QueueNotify (the ioeventfd address is `base + NOTIFY_OFFSET`).
pub const NOTIFY_OFFSET: u64 = reg::VIRTIO_MMIO_QUEUE_NOTIFY as u64;

const ACK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const FAILED: u32 = VIRTIO_CONFIG_S_FAILED;
const NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;

/// One queue's registers as the driver wrote them; checked when the device starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct QueueRegs {
    max: u16,
    size: u32,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

impl QueueRegs {
    fn new(max: u16) -> Self {
        QueueRegs {
            max,
            size: u32::from(max),
            ready: false,
            desc: 0,
            avail: 0,
            used: 0,
        }
    }

    /// The virtio-queue `Queue` these registers describe, checked against guest memory.
    fn build(&self, mem: &GuestMemoryMmap) -> Result<Queue, String> {
        let mut q = Queue::new(self.max).map_err(|e| format!("maximum size {}: {e}", self.max))?;
        if !self.ready {
            return Ok(q);
        }
        let size =
            u16::try_from(self.size).map_err(|_| format!("size {} is too large", self.size))?;
        q.try_set_size(size)
            .map_err(|_| format!("size {size} is not a power of two of at most {}", self.max))?;
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .map_err(|_| format!("descriptor table {:#x} is not 16-byte aligned", self.desc))?;
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .map_err(|_| format!("available ring {:#x} is not 2-byte aligned", self.avail))?;
        q.try_set_used_ring_address(GuestAddress(self.used))
            .map_err(|_| format!("used ring {:#x} is not 4-byte aligned", self.used))?;
        q.set_ready(true);
        if !q.is_valid(mem) {
            return Err(format!(
                "its rings (descriptors {:#x}, available {:#x}, used {:#x}, size {size}) are not inside guest memory",
                self.desc, self.avail, self.used
            ));
        }
        Ok(q)
    }
}

/// The register file of one virtio-mmio device.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    /// One per queue: what QueueNotify signals (also registered as ioeventfds).
    queue_evts: Vec<EventFd>,
    // Fixed for the device's life.
    device_type: u32,
    offered: u64,
    max_sizes: Vec<u16>,
    // Registers.
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<QueueRegs>,
    warnings: LogBudget,
}

impl MmioTransport {
    /// `queue_evts` holds one eventfd per queue of the device.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queue_evts: Vec<EventFd>,
    ) -> Self {
        let (device_type, offered, max_sizes) = {
            let d = lock(&device);
            (
                d.device_type(),
                d.features() | VIRTIO_F_VERSION_1,
                d.queue_max_sizes().to_vec(),
            )
        };
        let queues = max_sizes.iter().map(|&m| QueueRegs::new(m)).collect();
        MmioTransport {
            device,
            mem,
            interrupt,
            queue_evts,
            device_type,
            offered,
            max_sizes,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            warnings: LogBudget::new(),
        }
    }

    /// The device status as the driver reads it.
    pub fn status(&self) -> u32 {
        if self.interrupt.needs_reset() {
            self.status | NEEDS_RESET
        } else {
            self.status
        }
    }

    fn invalid() {
        METRICS.virtio.invalid_mmio_accesses.inc();
    }

    /// True when the status has every bit of `set` and none of `clear`.
    fn status_is(&self, set: u32, clear: u32) -> bool {
        self.status & set == set && self.status & clear == 0
    }

    fn selected_queue(&mut self) -> Option<&mut QueueRegs> {
        let i = usize::try_from(self.queue_sel).ok()?;
        self.queues.get_mut(i)
    }

    fn reset(&mut self) {
        lock(&self.device).reset();
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.queues = self.max_sizes.iter().map(|&m| QueueRegs::new(m)).collect();
        self.interrupt.reset();
        METRICS.virtio.resets.inc();
    }

    /// The status state machine: 0 resets; otherwise bits are only added, in the order
    /// ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK (several at once are taken in that order);
    /// FAILED may be added at any time. After FAILED or while the device needs a reset, only
    /// a reset is accepted.
    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        let known = ACK | DRIVER | FEATURES_OK | DRIVER_OK | FAILED;
        if value & old != old || value & !known != 0 {
            METRICS.virtio.invalid_status_writes.inc();
            return;
        }
        let added = value & !old;
        if added & FAILED != 0 {
            self.status |= FAILED;
            return;
        }
        if old & FAILED != 0 || self.interrupt.needs_reset() {
            METRICS.virtio.invalid_status_writes.inc();
            return;
        }
        for (step, before) in [
            (ACK, 0),
            (DRIVER, ACK),
            (FEATURES_OK, ACK | DRIVER),
            (DRIVER_OK, ACK | DRIVER | FEATURES_OK),
        ] {
            if added & step == 0 {
                continue;
            }
            if self.status != before {
                METRICS.virtio.invalid_status_writes.inc();
                return;
            }
            match step {
                FEATURES_OK if !self.features_acceptable() => {
                    // The bit stays clear: the driver reads it back and gives up.
                    METRICS.virtio.feature_negotiation_fails.inc();
                    return;
                }
                DRIVER_OK => {
                    self.status |= DRIVER_OK;
                    self.activate();
                    return;
                }
                _ => {}
            }
            self.status |= step;
        }
    }

    /// The driver's features must be offered ones, and include VIRTIO_F_VERSION_1 (a modern
    /// device has no legacy interface).
    fn features_acceptable(&self) -> bool {
        self.driver_features & !self.offered == 0 && self.driver_features & VIRTIO_F_VERSION_1 != 0
    }

    /// DRIVER_OK could not start the device: DEVICE_NEEDS_RESET.
    fn refuse(&mut self, what: &str) {
        if self.warnings.take() {
            let id = lock(&self.device).id().to_string();
            crate::log_warn!(
                "virtio device {id} (type {}): cannot start: {what}",
                self.device_type
            );
        }
        METRICS.virtio.activate_fails.inc();
        self.interrupt.signal_needs_reset();
    }

    fn activate(&mut self) {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, regs) in self.queues.iter().enumerate() {
            match regs.build(&self.mem) {
                Ok(q) => queues.push(q),
                Err(reason) => return self.refuse(&format!("queue {i}: {reason}")),
            }
        }
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            features: self.driver_features,
            interrupt: self.interrupt.clone(),
        };
        let result = lock(&self.device).activate(activation);
        match result {
            Ok(()) => {
                // Work the driver posted before DRIVER_OK, and whatever the device sets up on
                // its first event, is picked up by the VMM thread now.
                for evt in &self.queue_evts {
                    let _ = evt.write(1);
                }
            }
            Err(e) => self.refuse(&e.to_string()),
        }
    }

    fn read_register(&mut self, offset: u32) -> Option<u32> {
        let v = match offset {
            reg::VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC,
            reg::VIRTIO_MMIO_VERSION => MMIO_VERSION,
            reg::VIRTIO_MMIO_DEVICE_ID => self.device_type,
            reg::VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            reg::VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => u32::try_from(self.offered & 0xffff_ffff).unwrap_or(0),
                1 => u32::try_from(self.offered >> 32).unwrap_or(0),
                _ => 0,
            },
            reg::VIRTIO_MMIO_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max)),
            reg::VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready)),
            reg::VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            reg::VIRTIO_MMIO_STATUS => self.status(),
            reg::VIRTIO_MMIO_CONFIG_GENERATION => self.interrupt.generation(),
            // No shared memory regions: "length -1" for every region id.
            reg::VIRTIO_MMIO_SHM_LEN_LOW
            | reg::VIRTIO_MMIO_SHM_LEN_HIGH
            | reg::VIRTIO_MMIO_SHM_BASE_LOW
            | reg::VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            _ => return None,
        };
        Some(v)
    }

    fn write_register(&mut self, offset: u32, v: u32) -> bool {
        // Queue registers are only meaningful between FEATURES_OK and DRIVER_OK.
        let queue_config = self.status_is(ACK | DRIVER | FEATURES_OK, DRIVER_OK | FAILED);
        let features_config = self.status_is(ACK | DRIVER, FEATURES_OK | FAILED);
        match offset {
            reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::VIRTIO_MMIO_DRIVER_FEATURES if features_config => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => return false,
            },
            reg::VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            reg::VIRTIO_MMIO_QUEUE_NUM
            | reg::VIRTIO_MMIO_QUEUE_READY
            | reg::VIRTIO_MMIO_QUEUE_DESC_LOW
            | reg::VIRTIO_MMIO_QUEUE_DESC_HIGH
            | reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | reg::VIRTIO_MMIO_QUEUE_USED_LOW
            | reg::VIRTIO_MMIO_QUEUE_USED_HIGH
                if queue_config =>
            {
                let Some(q) = self.selected_queue() else {
                    return false;
                };
                let low = |old: u64| (old & !0xffff_ffff) | u64::from(v);
                let high = |old: u64| (old & 0xffff_ffff) | (u64::from(v) << 32);
                match offset {
                    reg::VIRTIO_MMIO_QUEUE_NUM => q.size = v,
                    reg::VIRTIO_MMIO_QUEUE_READY => match v {
                        0 | 1 => q.ready = v == 1,
                        _ => return false,
                    },
                    reg::VIRTIO_MMIO_QUEUE_DESC_LOW => q.desc = low(q.desc),
                    reg::VIRTIO_MMIO_QUEUE_DESC_HIGH => q.desc = high(q.desc),
                    reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW => q.avail = low(q.avail),
                    reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH => q.avail = high(q.avail),
                    reg::VIRTIO_MMIO_QUEUE_USED_LOW => q.used = low(q.used),
                    _ => q.used = high(q.used),
                }
            }
            reg::VIRTIO_MMIO_QUEUE_NOTIFY if self.status_is(DRIVER_OK, FAILED) => {
                METRICS.virtio.notify_exits.inc();
                let evt = usize::try_from(v).ok().and_then(|i| self.queue_evts.get(i));
                match evt {
                    Some(e) => {
                        let _ = e.write(1);
                    }
                    None => return false,
                }
            }
            reg::VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(v),
            reg::VIRTIO_MMIO_STATUS => self.write_status(v),
            reg::VIRTIO_MMIO_SHM_SEL => {}
            _ => return false,
        }
        true
    }
}

/// The register file as the virtio-pci transport's common configuration reads it back
/// (virtio-mmio's selectors, driver features and queue registers are write-only; PCI's are
/// read-write). The state machine behind them is this transport's, shared by both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registers {
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    /// The selected queue's (size, ready, descriptors, available, used), if it exists.
    pub queue: Option<(u32, bool, u64, u64, u64)>,
    pub queue_count: usize,
}

impl MmioTransport {
    /// The registers' current values.
    pub fn registers(&self) -> Registers {
        let queue = usize::try_from(self.queue_sel)
            .ok()
            .and_then(|i| self.queues.get(i))
            .map(|q| (q.size, q.ready, q.desc, q.avail, q.used));
        Registers {
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            queue,
            queue_count: self.queues.len(),
        }
    }

    /// Reads virtio-mmio register `reg` (a `virtio_mmio::VIRTIO_MMIO_*` offset), as a
    /// 4-byte access would; `None` for a register that cannot be read.
    pub fn read_reg(&mut self, reg: u32) -> Option<u32> {
        self.read_register(reg)
    }

    /// Writes virtio-mmio register `reg`; false when refused (not counted: the caller
    /// counts in its own terms).
    pub fn write_reg(&mut self, reg: u32, value: u32) -> bool {
        self.write_register(reg, value)
    }

    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                lock(&self.device).read_config(offset - CONFIG_OFFSET, data);
            } else {
                data.fill(0);
                Self::invalid();
            }
            return;
        }
        let value = match (u32::try_from(offset), data.len()) {
            (Ok(off), 4) if off % 4 == 0 => self.read_register(off),
            _ => None,
        };
        match value {
            Some(v) => data.copy_from_slice(&v.to_le_bytes()),
            None => {
                data.fill(0);
                Self::invalid();
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            let accepted = matches!(data.len(), 1 | 2 | 4 | 8)
                && self.status_is(DRIVER, FAILED)
                && lock(&self.device).write_config(offset - CONFIG_OFFSET, data);
            if !accepted {
                Self::invalid();
            }
            return;
        }
        let accepted = match (u32::try_from(offset), <[u8; 4]>::try_from(data)) {
            (Ok(off), Ok(bytes)) if off % 4 == 0 => {
                self.write_register(off, u32::from_le_bytes(bytes))
            }
            _ => false,
        };
        if !accepted {
            Self::invalid();
        }
    }
}

pub mod persist;

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests;
