//! `pmem` (`PUT /pmem/{id}`, `PATCH /pmem/{id}`): virtio-pmem devices, each a host file
//! mapped into the guest as persistent memory.
//!
//! The backing file is opened when the device is accepted (read-only for a read-only
//! device) by the rule every image file follows ([`super::host_file`]); an empty file is
//! refused there (Firecracker refuses it at `InstanceStart`: it cannot be mapped). At most
//! one drive or pmem device is the root device. After boot only the rate limiter changes
//! (`PATCH`, Firecracker's `PartialPmem`).

use super::host_file::{held_or_open, open_image, Opened};
use super::rate_limiter::{validated_limiter, RateLimiterConfig};
use super::spec::null_as_default;
use super::{check_id, ResourceError};
use serde::{Deserialize, Serialize};
use std::fs::File;

const BACKING: &str = "pmem: the backing file";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PmemConfig {
    pub id: String,
    pub path_on_host: String,
    /// The guest's root file system: `root=/dev/pmem<N>` (N: its place among the pmem
    /// devices) and `rw` (`ro` when read-only) go on the kernel command line.
    #[serde(default, deserialize_with = "null_as_default")]
    pub root_device: bool,
    /// The file is opened and mapped read-only, and the guest's memory slot is read-only:
    /// guest writes never reach it.
    #[serde(default, deserialize_with = "null_as_default")]
    pub read_only: bool,
    /// Limits flush requests: each one (all those of one notification together) takes one
    /// op and the file's size in bytes, as Firecracker counts it.
    #[serde(default)]
    pub rate_limiter: Option<RateLimiterConfig>,
    /// The backing file, opened by [`PmemConfig::validated`].
    #[serde(skip)]
    pub file: Opened,
}

/// `PATCH /pmem/{id}` after boot: only the rate limiter changes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PmemUpdate {
    pub id: String,
    /// A bucket given replaces the running one, one left out stays.
    #[serde(default)]
    pub rate_limiter: Option<RateLimiterConfig>,
}

impl PmemConfig {
    /// Checks the fields, then opens the backing file (read-only for a read-only device)
    /// and checks that it has something to map.
    pub(super) fn validated(mut self, path_id: Option<&str>) -> Result<Self, ResourceError> {
        check_id("pmem", &self.id, path_id)?;
        self.rate_limiter = validated_limiter(self.rate_limiter, "pmem.rate_limiter")?;
        let file = open_image(BACKING, &self.path_on_host, !self.read_only)?;
        let len = file
            .metadata()
            .map_err(|e| ResourceError::Open {
                what: BACKING,
                path: self.path_on_host.clone(),
                reason: e.to_string(),
            })?
            .len();
        if len == 0 {
            return Err(ResourceError::EmptyPmemFile(self.path_on_host));
        }
        self.file = Opened::hold(file);
        Ok(self)
    }

    /// The backing file for the device: the one opened when the device was accepted.
    pub fn backing_file(&self) -> Result<File, ResourceError> {
        held_or_open(&self.file, BACKING, &self.path_on_host, !self.read_only)
    }
}

impl PmemUpdate {
    pub fn validated(mut self, path_id: Option<&str>) -> Result<Self, ResourceError> {
        check_id("pmem", &self.id, path_id)?;
        self.rate_limiter = validated_limiter(self.rate_limiter, "pmem.rate_limiter")?;
        Ok(self)
    }
}
