//! Snapshots of a virtio-mmio transport: its registers, its interrupt state, (for a
//! started device) the position of each queue, so that the restored device goes on where
//! it stopped, and the buckets of the device's rate limiters (started or not), so that it
//! is as limited as it was.
//!
//! The device behind the transport is rebuilt from the configuration saved with the
//! snapshot; its configuration space as the guest read it is saved too, and a restored
//! device whose configuration differs (a drive of another size, another MAC) is refused
//! rather than shown to a driver that cached the old one. Everything read back is checked
//! against the device before use: the queue count, the status bits, the features.

use super::super::{Activation, Interrupt, QueuePosition, MAX_DEVICE_STATE, VIRTIO_F_VERSION_1};
use super::{MmioTransport, QueueRegs, ACK, DRIVER, DRIVER_OK, FAILED, FEATURES_OK};
use crate::devices::rate_limiter::persist::{LimiterState, LimiterStateError};
use crate::snapshot::{CodecError, Decoder, Encoder, Persist};
use crate::sync::lock;
use std::sync::atomic::Ordering;

/// Bytes of configuration space compared at restore (every Kiln device's fits).
const CONFIG_BYTES: usize = 256;
/// Most queues a transport may have.
const MAX_QUEUES: usize = 64;
/// Most rate limiters a device may have (a network interface has two).
const MAX_LIMITERS: usize = 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransportStateError {
    #[error("virtio device {id} (type {device_type}) cannot be snapshotted once started (it does not save its state yet)")]
    Unsupported { id: String, device_type: u32 },
    #[error("virtio device {id}: the snapshot has a device of type {saved} here, the configuration makes one of type {here}")]
    DeviceType { id: String, saved: u32, here: u32 },
    #[error("virtio device {id}: the snapshot has {saved} queues for it, the device has {here}")]
    QueueCount {
        id: String,
        saved: usize,
        here: usize,
    },
    #[error("virtio device {id}: its configuration space differs from the snapshot's (e.g. a drive of another size, another MAC address)")]
    Config { id: String },
    #[error("virtio device {id}: the snapshot's transport state is invalid: {what}")]
    Invalid { id: String, what: String },
    #[error("virtio device {id}: cannot restart it from the snapshot: {reason}")]
    Restart { id: String, reason: String },
    #[error(
        "virtio device {id}: the snapshot has {saved} rate limiters for it, the device has {here}"
    )]
    LimiterCount {
        id: String,
        saved: usize,
        here: usize,
    },
    #[error("virtio device {id}: rate limiter {index}: {source}")]
    Limiter {
        id: String,
        index: usize,
        source: LimiterStateError,
    },
}

/// One queue's registers and position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueState {
    pub size: u32,
    pub ready: bool,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub position: QueuePosition,
}

/// A transport's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TransportState {
    pub device_type: u32,
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    pub queues: Vec<QueueState>,
    pub interrupt_status: u32,
    pub config_generation: u32,
    pub needs_reset: bool,
    /// The device was started (DRIVER_OK accepted it).
    pub activated: bool,
    /// The device's configuration space as the guest reads it.
    pub config: Vec<u8>,
    /// The device's rate limiters' buckets, in the device's order.
    pub limiters: Vec<LimiterState>,
    /// The device's own state (`VirtioDevice::save_device_state`; format v1.1 on, empty
    /// when read from a v1.0 snapshot).
    pub device_state: Vec<u8>,
}

impl MmioTransport {
    fn config_bytes(&self) -> Vec<u8> {
        let mut c = vec![0u8; CONFIG_BYTES];
        lock(&self.device).read_config(0, &mut c);
        c
    }

    /// The device's id (what errors name).
    pub fn device_id(&self) -> String {
        lock(&self.device).id().to_string()
    }

