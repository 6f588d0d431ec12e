//! Resource limits: the jail's cgroups (`--cgroup`, `--cgroup-version`, `--parent-cgroup`,
//! `--parent-cgroup-relative`, the profile's `cgroup` section), its rlimits
//! (`--resource-limit`, the profile's `rlimits` section) and the size of its `/run` (the
//! profile's `run` section).

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_argv::Args;

use super::error::ArgsError;
use super::flags::{DEFAULT_NO_FILE, DEFAULT_RUN_INODES, DEFAULT_RUN_SIZE};
use super::paths::{check_components, check_host_path};
use crate::profile::{CgroupLimits, Profile};

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

/// The jail's `/run` tmpfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLimits {
    /// tmpfs `size=`, in bytes.
    pub size_bytes: u64,
    /// tmpfs `nr_inodes=`.
    pub inodes: u64,
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

/// A relative cgroup path: a host path ([`check_host_path`]) that is relative, normalised
/// ([`check_components`]) and has no component naming a `cgroup.*` control file.
pub fn check_cgroup_path(value: &str) -> Result<PathBuf, ArgsError> {
    const FLAG: &str = "--parent-cgroup";
    check_host_path(FLAG, value)?;
    let err = |reason| ArgsError::InvalidPath {
        flag: FLAG.to_owned(),
        value: value.to_owned(),
        reason,
    };
    if value.starts_with('/') {
        return Err(err("must be relative (it is nested under a cgroup root)"));
    }
    check_components(value).map_err(err)?;
    if value.split('/').any(|c| c.starts_with("cgroup.")) {
        return Err(err("a component cannot start with `cgroup.`"));
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

/// The cgroup flags over the profile's `cgroup` section. Without `--parent-cgroup`, `parent`
/// is left empty for the caller to fill in with the exec file's name.
pub(super) fn cgroup_config(argv: &Args, profile: &Profile) -> Result<CgroupConfig, ArgsError> {
    let version = match argv.single("cgroup-version").unwrap_or("auto") {
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
    let parent = match argv.single("parent-cgroup") {
        Some(p) => check_cgroup_path(p)?,
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
    for entry in argv.multi("cgroup") {
        let (file, value) = parse_cgroup_setting(entry)?;
        // A later flag for the same file replaces an earlier one.
        raw_settings.retain(|(f, _)| *f != file);
        raw_settings.push((file, value));
    }
    Ok(CgroupConfig {
        version,
        parent,
        relative: argv.switch("parent-cgroup-relative"),
        limits: limits.clone(),
        raw: raw_settings,
    })
}

/// Defaults (`no-file` = [`DEFAULT_NO_FILE`], `core` = 0) < the profile's `rlimits` <
/// `--resource-limit`, per resource.
pub(super) fn rlimit_config(
    argv: &Args,
    profile: &Profile,
) -> Result<BTreeMap<Rlimit, u64>, ArgsError> {
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
    for entry in argv.multi("resource-limit") {
        let (r, v) = parse_rlimit(entry)?;
        limits.insert(r, v);
    }
    Ok(limits)
}

/// The profile's `run` section over the defaults ([`DEFAULT_RUN_SIZE`],
/// [`DEFAULT_RUN_INODES`]). 0 would mean "unlimited" to tmpfs, so it is refused.
pub(super) fn run_config(profile: &Profile) -> Result<RunLimits, ArgsError> {
    let run = &profile.run;
    for (field, value) in [
        ("run.size_bytes", run.size_bytes),
        ("run.inodes", run.inodes),
    ] {
        if value == Some(0) {
            return Err(ArgsError::InvalidPath {
                flag: field.into(),
                value: "0".into(),
                reason: "must be greater than 0 (a tmpfs without a limit is what it bounds)",
            });
        }
    }
    Ok(RunLimits {
        size_bytes: run.size_bytes.unwrap_or(DEFAULT_RUN_SIZE),
        inodes: run.inodes.unwrap_or(DEFAULT_RUN_INODES),
    })
}
