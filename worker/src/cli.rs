//! The `kiln` command line: a subcommand, then its flags, tokenized by the shared
//! `kiln_argv` (a value as the next argument or after `=`); this module keeps only the
//! subcommands and the typed conversions. An unknown flag, a missing or invalid value, a
//! repeated flag or a stray argument is an error naming it (exit code 2).

use crate::blank_pool::BlankPoolConfig;
use kiln_argv::{Args, ArgvError, Flag, Table};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const HELP: &str = "\
Usage:
  kiln build (NAME | DIR) [--functions-dir DIR] [--cache-dir DIR]
  kiln invoke NAME (--event JSON | --event-file PATH) [--repeat N] [--json] [OPTIONS]
  kiln serve --socket PATH [--listen ADDR|none] [--credentials FILE] [--region R]
             [--account-id N] [--idle-timeout-ms N] [--queue-timeout-ms N] [--max-queue N]
             [--max-async-events N] [--max-connections N]
             [--blank-pool MEM_MIB:COUNT]... [--blank-max-age-ms N]
             [--blank-refill-gap-ms N] [OPTIONS]

build:  builds a function's image (NAME from --functions-dir, or a function directory DIR)
        into the cache and prints its path.
invoke: starts a jailed microVM for function NAME, sends the event, prints the response
        (stdout) and the timings of each phase (stderr), and tears everything down. With
        --repeat N the same (warm) microVM serves N invocations.
serve:  serves Kiln's API (POST /functions/NAME/invocations, GET /functions, GET
        /blank-pool) and AWS Lambda's Invoke API (POST /2015-03-31/functions/NAME/invocations)
        over HTTP on the Unix socket PATH and on TCP (--listen), with a pool of warm microVMs
        per function (and, with --blank-pool, of pre-jailed blank ones for cold starts).

Options:
  --functions-dir DIR        where functions live, one directory with a kiln.json each
                             (default: examples/functions)
  --cache-dir DIR            where built images go (default: $KILN_CACHE/functions, else
                             ~/.cache/kiln/functions)
  --jailer PATH              the jailer binary (default: `jailer` next to kiln)
  --vmm PATH                 the VMM binary (default: `vmm` next to kiln)
  --kernel PATH              guest kernel of Linux functions (default:
                             $KILN_CACHE/assets/current/vmlinux, from scripts/assets.sh)
  --init PATH                kiln-init, /init of Linux functions (default: `kiln-init`
                             next to kiln)
  --profile FILE             tenant profile for every jail (default: policies/tenant/default.json)
  --chroot-base-dir DIR      the jailer's chroot base (default: /srv/jailer)
  --state-dir DIR            the worker's own files: instances/, uids/ (default: /run/kiln)
  --uid-base N, --uid-count N
                             each instance runs as its own uid (= gid) from
                             [N, N + count) (default: 10000, 1000)
  --parent-cgroup NAME       jails' cgroups go under <worker's cgroup>/NAME (default: kiln)
  --memory-overhead-mib N    jail memory limit = the function's memory_mib + N (default: 64)
  --start-timeout-ms N       jail + VMM + guest ready deadline (default: 10000)
  --stop-grace-ms N          SIGTERM to SIGKILL grace when stopping a VM (default: 2000)
  --no-strict-io             do not pass --strict-io to the VMM (unknown ports are ignored)
  --vmm-arg ARG              pass ARG to every VMM (repeatable; for diagnosis, e.g.
                             --vmm-arg=--level=Debug)
  --idle-timeout-ms N        serve: idle microVMs are stopped after N ms (default: 60000;
                             0: never)
  --queue-timeout-ms N       serve: how long an invocation waits at the concurrency limit
                             before 429 (default: 1000; 0: refuse at once)
  --max-queue N              serve: waiting invocations per function (default: 64)
  --max-connections N        serve: concurrent HTTP connections (default: 256)
  --listen ADDR              serve: also listen on TCP ADDR (default: 127.0.0.1:3001;
                             `none`: the Unix socket only)
  --credentials FILE         serve: verify the Invoke API's SigV4 signatures with the keys
                             of FILE (AWS credentials-file format); without it, requests
                             are accepted unverified
  --region R, --account-id N serve: the region and 12-digit account of function ARNs
                             (default: us-east-1, 000000000000)
  --max-async-events N       serve: queued asynchronous (Event) invocations (default: 1024)
  --blank-pool MEM_MIB:COUNT serve: keep COUNT pre-jailed blank microVMs (jail, cgroups,
                             network namespace and firewall, VMM with its API up, under
                             --profile) ready for cold starts of function images of
                             MEM_MIB MiB; each is assigned to the first function that takes
                             it, for life (repeatable, one per size; default: none)
  --blank-max-age-ms N       serve: blank microVMs older than N ms are replaced (default:
                             600000)
  --blank-refill-gap-ms N    serve: at least N ms between two blank starts of the refill,
                             which starts one at a time (default: 0)
  --help, --version
