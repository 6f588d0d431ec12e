//! `vmm`: parses the command line and runs one microVM. See docs/vmm.md.
//!
//! [`run`] is one step per line; every failure is a [`RunError`], and
//! [`RunError::exit_code`] is the one place that decides the exit code of a failed start
//! (docs/vmm.md lists them). Once the microVM runs, the exit code is that of the reason it
//! stopped ([`vmm::exit::VmExit::code`]).

/// `eprintln!` that drops a message stderr cannot take (a pipe nobody reads any more)
/// instead of panicking: `kiln_argv::stderr`.
macro_rules! eprintln {
    ($($arg:tt)*) => {
        kiln_argv::stderr::line(format_args!($($arg)*))
    };
}

mod cli;

use cli::{Args, CliError, Command, KeySource};
use kiln_hostfs::InputError;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm::api::{ApiError, Limits};
use vmm::builder::{
    build_microvm, build_prepared, prepare_platform, BuildError, BuildOptions, Prepared,
};
use vmm::controller::{configure_outputs, ControllerError, Starter, VmmApi};
use vmm::event_loop::{EventLoop, EventLoopError};
use vmm::exit::code;
use vmm::mmds::SharedMmds;
use vmm::persist::{self, DescribeError};
use vmm::resources::{
    MachineConfig, MetricsConfig, ResourceError, SnapshotLoad, VmResources, DEFAULT_INSTANCE_ID,
};
use vmm::seccomp::{self, SeccompError, ThreadKind};
use vmm::signals::{SignalError, TerminationSignals};
use vmm::snapshot::{KeyError, SnapshotKey};
use vmm::timing::{self, StartupTrace};
use vmm::vmm::{self as running, Vmm};

/// The API socket when neither `--api-sock` nor `--no-api` is given: Firecracker's, where a
/// jailed orchestrator looks for it when it passes no `--api-sock`.
const DEFAULT_API_SOCK: &str = "/run/firecracker.socket";

/// Largest config file read: far above any real configuration, and a bound for a path that
/// names a pipe that never ends (a pipe such as `<(...)` is accepted, a device is not).
const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;

/// Why the VMM stopped before (or instead of) running the microVM.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    Args(#[from] CliError),
    #[error(transparent)]
    Signals(#[from] SignalError),
    #[error("cannot read config file {path:?}: {source}")]
    ReadConfig { path: String, source: InputError },
    #[error("config file {path:?}: {source}")]
    Config { path: String, source: ResourceError },
    /// `--log-path`, `--level`, `--metrics-path` or the config file's `logger`/`metrics`.
    #[error(transparent)]
    Outputs(ControllerError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("metrics: cannot start the periodic flusher thread: {0}")]
    MetricsThread(std::io::Error),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("cannot start the microVM: {0}")]
    Start(BuildError),
    #[error("cannot serve the API from the run loop: {0}")]
    ServeApi(EventLoopError),
    #[error(transparent)]
    WatchSignals(EventLoopError),
    #[error("--snapshot-key-fd {fd}: the descriptor is not open")]
    KeyFd { fd: i32 },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("--describe-snapshot {0}")]
    Describe(#[from] DescribeError),
    #[error("cannot read --metadata {path:?}: {source}")]
    ReadMetadata { path: String, source: InputError },
    #[error("--metadata {path:?}: {reason}")]
    Metadata { path: String, reason: String },
}

impl RunError {
    /// The process exit code for this failure.
    fn exit_code(&self) -> i32 {
        match self {
            RunError::Args(_) => code::BAD_ARGS,
            RunError::ReadConfig { .. }
            | RunError::Config { .. }
            | RunError::Outputs(_)
            | RunError::Seccomp(_)
            | RunError::KeyFd { .. }
            | RunError::Key(_)
            | RunError::ReadMetadata { .. }
            | RunError::Metadata { .. } => code::BAD_CONFIG,
            RunError::Start(_) => code::START_FAILED,
            RunError::Signals(_)
            | RunError::MetricsThread(_)
            | RunError::Api(_)
            | RunError::ServeApi(_)
            | RunError::WatchSignals(_)
            | RunError::Describe(_) => code::GENERIC,
        }
    }
}

