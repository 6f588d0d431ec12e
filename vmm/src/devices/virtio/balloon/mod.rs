//! virtio-balloon (`balloon`, `PUT /balloon`): the host asks the guest to give memory back.
//!
//! The host sets the balloon's target (`num_pages`, 4 KiB pages, in the configuration
//! space) and signals a configuration change; the driver gives pages by posting their frame
//! numbers on the inflate queue (the device drops them from the host mapping, see
//! [`discard`]) and takes pages back on the deflate queue (nothing to do: a page comes back
//! when the guest touches it), and writes how many pages it holds in `actual`.
//!
//! Queues: inflate, deflate, and with statistics (`stats_polling_interval_s` > 0,
//! `VIRTIO_BALLOON_F_STATS_VQ`) the stats queue. The driver keeps one buffer of statistics
//! there; the device reads it ([`stats`]) and keeps it until the polling timer fires, then
//! returns it so that the driver refills and posts it again. `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`
//! is offered when `deflate_on_oom` is set (the guest's driver then deflates under memory
//! pressure on its own). Free page hinting and reporting are not offered.
//!
//! Untrusted input: every frame number is checked against guest RAM (counted when out of
//! range or repeated, never a panic), a chain that is not one device-readable list of whole
//! frame numbers is returned unread and counted, and work per event is bounded
//! ([`CHAINS_PER_EVENT`]); a stats queue that floods returns each extra buffer at once.
//!
//! Snapshots (`persist.rs`): the driver's `actual` comes back with the configuration space,
//! the held stats buffer is offered again to the restored device.

pub mod discard;
mod persist;
pub mod stats;

use super::queue::{self, add_used, pop_head, read_stream, total_len, walk_chain, Chain};
use super::{
    queue_broken, ActivateError, Activation, EventCtx, Interrupt, LogBudget, VirtioDevice,
    VIRTIO_F_VERSION_1,
};
use crate::devices::timer::{Timer, TimerError};
use crate::metrics::METRICS;
use stats::BalloonStats;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

/// virtio device id of a memory balloon.
pub const DEVICE_TYPE: u32 = 5;
pub const QUEUE_SIZE: u16 = 256;
/// The device's id (logs), Firecracker's.
pub const ID: &str = "balloon";
/// Most frame numbers in one inflate chain (Linux's driver sends at most 256).
pub const MAX_PFNS_PER_CHAIN: usize = 256;
/// Chains handled per queue event before the queue waits for its next turn.
pub const CHAINS_PER_EVENT: usize = 64;
/// 4 KiB pages per MiB.
pub const PAGES_PER_MIB: u32 = 256;

pub const F_STATS_VQ: u64 = 1 << 1;
pub const F_DEFLATE_ON_OOM: u64 = 1 << 2;

const INFLATE: usize = 0;
const DEFLATE: usize = 1;
const STATS: usize = 2;
/// The event-loop token of the statistics timer.
const STATS_TIMER_TOKEN: u64 = 1;
/// Configuration space: `num_pages` then `actual` (u32 each, little-endian).
const CONFIG_LEN: usize = 8;
const ACTUAL_OFFSET: u64 = 4;

/// Why a balloon request of the host failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BalloonError {
    #[error("the balloon device is not activated yet (the guest's driver has not started it)")]
    NotActivated,
    #[error("amount_mib {amount_mib} is more than the guest's memory ({mem_mib} MiB)")]
    TooLarge { amount_mib: u32, mem_mib: u64 },
    #[error(
        "statistics are disabled (stats_polling_interval_s was 0 when the device was configured)"
    )]
    StatsDisabled,
    #[error("statistics cannot be turned on or off after the device was configured (stats_polling_interval_s {from} to {to})")]
    StatsStateChange { from: u16, to: u16 },
    #[error("cannot arm the statistics timer: {0}")]
    Timer(String),
}

/// The device's configuration as `PUT /balloon` gives it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalloonParams {
    pub amount_mib: u32,
    pub deflate_on_oom: bool,
    pub stats_polling_interval_s: u16,
}

struct Active {
    mem: GuestMemoryMmap,
    /// Inflate, deflate, and the stats queue when statistics were negotiated.
    queues: Vec<Queue>,
    interrupt: Arc<Interrupt>,
    broken: bool,
}