";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("missing command: `kiln invoke NAME --event JSON`, `kiln serve --socket PATH` or `kiln build NAME` (see --help)")]
    NoCommand,
    #[error("unknown command {0:?} (expected invoke, serve or build; see --help)")]
    UnknownCommand(String),
    #[error("argument {0:?} is not valid UTF-8")]
    NotUtf8(String),
    /// A flag or argument of `kiln <command>` was refused (the error names it).
    #[error("{command}: {source}")]
    Argv {
        command: &'static str,
        source: ArgvError,
    },
    #[error("kiln {0} needs the function's name")]
    NoFunction(&'static str),
    #[error("kiln invoke needs the event: --event JSON or --event-file PATH")]
    NoEvent,
}

/// Options every command shares: where things are and how instances are jailed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Common {
    pub functions_dir: PathBuf,
    pub cache_dir: Option<PathBuf>,
    pub jailer: Option<PathBuf>,
    pub vmm: Option<PathBuf>,
    pub kernel: Option<PathBuf>,
    pub init: Option<PathBuf>,
    pub profile: PathBuf,
    pub chroot_base: PathBuf,
    pub state_dir: PathBuf,
    pub uid_base: u32,
    pub uid_count: u32,
    pub parent_cgroup: String,
    pub memory_overhead_mib: u32,
    pub start_timeout: Duration,
    pub stop_grace: Duration,
    pub strict_io: bool,
    pub vmm_args: Vec<String>,
}

