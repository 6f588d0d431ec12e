//! The `vmm` command line: Firecracker's flags (so the jailer and tools can drive either),
//! plus Kiln's `--serial-out` and `--boot-entry`.
//!
//! Flags take their value as the next argument or after `=` (`--id vm1`, `--id=vm1`). An
//! unknown flag, a missing or invalid value, a flag given twice or a stray argument is an
//! error naming it.

use crate::devices::legacy::serial::SerialSink;
use crate::loader::EntryPreference;
use crate::resources::LogLevel;
use std::ffi::OsString;

/// The text of `--help`.
pub const HELP: &str = "\
Usage: vmm [OPTIONS]

Runs one microVM. With --config-file and --no-api, builds it from the file and boots at once.

Options:
  --config-file PATH           JSON configuration (Firecracker's shape: boot-source,
                               machine-config, drives, network-interfaces, vsock, logger, metrics)
  --no-api                     do not serve the API; requires --config-file
  --api-sock PATH              Unix socket of the HTTP API
  --id ID                      microVM id (1-64 characters from [A-Za-z0-9_-]; default anonymous-instance)
  --serial-out PATH            write the guest's serial console to PATH (file or FIFO) instead of stdout
  --boot-entry auto|pvh|linux64
                               kernel entry: PVH when the ELF has a PVH note (auto, default),
                               or force one
  --boot-timer                 print start-up phase times and the guest's first serial byte time
  --strict-io                  stop the microVM (exit code 6) when the guest accesses an I/O port or
                               MMIO address with no device, instead of ignoring the access
  --start-time-us US           process start (CLOCK_MONOTONIC, microseconds), from the jailer
  --start-time-cpu-us US       process CPU time at start, from the jailer
  --parent-cpu-time-us US      the jailer's CPU time
  --log-path PATH              log file or FIFO
  --level LEVEL                log level: Off, Error, Warning, Info, Debug, Trace
  --metrics-path PATH          metrics file or FIFO
  --http-api-max-payload-size BYTES
                               largest API request body
  --seccomp-filter PATH        seccomp filters to use instead of the built-in ones: a JSON filter
                               set or one compiled by kiln-seccompiler (policies/seccomp/README.md)
  --seccomp-log                diagnosis: log syscalls the filters refuse instead of killing
  --no-seccomp                 run without seccomp filtering (prints a warning)
  --version                    print the version and exit
  --help                       print this help and exit
";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("unknown flag {0:?} (see --help)")]
    UnknownFlag(String),
    #[error("unexpected argument {0:?}: vmm takes only flags (see --help)")]
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
    #[error("{0} and {1} cannot be used together")]
    Conflict(&'static str, &'static str),
    #[error("--no-api needs --config-file: without the API, the config file is the only way to describe the microVM")]
    NoApiWithoutConfig,
}

/// Everything the command line says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Args {
    pub config_file: Option<String>,
    pub no_api: bool,
    pub api_sock: Option<String>,
    pub id: Option<String>,
    pub serial_out: SerialSink,
    pub boot_entry: EntryPreference,
    pub boot_timer: bool,
    pub strict_io: bool,
    pub start_time_us: Option<u64>,
    pub start_time_cpu_us: Option<u64>,
    pub parent_cpu_time_us: Option<u64>,
    pub log_path: Option<String>,
    pub level: Option<LogLevel>,
    pub metrics_path: Option<String>,
    pub http_api_max_payload_size: Option<usize>,
    pub seccomp_filter: Option<String>,
    pub no_seccomp: bool,
    pub seccomp_log: bool,
}

/// What the invocation asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    Version,
    Run(Box<Args>),
}

fn check_id(flag: &'static str, id: &str) -> Result<(), CliError> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CliError::BadValue {
            flag,
            value: id.into(),
            reason: "use 1 to 64 characters from [A-Za-z0-9_-]".into(),
        })
    }
}

fn nonempty_path(flag: &'static str, v: String) -> Result<String, CliError> {
    if v.is_empty() {
        return Err(CliError::BadValue {
            flag,
            value: v,
            reason: "the path is empty".into(),
        });
    }
    Ok(v)
}

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

fn set<T>(slot: &mut Option<T>, flag: &'static str, v: T) -> Result<(), CliError> {
    if slot.is_some() {
        return Err(CliError::Repeated(flag));
    }
    *slot = Some(v);
    Ok(())
}

