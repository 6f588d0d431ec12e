//! `kiln`: see docs/worker.md and `kiln --help`.

/// `eprintln!` that drops a message stderr cannot take (a pipe nobody reads any more)
/// instead of panicking: `kiln_argv::stderr`.
macro_rules! eprintln {
    ($($arg:tt)*) => {
        kiln_argv::stderr::line(format_args!($($arg)*))
    };
}

use kiln_worker::cli::{self, BuildArgs, Command, Common, Event, InvokeArgs, ServeArgs};
use kiln_worker::context::{Identity, InvocationContext};
use kiln_worker::function::Registry;
use kiln_worker::instance::{self, InstanceConfig};
use kiln_worker::pool::{PoolConfig, PoolError, Pools};
use kiln_worker::server::lambda::{Credentials, LambdaApi, LambdaConfig};
use kiln_worker::server::{self, ServerConfig};
use kiln_worker::sync::lock;
use kiln_worker::sys;
use kiln_worker::timing::ms;
use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Exit codes.
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_INTERRUPTED: u8 = 130;
/// How long shutdown waits for busy instances.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(30);
/// How long the start-up sweep's `jailer cleanup` waits for a gone worker's jail to exit
/// (its supervisor got SIGTERM when the worker died and is removing it meanwhile).
const STARTUP_SWEEP_WAIT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let command = match cli::parse(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kiln: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match command {
        Command::Help => {
            print!("{}", cli::HELP);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("kiln {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Build(a) => run_build(a),
        Command::Invoke(a) => run_invoke(a),
        Command::Serve(a) => run_serve(a),
    }
}

/// `name` next to the running `kiln` binary.
fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// `$KILN_CACHE` (else `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`), as scripts/assets.sh.
fn kiln_cache() -> PathBuf {
    if let Some(d) = std::env::var_os("KILN_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("kiln");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/kiln")
}

/// The guest kernel scripts/assets.sh builds.
fn default_kernel() -> PathBuf {
    kiln_cache().join("assets/current/vmlinux")
}

/// `--init`, else `kiln-init` next to kiln (built with the workspace, statically).
fn init_path(common: &Common) -> PathBuf {
    absolute(&common.init.clone().unwrap_or_else(|| sibling("kiln-init")))
}

fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KILN_CACHE") {
        return PathBuf::from(d).join("functions");
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("kiln").join("functions");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/kiln/functions")
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Checks the environment and builds the pools. Errors are printed; `None` means exit 1.
fn setup(common: &Common, pool_cfg: PoolConfig) -> Option<Arc<Pools>> {
    let jailer = absolute(&common.jailer.clone().unwrap_or_else(|| sibling("jailer")));
    let vmm = absolute(&common.vmm.clone().unwrap_or_else(|| sibling("vmm")));
    for (what, p, flag) in [("jailer", &jailer, "--jailer"), ("VMM", &vmm, "--vmm")] {
        if !p.is_file() {
            eprintln!(
                "kiln: the {what} binary {} does not exist (use {flag} PATH)",
                p.display()
            );
            return None;
        }
    }
    let profile = match InstanceConfig::load_profile(&common.profile) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("kiln: {e} (use --profile FILE)");
            return None;
        }
    };
    let state_dir = absolute(&common.state_dir);
    if let Err(e) = std::fs::create_dir_all(&state_dir) {
        eprintln!("kiln: cannot create {}: {e}", state_dir.display());
        return None;
    }
    let owner = match instance::Owner::acquire(&state_dir) {
        Ok(o) => Arc::new(o),
        Err(e) => {
            eprintln!("kiln: {e}");
            return None;
        }
    };
    let cfg = InstanceConfig {
        jailer,
        vmm,
        chroot_base: absolute(&common.chroot_base),
        state_dir,
        owner,
        profile_path: common.profile.clone(),
        profile,
        uid_base: common.uid_base,
        uid_count: common.uid_count,
        parent_cgroup: common.parent_cgroup.clone(),
        memory_overhead_mib: common.memory_overhead_mib,
        start_timeout: common.start_timeout,
        kernel: absolute(&common.kernel.clone().unwrap_or_else(default_kernel)),
        stop_grace: common.stop_grace,
        strict_io: common.strict_io,
        max_response_bytes: kiln_protocol::DEFAULT_MAX_PAYLOAD,
        vmm_args: common.vmm_args.clone(),
    };
    for dir in [&cfg.chroot_base, &cfg.state_dir] {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("kiln: cannot create {}: {e}", dir.display());
            return None;
        }
    }
    // What workers that are gone left: their jails, then their records.
    instance::sweep(&cfg, STARTUP_SWEEP_WAIT);
    let cache = absolute(&common.cache_dir.clone().unwrap_or_else(default_cache_dir));
    let registry = Arc::new(
        Registry::new(absolute(&common.functions_dir), cache).with_init(init_path(common)),
    );
    Some(Pools::new(registry, Arc::new(cfg), pool_cfg))
}

