//! `drives`: virtio-blk devices backed by raw image files.

use super::rate_limiter::{validated_limiter, RateLimiterConfig};
use super::{check_id, check_regular_file, ResourceError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum CacheType {
    /// Flush requests are acknowledged without syncing the backing file.
    #[default]
    Unsafe,
    /// Flush requests sync the backing file (VIRTIO_BLK_F_FLUSH offered).
    Writeback,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum IoEngine {
    #[default]
    Sync,
    Async,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    pub drive_id: String,
    pub path_on_host: String,
    pub is_root_device: bool,
    #[serde(default)]
    pub is_read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    #[serde(default)]
    pub cache_type: CacheType,
    #[serde(default)]
    pub io_engine: IoEngine,
    /// Bytes and requests per second (`PATCH` changes it after boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// `PATCH /drives/{id}` after boot: swap the backing file, change the rate limiter.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DriveUpdate {
    pub drive_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

impl DriveConfig {
    pub(super) fn validated(mut self, path_id: Option<&str>) -> Result<Self, ResourceError> {
        check_id("drive", &self.drive_id, path_id)?;
        self.rate_limiter = validated_limiter(self.rate_limiter, "drives.rate_limiter")?;
        check_regular_file("drives.path_on_host", &self.path_on_host)?;
        if self.io_engine == IoEngine::Async {
            return Err(ResourceError::Unsupported("io_engine \"Async\""));
        }
        Ok(self)
    }
}

impl DriveUpdate {
    pub fn validated(mut self, path_id: Option<&str>) -> Result<Self, ResourceError> {
        check_id("drive", &self.drive_id, path_id)?;
        self.rate_limiter = validated_limiter(self.rate_limiter, "drives.rate_limiter")?;
        if let Some(p) = &self.path_on_host {
            check_regular_file("drives.path_on_host", p)?;
        }
        Ok(self)
    }
}
