//! `drives`: virtio-blk devices backed by raw image files.
//!
//! A drive's backing file is opened when the drive is accepted (`PUT /drives/{id}` or the
//! config file), read-only for a read-only drive, as Firecracker does, and kept open for
//! `InstanceStart`.

use super::host_file::{check_regular_file, held_or_open, open_image, Opened};
use super::rate_limiter::{validated_limiter, RateLimiterConfig};
use super::spec::{null_as_default, refuse_if_present};
use super::{check_id, ResourceError};
use serde::{Deserialize, Serialize};
use std::fs::File;

const BACKING: &str = "drives: the backing file";

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum CacheType {
    /// Flush requests are acknowledged without syncing the backing file.
    #[default]
    Unsafe,
    /// Flush requests sync the backing file (VIRTIO_BLK_F_FLUSH offered).
    Writeback,
}

/// Firecracker's block I/O engines. Kiln serves both with its synchronous engine: the guest
/// sees the same device; `Async` (io_uring in Firecracker) is a host-side choice that
/// Kiln makes for the smaller attack surface (see docs/api.md, "Differences").
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum IoEngine {
    #[default]
    Sync,
    Async,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    pub drive_id: String,
    #[serde(default)]
    pub partuuid: Option<String>,
    pub is_root_device: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub cache_type: CacheType,
    #[serde(default, deserialize_with = "null_as_default")]
    pub is_read_only: bool,
    /// Optional in Firecracker's spec only for vhost-user drives (`socket`), which Kiln
    /// does not have: required here, and an absent one is refused by name.
    #[serde(default)]
    pub path_on_host: String,
    /// Bytes and requests per second (`PATCH` changes it after boot).
    #[serde(default)]
    pub rate_limiter: Option<RateLimiterConfig>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub io_engine: IoEngine,
    /// A vhost-user block backend: not in Kiln yet (refused when set).
    #[serde(default)]
    pub socket: Option<String>,
    /// The backing file, opened by [`DriveConfig::validated`].
    #[serde(skip)]
    pub file: Opened,
}

/// `PATCH /drives/{id}` after boot: swap the backing file, change the rate limiter.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DriveUpdate {
    pub drive_id: String,
    #[serde(default)]
    pub path_on_host: Option<String>,
    /// Bytes and requests per second: a bucket given replaces the running one, one left
    /// out stays.
    #[serde(default)]
    pub rate_limiter: Option<RateLimiterConfig>,
}

impl DriveConfig {
    /// Checks the fields, then opens the backing file (read-only for a read-only drive).
    pub(super) fn validated(mut self, path_id: Option<&str>) -> Result<Self, ResourceError> {
        check_id("drive", &self.drive_id, path_id)?;
        refuse_if_present(
            &self.socket,
            "drives",
            "a vhost-user block backend (socket)",
        )?;
        self.rate_limiter = validated_limiter(self.rate_limiter, "drives.rate_limiter")?;
        if self.path_on_host.is_empty() {
            return Err(ResourceError::MissingDrivePath(self.drive_id));
        }
        self.file = Opened::hold(open_image(BACKING, &self.path_on_host, !self.is_read_only)?);
        Ok(self)
    }

    /// The backing file for the device: the one opened when the drive was accepted.
    pub fn backing_file(&self) -> Result<File, ResourceError> {
        held_or_open(&self.file, BACKING, &self.path_on_host, !self.is_read_only)
    }
}

impl DriveUpdate {
    /// Checks the fields and that the new backing file is a regular file; the running
    /// drive then opens it in its own read-only mode, at the same request (on the VMM
    /// thread, whose seccomp filter allows only that plain `openat`).
    pub fn validated(mut self, path_id: Option<&str>) -> Result<Self, ResourceError> {
        check_id("drive", &self.drive_id, path_id)?;
        self.rate_limiter = validated_limiter(self.rate_limiter, "drives.rate_limiter")?;
        if let Some(p) = &self.path_on_host {
            check_regular_file(BACKING, p)?;
        }
        Ok(self)
    }
}
