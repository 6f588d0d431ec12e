//! Token buckets, Firecracker's semantics: what a drive, a network interface's receive or
//! transmit side, or the entropy device may consume, in bytes and in operations.
//!
//! A [`TokenBucket`] starts full (`size` tokens) with its `one_time_burst` on top, which is
//! spent first and never comes back; the bucket refills continuously at `size` tokens per
//! `refill_time`, from when the burst is gone. A request takes its tokens whole or not at
//! all; one larger than the whole bucket is let through once the bucket is at hand and
//! leaves a debt that the refill pays off.
//!
//! A [`RateLimiter`] holds a bytes bucket and an ops bucket (each optional) and a
//! [`Timer`]. When a request does not fit, the limiter is blocked and its timer armed for
//! the moment the refill covers it (at least [`MIN_WAIT`]); the device stops taking work
//! from its queue (the request stays in the ring), watches the timer's descriptor in the
//! event loop, and calls [`RateLimiter::on_timer`] and goes on when it fires. Firecracker
//! re-checks after a fixed 100 ms; waiting exactly the refill time keeps the configured rate
//! for small buckets too. `PATCH` replaces buckets of a running limiter
//! ([`RateLimiter::update`]) and takes effect at once, for a request already waiting too.
//!
//! Time comes in as an argument (`*_at(now)`) so that the arithmetic is tested without
//! sleeping; the devices pass `Instant::now()`. Snapshots save and restore the buckets'
//! tokens ([`persist`]).

use super::timer::{Timer, TimerError};
use crate::resources::{RateLimiterConfig, TokenBucketConfig};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

pub mod persist;

/// The shortest wait armed: a bucket that refills a token per nanosecond must not make the
/// VMM thread spin on its timer.
pub const MIN_WAIT: Duration = Duration::from_millis(1);

const NANOS_PER_MS: u128 = 1_000_000;

/// `ns` nanoseconds as a `Duration` (saturating at `u64::MAX` seconds).
fn nanos(ns: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let secs = u64::try_from(ns / NANOS_PER_SEC).unwrap_or(u64::MAX);
    // Below 10^9: fits.
    let sub = u32::try_from(ns % NANOS_PER_SEC).unwrap_or(0);
    Duration::new(secs, sub)
}

/// Whether a request fits a bucket now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Fits,
    /// Not yet: it will after this long.
    Wait(Duration),
}

