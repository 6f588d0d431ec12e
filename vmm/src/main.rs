//! `vmm`: parses the command line and runs one microVM. See docs/vmm.md.

use std::process::ExitCode;
use std::time::{Duration, Instant};
use vmm::builder::{build_microvm, BuildOptions};
use vmm::cli::{self, Args, Command};
use vmm::exit::code;
use vmm::resources::VmResources;
use vmm::signals::TerminationSignals;
use vmm::timing::StartupTrace;
// The API (docs/api.md).
use kiln_http::DEFAULT_MAX_PAYLOAD_SIZE;
use std::os::fd::AsRawFd;
use std::path::Path;
use vmm::api::Limits;
use vmm::controller::VmmApi;
use vmm::resources::{LoggerConfig, MetricsConfig};

/// The API socket when neither `--api-sock` nor `--no-api` is given (Firecracker's default
/// is /run/firecracker.socket).
const DEFAULT_API_SOCK: &str = "/run/kiln.socket";

/// Applies `--log-path`, `--level` and `--metrics-path` (they override the config file's
/// `logger` and `metrics`), then opens the log and metrics outputs.
fn apply_output_flags(
    args: &Args,
    res: &mut VmResources,
) -> Result<(), vmm::controller::ControllerError> {
    if args.log_path.is_some() || args.level.is_some() {
        let mut cfg = res.logger.clone().unwrap_or(LoggerConfig {
            log_path: None,
            level: None,
            show_level: None,
            show_log_origin: None,
            module: None,
        });
        if let Some(p) = &args.log_path {
            cfg.log_path = Some(p.clone());
        }
        if let Some(l) = args.level {
            cfg.level = Some(l);
        }
        res.logger = Some(cfg.validated()?);
    }
    if let Some(p) = &args.metrics_path {
        res.metrics = Some(
            MetricsConfig {
                metrics_path: p.clone(),
            }
            .validated()?,
        );
    }
    if let Some(id) = &args.id {
        vmm::logger::set_instance_id(id);
    }
    vmm::controller::configure_outputs(res)
}

fn exit_code(c: i32) -> ExitCode {
    ExitCode::from(u8::try_from(c).unwrap_or(1))
}

fn main() -> ExitCode {
    let started = Instant::now();
    let command = match cli::parse(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vmm: {e}");
            return exit_code(code::BAD_ARGS);
        }
    };
    match command {
        Command::Help => {
            print!("{}", cli::HELP);
            exit_code(code::OK)
        }
        Command::Version => {
            println!("vmm (Kiln) {}", env!("CARGO_PKG_VERSION"));
            exit_code(code::OK)
        }
        Command::Run(args) => exit_code(run(*args, started)),
    }
}

/// When the process started: the jailer's `--start-time-us` (CLOCK_MONOTONIC) if given,
/// else the start of `main`.
fn process_origin(args: &Args, main_entry: Instant) -> Instant {
    let Some(start_us) = args.start_time_us else {
        return main_entry;
    };
    let now_us = vmm::timing::monotonic_us();
    let before = Duration::from_micros(now_us.saturating_sub(start_us));
    Instant::now().checked_sub(before).unwrap_or(main_entry)
}