pub struct Balloon {
    params: BalloonParams,
    /// `num_pages`: the target in 4 KiB pages.
    target_pages: u32,
    /// `actual`: what the driver says it holds.
    actual_pages: u32,
    stats: BalloonStats,
    /// The driver's stats buffer, kept until the next poll.
    held_stats: Option<u16>,
    /// `None` without statistics.
    timer: Option<Timer>,
    /// The timer runs (armed on the VMM thread when the driver first posts its buffer:
    /// activation happens on a vCPU thread, whose seccomp filter has no timerfd calls).
    timer_running: bool,
    active: Option<Active>,
    warnings: LogBudget,
}

impl Balloon {
    /// A balloon with `params` (validated by the resources: the amount fits the guest).
    /// The statistics timer is created here, before the VMM thread's seccomp filter.
    pub fn new(params: BalloonParams) -> Result<Balloon, TimerError> {
        let timer = if params.stats_polling_interval_s > 0 {
            Some(Timer::new()?)
        } else {
            None
        };
        Ok(Balloon {
            params,
            target_pages: params.amount_mib.saturating_mul(PAGES_PER_MIB),
            actual_pages: 0,
            stats: BalloonStats::default(),
            held_stats: None,
            timer,
            timer_running: false,
            active: None,
            warnings: LogBudget::new(),
        })
    }

    pub fn params(&self) -> BalloonParams {
        self.params
    }

    fn stats_enabled(&self) -> bool {
        self.params.stats_polling_interval_s > 0
    }

    /// `PATCH /balloon`: a new target; the driver is told by a configuration change.
    pub fn update_size(&mut self, amount_mib: u32) -> Result<(), BalloonError> {
        let a = self.active.as_ref().ok_or(BalloonError::NotActivated)?;
        let mem_mib = mem_mib(&a.mem);
        if u64::from(amount_mib) > mem_mib {
            return Err(BalloonError::TooLarge {
                amount_mib,
                mem_mib,
            });
        }
        self.params.amount_mib = amount_mib;
        self.target_pages = amount_mib.saturating_mul(PAGES_PER_MIB);
        a.interrupt.signal_config_change();
        Ok(())
    }

    /// `PATCH /balloon/statistics`: a new polling interval (statistics stay on or off as
    /// configured). The held buffer is returned now so that the new interval starts with
    /// fresh values.
    pub fn update_stats_interval(&mut self, interval_s: u16) -> Result<(), BalloonError> {
        let from = self.params.stats_polling_interval_s;
        if from == interval_s {
            return Ok(());
        }
        if from == 0 || interval_s == 0 {
            return Err(BalloonError::StatsStateChange {
                from,
                to: interval_s,
            });
        }
        self.params.stats_polling_interval_s = interval_s;
        self.return_stats_buffer();
        self.arm_timer()?;
        self.timer_running = self.active.is_some();
        Ok(())
    }

    /// `GET /balloon/statistics`.
    pub fn latest_stats(&self) -> Result<BalloonStats, BalloonError> {
        if !self.stats_enabled() {
            return Err(BalloonError::StatsDisabled);
        }
        Ok(BalloonStats {
            target_pages: self.target_pages,
            actual_pages: self.actual_pages,
            target_mib: self.target_pages / PAGES_PER_MIB,
            actual_mib: self.actual_pages / PAGES_PER_MIB,
            ..self.stats
        })
    }

    fn arm_timer(&self) -> Result<(), BalloonError> {
        match &self.timer {
            Some(t) => t
                .arm(Duration::from_secs(u64::from(
                    self.params.stats_polling_interval_s,
                )))
                .map_err(|e| BalloonError::Timer(e.to_string())),
            None => Ok(()),
        }
    }

    /// Gives the driver its stats buffer back (asking for fresh values).
    fn return_stats_buffer(&mut self) {
        let Some(head) = self.held_stats.take() else {
            return;
        };
        let Some(a) = self.active.as_mut().filter(|a| !a.broken) else {
            return;
        };
        let Some(q) = a.queues.get_mut(STATS) else {
            return;
        };
        if let Err(e) = add_used(q, &a.mem, head, 0) {
            a.broken = true;
            queue_broken(&"the balloon", &mut self.warnings, &a.interrupt, &e);
            return;
        }
        a.interrupt.signal_used_queue(STATS);
    }

