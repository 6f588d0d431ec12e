//! How instances are jailed: the settings every instance of a worker shares.

use super::error::InstanceError;
use super::owner::Owner;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How instances are jailed, shared by all of them.
#[derive(Debug, Clone)]
pub struct InstanceConfig {
    pub jailer: PathBuf,
    pub vmm: PathBuf,
    pub chroot_base: PathBuf,
    /// `instances/<id>/`, `uids/<uid>.lock` and `workers/<tag>.lock` live here.
    pub state_dir: PathBuf,
    /// This worker, as its instance ids name it (its lock in `state_dir`).
    pub owner: Arc<Owner>,
    /// The tenant profile every instance starts from.
    pub profile_path: PathBuf,
    pub profile: serde_json::Value,
    /// Instances run as uid = gid in `[uid_base, uid_base + uid_count)`, one uid each.
    pub uid_base: u32,
    pub uid_count: u32,
    /// `--parent-cgroup` (nested under the worker's own cgroup).
    pub parent_cgroup: String,
    /// Added to the guest memory for the jail's memory limit (VMM, page tables).
    pub memory_overhead_mib: u32,
    pub start_timeout: Duration,
    /// The guest kernel (an ELF vmlinux) of Linux functions.
    pub kernel: PathBuf,
    /// How long a stopping VMM gets before SIGKILL.
    pub stop_grace: Duration,
    /// `vmm --strict-io`: unknown port/MMIO accesses stop the VM.
    pub strict_io: bool,
    /// Largest response (and log frame) accepted from a guest.
    pub max_response_bytes: u32,
    /// More VMM flags (`--vmm-arg`, for diagnosis: `--level=Debug`, ...).
    pub vmm_args: Vec<String>,
}

impl InstanceConfig {
    /// Reads and checks the tenant profile (a JSON object; the jailer validates the rest).
    pub fn load_profile(path: &Path) -> Result<serde_json::Value, InstanceError> {
        let bad = |message: String| InstanceError::Profile {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        if !v.is_object() {
            return Err(bad("not a JSON object".into()));
        }
        Ok(v)
    }

    /// The VMM's file name: the jailer's directory under the chroot base.
    pub(super) fn exec_name(&self) -> String {
        self.vmm
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "vmm".into())
    }
}
