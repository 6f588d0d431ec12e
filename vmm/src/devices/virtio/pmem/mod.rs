//! virtio-pmem (`pmem`, `PUT /pmem/{id}`): a host file mapped into the guest as persistent
//! memory (device id 27).
//!
//! The file is mapped into the VMM ([`mapping`]) and registered with KVM as a memory slot
//! at a guest-physical address past the 64-bit MMIO window
//! ([`crate::arch::x86_64::layout::DEVICE_MEMORY_START`], 2 MiB aligned, in configuration
//! order); the configuration space tells the driver where: `{start: u64, size: u64}`,
//! little-endian, read-only. The guest reads and writes the file's pages directly; a
//! read-only device's slot is read-only, and a guest write to it exits to the VMM as MMIO,
//! which no device handles (it is dropped, or stops the VM with `--strict-io`).
//!
//! One request queue of [`QUEUE_SIZE`]: flush requests ([`request`]) make the file durable
//! (`msync(MS_SYNC)`) and answer a status. As in Firecracker, the flushes of one
//! notification share one `msync` (the first request's result answers them all), and the
//! rate limiter takes one op and the file's size in bytes for it, before the queue is
//! looked at; when the limiter refuses, the requests wait in the ring for its timer.
//! A malformed chain is returned with length 0 and counted (`pmem.event_fails`,
//! `virtio.invalid_chains`); a broken ring sets `DEVICE_NEEDS_RESET`.

pub mod mapping;
mod persist;
pub mod request;

use super::queue::{self, add_used, pop_head, walk_chain, write_stream};
use super::single_queue::{limiter_event, SingleQueue, LIMITER_TOKEN};
use super::{
    queue_broken, read_config_bytes, ActivateError, Activation, EventCtx, LogBudget, VirtioDevice,
    VIRTIO_F_VERSION_1,
};
use crate::devices::rate_limiter::RateLimiter;
use crate::metrics::METRICS;
use mapping::PmemMapping;
use std::sync::Arc;
use virtio_queue::QueueT;
use vmm_sys_util::epoll::EventSet;

/// The virtio device id of a pmem device.
pub const DEVICE_ID: u32 = 27;
pub const QUEUE_SIZE: u16 = 256;

pub struct Pmem {
    id: String,
    /// `start` and `size`, little-endian.
    config: [u8; 16],
    mapping: Arc<PmemMapping>,
    active: Option<SingleQueue>,
    /// `None`: nothing is limited (unit tests, the fuzz target).
    limiter: Option<RateLimiter>,
    warnings: LogBudget,
}

