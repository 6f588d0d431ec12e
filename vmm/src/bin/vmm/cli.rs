//! The `vmm` command line: every flag of Firecracker's `firecracker --help` (so the jailer
//! and tools written for Firecracker can drive either), plus Kiln's `--serial-out`,
//! `--boot-entry`, `--strict-io`, `--seccomp-log` and the snapshot key
//! (`--snapshot-key-file`, `--snapshot-key-fd`). `--enable-pci` puts the virtio devices on
//! PCI, as Firecracker's does.
//!
//! `kiln-argv` tokenizes (a value as the next argument or after `=`: `--id vm1`,
//! `--id=vm1`); this module only converts each value into what the library takes
//! ([`SerialSink`], [`EntryPreference`], [`LogLevel`], [`seccomp::Choice`], ...). An unknown
//! flag, a missing or invalid value, a flag given twice or a stray argument is an error
//! naming it.

use kiln_argv::{ArgvError, Flag, Table};
use std::ffi::OsString;
use std::path::PathBuf;
use vmm::devices::legacy::serial::SerialSink;
use vmm::loader::EntryPreference;
use vmm::resources::LogLevel;
use vmm::seccomp::{self, OnViolation};

/// The text of `--help`.
pub const HELP: &str = "\
Usage: vmm [OPTIONS]

Runs one microVM. With --config-file and --no-api, builds it from the file and boots at once.

Options:
  --config-file PATH           JSON configuration (Firecracker's shape: boot-source,
                               machine-config, drives, network-interfaces, vsock, logger, metrics,
                               mmds-config, ...)
  --no-api                     do not serve the API; requires --config-file (--api-sock is then
                               ignored)
  --api-sock PATH              Unix socket of the HTTP API (default /run/firecracker.socket)
  --id ID                      microVM id (1-64 characters from [A-Za-z0-9_-]; default anonymous-instance)
  --serial-out PATH            write the guest's serial console to PATH (file or FIFO) instead of stdout
  --boot-entry auto|pvh|linux64
                               kernel entry: PVH when the ELF has a PVH note (auto, default),
                               or force one
  --boot-timer                 print start-up phase times and the guest's first serial byte time
  --enable-pci                 put the virtio devices on a PCI bus (MSI-X interrupts, no
                               virtio_mmio.device= on the kernel command line) instead of
                               virtio-mmio windows (its snapshots restore only with the flag)
  --prepare-vm                 (Kiln) create the KVM VM, register its guest memory and create the
                               vCPUs (CPUID, MSRs; no thread) as soon as PUT /machine-config sets
                               them, before InstanceStart (which then only loads the kernel, adds
                               devices, sets the vCPUs' registers and starts their threads)
  --coalesce-mmio              (Kiln) a booted microVM's virtio-mmio set-up registers are KVM
                               coalesced MMIO: their writes reach the VMM at the vCPU's next exit
                               (needs KVM_REGISTER_COALESCED_MMIO in the jail's seccomp policy)
  --strict-io                  stop the microVM (exit code 6) when the guest accesses an I/O port or
                               MMIO address with no device, instead of ignoring the access
  --start-time-us US           process start (CLOCK_MONOTONIC, microseconds), from the jailer
  --start-time-cpu-us US       process CPU time at start, from the jailer
  --parent-cpu-time-us US      the jailer's CPU time
  --log-path PATH              log file or FIFO (default: stderr)
  --level LEVEL                log level: Off, Error, Warning, Info, Debug, Trace (default Info)
  --show-level                 write each log line's level
  --show-log-origin            write each log line's source file and line
  --module PREFIX              only log lines from module paths starting with PREFIX
  --metrics-path PATH          metrics file or FIFO
  --http-api-max-payload-size BYTES
                               largest API request body (default 51200)
  --metadata PATH              a JSON document to put into the MMDS data store at start
  --mmds-size-limit BYTES      largest MMDS data store, as compact JSON (default: the
                               --http-api-max-payload-size value)
  --seccomp-filter PATH        seccomp filters to use instead of the built-in ones: a JSON filter
                               set or one compiled by kiln-seccompiler (policies/seccomp/README.md)
  --seccomp-log                diagnosis: log syscalls the filters refuse instead of killing
  --no-seccomp                 run without seccomp filtering (prints a warning)
  --snapshot-key-file PATH     the key of authenticated snapshots (16 to 1024 bytes): snapshots
                               are made with its HMAC-SHA256, and only snapshots that verify
                               with it are loaded
  --snapshot-key-fd N          the same key, read from inherited descriptor N (then closed)
  --snapshot-version           print the snapshot format version this VMM writes and exit
  --describe-snapshot PATH     print the format version of the snapshot state file PATH and exit
  --version                    print the version and exit
  --help                       print this help and exit
";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error(transparent)]
    Argv(#[from] ArgvError),
    #[error("--no-api needs --config-file: without the API, the config file is the only way to describe the microVM")]
    NoApiWithoutConfig,
}

/// Where the snapshot key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    File(PathBuf),
    /// An inherited descriptor (3 or more).
    Fd(i32),
}

/// Everything the command line says, converted.
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
    /// `--enable-pci`: the virtio devices on PCI.
    pub enable_pci: bool,
    /// `--prepare-vm`: the KVM VM, its memory and vCPUs made when the machine configuration
    /// is set.
    pub prepare_vm: bool,
    /// `--coalesce-mmio`: the virtio-mmio set-up registers are coalesced MMIO.
    pub coalesce_mmio: bool,
    pub start_time_us: Option<u64>,
    pub start_time_cpu_us: Option<u64>,
    /// Accepted for the jailer's command line (Firecracker's flag); nothing uses it yet.
    #[allow(dead_code)]
    pub parent_cpu_time_us: Option<u64>,
    pub log_path: Option<String>,
    pub level: Option<LogLevel>,
    pub show_level: bool,
    pub show_log_origin: bool,
    pub module: Option<String>,
    pub metrics_path: Option<String>,
    pub http_api_max_payload_size: Option<usize>,
    /// `--metadata`: the MMDS document's file.
    pub metadata: Option<String>,
    pub mmds_size_limit: Option<usize>,
    pub seccomp: seccomp::Choice,
    pub snapshot_key: Option<KeySource>,
}

