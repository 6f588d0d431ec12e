//! The API as the VMM thread serves it ([`VmmApi`]): the request channel and the
//! [`Controller`], before boot on their own and afterwards as a source of the microVM's run
//! loop, with the running [`Vmm`] as the [`Microvm`] runtime requests reach.

use super::{Controller, ControllerError, Microvm, Outcome, Reply};
use crate::api::{self, ApiChannel, ApiError, Limits, RequestError};
use crate::devices::virtio::balloon::Balloon;
use crate::devices::virtio::mem::VirtioMem;
use crate::event_loop::{EventHandler, EventLoop, EventLoopError, Flow, Sources};
use crate::metrics::METRICS;
use crate::persist;
use crate::resources::{RateLimiterConfig, SnapshotCreate, SnapshotLoad, VmResources};
use crate::snapshot::SnapshotKey;
use crate::vmm::Vmm;
use std::os::unix::io::RawFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use vmm_sys_util::epoll::EventSet;

impl Microvm for Vmm {
    fn pause(&mut self) -> Result<(), String> {
        Vmm::pause(self).map_err(|e| e.to_string())
    }

    fn resume(&mut self) -> Result<(), String> {
        Vmm::resume(self).map_err(|e| e.to_string())
    }

    fn send_ctrl_alt_del(&mut self) -> Result<(), String> {
        Vmm::send_ctrl_alt_del(self).map_err(|e| e.to_string())
    }

    /// Swaps the drive's backing file and tells the guest (configuration change).
    fn update_drive(&mut self, drive_id: &str, path_on_host: &str) -> Result<(), String> {
        Vmm::update_drive(self, drive_id, path_on_host).map_err(|e| e.to_string())
    }

    fn update_drive_rate_limiter(
        &mut self,
        drive_id: &str,
        update: &RateLimiterConfig,
    ) -> Result<(), String> {
        Vmm::update_drive_rate_limiter(self, drive_id, update).map_err(|e| e.to_string())
    }

    fn update_net_rate_limiters(
        &mut self,
        iface_id: &str,
        rx: Option<&RateLimiterConfig>,
        tx: Option<&RateLimiterConfig>,
    ) -> Result<(), String> {
        Vmm::update_net_rate_limiters(self, iface_id, rx, tx).map_err(|e| e.to_string())
    }

    fn update_pmem_rate_limiter(
        &mut self,
        id: &str,
        update: &RateLimiterConfig,
    ) -> Result<(), String> {
        self.devices().virtio.update_pmem_rate_limiter(id, update)
    }

    fn balloon(&self) -> Option<Arc<Mutex<Balloon>>> {
        self.devices().virtio.balloon.clone()
    }

    fn virtio_mem(&self) -> Option<Arc<Mutex<VirtioMem>>> {
        self.devices().virtio.mem.clone()
    }

    fn create_snapshot(
        &mut self,
        res: &VmResources,
        req: &SnapshotCreate,
        key: Option<&SnapshotKey>,
    ) -> Result<String, String> {
        let c = persist::create_snapshot(self, res, req, key).map_err(|e| e.to_string())?;
        Ok(format!(
            "snapshot/create: {:?} snapshot{} {:?} ({} bytes) and {:?}{} in {} us",
            c.snapshot_type,
            if c.authenticated {
                ", authenticated,"
            } else {
                ""
            },
            req.snapshot_path,
            c.state_bytes,
            req.mem_file_path,
            c.diff_pages
                .map(|p| format!(" ({p} pages written)"))
                .unwrap_or_default(),
            c.took.as_micros()
        ))
    }
}

/// How [`VmmApi::serve_until_started`] makes the microVM: booted from the configuration
/// (`InstanceStart`) or restored from a snapshot (`PUT /snapshot/load`).
pub trait Starter {
    type Started;
    fn boot(&mut self, res: &VmResources) -> Result<Self::Started, String>;
    /// Restores the snapshot `req` names (verified with `key`), resumed when
    /// `req.resume_vm`; returns it with the configuration it was restored with.
    fn load(
        &mut self,
        req: &SnapshotLoad,
        key: Option<&SnapshotKey>,
    ) -> Result<(Self::Started, VmResources), String>;
    /// Called before the microVM starts, whenever the requests at hand have been answered:
    /// a starter may make ahead of `InstanceStart` what the start will need for `res` as
    /// configured so far. Nothing by default.
    fn idle(&mut self, _res: &VmResources) {}
}

