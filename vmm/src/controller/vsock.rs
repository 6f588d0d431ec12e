//! `PUT /vsock` as Firecracker does it: the device, with the host socket it listens on
//! (`uds_path`), is made at the request, and `InstanceStart` attaches that device. So the
//! socket exists from the answer on, and its `bind` is off `InstanceStart`'s path (the blank
//! pool's cold start, docs/benchmarks.md). A later `PUT /vsock` before the start replaces it:
//! the earlier device's socket file goes first (the new one may want the same path).

use super::{Controller, ControllerError};
use crate::api::VmmData;
use crate::devices::virtio::vsock::Vsock;
use crate::resources::VsockConfig;
use std::os::unix::fs::FileTypeExt;
use std::sync::{Arc, Mutex};

/// The vsock device `PUT /vsock` made, shared with the build that attaches it.
pub type MadeVsock = Arc<Mutex<Vsock>>;

impl Controller {
    pub(super) fn put_vsock(&mut self, cfg: VsockConfig) -> Result<VmmData, ControllerError> {
        if let Some(earlier) = self.vsock.take() {
            remove_socket(earlier)?;
        }
        // Validated as the config file's is (a file at `uds_path` is refused, never replaced).
        let previous = self.resources.vsock.clone();
        self.resources.set_vsock(cfg)?;
        match self.resources.vsock.as_ref().map(Vsock::new).transpose() {
            Ok(made) => {
                self.vsock = made.map(|v| Arc::new(Mutex::new(v)));
                Ok(VmmData::Empty)
            }
            Err(e) => {
                self.resources.vsock = previous;
                Err(ControllerError::Vsock(e))
            }
        }
    }

    /// The vsock device `PUT /vsock` made, for `InstanceStart` to attach.
    pub fn made_vsock(&self) -> Option<MadeVsock> {
        self.vsock.clone()
    }
}

/// Drops a device made by an earlier `PUT /vsock` and removes its socket file, if a socket
/// is still there (anything else someone put in its place is left alone).
fn remove_socket(device: MadeVsock) -> Result<(), ControllerError> {
    let path = match device.lock() {
        Ok(v) => v.uds_path().to_string(),
        Err(poisoned) => poisoned.into_inner().uds_path().to_string(),
    };
    drop(device);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(&path)
            .map_err(|source| ControllerError::VsockSocket { path, source }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ControllerError::VsockSocket { path, source }),
    }
}
