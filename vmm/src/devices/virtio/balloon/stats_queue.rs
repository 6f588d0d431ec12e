//! The balloon's statistics queue and its polling timer: the driver keeps one buffer of
//! statistics on the queue; the device reads it ([`super::stats`]) and keeps it until the
//! timer fires every `stats_polling_interval_s`, then returns it so that the driver refills
//! and posts it again. A driver that posts more than one gets the older back at once.

use super::queue::{self, add_used, pop_head, read_stream, total_len, walk_chain};
use super::stats::{self, BalloonStats};
use super::{
    queue_broken, Balloon, BalloonError, EventCtx, CHAINS_PER_EVENT, PAGES_PER_MIB,
    STATS_TIMER_TOKEN,
};
use crate::metrics::METRICS;
use std::os::fd::AsRawFd;
use std::time::Duration;

impl Balloon {
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

    pub(super) fn arm_timer(&self) -> Result<(), BalloonError> {
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
    pub(super) fn return_stats_buffer(&mut self) {
        let Some(head) = self.held_stats.take() else {
            return;
        };
        let Some(a) = self.active.as_mut().filter(|a| !a.broken) else {
            return;
        };
        let Some(index) = a.layout.stats else {
            return;
        };
        let Some(q) = a.queues.get_mut(index) else {
            return;
        };
        if let Err(e) = add_used(q, &a.mem, head, 0) {
            a.broken = true;
            queue_broken(&"the balloon", &mut self.warnings, &a.interrupt, &e);
            return;
        }
        a.interrupt.signal_used_queue(index);
    }

    /// The stats queue: the newest buffer is read and kept; an older one still held (a
    /// driver that posts more than one) is returned at once.
    pub(super) fn stats_posted(&mut self, ctx: &mut EventCtx) {
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
        let Some(index) = a.layout.stats else {
            return;
        };
        let Some(q) = a.queues.get_mut(index) else {
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
            a.interrupt.signal_used_queue(index);
        }
    }
}
