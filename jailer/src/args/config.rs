//! What a parsed command line asks for: a jail ([`Config`], every value validated), a
//! cleanup ([`CleanupConfig`]), help or the version.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::limits::{CgroupConfig, Rlimit, RunLimits};
use super::network::Network;
use super::paths::{Bind, LandlockConfig};

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
    /// How long to wait for the jail's processes to exit (`--wait-ms`).
    pub wait: Duration,
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
    /// The jail's `/run` tmpfs.
    pub run: RunLimits,
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