fn run(args: Args, main_entry: Instant) -> i32 {
    vmm::timing::record_process_start(args.start_time_us, args.start_time_cpu_us);
    // Before any thread exists, so that every thread inherits the blocked mask.
    let signals = match TerminationSignals::block() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vmm: {e}");
            return code::GENERIC;
        }
    };
    // The config file (if any) is read first, so that a bad one fails before the API binds.
    let mut resources = match args.config_file.as_deref() {
        None => VmResources::default(),
        Some(config_path) => {
            let text = match read_config_file(config_path) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("vmm: cannot read config file {config_path:?}: {e}");
                    return code::BAD_CONFIG;
                }
            };
            match VmResources::from_json(&text) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("vmm: config file {config_path:?}: {e}");
                    return code::BAD_CONFIG;
                }
            }
        }
    };
    if let Err(e) = apply_output_flags(&args, &mut resources) {
        eprintln!("vmm: {e}");
        return code::BAD_CONFIG;
    }
    // Before any thread starts: each thread installs its own filter from this set.
    if let Err(e) = vmm::seccomp::init(&args) {
        eprintln!("vmm: {e}");
        return code::BAD_CONFIG;
    }
    if let Err(e) = spawn_metrics_flusher() {
        eprintln!("vmm: {e}");
        return code::GENERIC;
    }
    let trace = args
        .boot_timer
        .then(|| StartupTrace::new(process_origin(&args, main_entry)));
    if let Some(t) = &trace {
        t.mark("command line and config file read");
    }
    let build = |res: &VmResources| {
        let opts = BuildOptions {
            serial: args.serial_out.clone(),
            entry: args.boot_entry,
            trace: trace.clone(),
            strict_io: args.strict_io,
        };
        build_microvm(res, opts)
    };
    // The API (unless --no-api): with a config file the microVM boots at once and the API
    // keeps serving; without one, requests configure it until InstanceStart builds it.
    let api = if args.no_api {
        None
    } else {
        let socket = args.api_sock.as_deref().unwrap_or(DEFAULT_API_SOCK);
        let limits = Limits {
            max_payload_size: args
                .http_api_max_payload_size
                .unwrap_or(DEFAULT_MAX_PAYLOAD_SIZE),
            ..Limits::default()
        };
        let id = args.id.as_deref().unwrap_or("anonymous-instance");
        match VmmApi::start(
            Path::new(socket),
            limits,
            id,
            resources.clone(),
            args.config_file.is_some(),
        ) {
            Ok(api) => Some(api),
            Err(e) => {
                eprintln!("vmm: {e}");
                return code::GENERIC;
            }
        }
    };
    let (mut vmm, api) = match (api, args.config_file.is_some()) {
        (Some(mut api), false) => {
            match api.serve_until_started(Some(signals.as_raw_fd()), |res| {
                build(res).map_err(|e| e.to_string())
            }) {
                Ok(Some(vmm)) => (vmm, Some(api)),
                // SIGTERM/SIGINT before InstanceStart.
                Ok(None) => {
                    eprintln!("vmm: stopped by a signal before InstanceStart (exit code 0)");
                    if let Err(e) = vmm::metrics::flush() {
                        eprintln!("vmm: {e}");
                    }
                    return code::OK;
                }
                Err(e) => {
                    eprintln!("vmm: {e}");
                    return code::GENERIC;
                }
            }
        }
        (api, _) => {
            vmm::timing::record_instance_start();
            match build(&resources) {
                Ok(v) => (v, api),
                Err(e) => {
                    eprintln!("vmm: cannot start the microVM: {e}");
                    return code::START_FAILED;
                }
            }
        }
    };
    if let Some(t) = &trace {
        eprintln!("{}", t.report());
    }
    if let Some(api) = api {
        if let Err(e) = api.attach(&mut vmm) {
            eprintln!("vmm: cannot serve the API from the run loop: {e}");
            return code::GENERIC;
        }
    }
    if let Err(e) = vmm.watch_termination_signals(signals) {
        eprintln!("vmm: {e}");
        return code::GENERIC;
    }
    vmm.forward_stdin_to_serial();
    // The microVM is built: from here on this thread serves the guest's devices.
    vmm::seccomp::install(vmm::seccomp::ThreadKind::Vmm);
    let exit = vmm.run();
    let code = exit.code();
    if let Err(e) = vmm::metrics::flush() {
        eprintln!("vmm: {e}");
    }
    eprintln!("vmm: {exit} (exit code {code})");
    // Releases vCPU threads, devices, the VM and guest memory before the process ends.
    drop(vmm);
    code
}

/// Largest config file read: far above any real configuration, and a bound for a path that
/// names a device or a pipe that never ends (a pipe such as `<(...)` is still accepted).
const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;

fn read_config_file(path: &str) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_CONFIG_FILE_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CONFIG_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_CONFIG_FILE_BYTES} bytes"),
        ));
    }
    Ok(text)
}

/// Starts the `kiln_metrics` thread: a metrics line every [`vmm::metrics::FLUSH_INTERVAL`]
/// for the rest of the process's life, under the VMM thread's seccomp filter.
fn spawn_metrics_flusher() -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("kiln_metrics".into())
        .spawn(|| {
            vmm::seccomp::install(vmm::seccomp::ThreadKind::Vmm);
            loop {
                std::thread::sleep(vmm::metrics::FLUSH_INTERVAL);
                if let Err(e) = vmm::metrics::flush() {
                    vmm::log_warn!("periodic metrics flush: {e}");
                }
            }
        })
        .map(|_| ())
}
