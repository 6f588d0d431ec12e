//! The virtio devices of the running VM, kept for runtime changes (`PATCH /drives/{id}`,
//! `PATCH /network-interfaces/{id}`): what the builder hands from [`super::setup`] to the
//! VM's [`crate::devices::manager::Devices`].

use super::balloon::Balloon;
use super::block::{Block, BlockError};
use super::mem::VirtioMem;
use super::mmio::MmioTransport;
use super::net::{Net, NetError};
use super::pci::PciHandles;
use super::pmem::Pmem;
use super::vsock::Vsock;
use super::Interrupt;
use crate::metrics::METRICS;
use crate::resources::RateLimiterConfig;
use crate::sync::lock;
use std::sync::{Arc, Mutex};

/// Why a runtime drive update failed.
#[derive(Debug, thiserror::Error)]
pub enum DriveUpdateError {
    #[error("no drive with drive_id {0:?}")]
    UnknownDrive(String),
    #[error(transparent)]
    Block(#[from] BlockError),
}

/// Why a runtime network interface update failed.
#[derive(Debug, thiserror::Error)]
pub enum NetUpdateError {
    #[error("no network interface with iface_id {0:?}")]
    UnknownInterface(String),
    #[error(transparent)]
    Net(#[from] NetError),
}

/// A drive of the running VM.
pub struct BlockHandle {
    pub drive_id: String,
    pub device: Arc<Mutex<Block>>,
    interrupt: Arc<Interrupt>,
}

impl BlockHandle {
    /// `interrupt` is the device's: a drive update signals a configuration change on it.
    pub fn new(drive_id: String, device: Arc<Mutex<Block>>, interrupt: Arc<Interrupt>) -> Self {
        BlockHandle {
            drive_id,
            device,
            interrupt,
        }
    }
}

/// The virtio devices of the running VM, for runtime changes.
#[derive(Default)]
pub struct VirtioHandles {
    pub blocks: Vec<BlockHandle>,
    pub nets: Vec<(String, Arc<Mutex<Net>>)>,
    pub vsock: Option<Arc<Mutex<Vsock>>>,
    pub balloon: Option<Arc<Mutex<Balloon>>>,
    /// The virtio-mem device (`memory-hotplug`).
    pub mem: Option<Arc<Mutex<VirtioMem>>>,
    pub pmem: Vec<(String, Arc<Mutex<Pmem>>)>,
    /// Every device's transport, in window order (snapshots save and restore them).
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// With `--enable-pci`: the bus and its functions in slot order (instead of
    /// `transports`).
    pub pci: Option<PciHandles>,
}

impl VirtioHandles {
    /// `PATCH /drives/{id}` after boot: points the drive at `path_on_host` (same read-only
    /// mode) and tells the driver its configuration (capacity) changed.
    pub fn update_drive(&self, drive_id: &str, path_on_host: &str) -> Result<(), DriveUpdateError> {
        let h = self
            .blocks
            .iter()
            .find(|b| b.drive_id == drive_id)
            .ok_or_else(|| DriveUpdateError::UnknownDrive(drive_id.to_string()))?;
        lock(&h.device).swap_backing(path_on_host)?;
        h.interrupt.signal_config_change();
        Ok(())
    }

    /// `PATCH /drives/{id}` with `rate_limiter` after boot: replaces the buckets given.
    pub fn update_drive_rate_limiter(
        &self,
        drive_id: &str,
        update: &RateLimiterConfig,
    ) -> Result<(), DriveUpdateError> {
        let h = self
            .blocks
            .iter()
            .find(|b| b.drive_id == drive_id)
            .ok_or_else(|| DriveUpdateError::UnknownDrive(drive_id.to_string()))?;
        let done = lock(&h.device).update_rate_limiter(update);
        if done.is_ok() {
            METRICS.block.update_count.inc();
        } else {
            METRICS.block.update_fails.inc();
        }
        Ok(done?)
    }

    /// `PATCH /pmem/{id}` after boot: replaces the buckets given.
    pub fn update_pmem_rate_limiter(
        &self,
        id: &str,
        update: &RateLimiterConfig,
    ) -> Result<(), String> {
        let (_, dev) = self
            .pmem
            .iter()
            .find(|(i, _)| i == id)
            .ok_or_else(|| format!("no pmem device with id {id:?}"))?;
        lock(dev).update_rate_limiter(update);
        Ok(())
    }

    /// `PATCH /network-interfaces/{id}` after boot: replaces the buckets given.
    pub fn update_net_rate_limiters(
        &self,
        iface_id: &str,
        rx: Option<&RateLimiterConfig>,
        tx: Option<&RateLimiterConfig>,
    ) -> Result<(), NetUpdateError> {
        let (_, dev) = self
            .nets
            .iter()
            .find(|(id, _)| id == iface_id)
            .ok_or_else(|| NetUpdateError::UnknownInterface(iface_id.to_string()))?;
        Ok(lock(dev).update_rate_limiters(rx, tx)?)
    }
}