/// One bucket of tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    size: u64,
    /// `refill_time` in nanoseconds (non-zero).
    refill_ns: u128,
    initial_burst: u64,
    burst: u64,
    budget: u64,
    /// Tokens taken beyond the bucket (a request larger than `size`), paid off by the refill
    /// before the budget grows again.
    debt: u64,
    /// The refill accounts for time up to here.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket, or `None` when `cfg` limits nothing (size or refill time 0).
    pub fn new(cfg: &TokenBucketConfig, now: Instant) -> Option<TokenBucket> {
        if !cfg.is_enabled() {
            return None;
        }
        let burst = cfg.one_time_burst.unwrap_or(0);
        Some(TokenBucket {
            size: cfg.size,
            refill_ns: u128::from(cfg.refill_time) * NANOS_PER_MS,
            initial_burst: burst,
            burst,
            budget: cfg.size,
            debt: 0,
            last: now,
        })
    }

    /// The bucket's configuration.
    pub fn config(&self) -> TokenBucketConfig {
        TokenBucketConfig {
            size: self.size,
            one_time_burst: (self.initial_burst != 0).then_some(self.initial_burst),
            refill_time: u64::try_from(self.refill_ns / NANOS_PER_MS).unwrap_or(u64::MAX),
        }
    }

    /// Tokens usable now (burst and budget).
    pub fn available_at(&mut self, now: Instant) -> u64 {
        self.refill(now);
        self.burst.saturating_add(self.budget)
    }

    /// Adds the tokens the time since `last` earned: `size` per `refill_ns`, continuously.
    /// Only whole tokens are added, and `last` moves by exactly the time they took, so no
    /// fraction is lost between calls.
    fn refill(&mut self, now: Instant) {
        if self.burst > 0 {
            // The refill starts once the burst is spent.
            self.last = now;
            return;
        }
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let size = u128::from(self.size);
        let tokens = elapsed.saturating_mul(size) / self.refill_ns;
        let room = u128::from(self.debt) + u128::from(self.size - self.budget);
        if tokens >= room {
            self.debt = 0;
            self.budget = self.size;
            self.last = now;
            return;
        }
        // tokens * refill_ns <= elapsed * size < 2^128: no overflow. The time the tokens
        // took is at most `elapsed`, so `last` never passes `now`.
        let used_ns = (tokens * self.refill_ns).div_ceil(size);
        self.last = self
            .last
            .checked_add(nanos(used_ns))
            .unwrap_or(now)
            .min(now);
        let tokens = u64::try_from(tokens).unwrap_or(u64::MAX);
        let paid = tokens.min(self.debt);
        self.debt -= paid;
        self.budget = self.budget.saturating_add(tokens - paid).min(self.size);
    }

    /// How long until `missing` more tokens have been earned.
    fn time_for(&self, missing: u64, now: Instant) -> Duration {
        let ns = u128::from(missing)
            .saturating_mul(self.refill_ns)
            .div_ceil(u128::from(self.size));
        let since = now.saturating_duration_since(self.last).as_nanos();
        nanos(ns.saturating_sub(since))
    }

    fn verdict(&mut self, tokens: u64, now: Instant) -> Verdict {
        self.refill(now);
        let have = self.burst.saturating_add(self.budget);
        if tokens <= have {
            return Verdict::Fits;
        }
        if tokens > self.size.saturating_add(self.burst) {
            // Can never fit: let it through once the bucket is full (and debt-free).
            if self.debt == 0 && self.budget == self.size {
                return Verdict::Fits;
            }
            let missing = self.debt + (self.size - self.budget);
            return Verdict::Wait(self.time_for(missing, now));
        }
        Verdict::Wait(self.time_for(tokens - have + self.debt, now))
    }

    /// Takes `tokens` after [`Self::verdict`] said they fit. Returns the wait until the
    /// bucket has paid off what the request took beyond it (a request larger than the
    /// bucket), if any.
    fn take(&mut self, tokens: u64, now: Instant) -> Option<Duration> {
        let from_burst = tokens.min(self.burst);
        self.burst -= from_burst;
        if self.burst == 0 && from_burst > 0 {
            self.last = now;
        }
        let rest = tokens - from_burst;
        if rest <= self.budget {
            self.budget -= rest;
            return None;
        }
        self.debt = self.debt.saturating_add(rest - self.budget);
        self.budget = 0;
        Some(self.time_for(self.debt, now))
    }

    /// Takes `tokens` if they fit now; otherwise takes nothing and returns false (the
    /// serial output drops what does not fit).
    pub fn try_take_at(&mut self, tokens: u64, now: Instant) -> bool {
        if self.available_at(now) < tokens {
            return false;
        }
        self.take(tokens, now);
        true
    }
}

/// A device's limiter: a bucket of bytes and one of operations, and the timer it waits on
/// when blocked.
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: Timer,
    blocked: bool,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("bandwidth", &self.bandwidth)
            .field("ops", &self.ops)
            .field("blocked", &self.blocked)
            .finish()
    }
}

impl RateLimiter {
    /// A limiter with `cfg`'s buckets (none: it limits nothing until a `PATCH` gives it
    /// some). The timer is created in any case, while the VM is built: afterwards the run
    /// loop's seccomp filter allows no new descriptors.
    pub fn new(cfg: Option<&RateLimiterConfig>) -> Result<RateLimiter, TimerError> {
        let now = Instant::now();
        let bucket = |b: Option<TokenBucketConfig>| b.and_then(|b| TokenBucket::new(&b, now));
        Ok(RateLimiter {
            bandwidth: bucket(cfg.and_then(|c| c.bandwidth)),
            ops: bucket(cfg.and_then(|c| c.ops)),
            timer: Timer::new()?,
            blocked: false,
        })
    }