impl Pmem {
    /// A device for `mapping`, which the guest sees at `start`.
    pub fn new(id: &str, mapping: Arc<PmemMapping>, start: u64) -> Pmem {
        let size = crate::vstate::vm::SlotMemory::size(mapping.as_ref());
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&start.to_le_bytes());
        config[8..].copy_from_slice(&size.to_le_bytes());
        Pmem {
            id: id.to_string(),
            config,
            mapping,
            active: None,
            limiter: None,
            warnings: LogBudget::new(),
        }
    }

    pub fn with_rate_limiter(mut self, limiter: RateLimiter) -> Pmem {
        self.limiter = Some(limiter);
        self
    }

    /// `PATCH /pmem/{id}`: replaces the buckets `update` gives.
    pub fn update_rate_limiter(&mut self, update: &crate::resources::RateLimiterConfig) {
        if let Some(l) = self.limiter.as_mut() {
            l.update(update);
            crate::log_info!("pmem {}: rate limiter now {:?}", self.id, l.config());
        }
    }

    /// Serves the flush requests posted so far (at most a ring's worth per event).
    fn process(&mut self, ctx: &mut EventCtx) {
        let Pmem {
            id,
            mapping,
            active,
            limiter,
            warnings,
            ..
        } = self;
        let Some(a) = active.as_mut().filter(|a| !a.broken) else {
            return;
        };
        if limiter.as_ref().is_some_and(RateLimiter::is_blocked)
            || !queue::has_available(&a.queue, &a.mem)
        {
            return;
        }
        // One msync per notification, taken before looking at the requests (a driver that
        // posts only junk is limited too), as Firecracker does.
        if let Some(l) = limiter.as_mut() {
            if !l.consume(mapping.file_len()) {
                METRICS.pmem.rate_limiter_throttled_events.inc();
                ctx.watch(LIMITER_TOKEN, l.timer_fd());
                return;
            }
        }
        let mut status: Option<u32> = None;
        let mut used = false;
        for _ in 0..a.queue.size() {
            let head = match pop_head(&mut a.queue, &a.mem) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    a.broken = true;
                    queue_broken(&format_args!("pmem {id}"), warnings, &a.interrupt, &e);
                    break;
                }
            };
            let parsed = walk_chain(&a.queue, &a.mem, head)
                .map_err(|e| e.to_string())
                .and_then(|chain| request::parse(&chain, &a.mem).map_err(|e| e.to_string()));
            let len = match parsed {
                Ok(status_buf) => {
                    let s = *status.get_or_insert_with(|| flush(id, mapping, warnings));
                    let n = write_stream(&a.mem, &[status_buf], 0, &s.to_le_bytes());
                    u32::try_from(n).unwrap_or(0)
                }
                Err(e) => {
                    METRICS.virtio.invalid_chains.inc();
                    METRICS.pmem.event_fails.inc();
                    crate::log_debug!("pmem {id}: descriptor chain {head} refused: {e}");
                    0
                }
            };
            if let Err(e) = add_used(&mut a.queue, &a.mem, head, len) {
                METRICS.pmem.event_fails.inc();
                a.broken = true;
                queue_broken(&format_args!("pmem {id}"), warnings, &a.interrupt, &e);
                break;
            }
            used = true;
        }
        if queue::has_available(&a.queue, &a.mem) && !a.broken {
            ctx.again();
        }
        if used && a.queue.needs_notification(&a.mem).unwrap_or(true) {
            a.interrupt.signal_used_queue(0);
        }
        if let Some(l) = limiter.as_ref().filter(|l| l.is_blocked()) {
            ctx.watch(LIMITER_TOKEN, l.timer_fd());
        }
    }
}

/// The file made durable: the status a flush answers.
fn flush(id: &str, mapping: &PmemMapping, warnings: &mut LogBudget) -> u32 {
    METRICS.pmem.flush_count.inc();
    match mapping.sync() {
        Ok(()) => request::STATUS_OK,
        Err(e) => {
            METRICS.pmem.flush_fails.inc();
            if warnings.take() {
                crate::log_warn!("pmem {id}: msync of the backing file failed: {e}");
            }
            request::STATUS_FAILED
        }
    }
}

impl VirtioDevice for Pmem {
    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) -> bool {
        METRICS.pmem.cfg_fails.inc();
        false
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.active = Some(SingleQueue::activate(
            activation,
            &METRICS.pmem.activate_fails,
        )?);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn queue_positions(&self) -> Option<Vec<super::QueuePosition>> {
        Some(self.positions())
    }

    fn rate_limiters_mut(&mut self) -> Vec<&mut RateLimiter> {
        self.limiter.iter_mut().collect()
    }

    fn process_queue(&mut self, _index: usize, ctx: &mut EventCtx) {
        METRICS.pmem.queue_event_count.inc();
        self.process(ctx);
    }

    fn process_fd(&mut self, token: u64, _events: EventSet, ctx: &mut EventCtx) {
        let active = self.active.is_some();
        let fired = &METRICS.pmem.rate_limiter_event_count;
        if limiter_event(self.limiter.as_mut(), token, active, ctx, fired) {
            self.process(ctx);
        }
    }
}

#[cfg(test)]
mod tests;
