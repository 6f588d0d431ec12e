//! Snapshots of a virtio-blk device: its queue's position. Everything else the guest sees
//! is the transport's (saved there) or the drive's configuration, saved with the snapshot's
//! resources: the restored device reopens the drive at the same path, and the transport
//! refuses it if its capacity differs. Requests are served synchronously, so none is in
//! flight while the VM is paused.

use super::super::QueuePosition;
use super::Block;

impl Block {
    pub(super) fn positions(&self) -> Vec<QueuePosition> {
        self.active
            .iter()
            .map(|a| QueuePosition::of(&a.queue))
            .collect()
    }
}
