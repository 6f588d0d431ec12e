//! One function instance: a jailed microVM running one function's image, and the vsock
//! stream to its guest.
//!
//! **Start.** A private host directory `<state>/instances/<id>/` ([`host_dir`]) gets the
//! instance's own copy of the image, its VM config, its tenant profile (the default one with
//! the memory limit from the manifest), and `vsock/` (owned by the instance's uid, leased in
//! [`uid`]) where the worker already listens on `v.sock_1024` before anything starts. The
//! jailer ([`spawn`]: `--cleanup-on-exit --new-pid-ns --new-netns`, a unique `--id` and uid)
//! binds the image and config read-only and `vsock/` read-write into the jail, and execs the
//! VMM; the VMM's vsock device forwards the guest's connection to port 1024
//! (`/vsock/v.sock_1024` in the jail) to the worker's listener. The instance is ready when
//! the guest's `Hello` names the function ([`ready`]).
//!
//! **Invoke.** (`Context` first for a Linux guest,) `Invoke` with the event, then frames until
//! the `Response` or `Error` with the same id, all within the function's timeout. A timeout, a crash, a protocol violation or a
//! panic marks the instance broken: the pool stops it instead of reusing it.
//!
//! **Stop.** [`jail`]: SIGTERM to the jailer's supervisor, SIGKILL after a grace period, and
//! a check that nothing is left behind, with `jailer cleanup` until the jail is gone; the
//! record goes after it. The jail's output is drained by [`output`].
//!
//! **Records.** [`owner`]: whose an instance directory is (the worker's tag ends its id, its
//! lock says whether it runs); [`record`]: the sweep that removes what gone workers, and
//! stops that failed, left.
//!
//! **Snapshot start.** A function whose manifest asks for it is booted once and snapshotted
//! after its Hello; its cold instances are then restored from that snapshot ([`snapshot`]).
//!
//! **Blank instances.** A jail and a VMM with its API made before any function is known
//! ([`blank`]); assigned to a function for life, it joins the start path above at the wait
//! for the guest (`Instance::start_on_blank`): every start shares the code after its VMM
//! runs the guest.
//!
//! Modules: [`config`] (how instances are jailed), [`error`] (why a start or an invocation
//! failed), [`host_dir`], [`uid`], [`spawn`], [`jail`], [`owner`], [`record`], [`output`],
//! [`ready`], [`snapshot`], [`blank`], [`api`] (the VMM's API, from the worker's side).

mod api;
mod blank;
mod config;
mod error;
mod host_dir;
mod jail;
mod output;
mod owner;
mod ready;
mod record;
mod snapshot;
mod spawn;
mod uid;

pub use api::ApiError;
pub use blank::{BlankInfo, BlankInstance};
pub use config::InstanceConfig;
pub use error::{InstanceError, InvokeError};
pub use jail::{StopMode, StopReport};
pub use output::OutputLogs;
pub use owner::{tag_of, Owner, OwnerError};
pub use ready::is_pvm_host;
pub use record::release;
pub use snapshot::SnapshotFiles;

use crate::channel::{Channel, ChannelError};
use crate::context::InvocationContext;
use crate::function::Function;
use crate::sys;
use crate::timing::StartTimings;
use crate::vmm_exit;
use jail::Jail;
use kiln_guest_builder::Kind as FunctionKind;
use kiln_protocol::{decode_error, ErrorCode, Kind};
use spawn::Launch;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How many bytes of `Log` frames one invocation keeps.
pub const MAX_LOG_BYTES: usize = 64 * 1024;

/// What one invocation gave: the response or why there is none, and the guest's logs.
#[derive(Debug)]
pub struct Invoked {
    pub result: Result<Vec<u8>, InvokeError>,
    /// `Log` frames received during the invocation (at most [`MAX_LOG_BYTES`]).
    pub logs: Vec<u8>,
    pub logs_dropped: u64,
    /// `Invoke` sent → answer (or failure).
    pub handler: Duration,
}

