//! Snapshots of the rate limiters: the tokens each bucket holds, so that a restored device
//! is exactly as limited as the snapshotted one was, not handed a full bucket (a guest that
//! had spent its budget would otherwise get a fresh one with every restore).
//!
//! A bucket's configuration (`size`, `one_time_burst`, `refill_time`) is not saved here: it
//! is in the snapshot's configuration (the drive's `rate_limiter`, the interface's
//! `rx_rate_limiter`/`tx_rate_limiter`, the entropy device's, the serial output's; `PATCH`
//! keeps it current), from which the restored device is built. What is saved is the state
//! beyond it: the budget, what is left of the one-time burst, the debt of a request larger
//! than the bucket, and how long before the snapshot the refill was last accounted for.
//! Restored, the refill goes on from there: the time between the snapshot and the restore
//! does not count (the guest did not run), as it does not for the guest's clock.
//!
//! A limiter waiting for its timer (blocked) is restored unblocked, its timer not armed: the
//! buckets say how long the request that waited must still wait, and the restarted device
//! looks at its queues at once, so that request blocks the limiter again for exactly the
//! rest of its wait. Nothing of the timer needs saving.

use super::{RateLimiter, TokenBucket};
use crate::snapshot::{CodecError, Decoder, Encoder, Persist};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimiterStateError {
    #[error("the snapshot has the state of a {0} bucket, and the configuration has none")]
    UnexpectedBucket(&'static str),
    #[error("the configuration has a {0} bucket, and the snapshot has no state for it")]
    MissingBucket(&'static str),
    #[error("the {bucket} bucket's saved {what} ({value}) is larger than its configured {limit}")]
    OutOfRange {
        bucket: &'static str,
        what: &'static str,
        value: u64,
        limit: u64,
    },
}

/// One bucket's tokens at the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BucketState {
    pub budget: u64,
    /// What is left of the one-time burst.
    pub burst: u64,
    pub debt: u64,
    /// Nanoseconds between the refill's last accounting and the snapshot.
    pub since_refill_ns: u64,
}

/// A limiter's buckets at the snapshot (`None`: the limiter has no such bucket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LimiterState {
    pub bandwidth: Option<BucketState>,
    pub ops: Option<BucketState>,
}

impl TokenBucket {
    /// The bucket's tokens at `now`.
    pub fn save_state_at(&self, now: Instant) -> BucketState {
        let since = now.saturating_duration_since(self.last).as_nanos();
        BucketState {
            budget: self.budget,
            burst: self.burst,
            debt: self.debt,
            since_refill_ns: u64::try_from(since).unwrap_or(u64::MAX),
        }
    }

    /// Gives this bucket (built from the same configuration) the saved tokens, as of `now`.
    /// `name` names the bucket in errors.
    pub fn restore_state_at(
        &mut self,
        s: &BucketState,
        now: Instant,
        name: &'static str,
    ) -> Result<(), LimiterStateError> {
        let range = |what, value, limit| {
            if value > limit {
                Err(LimiterStateError::OutOfRange {
                    bucket: name,
                    what,
                    value,
                    limit,
                })
            } else {
                Ok(())
            }
        };
        range("budget", s.budget, self.size)?;
        range("one-time burst", s.burst, self.initial_burst)?;
        self.budget = s.budget;
        self.burst = s.burst;
        self.debt = s.debt;
        self.last = now
            .checked_sub(Duration::from_nanos(s.since_refill_ns))
            .unwrap_or(now);
        Ok(())
    }
}

fn restore_bucket(
    bucket: Option<&mut TokenBucket>,
    saved: Option<&BucketState>,
    now: Instant,
    name: &'static str,
) -> Result<(), LimiterStateError> {
    match (bucket, saved) {
        (Some(b), Some(s)) => b.restore_state_at(s, now, name),
        (None, None) => Ok(()),
        (None, Some(_)) => Err(LimiterStateError::UnexpectedBucket(name)),
        (Some(_), None) => Err(LimiterStateError::MissingBucket(name)),
    }
}

impl RateLimiter {
    /// The buckets' tokens now (the VM paused).
    pub fn save_state(&self) -> LimiterState {
        let now = Instant::now();
        LimiterState {
            bandwidth: self.bandwidth.as_ref().map(|b| b.save_state_at(now)),
            ops: self.ops.as_ref().map(|b| b.save_state_at(now)),
        }
    }

    /// Gives this limiter (built from the snapshot's configuration) the saved tokens; it is
    /// left unblocked (module docs). Checks both buckets before changing either.
    pub fn restore_state(&mut self, s: &LimiterState) -> Result<(), LimiterStateError> {
        let now = Instant::now();
        let mut bandwidth = self.bandwidth.clone();
        let mut ops = self.ops.clone();
        restore_bucket(bandwidth.as_mut(), s.bandwidth.as_ref(), now, "bandwidth")?;
        restore_bucket(ops.as_mut(), s.ops.as_ref(), now, "ops")?;
        self.bandwidth = bandwidth;
        self.ops = ops;
        self.blocked = false;
        Ok(())
    }
}

impl Persist for BucketState {
    fn encode(&self, e: &mut Encoder) {
        e.u64(self.budget);
        e.u64(self.burst);
        e.u64(self.debt);
        e.u64(self.since_refill_ns);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        Ok(BucketState {
            budget: d.u64("rate limiter bucket budget")?,
            burst: d.u64("rate limiter bucket one-time burst")?,
            debt: d.u64("rate limiter bucket debt")?,
            since_refill_ns: d.u64("rate limiter bucket refill time")?,
        })
    }
}

