//! Applies API requests on the VMM thread.
//!
//! Before `InstanceStart`, requests change the [`VmResources`] through the same setters the
//! config file uses (so both refuse the same input with the same message). `InstanceStart`
//! builds and starts the microVM from those resources. Afterwards, pre-boot-only requests
//! are refused with a clear message, and runtime requests (pause, resume, Ctrl+Alt+Del)
//! reach the running microVM through the [`Microvm`] trait.

use crate::api::{
    self, Action, ApiChannel, ApiError, ApiReply, ApiRequest, Limits, VmStateChange, VmmData,
};
use crate::event_loop::{EventHandler, EventLoop, EventLoopError, Flow, Sources};
use crate::metrics::METRICS;
use crate::resources::{ResourceError, VmResources};
use crate::vmm::Vmm;
use crate::{logger, metrics, timing};
use std::os::unix::io::RawFd;
use std::path::Path;
use std::time::Instant;
use vmm_sys_util::epoll::EventSet;

/// Why a request was refused or failed (answered 400 with this message).
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
    #[error(transparent)]
    Logger(#[from] logger::LoggerError),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error("cannot serialise the answer: {0}")]
    Serialize(String),
}

/// What the controller needs from a running microVM (implemented for the VMM's `Vmm`).
pub trait Microvm {
    /// Stops every vCPU (returns once they are stopped).
    fn pause(&mut self) -> Result<(), String>;
    fn resume(&mut self) -> Result<(), String>;
    /// Presses Ctrl+Alt+Del on the i8042 keyboard controller.
    fn send_ctrl_alt_del(&mut self) -> Result<(), String>;
    /// Points a drive at a new backing file (`PATCH /drives/{id}` after boot).
    fn update_drive(&mut self, drive_id: &str, path_on_host: &str) -> Result<(), String>;
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
    Reply(ApiReply),
    /// `InstanceStart` was accepted: the caller builds the microVM from
    /// [`Controller::resources`] and reports with [`Controller::finish_start`].
    Start,
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
}

/// `GET /`.
#[derive(Debug, serde::Serialize)]
struct InstanceInfo<'a> {
    id: &'a str,
    state: &'static str,
    vmm_version: &'static str,
    app_name: &'static str,
}

pub const VMM_VERSION: &str = env!("CARGO_PKG_VERSION");

fn to_json<T: serde::Serialize>(v: &T) -> ApiReply {
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
        }
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
        Outcome::Reply(self.apply(req, vm))
    }

    fn apply(&mut self, req: ApiRequest, vm: Option<&mut dyn Microvm>) -> ApiReply {
        let what = req.describe();
        match req {
            ApiRequest::GetInstanceInfo => to_json(&InstanceInfo {
                id: &self.instance_id,
                state: self.state().as_str(),
                vmm_version: VMM_VERSION,
                app_name: "Kiln",
            }),
            ApiRequest::GetVersion => to_json(&serde_json::json!({
                "firecracker_version": VMM_VERSION,
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
                Ok(VmmData::Empty)
            }
            ApiRequest::PutNetworkInterface { path_id, config } => {
                self.pre_boot(what)?;
                self.resources
                    .put_network_interface(Some(&path_id), config)?;
                Ok(VmmData::Empty)
            }
            ApiRequest::PatchNetworkInterface { path_id, update } => {
                let update = update.validated(Some(&path_id))?;
                self.running(what, vm)?;
                if !self
                    .resources
                    .network_interfaces
                    .iter()
                    .any(|n| n.iface_id == update.iface_id)
                {
                    return Err(ResourceError::UnknownInterface(update.iface_id).into());
                }
                // Firecracker patches rate limiters here; Kiln has none, so there is nothing
                // to change.
                Ok(VmmData::Empty)
            }
            ApiRequest::PutVsock(cfg) => {
                self.pre_boot(what)?;
                self.resources.set_vsock(cfg)?;
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
                metrics::init(&cfg.metrics_path)?;
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
        }
    }

    fn accept_start(&mut self) -> Result<(), ControllerError> {
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
    pub fn finish_start(&mut self, result: Result<(), String>) -> ApiReply {
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

/// Applies a configuration's `logger` and `metrics` sections (the config file's, or the
/// command line's `--log-path`/`--metrics-path` turned into them), as `PUT /logger` and
/// `PUT /metrics` would.
pub fn configure_outputs(res: &VmResources) -> Result<(), ControllerError> {
    if let Some(cfg) = &res.logger {
        logger::configure(cfg)?;
    }
    if let Some(cfg) = &res.metrics {
        metrics::init(&cfg.metrics_path)?;
    }
    Ok(())
}

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

    /// Answers requests until `InstanceStart` succeeds, then returns the microVM that
    /// `build` made (its error is the answer to `InstanceStart`, and the API keeps serving).
    /// Returns `Ok(None)` when `stop_fd` (the termination signalfd) becomes readable first.
    pub fn serve_until_started<V>(
        &mut self,
        stop_fd: Option<RawFd>,
        mut build: impl FnMut(&VmResources) -> Result<V, String>,
    ) -> Result<Option<V>, ApiError> {
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
                    Outcome::Reply(reply) => self.chan.reply(reply),
                    Outcome::Start => {
                        let built = build(&self.controller.resources);
                        let (vm, result) = match built {
                            Ok(vm) => (Some(vm), Ok(())),
                            Err(e) => (None, Err(e)),
                        };
                        let reply = self.controller.finish_start(result);
                        self.chan.reply(reply);
                        if vm.is_some() {
                            return Ok(vm);
                        }
                    }
                }
            }
            if self.chan.is_disconnected() {
                return Err(ApiError::ThreadGone);
            }
        }
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
                // The controller refuses a second InstanceStart before getting here.
                Outcome::Start => Err(ControllerError::AlreadyStarted),
            };
            self.chan.reply(reply);
        }
        if self.chan.is_disconnected() {
            crate::log_error!("the API thread has stopped; the API is no longer served");
            return Flow::Remove;
        }
        Flow::Continue
    }
}

