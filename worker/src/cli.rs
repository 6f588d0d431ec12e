//! The `kiln` command line.
//!
//! Flags take their value as the next argument or after `=`. An unknown flag, a missing or
//! invalid value, a repeated flag or a stray argument is an error naming it (exit code 2).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

pub const HELP: &str = "\
Usage:
  kiln build (NAME | DIR) [--functions-dir DIR] [--cache-dir DIR]
  kiln invoke NAME (--event JSON | --event-file PATH) [--repeat N] [--json] [OPTIONS]
  kiln serve --socket PATH [--idle-timeout-ms N] [--queue-timeout-ms N] [--max-queue N]
             [--max-connections N] [OPTIONS]

build:  builds a function's image (NAME from --functions-dir, or a function directory DIR)
        into the cache and prints its path.
invoke: starts a jailed microVM for function NAME, sends the event, prints the response
        (stdout) and the timings of each phase (stderr), and tears everything down. With
        --repeat N the same (warm) microVM serves N invocations.
serve:  serves POST /functions/NAME/invocations and GET /functions over HTTP on the Unix
        socket PATH, with a pool of warm microVMs per function.

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
  --help, --version
";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("missing command: `kiln invoke NAME --event JSON`, `kiln serve --socket PATH` or `kiln build NAME` (see --help)")]
    NoCommand,
    #[error("unknown command {0:?} (expected invoke, serve or build; see --help)")]
    UnknownCommand(String),
    #[error("unknown flag {flag:?} for `kiln {command}` (see --help)")]
    UnknownFlag { command: &'static str, flag: String },
    #[error("unexpected argument {0:?} (see --help)")]
    Positional(String),
    #[error("flag {0} needs a value")]
    MissingValue(&'static str),
    #[error("flag {0} takes no value")]
    UnexpectedValue(&'static str),
    #[error("flag {0} given twice")]
    Repeated(&'static str),
    #[error("flag {flag}: invalid value {value:?}: {reason}")]
    BadValue {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("argument {0:?} is not valid UTF-8")]
    NotUtf8(String),
    #[error("kiln {0} needs the function's name")]
    NoFunction(&'static str),
    #[error("kiln invoke needs the event: --event JSON or --event-file PATH")]
    NoEvent,
    #[error("--event and --event-file cannot be used together")]
    TwoEvents,
    #[error("kiln serve needs --socket PATH")]
    NoSocket,
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
    /// `None`: idle instances are kept.
    pub idle_timeout: Option<Duration>,
    pub queue_timeout: Duration,
    pub max_queue: usize,
    pub max_connections: usize,
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

/// (flag, takes a value, commands it belongs to: "" = both)
const FLAGS: &[(&str, bool, &str)] = &[
    ("--functions-dir", true, ""),
    ("--cache-dir", true, ""),
    ("--jailer", true, ""),
    ("--vmm", true, ""),
    ("--kernel", true, ""),
    ("--init", true, ""),
    ("--profile", true, ""),
    ("--chroot-base-dir", true, ""),
    ("--state-dir", true, ""),
    ("--uid-base", true, ""),
    ("--uid-count", true, ""),
    ("--parent-cgroup", true, ""),
    ("--memory-overhead-mib", true, ""),
    ("--start-timeout-ms", true, ""),
    ("--stop-grace-ms", true, ""),
    ("--no-strict-io", false, ""),
    ("--vmm-arg", true, ""),
    ("--event", true, "invoke"),
    ("--event-file", true, "invoke"),
    ("--repeat", true, "invoke"),
    ("--json", false, "invoke"),
    ("--socket", true, "serve"),
    ("--idle-timeout-ms", true, "serve"),
    ("--queue-timeout-ms", true, "serve"),
    ("--max-queue", true, "serve"),
    ("--max-connections", true, "serve"),
    ("--help", false, ""),
    ("--version", false, ""),
];

fn number<T: std::str::FromStr>(flag: &'static str, v: &str) -> Result<T, CliError>
where
    T::Err: std::fmt::Display,
{
    v.parse().map_err(|e: T::Err| CliError::BadValue {
        flag,
        value: v.into(),
        reason: e.to_string(),
    })
}

fn positive<T: std::str::FromStr + PartialEq + Default>(
    flag: &'static str,
    v: &str,
) -> Result<T, CliError>
where
    T::Err: std::fmt::Display,
{
    let n: T = number(flag, v)?;
    if n == T::default() {
        return Err(CliError::BadValue {
            flag,
            value: v.into(),
            reason: "must be at least 1".into(),
        });
    }
    Ok(n)
}

fn path(flag: &'static str, v: String) -> Result<PathBuf, CliError> {
    if v.is_empty() {
        return Err(CliError::BadValue {
            flag,
            value: v,
            reason: "the path is empty".into(),
        });
    }
    Ok(PathBuf::from(v))
}

fn millis(flag: &'static str, v: &str) -> Result<Duration, CliError> {
    Ok(Duration::from_millis(number(flag, v)?))
}

fn utf8(a: OsString) -> Result<String, CliError> {
    a.into_string()
        .map_err(|a| CliError::NotUtf8(a.to_string_lossy().into_owned()))
}

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = OsString>>(argv: I) -> Result<Command, CliError> {
    let mut it = argv.into_iter();
    let command = match it.next().map(utf8).transpose()? {
        None => return Err(CliError::NoCommand),
        Some(c) if c == "--help" || c == "-h" || c == "help" => return Ok(Command::Help),
        Some(c) if c == "--version" => return Ok(Command::Version),
        Some(c) if c == "invoke" => "invoke",
        Some(c) if c == "serve" => "serve",
        Some(c) if c == "build" => "build",
        Some(c) => return Err(CliError::UnknownCommand(c)),
    };
    let mut common = Common::default();
    let mut seen: Vec<&'static str> = Vec::new();
    let mut function = None;
    let (mut event, mut event_file, mut repeat, mut json) = (None, None, 1u32, false);
    let mut socket = None;
    let mut idle_timeout = Some(Duration::from_secs(60));
    let (mut queue_timeout, mut max_queue, mut max_connections) =
        (Duration::from_secs(1), 64usize, 256usize);
    while let Some(raw) = it.next() {
        let arg = utf8(raw)?;
        let Some(body) = arg.strip_prefix("--") else {
            if command != "serve" && function.is_none() {
                function = Some(arg);
                continue;
            }
            return Err(CliError::Positional(arg));
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        let Some(&(flag, takes_value, only)) = FLAGS.iter().find(|(f, _, only)| {
            f.strip_prefix("--") == Some(name) && (only.is_empty() || *only == command)
        }) else {
            return Err(CliError::UnknownFlag {
                command,
                flag: format!("--{name}"),
            });
        };
        let _ = only;
        if seen.contains(&flag) && flag != "--vmm-arg" {
            return Err(CliError::Repeated(flag));
        }
        seen.push(flag);
        if !takes_value {
            if inline.is_some() {
                return Err(CliError::UnexpectedValue(flag));
            }
            match flag {
                "--no-strict-io" => common.strict_io = false,
                "--json" => json = true,
                "--version" => return Ok(Command::Version),
                _ => return Ok(Command::Help),
            }
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => utf8(it.next().ok_or(CliError::MissingValue(flag))?)?,
        };
        match flag {
            "--functions-dir" => common.functions_dir = path(flag, value)?,
            "--cache-dir" => common.cache_dir = Some(path(flag, value)?),
            "--jailer" => common.jailer = Some(path(flag, value)?),
            "--vmm" => common.vmm = Some(path(flag, value)?),
            "--kernel" => common.kernel = Some(path(flag, value)?),
            "--init" => common.init = Some(path(flag, value)?),
            "--profile" => common.profile = path(flag, value)?,
            "--chroot-base-dir" => common.chroot_base = path(flag, value)?,
            "--state-dir" => common.state_dir = path(flag, value)?,
            "--uid-base" => common.uid_base = positive(flag, &value)?,
            "--uid-count" => common.uid_count = positive(flag, &value)?,
            "--parent-cgroup" => {
                let ok = !value.is_empty()
                    && !value.starts_with('/')
                    && value.split('/').all(|c| !c.is_empty() && c != "..")
                    && !value.contains('\0');
                if !ok {
                    return Err(CliError::BadValue {
                        flag,
                        value,
                        reason: "use a relative cgroup path without `..`".into(),
                    });
                }
                common.parent_cgroup = value;
            }
            "--memory-overhead-mib" => common.memory_overhead_mib = number(flag, &value)?,
            "--start-timeout-ms" => {
                common.start_timeout = Duration::from_millis(positive(flag, &value)?)
            }
            "--stop-grace-ms" => common.stop_grace = Duration::from_millis(positive(flag, &value)?),
            "--vmm-arg" => common.vmm_args.push(value),
            "--event" => event = Some(value),
            "--event-file" => event_file = Some(path(flag, value)?),
            "--repeat" => repeat = positive(flag, &value)?,
            "--socket" => socket = Some(path(flag, value)?),
            "--idle-timeout-ms" => {
                let d = millis(flag, &value)?;
                idle_timeout = (!d.is_zero()).then_some(d);
            }
            "--queue-timeout-ms" => queue_timeout = millis(flag, &value)?,
            "--max-queue" => max_queue = number(flag, &value)?,
            _ => max_connections = positive(flag, &value)?,
        }
    }
    if common.uid_base.checked_add(common.uid_count).is_none() {
        return Err(CliError::BadValue {
            flag: "--uid-count",
            value: common.uid_count.to_string(),
            reason: "uid base + count overflows".into(),
        });
    }
    if command == "build" {
        return Ok(Command::Build(BuildArgs {
            target: function.ok_or(CliError::NoFunction("build"))?,
            common,
        }));
    }
    if command == "invoke" {
        let function = function.ok_or(CliError::NoFunction("invoke"))?;
        let event = match (event, event_file) {
            (Some(e), None) => Event::Inline(e),
            (None, Some(f)) => Event::File(f),
            (None, None) => return Err(CliError::NoEvent),
            (Some(_), Some(_)) => return Err(CliError::TwoEvents),
        };
        return Ok(Command::Invoke(InvokeArgs {
            function,
            event,
            repeat,
            json,
            common,
        }));
    }
    Ok(Command::Serve(ServeArgs {
        socket: socket.ok_or(CliError::NoSocket)?,
        idle_timeout,
        queue_timeout,
        max_queue,
        max_connections,
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
        let cases: &[(&[&str], CliError)] = &[
            (&[], CliError::NoCommand),
            (&["run"], CliError::UnknownCommand("run".into())),
            (&["invoke", "--event", "{}"], CliError::NoFunction("invoke")),
            (&["build"], CliError::NoFunction("build")),
            (&["invoke", "echo"], CliError::NoEvent),
            (
                &["invoke", "echo", "--event", "{}", "--event-file", "f"],
                CliError::TwoEvents,
            ),
            (&["serve"], CliError::NoSocket),
            (
                &["serve", "--socket", "s", "--event", "{}"],
                CliError::UnknownFlag {
                    command: "serve",
                    flag: "--event".into(),
                },
            ),
            (&["invoke", "a", "b"], CliError::Positional("b".into())),
            (
                &["invoke", "a", "--json=1"],
                CliError::UnexpectedValue("--json"),
            ),
            (&["serve", "--socket"], CliError::MissingValue("--socket")),
            (
                &["serve", "--socket", "a", "--socket", "b"],
                CliError::Repeated("--socket"),
            ),
        ];
        for (argv, want) in cases {
            assert_eq!(&p(argv).unwrap_err(), want, "{argv:?}");
        }
        for (argv, flag) in [
            (
                &["invoke", "e", "--event", "{}", "--repeat", "0"][..],
                "--repeat",
            ),
            (
                &["serve", "--socket", "s", "--max-queue", "-1"][..],
                "--max-queue",
            ),
            (
                &["serve", "--socket", "s", "--parent-cgroup", "../x"][..],
                "--parent-cgroup",
            ),
            (
                &["serve", "--socket", "s", "--uid-base", "0"][..],
                "--uid-base",
            ),
            (&["serve", "--socket", ""][..], "--socket"),
        ] {
            match p(argv) {
                Err(CliError::BadValue { flag: f, .. }) => assert_eq!(f, flag, "{argv:?}"),
                other => panic!("{argv:?}: {other:?}"),
            }
        }
    }
}
