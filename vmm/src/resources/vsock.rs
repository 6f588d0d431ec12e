//! `vsock`: one virtio-vsock device, bridged to Unix sockets on the host.
//!
//! The host socket is bound at `InstanceStart`; when the configuration is accepted its path
//! is checked for what binding needs (an existing directory, no file at the path), so that
//! a `PUT /vsock` that could not work is refused at once.

use super::ResourceError;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Deprecated in Firecracker's API; accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    pub guest_cid: u32,
    /// The host-side Unix socket; guest-initiated connections to port P go to `<uds_path>_P`.
    pub uds_path: String,
}

impl VsockConfig {
    pub(super) fn validated(self) -> Result<Self, ResourceError> {
        if self.guest_cid < 3 {
            return Err(ResourceError::BadCid(self.guest_cid));
        }
        if self.uds_path.is_empty() || self.uds_path.contains('\0') {
            return Err(ResourceError::BadPath {
                field: "vsock.uds_path",
                path: self.uds_path.clone(),
                reason: "empty or contains a NUL byte".into(),
            });
        }
        // sun_path holds 108 bytes including the NUL, and `_<port>` is appended for
        // guest-initiated connections.
        if self.uds_path.len() > 96 {
            return Err(ResourceError::BadPath {
                field: "vsock.uds_path",
                path: self.uds_path.clone(),
                reason:
                    "longer than 96 bytes (a Unix socket path holds 107, and `_<port>` is appended)"
                        .into(),
            });
        }
        check_socket_path(&self.uds_path)?;
        Ok(self)
    }
}

/// Checks, when the configuration is accepted, what binding `uds_path` at `InstanceStart`
/// needs: its directory exists and nothing is at the path (the VMM never replaces a file).
fn check_socket_path(uds_path: &str) -> Result<(), ResourceError> {
    let bad = |reason: String| ResourceError::BadPath {
        field: "vsock.uds_path",
        path: uds_path.to_string(),
        reason,
    };
    let path = Path::new(uds_path);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(bad(format!("{} is not a directory", dir.display()))),
        Err(e) => {
            return Err(bad(format!(
                "the host socket cannot be bound there: directory {}: {e}",
                dir.display()
            )))
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(_) => Err(bad(
            "a file already exists there; remove it first (the VMM never replaces a file)".into(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(bad(e.to_string())),
    }
}