fn main() -> ExitCode {
    let main_entry = Instant::now();
    let code = match start(main_entry) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmm: {e}");
            e.exit_code()
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Does what the command line asks; returns the exit code.
fn start(main_entry: Instant) -> Result<i32, RunError> {
    match cli::parse(std::env::args_os().skip(1))? {
        Command::Help => {
            print!("{}", cli::HELP);
            Ok(code::OK)
        }
        Command::Version => {
            // Firecracker's first line (launchers parse it), then Kiln's own version.
            println!(
                "Firecracker v{} (Kiln vmm {})",
                vmm::controller::FIRECRACKER_VERSION,
                vmm::controller::VMM_VERSION
            );
            Ok(code::OK)
        }
        Command::SnapshotVersion => {
            println!("{}", vmm::snapshot::VERSION);
            Ok(code::OK)
        }
        Command::DescribeSnapshot(path) => {
            println!("{}", persist::describe(&path)?);
            Ok(code::OK)
        }
        Command::Run(args) => run(*args, main_entry),
    }
}

/// Runs the microVM until it stops; returns the exit code of the reason it stopped.
fn run(args: Args, main_entry: Instant) -> Result<i32, RunError> {
    timing::record_process_start(args.start_time_us, args.start_time_cpu_us);
    // Before any thread exists, so that every thread inherits the blocked mask.
    let signals = TerminationSignals::block()?;
    // The config file (if any) and the snapshot key are read first, so that a bad one fails
    // before the API binds.
    let mut resources = read_config(args.config_file.as_deref())?;
    let key = read_key(args.snapshot_key.as_ref())?;
    let mmds = read_metadata(&args, &resources)?;
    apply_output_flags(&args, &mut resources).map_err(RunError::Outputs)?;
    // The host CPUID the jailer asked KVM for while it made the jail (host_cpuid.rs), kept
    // for the first build or restore. Without one, or with a bad one, the VMM asks KVM.
    match vmm::vstate::host_cpuid::receive_handed_over() {
        Ok(true) => vmm::log_debug!("host CPUID: taken from the jailer"),
        Ok(false) => {}
        Err(e) => vmm::log_warn!("host CPUID: ignoring the jailer's answer ({e}); asking KVM"),
    }
    // Before any thread starts: each thread installs its own filter from this set.
    seccomp::init(&args.seccomp)?;
    // In API mode without a config file the flusher starts right after the API's thread
    // (`start_microvm`): the API thread's seccomp filter is then compiled before the
    // flusher's instead of beside it (compiling one takes ~0.2 CPU ms here and kernel locks
    // the other waits on), and the first answer comes ~0.05 ms sooner.
    if args.no_api || args.config_file.is_some() {
        spawn_metrics_flusher().map_err(RunError::MetricsThread)?;
    }
    let trace = args
        .boot_timer
        .then(|| StartupTrace::new(process_origin(&args, main_entry)));
    if let Some(t) = &trace {
        t.mark("command line and config file read");
    }
    let Some(Started {
        mut vmm,
        mut events,
        api,
    }) = start_microvm(&args, resources, key, mmds, &signals, &trace)?
    else {
        eprintln!("vmm: stopped by a signal before InstanceStart (exit code 0)");
        flush_metrics();
        return Ok(code::OK);
    };
    if let Some(t) = &trace {
        eprintln!("{}", t.report());
    }
    if let Some(api) = api {
        api.attach(&mut events).map_err(RunError::ServeApi)?;
    }
    running::watch_termination_signals(&mut events, signals).map_err(RunError::WatchSignals)?;
    vmm.forward_stdin_to_serial(&mut events);
    // The microVM is built: from here on this thread serves the guest's devices.
    seccomp::install(ThreadKind::Vmm);
    let exit = vmm.run(&mut events);
    let code = exit.code();
    flush_metrics();
    eprintln!("vmm: {exit} (exit code {code})");
    // Releases vCPU threads, devices, the VM and guest memory before the process ends.
    drop(vmm);
    drop(events);
    Ok(code)
}

/// The config file's resources (none: the defaults, for the API to fill in).
fn read_config(path: Option<&str>) -> Result<VmResources, RunError> {
    let Some(path) = path else {
        return Ok(VmResources::default());
    };
    let text =
        kiln_hostfs::read_text(Path::new(path), MAX_CONFIG_FILE_BYTES).map_err(|source| {
            RunError::ReadConfig {
                path: path.to_string(),
                source,
            }
        })?;
    VmResources::from_json(&text).map_err(|source| RunError::Config {
        path: path.to_string(),
        source,
    })
}

/// The MMDS data store: limited by `--mmds-size-limit` (by default the API's body limit,
/// as Firecracker), holding `--metadata`'s document when given, configured by the config
/// file's `mmds-config`.
fn read_metadata(args: &Args, res: &VmResources) -> Result<SharedMmds, RunError> {
    let limit = args
        .mmds_size_limit
        .or(args.http_api_max_payload_size)
        .unwrap_or(kiln_http::DEFAULT_MAX_PAYLOAD_SIZE);
    let mmds = vmm::mmds::shared(limit);
    if let Some(cfg) = &res.mmds_config {
        vmm::sync::lock(&mmds).configure(cfg.version, cfg.imds_compat);
    }
    let Some(path) = &args.metadata else {
        return Ok(mmds);
    };
    // The file may be indented beyond the compact size the limit counts; the store checks
    // that once parsed.
    let max = u64::try_from(limit)
        .unwrap_or(u64::MAX)
        .max(MAX_CONFIG_FILE_BYTES);
    let text =
        kiln_hostfs::read_text(Path::new(path), max).map_err(|source| RunError::ReadMetadata {
            path: path.clone(),
            source,
        })?;
    let bad = |reason: String| RunError::Metadata {
        path: path.clone(),
        reason,
    };
    let doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    vmm::sync::lock(&mmds)
        .put(doc)
        .map_err(|e| bad(e.to_string()))?;
    Ok(mmds)
}

/// The snapshot key (`--snapshot-key-file`, `--snapshot-key-fd`).
fn read_key(source: Option<&KeySource>) -> Result<Option<Arc<SnapshotKey>>, RunError> {
    let key = match source {
        None => return Ok(None),
        Some(KeySource::File(p)) => SnapshotKey::from_file(p)?,
        Some(KeySource::Fd(fd)) => {
            let fd = *fd;
            // SAFETY: F_GETFD only reads the descriptor's flags; it fails on a closed one.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(RunError::KeyFd { fd });
            }
            // SAFETY: `fd` is open (checked above), 3 or more (the command line refuses the
            // standard streams), and nothing else in this process uses it: the VMM opens
            // nothing before reading the key except its config file, already closed. The
            // file takes ownership and closes it once read.
            let file = unsafe { std::fs::File::from_raw_fd(fd) };
            SnapshotKey::from_file_handle(file, fd)?
        }
    };
    Ok(Some(Arc::new(key)))
}

