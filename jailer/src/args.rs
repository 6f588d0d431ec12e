//! Command line: flags (Firecracker's jailer flags plus Kiln's), the tenant profile merged
//! under them, and validation of every value. Parsed by hand: no parser crate.
//!
//! Order of precedence: built-in defaults < `--profile` < flags. A list given by flags
//! (`--egress-allow`) replaces the profile's list; a keyed value (`--resource-limit no-file=N`,
//! `--cgroup pids.max=N`) replaces the profile's value for that key only.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use crate::profile::{CgroupLimits, Profile, ProfileError};

pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";
/// Firecracker's default for `no-file` when no limit is given.
pub const DEFAULT_NO_FILE: u64 = 2048;
/// Longest id (Firecracker's limit; also the longest hostname).
pub const MAX_ID_LEN: usize = 64;
/// Longest network interface name (IFNAMSIZ - 1).
pub const MAX_TAP_LEN: usize = 15;

pub const HELP: &str = "\
Kiln jailer: builds one tenant's jail, then execs the VMM inside it.

usage: jailer --id ID --exec-file PATH --uid UID --gid GID [options] [-- VMM_ARGS...]
       jailer cleanup --id ID --exec-file PATH [--chroot-base-dir DIR]

Firecracker-compatible flags:
  --id ID                   jail id: 1-64 characters, alphanumeric or '-'
  --exec-file PATH          the VMM binary (copied into the jail)
  --uid UID, --gid GID      identity the VMM runs as (not 0)
  --chroot-base-dir DIR     jails go in DIR/<exec-name>/<id>/root (default /srv/jailer)
  --netns PATH              join this network namespace
  --daemonize               detach: double fork, setsid, stdio to /dev/null
  --new-pid-ns              run the VMM in a new PID namespace
  --cgroup FILE=VALUE       write VALUE to the jail's cgroup FILE (repeatable)
  --cgroup-version 1|2|auto cgroup hierarchy to use (default auto: v1 where mounted)
  --parent-cgroup PATH      cgroup parent of the jail's cgroup (default <exec-name>)
  --resource-limit RES=N    no-file, fsize, memlock, nproc or core (repeatable)
Kiln's additions:
  --parent-cgroup-relative  nest --parent-cgroup under the jailer's own cgroup
  --new-netns               create a network namespace named after the id
  --tap NAME                create tap NAME in the jail's network namespace (repeatable)
  --firewall auto|on|off    install the egress firewall (auto: only in --new-netns)
  --egress-allow PROTO,CIDR[,PORT...]  allow-list entry (tcp, udp, icmp, any; repeatable)
  --bind-ro HOST:JAIL       bind HOST read-only at JAIL inside the jail (repeatable)
  --bind-rw HOST:JAIL       bind HOST read-write at JAIL inside the jail (repeatable)
  --userfaultfd             also create /dev/userfaultfd
  --userns                  run the VMM in a user namespace mapping only UID:GID
  --profile FILE            tenant profile (JSON; see policies/tenant/default.json)
  --seccomp-policy FILE     jail-level seccomp policy instead of the built-in one
  --cleanup-on-exit         stay as a supervisor; remove the jail when the VMM exits
  --timing                  print the time each step took on stderr
  --diagnose-without LAYER  DIAGNOSIS ONLY, debug builds only: leave out one protection
                            layer (landlock or privileges); see docs/jailer.md
  --help, --version
