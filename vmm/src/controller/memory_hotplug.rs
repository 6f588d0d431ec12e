//! Memory hot-plug's requests, as Firecracker decides them: `PUT /hotplug/memory` before
//! `InstanceStart` only (the region's size, block and slot sizes); `PATCH` (the size the
//! guest should plug) and `GET` (the device's status) on the running microVM only.

use super::{to_json, Controller, ControllerError, Microvm, Reply};
use crate::api::{ApiRequest, VmmData};
use crate::devices::virtio::mem::{VirtioMem, VirtioMemError};
use crate::sync::lock;
use std::sync::{Arc, Mutex};

/// Why a memory hot-plug request was refused.
#[derive(Debug, thiserror::Error)]
pub enum HotplugRequestError {
    #[error("no memory hot-plug device is configured (PUT /hotplug/memory before InstanceStart)")]
    NoDevice,
    #[error("memory-hotplug: {0}")]
    Device(#[from] VirtioMemError),
    #[error("{0} is not a memory hot-plug request")]
    NotHotplug(&'static str),
}

impl Controller {
    /// One of memory hot-plug's requests (any other request is refused here).
    pub(super) fn apply_memory_hotplug(
        &mut self,
        req: ApiRequest,
        vm: Option<&mut dyn Microvm>,
    ) -> Reply {
        let what = req.describe();
        match req {
            ApiRequest::PutMemoryHotplug(cfg) => {
                self.pre_boot(what)?;
                self.resources.set_memory_hotplug(cfg)?;
                Ok(VmmData::Empty)
            }
            ApiRequest::PatchMemoryHotplug(upd) => {
                let dev = self.running_virtio_mem(what, vm)?;
                lock(&dev)
                    .update_requested_size(upd.requested_size_mib)
                    .map_err(HotplugRequestError::from)?;
                Ok(VmmData::Empty)
            }
            ApiRequest::GetMemoryHotplug => {
                let dev = self.running_virtio_mem(what, vm)?;
                let status = lock(&dev).status();
                to_json(&status)
            }
            other => Err(HotplugRequestError::NotHotplug(other.describe()).into()),
        }
    }

    fn running_virtio_mem(
        &self,
        what: &'static str,
        vm: Option<&mut dyn Microvm>,
    ) -> Result<Arc<Mutex<VirtioMem>>, ControllerError> {
        let dev = self.running(what, vm)?.virtio_mem();
        Ok(dev.ok_or(HotplugRequestError::NoDevice)?)
    }
}

#[cfg(test)]
mod tests;
