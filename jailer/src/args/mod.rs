//! Command line: Firecracker's jailer flags plus Kiln's, tokenized by the shared `kiln-argv`
//! crate; this module keeps the typed conversion: the tenant profile merged under the flags,
//! and validation of every value before anything is created.
//!
//! Order of precedence: built-in defaults < `--profile` < flags. A list given by flags
//! (`--egress-allow`) replaces the profile's list; a keyed value (`--resource-limit no-file=N`,
//! `--cgroup pids.max=N`) replaces the profile's value for that key only.
//!
//! - [`flags`]: the flag tables, `--help`, defaults and bounds;
//! - [`config`]: what parsing produces ([`Command`], [`Config`], [`CleanupConfig`]);
//! - [`network`]: namespace, taps, firewall and egress allow-list;
//! - [`limits`]: cgroups and rlimits;
//! - [`paths`]: host and jail paths, the exec file, binds, Landlock paths;
//! - [`error`]: why a command line was refused ([`ArgsError`]).
//!
//! This file: the entry point ([`parse`]), the jail's identity (`--id`, `--uid`, `--gid`) and
//! the order in which the sections are converted.

mod config;
mod error;
mod flags;
mod limits;
mod network;
mod paths;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use kiln_argv::{Args, ArgvError};

use crate::profile::Profile;

pub use config::{CleanupConfig, Command, Config, Layer};
pub use error::{ArgsError, IoErrorEq, ProfileErrorEq};
pub use flags::{
    DEFAULT_CHROOT_BASE, DEFAULT_NO_FILE, DEFAULT_RUN_INODES, DEFAULT_RUN_SIZE, HELP, MAX_ID_LEN,
    MAX_TAP_LEN,
};
pub use limits::{
    check_cgroup_path, parse_cgroup_setting, parse_rlimit, CgroupConfig, CgroupVersion, Rlimit,
    RunLimits,
};
pub use network::{
    egress_entry, parse_egress_flag, parse_tap, validate_tap, EgressAllow, NetnsMode, Network,
    Proto, Tap,
};
pub use paths::{check_host_path, check_jail_path, Bind, LandlockConfig};

/// Parses the jailer's arguments (without the program name).
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, ArgsError> {
    let mut args = args.into_iter().peekable();
    if args.peek().is_some_and(|a| a == "cleanup") {
        args.next();
        let argv = kiln_argv::parse(&flags::CLEANUP, args)?;
        if argv.switch("help") {
            return Ok(Command::Help);
        }
        if let Some(extra) = argv.rest().first() {
            return Err(ArgvError::Positional(extra.to_string_lossy().into_owned()).into());
        }
        return Ok(Command::Cleanup(cleanup_config(&argv)?));
    }
    let argv = kiln_argv::parse(&flags::JAIL, args)?;
    if argv.switch("help") {
        return Ok(Command::Help);
    }
    if argv.switch("version") {
        return Ok(Command::Version);
    }
    Ok(Command::Jail(Box::new(jail_config(argv)?)))
}

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

/// `--uid`, `--gid`: a decimal id, neither root nor the invalid id.
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

fn cleanup_config(argv: &Args) -> Result<CleanupConfig, ArgsError> {
    let id = validate_id(argv.required("id")?)?;
    let exec = argv.required("exec-file")?;
    check_host_path("--exec-file", exec)?;
    // The name the jail was made with: that of the file a link resolves to (as when it was
    // made); the file itself need not exist any more.
    let exec_name = match std::fs::canonicalize(exec) {
        Ok(canonical) => paths::exec_name_of(&canonical)?,
        Err(_) => paths::exec_name_of(Path::new(exec))?,
    };
    let wait_ms = match argv.single("wait-ms") {
        None => flags::DEFAULT_CLEANUP_WAIT_MS,
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|ms| *ms <= flags::MAX_CLEANUP_WAIT_MS)
            .ok_or_else(|| ArgsError::InvalidValue {
                flag: "wait-ms",
                value: v.to_owned(),
                reason: format!(
                    "milliseconds, at most {} (an hour)",
                    flags::MAX_CLEANUP_WAIT_MS
                ),
            })?,
    };
    let chroot_base = paths::resolve_chroot_base(argv.single("chroot-base-dir"))?;
    Ok(CleanupConfig {
        id,
        exec_name,
        chroot_base,
        wait: std::time::Duration::from_millis(wait_ms),
    })
}

fn jail_config(mut argv: Args) -> Result<Config, ArgsError> {
    // Values that need no file system access first, so that a bad value is reported
    // before anything is looked up.
    let id = validate_id(argv.required("id")?)?;
    let exec = argv.required("exec-file")?.to_owned();
    check_host_path("--exec-file", &exec)?;
    let uid = parse_id_number("uid", argv.required("uid")?)?;
    let gid = parse_id_number("gid", argv.required("gid")?)?;
    // Checked without the file system; resolved with the other paths below.
    if let Some(base) = argv.single("chroot-base-dir") {
        check_host_path("--chroot-base-dir", base)?;
    }

    let profile = match argv.single("profile") {
        Some(p) => {
            check_host_path("--profile", p)?;
            Profile::load(Path::new(p)).map_err(|e| ArgsError::Profile(ProfileErrorEq(e)))?
        }
        None => Profile::default(),
    };

    let network = network::network_config(&argv, &profile)?;
    let cgroup = limits::cgroup_config(&argv, &profile)?;
    let rlimits = limits::rlimit_config(&argv, &profile)?;
    let run = limits::run_config(&profile)?;
    let landlock = paths::landlock_config(&profile)?;
    let diagnose_without = diagnose_config(&argv)?;
    let seccomp_policy = match argv.single("seccomp-policy") {
        Some(p) => {
            check_host_path("--seccomp-policy", p)?;
            Some(PathBuf::from(p))
        }
        None => None,
    };

    // Now the file system.
    let (exec_file, exec_name) = paths::resolve_exec_file(&exec)?;
    let chroot_base = paths::resolve_chroot_base(argv.single("chroot-base-dir"))?;
    let cgroup = CgroupConfig {
        parent: match argv.single("parent-cgroup") {
            Some(_) => cgroup.parent,
            None => PathBuf::from(&exec_name),
        },
        ..cgroup
    };
    let binds = paths::bind_config(&argv, &exec_name)?;
    paths::check_landlock_paths(&landlock, &binds)?;
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
        daemonize: argv.switch("daemonize"),
        new_pid_ns: argv.switch("new-pid-ns"),
        cleanup_on_exit: argv.switch("cleanup-on-exit"),
        cgroup,
        rlimits,
        run,
        binds,
        landlock,
        userfaultfd: argv.switch("userfaultfd"),
        seccomp_policy,
        userns: argv.switch("userns"),
        timing: argv.switch("timing"),
        diagnose_without,
        vmm_args: argv.take_rest(),
    })
}

/// `--diagnose-without LAYER`: debug builds only, and never with `--userns` (which needs
/// the identity change).
fn diagnose_config(argv: &Args) -> Result<BTreeSet<Layer>, ArgsError> {
    let mut layers = BTreeSet::new();
    for value in argv.multi("diagnose-without") {
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
        if layer == Layer::Privileges && argv.switch("userns") {
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

#[cfg(test)]
mod tests;