/// Applies the logger flags (`--log-path`, `--level`, `--show-level`, `--show-log-origin`,
/// `--module`) and `--metrics-path` (they override the config file's `logger` and
/// `metrics`), then opens the log and metrics outputs.
fn apply_output_flags(args: &Args, res: &mut VmResources) -> Result<(), ControllerError> {
    let logger_flags = args.log_path.is_some()
        || args.level.is_some()
        || args.show_level
        || args.show_log_origin
        || args.module.is_some();
    if logger_flags {
        let mut cfg = res.logger.clone().unwrap_or_default();
        if let Some(p) = &args.log_path {
            cfg.log_path = Some(p.clone());
        }
        if let Some(l) = args.level {
            cfg.level = Some(l);
        }
        if args.show_level {
            cfg.show_level = Some(true);
        }
        if args.show_log_origin {
            cfg.show_log_origin = Some(true);
        }
        if let Some(m) = &args.module {
            cfg.module = Some(m.clone());
        }
        res.logger = Some(cfg.validated()?);
    }
    if let Some(p) = &args.metrics_path {
        res.metrics = Some(MetricsConfig::new(p).validated()?);
    }
    if let Some(id) = &args.id {
        vmm::logger::set_instance_id(id);
    }
    configure_outputs(res, instance_id(args))
}