    /// Waiting for its timer: the device takes no work until [`Self::on_timer`].
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Whether any bucket is set.
    pub fn is_limiting(&self) -> bool {
        self.bandwidth.is_some() || self.ops.is_some()
    }

    /// The descriptor to watch while blocked.
    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// One request of `bytes` bytes: takes one op and `bytes` tokens, both or neither. When
    /// they do not fit, the limiter blocks and arms its timer; returns false.
    pub fn consume(&mut self, bytes: u64) -> bool {
        self.consume_at(bytes, Instant::now())
    }

    pub fn consume_at(&mut self, bytes: u64, now: Instant) -> bool {
        if self.blocked {
            return false;
        }
        let wants = [(self.ops.as_mut(), 1u64), (self.bandwidth.as_mut(), bytes)];
        let mut wait: Option<Duration> = None;
        for (bucket, tokens) in wants {
            if let Some(b) = bucket {
                if let Verdict::Wait(d) = b.verdict(tokens, now) {
                    wait = wait.max(Some(d));
                }
            }
        }
        if let Some(d) = wait {
            self.block(d);
            return false;
        }
        let mut debt: Option<Duration> = None;
        for (bucket, tokens) in [(self.ops.as_mut(), 1u64), (self.bandwidth.as_mut(), bytes)] {
            if let Some(b) = bucket {
                debt = debt.max(b.take(tokens, now));
            }
        }
        if let Some(d) = debt {
            self.block(d);
        }
        true
    }

    fn block(&mut self, wait: Duration) {
        match self.timer.arm(wait.max(MIN_WAIT)) {
            Ok(()) => self.blocked = true,
            // Without a timer nothing would unblock the device: rather let it run
            // unlimited than stall the guest for good.
            Err(e) => crate::log_error!("rate limiter: {e}; not limiting this request"),
        }
    }

    /// The timer fired (its descriptor was readable): the device may go on. Returns whether
    /// the limiter was blocked.
    pub fn on_timer(&mut self) -> bool {
        let _ = self.timer.consume();
        std::mem::replace(&mut self.blocked, false)
    }

    /// `PATCH`: replaces the buckets `update` gives (a disabled one removes the bucket);
    /// the others stay as they are, with their tokens. A blocked limiter's timer is re-armed
    /// to fire at once, so that the waiting request is judged by the new buckets now rather
    /// than when the old ones would have refilled (Firecracker waits for the old timer).
    pub fn update(&mut self, update: &RateLimiterConfig) {
        let now = Instant::now();
        for (slot, new) in [
            (&mut self.bandwidth, update.bandwidth),
            (&mut self.ops, update.ops),
        ] {
            if let Some(cfg) = new {
                *slot = TokenBucket::new(&cfg, now);
            }
        }
        if self.blocked {
            self.block(Duration::ZERO);
        }
    }