/// A running instance, ready for invocations.
pub struct Instance {
    jail: Jail,
    function: Arc<Function>,
    channel: Channel,
    next_invocation: u32,
    invocations: u64,
    /// The phases of its start.
    pub started: StartTimings,
    pub last_used: Instant,
    /// Why it must not be reused, if it must not.
    broken: Option<String>,
}

/// A snapshot for listings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceInfo {
    pub id: String,
    pub function: String,
    pub uid: u32,
    pub vmm_pid: Option<i32>,
    pub invocations: u64,
    pub state: &'static str,
    pub idle_ms: Option<u64>,
}

/// Removes what gone workers (SIGKILL, power loss), and stops that failed, left: their
/// instances' jails and records ([`record`]) and their functions' snapshots. Returns how
/// many records are left for a later sweep.
pub fn sweep(cfg: &InstanceConfig, wait: std::time::Duration) -> usize {
    snapshot::sweep_stale(cfg);
    record::sweep(cfg, wait)
}

/// How a start's time is split into phases ([`StartTimings`]).
enum Phases {
    /// By the VMM's `--boot-timer` marks (a jail and VMM started for this instance; a
    /// restored VMM prints none, and only the total is known).
    BootMarks,
    /// By the steps of a blank instance's assignment.
    Assignment(blank::Assigned),
}

impl Instance {
    /// Starts a jailed microVM for `function` and waits for its guest's `Hello`: booted,
    /// or restored from the function's snapshot (made first if need be) when its manifest
    /// asks for snapshot start.
    pub fn start(
        cfg: &Arc<InstanceConfig>,
        function: &Arc<Function>,
    ) -> Result<Instance, InstanceError> {
        if function.snapshot_start {
            let files = snapshot::ensure(cfg, function)?;
            return Instance::start_with(cfg, function, Launch::Restore(&files));
        }
        Instance::start_with(cfg, function, Launch::Boot)
    }

    /// A snapshot template of `function`: booted with its API and the snapshot's directory
    /// writable ([`snapshot`]).
    fn start_template(
        cfg: &Arc<InstanceConfig>,
        function: &Arc<Function>,
        files: &SnapshotFiles,
    ) -> Result<Instance, InstanceError> {
        Instance::start_with(cfg, function, Launch::Template(files))
    }

    fn start_with(
        cfg: &Arc<InstanceConfig>,
        function: &Arc<Function>,
        launch: Launch<'_>,
    ) -> Result<Instance, InstanceError> {
        let spawned = Instant::now();
        let linux = function.kind == FunctionKind::Linux;
        if linux && !cfg.kernel.is_file() {
            return Err(InstanceError::NoKernel {
                path: cfg.kernel.clone(),
            });
        }
        let writable: &[&str] = match launch {
            Launch::Template(_) => &[snapshot::JAIL_DIR],
            Launch::Boot | Launch::Restore(_) | Launch::Blank => &[],
        };
        let (mut jail, listener) =
            spawn::make_jail(cfg, &function.name, linux, launch, |host_dir, uid| {
                let listener = host_dir::prepare_for(cfg, function, host_dir, uid, writable)?;
                if let Launch::Template(files) = launch {
                    // The template's VMM writes the snapshot there.
                    std::os::unix::fs::chown(&files.files, Some(uid), Some(uid)).map_err(
                        |source| InstanceError::HostDir {
                            path: files.files.clone(),
                            source,
                        },
                    )?;
                }
                Ok(listener)
            })?;
        let start_timeout = function.hello_timeout.unwrap_or(cfg.start_timeout);
        let deadline = spawned + start_timeout;
        if let Launch::Restore(_) = launch {
            snapshot::restore(&mut jail, spawned, deadline)?;
        }
        Instance::ready(function, jail, listener, spawned, Phases::BootMarks)
    }

