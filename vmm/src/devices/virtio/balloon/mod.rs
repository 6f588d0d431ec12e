//! virtio-balloon (`balloon`, `PUT /balloon`): the host asks the guest to give memory back.
//!
//! The host sets the balloon's target (`num_pages`, 4 KiB pages, in the configuration
//! space) and signals a configuration change; the driver gives pages by posting their frame
//! numbers on the inflate queue (the device drops them from the host mapping, see
//! [`discard`]) and takes pages back on the deflate queue (nothing to do: a page comes back
//! when the guest touches it), and writes how many pages it holds in `actual`.
//!
//! Queues, in the virtio spec's order, each present only when its feature was negotiated
//! (so the later ones move down when an earlier one is off): inflate, deflate, stats
//! (`stats_polling_interval_s` > 0, `VIRTIO_BALLOON_F_STATS_VQ`), free page hinting
//! (`free_page_hinting`, `VIRTIO_BALLOON_F_FREE_PAGE_HINT`, [`hinting`]) and free page
//! reporting (`free_page_reporting`, `VIRTIO_BALLOON_F_REPORTING`, [`reporting`]). The
//! driver keeps one buffer of statistics on the stats queue (`stats_queue.rs`); the device
//! reads it ([`stats`]) and keeps it until the polling timer fires, then returns it so that
//! the driver refills and posts it again. `VIRTIO_BALLOON_F_DEFLATE_ON_OOM` is offered when `deflate_on_oom` is
//! set (the guest's driver then deflates under memory pressure on its own). As in
//! Firecracker, `VIRTIO_BALLOON_F_PAGE_POISON` is not offered, so the configuration space
//! is `num_pages`, `actual` and `free_page_hint_cmd_id` (12 bytes, no `poison_val`).
//!
//! Untrusted input: every frame number is checked against guest RAM (counted when out of
//! range or repeated, never a panic), a chain that is not one device-readable list of whole
//! frame numbers is returned unread and counted, reported and hinted ranges are checked
//! against guest RAM and cut to whole pages ([`discard::discard_range`]), and work per event
//! is bounded ([`CHAINS_PER_EVENT`]); a stats queue that floods returns each extra buffer at
//! once.
//!
//! Snapshots (`persist.rs`): the driver's `actual` comes back with the configuration space,
//! the held stats buffer is offered again to the restored device, and the hinting run's
//! state goes with the device's own saved state.

pub mod discard;
pub mod hinting;
mod persist;
mod reporting;
pub mod stats;
mod stats_queue;

use super::queue::{self, add_used, pop_head, read_stream, total_len, walk_chain, Chain};
use super::{
    queue_broken, ActivateError, Activation, EventCtx, Interrupt, LogBudget, VirtioDevice,
    VIRTIO_F_VERSION_1,
};
use crate::devices::timer::{Timer, TimerError};
use crate::metrics::METRICS;
use hinting::Hinting;
use stats::BalloonStats;
use std::sync::Arc;
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
pub const F_FREE_PAGE_HINT: u64 = 1 << 3;
pub const F_REPORTING: u64 = 1 << 5;

const INFLATE: usize = 0;
const DEFLATE: usize = 1;
/// Most queues: inflate, deflate, stats, free page hinting, free page reporting.
const MAX_QUEUES: usize = 5;
const QUEUE_SIZES: [u16; MAX_QUEUES] = [QUEUE_SIZE; MAX_QUEUES];
/// The event-loop token of the statistics timer.
const STATS_TIMER_TOKEN: u64 = 1;
/// Configuration space: `num_pages`, `actual`, `free_page_hint_cmd_id` (u32 each,
/// little-endian).
const CONFIG_LEN: usize = 12;
const ACTUAL_OFFSET: u64 = 4;
const ACTUAL_END: u64 = 8;
const HINT_CMD_OFFSET: usize = 8;

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
    #[error("free page hinting is disabled (free_page_hinting was false when the device was configured)")]
    HintingNotEnabled,
}

/// The device's configuration as `PUT /balloon` gives it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalloonParams {
    pub amount_mib: u32,
    pub deflate_on_oom: bool,
    pub stats_polling_interval_s: u16,
    pub free_page_hinting: bool,
    pub free_page_reporting: bool,
}

