//! Blank instances: a jail made, its VMM running with its API up and told the guest's memory
//! size, so that it has made its KVM VM and registered the guest's memory (`--prepare-vm`),
//! and its vsock device (the worker's listener, the same for every instance), ahead of
//! demand — and no function. A blank instance has never been assigned to any
//! function or tenant: its jail's root holds only what the jailer put there (the VMM, its pid
//! file, `/dev`, `/run`, the empty vsock bind), its VMM has no boot source, no vCPU, guest
//! memory no one has written (fresh anonymous pages), and has started no guest (the API says
//! `Not started`).
//!
//! **Assignment** ([`BlankInstance::assign`], once, consuming it): its record says which
//! function it now belongs to; the function's image is copied into the jail's root from the
//! host side (created new, no link followed, mode 0400, owned by the instance's uid — the
//! jail's Landlock rules let the VMM read anything under its `/`, which is mounted read-only
//! inside the jail, so the VMM cannot have planted anything there); then the VMM is
//! configured through its API (`boot-source`, and `machine-config` when the function has
//! more than one vCPU — the same values the config file of a booted instance holds) and
//! `InstanceStart`: written together on the API connection the blank instance kept open
//! since its start, and answered in order (the record is marked while the VMM starts).
//! From then on it is an instance like any other and never blank again.
//!
//! Function images only: a Linux function's kernel and initramfs are bound into its jail
//! when the jail is made, so Linux functions (and snapshot start) always start their own.

use super::api::{ApiConnection, ApiError};
use super::error::InstanceError;
use super::host_dir::{self, JAIL_IMAGE};
use super::jail::{Jail, StopMode, StopReport};
use super::record;
use super::spawn::{self, Launch};
use super::InstanceConfig;
use crate::function::Function;
use kiln_guest_builder::Kind as FunctionKind;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What blank instances' ids start with (`blank-<n>-<worker tag>`).
pub const BLANK_NAME: &str = "blank";
/// A blank instance's vCPUs (a function with more gets its machine-config, and a new VM).
const BLANK_VCPUS: u8 = 1;

/// A started blank instance.
pub struct BlankInstance {
    jail: Jail,
    /// The VMM's API, connected since the start.
    api: ApiConnection,
    listener: UnixListener,
    memory_mib: u32,
    created: Instant,
}

/// A blank instance, for listings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BlankInfo {
    pub id: String,
    pub uid: u32,
    pub vmm_pid: Option<i32>,
    pub supervisor_pid: Option<i32>,
    pub memory_mib: u32,
    pub age_ms: u64,
}

fn api_error(jail: &mut Jail, e: ApiError) -> InstanceError {
    match e {
        ApiError::Exited => InstanceError::Exited(jail.exit_message()),
        e => InstanceError::Api(e),
    }
}

impl BlankInstance {
    /// Makes a blank instance for functions of `memory_mib` MiB: jail (with the memory limit
    /// of that size), VMM with its API, `machine-config` with the memory size (on which the
    /// VMM makes the VM and its memory).
    pub fn start(
        cfg: &Arc<InstanceConfig>,
        memory_mib: u32,
    ) -> Result<BlankInstance, InstanceError> {
        let started = Instant::now();
        let deadline = started + cfg.start_timeout;
        let (mut jail, listener) =
            spawn::make_jail(cfg, BLANK_NAME, false, Launch::Blank, |dir, uid| {
                let listener = host_dir::prepare(cfg, memory_mib, dir, uid, &[])?;
                record::mark_blank(dir)?;
                Ok(listener)
            })?;
        let mut api = match jail.wait_api(started, deadline) {
            Ok(stream) => ApiConnection::new(stream),
            Err(e) => return Err(api_error(&mut jail, e)),
        };
        // Blank instances serve function images only (no Linux functions). The vsock device
        // is every instance's (the worker's listener in the jail's `/vsock`).
        let configure = [
            (
                "/machine-config",
                host_dir::machine_config(BLANK_VCPUS, memory_mib, false).to_string(),
            ),
            ("/vsock", host_dir::vsock().to_string()),
        ];
        if let Err(e) = api
            .send(&configure, deadline)
            .and_then(|()| api.answers(deadline))
        {
            return Err(api_error(&mut jail, e));
        }
        jail.open_vmm_pidfd();
        Ok(BlankInstance {
            jail,
            api,
            listener,
            memory_mib,
            created: started,
        })
    }