    /// The transport's state (the VM paused, so nothing changes it meanwhile).
    pub fn save_state(&self) -> Result<TransportState, TransportStateError> {
        let (activated, positions, limiters, device_state) = {
            let mut d = lock(&self.device);
            let activated = d.is_activated();
            let positions = if activated {
                d.queue_positions()
                    .ok_or_else(|| TransportStateError::Unsupported {
                        id: d.id().to_string(),
                        device_type: self.device_type,
                    })?
            } else {
                Vec::new()
            };
            let limiters = d
                .rate_limiters_mut()
                .iter()
                .map(|l| l.save_state())
                .collect();
            (activated, positions, limiters, d.save_device_state())
        };
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| QueueState {
                size: q.size,
                ready: q.ready,
                desc: q.desc,
                avail: q.avail,
                used: q.used,
                position: positions.get(i).copied().unwrap_or_default(),
            })
            .collect();
        Ok(TransportState {
            device_type: self.device_type,
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            queues,
            interrupt_status: self.interrupt.status(),
            config_generation: self.interrupt.generation(),
            needs_reset: self.interrupt.needs_reset(),
            activated,
            config: self.config_bytes(),
            limiters,
            device_state,
        })
    }

    /// Loads `s` into this freshly built transport (device not started), and restarts the
    /// device at its saved queue positions if it was started.
    pub fn restore_state(&mut self, s: &TransportState) -> Result<(), TransportStateError> {
        let id = self.device_id();
        let invalid = |what: String| TransportStateError::Invalid {
            id: id.clone(),
            what,
        };
        if s.device_type != self.device_type {
            return Err(TransportStateError::DeviceType {
                id,
                saved: s.device_type,
                here: self.device_type,
            });
        }
        if s.queues.len() != self.max_sizes.len() {
            return Err(TransportStateError::QueueCount {
                id,
                saved: s.queues.len(),
                here: self.max_sizes.len(),
            });
        }
        lock(&self.device).restore_config(&s.config);
        lock(&self.device)
            .restore_device_state(&s.device_state)
            .map_err(invalid)?;
        if s.config != self.config_bytes() {
            return Err(TransportStateError::Config { id });
        }
        self.restore_limiters(&id, &s.limiters)?;
        let known = ACK | DRIVER | FEATURES_OK | DRIVER_OK | FAILED;
        if s.status & !known != 0 {
            return Err(invalid(format!("status {:#x}", s.status)));
        }
        if s.driver_features & !self.offered != 0 {
            return Err(invalid(format!(
                "driver features {:#x} were never offered ({:#x})",
                s.driver_features, self.offered
            )));
        }
        let started = ACK | DRIVER | FEATURES_OK | DRIVER_OK;
        if s.activated
            && (s.status & started != started
                || s.status & FAILED != 0
                || s.driver_features & VIRTIO_F_VERSION_1 == 0)
        {
            return Err(invalid(format!(
                "started, with status {:#x} and features {:#x}",
                s.status, s.driver_features
            )));
        }
        self.status = s.status;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.driver_features = s.driver_features;
        self.queue_sel = s.queue_sel;
        self.queues = self
            .max_sizes
            .iter()
            .zip(&s.queues)
            .map(|(&max, q)| QueueRegs {
                max,
                size: q.size,
                ready: q.ready,
                desc: q.desc,
                avail: q.avail,
                used: q.used,
            })
            .collect();
        restore_interrupt(&self.interrupt, s);
        if s.activated {
            self.restart(&s.queues)
                .map_err(|reason| TransportStateError::Restart { id, reason })?;
        }
        Ok(())
    }

    /// Gives the device's rate limiters (built from the snapshot's configuration) their
    /// saved buckets.
    fn restore_limiters(
        &self,
        id: &str,
        saved: &[LimiterState],
    ) -> Result<(), TransportStateError> {
        let mut d = lock(&self.device);
        let mut limiters = d.rate_limiters_mut();
        if limiters.len() != saved.len() {
            return Err(TransportStateError::LimiterCount {
                id: id.to_string(),
                saved: saved.len(),
                here: limiters.len(),
            });
        }
        for (index, (l, s)) in limiters.iter_mut().zip(saved).enumerate() {
            l.restore_state(s)
                .map_err(|source| TransportStateError::Limiter {
                    id: id.to_string(),
                    index,
                    source,
                })?;
        }
        Ok(())
    }

    /// Starts the device as DRIVER_OK did, on queues placed at their saved positions.
    fn restart(&mut self, saved: &[QueueState]) -> Result<(), String> {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, (regs, q)) in self.queues.iter().zip(saved).enumerate() {
            let mut built = regs
                .build(&self.mem)
                .map_err(|e| format!("queue {i}: {e}"))?;
            virtio_queue::QueueT::set_next_avail(&mut built, q.position.next_avail);
            virtio_queue::QueueT::set_next_used(&mut built, q.position.next_used);
            queues.push(built);
        }
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            features: self.driver_features,
            interrupt: self.interrupt.clone(),
        };
        lock(&self.device)
            .activate(activation)
            .map_err(|e| e.to_string())?;
        // Whatever the driver posted before the snapshot is looked at once the VMM thread
        // runs.
        for evt in &self.queue_evts {
            let _ = evt.write(1);
        }
        Ok(())
    }
}