impl Persist for LimiterState {
    fn encode(&self, e: &mut Encoder) {
        e.option(self.bandwidth.as_ref());
        e.option(self.ops.as_ref());
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        Ok(LimiterState {
            bandwidth: d.option("rate limiter bandwidth bucket")?,
            ops: d.option("rate limiter ops bucket")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{RateLimiterConfig, TokenBucketConfig};

    fn cfg(size: u64, burst: u64, refill_ms: u64) -> TokenBucketConfig {
        TokenBucketConfig {
            size,
            one_time_burst: (burst > 0).then_some(burst),
            refill_time: refill_ms,
        }
    }

    #[test]
    fn a_restored_bucket_has_the_saved_tokens_and_refills_from_the_snapshot() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&cfg(1000, 500, 1000), t0).unwrap();
        assert!(b.try_take_at(700, t0));
        let later = t0 + Duration::from_millis(100);
        let saved = b.save_state_at(later);
        assert_eq!(
            (saved.budget, saved.burst, saved.debt, saved.since_refill_ns),
            (800, 0, 0, 100_000_000)
        );
        // Restored an hour later: the hour does not count, the 100 ms before the snapshot
        // do (1 token per ms), as the original would have at `later`.
        let t1 = t0 + Duration::from_secs(3600);
        let mut r = TokenBucket::new(&cfg(1000, 500, 1000), t1).unwrap();
        r.restore_state_at(&saved, t1, "bandwidth").unwrap();
        assert_eq!(r.available_at(t1), b.clone().available_at(later));
        assert_eq!(r.available_at(t1), 900);
        assert_eq!(
            r.available_at(t1 + Duration::from_millis(50)),
            950,
            "and goes on refilling"
        );
        // The burst is not given back.
        assert_eq!(r.burst, 0);
    }

    #[test]
    fn a_debt_survives_the_restore() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&cfg(100, 0, 100), t0).unwrap();
        assert!(b.take(250, t0).is_some());
        let saved = b.save_state_at(t0);
        assert_eq!(saved.debt, 150);
        let mut r = TokenBucket::new(&cfg(100, 0, 100), t0).unwrap();
        r.restore_state_at(&saved, t0, "ops").unwrap();
        assert_eq!(r.available_at(t0 + Duration::from_millis(100)), 0);
        assert_eq!(r.available_at(t0 + Duration::from_millis(200)), 50);
    }

    #[test]
    fn states_beyond_the_configuration_are_refused() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&cfg(100, 10, 100), t0).unwrap();
        let too_much = BucketState {
            budget: 101,
            ..Default::default()
        };
        assert_eq!(
            b.restore_state_at(&too_much, t0, "ops").unwrap_err(),
            LimiterStateError::OutOfRange {
                bucket: "ops",
                what: "budget",
                value: 101,
                limit: 100
            }
        );
        let burst = BucketState {
            burst: 11,
            ..Default::default()
        };
        assert!(b
            .restore_state_at(&burst, t0, "ops")
            .unwrap_err()
            .to_string()
            .contains("one-time burst (11) is larger than its configured 10"));
        // A huge time since the refill is clamped to what the clock allows.
        let old = BucketState {
            budget: 0,
            since_refill_ns: u64::MAX,
            ..Default::default()
        };
        b.restore_state_at(&old, t0, "ops").unwrap();
        assert!(b.last <= t0);
    }

    #[test]
    fn limiters_round_trip_and_refuse_a_bucket_the_configuration_lacks() {
        let config = RateLimiterConfig {
            bandwidth: Some(cfg(1000, 0, 100)),
            ops: Some(cfg(1, 0, 1000)),
        };
        let mut l = RateLimiter::new(Some(&config)).unwrap();
        assert!(l.consume(600));
        assert!(!l.consume(600), "blocked: no op and not enough bytes");
        assert!(l.is_blocked());
        let saved = l.save_state();
        let mut e = Encoder::new();
        e.put(&saved);
        let bytes = e.into_bytes();
        let decoded: LimiterState = Decoder::new(&bytes).get().unwrap();
        assert_eq!(decoded, saved);

        let mut r = RateLimiter::new(Some(&config)).unwrap();
        r.restore_state(&decoded).unwrap();
        assert!(!r.is_blocked(), "restored unblocked");
        assert!(!r.consume(1), "but the buckets are as empty as they were");
        assert!(r.is_blocked(), "and the request blocks it again");

        let bytes_only = RateLimiterConfig {
            bandwidth: Some(cfg(1000, 0, 100)),
            ops: None,
        };
        let mut other = RateLimiter::new(Some(&bytes_only)).unwrap();
        assert_eq!(
            other.restore_state(&decoded).unwrap_err(),
            LimiterStateError::UnexpectedBucket("ops")
        );
        // Nothing changed by the refused restore.
        assert_eq!(other.save_state().bandwidth.unwrap().budget, 1000);
        let mut unlimited = RateLimiter::new(None).unwrap();
        assert_eq!(
            unlimited.restore_state(&decoded).unwrap_err(),
            LimiterStateError::UnexpectedBucket("bandwidth")
        );
        assert_eq!(
            l.restore_state(&LimiterState::default()).unwrap_err(),
            LimiterStateError::MissingBucket("bandwidth")
        );
    }
}