";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("unknown flag {flag:?} (see jailer --help)")]
    UnknownFlag { flag: String },
    #[error("unexpected argument {value:?} (VMM arguments go after `--`)")]
    Positional { value: String },
    #[error("flag --{flag} needs a value")]
    MissingValue { flag: &'static str },
    #[error("flag --{flag} is required")]
    MissingFlag { flag: &'static str },
    #[error("flag --{flag} given twice ({first:?} and {second:?})")]
    Duplicate {
        flag: &'static str,
        first: String,
        second: String,
    },
    #[error("flag --{flag} takes no value (got {value:?})")]
    UnexpectedValue { flag: &'static str, value: String },
    #[error("--{flag} {value:?}: not valid UTF-8")]
    NotUtf8 { flag: &'static str, value: String },
    #[error(
        "--id {value:?}: an id is 1 to {MAX_ID_LEN} characters, each ASCII alphanumeric or '-'"
    )]
    InvalidId { value: String },
    #[error("{flag} {value:?}: {reason}")]
    InvalidPath {
        flag: String,
        value: String,
        reason: &'static str,
    },
    #[error("--{flag} {value:?}: {reason}")]
    InvalidValue {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("--{flag} {value}: the VMM must not run as root (root without capabilities can still open root-owned files)")]
    RootId { flag: &'static str, value: u32 },
    #[error("--cgroup {value:?}: {reason}")]
    InvalidCgroup { value: String, reason: &'static str },
    #[error("{field} {value:?}: {reason}")]
    InvalidEgress {
        field: String,
        value: String,
        reason: String,
    },
    #[error(
        "{field} {value:?}: unknown resource (expected no-file, fsize, memlock, nproc or core)"
    )]
    UnknownResource { field: String, value: String },
    #[error("--{flag} {value:?} conflicts with --{other}")]
    Conflict {
        flag: &'static str,
        value: String,
        other: &'static str,
    },
    #[error("--diagnose-without {value:?}: only in debug builds of the jailer (a diagnosis flag for the security suite, never for production)")]
    DiagnoseRelease { value: String },
    #[error("--tap {value:?} needs --netns or --new-netns (a tap is created in the jail's network namespace)")]
    TapWithoutNetns { value: String },
    #[error("--firewall on needs --netns or --new-netns (the host namespace is never filtered)")]
    FirewallWithoutNetns,
    #[error("--exec-file {path}: no such file")]
    ExecFileMissing { path: PathBuf },
    #[error("--exec-file {path}: is a symbolic link; pass the file it points to")]
    ExecFileSymlink { path: PathBuf },
    #[error("--exec-file {path}: not a regular file")]
    ExecFileNotFile { path: PathBuf },
    #[error("--exec-file {path}: file name {name:?} is reserved in the jail or not UTF-8")]
    ExecFileName { path: PathBuf, name: String },
    #[error("--{flag} {path}: {source}")]
    Resolve {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: IoErrorEq,
    },
    #[error("--{flag} {path}: not a directory")]
    NotADirectory { flag: &'static str, path: PathBuf },
    #[error("--{flag} {path}: only regular files and directories can be bound")]
    BindType { flag: &'static str, path: PathBuf },
    #[error(transparent)]
    Profile(#[from] ProfileErrorEq),
}

/// `std::io::Error` wrapper so that `ArgsError` can be compared in tests (by kind).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct IoErrorEq(pub std::io::Error);
impl PartialEq for IoErrorEq {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind() == other.0.kind()
    }
}
impl Eq for IoErrorEq {}

/// Same for profile errors (compared by message).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProfileErrorEq(pub ProfileError);
impl PartialEq for ProfileErrorEq {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}
impl Eq for ProfileErrorEq {}

/// What the jailer was asked to do.
#[derive(Debug)]
pub enum Command {
    Jail(Box<Config>),
    Cleanup(CleanupConfig),
    Help,
    Version,
}

/// `jailer cleanup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanupConfig {
    pub id: String,
    pub exec_name: String,
    pub chroot_base: PathBuf,
}

impl CleanupConfig {
    /// `<base>/<exec-name>/<id>`.
    pub fn jail_dir(&self) -> PathBuf {
        self.chroot_base.join(&self.exec_name).join(&self.id)
    }
}

/// A fully validated jail configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub id: String,
    /// Canonical path of the VMM binary on the host.
    pub exec_file: PathBuf,
    /// Its file name: the binary's name inside the jail and the jail directory's parent.
    pub exec_name: String,
    pub uid: u32,
    pub gid: u32,
    /// Canonical chroot base directory.
    pub chroot_base: PathBuf,
    pub network: Network,
    pub daemonize: bool,
    pub new_pid_ns: bool,
    pub cleanup_on_exit: bool,
    pub cgroup: CgroupConfig,
    /// Resource limits to set (each lowers soft and hard limit to the value).
    pub rlimits: BTreeMap<Rlimit, u64>,
    pub binds: Vec<Bind>,
    pub landlock: LandlockConfig,
    pub userfaultfd: bool,
    pub seccomp_policy: Option<PathBuf>,
    pub userns: bool,
    pub timing: bool,
    /// `--diagnose-without`: protection layers left out (the security suite's per-layer
    /// runs; accepted by debug builds only).
    pub diagnose_without: BTreeSet<Layer>,
    /// Arguments after `--`, passed to the VMM after the jailer's own.
    pub vmm_args: Vec<OsString>,
}

impl Config {
    /// `<base>/<exec-name>/<id>`: holds the jail's state file and its root.
    pub fn jail_dir(&self) -> PathBuf {
        self.chroot_base.join(&self.exec_name).join(&self.id)
    }

    /// `<base>/<exec-name>/<id>/root`: the directory that becomes `/`.
    pub fn chroot_dir(&self) -> PathBuf {
        self.jail_dir().join("root")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsMode {
    /// Stay in the jailer's network namespace (Firecracker's default).
    Inherit,
    /// `--netns PATH`.
    Join(PathBuf),
    /// `--new-netns`: `/run/netns/<id>`.
    Create,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub mode: NetnsMode,
    pub taps: Vec<String>,
    pub firewall: bool,
    pub egress: Vec<EgressAllow>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Any,
}

/// One validated egress allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressAllow {
    pub proto: Proto,
    pub addr: IpAddr,
    pub prefix: u8,
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
    Auto,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupConfig {
    pub version: CgroupVersion,
    /// Relative cgroup path the jail's cgroup is created under.
    pub parent: PathBuf,
    /// Nest `parent` under the jailer's own cgroup instead of the hierarchy root.
    pub relative: bool,
    /// Typed limits from the profile.
    pub limits: CgroupLimits,
    /// `--cgroup FILE=VALUE` entries, in order; they override typed limits on the same file.
    pub raw: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rlimit {
    NoFile,
    Fsize,
    Memlock,
    Nproc,
    Core,
}

impl Rlimit {
    pub const ALL: [Rlimit; 5] = [
        Rlimit::NoFile,
        Rlimit::Fsize,
        Rlimit::Memlock,
        Rlimit::Nproc,
        Rlimit::Core,
    ];

    /// Name in `--resource-limit`.
    pub fn flag_name(self) -> &'static str {
        match self {
            Rlimit::NoFile => "no-file",
            Rlimit::Fsize => "fsize",
            Rlimit::Memlock => "memlock",
            Rlimit::Nproc => "nproc",
            Rlimit::Core => "core",
        }
    }

    fn from_flag_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.flag_name() == name)
    }
}

/// A `--bind-ro`/`--bind-rw` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Canonical host path.
    pub host: PathBuf,
    /// Absolute path inside the jail.
    pub jail: PathBuf,
    pub writable: bool,
    pub is_dir: bool,
}

/// A protection layer that `--diagnose-without` can leave out, to show what the others stop
/// on their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Layer {
    /// No Landlock ruleset.
    Landlock,
    /// The VMM keeps the jailer's identity (root) and capabilities: no uid/gid change, no
    /// capability dropped.
    Privileges,
}

