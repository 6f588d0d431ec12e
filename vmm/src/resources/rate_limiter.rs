//! Rate limiters, in Firecracker's shape: a `RateLimiter` object holds two optional token
//! buckets, `bandwidth` (tokens are bytes) and `ops` (tokens are requests or frames); a
//! `TokenBucket` has a `size`, an optional `one_time_burst` spent first, and the
//! `refill_time` in milliseconds in which an empty bucket fills again. A bucket with `size`
//! or `refill_time` 0 limits nothing.
//!
//! Used by drives (`rate_limiter`), network interfaces (`rx_rate_limiter`,
//! `tx_rate_limiter`), the entropy device (`rate_limiter`) and, a single bucket, the serial
//! output. In a `PATCH` after boot the same object is an update: a bucket given replaces the
//! running one (one with `size` or `refill_time` 0 removes it), a bucket left out stays as
//! it is. The buckets themselves run in [`crate::devices::rate_limiter`].

use super::ResourceError;
use serde::{Deserialize, Serialize};

/// The longest `refill_time` accepted: what fits in 64-bit nanoseconds (about 584 years).
pub const MAX_REFILL_TIME_MS: u64 = u64::MAX / 1_000_000;

/// One token bucket.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// Tokens the bucket holds when full.
    pub size: u64,
    /// Tokens spent before the bucket itself, once (no refill).
    #[serde(default)]
    pub one_time_burst: Option<u64>,
    /// Milliseconds in which the bucket refills from empty to full.
    pub refill_time: u64,
}

impl TokenBucketConfig {
    /// A bucket that limits something (`size` and `refill_time` both non-zero).
    pub fn is_enabled(&self) -> bool {
        self.size != 0 && self.refill_time != 0
    }

    /// Checks the values; `field` names the bucket in messages (`drives.rate_limiter.ops`).
    pub fn validated(self, field: &str) -> Result<Self, ResourceError> {
        if self.refill_time > MAX_REFILL_TIME_MS {
            return Err(ResourceError::RefillTime {
                field: field.to_string(),
                value: self.refill_time,
            });
        }
        Ok(self)
    }
}

/// A rate limiter: a bucket of bytes and a bucket of operations, each optional.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    #[serde(default)]
    pub bandwidth: Option<TokenBucketConfig>,
    #[serde(default)]
    pub ops: Option<TokenBucketConfig>,
}

impl RateLimiterConfig {
    /// Checks both buckets; `field` names the limiter in messages (`drives.rate_limiter`).
    pub fn validated(self, field: &str) -> Result<Self, ResourceError> {
        let check = |b: Option<TokenBucketConfig>, name: &str| {
            b.map(|b| b.validated(&format!("{field}.{name}")))
                .transpose()
        };
        Ok(RateLimiterConfig {
            bandwidth: check(self.bandwidth, "bandwidth")?,
            ops: check(self.ops, "ops")?,
        })
    }

    /// Whether any bucket limits something.
    pub fn is_enabled(&self) -> bool {
        [self.bandwidth, self.ops]
            .iter()
            .any(|b| b.is_some_and(|b| b.is_enabled()))
    }

    /// This limiter after `update` (a `PATCH`): each bucket given replaces this one's, a
    /// disabled one removes it, one left out is kept.
    pub fn updated(self, update: &RateLimiterConfig) -> RateLimiterConfig {
        let pick = |old: Option<TokenBucketConfig>, new: Option<TokenBucketConfig>| match new {
            Some(b) if b.is_enabled() => Some(b),
            Some(_) => None,
            None => old,
        };
        RateLimiterConfig {
            bandwidth: pick(self.bandwidth, update.bandwidth),
            ops: pick(self.ops, update.ops),
        }
    }
}

/// [`RateLimiterConfig::validated`] for an optional limiter field.
pub fn validated_limiter(
    limiter: Option<RateLimiterConfig>,
    field: &str,
) -> Result<Option<RateLimiterConfig>, ResourceError> {
    limiter.map(|l| l.validated(field)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::parse_json;

    fn bucket(size: u64, refill_time: u64) -> TokenBucketConfig {
        TokenBucketConfig {
            size,
            one_time_burst: None,
            refill_time,
        }
    }

    #[test]
    fn parses_firecrackers_shape() {
        let l: RateLimiterConfig = parse_json(
            r#"{"bandwidth": {"size": 1048576, "one_time_burst": 4096, "refill_time": 1000},
                "ops": {"size": 100, "refill_time": 1000, "one_time_burst": null}}"#,
        )
        .unwrap();
        assert_eq!(
            l.bandwidth,
            Some(TokenBucketConfig {
                size: 1 << 20,
                one_time_burst: Some(4096),
                refill_time: 1000
            })
        );
        assert_eq!(l.ops, Some(bucket(100, 1000)));
        assert!(l.is_enabled());
        let empty: RateLimiterConfig = parse_json(r#"{"bandwidth": null}"#).unwrap();
        assert_eq!(empty, RateLimiterConfig::default());
        assert!(!empty.is_enabled());
        let e = parse_json::<RateLimiterConfig>(r#"{"bytes": {}}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `bytes`"), "{e}");
        let e = parse_json::<TokenBucketConfig>(r#"{"size": 1}"#).unwrap_err();
        assert!(e.to_string().contains("missing field `refill_time`"), "{e}");
        let e = parse_json::<TokenBucketConfig>(r#"{"size": -1, "refill_time": 1}"#).unwrap_err();
        assert!(e.to_string().contains("invalid value"), "{e}");
    }

    #[test]
    fn zero_size_or_refill_time_limits_nothing() {
        assert!(!bucket(0, 100).is_enabled());
        assert!(!bucket(100, 0).is_enabled());
        assert!(bucket(1, 1).is_enabled());
        let l = RateLimiterConfig {
            bandwidth: Some(bucket(0, 0)),
            ops: None,
        };
        assert!(!l.is_enabled());
    }

    #[test]
    fn refill_times_that_overflow_nanoseconds_are_refused() {
        let l = RateLimiterConfig {
            bandwidth: None,
            ops: Some(bucket(1, u64::MAX)),
        };
        let e = l.validated("drives.rate_limiter").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "drives.rate_limiter.ops: refill_time {} ms is too long (at most {MAX_REFILL_TIME_MS} ms)",
                u64::MAX
            )
        );
        assert!(RateLimiterConfig {
            bandwidth: Some(bucket(1, MAX_REFILL_TIME_MS)),
            ops: None
        }
        .validated("x")
        .is_ok());
    }

    #[test]
    fn updates_replace_remove_or_keep_each_bucket() {
        let running = RateLimiterConfig {
            bandwidth: Some(bucket(1000, 100)),
            ops: Some(bucket(10, 100)),
        };
        let keep_bw_drop_ops = RateLimiterConfig {
            bandwidth: None,
            ops: Some(bucket(0, 0)),
        };
        assert_eq!(
            running.updated(&keep_bw_drop_ops),
            RateLimiterConfig {
                bandwidth: Some(bucket(1000, 100)),
                ops: None
            }
        );
        let new_bw = RateLimiterConfig {
            bandwidth: Some(bucket(5, 5)),
            ops: None,
        };
        assert_eq!(
            running.updated(&new_bw),
            RateLimiterConfig {
                bandwidth: Some(bucket(5, 5)),
                ops: Some(bucket(10, 100))
            }
        );
        assert_eq!(running.updated(&RateLimiterConfig::default()), running);
    }
}