/// Which queue is which, from the negotiated features (the spec's order, absent queues
/// taking no index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    count: usize,
    stats: Option<usize>,
    hint: Option<usize>,
    report: Option<usize>,
}

impl Layout {
    fn of(features: u64) -> Layout {
        let mut count = 2;
        let mut next = |bit: u64| {
            (features & bit != 0).then(|| {
                count += 1;
                count - 1
            })
        };
        let stats = next(F_STATS_VQ);
        let hint = next(F_FREE_PAGE_HINT);
        let report = next(F_REPORTING);
        Layout {
            count,
            stats,
            hint,
            report,
        }
    }
}

struct Active {
    mem: GuestMemoryMmap,
    /// Inflate, deflate, and the queues of the negotiated features ([`Layout`]).
    queues: Vec<Queue>,
    layout: Layout,
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
    /// The free page hinting run (host and guest command ids).
    hinting: Hinting,
    /// The configuration came from a snapshot: the next activation is the restored one.
    restored: bool,
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
            hinting: Hinting::default(),
            restored: false,
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

/// Guest RAM in MiB (device memory, such as the virtio-mem region, is not RAM).
fn mem_mib(mem: &GuestMemoryMmap) -> u64 {
    use crate::arch::x86_64::layout::DEVICE_MEMORY_START;
    use vm_memory::GuestMemoryRegion;
    mem.iter()
        .filter(|r| r.start_addr().0 < DEVICE_MEMORY_START)
        .map(|r| r.len())
        .sum::<u64>()
        >> 20
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn id(&self) -> &str {
        ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        let n = Layout::of(self.features()).count;
        QUEUE_SIZES.get(..n).unwrap_or(&QUEUE_SIZES)
    }

    fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1;
        if self.stats_enabled() {
            f |= F_STATS_VQ;
        }
        if self.params.deflate_on_oom {
            f |= F_DEFLATE_ON_OOM;
        }
        if self.params.free_page_hinting {
            f |= F_FREE_PAGE_HINT;
        }
        if self.params.free_page_reporting {
            f |= F_REPORTING;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut c = [0u8; CONFIG_LEN];
        c[..4].copy_from_slice(&self.target_pages.to_le_bytes());
        c[4..8].copy_from_slice(&self.actual_pages.to_le_bytes());
        c[HINT_CMD_OFFSET..].copy_from_slice(&self.hinting.host_cmd().to_le_bytes());
        super::read_config_bytes(&c, offset, data);
    }

    /// Only `actual` is the driver's to write (whole or in part).
    fn write_config(&mut self, offset: u64, data: &[u8]) -> bool {
        let Some(end) = offset.checked_add(data.len() as u64) else {
            return false;
        };
        if offset < ACTUAL_OFFSET || end > ACTUAL_END {
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
        let layout = Layout::of(features & self.features());
        let required: Vec<usize> = (0..layout.count).collect();
        let queues = Activation::take_queue_vec(queues, layout.count, &required, fails)?;
        self.held_stats = None;
        self.timer_running = false;
        let restored = std::mem::take(&mut self.restored);
        self.active = Some(Active {
            mem,
            queues,
            layout,
            interrupt,
            broken: false,
        });
        if restored && layout.hint.is_some() {
            // As Firecracker: a restored guest may take back the pages of any run.
            self.set_hint_cmd(hinting::CMD_ID_DONE);
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.held_stats = None;
        self.timer_running = false;
        self.actual_pages = 0;
        self.hinting = Hinting::default();
        // A device restored unstarted is started afresh by its driver.
        self.restored = false;
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

    fn save_device_state(&self) -> Vec<u8> {
        self.hinting.to_bytes()
    }

    fn restore_device_state(&mut self, saved: &[u8]) -> Result<(), String> {
        self.take_saved_hinting(saved)
    }

    fn process_queue(&mut self, index: usize, ctx: &mut EventCtx) {
        let Some(layout) = self.active.as_ref().map(|a| a.layout) else {
            return;
        };
        match Some(index) {
            Some(INFLATE) => self.inflate(ctx),
            Some(DEFLATE) => self.deflate(ctx),
            i if i == layout.stats => self.stats_posted(ctx),
            i if i == layout.hint => self.hints_posted(index, ctx),
            i if i == layout.report => self.reports_posted(index, ctx),
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
mod free_page_tests;
#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests;