/// What the invocation asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    Version,
    /// `--snapshot-version`.
    SnapshotVersion,
    /// `--describe-snapshot PATH`.
    DescribeSnapshot(PathBuf),
    Run(Box<Args>),
}

/// Every flag (named without `--`).
const FLAGS: &[Flag] = &[
    Flag::single("config-file"),
    Flag::switch("no-api"),
    Flag::single("api-sock"),
    Flag::single("id"),
    Flag::single("serial-out"),
    Flag::single("boot-entry"),
    Flag::switch("boot-timer"),
    Flag::switch("strict-io"),
    Flag::single("start-time-us"),
    Flag::single("start-time-cpu-us"),
    Flag::single("parent-cpu-time-us"),
    Flag::single("log-path"),
    Flag::single("level"),
    Flag::switch("show-level"),
    Flag::switch("show-log-origin"),
    Flag::single("module"),
    Flag::single("metrics-path"),
    Flag::single("http-api-max-payload-size"),
    Flag::single("seccomp-filter"),
    Flag::switch("no-seccomp"),
    Flag::switch("seccomp-log"),
    Flag::single("snapshot-key-file"),
    Flag::single("snapshot-key-fd"),
    Flag::switch("snapshot-version"),
    Flag::single("describe-snapshot"),
    Flag::switch("version"),
    Flag::switch("help"),
    Flag::switch("enable-pci"),
    Flag::switch("prepare-vm"),
    Flag::switch("coalesce-mmio"),
    Flag::single("metadata"),
    Flag::single("mmds-size-limit"),
];

fn instance_id(id: &str) -> Result<String, &'static str> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(id.to_string())
    } else {
        Err("use 1 to 64 characters from [A-Za-z0-9_-]")
    }
}

fn nonempty_path(v: &str) -> Result<String, &'static str> {
    if v.is_empty() {
        return Err("the path is empty");
    }
    Ok(v.to_string())
}

fn nonempty_module(v: &str) -> Result<String, &'static str> {
    if v.is_empty() {
        return Err("the module path is empty");
    }
    Ok(v.to_string())
}