    /// Assigns the blank instance `blank` to `function` for the rest of its life: stages the
    /// function's image into its jail, configures its VMM and starts the guest through the
    /// API ([`blank`]), then waits for the guest's `Hello` like any other start.
    pub fn start_on_blank(
        cfg: &Arc<InstanceConfig>,
        function: &Arc<Function>,
        blank: BlankInstance,
    ) -> Result<Instance, InstanceError> {
        let assigned = Instant::now();
        let start_timeout = function.hello_timeout.unwrap_or(cfg.start_timeout);
        let (jail, listener, steps) = blank.assign(function, assigned + start_timeout)?;
        // The VMM's boot marks count from the blank's start, long before the assignment:
        // the assignment's own steps split the start.
        Instance::ready(
            function,
            jail,
            listener,
            assigned,
            Phases::Assignment(steps),
        )
    }

    /// The start path every instance shares once its VMM runs its guest: the guest's
    /// connection and its `Hello` within the start timeout from `spawned`; `phases` says
    /// how the start's time is split.
    fn ready(
        function: &Arc<Function>,
        mut jail: Jail,
        listener: std::os::unix::net::UnixListener,
        spawned: Instant,
        phases: Phases,
    ) -> Result<Instance, InstanceError> {
        let start_timeout = function.hello_timeout.unwrap_or(jail.start_timeout());
        let deadline = spawned + start_timeout;
        let linux = function.kind == FunctionKind::Linux;
        let watch_init = linux && is_pvm_host();
        let stream =
            ready::wait_for_guest(&mut jail, &listener, deadline, start_timeout, watch_init)?;
        drop(listener);
        let mut channel = Channel::new(stream, jail.max_response_bytes());
        let hello_at = ready::hello(&mut channel, &mut jail, function, deadline, start_timeout)?;
        jail.open_vmm_pidfd();
        let started = match phases {
            Phases::BootMarks => StartTimings::from_marks(spawned, hello_at, &jail.logs().marks()),
            Phases::Assignment(a) => {
                StartTimings::from_assignment(spawned, a.configured, a.answered, hello_at)
            }
        };
        Ok(Instance {
            jail,
            function: function.clone(),
            channel,
            next_invocation: 1,
            invocations: 0,
            started,
            last_used: Instant::now(),
            broken: None,
        })
    }

    pub fn id(&self) -> &str {
        self.jail.id()
    }

    pub fn function(&self) -> &Arc<Function> {
        &self.function
    }

    pub fn uid(&self) -> u32 {
        self.jail.uid()
    }

    pub fn vmm_pid(&self) -> Option<i32> {
        self.jail.vmm_pid()
    }

    pub fn supervisor_pid(&self) -> Option<i32> {
        self.jail.supervisor_pid()
    }

    pub fn invocations(&self) -> u64 {
        self.invocations
    }