impl Layer {
    pub fn flag_value(self) -> &'static str {
        match self {
            Layer::Landlock => "landlock",
            Layer::Privileges => "privileges",
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LandlockConfig {
    /// Extra jail paths and whether they are writable.
    pub paths: Vec<(PathBuf, bool)>,
    pub tcp_connect: Vec<u16>,
    pub tcp_bind: Vec<u16>,
}

// ---------------------------------------------------------------------------------------
// Raw flag parsing.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Takes one value, at most once.
    Single,
    /// Takes one value, repeatable.
    Multi,
    /// Takes no value.
    Switch,
}

const JAIL_FLAGS: &[(&str, Kind)] = &[
    ("id", Kind::Single),
    ("exec-file", Kind::Single),
    ("uid", Kind::Single),
    ("gid", Kind::Single),
    ("chroot-base-dir", Kind::Single),
    ("netns", Kind::Single),
    ("new-netns", Kind::Switch),
    ("tap", Kind::Multi),
    ("firewall", Kind::Single),
    ("egress-allow", Kind::Multi),
    ("daemonize", Kind::Switch),
    ("new-pid-ns", Kind::Switch),
    ("cleanup-on-exit", Kind::Switch),
    ("cgroup", Kind::Multi),
    ("cgroup-version", Kind::Single),
    ("parent-cgroup", Kind::Single),
    ("parent-cgroup-relative", Kind::Switch),
    ("resource-limit", Kind::Multi),
    ("bind-ro", Kind::Multi),
    ("bind-rw", Kind::Multi),
    ("userfaultfd", Kind::Switch),
    ("userns", Kind::Switch),
    ("profile", Kind::Single),
    ("seccomp-policy", Kind::Single),
    ("timing", Kind::Switch),
    ("diagnose-without", Kind::Multi),
    ("help", Kind::Switch),
    ("version", Kind::Switch),
];

const CLEANUP_FLAGS: &[(&str, Kind)] = &[
    ("id", Kind::Single),
    ("exec-file", Kind::Single),
    ("chroot-base-dir", Kind::Single),
    ("help", Kind::Switch),
];

#[derive(Default, Debug)]
struct Raw {
    values: BTreeMap<&'static str, Vec<String>>,
    switches: BTreeSet<&'static str>,
    rest: Vec<OsString>,
}

impl Raw {
    fn single(&self, flag: &'static str) -> Option<&str> {
        self.values
            .get(flag)
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    fn required(&self, flag: &'static str) -> Result<&str, ArgsError> {
        self.single(flag).ok_or(ArgsError::MissingFlag { flag })
    }

    fn multi(&self, flag: &'static str) -> &[String] {
        self.values.get(flag).map(Vec::as_slice).unwrap_or(&[])
    }

    fn switch(&self, flag: &'static str) -> bool {
        self.switches.contains(flag)
    }
}

fn lossy(s: &OsString) -> String {
    s.to_string_lossy().into_owned()
}

fn parse_raw(
    table: &[(&'static str, Kind)],
    args: impl IntoIterator<Item = OsString>,
) -> Result<Raw, ArgsError> {
    let mut raw = Raw::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let text = match arg.to_str() {
            Some(t) => t.to_owned(),
            None => return Err(ArgsError::UnknownFlag { flag: lossy(&arg) }),
        };
        if text == "--" {
            raw.rest.extend(args);
            break;
        }
        let Some(body) = text.strip_prefix("--") else {
            return Err(ArgsError::Positional { value: text });
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (body, None),
        };
        let Some(&(flag, kind)) = table.iter().find(|(n, _)| *n == name) else {
            return Err(ArgsError::UnknownFlag { flag: text });
        };
        match kind {
            Kind::Switch => {
                if let Some(value) = inline {
                    return Err(ArgsError::UnexpectedValue { flag, value });
                }
                raw.switches.insert(flag);
            }
            Kind::Single | Kind::Multi => {
                let value = match inline {
                    Some(v) => v,
                    None => {
                        let v = args.next().ok_or(ArgsError::MissingValue { flag })?;
                        v.to_str()
                            .map(str::to_owned)
                            .ok_or_else(|| ArgsError::NotUtf8 {
                                flag,
                                value: lossy(&v),
                            })?
                    }
                };
                let entry = raw.values.entry(flag).or_default();
                if kind == Kind::Single {
                    if let Some(first) = entry.first() {
                        return Err(ArgsError::Duplicate {
                            flag,
                            first: first.clone(),
                            second: value,
                        });
                    }
                }
                entry.push(value);
            }
        }
    }
    Ok(raw)
}

// ---------------------------------------------------------------------------------------
// Entry point.

/// Parses the jailer's arguments (without the program name).
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, ArgsError> {
    let mut args = args.into_iter().peekable();
    if args.peek().is_some_and(|a| a == "cleanup") {
        args.next();
        let raw = parse_raw(CLEANUP_FLAGS, args)?;
        if raw.switch("help") {
            return Ok(Command::Help);
        }
        if let Some(extra) = raw.rest.first() {
            return Err(ArgsError::Positional {
                value: lossy(extra),
            });
        }
        return Ok(Command::Cleanup(cleanup_config(&raw)?));
    }
    let raw = parse_raw(JAIL_FLAGS, args)?;
    if raw.switch("help") {
        return Ok(Command::Help);
    }
    if raw.switch("version") {
        return Ok(Command::Version);
    }
    Ok(Command::Jail(Box::new(jail_config(raw)?)))
}

fn cleanup_config(raw: &Raw) -> Result<CleanupConfig, ArgsError> {
    let id = validate_id(raw.required("id")?)?;
    let exec = raw.required("exec-file")?;
    check_host_path("--exec-file", exec)?;
    let exec_name = Path::new(exec)
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| exec_name_ok(n))
        .ok_or_else(|| ArgsError::ExecFileName {
            path: PathBuf::from(exec),
            name: exec.to_owned(),
        })?
        .to_owned();
    let chroot_base = resolve_chroot_base(raw.single("chroot-base-dir"))?;
    Ok(CleanupConfig {
        id,
        exec_name,
        chroot_base,
    })
}

fn jail_config(raw: Raw) -> Result<Config, ArgsError> {
    // Values that need no file system access first, so that a bad value is reported
    // before anything is looked up.
    let id = validate_id(raw.required("id")?)?;
    let exec = raw.required("exec-file")?.to_owned();
    check_host_path("--exec-file", &exec)?;
    let uid = parse_id_number("uid", raw.required("uid")?)?;
    let gid = parse_id_number("gid", raw.required("gid")?)?;
    if let Some(base) = raw.single("chroot-base-dir") {
        check_host_path("--chroot-base-dir", base)?;
    }

    let profile = match raw.single("profile") {
        Some(p) => {
            check_host_path("--profile", p)?;
            Profile::load(Path::new(p)).map_err(|e| ArgsError::Profile(ProfileErrorEq(e)))?
        }
        None => Profile::default(),
    };

    let network = network_config(&raw, &id, &profile)?;
    let cgroup = cgroup_config(&raw, &profile)?;
    let rlimits = rlimit_config(&raw, &profile)?;
    let landlock = landlock_config(&profile)?;
    let diagnose_without = diagnose_config(&raw)?;
    let seccomp_policy = match raw.single("seccomp-policy") {
        Some(p) => {
            check_host_path("--seccomp-policy", p)?;
            Some(PathBuf::from(p))
        }
        None => None,
    };

    // Now the file system.
    let (exec_file, exec_name) = resolve_exec_file(&exec)?;
    let chroot_base = resolve_chroot_base(raw.single("chroot-base-dir"))?;
    let cgroup = CgroupConfig {
        parent: match raw.single("parent-cgroup") {
            Some(_) => cgroup.parent,
            None => PathBuf::from(&exec_name),
        },
        ..cgroup
    };
    let binds = bind_config(&raw, &exec_name)?;
    check_landlock_paths(&landlock, &binds)?;
    if let NetnsMode::Join(path) = &network.mode {
        std::fs::metadata(path).map_err(|e| ArgsError::Resolve {
            flag: "netns",
            path: path.clone(),
            source: IoErrorEq(e),
        })?;
    }

    Ok(Config {
        id,
        exec_file,
        exec_name,
        uid,
        gid,
        chroot_base,
        network,
        daemonize: raw.switch("daemonize"),
        new_pid_ns: raw.switch("new-pid-ns"),
        cleanup_on_exit: raw.switch("cleanup-on-exit"),
        cgroup,
        rlimits,
        binds,
        landlock,
        userfaultfd: raw.switch("userfaultfd"),
        seccomp_policy,
        userns: raw.switch("userns"),
        timing: raw.switch("timing"),
        diagnose_without,
        vmm_args: raw.rest,
    })
}

/// `--diagnose-without LAYER`: debug builds only, and never with `--userns` (which needs
/// the identity change).
fn diagnose_config(raw: &Raw) -> Result<BTreeSet<Layer>, ArgsError> {
    let mut layers = BTreeSet::new();
    for value in raw.multi("diagnose-without") {
        let layer = match value.as_str() {
            "landlock" => Layer::Landlock,
            "privileges" => Layer::Privileges,
            other => {
                return Err(ArgsError::InvalidValue {
                    flag: "diagnose-without",
                    value: other.to_owned(),
                    reason: "expected landlock or privileges".into(),
                })
            }
        };
        if !cfg!(debug_assertions) {
            return Err(ArgsError::DiagnoseRelease {
                value: value.clone(),
            });
        }
        if layer == Layer::Privileges && raw.switch("userns") {
            return Err(ArgsError::Conflict {
                flag: "diagnose-without",
                value: value.clone(),
                other: "userns",
            });
        }
        layers.insert(layer);
    }
    Ok(layers)
}

// ---------------------------------------------------------------------------------------
// Individual validators (pure; unit-tested below).

/// `--id`: 1..=64 characters, ASCII alphanumeric or `-`.
pub fn validate_id(value: &str) -> Result<String, ArgsError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_ID_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(value.to_owned())
    } else {
        Err(ArgsError::InvalidId {
            value: value.to_owned(),
        })
    }
}

