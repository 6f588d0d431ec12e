//! The bodies of `PUT /snapshot/create` and `PUT /snapshot/load`, in Firecracker's shape
//! (its spec's `SnapshotCreateParams` and `SnapshotLoadParams`), checked into what the
//! VMM carries out ([`SnapshotCreate`], [`SnapshotLoad`]).
//!
//! Nothing here opens a file: the state and memory files are opened when the snapshot is
//! made or loaded, on the VMM thread.

use super::spec::null_as_default;
use super::{check_id, HugePages, ResourceError, SerialConfig};
use serde::{Deserialize, Serialize};

/// `snapshot_type`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum SnapshotType {
    /// All of guest memory.
    #[default]
    Full,
    /// Only the pages written since the last snapshot (or since boot or load), written at
    /// their offsets into `mem_file_path`; needs `track_dirty_pages`.
    Diff,
}

/// `PUT /snapshot/create`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    #[serde(default, deserialize_with = "null_as_default")]
    pub snapshot_type: SnapshotType,
    pub snapshot_path: String,
    pub mem_file_path: String,
}

/// A checked `PUT /snapshot/create`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotCreate {
    pub snapshot_type: SnapshotType,
    pub snapshot_path: String,
    pub mem_file_path: String,
}

/// `mem_backend.backend_type`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum BackendType {
    /// `backend_path` is the memory file, mapped privately.
    File,
    /// `backend_path` is the Unix socket of a page-fault handler, which gets a userfaultfd.
    Uffd,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    pub backend_type: BackendType,
    pub backend_path: String,
}

/// `network_overrides[]`: the restored interface `iface_id` uses tap `host_dev_name`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    pub iface_id: String,
    pub host_dev_name: String,
}

/// `vsock_override`: the restored vsock device's host socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    pub uds_path: String,
}

/// `huge_pages` of a load: `Snapshot` (default) keeps the snapshot's setting.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum LoadHugePages {
    #[default]
    Snapshot,
    None,
    Transparent,
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// `PUT /snapshot/load`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    pub snapshot_path: String,
    /// Deprecated in Firecracker's API: a `File` backend. Exclusive with `mem_backend`.
    #[serde(default)]
    pub mem_file_path: Option<String>,
    #[serde(default)]
    pub mem_backend: Option<MemBackend>,
    /// Deprecated in Firecracker's API: `track_dirty_pages`.
    #[serde(default)]
    pub enable_diff_snapshots: Option<bool>,
    #[serde(default)]
    pub track_dirty_pages: Option<bool>,
    #[serde(default)]
    pub resume_vm: Option<bool>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub network_overrides: Vec<NetworkOverride>,
    #[serde(default)]
    pub vsock_override: Option<VsockOverride>,
    #[serde(default)]
    pub clock_realtime: Option<bool>,
    #[serde(default)]
    pub huge_pages: Option<LoadHugePages>,
}

/// A checked `PUT /snapshot/load`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotLoad {
    pub snapshot_path: String,
    pub backend: MemBackend,
    pub track_dirty_pages: bool,
    pub resume_vm: bool,
    pub network_overrides: Vec<NetworkOverride>,
    pub vsock_override: Option<VsockOverride>,
    pub clock_realtime: bool,
    pub huge_pages: LoadHugePages,
    /// Not in the body: the loading VMM's own `PUT /serial`, if it had one (the restored
    /// serial console writes there, as in Firecracker, and with its bucket if it has one).
    pub serial: Option<SerialConfig>,
}

fn path(field: &'static str, p: &str) -> Result<(), ResourceError> {
    if p.is_empty() || p.contains('\0') {
        return Err(ResourceError::BadPath {
            field,
            path: p.to_string(),
            reason: "empty or contains a NUL byte".into(),
        });
    }
    Ok(())
}

impl SnapshotCreateParams {
    pub fn validated(self) -> Result<SnapshotCreate, ResourceError> {
        path("snapshot_path", &self.snapshot_path)?;
        path("mem_file_path", &self.mem_file_path)?;
        if self.snapshot_path == self.mem_file_path {
            return Err(ResourceError::BadPath {
                field: "mem_file_path",
                path: self.mem_file_path,
                reason: "it is also the snapshot_path".into(),
            });
        }
        Ok(SnapshotCreate {
            snapshot_type: self.snapshot_type,
            snapshot_path: self.snapshot_path,
            mem_file_path: self.mem_file_path,
        })
    }
}