/// The API as the VMM thread serves it: the request channel and the [`Controller`].
///
/// Use: [`VmmApi::start`] (binds the socket, starts the API thread); before boot,
/// [`VmmApi::serve_until_started`] answers requests until `InstanceStart` has built the
/// microVM; then [`VmmApi::attach`] registers the request eventfd in the run loop, where
/// requests keep being answered with the running [`Vmm`] at hand (the loop's context).
pub struct VmmApi {
    chan: ApiChannel,
    controller: Controller,
}

impl VmmApi {
    /// Serves the API on `socket`. `started`: the microVM is already booted (from
    /// `--config-file`), so pre-boot-only requests are refused from the start.
    pub fn start(
        socket: &Path,
        limits: Limits,
        instance_id: &str,
        resources: VmResources,
        started: bool,
    ) -> Result<Self, ApiError> {
        let chan = api::start(socket, limits)?;
        let controller = if started {
            Controller::new_started(instance_id, resources)
        } else {
            Controller::new(instance_id, resources)
        };
        Ok(VmmApi { chan, controller })
    }

    pub fn controller(&self) -> &Controller {
        &self.controller
    }

    /// The MMDS data store the API writes.
    pub fn set_mmds(&mut self, mmds: crate::mmds::SharedMmds) {
        self.controller.set_mmds(mmds);
    }

    /// Snapshots are made and loaded with `key`.
    pub fn set_snapshot_key(&mut self, key: Option<std::sync::Arc<SnapshotKey>>) {
        self.controller.set_snapshot_key(key);
    }

    /// Answers requests until `InstanceStart` succeeds, then returns the microVM that
    /// `build` made (its error is the answer to `InstanceStart`, and the API keeps serving).
    /// Returns `Ok(None)` when `stop_fd` (the termination signalfd) becomes readable first.
    pub fn serve_until_started<S: Starter>(
        &mut self,
        stop_fd: Option<RawFd>,
        starter: &mut S,
    ) -> Result<Option<S::Started>, ApiError> {
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.chan.event_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: stop_fd.unwrap_or(-1),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let timeout_ms = -1;
            // SAFETY: `fds` is a valid array of two pollfd for the whole call (a negative fd
            // is ignored by poll); poll only writes their `revents`.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ApiError::Wait(e));
            }
            if fds[1].revents != 0 {
                return Ok(None);
            }
            let _ = self.chan.take_event();
            while let Some(req) = self.chan.next_request() {
                METRICS.vmm.device_events.inc();
                match self.controller.handle(req, None) {
                    Outcome::Reply(reply) => self.answer(reply),
                    Outcome::Start => {
                        let built = starter.boot(&self.controller.resources);
                        let (vm, result) = match built {
                            Ok(vm) => (Some(vm), Ok(())),
                            Err(e) => (None, Err(e)),
                        };
                        let reply = self.controller.finish_start(result);
                        self.answer(reply);
                        if vm.is_some() {
                            return Ok(vm);
                        }
                    }
                    Outcome::Load(req) => {
                        let loaded = starter.load(&req, self.controller.snapshot_key());
                        let (vm, result) = match loaded {
                            Ok((vm, res)) => (Some(vm), Ok((res, req.resume_vm))),
                            Err(e) => (None, Err(e)),
                        };
                        let reply = self.controller.finish_load(result);
                        self.answer(reply);
                        if vm.is_some() {
                            return Ok(vm);
                        }
                    }
                }
            }
            if self.chan.is_disconnected() {
                return Err(ApiError::ThreadGone);
            }
            starter.idle(&self.controller.resources);
        }
    }

    /// Sends the controller's answer to the API thread, in the API layer's terms.
    fn answer(&self, reply: Reply) {
        self.chan.reply(reply.map_err(RequestError::from));
    }

    /// Keeps serving the API from the microVM's run loop.
    pub fn attach(self, events: &mut EventLoop<Vmm>) -> Result<(), EventLoopError> {
        let fd = self.chan.event_fd();
        events.add(fd, Box::new(self)).map(|_| ())
    }
}

impl EventHandler<Vmm> for VmmApi {
    fn handle(&mut self, vmm: &mut Vmm, _sources: &mut Sources<Vmm>, _events: EventSet) -> Flow {
        let _ = self.chan.take_event();
        while let Some(req) = self.chan.next_request() {
            METRICS.vmm.device_events.inc();
            let reply = match self.controller.handle(req, Some(vmm as &mut dyn Microvm)) {
                Outcome::Reply(reply) => reply,
                // The controller refuses a second InstanceStart, and a load once started,
                // before getting here.
                Outcome::Start | Outcome::Load(_) => Err(ControllerError::AlreadyStarted),
            };
            self.answer(reply);
        }
        if self.chan.is_disconnected() {
            crate::log_error!("the API thread has stopped; the API is no longer served");
            return Flow::Remove;
        }
        Flow::Continue
    }
}