fn parse_id_number(flag: &'static str, value: &str) -> Result<u32, ArgsError> {
    let n: u32 = value.parse().map_err(|_| ArgsError::InvalidValue {
        flag,
        value: value.to_owned(),
        reason: "not a decimal number below 2^32".into(),
    })?;
    if n == 0 {
        return Err(ArgsError::RootId { flag, value: n });
    }
    if n == u32::MAX {
        return Err(ArgsError::InvalidValue {
            flag,
            value: value.to_owned(),
            reason: "4294967295 is the invalid id".into(),
        });
    }
    Ok(n)
}

/// A host path: non-empty, no NUL, no `..` component.
pub fn check_host_path(flag: &str, value: &str) -> Result<(), ArgsError> {
    let err = |reason| ArgsError::InvalidPath {
        flag: flag.to_owned(),
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(err("empty path"));
    }
    if value.contains('\0') {
        return Err(err("contains a NUL byte"));
    }
    if value.split('/').any(|c| c == "..") {
        return Err(err("contains a `..` component"));
    }
    Ok(())
}

/// A path inside the jail: absolute, normalised (no `.`, `..` or empty component), not `/`.
pub fn check_jail_path(field: &str, value: &str) -> Result<PathBuf, ArgsError> {
    let err = |reason| ArgsError::InvalidPath {
        flag: field.to_owned(),
        value: value.to_owned(),
        reason,
    };
    if value.contains('\0') {
        return Err(err("contains a NUL byte"));
    }
    let Some(rest) = value.strip_prefix('/') else {
        return Err(err("must be absolute (a path inside the jail)"));
    };
    if rest.is_empty() {
        return Err(err("cannot be the jail's root"));
    }
    for c in rest.split('/') {
        match c {
            "" => return Err(err("contains an empty component")),
            "." => return Err(err("contains a `.` component")),
            ".." => return Err(err("contains a `..` component")),
            _ => {}
        }
    }
    Ok(PathBuf::from(value))
}

/// A relative cgroup path: no absolute component, no `.`/`..`, no empty component, no NUL.
pub fn check_cgroup_path(value: &str) -> Result<PathBuf, ArgsError> {
    let err = |reason| ArgsError::InvalidPath {
        flag: "--parent-cgroup".to_owned(),
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(err("empty path"));
    }
    if value.contains('\0') {
        return Err(err("contains a NUL byte"));
    }
    if value.starts_with('/') {
        return Err(err("must be relative (it is nested under a cgroup root)"));
    }
    for c in value.split('/') {
        match c {
            "" => return Err(err("contains an empty component")),
            "." => return Err(err("contains a `.` component")),
            ".." => return Err(err("contains a `..` component")),
            c if c.starts_with("cgroup.") => {
                return Err(err("a component cannot start with `cgroup.`"))
            }
            _ => {}
        }
    }
    Ok(PathBuf::from(value))
}

/// `--cgroup FILE=VALUE`: FILE is `controller.key` in lower case (`cgroup.*` files, which
/// move processes or change the hierarchy, are refused); VALUE is one printable line.
pub fn parse_cgroup_setting(value: &str) -> Result<(String, String), ArgsError> {
    let err = |reason| ArgsError::InvalidCgroup {
        value: value.to_owned(),
        reason,
    };
    let (file, setting) = value
        .split_once('=')
        .ok_or_else(|| err("expected FILE=VALUE"))?;
    if file.contains('/') || file.contains("..") {
        return Err(err("the file name cannot contain `/` or `..`"));
    }
    let Some((controller, key)) = file.split_once('.') else {
        return Err(err("the file name must be <controller>.<key>"));
    };
    let controller_ok = !controller.is_empty()
        && controller
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    // Keys may hold upper case (`hugetlb.2MB.max`) and dots, but no empty part.
    let key_ok = !key.is_empty()
        && key.split('.').all(|part| {
            !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
    if !controller_ok || !key_ok {
        return Err(err(
            "the file name must be <controller>.<key>: letters, digits, `_` and `.`",
        ));
    }
    if controller == "cgroup" {
        return Err(err(
            "cgroup.* files are managed by the jailer and cannot be set",
        ));
    }
    if setting.is_empty() || setting.len() > 256 {
        return Err(err("the value must be 1 to 256 characters"));
    }
    if !setting.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(err("the value must be printable ASCII on one line"));
    }
    Ok((file.to_owned(), setting.to_owned()))
}

/// `--resource-limit RES=N`.
pub fn parse_rlimit(value: &str) -> Result<(Rlimit, u64), ArgsError> {
    let (name, number) = value
        .split_once('=')
        .ok_or_else(|| ArgsError::InvalidValue {
            flag: "resource-limit",
            value: value.to_owned(),
            reason: "expected RESOURCE=VALUE".into(),
        })?;
    let resource = Rlimit::from_flag_name(name).ok_or_else(|| ArgsError::UnknownResource {
        field: "--resource-limit".into(),
        value: value.to_owned(),
    })?;
    let n = number.parse::<u64>().map_err(|_| ArgsError::InvalidValue {
        flag: "resource-limit",
        value: value.to_owned(),
        reason: "the value is not a decimal number".into(),
    })?;
    Ok((resource, n))
}

/// A tap device name.
pub fn validate_tap(value: &str) -> Result<String, ArgsError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_TAP_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(value.to_owned())
    } else {
        Err(ArgsError::InvalidValue {
            flag: "tap",
            value: value.to_owned(),
            reason: format!(
                "an interface name is 1 to {MAX_TAP_LEN} characters, alphanumeric, '-' or '_'"
            ),
        })
    }
}