    /// The running buckets' configuration.
    pub fn config(&self) -> RateLimiterConfig {
        RateLimiterConfig {
            bandwidth: self.bandwidth.as_ref().map(TokenBucket::config),
            ops: self.ops.as_ref().map(TokenBucket::config),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(size: u64, burst: u64, refill_ms: u64) -> TokenBucketConfig {
        TokenBucketConfig {
            size,
            one_time_burst: (burst > 0).then_some(burst),
            refill_time: refill_ms,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn disabled_buckets_are_none() {
        let t = Instant::now();
        assert!(TokenBucket::new(&bucket(0, 5, 100), t).is_none());
        assert!(TokenBucket::new(&bucket(5, 5, 0), t).is_none());
    }

    #[test]
    fn a_bucket_starts_full_and_refills_continuously() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&bucket(1000, 0, 1000), t0).unwrap();
        assert_eq!(b.available_at(t0), 1000);
        assert_eq!(b.verdict(1000, t0), Verdict::Fits);
        assert_eq!(b.take(1000, t0), None);
        assert_eq!(b.available_at(t0), 0);
        // 1 token per ms.
        assert_eq!(b.verdict(10, t0), Verdict::Wait(ms(10)));
        assert_eq!(b.available_at(t0 + ms(250)), 250);
        // Fractions are not lost: 0.5 ms + 0.5 ms is one token.
        let mut b = TokenBucket::new(&bucket(1000, 0, 1000), t0).unwrap();
        b.take(1000, t0);
        assert_eq!(b.available_at(t0 + Duration::from_micros(500)), 0);
        assert_eq!(b.available_at(t0 + Duration::from_micros(1000)), 1);
        assert_eq!(b.available_at(t0 + Duration::from_micros(2999)), 2);
        // Never more than the size.
        assert_eq!(b.available_at(t0 + ms(60_000)), 1000);
    }

    #[test]
    fn the_burst_is_spent_first_and_the_refill_starts_after_it() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&bucket(100, 50, 100), t0).unwrap();
        assert_eq!(b.available_at(t0), 150);
        assert!(b.try_take_at(40, t0));
        assert_eq!((b.burst, b.budget), (10, 100));
        // While burst remains, time earns nothing (the bucket is full anyway).
        assert_eq!(b.available_at(t0 + ms(1000)), 110);
        assert!(b.try_take_at(110, t0 + ms(1000)));
        assert_eq!(b.available_at(t0 + ms(1000)), 0);
        assert_eq!(b.available_at(t0 + ms(1050)), 50);
        // The burst never comes back.
        assert_eq!(b.available_at(t0 + ms(9000)), 100);
    }