impl Default for Common {
    fn default() -> Self {
        Common {
            functions_dir: PathBuf::from("examples/functions"),
            cache_dir: None,
            jailer: None,
            vmm: None,
            kernel: None,
            init: None,
            profile: PathBuf::from("policies/tenant/default.json"),
            chroot_base: PathBuf::from("/srv/jailer"),
            state_dir: PathBuf::from("/run/kiln"),
            uid_base: 10_000,
            uid_count: 1000,
            parent_cgroup: "kiln".into(),
            memory_overhead_mib: 64,
            start_timeout: Duration::from_secs(10),
            stop_grace: Duration::from_secs(2),
            strict_io: true,
            vmm_args: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Inline(String),
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvokeArgs {
    pub function: String,
    pub event: Event,
    pub repeat: u32,
    pub json: bool,
    pub common: Common,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeArgs {
    pub socket: PathBuf,
    /// TCP address of the APIs (`None`: the Unix socket only).
    pub listen: Option<SocketAddr>,
    /// The Invoke API's credentials file (`None`: signatures are not verified).
    pub credentials: Option<PathBuf>,
    pub region: String,
    pub account_id: String,
    pub max_async_events: usize,
    /// `None`: idle instances are kept.
    pub idle_timeout: Option<Duration>,
    pub queue_timeout: Duration,
    pub max_queue: usize,
    pub max_connections: usize,
    /// `--blank-pool`, `--blank-max-age-ms`, `--blank-refill-gap-ms` (`None`: no blank pool).
    pub blank_pool: Option<BlankPoolConfig>,
    pub common: Common,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildArgs {
    /// A function name (in the functions directory) or a function directory.
    pub target: String,
    pub common: Common,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    Version,
    Build(BuildArgs),
    Invoke(InvokeArgs),
    Serve(ServeArgs),
}

/// Flags of every command.
const COMMON: &[Flag] = &[
    Flag::single("functions-dir"),
    Flag::single("cache-dir"),
    Flag::single("jailer"),
    Flag::single("vmm"),
    Flag::single("kernel"),
    Flag::single("init"),
    Flag::single("profile"),
    Flag::single("chroot-base-dir"),
    Flag::single("state-dir"),
    Flag::single("uid-base"),
    Flag::single("uid-count"),
    Flag::single("parent-cgroup"),
    Flag::single("memory-overhead-mib"),
    Flag::single("start-timeout-ms"),
    Flag::single("stop-grace-ms"),
    Flag::switch("no-strict-io"),
    Flag::multi("vmm-arg"),
    Flag::switch("help"),
    Flag::switch("version"),
];

/// Flags of `kiln invoke` only.
const INVOKE: &[Flag] = &[
    Flag::single("event"),
    Flag::single("event-file"),
    Flag::single("repeat"),
    Flag::switch("json"),
];

/// Flags of `kiln serve` only.
const SERVE: &[Flag] = &[
    Flag::single("socket"),
    Flag::single("idle-timeout-ms"),
    Flag::single("queue-timeout-ms"),
    Flag::single("max-queue"),
    Flag::single("max-connections"),
    Flag::single("listen"),
    Flag::single("credentials"),
    Flag::single("region"),
    Flag::single("account-id"),
    Flag::single("max-async-events"),
    Flag::multi("blank-pool"),
    Flag::single("blank-max-age-ms"),
    Flag::single("blank-refill-gap-ms"),
];

/// The default TCP address of `kiln serve` (the port of AWS SAM's local Lambda endpoint).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3001";

/// A number of at least 1.
fn positive<T>(v: &str) -> Result<T, String>
where
    T: std::str::FromStr + PartialEq + Default,
    T::Err: std::fmt::Display,
{
    let n: T = v.parse().map_err(|e: T::Err| e.to_string())?;
    if n == T::default() {
        return Err("must be at least 1".into());
    }
    Ok(n)
}

fn path(v: &str) -> Result<PathBuf, &'static str> {
    if v.is_empty() {
        return Err("the path is empty");
    }
    Ok(PathBuf::from(v))
}

/// A relative cgroup path without `..`.
fn cgroup(v: &str) -> Result<String, &'static str> {
    let ok = !v.is_empty()
        && !v.starts_with('/')
        && v.split('/').all(|c| !c.is_empty() && c != "..")
        && !v.contains('\0');
    if !ok {
        return Err("use a relative cgroup path without `..`");
    }
    Ok(v.to_string())
}

/// A TCP address, or `none`.
fn listen(v: &str) -> Result<Option<SocketAddr>, String> {
    if v == "none" {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .map_err(|_| "use IP:PORT (e.g. 127.0.0.1:3001, [::1]:3001) or `none`".to_string())
}

/// A region name as AWS spells them (`us-east-1`).
fn region(v: &str) -> Result<String, &'static str> {
    let ok = !v.is_empty()
        && v.len() <= 32
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        return Err("use a region name such as us-east-1");
    }
    Ok(v.to_string())
}

/// Twelve digits.
fn account(v: &str) -> Result<String, &'static str> {
    if v.len() != 12 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err("an AWS account id is 12 digits");
    }
    Ok(v.to_string())
}

/// `MEM_MIB:COUNT`, both at least 1.
fn blank_size(v: &str) -> Result<(u32, usize), String> {
    let (mem, count) = v.split_once(':').ok_or("use MEM_MIB:COUNT (e.g. 128:2)")?;
    Ok((positive(mem)?, positive(count)?))
}