/// One egress entry; `field` names where it came from (`--egress-allow` or
/// `egress.allow[N]` in the profile).
pub fn egress_entry(
    field: &str,
    proto: &str,
    cidr: &str,
    ports: &[u16],
) -> Result<EgressAllow, ArgsError> {
    let err = |what: &str, value: &str, reason: String| ArgsError::InvalidEgress {
        field: format!("{field}{what}"),
        value: value.to_owned(),
        reason,
    };
    let proto = match proto {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        "icmp" => Proto::Icmp,
        "any" => Proto::Any,
        other => {
            return Err(err(
                ".proto",
                other,
                "expected tcp, udp, icmp or any".into(),
            ))
        }
    };
    let (addr_text, prefix_text) = cidr
        .split_once('/')
        .ok_or_else(|| err(".cidr", cidr, "expected ADDRESS/PREFIX".into()))?;
    let addr: IpAddr = addr_text
        .parse()
        .map_err(|_| err(".cidr", cidr, "not an IPv4 or IPv6 address".into()))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = prefix_text
        .parse()
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| err(".cidr", cidr, format!("the prefix must be 0 to {max}")))?;
    if !host_bits_clear(addr, prefix) {
        return Err(err(
            ".cidr",
            cidr,
            "host bits are set below the prefix".into(),
        ));
    }
    if !ports.is_empty() && !matches!(proto, Proto::Tcp | Proto::Udp) {
        return Err(err(
            ".ports",
            &format!("{ports:?}"),
            "ports only apply to tcp and udp".into(),
        ));
    }
    if ports.contains(&0) {
        return Err(err(".ports", "0", "port 0 is not a port".into()));
    }
    let mut ports = ports.to_vec();
    ports.sort_unstable();
    ports.dedup();
    Ok(EgressAllow {
        proto,
        addr,
        prefix,
        ports,
    })
}

fn host_bits_clear(addr: IpAddr, prefix: u8) -> bool {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            prefix >= 32 || bits.checked_shl(u32::from(prefix)).unwrap_or(0) == 0
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            prefix >= 128 || bits.checked_shl(u32::from(prefix)).unwrap_or(0) == 0
        }
    }
}

/// `--egress-allow PROTO,CIDR[,PORT...]`.
pub fn parse_egress_flag(value: &str) -> Result<EgressAllow, ArgsError> {
    let mut parts = value.split(',');
    let proto = parts.next().unwrap_or_default();
    let Some(cidr) = parts.next() else {
        return Err(ArgsError::InvalidEgress {
            field: "--egress-allow".into(),
            value: value.to_owned(),
            reason: "expected PROTO,CIDR[,PORT...]".into(),
        });
    };
    let mut ports = Vec::new();
    for p in parts {
        let port = p.parse::<u16>().map_err(|_| ArgsError::InvalidEgress {
            field: "--egress-allow".into(),
            value: value.to_owned(),
            reason: format!("{p:?} is not a port number"),
        })?;
        ports.push(port);
    }
    egress_entry("--egress-allow", proto, cidr, &ports)
}

fn exec_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name != "dev"
        && name != "run"
        && !name.ends_with(".pid")
        && !name.contains('\0')
}

// ---------------------------------------------------------------------------------------
// Sections.

fn network_config(raw: &Raw, id: &str, profile: &Profile) -> Result<Network, ArgsError> {
    let mode = match (raw.single("netns"), raw.switch("new-netns")) {
        (Some(path), true) => {
            return Err(ArgsError::Conflict {
                flag: "netns",
                value: path.to_owned(),
                other: "new-netns",
            })
        }
        (Some(path), false) => {
            check_host_path("--netns", path)?;
            NetnsMode::Join(PathBuf::from(path))
        }
        (None, true) => {
            // The namespace is named after the id, which is already a valid name.
            debug_assert!(validate_id(id).is_ok());
            NetnsMode::Create
        }
        (None, false) => NetnsMode::Inherit,
    };
    let mut taps = Vec::new();
    for t in raw.multi("tap") {
        let tap = validate_tap(t)?;
        if mode == NetnsMode::Inherit {
            return Err(ArgsError::TapWithoutNetns { value: tap });
        }
        if taps.contains(&tap) {
            return Err(ArgsError::InvalidValue {
                flag: "tap",
                value: tap,
                reason: "given twice".into(),
            });
        }
        taps.push(tap);
    }
    let firewall = match raw.single("firewall").unwrap_or("auto") {
        "auto" => mode == NetnsMode::Create,
        "on" => {
            if mode == NetnsMode::Inherit {
                return Err(ArgsError::FirewallWithoutNetns);
            }
            true
        }
        "off" => false,
        other => {
            return Err(ArgsError::InvalidValue {
                flag: "firewall",
                value: other.to_owned(),
                reason: "expected auto, on or off".into(),
            })
        }
    };
    let flags = raw.multi("egress-allow");
    let egress = if flags.is_empty() {
        profile
            .egress
            .allow
            .iter()
            .enumerate()
            .map(|(i, e)| egress_entry(&format!("egress.allow[{i}]"), &e.proto, &e.cidr, &e.ports))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        flags
            .iter()
            .map(|f| parse_egress_flag(f))
            .collect::<Result<Vec<_>, _>>()?
    };
    Ok(Network {
        mode,
        taps,
        firewall,
        egress,
    })
}

fn cgroup_config(raw: &Raw, profile: &Profile) -> Result<CgroupConfig, ArgsError> {
    let version = match raw.single("cgroup-version").unwrap_or("auto") {
        "1" => CgroupVersion::V1,
        "2" => CgroupVersion::V2,
        "auto" => CgroupVersion::Auto,
        other => {
            return Err(ArgsError::InvalidValue {
                flag: "cgroup-version",
                value: other.to_owned(),
                reason: "expected 1, 2 or auto".into(),
            })
        }
    };
    let parent = match raw.single("parent-cgroup") {
        Some(p) => check_cgroup_path(p)?,
        // Replaced by the exec file's name once it is known.
        None => PathBuf::new(),
    };
    let limits = &profile.cgroup;
    for (field, value) in [
        ("cgroup.cpuset_cpus", &limits.cpuset_cpus),
        ("cgroup.cpuset_mems", &limits.cpuset_mems),
    ] {
        if let Some(v) = value {
            let ok = !v.is_empty()
                && v.len() <= 256
                && v.bytes()
                    .all(|b| b.is_ascii_digit() || b == b',' || b == b'-');
            if !ok {
                return Err(ArgsError::InvalidPath {
                    flag: field.into(),
                    value: v.clone(),
                    reason: "expected a CPU/node list such as 0-3,6",
                });
            }
        }
    }
    for (field, value) in [
        ("cgroup.cpu_quota_us", limits.cpu_quota_us),
        ("cgroup.cpu_period_us", limits.cpu_period_us),
        ("cgroup.memory_bytes", limits.memory_bytes),
        ("cgroup.pids_max", limits.pids_max),
    ] {
        if value == Some(0) {
            return Err(ArgsError::InvalidPath {
                flag: field.into(),
                value: "0".into(),
                reason: "must be greater than 0",
            });
        }
    }
    if limits.cpu_period_us.is_some() && limits.cpu_quota_us.is_none() {
        return Err(ArgsError::InvalidPath {
            flag: "cgroup.cpu_period_us".into(),
            value: format!("{:?}", limits.cpu_period_us),
            reason: "needs cgroup.cpu_quota_us",
        });
    }
    let mut raw_settings: Vec<(String, String)> = Vec::new();
    for entry in raw.multi("cgroup") {
        let (file, value) = parse_cgroup_setting(entry)?;
        // A later flag for the same file replaces an earlier one.
        raw_settings.retain(|(f, _)| *f != file);
        raw_settings.push((file, value));
    }
    Ok(CgroupConfig {
        version,
        parent,
        relative: raw.switch("parent-cgroup-relative"),
        limits: limits.clone(),
        raw: raw_settings,
    })
}

