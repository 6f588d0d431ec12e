//! Starting the microVM: `InstanceStart` (booted) and `PUT /snapshot/load` (restored) —
//! accepted on the API's request, then finished with how the build or the restore went.

use super::{elapsed_us, Controller, ControllerError, Reply};
use crate::api::VmmData;
use crate::metrics::METRICS;
use crate::resources::{ResourceError, SnapshotLoad, SnapshotLoadParams, VmResources};
use crate::timing;
use std::time::Instant;

impl Controller {
    pub(super) fn accept_load(
        &mut self,
        params: SnapshotLoadParams,
    ) -> Result<SnapshotLoad, ControllerError> {
        self.pre_boot("PUT /snapshot/load")?;
        let r = &self.resources;
        let configured = [
            (r.boot_source.is_some(), "boot-source"),
            (r.machine_config != Default::default(), "machine-config"),
            (!r.drives.is_empty(), "a drive"),
            (!r.network_interfaces.is_empty(), "a network interface"),
            (!r.pmem.is_empty(), "a pmem device"),
            (r.vsock.is_some(), "vsock"),
            (r.entropy.is_some(), "entropy"),
            (r.cpu_config.is_some(), "cpu-config"),
            (r.balloon.is_some(), "balloon"),
            (r.memory_hotplug.is_some(), "memory-hotplug"),
        ];
        if let Some((_, what)) = configured.iter().find(|(set, _)| *set) {
            return Err(ControllerError::LoadAfterConfig(what));
        }
        let load = SnapshotLoad {
            serial: r.serial.clone(),
            ..params.validated()?
        };
        self.start_began = Some(Instant::now());
        Ok(load)
    }

    /// Reports how the restore after [`Outcome::Load`] went: on success the microVM runs
    /// (or is paused) with `resources`, the configuration it was restored with. After a
    /// failure nothing was restored: the VMM is "Not started" and usable.
    pub fn finish_load(&mut self, result: Result<(VmResources, bool), String>) -> Reply {
        let took = self.start_began.take().map(elapsed_us).unwrap_or(0);
        match result {
            Ok((resources, resumed)) => {
                METRICS.latencies_us.load_snapshot.set(took);
                crate::log_info!(
                    "snapshot loaded in {took} us; the microVM is {}",
                    if resumed { "running" } else { "paused" }
                );
                self.resources = VmResources {
                    logger: self.resources.logger.take(),
                    metrics: self.resources.metrics.take(),
                    ..resources
                };
                self.configure_mmds();
                self.started = true;
                self.paused = !resumed;
                Ok(VmmData::Empty)
            }
            Err(e) => {
                crate::log_error!("snapshot/load failed: {e}");
                Err(ControllerError::SnapshotLoad(e))
            }
        }
    }

    pub(super) fn accept_start(&mut self) -> Result<(), ControllerError> {
        if self.started {
            return Err(ControllerError::AlreadyStarted);
        }
        if self.resources.boot_source.is_none() {
            return Err(ResourceError::MissingBootSource.into());
        }
        timing::record_instance_start();
        self.start_began = Some(Instant::now());
        Ok(())
    }

    /// Reports how building the microVM after [`Outcome::Start`] went, and gives the answer
    /// to `InstanceStart`. After a failure the microVM is still "Not started" and
    /// `InstanceStart` may be retried.
    pub fn finish_start(&mut self, result: Result<(), String>) -> Reply {
        let took = self.start_began.take().map(elapsed_us).unwrap_or(0);
        match result {
            Ok(()) => {
                METRICS.latencies_us.instance_start.set(took);
                crate::log_info!("InstanceStart: microVM built and started in {took} us");
                self.started = true;
                self.paused = false;
                Ok(VmmData::Empty)
            }
            Err(e) => {
                crate::log_error!("InstanceStart failed: {e}");
                Err(ControllerError::Start(e))
            }
        }
    }
}