    /// Pops up to [`CHAINS_PER_EVENT`] chains of queue `index` and hands each to `take`
    /// before it is returned used (length 0: the device writes nothing).
    fn drain<F>(&mut self, index: usize, ctx: &mut EventCtx, mut take: F)
    where
        F: FnMut(&GuestMemoryMmap, Result<Chain, queue::ChainError>),
    {
        let Balloon {
            active, warnings, ..
        } = self;
        let Some(a) = active.as_mut().filter(|a| !a.broken) else {
            return;
        };
        let Some(q) = a.queues.get_mut(index) else {
            return;
        };
        let mut used = false;
        for served in 0.. {
            if served >= CHAINS_PER_EVENT {
                if queue::has_available(q, &a.mem) {
                    ctx.again();
                }
                break;
            }
            let head = match pop_head(q, &a.mem) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    a.broken = true;
                    queue_broken(&"the balloon", warnings, &a.interrupt, &e);
                    return;
                }
            };
            take(&a.mem, walk_chain(q, &a.mem, head));
            if let Err(e) = add_used(q, &a.mem, head, 0) {
                a.broken = true;
                METRICS.balloon.event_fails.inc();
                queue_broken(&"the balloon", warnings, &a.interrupt, &e);
                return;
            }
            used = true;
        }
        if used && q.needs_notification(&a.mem).unwrap_or(true) {
            a.interrupt.signal_used_queue(index);
        }
    }

    /// The inflate queue: each chain's frame numbers are given back to the host before the
    /// chain is returned to the driver.
    fn inflate(&mut self, ctx: &mut EventCtx) {
        METRICS.balloon.inflate_count.inc();
        self.drain(INFLATE, ctx, |mem, chain| {
            if let Some(mut batch) = read_pfns(mem, chain) {
                discard::discard_pfns(mem, &mut batch);
            }
        });
    }

    /// The deflate queue: the pages come back when the guest touches them; the chains are
    /// only checked (for the metrics) and returned.
    fn deflate(&mut self, ctx: &mut EventCtx) {
        METRICS.balloon.deflate_count.inc();
        self.drain(DEFLATE, ctx, |mem, chain| {
            if let Some(batch) = read_pfns(mem, chain) {
                METRICS.balloon.deflated_pages.add(batch.len() as u64);
            }
        });
    }

    /// The stats queue: the newest buffer is read and kept; an older one still held (a
    /// driver that posts more than one) is returned at once.
    fn stats_posted(&mut self, ctx: &mut EventCtx) {
        if let Some(t) = &self.timer {
            ctx.watch(STATS_TIMER_TOKEN, t.as_raw_fd());
            if !self.timer_running && self.active.is_some() {
                match self.arm_timer() {
                    Ok(()) => self.timer_running = true,
                    Err(e) => {
                        if self.warnings.take() {
                            crate::log_warn!("balloon: {e}; statistics will not be polled");
                        }
                    }
                }
            }
        }
        let Balloon {
            active,
            held_stats,
            stats,
            warnings,
            ..
        } = self;
        let Some(a) = active.as_mut().filter(|a| !a.broken) else {
            return;
        };
        let Some(q) = a.queues.get_mut(STATS) else {
            return;
        };
        let mut returned = false;
        for served in 0..=CHAINS_PER_EVENT {
            if served == CHAINS_PER_EVENT {
                if queue::has_available(q, &a.mem) {
                    ctx.again();
                }
                break;
            }
            let head = match pop_head(q, &a.mem) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    a.broken = true;
                    queue_broken(&"the balloon", warnings, &a.interrupt, &e);
                    return;
                }
            };
            METRICS.balloon.stats_updates_count.inc();
            if let Some(old) = held_stats.replace(head) {
                METRICS.balloon.stats_update_fails.inc();
                if let Err(e) = add_used(q, &a.mem, old, 0) {
                    a.broken = true;
                    queue_broken(&"the balloon", warnings, &a.interrupt, &e);
                    return;
                }
                returned = true;
            }
            match walk_chain(q, &a.mem, head) {
                Ok(chain) if chain.writable.is_empty() => {
                    let mut buf = [0u8; stats::ENTRY_LEN * stats::MAX_ENTRIES];
                    let want = usize::try_from(total_len(&chain.readable))
                        .unwrap_or(usize::MAX)
                        .min(buf.len());
                    let n = read_stream(&a.mem, &chain.readable, 0, &mut buf[..want]);
                    stats.update(&buf[..n]);
                }
                Ok(_) => METRICS.balloon.stats_update_fails.inc(),
                Err(_) => {
                    METRICS.virtio.invalid_chains.inc();
                    METRICS.balloon.stats_update_fails.inc();
                }
            }
        }
        if returned {
            a.interrupt.signal_used_queue(STATS);
        }
    }
}