/// Every flag, and whether it takes a value.
const FLAGS: &[(&str, bool)] = &[
    ("--config-file", true),
    ("--no-api", false),
    ("--api-sock", true),
    ("--id", true),
    ("--serial-out", true),
    ("--boot-entry", true),
    ("--boot-timer", false),
    ("--strict-io", false),
    ("--start-time-us", true),
    ("--start-time-cpu-us", true),
    ("--parent-cpu-time-us", true),
    ("--log-path", true),
    ("--level", true),
    ("--metrics-path", true),
    ("--http-api-max-payload-size", true),
    ("--seccomp-filter", true),
    ("--no-seccomp", false),
    ("--seccomp-log", false),
    ("--version", false),
    ("--help", false),
];

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = OsString>>(argv: I) -> Result<Command, CliError> {
    let mut args = Args::default();
    let mut seen: Vec<&'static str> = Vec::new();
    let mut it = argv.into_iter();
    let mut serial_out: Option<String> = None;
    let mut boot_entry: Option<EntryPreference> = None;
    let mut help = false;
    let mut version = false;
    while let Some(raw) = it.next() {
        let arg = raw
            .into_string()
            .map_err(|a| CliError::NotUtf8(a.to_string_lossy().into_owned()))?;
        let Some(body) = arg.strip_prefix("--") else {
            return Err(CliError::Positional(arg));
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        let Some(&(flag, takes_value)) = FLAGS
            .iter()
            .find(|(f, _)| f.strip_prefix("--") == Some(name))
        else {
            return Err(CliError::UnknownFlag(format!("--{name}")));
        };
        if seen.contains(&flag) {
            return Err(CliError::Repeated(flag));
        }
        seen.push(flag);
        if !takes_value {
            if inline.is_some() {
                return Err(CliError::UnexpectedValue(flag));
            }
            match flag {
                "--no-api" => args.no_api = true,
                "--boot-timer" => args.boot_timer = true,
                "--strict-io" => args.strict_io = true,
                "--no-seccomp" => args.no_seccomp = true,
                "--seccomp-log" => args.seccomp_log = true,
                "--version" => version = true,
                _ => help = true,
            }
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .ok_or(CliError::MissingValue(flag))?
                .into_string()
                .map_err(|a| CliError::NotUtf8(a.to_string_lossy().into_owned()))?,
        };
        match flag {
            "--config-file" => set(&mut args.config_file, flag, nonempty_path(flag, value)?)?,
            "--api-sock" => set(&mut args.api_sock, flag, nonempty_path(flag, value)?)?,
            "--id" => {
                check_id(flag, &value)?;
                set(&mut args.id, flag, value)?
            }
            "--serial-out" => set(&mut serial_out, flag, nonempty_path(flag, value)?)?,
            "--boot-entry" => {
                let e = value.parse().map_err(|reason| CliError::BadValue {
                    flag,
                    value: value.clone(),
                    reason,
                })?;
                set(&mut boot_entry, flag, e)?
            }
            "--start-time-us" => set(&mut args.start_time_us, flag, number(flag, &value)?)?,
            "--start-time-cpu-us" => set(&mut args.start_time_cpu_us, flag, number(flag, &value)?)?,
            "--parent-cpu-time-us" => {
                set(&mut args.parent_cpu_time_us, flag, number(flag, &value)?)?
            }
            "--log-path" => set(&mut args.log_path, flag, nonempty_path(flag, value)?)?,
            "--level" => {
                let level = parse_level(&value).ok_or_else(|| CliError::BadValue {
                    flag,
                    value: value.clone(),
                    reason: "use Off, Error, Warning, Info, Debug or Trace".into(),
                })?;
                set(&mut args.level, flag, level)?
            }
            "--metrics-path" => set(&mut args.metrics_path, flag, nonempty_path(flag, value)?)?,
            "--http-api-max-payload-size" => {
                let n: usize = number(flag, &value)?;
                if n == 0 {
                    return Err(CliError::BadValue {
                        flag,
                        value,
                        reason: "must be at least 1".into(),
                    });
                }
                set(&mut args.http_api_max_payload_size, flag, n)?
            }
            _ => set(&mut args.seccomp_filter, flag, nonempty_path(flag, value)?)?,
        }
    }
    if help {
        return Ok(Command::Help);
    }
    if version {
        return Ok(Command::Version);
    }
    if let Some(p) = serial_out {
        args.serial_out = SerialSink::Path(p);
    }
    args.boot_entry = boot_entry.unwrap_or_default();
    if args.no_seccomp && args.seccomp_filter.is_some() {
        return Err(CliError::Conflict("--no-seccomp", "--seccomp-filter"));
    }
    if args.no_seccomp && args.seccomp_log {
        return Err(CliError::Conflict("--no-seccomp", "--seccomp-log"));
    }
    if args.no_api && args.api_sock.is_some() {
        return Err(CliError::Conflict("--no-api", "--api-sock"));
    }
    if args.no_api && args.config_file.is_none() {
        return Err(CliError::NoApiWithoutConfig);
    }
    Ok(Command::Run(Box::new(args)))
}

fn parse_level(v: &str) -> Option<LogLevel> {
    Some(match v.to_ascii_lowercase().as_str() {
        "off" => LogLevel::Off,
        "error" => LogLevel::Error,
        "warning" | "warn" => LogLevel::Warning,
        "info" => LogLevel::Info,
        "debug" => LogLevel::Debug,
        "trace" => LogLevel::Trace,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, CliError> {
        parse(args.iter().map(OsString::from))
    }

    fn run(args: &[&str]) -> Args {
        match p(args) {
            Ok(Command::Run(a)) => *a,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn config_file_mode() {
        let a = run(&["--config-file", "vm.json", "--no-api"]);
        assert_eq!(a.config_file.as_deref(), Some("vm.json"));
        assert!(a.no_api && !a.strict_io);
        assert_eq!(a.serial_out, SerialSink::Stdout);
        assert_eq!(a.boot_entry, EntryPreference::Auto);
    }

    #[test]
    fn every_flag_parses() {
        let a = run(&[
            "--config-file=c.json",
            "--no-api",
            "--id",
            "vm-1",
            "--serial-out",
            "/tmp/s",
            "--boot-entry",
            "linux64",
            "--boot-timer",
            "--strict-io",
            "--start-time-us",
            "123",
            "--start-time-cpu-us=4",
            "--parent-cpu-time-us",
            "5",
            "--log-path",
            "/tmp/l",
            "--level",
            "Debug",
            "--metrics-path",
            "/tmp/m",
            "--http-api-max-payload-size",
            "51200",
            "--no-seccomp",
        ]);
        assert_eq!(a.id.as_deref(), Some("vm-1"));
        assert_eq!(a.serial_out, SerialSink::Path("/tmp/s".into()));
        assert_eq!(a.boot_entry, EntryPreference::Linux64);
        assert!(a.boot_timer && a.strict_io && a.no_seccomp);
        assert_eq!(
            (a.start_time_us, a.start_time_cpu_us, a.parent_cpu_time_us),
            (Some(123), Some(4), Some(5))
        );
        assert_eq!(a.level, Some(LogLevel::Debug));
        assert_eq!(a.http_api_max_payload_size, Some(51200));
        let a = run(&["--api-sock", "/run/fc.sock", "--seccomp-filter", "f.bpf"]);
        assert_eq!(a.api_sock.as_deref(), Some("/run/fc.sock"));
        assert_eq!(a.seccomp_filter.as_deref(), Some("f.bpf"));
    }

    #[test]
    fn help_and_version() {
        assert_eq!(p(&["--help"]), Ok(Command::Help));
        assert_eq!(p(&["--version"]), Ok(Command::Version));
        assert_eq!(p(&["--no-api", "--help"]), Ok(Command::Help));
    }

    /// Table of bad command lines and the error each gives.
    #[test]
    fn errors_name_the_problem() {
        let cases: &[(&[&str], CliError)] = &[
            (&["--bogus"], CliError::UnknownFlag("--bogus".into())),
            (&["--bogus=1"], CliError::UnknownFlag("--bogus".into())),
            (&["-h"], CliError::Positional("-h".into())),
            (&["vm.json"], CliError::Positional("vm.json".into())),
            (&["--config-file"], CliError::MissingValue("--config-file")),
            (&["--no-api=yes"], CliError::UnexpectedValue("--no-api")),
            (&["--id", "a", "--id", "b"], CliError::Repeated("--id")),
            (&["--no-api"], CliError::NoApiWithoutConfig),
            (
                &["--config-file", "c", "--no-api", "--api-sock", "s"],
                CliError::Conflict("--no-api", "--api-sock"),
            ),
            (
                &["--no-seccomp", "--seccomp-filter", "f"],
                CliError::Conflict("--no-seccomp", "--seccomp-filter"),
            ),
            (
                &["--no-seccomp", "--seccomp-log"],
                CliError::Conflict("--no-seccomp", "--seccomp-log"),
            ),
        ];
        for (argv, want) in cases {
            assert_eq!(&p(argv).unwrap_err(), want, "{argv:?}");
        }
        let bad_values: &[(&[&str], &str)] = &[
            (&["--id", "a/b"], "--id"),
            (&["--id", ""], "--id"),
            (&["--start-time-us", "soon"], "--start-time-us"),
            (&["--start-time-us", "-1"], "--start-time-us"),
            (&["--level", "loud"], "--level"),
            (&["--boot-entry", "efi"], "--boot-entry"),
            (
                &["--http-api-max-payload-size", "0"],
                "--http-api-max-payload-size",
            ),
            (&["--config-file", ""], "--config-file"),
        ];
        for (argv, flag) in bad_values {
            match p(argv) {
                Err(CliError::BadValue { flag: f, .. }) => assert_eq!(f, *flag, "{argv:?}"),
                other => panic!("{argv:?}: {other:?}"),
            }
        }
    }
}
