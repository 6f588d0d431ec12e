//! `balloon` (`PUT /balloon`, `PATCH /balloon`, `PATCH /balloon/statistics`,
//! `PATCH /balloon/hinting/start`): the virtio-balloon device, in Firecracker's shapes.

use super::ResourceError;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BalloonConfig {
    /// Target size in MiB.
    pub amount_mib: u32,
    pub deflate_on_oom: bool,
    /// Seconds between statistics polls; 0: no statistics.
    #[serde(default)]
    pub stats_polling_interval_s: u16,
    #[serde(default)]
    pub free_page_hinting: bool,
    #[serde(default)]
    pub free_page_reporting: bool,
}

/// `PATCH /balloon`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    pub amount_mib: u32,
}

/// `PATCH /balloon/statistics`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsUpdate {
    pub stats_polling_interval_s: u16,
}

/// `PATCH /balloon/hinting/start`'s body (optional). Unknown fields are ignored, as
/// Firecracker does for this body.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct HintingStart {
    /// Answer the guest's end of the run with DONE (the guest then takes its hinted pages
    /// back); otherwise `PATCH /balloon/hinting/stop` does. Firecracker's default: true.
    #[serde(default = "acknowledge_by_default")]
    pub acknowledge_on_stop: bool,
}

fn acknowledge_by_default() -> bool {
    true
}

impl Default for HintingStart {
    fn default() -> Self {
        HintingStart {
            acknowledge_on_stop: acknowledge_by_default(),
        }
    }
}

impl BalloonConfig {
    /// Checks the configuration against a guest of `mem_size_mib`.
    pub(super) fn validated(self, mem_size_mib: u64) -> Result<Self, ResourceError> {
        if u64::from(self.amount_mib) > mem_size_mib {
            return Err(ResourceError::BalloonTooLarge {
                amount_mib: self.amount_mib,
                mem_size_mib,
            });
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::parse_json;

    #[test]
    fn firecracker_bodies() {
        let b: BalloonConfig = parse_json(r#"{"amount_mib": 64, "deflate_on_oom": true}"#).unwrap();
        assert_eq!(b.validated(128).unwrap().stats_polling_interval_s, 0);
        let e = b.validated(63).unwrap_err().to_string();
        assert_eq!(
            e,
            "balloon: amount_mib 64 is more than the guest's memory (mem_size_mib 63)"
        );
        let h: BalloonConfig = parse_json(
            r#"{"amount_mib": 0, "deflate_on_oom": false, "free_page_hinting": true,
                "free_page_reporting": true}"#,
        )
        .unwrap();
        let h = h.validated(128).unwrap();
        assert!(h.free_page_hinting && h.free_page_reporting);
        let s: HintingStart = parse_json(r#"{"acknowledge_on_stop": false}"#).unwrap();
        assert!(!s.acknowledge_on_stop);
        let s: HintingStart = parse_json(r#"{}"#).unwrap();
        assert!(s.acknowledge_on_stop, "Firecracker's default");
        let e = parse_json::<HintingStart>(r#"{"acknowledge_on_stop": 1}"#).unwrap_err();
        assert!(e.to_string().contains("expected a boolean"), "{e}");
        let e = parse_json::<BalloonConfig>(r#"{"amount_mib": 1}"#).unwrap_err();
        assert!(e.to_string().contains("deflate_on_oom"), "{e}");
        let e = parse_json::<BalloonUpdate>(r#"{"amount_mib": 1, "x": 2}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `x`"), "{e}");
        let u: BalloonStatsUpdate = parse_json(r#"{"stats_polling_interval_s": 3}"#).unwrap();
        assert_eq!(u.stats_polling_interval_s, 3);
    }
}