/// The microVM's id: `--id`, else Firecracker's default.
fn instance_id(args: &Args) -> &str {
    args.id.as_deref().unwrap_or(DEFAULT_INSTANCE_ID)
}

/// Starts the `kiln_metrics` thread: a metrics line every [`vmm::metrics::FLUSH_INTERVAL`]
/// for the rest of the process's life, under the VMM thread's seccomp filter.
fn spawn_metrics_flusher() -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("kiln_metrics".into())
        .spawn(|| {
            seccomp::install(ThreadKind::Vmm);
            loop {
                std::thread::sleep(vmm::metrics::FLUSH_INTERVAL);
                if let Err(e) = vmm::metrics::flush() {
                    vmm::log_warn!("periodic metrics flush: {e}");
                }
            }
        })
        .map(|_| ())
}

/// Writes a last metrics line; a failure is only reported.
fn flush_metrics() {
    if let Err(e) = vmm::metrics::flush() {
        eprintln!("vmm: {e}");
    }
}

/// When the process started: the jailer's `--start-time-us` (CLOCK_MONOTONIC) if given,
/// else the start of `main`.
fn process_origin(args: &Args, main_entry: Instant) -> Instant {
    let Some(start_us) = args.start_time_us else {
        return main_entry;
    };
    let now_us = timing::monotonic_us();
    let before = Duration::from_micros(now_us.saturating_sub(start_us));
    Instant::now().checked_sub(before).unwrap_or(main_entry)
}

/// A started microVM, the event loop that serves it, and the API (unless `--no-api`).
struct Started {
    vmm: Vmm,
    events: EventLoop<Vmm>,
    api: Option<VmmApi>,
}

/// How the API makes the microVM: boot (`InstanceStart`) or restore (`PUT /snapshot/load`).
struct MainStarter<'a> {
    opts: BuildOptions,
    trace: &'a Option<StartupTrace>,
    mmds: SharedMmds,
    /// `--prepare-vm`: make the VM and its memory once the machine configuration is set.
    prepare_vm: bool,
    prepared: Option<Prepared>,
    /// The host's CPUID query has been started ahead (host_cpuid.rs).
    cpuid_asked: bool,
}