    /// Why it must not serve again, if so.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    pub fn info(&self, state: &'static str) -> InstanceInfo {
        InstanceInfo {
            id: self.id().to_string(),
            function: self.function.name.clone(),
            uid: self.uid(),
            vmm_pid: self.vmm_pid(),
            invocations: self.invocations,
            state,
            idle_ms: (state == "idle")
                .then(|| u64::try_from(self.last_used.elapsed().as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// Whether it can still serve: not broken, its VMM running and its stream open.
    pub fn is_healthy(&mut self) -> bool {
        if self.broken.is_some() {
            return false;
        }
        if self.jail.supervisor_exited() {
            self.broken = Some(self.jail.exit_message());
            return false;
        }
        match sys::peer_closed(std::os::fd::AsFd::as_fd(&self.channel)) {
            Ok(false) => true,
            _ => {
                self.broken = Some("the guest closed its stream".into());
                false
            }
        }
    }

    /// Runs the handler on `event`. A Linux guest first gets the invocation's Lambda context
    /// (`Context`); a function image never does. The guest's `Log` frames are kept, whatever
    /// the outcome.
    pub fn invoke(&mut self, event: &[u8], ctx: &InvocationContext) -> Invoked {
        let started = Instant::now();
        let deadline = started + self.function.timeout;
        let id = self.next_invocation;
        self.next_invocation = self.next_invocation.wrapping_add(1).max(1);
        self.invocations += 1;
        let mut logs = Vec::new();
        let mut logs_dropped = 0u64;
        let context =
            (self.function.kind == FunctionKind::Linux).then(|| ctx.payload(self.function.timeout));
        let result = context
            .map_or(Ok(()), |c| {
                self.channel.send(Kind::Context, id, &c, deadline)
            })
            .and_then(|()| self.channel.send(Kind::Invoke, id, event, deadline))
            .and_then(|()| loop {
                let f = self.channel.read_frame(deadline)?;
                match (f.header.kind, f.header.id == id) {
                    (Kind::Log, _) => {
                        let room = MAX_LOG_BYTES.saturating_sub(logs.len());
                        let take = room.min(f.payload.len());
                        logs.extend_from_slice(f.payload.get(..take).unwrap_or_default());
                        logs_dropped += u64::try_from(f.payload.len() - take).unwrap_or(0);
                    }
                    (Kind::Response, true) => break Ok(Ok(f.payload)),
                    (Kind::Error, true) => {
                        let (code, message) = decode_error(&f.payload);
                        break Ok(Err((code, message.to_string())));
                    }
                    (kind, _) => {
                        break Ok(Err((
                            ErrorCode::Protocol,
                            format!("unexpected {kind:?} frame for invocation {}", f.header.id),
                        )))
                    }
                }
            });
        let handler = started.elapsed();
        self.last_used = Instant::now();
        let result = match result {
            Ok(Ok(body)) => Ok(body),
            Ok(Err((code, message))) => {
                // The guest's own verdict. A handler error (or a Lambda function's error)
                // leaves the VM usable; a panic, an allocation failure or a protocol problem
                // does not.
                if !matches!(
                    code,
                    ErrorCode::Handler | ErrorCode::EventTooLarge | ErrorCode::Function
                ) {
                    self.broken = Some(format!("{}: {message}", code.as_str()));
                }
                Err(InvokeError::Function { code, message })
            }
            Err(e) => Err(self.fail(e)),
        };
        Invoked {
            result,
            logs,
            logs_dropped,
            handler,
        }
    }

    /// Marks the instance broken after a channel failure, stops it, and says why.
    fn fail(&mut self, e: ChannelError) -> InvokeError {
        let err = match e {
            ChannelError::Timeout => {
                self.broken = Some("timed out".into());
                self.jail.stop(StopMode::Kill);
                return InvokeError::Timeout {
                    function: self.function.name.clone(),
                    after: self.function.timeout,
                };
            }
            ChannelError::BadHeader(kiln_protocol::HeaderError::TooLong { len, max }) => {
                InvokeError::ResponseTooLarge { len, max }
            }
            ChannelError::BadHeader(h) => InvokeError::Protocol(h.to_string()),
            ChannelError::Closed | ChannelError::Io(_) => {
                // The VMM is gone or going: let the supervisor finish (it removes the jail),
                // then report the VMM's last words.
                let grace = self.jail.stop_grace();
                self.jail.wait_supervisor(grace);
                let message = self.jail.exit_message();
                self.broken = Some(message.clone());
                let code = self.jail.exit_code();
                self.jail.stop(StopMode::Kill);
                return if code == Some(vmm_exit::STRICT_IO) {
                    InvokeError::IoViolation(message)
                } else {
                    InvokeError::VmExited(message)
                };
            }
        };
        self.broken = Some(err.to_string());
        self.jail.stop(StopMode::Kill);
        err
    }

    /// Stops the VM and removes its jail (graceful unless it is broken).
    pub fn stop(mut self) -> StopReport {
        let mode = if self.broken.is_some() {
            StopMode::Kill
        } else {
            StopMode::Graceful
        };
        self.jail.stop(mode)
    }

    /// What the guest printed on its console (the last 16 KiB).
    pub fn console(&self) -> String {
        self.jail.logs().console()
    }
}