/// Blocks the termination signals (before any thread starts) and runs `on_signal` on the
/// first one, in a thread of its own.
fn handle_signals(on_signal: impl FnOnce(i32) + Send + 'static) -> bool {
    if let Err(e) = sys::block_termination_signals() {
        eprintln!("kiln: {e}");
        return false;
    }
    let spawned = std::thread::Builder::new()
        .name("kiln-signals".into())
        .spawn(move || match sys::wait_termination_signal() {
            Ok(sig) => on_signal(sig),
            Err(e) => eprintln!("kiln: {e}"),
        });
    spawned.is_ok()
}

fn report_error(function: &str, e: &PoolError, json: bool) {
    if json {
        let mut err = serde_json::json!({ "code": e.code(), "message": e.to_string() });
        if let Some(id) = e.vm_id() {
            err["vm_id"] = id.into();
        }
        println!(
            "{}",
            serde_json::json!({ "function": function, "error": err })
        );
    }
    eprintln!("kiln: invoke {function}: {e} [{}]", e.code());
}

/// `kiln build NAME|DIR`: the image's path on stdout.
fn run_build(a: BuildArgs) -> ExitCode {
    let cache = absolute(&a.common.cache_dir.clone().unwrap_or_else(default_cache_dir));
    let as_dir = Path::new(&a.target);
    let (functions_dir, name) = if a.target.contains('/') || as_dir.join("kiln.json").is_file() {
        let dir = absolute(as_dir);
        match (dir.parent(), dir.file_name().and_then(|n| n.to_str())) {
            (Some(parent), Some(name)) => (parent.to_path_buf(), name.to_string()),
            _ => {
                eprintln!("kiln: {} is not a function directory", dir.display());
                return ExitCode::from(EXIT_USAGE);
            }
        }
    } else {
        (absolute(&a.common.functions_dir), a.target.clone())
    };
    let t = Instant::now();
    let registry = Registry::new(functions_dir, cache).with_init(init_path(&a.common));
    match registry.get(&name) {
        Ok(f) => {
            println!("{}", f.image.display());
            eprintln!(
                "kiln: built {} in {}: memory {} MiB, {} vCPU, timeout {} ms, concurrency {}, events up to {} bytes",
                f.name,
                ms(t.elapsed()),
                f.memory_mib,
                f.vcpus,
                f.timeout.as_millis(),
                f.concurrency,
                f.max_event_bytes
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kiln: build {name}: {e} [{}]", e.code());
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn run_invoke(a: InvokeArgs) -> ExitCode {
    let interrupted = Arc::new(AtomicBool::new(false));
    let pools_slot: Arc<std::sync::OnceLock<Arc<Pools>>> = Arc::new(std::sync::OnceLock::new());
    {
        let (interrupted, slot) = (interrupted.clone(), pools_slot.clone());
        if !handle_signals(move |sig| {
            eprintln!("kiln: signal {sig}: stopping the microVM");
            interrupted.store(true, Ordering::Release);
            if let Some(p) = slot.get() {
                p.shutdown(SHUTDOWN_WAIT);
            }
        }) {
            return ExitCode::from(EXIT_FAILED);
        }
    }
    let event = match &a.event {
        Event::Inline(s) => s.clone().into_bytes(),
        Event::File(p) => match std::fs::read(p) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("kiln: cannot read the event file {}: {e}", p.display());
                return ExitCode::from(EXIT_USAGE);
            }
        },
    };
    let pool_cfg = PoolConfig {
        idle_timeout: None,
        queue_timeout: Duration::ZERO,
        max_queue: 0,
    };
    let Some(pools) = setup(&a.common, pool_cfg) else {
        return ExitCode::from(EXIT_FAILED);
    };
    let _ = pools_slot.set(pools.clone());
    let t = Instant::now();
    if let Err(e) = pools.registry().get(&a.function) {
        report_error(&a.function, &PoolError::Function(e), a.json);
        return ExitCode::from(EXIT_FAILED);
    }
    if !a.json {
        eprintln!(
            "kiln: {} ready to run (image built or up to date) in {}",
            a.function,
            ms(t.elapsed())
        );
    }
    let mut code = ExitCode::SUCCESS;
    let mut warm: Vec<(Duration, Duration)> = Vec::new();
    let warm_started = Instant::now();
    let mut warm_first: Option<Instant> = None;
    for n in 0..a.repeat {
        if interrupted.load(Ordering::Acquire) {
            break;
        }
        let ctx = InvocationContext::new(&Identity::default(), &a.function);
        match pools.invoke(&a.function, &event, &ctx) {
            Ok(inv) => {
                if !inv.cold && warm_first.is_none() {
                    warm_first = Some(Instant::now() - inv.timings.total);
                }
                if !inv.cold {
                    warm.push((inv.timings.handler, inv.timings.total));
                }
                if !inv.logs.is_empty() {
                    eprintln!(
                        "kiln: [{}] {}",
                        inv.vm_id,
                        String::from_utf8_lossy(&inv.logs).trim_end()
                    );
                }
                let kind = if inv.cold { "cold" } else { "warm" };
                if a.json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "function": a.function,
                            "vm_id": inv.vm_id,
                            "cold": inv.cold,
                            "response": String::from_utf8_lossy(&inv.body),
                            "timings_us": inv.timings.to_json(),
                        })
                    );
                } else {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&inv.body);
                    if !inv.body.ends_with(b"\n") {
                        let _ = out.write_all(b"\n");
                    }
                    let _ = out.flush();
                    eprintln!(
                        "kiln: {} #{} {kind} (vm {}): {}",
                        a.function,
                        n + 1,
                        inv.vm_id,
                        inv.timings.summary()
                    );
                }
            }
            Err(e) => {
                report_error(&a.function, &e, a.json);
                code = ExitCode::from(EXIT_FAILED);
                break;
            }
        }
    }
    if warm.len() > 1 && !a.json {
        let mut handlers: Vec<Duration> = warm.iter().map(|w| w.0).collect();
        let mut totals: Vec<Duration> = warm.iter().map(|w| w.1).collect();
        handlers.sort();
        totals.sort();
        let mid = warm.len() / 2;
        let span = warm_first.map_or(warm_started.elapsed(), |t| t.elapsed());
        let rate = warm.len() as f64 / span.as_secs_f64().max(1e-9);
        eprintln!(
            "kiln: {} warm invocations: median handler {}, median total {}, {rate:.0} invocations/s",
            warm.len(),
            handlers.get(mid).map_or_else(String::new, |d| ms(*d)),
            totals.get(mid).map_or_else(String::new, |d| ms(*d)),
        );
    }
    let t = Instant::now();
    pools.shutdown(SHUTDOWN_WAIT);
    if !a.json {
        eprintln!(
            "kiln: every microVM stopped and its jail removed ({})",
            ms(t.elapsed())
        );
    }
    if interrupted.load(Ordering::Acquire) {
        return ExitCode::from(EXIT_INTERRUPTED);
    }
    code
}