/// The frame numbers of one inflate or deflate chain: one or more device-readable buffers
/// of whole u32s, at most [`MAX_PFNS_PER_CHAIN`]. Anything else is counted and skipped.
fn read_pfns(mem: &GuestMemoryMmap, chain: Result<Chain, queue::ChainError>) -> Option<Vec<u32>> {
    let chain = match chain {
        Ok(c) => c,
        Err(_) => {
            METRICS.virtio.invalid_chains.inc();
            METRICS.balloon.event_fails.inc();
            return None;
        }
    };
    let len = total_len(&chain.readable);
    if !chain.writable.is_empty() || !len.is_multiple_of(4) || len > (MAX_PFNS_PER_CHAIN * 4) as u64
    {
        METRICS.balloon.event_fails.inc();
        return None;
    }
    let mut buf = [0u8; MAX_PFNS_PER_CHAIN * 4];
    let want = usize::try_from(len).unwrap_or(0);
    let n = read_stream(mem, &chain.readable, 0, &mut buf[..want]);
    if n != want {
        METRICS.balloon.event_fails.inc();
        return None;
    }
    Some(
        buf[..n]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// Guest RAM in MiB.
fn mem_mib(mem: &GuestMemoryMmap) -> u64 {
    use vm_memory::GuestMemoryRegion;
    mem.iter().map(|r| r.len()).sum::<u64>() >> 20
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn id(&self) -> &str {
        ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        if self.stats_enabled() {
            &[QUEUE_SIZE; 3]
        } else {
            &[QUEUE_SIZE; 2]
        }
    }

    fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1;
        if self.stats_enabled() {
            f |= F_STATS_VQ;
        }
        if self.params.deflate_on_oom {
            f |= F_DEFLATE_ON_OOM;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut c = [0u8; CONFIG_LEN];
        c[..4].copy_from_slice(&self.target_pages.to_le_bytes());
        c[4..].copy_from_slice(&self.actual_pages.to_le_bytes());
        super::read_config_bytes(&c, offset, data);
    }

    /// Only `actual` is the driver's to write (whole or in part).
    fn write_config(&mut self, offset: u64, data: &[u8]) -> bool {
        let Some(end) = offset.checked_add(data.len() as u64) else {
            return false;
        };
        if offset < ACTUAL_OFFSET || end > CONFIG_LEN as u64 {
            return false;
        }
        let mut bytes = self.actual_pages.to_le_bytes();
        let Ok(from) = usize::try_from(offset - ACTUAL_OFFSET) else {
            return false;
        };
        match bytes.get_mut(from..from + data.len()) {
            Some(dst) => dst.copy_from_slice(data),
            None => return false,
        }
        self.actual_pages = u32::from_le_bytes(bytes);
        true
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let Activation {
            mem,
            queues,
            interrupt,
            features,
        } = activation;
        let fails = &METRICS.balloon.activate_fails;
        let queues = if self.stats_enabled() && features & F_STATS_VQ != 0 {
            Vec::from(Activation::take_queues::<3>(queues, &[0, 1, 2], fails)?)
        } else {
            Vec::from(Activation::take_queues::<2>(queues, &[0, 1], fails)?)
        };
        self.held_stats = None;
        self.timer_running = false;
        self.active = Some(Active {
            mem,
            queues,
            interrupt,
            broken: false,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.held_stats = None;
        self.timer_running = false;
        self.actual_pages = 0;
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn queue_positions(&self) -> Option<Vec<super::QueuePosition>> {
        Some(self.positions())
    }

    fn restore_config(&mut self, saved: &[u8]) {
        self.take_saved_config(saved);
    }

    fn process_queue(&mut self, index: usize, ctx: &mut EventCtx) {
        match index {
            INFLATE => self.inflate(ctx),
            DEFLATE => self.deflate(ctx),
            STATS => self.stats_posted(ctx),
            _ => {}
        }
    }

    fn process_fd(&mut self, token: u64, _events: EventSet, ctx: &mut EventCtx) {
        let Some(t) = self.timer.as_ref().filter(|_| token == STATS_TIMER_TOKEN) else {
            ctx.unwatch(token);
            return;
        };
        if !t.consume() {
            return;
        }
        if self.active.is_none() {
            ctx.unwatch(token);
            return;
        }
        self.return_stats_buffer();
        if let Err(e) = self.arm_timer() {
            if self.warnings.take() {
                crate::log_warn!("balloon: {e}");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests;
