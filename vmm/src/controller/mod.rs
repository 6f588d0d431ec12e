//! Applies API requests on the VMM thread.
//!
//! Before `InstanceStart`, requests change the [`VmResources`] through the same setters the
//! config file uses (so both refuse the same input with the same message). `InstanceStart`
//! builds and starts the microVM from those resources. Afterwards, pre-boot-only requests
//! are refused with a clear message, and runtime requests (pause, resume, Ctrl+Alt+Del)
//! reach the running microVM through the [`Microvm`] trait.
//!
//! - here: the [`Controller`], the state machine that decides each request;
//! - `mmds`: the MMDS requests (the data store and `PUT /mmds/config`);
//! - `serve`: [`VmmApi`], the API served by the VMM thread: the request channel before
//!   boot, then in the microVM's run loop.
//!
//! Its errors ([`ControllerError`]) become the API layer's [`RequestError`] on the way back
//! to the API thread, which picks the HTTP status.

mod balloon;
mod memory_hotplug;
mod mmds;
mod serve;
mod start;

pub use serve::{Starter, VmmApi};

use crate::api::{Action, ApiRequest, RequestError, VmStateChange, VmmData};
use crate::devices::virtio::balloon::Balloon;
use crate::devices::virtio::mem::VirtioMem;
use crate::devices::virtio::net::tap::Tap;
use crate::metrics::METRICS;
use crate::mmds::{SharedMmds, StoreError};
use crate::resources::{
    RateLimiterConfig, ResourceError, SnapshotCreate, SnapshotLoad, SnapshotType, VmResources,
};
use crate::snapshot::SnapshotKey;
use crate::{logger, metrics};
use std::sync::Arc;
use std::time::Instant;