/// The blank pool's settings; `None` without `--blank-pool`.
fn blank_pool(a: &Args) -> Result<Option<BlankPoolConfig>, ArgvError> {
    let mut sizes = BTreeMap::new();
    for v in a.multi("blank-pool") {
        let (mem, count) = blank_size(v).map_err(|e| ArgvError::bad_value("blank-pool", v, e))?;
        if sizes.insert(mem, count).is_some() {
            return Err(ArgvError::bad_value(
                "blank-pool",
                v,
                format!("{mem} MiB is given twice"),
            ));
        }
    }
    let max_age = a
        .converted("blank-max-age-ms", positive_millis)?
        .unwrap_or(Duration::from_secs(600));
    let refill_gap = a
        .converted("blank-refill-gap-ms", millis)?
        .unwrap_or(Duration::ZERO);
    Ok((!sizes.is_empty()).then_some(BlankPoolConfig {
        sizes,
        max_age,
        refill_gap,
    }))
}

fn millis(v: &str) -> Result<Duration, std::num::ParseIntError> {
    Ok(Duration::from_millis(v.parse()?))
}

fn positive_millis(v: &str) -> Result<Duration, String> {
    Ok(Duration::from_millis(positive(v)?))
}

/// Where things are and how instances are jailed, from the flags every command takes.
fn common(a: &Args) -> Result<Common, ArgvError> {
    let d = Common::default();
    let common = Common {
        functions_dir: a
            .converted("functions-dir", path)?
            .unwrap_or(d.functions_dir),
        cache_dir: a.converted("cache-dir", path)?,
        jailer: a.converted("jailer", path)?,
        vmm: a.converted("vmm", path)?,
        kernel: a.converted("kernel", path)?,
        init: a.converted("init", path)?,
        profile: a.converted("profile", path)?.unwrap_or(d.profile),
        chroot_base: a
            .converted("chroot-base-dir", path)?
            .unwrap_or(d.chroot_base),
        state_dir: a.converted("state-dir", path)?.unwrap_or(d.state_dir),
        uid_base: a.converted("uid-base", positive)?.unwrap_or(d.uid_base),
        uid_count: a.converted("uid-count", positive)?.unwrap_or(d.uid_count),
        parent_cgroup: a
            .converted("parent-cgroup", cgroup)?
            .unwrap_or(d.parent_cgroup),
        memory_overhead_mib: a
            .parsed("memory-overhead-mib")?
            .unwrap_or(d.memory_overhead_mib),
        start_timeout: a
            .converted("start-timeout-ms", positive_millis)?
            .unwrap_or(d.start_timeout),
        stop_grace: a
            .converted("stop-grace-ms", positive_millis)?
            .unwrap_or(d.stop_grace),
        strict_io: !a.switch("no-strict-io"),
        vmm_args: a.multi("vmm-arg").to_vec(),
    };
    if common.uid_base.checked_add(common.uid_count).is_none() {
        return Err(ArgvError::bad_value(
            "uid-count",
            &common.uid_count.to_string(),
            "uid base + count overflows",
        ));
    }
    Ok(common)
}

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = OsString>>(argv: I) -> Result<Command, CliError> {
    let mut it = argv.into_iter();
    let first = it
        .next()
        .map(|a| {
            a.into_string()
                .map_err(|a| CliError::NotUtf8(a.to_string_lossy().into_owned()))
        })
        .transpose()?;
    let (command, extra, positionals) = match first.as_deref() {
        None => return Err(CliError::NoCommand),
        Some("--help" | "-h" | "help") => return Ok(Command::Help),
        Some("--version") => return Ok(Command::Version),
        Some("invoke") => ("invoke", INVOKE, 1),
        Some("serve") => ("serve", SERVE, 0),
        Some("build") => ("build", &[][..], 1),
        Some(other) => return Err(CliError::UnknownCommand(other.to_string())),
    };
    let argv = |source| CliError::Argv { command, source };
    let flags: Vec<Flag> = COMMON.iter().chain(extra).copied().collect();
    let table = Table {
        flags: &flags,
        positionals,
        rest: false,
    };
    let a = kiln_argv::parse(&table, it).map_err(argv)?;
    if a.switch("help") {
        return Ok(Command::Help);
    }
    if a.switch("version") {
        return Ok(Command::Version);
    }
    let common = common(&a).map_err(argv)?;
    let target = a.positionals().first().cloned();
    match command {
        "build" => Ok(Command::Build(BuildArgs {
            target: target.ok_or(CliError::NoFunction("build"))?,
            common,
        })),
        "invoke" => invoke(&a, target, common),
        _ => serve(&a, common).map_err(argv),
    }
}

