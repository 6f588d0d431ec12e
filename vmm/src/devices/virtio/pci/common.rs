//! The common configuration structure (virtio 1.2, section 4.1.4.3) over the register
//! file: each field is accessed at its own offset and width (the 64-bit queue addresses
//! also as two 32-bit halves); anything else is refused.

use super::{VirtioPciFunction, NO_VECTOR};
use std::sync::atomic::Ordering;
use virtio_bindings::virtio_mmio as reg;

const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const MSIX_CONFIG: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const CONFIG_GENERATION: u64 = 0x15;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;

fn low(v: u64) -> u64 {
    v & 0xffff_ffff
}

fn high(v: u64) -> u64 {
    v >> 32
}

impl VirtioPciFunction {
    fn selected_vector(&self) -> Option<&std::sync::atomic::AtomicU16> {
        let sel = usize::try_from(self.core.registers().queue_sel).ok()?;
        self.vectors.queues.get(sel)
    }

    /// A field's value, or `None` for an access that is not one field.
    pub(super) fn common_read(&mut self, off: u64, len: usize) -> Option<u64> {
        let r = self.core.registers();
        let q = r.queue;
        let v = match (off, len) {
            (DEVICE_FEATURE_SELECT, 4) => u64::from(r.device_features_sel),
            (DEVICE_FEATURE, 4) => u64::from(self.core.read_reg(reg::VIRTIO_MMIO_DEVICE_FEATURES)?),
            (DRIVER_FEATURE_SELECT, 4) => u64::from(r.driver_features_sel),
            (DRIVER_FEATURE, 4) => match r.driver_features_sel {
                0 => low(r.driver_features),
                1 => high(r.driver_features),
                _ => 0,
            },
            (MSIX_CONFIG, 2) => u64::from(self.vectors.config.load(Ordering::SeqCst)),
            (NUM_QUEUES, 2) => r.queue_count as u64,
            (DEVICE_STATUS, 1) => u64::from(self.core.status() & 0xff),
            (CONFIG_GENERATION, 1) => u64::from(self.interrupt().generation() & 0xff),
            (QUEUE_SELECT, 2) => u64::from(r.queue_sel & 0xffff),
            (QUEUE_SIZE, 2) => q.map_or(0, |q| u64::from(q.0 & 0xffff)),
            (QUEUE_MSIX_VECTOR, 2) => self.selected_vector().map_or(u64::from(NO_VECTOR), |v| {
                u64::from(v.load(Ordering::SeqCst))
            }),
            (QUEUE_ENABLE, 2) => q.map_or(0, |q| u64::from(q.1)),
            (QUEUE_NOTIFY_OFF, 2) => q.map_or(0, |_| u64::from(r.queue_sel & 0xffff)),
            (QUEUE_DESC | QUEUE_DRIVER | QUEUE_DEVICE, 8) => q.map_or(0, |q| addr(q, off)),
            (o, 4) if matches!(o, 0x20..=0x37) && o % 4 == 0 => {
                let a = q.map_or(0, |q| addr(q, o - o % 8));
                if o % 8 == 0 {
                    low(a)
                } else {
                    high(a)
                }
            }
            _ => return None,
        };
        Some(v)
    }

    /// Writes a field; false when refused.
    pub(super) fn common_write(&mut self, off: u64, data: &[u8]) -> bool {
        let mut b = [0u8; 8];
        b[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(b);
        let v32 = (v & 0xffff_ffff) as u32;
        let v16 = (v & 0xffff) as u16;
        match (off, data.len()) {
            (DEVICE_FEATURE_SELECT, 4) => self
                .core
                .write_reg(reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, v32),
            (DRIVER_FEATURE_SELECT, 4) => self
                .core
                .write_reg(reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, v32),
            (DRIVER_FEATURE, 4) => self.core.write_reg(reg::VIRTIO_MMIO_DRIVER_FEATURES, v32),
            (MSIX_CONFIG, 2) => {
                let checked = self.vectors.checked(v16);
                self.vectors.config.store(checked, Ordering::SeqCst);
                true
            }
            (DEVICE_STATUS, 1) => {
                let ok = self.core.write_reg(reg::VIRTIO_MMIO_STATUS, v32);
                if v32 == 0 {
                    self.vectors.reset();
                }
                ok
            }
            (QUEUE_SELECT, 2) => self.core.write_reg(reg::VIRTIO_MMIO_QUEUE_SEL, v32),
            (QUEUE_SIZE, 2) => self.core.write_reg(reg::VIRTIO_MMIO_QUEUE_NUM, v32),
            (QUEUE_MSIX_VECTOR, 2) => {
                let checked = self.vectors.checked(v16);
                match self.selected_vector() {
                    Some(slot) => {
                        slot.store(checked, Ordering::SeqCst);
                        true
                    }
                    None => false,
                }
            }
            (QUEUE_ENABLE, 2) => self.core.write_reg(reg::VIRTIO_MMIO_QUEUE_READY, v32),
            (QUEUE_DESC | QUEUE_DRIVER | QUEUE_DEVICE, 8) => {
                let (lo, hi) = halves(off);
                self.core.write_reg(lo, v32) && self.core.write_reg(hi, (v >> 32) as u32)
            }
            (o, 4) if matches!(o, 0x20..=0x37) && o % 4 == 0 => {
                let (lo, hi) = halves(o - o % 8);
                self.core.write_reg(if o % 8 == 0 { lo } else { hi }, v32)
            }
            _ => false,
        }
    }
}

/// The selected queue's address field at `off` (descriptors, driver area, device area).
fn addr(q: (u32, bool, u64, u64, u64), off: u64) -> u64 {
    match off {
        QUEUE_DESC => q.2,
        QUEUE_DRIVER => q.3,
        _ => q.4,
    }
}

/// The virtio-mmio low and high registers of the address field at `off`.
fn halves(off: u64) -> (u32, u32) {
    match off {
        QUEUE_DESC => (
            reg::VIRTIO_MMIO_QUEUE_DESC_LOW,
            reg::VIRTIO_MMIO_QUEUE_DESC_HIGH,
        ),
        QUEUE_DRIVER => (
            reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW,
            reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
        ),
        _ => (
            reg::VIRTIO_MMIO_QUEUE_USED_LOW,
            reg::VIRTIO_MMIO_QUEUE_USED_HIGH,
        ),
    }
}