fn elapsed_us(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{
        BootSourceConfig, DriveConfig, DriveUpdate, MachineConfig, MachineConfigUpdate,
        NetworkInterfaceConfig, NetworkInterfaceUpdate, VsockConfig,
    };
    use std::cell::RefCell;
    use std::rc::Rc;

    #[derive(Default)]
    struct Log(Rc<RefCell<Vec<String>>>);

    struct FakeVm(Rc<RefCell<Vec<String>>>);

    impl Microvm for FakeVm {
        fn pause(&mut self) -> Result<(), String> {
            self.0.borrow_mut().push("pause".into());
            Ok(())
        }
        fn resume(&mut self) -> Result<(), String> {
            self.0.borrow_mut().push("resume".into());
            Ok(())
        }
        fn send_ctrl_alt_del(&mut self) -> Result<(), String> {
            self.0.borrow_mut().push("ctrl-alt-del".into());
            Ok(())
        }
        fn update_drive(&mut self, id: &str, path: &str) -> Result<(), String> {
            self.0.borrow_mut().push(format!("drive {id} {path}"));
            Ok(())
        }
    }

    fn temp_file(name: &str) -> String {
        let dir = std::env::temp_dir().join(format!("kiln-controller-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, b"x").unwrap();
        p.to_string_lossy().into_owned()
    }

    /// A controller with a stand-in run loop: it owns the fake microVM once started.
    struct Harness {
        c: Controller,
        vm: Option<FakeVm>,
        calls: Rc<RefCell<Vec<String>>>,
        fail_start: Option<String>,
    }

    impl Harness {
        fn handle(&mut self, req: ApiRequest) -> ApiReply {
            let vm = self.vm.as_mut().map(|v| v as &mut dyn Microvm);
            match self.c.handle(req, vm) {
                Outcome::Reply(r) => r,
                Outcome::Start => {
                    let result = match &self.fail_start {
                        Some(e) => Err(e.clone()),
                        None => {
                            let mem = self.c.resources().machine_config.mem_size_mib;
                            self.calls.borrow_mut().push(format!("start {mem}"));
                            self.vm = Some(FakeVm(self.calls.clone()));
                            Ok(())
                        }
                    };
                    self.c.finish_start(result)
                }
            }
        }

        fn state(&self) -> InstanceState {
            self.c.state()
        }
    }

    fn controller(log: &Log) -> Harness {
        Harness {
            c: Controller::new("test-vm", VmResources::default()),
            vm: None,
            calls: log.0.clone(),
            fail_start: None,
        }
    }

    fn json(reply: ApiReply) -> serde_json::Value {
        match reply {
            Ok(VmmData::Json(s)) => serde_json::from_str(&s).unwrap(),
            other => panic!("expected JSON, got {other:?}"),
        }
    }

    fn err(reply: ApiReply) -> String {
        match reply {
            Err(e) => e.to_string(),
            Ok(v) => panic!("expected an error, got {v:?}"),
        }
    }

    #[test]
    fn instance_info_follows_the_state_machine() {
        let log = Log::default();
        let mut c = controller(&log);
        let info = json(c.handle(ApiRequest::GetInstanceInfo));
        assert_eq!(info["state"], "Not started");
        assert_eq!(info["id"], "test-vm");
        assert_eq!(info["app_name"], "Kiln");
        assert_eq!(info["vmm_version"], VMM_VERSION);
        let kernel = temp_file("kernel");
        let boot = BootSourceConfig {
            kernel_image_path: kernel,
            boot_args: None,
            initrd_path: None,
        };
        assert_eq!(
            c.handle(ApiRequest::PutBootSource(boot)).unwrap(),
            VmmData::Empty
        );
        assert_eq!(
            c.handle(ApiRequest::Action(Action::InstanceStart)).unwrap(),
            VmmData::Empty
        );
        assert_eq!(
            json(c.handle(ApiRequest::GetInstanceInfo))["state"],
            "Running"
        );
        c.handle(ApiRequest::PatchVm(VmStateChange::Paused))
            .unwrap();
        c.handle(ApiRequest::PatchVm(VmStateChange::Paused))
            .unwrap();
        assert_eq!(
            json(c.handle(ApiRequest::GetInstanceInfo))["state"],
            "Paused"
        );
        c.handle(ApiRequest::PatchVm(VmStateChange::Resumed))
            .unwrap();
        assert_eq!(
            json(c.handle(ApiRequest::GetInstanceInfo))["state"],
            "Running"
        );
        c.handle(ApiRequest::Action(Action::SendCtrlAltDel))
            .unwrap();
        assert_eq!(
            *log.0.borrow(),
            vec!["start 128", "pause", "resume", "ctrl-alt-del"]
        );
    }

    #[test]
    fn runtime_only_requests_are_refused_before_instance_start() {
        let log = Log::default();
        let mut c = controller(&log);
        let cases = [
            ApiRequest::PatchVm(VmStateChange::Paused),
            ApiRequest::PatchVm(VmStateChange::Resumed),
            ApiRequest::Action(Action::SendCtrlAltDel),
            ApiRequest::PatchDrive {
                path_id: "d".into(),
                update: DriveUpdate {
                    drive_id: "d".into(),
                    path_on_host: None,
                },
            },
            ApiRequest::PatchNetworkInterface {
                path_id: "n".into(),
                update: NetworkInterfaceUpdate {
                    iface_id: "n".into(),
                },
            },
        ];
        for req in cases {
            let what = req.describe();
            let msg = err(c.handle(req));
            assert!(
                msg.contains("only possible after InstanceStart"),
                "{what}: {msg}"
            );
            assert!(msg.starts_with(what), "{what}: {msg}");
        }
        assert!(err(c.handle(ApiRequest::Action(Action::InstanceStart)))
            .contains("boot-source is missing"));
        assert!(log.0.borrow().is_empty());
    }

    #[test]
    fn pre_boot_only_requests_are_refused_after_instance_start() {
        let log = Log::default();
        let mut c = controller(&log);
        let kernel = temp_file("kernel2");
        let drive = temp_file("disk");
        c.handle(ApiRequest::PutBootSource(BootSourceConfig {
            kernel_image_path: kernel.clone(),
            boot_args: None,
            initrd_path: None,
        }))
        .unwrap();
        let drive_cfg = DriveConfig {
            drive_id: "rootfs".into(),
            path_on_host: drive.clone(),
            is_root_device: true,
            is_read_only: false,
            partuuid: None,
            cache_type: Default::default(),
            io_engine: Default::default(),
        };
        c.handle(ApiRequest::PutDrive {
            path_id: "rootfs".into(),
            config: drive_cfg.clone(),
        })
        .unwrap();
        c.handle(ApiRequest::PatchMachineConfig(MachineConfigUpdate {
            mem_size_mib: Some(64),
            ..Default::default()
        }))
        .unwrap();
        c.handle(ApiRequest::Action(Action::InstanceStart)).unwrap();
        assert!(
            err(c.handle(ApiRequest::Action(Action::InstanceStart))).contains("already started")
        );
        let cases = [
            ApiRequest::PutMachineConfig(MachineConfig::default()),
            ApiRequest::PatchMachineConfig(MachineConfigUpdate::default()),
            ApiRequest::PutBootSource(BootSourceConfig {
                kernel_image_path: kernel,
                boot_args: None,
                initrd_path: None,
            }),
            ApiRequest::PutDrive {
                path_id: "rootfs".into(),
                config: drive_cfg,
            },
            ApiRequest::PutNetworkInterface {
                path_id: "n".into(),
                config: NetworkInterfaceConfig {
                    iface_id: "n".into(),
                    host_dev_name: "tap0".into(),
                    guest_mac: None,
                },
            },
            ApiRequest::PutVsock(VsockConfig {
                vsock_id: None,
                guest_cid: 3,
                uds_path: "/tmp/v".into(),
            }),
            ApiRequest::PutLogger(crate::resources::LoggerConfig {
                log_path: None,
                level: None,
                show_level: None,
                show_log_origin: None,
                module: None,
            }),
            ApiRequest::PutMetrics(crate::resources::MetricsConfig {
                metrics_path: "/tmp/m".into(),
            }),
        ];
        for req in cases {
            let what = req.describe();
            let msg = err(c.handle(req));
            assert!(
                msg.contains("only possible before InstanceStart"),
                "{what}: {msg}"
            );
        }
        // Allowed at runtime: reads, FlushMetrics, PATCH of a drive that exists.
        assert_eq!(
            json(c.handle(ApiRequest::GetMachineConfig))["mem_size_mib"],
            64
        );
        assert_eq!(
            json(c.handle(ApiRequest::GetVmConfig))["drives"][0]["drive_id"],
            "rootfs"
        );
        c.handle(ApiRequest::Action(Action::FlushMetrics)).unwrap();
        let other = temp_file("disk2");
        c.handle(ApiRequest::PatchDrive {
            path_id: "rootfs".into(),
            update: DriveUpdate {
                drive_id: "rootfs".into(),
                path_on_host: Some(other.clone()),
            },
        })
        .unwrap();
        assert_eq!(
            json(c.handle(ApiRequest::GetVmConfig))["drives"][0]["path_on_host"],
            other.as_str()
        );
        let msg = err(c.handle(ApiRequest::PatchDrive {
            path_id: "nope".into(),
            update: DriveUpdate {
                drive_id: "nope".into(),
                path_on_host: None,
            },
        }));
        assert!(msg.contains("no drive with drive_id \"nope\""), "{msg}");
        assert_eq!(
            log.0.borrow().last().map(String::as_str),
            Some(format!("drive rootfs {other}").as_str())
        );
    }

    #[test]
    fn setters_refuse_what_the_config_file_refuses_with_the_same_message() {
        let log = Log::default();
        let mut c = controller(&log);
        let bad = MachineConfig {
            vcpu_count: 0,
            ..Default::default()
        };
        let from_api = err(c.handle(ApiRequest::PutMachineConfig(bad)));
        let file = r#"{"boot-source": {"kernel_image_path": "/nonexistent"}, "machine-config": {"vcpu_count": 0, "mem_size_mib": 128}}"#;
        let from_file = VmResources::from_json(file).unwrap_err().to_string();
        assert_eq!(from_api, from_file);
        let mismatch = err(c.handle(ApiRequest::PutDrive {
            path_id: "a".into(),
            config: DriveConfig {
                drive_id: "b".into(),
                path_on_host: "/x".into(),
                is_root_device: false,
                is_read_only: false,
                partuuid: None,
                cache_type: Default::default(),
                io_engine: Default::default(),
            },
        }));
        assert!(
            mismatch.contains("differs from the id in the body"),
            "{mismatch}"
        );
    }

    #[test]
    fn a_failed_start_leaves_the_microvm_not_started() {
        let log = Log::default();
        let mut c = controller(&log);
        c.fail_start = Some("no KVM today".to_string());
        let kernel = temp_file("kernel3");
        c.handle(ApiRequest::PutBootSource(BootSourceConfig {
            kernel_image_path: kernel,
            boot_args: None,
            initrd_path: None,
        }))
        .unwrap();
        let msg = err(c.handle(ApiRequest::Action(Action::InstanceStart)));
        assert_eq!(msg, "InstanceStart failed: no KVM today");
        assert_eq!(c.state(), InstanceState::NotStarted);
    }
}