fn key_fd(v: &str) -> Result<i32, String> {
    match v.parse::<i32>() {
        Ok(n) if n >= 3 => Ok(n),
        Ok(_) => Err("descriptors 0, 1 and 2 are the standard streams; use 3 or more".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn payload_size(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = OsString>>(argv: I) -> Result<Command, CliError> {
    let a = kiln_argv::parse(&Table::flags(FLAGS), argv)?;
    let seccomp = if a.switch("no-seccomp") {
        seccomp::Choice::Off
    } else {
        seccomp::Choice::Filters {
            file: a
                .converted("seccomp-filter", nonempty_path)?
                .map(PathBuf::from),
            on_violation: if a.switch("seccomp-log") {
                OnViolation::Log
            } else {
                OnViolation::Kill
            },
        }
    };
    let args = Args {
        config_file: a.converted("config-file", nonempty_path)?,
        no_api: a.switch("no-api"),
        api_sock: a.converted("api-sock", nonempty_path)?,
        id: a.converted("id", instance_id)?,
        serial_out: a
            .converted("serial-out", nonempty_path)?
            .map_or(SerialSink::Stdout, SerialSink::Path),
        boot_entry: a.parsed("boot-entry")?.unwrap_or_default(),
        boot_timer: a.switch("boot-timer"),
        strict_io: a.switch("strict-io"),
        enable_pci: a.switch("enable-pci"),
        prepare_vm: a.switch("prepare-vm"),
        coalesce_mmio: a.switch("coalesce-mmio"),
        start_time_us: a.parsed("start-time-us")?,
        start_time_cpu_us: a.parsed("start-time-cpu-us")?,
        parent_cpu_time_us: a.parsed("parent-cpu-time-us")?,
        log_path: a.converted("log-path", nonempty_path)?,
        level: a.parsed("level")?,
        show_level: a.switch("show-level"),
        show_log_origin: a.switch("show-log-origin"),
        module: a.converted("module", nonempty_module)?,
        metrics_path: a.converted("metrics-path", nonempty_path)?,
        http_api_max_payload_size: a.converted("http-api-max-payload-size", payload_size)?,
        metadata: a.converted("metadata", nonempty_path)?,
        mmds_size_limit: a.converted("mmds-size-limit", payload_size)?,
        seccomp,
        snapshot_key: match (
            a.converted("snapshot-key-file", nonempty_path)?,
            a.converted("snapshot-key-fd", key_fd)?,
        ) {
            (Some(p), None) => Some(KeySource::File(PathBuf::from(p))),
            (None, Some(fd)) => Some(KeySource::Fd(fd)),
            (Some(_), Some(_)) => {
                return Err(ArgvError::Conflict("snapshot-key-file", "snapshot-key-fd").into())
            }
            (None, None) => None,
        },
    };
    if a.switch("help") {
        return Ok(Command::Help);
    }
    if a.switch("version") {
        return Ok(Command::Version);
    }
    if a.switch("snapshot-version") {
        return Ok(Command::SnapshotVersion);
    }
    if let Some(p) = a.converted("describe-snapshot", nonempty_path)? {
        return Ok(Command::DescribeSnapshot(PathBuf::from(p)));
    }
    a.exclusive("no-seccomp", "seccomp-filter")?;
    a.exclusive("no-seccomp", "seccomp-log")?;
    if args.no_api && args.config_file.is_none() {
        return Err(CliError::NoApiWithoutConfig);
    }
    Ok(Command::Run(Box::new(args)))
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
        assert_eq!(a.seccomp, seccomp::Choice::default());
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
            "--metadata",
            "/tmp/md.json",
            "--mmds-size-limit",
            "4096",
            "--no-seccomp",
        ]);
        assert_eq!(a.metadata.as_deref(), Some("/tmp/md.json"));
        assert_eq!(a.mmds_size_limit, Some(4096));
        assert_eq!(a.id.as_deref(), Some("vm-1"));
        assert_eq!(a.serial_out, SerialSink::Path("/tmp/s".into()));
        assert_eq!(a.boot_entry, EntryPreference::Linux64);
        assert!(a.boot_timer && a.strict_io);
        assert_eq!(a.seccomp, seccomp::Choice::Off);
        assert_eq!(
            (a.start_time_us, a.start_time_cpu_us, a.parent_cpu_time_us),
            (Some(123), Some(4), Some(5))
        );
        assert_eq!(a.level, Some(LogLevel::Debug));
        assert_eq!(a.http_api_max_payload_size, Some(51200));
        let a = run(&["--api-sock", "/run/fc.sock", "--seccomp-filter", "f.bpf"]);
        assert_eq!(a.api_sock.as_deref(), Some("/run/fc.sock"));
        assert_eq!(
            a.seccomp,
            seccomp::Choice::Filters {
                file: Some("f.bpf".into()),
                on_violation: OnViolation::Kill
            }
        );
        let a = run(&["--seccomp-log"]);
        assert_eq!(
            a.seccomp,
            seccomp::Choice::Filters {
                file: None,
                on_violation: OnViolation::Log
            }
        );
    }

    #[test]
    fn help_and_version() {
        assert_eq!(p(&["--help"]), Ok(Command::Help));
        assert_eq!(p(&["--version"]), Ok(Command::Version));
        assert_eq!(p(&["--no-api", "--help"]), Ok(Command::Help));
    }

    #[test]
    fn snapshot_flags() {
        assert_eq!(p(&["--snapshot-version"]), Ok(Command::SnapshotVersion));
        assert_eq!(
            p(&["--describe-snapshot", "vm.snap"]),
            Ok(Command::DescribeSnapshot("vm.snap".into()))
        );
        assert_eq!(
            run(&["--snapshot-key-file", "/k"]).snapshot_key,
            Some(KeySource::File("/k".into()))
        );
        assert_eq!(
            run(&["--snapshot-key-fd=7"]).snapshot_key,
            Some(KeySource::Fd(7))
        );
        assert_eq!(run(&[]).snapshot_key, None);
    }

    /// Table of bad command lines and the error each gives.
    #[test]
    fn errors_name_the_problem() {
        let argv = |e: ArgvError| CliError::Argv(e);
        let cases: &[(&[&str], CliError)] = &[
            (&["--bogus"], argv(ArgvError::UnknownFlag("--bogus".into()))),
            (
                &["--bogus=1"],
                argv(ArgvError::UnknownFlag("--bogus".into())),
            ),
            (&["-h"], argv(ArgvError::Positional("-h".into()))),
            (&["vm.json"], argv(ArgvError::Positional("vm.json".into()))),
            (
                &["--config-file"],
                argv(ArgvError::MissingValue("config-file")),
            ),
            (
                &["--no-api=yes"],
                argv(ArgvError::UnexpectedValue {
                    flag: "no-api",
                    value: "yes".into(),
                }),
            ),
            (
                &["--id", "a", "--id", "b"],
                argv(ArgvError::Repeated {
                    flag: "id",
                    first: "a".into(),
                    second: "b".into(),
                }),
            ),
            (&["--no-api"], CliError::NoApiWithoutConfig),
            (
                &["--enable-pci=yes"],
                argv(ArgvError::UnexpectedValue {
                    flag: "enable-pci",
                    value: "yes".into(),
                }),
            ),
            (
                &["--snapshot-key-file", "k", "--snapshot-key-fd", "3"],
                argv(ArgvError::Conflict("snapshot-key-file", "snapshot-key-fd")),
            ),
            (
                &["--no-seccomp", "--seccomp-filter", "f"],
                argv(ArgvError::Conflict("no-seccomp", "seccomp-filter")),
            ),
            (
                &["--no-seccomp", "--seccomp-log"],
                argv(ArgvError::Conflict("no-seccomp", "seccomp-log")),
            ),
        ];
        for (argv, want) in cases {
            assert_eq!(&p(argv).unwrap_err(), want, "{argv:?}");
        }
        let bad_values: &[(&[&str], &str)] = &[
            (&["--id", "a/b"], "id"),
            (&["--id", ""], "id"),
            (&["--start-time-us", "soon"], "start-time-us"),
            (&["--start-time-us", "-1"], "start-time-us"),
            (&["--parent-cpu-time-us", "x"], "parent-cpu-time-us"),
            (&["--level", "loud"], "level"),
            (&["--boot-entry", "efi"], "boot-entry"),
            (
                &["--http-api-max-payload-size", "0"],
                "http-api-max-payload-size",
            ),
            (&["--config-file", ""], "config-file"),
            (&["--module", ""], "module"),
            (&["--mmds-size-limit", "lots"], "mmds-size-limit"),
            (&["--metadata", ""], "metadata"),
            (&["--snapshot-key-fd", "2"], "snapshot-key-fd"),
            (&["--snapshot-key-fd", "x"], "snapshot-key-fd"),
            (&["--describe-snapshot", ""], "describe-snapshot"),
        ];
        for (argv, flag) in bad_values {
            match p(argv) {
                Err(CliError::Argv(ArgvError::BadValue { flag: f, .. })) => {
                    assert_eq!(f, *flag, "{argv:?}")
                }
                other => panic!("{argv:?}: {other:?}"),
            }
        }
        // Messages name the flag with its dashes.
        let e = p(&["--level", "loud"]).unwrap_err().to_string();
        assert_eq!(
            e,
            "flag --level: invalid value \"loud\": use Off, Error, Warning, Info, Debug or Trace"
        );
        assert_eq!(run(&["--level", "WARN"]).level, Some(LogLevel::Warning));
        // Firecracker's --enable-pci is a switch that selects the PCI transport.
        assert!(run(&["--enable-pci"]).enable_pci);
        assert!(run(&["--prepare-vm"]).prepare_vm);
        assert!(!run(&[]).prepare_vm);
        assert!(run(&["--coalesce-mmio"]).coalesce_mmio);
        assert!(!run(&[]).coalesce_mmio);
        assert!(!run(&[]).enable_pci);
    }

    #[test]
    fn firecracker_logger_flags_and_no_api_with_a_socket() {
        let a = run(&["--show-level", "--show-log-origin", "--module", "vmm::api"]);
        assert!(a.show_level && a.show_log_origin);
        assert_eq!(a.module.as_deref(), Some("vmm::api"));
        let a = run(&[]);
        assert!(!a.show_level && !a.show_log_origin && a.module.is_none());
        // Firecracker accepts --api-sock with --no-api (and serves no API): so does Kiln.
        let a = run(&["--config-file", "c", "--no-api", "--api-sock", "s"]);
        assert!(a.no_api);
        // --help and --version win over the other flags, as in Firecracker.
        assert_eq!(p(&["--enable-pci", "--help"]), Ok(Command::Help));
    }
}
