//! `entropy` (`PUT /entropy`): the virtio-rng device, with an optional rate limiter.

use super::rate_limiter::{validated_limiter, RateLimiterConfig};
use super::ResourceError;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EntropyConfig {
    #[serde(default)]
    pub rate_limiter: Option<RateLimiterConfig>,
}

impl EntropyConfig {
    pub(super) fn validated(self) -> Result<Self, ResourceError> {
        Ok(EntropyConfig {
            rate_limiter: validated_limiter(self.rate_limiter, "entropy.rate_limiter")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::parse_json;

    #[test]
    fn an_empty_body_is_a_device_without_limits() {
        for body in ["{}", r#"{"rate_limiter": null}"#] {
            let e: EntropyConfig = parse_json(body).unwrap();
            assert_eq!(e.validated().unwrap(), EntropyConfig::default());
        }
        let e: EntropyConfig =
            parse_json(r#"{"rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}"#)
                .unwrap();
        assert!(e.rate_limiter.unwrap().is_enabled());
        let err = parse_json::<EntropyConfig>(r#"{"bytes": 1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `bytes`"), "{err}");
    }
}