fn rlimit_config(raw: &Raw, profile: &Profile) -> Result<BTreeMap<Rlimit, u64>, ArgsError> {
    let mut limits = BTreeMap::new();
    limits.insert(Rlimit::NoFile, DEFAULT_NO_FILE);
    // Core dumps of a VMM contain guest memory: off unless asked for.
    limits.insert(Rlimit::Core, 0);
    let p = &profile.rlimits;
    for (r, v) in [
        (Rlimit::NoFile, p.no_file),
        (Rlimit::Fsize, p.fsize),
        (Rlimit::Memlock, p.memlock),
        (Rlimit::Nproc, p.nproc),
        (Rlimit::Core, p.core),
    ] {
        if let Some(v) = v {
            limits.insert(r, v);
        }
    }
    for entry in raw.multi("resource-limit") {
        let (r, v) = parse_rlimit(entry)?;
        limits.insert(r, v);
    }
    Ok(limits)
}

fn landlock_config(profile: &Profile) -> Result<LandlockConfig, ArgsError> {
    let mut paths = Vec::new();
    for (i, p) in profile.landlock.paths.iter().enumerate() {
        let field = format!("landlock.paths[{i}].path");
        let path = check_jail_path(&field, &p.path)?;
        let writable = match p.access.as_str() {
            "ro" => false,
            "rw" => true,
            other => {
                return Err(ArgsError::InvalidPath {
                    flag: format!("landlock.paths[{i}].access"),
                    value: other.to_owned(),
                    reason: "expected ro or rw",
                })
            }
        };
        paths.push((path, writable));
    }
    for (field, ports) in [
        ("landlock.tcp_connect", &profile.landlock.tcp_connect),
        ("landlock.tcp_bind", &profile.landlock.tcp_bind),
    ] {
        if ports.contains(&0) {
            return Err(ArgsError::InvalidPath {
                flag: field.into(),
                value: "0".into(),
                reason: "port 0 is not a port",
            });
        }
    }
    Ok(LandlockConfig {
        paths,
        tcp_connect: profile.landlock.tcp_connect.clone(),
        tcp_bind: profile.landlock.tcp_bind.clone(),
    })
}

/// The jail's own top-level names, which binds and extra paths cannot replace.
fn reserved_top(exec_name: &str, top: &str) -> bool {
    top == "dev" || top == "run" || top == exec_name || top == format!("{exec_name}.pid")
}

fn first_component(p: &Path) -> String {
    p.components()
        .find_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .unwrap_or_default()
}

fn bind_config(raw: &Raw, exec_name: &str) -> Result<Vec<Bind>, ArgsError> {
    let mut binds: Vec<Bind> = Vec::new();
    let entries = raw
        .multi("bind-ro")
        .iter()
        .map(|e| ("bind-ro", false, e))
        .chain(raw.multi("bind-rw").iter().map(|e| ("bind-rw", true, e)));
    for (flag, writable, entry) in entries {
        let bad = |reason| ArgsError::InvalidPath {
            flag: format!("--{flag}"),
            value: entry.clone(),
            reason,
        };
        let (host, jail) = entry
            .rsplit_once(':')
            .ok_or_else(|| bad("expected HOST:JAIL"))?;
        // Errors show the whole entry.
        let whole = |e: ArgsError| match e {
            ArgsError::InvalidPath { reason, .. } => bad(reason),
            other => other,
        };
        check_host_path(&format!("--{flag}"), host).map_err(whole)?;
        let jail = check_jail_path(&format!("--{flag}"), jail).map_err(whole)?;
        if reserved_top(exec_name, &first_component(&jail)) {
            return Err(bad(
                "the jail path would replace the jail's own /dev, /run or VMM binary",
            ));
        }
        for other in &binds {
            if other.jail.starts_with(&jail) || jail.starts_with(&other.jail) {
                return Err(bad("the jail path overlaps another bind"));
            }
        }
        let host = std::fs::canonicalize(host).map_err(|e| ArgsError::Resolve {
            flag,
            path: PathBuf::from(host),
            source: IoErrorEq(e),
        })?;
        let meta = std::fs::metadata(&host).map_err(|e| ArgsError::Resolve {
            flag,
            path: host.clone(),
            source: IoErrorEq(e),
        })?;
        if !meta.is_file() && !meta.is_dir() {
            return Err(ArgsError::BindType { flag, path: host });
        }
        binds.push(Bind {
            host,
            jail,
            writable,
            is_dir: meta.is_dir(),
        });
    }
    Ok(binds)
}

fn check_landlock_paths(landlock: &LandlockConfig, binds: &[Bind]) -> Result<(), ArgsError> {
    for (i, (path, writable)) in landlock.paths.iter().enumerate() {
        let top = first_component(path);
        // Extra paths must be somewhere the jailer puts files: under a bind or /run.
        let under_bind = binds
            .iter()
            .any(|b| path.starts_with(&b.jail) && (b.writable || !writable));
        // (Binds never sit on the reserved names, so `under_bind` excludes them too.)
        if !(under_bind || top == "run") {
            return Err(ArgsError::InvalidPath {
                flag: format!("landlock.paths[{i}].path"),
                value: path.display().to_string(),
                reason: "must be under /run or under a bind of the same or wider access",
            });
        }
    }
    Ok(())
}