    #[test]
    fn a_request_that_does_not_fit_takes_nothing() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&bucket(10, 0, 10), t0).unwrap();
        assert!(b.try_take_at(8, t0));
        assert!(!b.try_take_at(3, t0));
        assert_eq!(b.available_at(t0), 2);
        assert_eq!(b.verdict(3, t0), Verdict::Wait(ms(1)));
    }

    #[test]
    fn a_request_larger_than_the_bucket_passes_once_and_leaves_a_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&bucket(100, 0, 100), t0).unwrap();
        assert_eq!(b.verdict(250, t0), Verdict::Fits);
        assert_eq!(b.take(250, t0), Some(ms(150)));
        assert_eq!(b.available_at(t0 + ms(100)), 0, "paying the debt off");
        assert_eq!(b.verdict(250, t0 + ms(100)), Verdict::Wait(ms(150)));
        assert_eq!(b.available_at(t0 + ms(200)), 50);
        // Once full again the next large request passes.
        assert_eq!(b.verdict(250, t0 + ms(250)), Verdict::Fits);
        // A partly drained bucket waits for the rest of its refill first.
        let mut b = TokenBucket::new(&bucket(100, 0, 100), t0).unwrap();
        b.take(60, t0);
        assert_eq!(b.verdict(250, t0), Verdict::Wait(ms(60)));
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let t0 = Instant::now();
        let mut b =
            TokenBucket::new(&bucket(u64::MAX, u64::MAX, u64::MAX / 1_000_000), t0).unwrap();
        assert_eq!(b.available_at(t0), u64::MAX);
        assert!(b.try_take_at(u64::MAX, t0));
        assert!(b.try_take_at(u64::MAX, t0));
        // About one token per nanosecond.
        assert_eq!(b.available_at(t0 + ms(1)), 1_000_000);
        let mut b = TokenBucket::new(&bucket(1, 0, 1), t0).unwrap();
        let wait = b.take(u64::MAX, t0).unwrap();
        assert_eq!(wait.as_secs(), (u64::MAX - 1) / 1000);
        assert_eq!(b.verdict(1, t0), Verdict::Wait(wait + ms(1)));
        assert_eq!(b.available_at(t0 + Duration::from_secs(1 << 40)), 0);
        assert!(b.last <= t0 + Duration::from_secs(1 << 40));
    }

    #[test]
    fn the_limiter_takes_both_buckets_or_neither_and_blocks() {
        let t0 = Instant::now();
        let cfg = RateLimiterConfig {
            bandwidth: Some(bucket(1000, 0, 100)),
            ops: Some(bucket(2, 0, 100)),
        };
        let mut l = RateLimiter::new(Some(&cfg)).unwrap();
        assert!(l.is_limiting());
        assert!(l.consume_at(600, t0));
        // Bytes do not fit: the op is not taken either.
        assert!(!l.consume_at(600, t0));
        assert!(l.is_blocked());
        assert_eq!(l.ops.as_mut().unwrap().available_at(t0), 1);
        // Blocked: nothing passes until the timer.
        assert!(!l.consume_at(1, t0));
        assert!(l.on_timer());
        assert!(!l.is_blocked());
        assert!(l.consume_at(400, t0));
        assert!(!l.consume_at(0, t0), "no op left");
        assert!(l.on_timer());
        assert!(l.consume_at(0, t0 + ms(50)));
    }

    #[test]
    fn the_timer_is_armed_for_the_refill() {
        let cfg = RateLimiterConfig {
            bandwidth: None,
            ops: Some(bucket(1, 0, 20)),
        };
        let mut l = RateLimiter::new(Some(&cfg)).unwrap();
        assert!(l.consume(0));
        assert!(!l.consume(0));
        assert!(l.is_blocked());
        std::thread::sleep(ms(40));
        assert!(l.timer.consume(), "the timer fired");
        l.blocked = false;
        assert!(l.consume(0));
    }

    #[test]
    fn a_limiter_without_buckets_lets_everything_through() {
        let mut l = RateLimiter::new(None).unwrap();
        assert!(!l.is_limiting());
        for _ in 0..1000 {
            assert!(l.consume(u64::MAX));
        }
        assert!(!l.on_timer());
    }

    #[test]
    fn updates_replace_remove_or_keep_buckets() {
        let t0 = Instant::now();
        let cfg = RateLimiterConfig {
            bandwidth: Some(bucket(1000, 0, 100)),
            ops: Some(bucket(1, 0, 100)),
        };
        let mut l = RateLimiter::new(Some(&cfg)).unwrap();
        assert!(l.consume_at(10, t0));
        l.update(&RateLimiterConfig {
            bandwidth: None,
            ops: Some(bucket(0, 0, 0)),
        });
        assert_eq!(
            l.config(),
            RateLimiterConfig {
                bandwidth: Some(bucket(1000, 0, 100)),
                ops: None
            }
        );
        assert_eq!(l.bandwidth.as_mut().unwrap().available_at(t0), 990);
        l.update(&RateLimiterConfig {
            bandwidth: Some(bucket(5, 7, 10)),
            ops: None,
        });
        assert_eq!(l.config().bandwidth, Some(bucket(5, 7, 10)));
        assert_eq!(l.config().ops, None);
    }

    #[test]
    fn an_update_wakes_a_blocked_limiter_at_once() {
        let cfg = RateLimiterConfig {
            bandwidth: None,
            ops: Some(bucket(1, 0, 3_600_000)),
        };
        let mut l = RateLimiter::new(Some(&cfg)).unwrap();
        assert!(l.consume(0));
        assert!(!l.consume(0));
        l.update(&RateLimiterConfig {
            bandwidth: None,
            ops: Some(bucket(0, 0, 0)),
        });
        std::thread::sleep(ms(20));
        assert!(
            l.timer.consume(),
            "re-armed to fire at once, not in an hour"
        );
        assert!(l.on_timer() || !l.is_blocked());
        assert!(l.consume(0));
    }
}
