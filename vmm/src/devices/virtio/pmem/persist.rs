//! Snapshots of a virtio-pmem device: its queue's position and its rate limiter's buckets.
//! The device keeps no state between requests (each flush is answered at once). What the
//! guest wrote into the window is in the backing file itself, not in the snapshot: a
//! restore maps the same file again (its path is in the snapshot's configuration, as in
//! Firecracker), at the same guest address, and the transport's comparison of the
//! configuration space (`start`, `size`) refuses a file whose size changed.

use super::super::QueuePosition;
use super::Pmem;

impl Pmem {
    pub(super) fn positions(&self) -> Vec<QueuePosition> {
        self.active
            .iter()
            .map(|a| QueuePosition::of(&a.queue))
            .collect()
    }
}