fn resolve_exec_file(exec: &str) -> Result<(PathBuf, String), ArgsError> {
    let given = PathBuf::from(exec);
    let meta = match std::fs::symlink_metadata(&given) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ArgsError::ExecFileMissing { path: given })
        }
        Err(e) => {
            return Err(ArgsError::Resolve {
                flag: "exec-file",
                path: given,
                source: IoErrorEq(e),
            })
        }
    };
    if meta.file_type().is_symlink() {
        return Err(ArgsError::ExecFileSymlink { path: given });
    }
    if !meta.is_file() {
        return Err(ArgsError::ExecFileNotFile { path: given });
    }
    let canonical = std::fs::canonicalize(&given).map_err(|e| ArgsError::Resolve {
        flag: "exec-file",
        path: given.clone(),
        source: IoErrorEq(e),
    })?;
    let name = canonical
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| exec_name_ok(n))
        .ok_or_else(|| ArgsError::ExecFileName {
            path: canonical.clone(),
            name: canonical
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        })?
        .to_owned();
    Ok((canonical, name))
}

fn resolve_chroot_base(value: Option<&str>) -> Result<PathBuf, ArgsError> {
    let base = PathBuf::from(value.unwrap_or(DEFAULT_CHROOT_BASE));
    let canonical = std::fs::canonicalize(&base).map_err(|e| ArgsError::Resolve {
        flag: "chroot-base-dir",
        path: base.clone(),
        source: IoErrorEq(e),
    })?;
    if !canonical.is_dir() {
        return Err(ArgsError::NotADirectory {
            flag: "chroot-base-dir",
            path: canonical,
        });
    }
    Ok(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    /// A valid command line, pointing at files that exist on any Linux host.
    fn base() -> Vec<&'static str> {
        vec![
            "--id",
            "vm-1",
            "--exec-file",
            "/proc/self/exe",
            "--uid",
            "1000",
            "--gid",
            "1000",
            "--chroot-base-dir",
            "/tmp",
        ]
    }

    fn parse_with(extra: &[&str]) -> Result<Config, ArgsError> {
        let mut list = base();
        list.extend_from_slice(extra);
        // /proc/self/exe is a symlink; use the test binary itself.
        let exe = std::env::current_exe().unwrap();
        let exe = exe.to_str().unwrap().to_owned();
        let mut v = args(&list);
        v[3] = OsString::from(exe);
        match parse(v)? {
            Command::Jail(c) => Ok(*c),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn diagnose_without_names_a_layer_and_is_for_debug_builds_only() {
        let c = parse_with(&["--diagnose-without", "landlock"]);
        if cfg!(debug_assertions) {
            let c = c.unwrap();
            assert_eq!(
                c.diagnose_without.into_iter().collect::<Vec<_>>(),
                vec![Layer::Landlock]
            );
            let c = parse_with(&[
                "--diagnose-without",
                "privileges",
                "--diagnose-without",
                "landlock",
            ])
            .unwrap();
            assert_eq!(c.diagnose_without.len(), 2);
            assert!(parse_with(&[]).unwrap().diagnose_without.is_empty());
            assert!(matches!(
                parse_with(&["--diagnose-without", "privileges", "--userns"]),
                Err(ArgsError::Conflict {
                    other: "userns",
                    ..
                })
            ));
        } else {
            assert_eq!(
                c,
                Err(ArgsError::DiagnoseRelease {
                    value: "landlock".into()
                })
            );
        }
        assert!(matches!(
            parse_with(&["--diagnose-without", "seccomp"]),
            Err(ArgsError::InvalidValue {
                flag: "diagnose-without",
                ..
            })
        ));
    }

    #[test]
    fn id_table() {
        for ok in ["a", "vm-1", "A0-b", &"x".repeat(64)] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a_b", "a.b", "a/b", "..", "é", "a b", &"x".repeat(65)] {
            assert_eq!(
                validate_id(bad),
                Err(ArgsError::InvalidId { value: bad.into() }),
                "{bad}"
            );
        }
    }

    #[test]
    fn host_path_table() {
        assert!(check_host_path("--x", "/a/b").is_ok());
        assert!(check_host_path("--x", "rel/b").is_ok());
        for bad in ["", "/a/../b", "..", "a/..", "a\0b"] {
            assert!(check_host_path("--x", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn jail_path_table() {
        assert_eq!(check_jail_path("f", "/a/b").unwrap(), PathBuf::from("/a/b"));
        for bad in ["a", "/", "/a/../b", "/a/./b", "/a//b", "/a/", "/a\0"] {
            assert!(check_jail_path("f", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cgroup_path_table() {
        assert!(check_cgroup_path("kiln/tenants").is_ok());
        for bad in [
            "",
            "/abs",
            "a/../b",
            "..",
            "a/./b",
            "a//b",
            "cgroup.procs",
            "a\0",
        ] {
            assert!(check_cgroup_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cgroup_setting_table() {
        assert_eq!(
            parse_cgroup_setting("pids.max=10").unwrap(),
            ("pids.max".into(), "10".into())
        );
        assert!(parse_cgroup_setting("cpu.max=50000 100000").is_ok());
        assert!(parse_cgroup_setting("memory.limit_in_bytes=1").is_ok());
        assert!(parse_cgroup_setting("hugetlb.2MB.max=0").is_ok());
        for bad in [
            "pids.max",
            "pids=1",
            "cgroup.procs=1",
            "../x.y=1",
            "a/b.c=1",
            "Pids.max=1",
            "pids..max=1",
            "pids.max=",
            "pids.max=1\n2",
            "release_agent=/x",
            "tasks=1",
        ] {
            assert!(parse_cgroup_setting(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rlimit_table() {
        assert_eq!(parse_rlimit("no-file=64").unwrap(), (Rlimit::NoFile, 64));
        assert_eq!(parse_rlimit("fsize=0").unwrap(), (Rlimit::Fsize, 0));
        assert!(matches!(
            parse_rlimit("nofile=1"),
            Err(ArgsError::UnknownResource { .. })
        ));
        assert!(parse_rlimit("fsize").is_err());
        assert!(parse_rlimit("fsize=-1").is_err());
    }

    #[test]
    fn egress_table() {
        let e = parse_egress_flag("tcp,10.0.0.0/8,443,80").unwrap();
        assert_eq!(e.proto, Proto::Tcp);
        assert_eq!(e.prefix, 8);
        assert_eq!(e.ports, vec![80, 443]);
        assert!(parse_egress_flag("any,fd00::/8").is_ok());
        assert!(parse_egress_flag("icmp,192.168.1.1/32").is_ok());
        for bad in [
            "tcp",
            "sctp,10.0.0.0/8",
            "tcp,10.0.0.1",
            "tcp,10.0.0.1/33",
            "tcp,10.0.0.1/8",
            "tcp,300.0.0.0/8",
            "icmp,10.0.0.0/8,80",
            "tcp,10.0.0.0/8,0",
            "tcp,10.0.0.0/8,http",
        ] {
            assert!(parse_egress_flag(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tap_table() {
        assert!(validate_tap("tap0").is_ok());
        for bad in ["", "tap0123456789abc", "tap/0", "tap 0"] {
            assert!(validate_tap(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn valid_command_line_and_defaults() {
        let c = parse_with(&["--", "--config-file", "/x.json"]).unwrap();
        assert_eq!(c.id, "vm-1");
        assert_eq!(c.uid, 1000);
        assert_eq!(c.cgroup.version, CgroupVersion::Auto);
        assert_eq!(c.cgroup.parent, PathBuf::from(&c.exec_name));
        assert_eq!(c.rlimits.get(&Rlimit::NoFile), Some(&DEFAULT_NO_FILE));
        assert_eq!(c.rlimits.get(&Rlimit::Core), Some(&0));
        assert_eq!(c.network.mode, NetnsMode::Inherit);
        assert!(!c.network.firewall);
        assert_eq!(c.vmm_args, args(&["--config-file", "/x.json"]));
        assert_eq!(
            c.chroot_dir(),
            PathBuf::from("/tmp").join(&c.exec_name).join("vm-1/root")
        );
    }

    #[test]
    fn flag_errors() {
        let cases: &[(&[&str], &str)] = &[
            (&["--bogus"], "unknown flag"),
            (&["--daemonize=yes"], "takes no value"),
            (&["--uid", "5"], "given twice"),
            (&["--tap", "tap0"], "needs --netns or --new-netns"),
            (&["--firewall", "on"], "--firewall on needs"),
            (&["--firewall", "maybe"], "expected auto, on or off"),
            (
                &["--netns", "/x", "--new-netns"],
                "conflicts with --new-netns",
            ),
            (&["--cgroup-version", "3"], "expected 1, 2 or auto"),
            (&["--parent-cgroup", "../up"], "`..`"),
            (&["--parent-cgroup", "/abs"], "must be relative"),
            (&["--cgroup", "cgroup.procs=1"], "cgroup.* files"),
            (&["--resource-limit", "stack=1"], "unknown resource"),
            (&["--bind-ro", "/tmp"], "expected HOST:JAIL"),
            (&["--bind-ro", "/tmp:rel"], "must be absolute"),
            (&["--bind-ro", "/tmp:/dev/x"], "jail's own /dev"),
            (
                &["--bind-ro", "/tmp:/a", "--bind-rw", "/tmp:/a/b"],
                "overlaps",
            ),
            (&["--bind-ro", "/nonexistent-kiln:/a"], "--bind-ro"),
            (&["stray"], "unexpected argument"),
        ];
        for (extra, want) in cases {
            let err = parse_with(extra).unwrap_err();
            assert!(err.to_string().contains(want), "{extra:?}: {err}");
        }
    }

    #[test]
    fn root_ids_are_refused() {
        let mut v = base();
        v[5] = "0";
        let err = parse(args(&v)).unwrap_err();
        assert_eq!(
            err,
            ArgsError::RootId {
                flag: "uid",
                value: 0
            }
        );
    }

    #[test]
    fn missing_flags_are_named() {
        let err = parse(args(&["--id", "a"])).unwrap_err();
        assert_eq!(err, ArgsError::MissingFlag { flag: "exec-file" });
        let err = parse(args(&["cleanup", "--exec-file", "/x"])).unwrap_err();
        assert_eq!(err, ArgsError::MissingFlag { flag: "id" });
    }

    #[test]
    fn cleanup_command() {
        match parse(args(&[
            "cleanup",
            "--id",
            "a-1",
            "--exec-file",
            "/usr/bin/vmm",
            "--chroot-base-dir",
            "/tmp",
        ]))
        .unwrap()
        {
            Command::Cleanup(c) => {
                assert_eq!(c.exec_name, "vmm");
                assert_eq!(c.jail_dir(), PathBuf::from("/tmp/vmm/a-1"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_default_tenant_profile_is_valid() {
        let p = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../policies/tenant/default.json"
        );
        let p = std::fs::canonicalize(p).unwrap();
        let c = parse_with(&["--profile", p.to_str().unwrap()]).unwrap();
        assert_eq!(c.cgroup.limits.pids_max, Some(64));
        assert_eq!(c.cgroup.limits.memory_bytes, Some(384 << 20));
        assert_eq!(c.rlimits.get(&Rlimit::NoFile), Some(&1024));
        assert_eq!(c.rlimits.get(&Rlimit::Core), Some(&0));
        assert!(c.network.egress.is_empty());
    }

    #[test]
    fn profile_merges_under_flags() {
        let dir = std::env::temp_dir().join(format!("kiln-args-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let profile = dir.join("p.json");
        std::fs::write(
            &profile,
            r#"{"cgroup": {"pids_max": 10}, "rlimits": {"no_file": 100, "fsize": 5},
                "egress": {"allow": [{"proto": "udp", "cidr": "10.1.0.0/16", "ports": [53]}]}}"#,
        )
        .unwrap();
        let p = profile.to_str().unwrap();
        let c = parse_with(&[
            "--profile",
            p,
            "--new-netns",
            "--resource-limit",
            "no-file=50",
        ])
        .unwrap();
        assert_eq!(c.cgroup.limits.pids_max, Some(10));
        assert_eq!(c.rlimits.get(&Rlimit::NoFile), Some(&50));
        assert_eq!(c.rlimits.get(&Rlimit::Fsize), Some(&5));
        assert_eq!(c.network.egress.len(), 1);
        assert!(c.network.firewall);
        let c = parse_with(&[
            "--profile",
            p,
            "--new-netns",
            "--egress-allow",
            "tcp,10.2.0.0/16,80",
        ])
        .unwrap();
        assert_eq!(c.network.egress.len(), 1);
        assert_eq!(c.network.egress[0].proto, Proto::Tcp);

        std::fs::write(
            &profile,
            r#"{"egress": {"allow": [{"proto": "tcp", "cidr": "10.0.0.1/8"}]}}"#,
        )
        .unwrap();
        let err = parse_with(&["--profile", p]).unwrap_err().to_string();
        assert!(
            err.contains("egress.allow[0].cidr") && err.contains("10.0.0.1/8"),
            "{err}"
        );
        std::fs::write(
            &profile,
            r#"{"landlock": {"paths": [{"path": "/x", "access": "ro"}]}}"#,
        )
        .unwrap();
        let err = parse_with(&["--profile", p]).unwrap_err().to_string();
        assert!(err.contains("landlock.paths[0].path"), "{err}");
        std::fs::write(&profile, r#"{"cgroup": {"pids_max": 0}}"#).unwrap();
        let err = parse_with(&["--profile", p]).unwrap_err().to_string();
        assert!(err.contains("cgroup.pids_max"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