    pub fn id(&self) -> &str {
        self.jail.id()
    }

    pub fn memory_mib(&self) -> u32 {
        self.memory_mib
    }

    /// Since its start began.
    pub fn age(&self) -> Duration {
        self.created.elapsed()
    }

    pub fn vmm_pid(&self) -> Option<i32> {
        self.jail.vmm_pid()
    }

    pub fn supervisor_pid(&self) -> Option<i32> {
        self.jail.supervisor_pid()
    }

    /// Whether its jailer (and so its VMM) still runs.
    pub fn is_healthy(&mut self) -> bool {
        !self.jail.supervisor_exited()
    }

    /// Whether a function can be assigned to a blank instance at all (see the module
    /// documentation), whatever its memory size.
    pub fn fits_kind(function: &Function) -> bool {
        function.kind != FunctionKind::Linux && !function.snapshot_start
    }

    pub fn info(&self) -> BlankInfo {
        BlankInfo {
            id: self.id().to_string(),
            uid: self.jail.uid(),
            vmm_pid: self.vmm_pid(),
            supervisor_pid: self.supervisor_pid(),
            memory_mib: self.memory_mib,
            age_ms: u64::try_from(self.age().as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Stops it and removes its jail and record.
    pub fn stop(mut self) -> StopReport {
        self.jail.stop(StopMode::Graceful)
    }

    /// Makes it `function`'s for life and starts the function's guest in it (see the module
    /// documentation); the guest's `Hello` is waited for by the caller. Also returns when
    /// the configuration was sent and when `InstanceStart` was answered.
    pub(super) fn assign(
        self,
        function: &Function,
        deadline: Instant,
    ) -> Result<(Jail, UnixListener, Assigned), InstanceError> {
        let BlankInstance {
            mut jail,
            mut api,
            listener,
            memory_mib,
            ..
        } = self;
        if !BlankInstance::fits_kind(function) || function.memory_mib != memory_mib {
            return Err(InstanceError::BlankUnfit {
                id: jail.id().to_string(),
                memory_mib,
                function: function.name.clone(),
            });
        }
        let image = jail
            .dir()
            .join("root")
            .join(JAIL_IMAGE.trim_start_matches('/'));
        host_dir::copy_private(&function.image, &image, jail.uid()).map_err(|source| {
            InstanceError::HostDir {
                path: image,
                source,
            }
        })?;
        // The blank's machine-config and vsock stand unless the function needs more vCPUs.
        let mut configure = vec![];
        if function.vcpus != BLANK_VCPUS {
            configure.push((
                "/machine-config",
                host_dir::machine_config(function.vcpus, function.memory_mib, false).to_string(),
            ));
        }
        configure.push(("/boot-source", host_dir::boot_source(function).to_string()));
        configure.push((
            "/actions",
            serde_json::json!({ "action_type": "InstanceStart" }).to_string(),
        ));
        if let Err(e) = api.send(&configure, deadline) {
            return Err(api_error(&mut jail, e));
        }
        let configured = Instant::now();
        // While the VMM loads the image and starts the guest.
        record::mark_assigned(jail.host_dir(), &function.name)?;
        if let Err(e) = api.answers(deadline) {
            return Err(api_error(&mut jail, e));
        }
        let answered = Instant::now();
        Ok((
            jail,
            listener,
            Assigned {
                configured,
                answered,
            },
        ))
    }
}

/// When an assignment's steps were done (the start's phases, [`crate::timing`]).
pub(super) struct Assigned {
    /// The image staged and the configuration written to the VMM.
    pub configured: Instant,
    /// `InstanceStart` answered: the VMM's vCPUs run the function's guest.
    pub answered: Instant,
}