impl SnapshotLoadParams {
    pub fn validated(self) -> Result<SnapshotLoad, ResourceError> {
        path("snapshot_path", &self.snapshot_path)?;
        let backend = match (self.mem_file_path, self.mem_backend) {
            (Some(_), Some(_)) => {
                return Err(ResourceError::SnapshotLoad(
                    "mem_file_path and mem_backend are mutually exclusive: give one".into(),
                ))
            }
            (None, None) => {
                return Err(ResourceError::SnapshotLoad(
                    "the memory is missing: give mem_backend (or the deprecated mem_file_path)"
                        .into(),
                ))
            }
            (Some(p), None) => MemBackend {
                backend_type: BackendType::File,
                backend_path: p,
            },
            (None, Some(b)) => b,
        };
        path("mem_backend.backend_path", &backend.backend_path)?;
        let track_dirty_pages = match (self.enable_diff_snapshots, self.track_dirty_pages) {
            (Some(a), Some(b)) if a != b => {
                return Err(ResourceError::SnapshotLoad(
                    "enable_diff_snapshots (deprecated) and track_dirty_pages disagree".into(),
                ))
            }
            (a, b) => a.or(b).unwrap_or(false),
        };
        let huge_pages = self.huge_pages.unwrap_or_default();
        if huge_pages == LoadHugePages::Hugetlbfs2M {
            return Err(ResourceError::NotYet {
                section: "snapshot/load",
                feature: "restoring into hugetlbfs pages (huge_pages \"2M\")",
            });
        }
        // Each tap name is checked where the override is applied, as a configured
        // interface's is.
        for o in &self.network_overrides {
            check_id("network interface", &o.iface_id, None)?;
        }
        if let Some(v) = &self.vsock_override {
            path("vsock_override.uds_path", &v.uds_path)?;
        }
        Ok(SnapshotLoad {
            snapshot_path: self.snapshot_path,
            backend,
            track_dirty_pages,
            resume_vm: self.resume_vm.unwrap_or(false),
            network_overrides: self.network_overrides,
            vsock_override: self.vsock_override,
            clock_realtime: self.clock_realtime.unwrap_or(false),
            huge_pages,
            serial: None,
        })
    }
}

impl LoadHugePages {
    /// The huge pages of the restored memory, given the snapshot's.
    pub fn resolve(self, snapshot: HugePages) -> HugePages {
        match self {
            LoadHugePages::Snapshot => snapshot,
            LoadHugePages::None => HugePages::None,
            LoadHugePages::Transparent => HugePages::Transparent,
            LoadHugePages::Hugetlbfs2M => HugePages::Hugetlbfs2M,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::parse_json;

    #[test]
    fn firecracker_bodies() {
        let c: SnapshotCreateParams =
            parse_json(r#"{"snapshot_path": "s", "mem_file_path": "m"}"#).unwrap();
        assert_eq!(c.validated().unwrap().snapshot_type, SnapshotType::Full);
        let c: SnapshotCreateParams =
            parse_json(r#"{"snapshot_type": "Diff", "snapshot_path": "s", "mem_file_path": "m"}"#)
                .unwrap();
        assert_eq!(c.validated().unwrap().snapshot_type, SnapshotType::Diff);
        let l: SnapshotLoadParams = parse_json(
            r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "Uffd", "backend_path": "u.sock"},
                "track_dirty_pages": true, "resume_vm": true,
                "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap1"}],
                "vsock_override": {"uds_path": "/v.sock"}, "clock_realtime": false, "huge_pages": "None"}"#,
        )
        .unwrap();
        let l = l.validated().unwrap();
        assert_eq!(l.backend.backend_type, BackendType::Uffd);
        assert!(l.track_dirty_pages && l.resume_vm);
        let l: SnapshotLoadParams = parse_json(
            r#"{"snapshot_path": "s", "mem_file_path": "m", "enable_diff_snapshots": true}"#,
        )
        .unwrap();
        let l = l.validated().unwrap();
        assert_eq!(l.backend.backend_type, BackendType::File);
        assert!(l.track_dirty_pages && !l.resume_vm);
    }

    #[test]
    fn refusals_name_the_field() {
        let bad = |body: &str| -> String {
            match parse_json::<SnapshotLoadParams>(body) {
                Ok(p) => p.validated().unwrap_err().to_string(),
                Err(e) => e.to_string(),
            }
        };
        assert!(bad(r#"{"snapshot_path": "s"}"#).contains("mem_backend"));
        assert!(bad(r#"{"snapshot_path": "s", "mem_file_path": "m", "mem_backend": {"backend_type": "File", "backend_path": "m"}}"#).contains("mutually exclusive"));
        assert!(bad(r#"{"snapshot_path": "", "mem_file_path": "m"}"#).contains("snapshot_path"));
        assert!(
            bad(r#"{"snapshot_path": "s", "mem_file_path": "m", "huge_pages": "2M"}"#)
                .contains("hugetlbfs")
        );
        assert!(bad(r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "Disk", "backend_path": "m"}}"#).contains("unknown variant"));
        assert!(bad(r#"{"snapshot_path": "s", "mem_file_path": "m", "network_overrides": [{"iface_id": "e/1", "host_dev_name": "t"}]}"#).contains("network interface id"));
        assert!(
            bad(r#"{"snapshot_path": "s", "mem_file_path": "m", "bogus": 1}"#)
                .contains("unknown field `bogus`")
        );
        let c: SnapshotCreateParams =
            parse_json(r#"{"snapshot_path": "x", "mem_file_path": "x"}"#).unwrap();
        assert!(c
            .validated()
            .unwrap_err()
            .to_string()
            .contains("also the snapshot_path"));
    }
}