fn restore_interrupt(irq: &Interrupt, s: &TransportState) {
    irq.status.store(s.interrupt_status, Ordering::SeqCst);
    irq.generation.store(s.config_generation, Ordering::SeqCst);
    irq.needs_reset.store(s.needs_reset, Ordering::SeqCst);
}

impl Persist for QueueState {
    fn encode(&self, e: &mut Encoder) {
        e.u32(self.size);
        e.bool(self.ready);
        e.u64(self.desc);
        e.u64(self.avail);
        e.u64(self.used);
        e.u16(self.position.next_avail);
        e.u16(self.position.next_used);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        Ok(QueueState {
            size: d.u32("virtio queue size")?,
            ready: d.bool("virtio queue ready")?,
            desc: d.u64("virtio queue descriptor table")?,
            avail: d.u64("virtio queue available ring")?,
            used: d.u64("virtio queue used ring")?,
            position: QueuePosition {
                next_avail: d.u16("virtio queue next available")?,
                next_used: d.u16("virtio queue next used")?,
            },
        })
    }
}

impl Persist for TransportState {
    fn encode(&self, e: &mut Encoder) {
        e.u32(self.device_type);
        e.u32(self.status);
        e.u32(self.device_features_sel);
        e.u32(self.driver_features_sel);
        e.u64(self.driver_features);
        e.u32(self.queue_sel);
        e.list(&self.queues);
        e.u32(self.interrupt_status);
        e.u32(self.config_generation);
        e.bool(self.needs_reset);
        e.bool(self.activated);
        e.bytes(&self.config);
        e.list(&self.limiters);
        e.bytes(&self.device_state);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        Ok(TransportState {
            device_type: d.u32("virtio device type")?,
            status: d.u32("virtio status")?,
            device_features_sel: d.u32("virtio device features select")?,
            driver_features_sel: d.u32("virtio driver features select")?,
            driver_features: d.u64("virtio driver features")?,
            queue_sel: d.u32("virtio queue select")?,
            queues: d.list("virtio queues", MAX_QUEUES, 33)?,
            interrupt_status: d.u32("virtio interrupt status")?,
            config_generation: d.u32("virtio configuration generation")?,
            needs_reset: d.bool("virtio needs reset")?,
            activated: d.bool("virtio device started")?,
            config: d
                .bytes("virtio configuration space", CONFIG_BYTES)?
                .to_vec(),
            limiters: d.list("virtio device rate limiters", MAX_LIMITERS, 2)?,
            device_state: if d.minor() >= 1 {
                d.bytes("virtio device state", MAX_DEVICE_STATE)?.to_vec()
            } else {
                Vec::new()
            },
        })
    }
}
