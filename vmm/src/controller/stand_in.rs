//! A stand-in microVM for the controller's tests: every request it would carry out succeeds
//! and does nothing; a balloon device and a virtio-mem device may be given to it.

use super::Microvm;
use crate::devices::virtio::balloon::Balloon;
use crate::devices::virtio::mem::VirtioMem;
use crate::resources::RateLimiterConfig;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub(super) struct StandInVm {
    pub(super) balloon: Option<Arc<Mutex<Balloon>>>,
    pub(super) virtio_mem: Option<Arc<Mutex<VirtioMem>>>,
}

impl Microvm for StandInVm {
    fn pause(&mut self) -> Result<(), String> {
        Ok(())
    }
    fn resume(&mut self) -> Result<(), String> {
        Ok(())
    }
    fn send_ctrl_alt_del(&mut self) -> Result<(), String> {
        Ok(())
    }
    fn update_drive(&mut self, _: &str, _: &str) -> Result<(), String> {
        Ok(())
    }
    fn update_drive_rate_limiter(&mut self, _: &str, _: &RateLimiterConfig) -> Result<(), String> {
        Ok(())
    }
    fn update_net_rate_limiters(
        &mut self,
        _: &str,
        _: Option<&RateLimiterConfig>,
        _: Option<&RateLimiterConfig>,
    ) -> Result<(), String> {
        Ok(())
    }
    fn balloon(&self) -> Option<Arc<Mutex<Balloon>>> {
        self.balloon.clone()
    }
    fn virtio_mem(&self) -> Option<Arc<Mutex<VirtioMem>>> {
        self.virtio_mem.clone()
    }
}
