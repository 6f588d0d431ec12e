//! `vsock`: one virtio-vsock device, bridged to Unix sockets on the host.

use super::ResourceError;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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
        Ok(self)
    }
}