/// Why a request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Resource(#[from] ResourceError),
    #[error("{0} is only possible before InstanceStart, and the microVM has already started")]
    PreBootOnly(&'static str),
    #[error("{0} is only possible after InstanceStart, and the microVM has not started yet")]
    RuntimeOnly(&'static str),
    #[error("InstanceStart: the microVM has already started")]
    AlreadyStarted,
    #[error("InstanceStart failed: {0}")]
    Start(String),
    #[error("PATCH /vm: pausing the microVM failed: {0}")]
    Pause(String),
    #[error("PATCH /vm: resuming the microVM failed: {0}")]
    Resume(String),
    #[error("SendCtrlAltDel failed: {0}")]
    CtrlAltDel(String),
    #[error("PATCH /drives: {0}")]
    DriveUpdate(String),
    #[error("PATCH /network-interfaces: {0}")]
    NetUpdate(String),
    #[error("PATCH /pmem: {0}")]
    PmemUpdate(String),
    /// `PUT /network-interfaces`: the tap device could not be opened (checked at the
    /// request, as Firecracker opens it there).
    #[error("network-interfaces: {0}")]
    Tap(String),
    #[error(transparent)]
    Logger(#[from] logger::LoggerError),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error("cannot serialise the answer: {0}")]
    Serialize(String),
    #[error("snapshot/create: {0}")]
    SnapshotCreate(String),
    #[error("snapshot/load: {0}")]
    SnapshotLoad(String),
    #[error("{0}")]
    Mmds(#[from] StoreError),
    #[error(transparent)]
    Balloon(#[from] balloon::BalloonRequestError),
    #[error(transparent)]
    MemoryHotplug(#[from] memory_hotplug::HotplugRequestError),
    #[error("snapshot/load is only possible on a VMM with nothing configured but the logger, the metrics and the serial output (as in Firecracker), and {0} is already configured")]
    LoadAfterConfig(&'static str),
}

impl From<ControllerError> for RequestError {
    /// Refused: the request itself (a bad value, the wrong state). Failed: carrying it out.
    fn from(e: ControllerError) -> RequestError {
        let message = e.to_string();
        match e {
            ControllerError::Resource(_)
            | ControllerError::Tap(_)
            | ControllerError::PreBootOnly(_)
            | ControllerError::RuntimeOnly(_)
            | ControllerError::AlreadyStarted
            | ControllerError::LoadAfterConfig(_)
            | ControllerError::Balloon(_)
            | ControllerError::MemoryHotplug(_) => RequestError::Refused(message),
            ControllerError::Mmds(StoreError::TooLarge { .. }) => RequestError::TooLarge(message),
            ControllerError::Mmds(_) => RequestError::Refused(message),
            ControllerError::Start(_)
            | ControllerError::Pause(_)
            | ControllerError::Resume(_)
            | ControllerError::CtrlAltDel(_)
            | ControllerError::DriveUpdate(_)
            | ControllerError::NetUpdate(_)
            | ControllerError::PmemUpdate(_)
            | ControllerError::Logger(_)
            | ControllerError::Metrics(_)
            | ControllerError::Serialize(_)
            | ControllerError::SnapshotCreate(_)
            | ControllerError::SnapshotLoad(_) => RequestError::Failed(message),
        }
    }
}

/// The controller's answer to one request.
pub type Reply = Result<VmmData, ControllerError>;

/// What the controller needs from a running microVM (implemented for the VMM's `Vmm`).
pub trait Microvm {
    /// Stops every vCPU (returns once they are stopped).
    fn pause(&mut self) -> Result<(), String>;
    fn resume(&mut self) -> Result<(), String>;
    /// Presses Ctrl+Alt+Del on the i8042 keyboard controller.
    fn send_ctrl_alt_del(&mut self) -> Result<(), String>;
    /// Points a drive at a new backing file (`PATCH /drives/{id}` after boot).
    fn update_drive(&mut self, drive_id: &str, path_on_host: &str) -> Result<(), String>;
    /// Replaces the buckets `update` gives in a drive's rate limiter.
    fn update_drive_rate_limiter(
        &mut self,
        drive_id: &str,
        update: &RateLimiterConfig,
    ) -> Result<(), String>;
    /// Replaces the buckets given in a network interface's receive and transmit limiters.
    fn update_net_rate_limiters(
        &mut self,
        iface_id: &str,
        rx: Option<&RateLimiterConfig>,
        tx: Option<&RateLimiterConfig>,
    ) -> Result<(), String>;
    /// Replaces the buckets `update` gives in a pmem device's rate limiter. The default:
    /// the microVM has no pmem device.
    fn update_pmem_rate_limiter(
        &mut self,
        id: &str,
        _update: &RateLimiterConfig,
    ) -> Result<(), String> {
        Err(format!("no pmem device with id {id:?}"))
    }
    /// `PUT /snapshot/create` on the paused microVM configured by `res`; returns a line for
    /// the log. The default: this microVM cannot be snapshotted.
    fn create_snapshot(
        &mut self,
        _res: &VmResources,
        _req: &SnapshotCreate,
        _key: Option<&SnapshotKey>,
    ) -> Result<String, String> {
        Err("this microVM cannot be snapshotted".into())
    }
    /// The balloon device, if the microVM has one. The default: none.
    fn balloon(&self) -> Option<std::sync::Arc<std::sync::Mutex<Balloon>>> {
        None
    }
    /// The virtio-mem device, if the microVM has one. The default: none.
    fn virtio_mem(&self) -> Option<std::sync::Arc<std::sync::Mutex<VirtioMem>>> {
        None
    }
}

/// `GET /`'s `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    NotStarted,
    Running,
    Paused,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::NotStarted => "Not started",
            InstanceState::Running => "Running",
            InstanceState::Paused => "Paused",
        }
    }
}

/// What [`Controller::handle`] decided.
#[derive(Debug)]
pub enum Outcome {
    /// Answer this.
    Reply(Reply),
    /// `InstanceStart` was accepted: the caller builds the microVM from
    /// [`Controller::resources`] and reports with [`Controller::finish_start`].
    Start,
    /// `PUT /snapshot/load` was accepted: the caller restores the snapshot (with
    /// [`Controller::snapshot_key`]) and reports with [`Controller::finish_load`].
    Load(Box<SnapshotLoad>),
}

/// The VMM thread's state as seen by the API. It does not own the microVM: the run loop
/// does, and lends it to [`Controller::handle`] for runtime requests.
#[derive(Debug)]
pub struct Controller {
    instance_id: String,
    resources: VmResources,
    started: bool,
    paused: bool,
    start_began: Option<Instant>,
    /// The orchestrator's snapshot key (`--snapshot-key-file`/`--snapshot-key-fd`).
    snapshot_key: Option<Arc<SnapshotKey>>,
    /// The MMDS data store, shared with the network devices that answer the guest.
    mmds: SharedMmds,
}

/// `GET /`.
#[derive(Debug, serde::Serialize)]
struct InstanceInfo<'a> {
    id: &'a str,
    state: &'static str,
    vmm_version: &'static str,
    app_name: &'static str,
}

/// Kiln's own version.
pub const VMM_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The Firecracker release whose API, flags and files Kiln implements: what `GET /version`,
/// `GET /` and `--version` report as the VMM's version, since clients written for
/// Firecracker read it to decide what they may ask for (Kiln's own is `kiln_version`).
pub const FIRECRACKER_VERSION: &str = "1.17.0";

fn to_json<T: serde::Serialize>(v: &T) -> Reply {
    serde_json::to_string(v)
        .map(VmmData::Json)
        .map_err(|e| ControllerError::Serialize(e.to_string()))
}

impl Controller {
    /// A controller for a microVM not started yet, configured by `resources` so far.
    pub fn new(instance_id: &str, resources: VmResources) -> Self {
        Controller {
            instance_id: instance_id.to_string(),
            resources,
            started: false,
            paused: false,
            start_began: None,
            snapshot_key: None,
            mmds: crate::mmds::shared(crate::mmds::DEFAULT_SIZE_LIMIT),
        }
    }

    /// Snapshots are made and loaded with `key` (authenticated).
    pub fn set_snapshot_key(&mut self, key: Option<Arc<SnapshotKey>>) {
        self.snapshot_key = key;
    }

    pub fn snapshot_key(&self) -> Option<&SnapshotKey> {
        self.snapshot_key.as_deref()
    }

    /// A controller for a microVM already started (booted from `--config-file`).
    pub fn new_started(instance_id: &str, resources: VmResources) -> Self {
        Controller {
            started: true,
            ..Controller::new(instance_id, resources)
        }
    }

    pub fn state(&self) -> InstanceState {
        match (self.started, self.paused) {
            (false, _) => InstanceState::NotStarted,
            (true, false) => InstanceState::Running,
            (true, true) => InstanceState::Paused,
        }
    }

    pub fn resources(&self) -> &VmResources {
        &self.resources
    }

    fn pre_boot(&self, what: &'static str) -> Result<(), ControllerError> {
        if self.started {
            return Err(ControllerError::PreBootOnly(what));
        }
        Ok(())
    }

    fn running<'v>(
        &self,
        what: &'static str,
        vm: Option<&'v mut dyn Microvm>,
    ) -> Result<&'v mut dyn Microvm, ControllerError> {
        match vm {
            Some(vm) if self.started => Ok(vm),
            _ => Err(ControllerError::RuntimeOnly(what)),
        }
    }

    /// Applies one request. `vm` is the running microVM (`None` before `InstanceStart`).
    pub fn handle(&mut self, req: ApiRequest, vm: Option<&mut dyn Microvm>) -> Outcome {
        if req == ApiRequest::Action(Action::InstanceStart) {
            return match self.accept_start() {
                Ok(()) => Outcome::Start,
                Err(e) => Outcome::Reply(Err(e)),
            };
        }
        if let ApiRequest::PutSnapshotLoad(params) = req {
            return match self.accept_load(params) {
                Ok(load) => Outcome::Load(Box::new(load)),
                Err(e) => Outcome::Reply(Err(e)),
            };
        }
        Outcome::Reply(self.apply(req, vm))
    }

    fn apply(&mut self, req: ApiRequest, vm: Option<&mut dyn Microvm>) -> Reply {
        let what = req.describe();
        match req {
            ApiRequest::GetInstanceInfo => to_json(&InstanceInfo {
                id: &self.instance_id,
                state: self.state().as_str(),
                vmm_version: FIRECRACKER_VERSION,
                app_name: "Kiln",
            }),
            ApiRequest::GetVersion => to_json(&serde_json::json!({
                "firecracker_version": FIRECRACKER_VERSION,
                "kiln_version": VMM_VERSION,
            })),
            ApiRequest::GetMachineConfig => to_json(&self.resources.machine_config),
            ApiRequest::GetVmConfig => to_json(&self.resources.to_config()),
            ApiRequest::PutMachineConfig(cfg) => {
                self.pre_boot(what)?;
                self.resources.set_machine_config(cfg)?;
                Ok(VmmData::Empty)
            }
            ApiRequest::PatchMachineConfig(upd) => {
                self.pre_boot(what)?;
                self.resources.update_machine_config(upd)?;
                Ok(VmmData::Empty)
            }
            ApiRequest::PutBootSource(cfg) => {
                self.pre_boot(what)?;
                self.resources.set_boot_source(cfg)?;
                Ok(VmmData::Empty)
            }
            ApiRequest::PutDrive { path_id, config } => {
                self.pre_boot(what)?;
                self.resources.put_drive(Some(&path_id), config)?;
                Ok(VmmData::Empty)
            }
            ApiRequest::PatchDrive { path_id, update } => {
                let update = update.validated(Some(&path_id))?;
                let vm = self.running(what, vm)?;
                if !self
                    .resources
                    .drives
                    .iter()
                    .any(|d| d.drive_id == update.drive_id)
                {
                    return Err(ResourceError::UnknownDrive(update.drive_id).into());
                }
                if let Some(path) = &update.path_on_host {
                    vm.update_drive(&update.drive_id, path)
                        .map_err(ControllerError::DriveUpdate)?;
                    if let Some(d) = self
                        .resources
                        .drives
                        .iter_mut()
                        .find(|d| d.drive_id == update.drive_id)
                    {
                        d.path_on_host = path.clone();
                    }
                }
                if let Some(limiter) = &update.rate_limiter {
                    vm.update_drive_rate_limiter(&update.drive_id, limiter)
                        .map_err(ControllerError::DriveUpdate)?;
                    if let Some(d) = self
                        .resources
                        .drives
                        .iter_mut()
                        .find(|d| d.drive_id == update.drive_id)
                    {
                        d.rate_limiter = patched(d.rate_limiter, limiter);
                    }
                }
                Ok(VmmData::Empty)
            }
            ApiRequest::PutNetworkInterface { path_id, config } => {
                self.pre_boot(what)?;
                let mut candidate = self.resources.clone();
                candidate.put_network_interface(Some(&path_id), config.clone())?;
                // Firecracker opens the tap at this request; Kiln opens it here to check it
                // (and again when the microVM is built).
                Tap::open(&config.host_dev_name)
                    .map_err(|e| ControllerError::Tap(e.to_string()))?;
                self.resources = candidate;
                Ok(VmmData::Empty)
            }
            ApiRequest::PatchNetworkInterface { path_id, update } => {
                let update = update.validated(Some(&path_id))?;
                let vm = self.running(what, vm)?;
                let Some(n) = self
                    .resources
                    .network_interfaces
                    .iter_mut()
                    .find(|n| n.iface_id == update.iface_id)
                else {
                    return Err(ResourceError::UnknownInterface(update.iface_id).into());
                };
                let (rx, tx) = (update.rx_rate_limiter, update.tx_rate_limiter);
                if rx.is_some() || tx.is_some() {
                    vm.update_net_rate_limiters(&n.iface_id, rx.as_ref(), tx.as_ref())
                        .map_err(ControllerError::NetUpdate)?;
                }
                if let Some(rx) = &rx {
                    n.rx_rate_limiter = patched(n.rx_rate_limiter, rx);
                }
                if let Some(tx) = &tx {
                    n.tx_rate_limiter = patched(n.tx_rate_limiter, tx);
                }
                Ok(VmmData::Empty)
            }
            ApiRequest::PutPmem { path_id, config } => {
                self.pre_boot(what)?;
                self.resources.put_pmem(Some(&path_id), config)?;
                Ok(VmmData::Empty)
            }
            ApiRequest::PatchPmem { path_id, update } => {
                let update = update.validated(Some(&path_id))?;
                let vm = self.running(what, vm)?;
                let Some(p) = self.resources.pmem.iter_mut().find(|p| p.id == update.id) else {
                    return Err(ResourceError::UnknownPmem(update.id).into());
                };
                if let Some(limiter) = &update.rate_limiter {
                    vm.update_pmem_rate_limiter(&p.id, limiter)
                        .map_err(ControllerError::PmemUpdate)?;
                    p.rate_limiter = patched(p.rate_limiter, limiter);
                }
                Ok(VmmData::Empty)
            }
            ApiRequest::PutVsock(cfg) => {
                self.pre_boot(what)?;
                self.resources.set_vsock(cfg)?;
                Ok(VmmData::Empty)
            }
            ApiRequest::PutEntropy(cfg) => {
                self.pre_boot(what)?;
                self.resources.set_entropy(cfg)?;
                Ok(VmmData::Empty)
            }
            ApiRequest::PutSerial(cfg) => {
                self.pre_boot(what)?;
                self.resources.set_serial(cfg)?;
                Ok(VmmData::Empty)
            }
            ApiRequest::PutCpuConfig(cfg) => {
                self.pre_boot(what)?;
                self.resources.set_cpu_config(cfg)?;
                Ok(VmmData::Empty)
            }
            ApiRequest::PutLogger(cfg) => {
                self.pre_boot(what)?;
                let cfg = cfg.validated()?;
                logger::configure(&cfg)?;
                self.resources.logger = Some(cfg);
                Ok(VmmData::Empty)
            }
            ApiRequest::PutMetrics(cfg) => {
                self.pre_boot(what)?;
                let cfg = cfg.validated()?;
                metrics::init(&cfg, &self.instance_id)?;
                self.resources.metrics = Some(cfg);
                Ok(VmmData::Empty)
            }
            ApiRequest::Action(Action::FlushMetrics) => {
                metrics::flush()?;
                Ok(VmmData::Empty)
            }
            // Routed through `accept_start` by `handle`.
            ApiRequest::Action(Action::InstanceStart) => Err(ControllerError::AlreadyStarted),
            ApiRequest::Action(Action::SendCtrlAltDel) => {
                self.running(what, vm)?
                    .send_ctrl_alt_del()
                    .map_err(ControllerError::CtrlAltDel)?;
                Ok(VmmData::Empty)
            }
            ApiRequest::PatchVm(VmStateChange::Paused) => {
                let vm = self.running(what, vm)?;
                if !self.paused {
                    let t = Instant::now();
                    vm.pause().map_err(ControllerError::Pause)?;
                    METRICS.latencies_us.pause_vm.set(elapsed_us(t));
                    METRICS.vmm.pauses.inc();
                    self.paused = true;
                    crate::log_info!("microVM paused in {} us", elapsed_us(t));
                }
                Ok(VmmData::Empty)
            }
            ApiRequest::PatchVm(VmStateChange::Resumed) => {
                let vm = self.running(what, vm)?;
                if self.paused {
                    let t = Instant::now();
                    vm.resume().map_err(ControllerError::Resume)?;
                    METRICS.latencies_us.resume_vm.set(elapsed_us(t));
                    METRICS.vmm.resumes.inc();
                    self.paused = false;
                    crate::log_info!("microVM resumed in {} us", elapsed_us(t));
                }
                Ok(VmmData::Empty)
            }
            ApiRequest::PutSnapshotCreate(params) => {
                let req = params.validated()?;
                let vm = self.running(what, vm)?;
                if !self.paused {
                    return Err(ControllerError::SnapshotCreate(
                        "the microVM must be paused first (PATCH /vm with {\"state\": \"Paused\"})"
                            .into(),
                    ));
                }
                let t = Instant::now();
                let done = vm
                    .create_snapshot(&self.resources, &req, self.snapshot_key.as_deref())
                    .map_err(ControllerError::SnapshotCreate)?;
                let gauge = match req.snapshot_type {
                    SnapshotType::Full => &METRICS.latencies_us.full_create_snapshot,
                    SnapshotType::Diff => &METRICS.latencies_us.diff_create_snapshot,
                };
                gauge.set(elapsed_us(t));
                crate::log_info!("{done}");
                Ok(VmmData::Empty)
            }
            // Routed through `accept_load` by `handle`.
            ApiRequest::PutSnapshotLoad(_) => Err(ControllerError::PreBootOnly(what)),
            ApiRequest::GetMmds => self.get_mmds(),
            ApiRequest::PutMmds(doc) => self.put_mmds(doc),
            ApiRequest::PatchMmds(patch) => self.patch_mmds(&patch),
            ApiRequest::PutMmdsConfig(cfg) => self.set_mmds_config(what, cfg),
            ApiRequest::GetBalloon
            | ApiRequest::PutBalloon(_)
            | ApiRequest::PatchBalloon(_)
            | ApiRequest::GetBalloonStats
            | ApiRequest::PatchBalloonStats(_)
            | ApiRequest::StartBalloonHinting(_)
            | ApiRequest::GetBalloonHintingStatus
            | ApiRequest::StopBalloonHinting => self.apply_balloon(req, vm),
            ApiRequest::GetMemoryHotplug
            | ApiRequest::PutMemoryHotplug(_)
            | ApiRequest::PatchMemoryHotplug(_) => self.apply_memory_hotplug(req, vm),
        }
    }
}

/// Applies a configuration's `logger` and `metrics` sections (the config file's, or the
/// command line's logger flags and `--metrics-path` turned into them), as `PUT /logger` and
/// `PUT /metrics` would, for the microVM `instance_id`.
pub fn configure_outputs(res: &VmResources, instance_id: &str) -> Result<(), ControllerError> {
    if let Some(cfg) = &res.logger {
        logger::configure(cfg)?;
    }
    if let Some(cfg) = &res.metrics {
        metrics::init(cfg, instance_id)?;
    }
    Ok(())
}

/// A limiter's configuration after a `PATCH` (`None` once nothing is limited).
fn patched(
    running: Option<RateLimiterConfig>,
    update: &RateLimiterConfig,
) -> Option<RateLimiterConfig> {
    Some(running.unwrap_or_default().updated(update)).filter(RateLimiterConfig::is_enabled)
}

fn elapsed_us(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod api_tests;
#[cfg(test)]
mod mmds_tests;
#[cfg(test)]
mod stand_in;
#[cfg(test)]
mod tests;