fn invoke(a: &Args, function: Option<String>, common: Common) -> Result<Command, CliError> {
    let argv = |source| CliError::Argv {
        command: "invoke",
        source,
    };
    let function = function.ok_or(CliError::NoFunction("invoke"))?;
    let repeat = a.converted("repeat", positive).map_err(argv)?.unwrap_or(1);
    a.exclusive("event", "event-file").map_err(argv)?;
    let event = match (
        a.single("event"),
        a.converted("event-file", path).map_err(argv)?,
    ) {
        (Some(e), _) => Event::Inline(e.to_string()),
        (None, Some(f)) => Event::File(f),
        (None, None) => return Err(CliError::NoEvent),
    };
    Ok(Command::Invoke(InvokeArgs {
        function,
        event,
        repeat,
        json: a.switch("json"),
        common,
    }))
}

fn serve(a: &Args, common: Common) -> Result<Command, ArgvError> {
    let socket = a
        .converted("socket", path)?
        .ok_or(ArgvError::MissingFlag("socket"))?;
    let idle_timeout = match a.converted("idle-timeout-ms", millis)? {
        None => Some(Duration::from_secs(60)),
        Some(d) => (!d.is_zero()).then_some(d),
    };
    let listen = match a.converted("listen", listen)? {
        Some(l) => l,
        None => self::listen(DEFAULT_LISTEN).unwrap_or_default(),
    };
    Ok(Command::Serve(ServeArgs {
        socket,
        listen,
        credentials: a.converted("credentials", path)?,
        region: a
            .converted("region", region)?
            .unwrap_or_else(|| "us-east-1".into()),
        account_id: a
            .converted("account-id", account)?
            .unwrap_or_else(|| "000000000000".into()),
        max_async_events: a.converted("max-async-events", positive)?.unwrap_or(1024),
        idle_timeout,
        queue_timeout: a
            .converted("queue-timeout-ms", millis)?
            .unwrap_or(Duration::from_secs(1)),
        max_queue: a.parsed("max-queue")?.unwrap_or(64),
        max_connections: a.converted("max-connections", positive)?.unwrap_or(256),
        blank_pool: blank_pool(a)?,
        common,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, CliError> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn invoke_and_serve_parse() {
        let Ok(Command::Invoke(a)) = p(&[
            "invoke",
            "echo",
            "--event",
            "{}",
            "--repeat=3",
            "--jailer",
            "/j",
            "--no-strict-io",
            "--vmm-arg",
            "--level=Debug",
            "--vmm-arg=--boot-timer",
        ]) else {
            panic!("invoke");
        };
        assert_eq!(a.function, "echo");
        assert_eq!(a.event, Event::Inline("{}".into()));
        assert_eq!(a.repeat, 3);
        assert_eq!(a.common.jailer, Some(PathBuf::from("/j")));
        assert!(!a.common.strict_io);
        assert_eq!(a.common.vmm_args, ["--level=Debug", "--boot-timer"]);
        let Ok(Command::Serve(s)) = p(&[
            "serve",
            "--socket",
            "/tmp/k.sock",
            "--idle-timeout-ms",
            "0",
            "--queue-timeout-ms",
            "0",
        ]) else {
            panic!("serve");
        };
        assert_eq!(s.socket, PathBuf::from("/tmp/k.sock"));
        assert_eq!(s.idle_timeout, None);
        assert_eq!(s.queue_timeout, Duration::ZERO);
        assert!(s.common.strict_io);
        assert_eq!(s.listen, Some("127.0.0.1:3001".parse().unwrap()));
        assert_eq!(
            (s.region.as_str(), s.account_id.as_str()),
            ("us-east-1", "000000000000")
        );
        assert_eq!((s.credentials, s.max_async_events), (None, 1024));
    }

    #[test]
    fn serve_takes_the_lambda_settings() {
        let Ok(Command::Serve(s)) = p(&[
            "serve",
            "--socket",
            "/s",
            "--listen",
            "[::1]:0",
            "--credentials",
            "/c",
            "--region",
            "eu-west-1",
            "--account-id",
            "123456789012",
            "--max-async-events",
            "5",
        ]) else {
            panic!("serve");
        };
        assert_eq!(s.listen, Some("[::1]:0".parse().unwrap()));
        assert_eq!(s.credentials, Some(PathBuf::from("/c")));
        assert_eq!(
            (s.region.as_str(), s.account_id.as_str()),
            ("eu-west-1", "123456789012")
        );
        assert_eq!(s.max_async_events, 5);
        let Ok(Command::Serve(s)) = p(&["serve", "--socket", "/s", "--listen", "none"]) else {
            panic!("serve");
        };
        assert_eq!(s.listen, None);
        for (flag, value) in [
            ("listen", "localhost"),
            ("listen", "1.2.3.4"),
            ("region", "US_EAST"),
            ("account-id", "12345"),
            ("max-async-events", "0"),
        ] {
            let arg = format!("--{flag}={value}");
            match p(&["serve", "--socket", "/s", &arg]) {
                Err(CliError::Argv {
                    source: ArgvError::BadValue { flag: f, .. },
                    ..
                }) => assert_eq!(f, flag),
                other => panic!("{arg}: {other:?}"),
            }
        }
    }

    #[test]
    fn serve_takes_blank_pool_sizes() {
        let Ok(Command::Serve(s)) = p(&["serve", "--socket", "/s"]) else {
            panic!("serve");
        };
        assert_eq!(s.blank_pool, None, "off by default");
        let Ok(Command::Serve(s)) = p(&[
            "serve",
            "--socket",
            "/s",
            "--blank-pool",
            "128:2",
            "--blank-pool=64:1",
            "--blank-max-age-ms",
            "5000",
            "--blank-refill-gap-ms",
            "10",
        ]) else {
            panic!("serve");
        };
        let b = s.blank_pool.expect("a blank pool");
        assert_eq!(b.sizes, BTreeMap::from([(64, 1), (128, 2)]));
        assert_eq!(b.max_age, Duration::from_secs(5));
        assert_eq!(b.refill_gap, Duration::from_millis(10));
        for value in ["128", "0:1", "128:0", "x:1", "128:2:3"] {
            let arg = format!("--blank-pool={value}");
            match p(&["serve", "--socket", "/s", &arg]) {
                Err(CliError::Argv {
                    source: ArgvError::BadValue { flag, .. },
                    ..
                }) => assert_eq!(flag, "blank-pool"),
                other => panic!("{arg}: {other:?}"),
            }
        }
        match p(&[
            "serve",
            "--socket",
            "/s",
            "--blank-pool=128:1",
            "--blank-pool=128:2",
        ]) {
            Err(CliError::Argv {
                source: ArgvError::BadValue { flag, reason, .. },
                ..
            }) => assert_eq!(
                (flag, reason.as_str()),
                ("blank-pool", "128 MiB is given twice")
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn kernel_and_init_paths() {
        let Ok(Command::Invoke(a)) = p(&[
            "invoke",
            "linux-echo",
            "--event",
            "{}",
            "--kernel",
            "/k/vmlinux",
            "--init=/b/kiln-init",
        ]) else {
            panic!("invoke");
        };
        assert_eq!(a.common.kernel, Some(PathBuf::from("/k/vmlinux")));
        assert_eq!(a.common.init, Some(PathBuf::from("/b/kiln-init")));
        assert_eq!(
            (Common::default().kernel, Common::default().init),
            (None, None)
        );
    }

    #[test]
    fn build_takes_a_name_or_a_directory() {
        let Ok(Command::Build(b)) = p(&["build", "examples/functions/echo", "--cache-dir", "/c"])
        else {
            panic!("build");
        };
        assert_eq!(b.target, "examples/functions/echo");
        assert_eq!(b.common.cache_dir, Some(PathBuf::from("/c")));
    }

    #[test]
    fn errors_name_the_problem() {
        let argv = |command, source| CliError::Argv { command, source };
        let cases: &[(&[&str], CliError)] = &[
            (&[], CliError::NoCommand),
            (&["run"], CliError::UnknownCommand("run".into())),
            (&["invoke", "--event", "{}"], CliError::NoFunction("invoke")),
            (&["build"], CliError::NoFunction("build")),
            (&["invoke", "echo"], CliError::NoEvent),
            (
                &["invoke", "echo", "--event", "{}", "--event-file", "f"],
                argv("invoke", ArgvError::Conflict("event", "event-file")),
            ),
            (&["serve"], argv("serve", ArgvError::MissingFlag("socket"))),
            (
                &["serve", "--socket", "s", "--event", "{}"],
                argv("serve", ArgvError::UnknownFlag("--event".into())),
            ),
            (
                &["build", "echo", "--json"],
                argv("build", ArgvError::UnknownFlag("--json".into())),
            ),
            (
                &["invoke", "a", "b"],
                argv("invoke", ArgvError::Positional("b".into())),
            ),
            (
                &["serve", "x"],
                argv("serve", ArgvError::Positional("x".into())),
            ),
            (
                &["invoke", "a", "--json=1"],
                argv(
                    "invoke",
                    ArgvError::UnexpectedValue {
                        flag: "json",
                        value: "1".into(),
                    },
                ),
            ),
            (
                &["serve", "--socket"],
                argv("serve", ArgvError::MissingValue("socket")),
            ),
            (
                &["serve", "--socket", "a", "--socket", "b"],
                argv(
                    "serve",
                    ArgvError::Repeated {
                        flag: "socket",
                        first: "a".into(),
                        second: "b".into(),
                    },
                ),
            ),
        ];
        for (argv, want) in cases {
            assert_eq!(&p(argv).unwrap_err(), want, "{argv:?}");
        }
        for (argv, flag) in [
            (
                &["invoke", "e", "--event", "{}", "--repeat", "0"][..],
                "repeat",
            ),
            (
                &["serve", "--socket", "s", "--max-queue", "-1"][..],
                "max-queue",
            ),
            (
                &["serve", "--socket", "s", "--parent-cgroup", "../x"][..],
                "parent-cgroup",
            ),
            (
                &["serve", "--socket", "s", "--uid-base", "0"][..],
                "uid-base",
            ),
            (
                &["serve", "--socket", "s", "--uid-base", "4294967000"][..],
                "uid-count",
            ),
            (&["serve", "--socket", ""][..], "socket"),
        ] {
            match p(argv) {
                Err(CliError::Argv {
                    source: ArgvError::BadValue { flag: f, .. },
                    ..
                }) => assert_eq!(f, flag, "{argv:?}"),
                other => panic!("{argv:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn messages_name_the_command_and_the_flag() {
        let e = p(&["serve", "--socket", "s", "--event", "{}"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "serve: unknown flag \"--event\" (see --help)"
        );
        let e = p(&["invoke", "e", "--event", "{}", "--repeat", "0"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invoke: flag --repeat: invalid value \"0\": must be at least 1"
        );
    }

    #[test]
    fn help_and_version_anywhere() {
        for argv in [
            &["--help"][..],
            &["-h"],
            &["help"],
            &["invoke", "--help"],
            &["serve", "--help"],
        ] {
            assert_eq!(p(argv), Ok(Command::Help), "{argv:?}");
        }
        assert_eq!(p(&["--version"]), Ok(Command::Version));
        assert_eq!(p(&["build", "--version"]), Ok(Command::Version));
    }
}