impl Starter for MainStarter<'_> {
    type Started = (Vmm, EventLoop<Vmm>);

    fn boot(&mut self, res: &VmResources) -> Result<Self::Started, String> {
        let (vmm, events) = build_prepared(res, self.opts.clone(), self.prepared.take())
            .map_err(|e| e.to_string())?;
        vmm.attach_mmds(res.mmds_config.as_ref(), &self.mmds);
        Ok((vmm, events))
    }

    fn load(
        &mut self,
        req: &SnapshotLoad,
        key: Option<&SnapshotKey>,
    ) -> Result<(Self::Started, VmResources), String> {
        // The boot-time milestones count from the load (as from InstanceStart).
        timing::record_instance_start();
        if let Some(t) = self.trace {
            t.mark("snapshot/load requested");
        }
        let mut loaded = persist::load_snapshot(req, &self.opts, key).map_err(|e| e.to_string())?;
        loaded
            .vmm
            .attach_mmds(loaded.resources.mmds_config.as_ref(), &self.mmds);
        if let Some(t) = self.trace {
            t.mark("snapshot loaded (paused)");
        }
        if req.resume_vm {
            loaded
                .vmm
                .resume()
                .map_err(|e| format!("the snapshot was loaded but resuming it failed: {e}"))?;
        }
        Ok(((loaded.vmm, loaded.events), loaded.resources))
    }

    /// With `--prepare-vm`, once `PUT /machine-config` has set the machine: its VM, memory
    /// and vCPUs now (made again if the configuration or the CPU template changes; a failure
    /// is only logged, and `InstanceStart` then makes them and reports it).
    ///
    /// And once, after the first requests are answered (an orchestrator's first look at the
    /// socket, so its start → API answer is not slowed): the host's CPUID query, the slowest
    /// part of a build or restore, on a thread of its own while the configuration requests
    /// come.
    fn idle(&mut self, res: &VmResources) {
        if !self.cpuid_asked {
            self.cpuid_asked = true;
            // Not when the jailer already handed the answer over.
            if !vmm::vstate::host_cpuid::handed_over() {
                if let Err(e) = vmm::vstate::host_cpuid::prefetch() {
                    vmm::log_warn!("cannot start the host CPUID query ahead: {e}");
                }
            }
        }
        if !self.prepare_vm || res.machine_config == MachineConfig::default() {
            return;
        }
        if self.prepared.as_ref().is_some_and(|p| p.fits(res)) {
            return;
        }
        // The VM made for an older configuration goes first (its memory with it).
        self.prepared = None;
        match prepare_platform(res) {
            Ok(p) => {
                if let Some(t) = self.trace {
                    t.mark("VM, guest memory and vCPUs prepared (before InstanceStart)");
                }
                self.prepared = Some(p);
            }
            Err(e) => vmm::log_warn!("--prepare-vm: {e}; InstanceStart will try again"),
        }
    }
}

/// Builds and starts the microVM, with the API unless `--no-api`. With a config file the
/// microVM boots at once and the API keeps serving; without one, API requests configure it
/// until `InstanceStart` builds it (or `PUT /snapshot/load` restores one). `None`:
/// SIGTERM/SIGINT came before.
fn start_microvm(
    args: &Args,
    resources: VmResources,
    key: Option<Arc<SnapshotKey>>,
    mmds: SharedMmds,
    signals: &TerminationSignals,
    trace: &Option<StartupTrace>,
) -> Result<Option<Started>, RunError> {
    let opts = BuildOptions {
        serial: args.serial_out.clone(),
        entry: args.boot_entry,
        trace: trace.clone(),
        strict_io: args.strict_io,
        coalesce_mmio: args.coalesce_mmio,
        pci: args.enable_pci,
    };
    let booted = args.config_file.is_some();
    let api = if args.no_api {
        if let Some(sock) = &args.api_sock {
            // Firecracker accepts the pair and serves no API; say so rather than refuse.
            vmm::log_warn!("--api-sock {sock} is ignored: --no-api serves no API");
        }
        None
    } else {
        let socket = args.api_sock.as_deref().unwrap_or(DEFAULT_API_SOCK);
        let limits = Limits {
            max_payload_size: args
                .http_api_max_payload_size
                .unwrap_or(kiln_http::DEFAULT_MAX_PAYLOAD_SIZE),
            ..Limits::default()
        };
        let mut api = VmmApi::start(
            Path::new(socket),
            limits,
            instance_id(args),
            resources.clone(),
            booted,
        )?;
        api.set_snapshot_key(key);
        api.set_mmds(mmds.clone());
        if !booted {
            spawn_metrics_flusher().map_err(RunError::MetricsThread)?;
        }
        Some(api)
    };
    match api {
        Some(mut api) if !booted => {
            let mut starter = MainStarter {
                opts,
                trace,
                mmds: mmds.clone(),
                prepare_vm: args.prepare_vm,
                prepared: None,
                cpuid_asked: false,
            };
            let built = api.serve_until_started(Some(signals.as_raw_fd()), &mut starter)?;
            Ok(built.map(|(vmm, events)| Started {
                vmm,
                events,
                api: Some(api),
            }))
        }
        api => {
            timing::record_instance_start();
            let (vmm, events) = build_microvm(&resources, opts).map_err(RunError::Start)?;
            vmm.attach_mmds(resources.mmds_config.as_ref(), &mmds);
            Ok(Some(Started { vmm, events, api }))
        }
    }
}