fn run_serve(a: ServeArgs) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    // A second descriptor of the listening socket, once it exists: the signal thread shuts
    // the socket down through it, which wakes the accept loop (a connection to the socket's
    // path would not if the path was removed or rebound).
    let waker: Arc<Mutex<Option<UnixListener>>> = Arc::new(Mutex::new(None));
    {
        let (stop, waker) = (stop.clone(), waker.clone());
        if !handle_signals(move |sig| {
            eprintln!("kiln: signal {sig}: shutting down");
            stop.store(true, Ordering::Release);
            if let Some(l) = lock(&waker).as_ref() {
                let _ = sys::stop_accepting(l);
            }
        }) {
            return ExitCode::from(EXIT_FAILED);
        }
    }
    let idle_timeout = a.idle_timeout;
    let pool_cfg = PoolConfig {
        idle_timeout,
        queue_timeout: a.queue_timeout,
        max_queue: a.max_queue,
    };
    let Some(pools) = setup(&a.common, pool_cfg) else {
        return ExitCode::from(EXIT_FAILED);
    };
    let credentials = match a.credentials.as_deref().map(Credentials::load).transpose() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kiln: {e} (--credentials)");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let listener = match server::bind(&a.socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kiln: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match listener.try_clone() {
        Ok(l) => *lock(&waker) = Some(l),
        Err(e) => {
            let _ = std::fs::remove_file(&a.socket);
            eprintln!("kiln: cannot keep a second descriptor of the socket to stop on: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    }
    if stop.load(Ordering::Acquire) {
        // A signal came before the socket existed: do not start serving.
        if let Some(l) = lock(&waker).as_ref() {
            let _ = sys::stop_accepting(l);
        }
    }
    let tcp = match a.listen.map(server::bind_tcp).transpose() {
        Ok(t) => t,
        Err(e) => {
            let _ = std::fs::remove_file(&a.socket);
            eprintln!("kiln: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let interval = idle_timeout
        .map_or(Duration::from_secs(1), |t| t / 4)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    if let Err(e) = pools.spawn_reaper(interval) {
        eprintln!("kiln: cannot start the reaper thread: {e}");
        return ExitCode::from(EXIT_FAILED);
    }
    if let Some(blank) = a.blank_pool.clone() {
        let sizes: Vec<String> = blank
            .sizes
            .iter()
            .map(|(m, n)| format!("{n} of {m} MiB"))
            .collect();
        if let Err(e) = pools.start_blank_pool(blank) {
            eprintln!("kiln: cannot start the blank pool's thread: {e}");
            pools.shutdown(SHUTDOWN_WAIT);
            return ExitCode::from(EXIT_FAILED);
        }
        eprintln!("kiln: blank pool: keeping {} ready", sizes.join(", "));
    }
    let verified = credentials.as_ref().map(Credentials::len);
    let lambda_cfg = LambdaConfig {
        identity: Identity {
            region: a.region.clone(),
            account_id: a.account_id.clone(),
        },
        credentials,
        max_async_events: a.max_async_events,
    };
    let lambda = match LambdaApi::start(lambda_cfg, pools.clone()) {
        Ok(l) => Arc::new(l),
        Err(e) => {
            eprintln!("kiln: cannot start the asynchronous invocation threads: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    eprintln!("kiln: serving on {}", a.socket.display());
    if let Some(addr) = tcp.as_ref().and_then(|t| t.local_addr().ok()) {
        eprintln!("kiln: listening on http://{addr} (Kiln's API and the Lambda Invoke API)");
        if !addr.ip().is_loopback() && verified.is_none() {
            eprintln!(
                "kiln: warning: {addr} is not a loopback address and no --credentials are set: anyone who reaches it can invoke functions"
            );
        }
    }
    match verified {
        Some(n) => eprintln!("kiln: Lambda Invoke API: SigV4 signatures verified against {n} access key(s)"),
        None => eprintln!("kiln: warning: Lambda Invoke API: signatures are not verified (no --credentials), as local Lambda emulators do"),
    }
    let cfg = ServerConfig {
        socket: a.socket.clone(),
        max_connections: a.max_connections,
        request_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(120),
    };
    server::serve(listener, tcp, cfg, pools.clone(), lambda, stop);
    pools.shutdown(SHUTDOWN_WAIT);
    let _ = std::fs::remove_file(&a.socket);
    eprintln!("kiln: stopped; every microVM and jail is gone");
    ExitCode::SUCCESS
}
