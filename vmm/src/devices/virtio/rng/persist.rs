//! Snapshots of the virtio-rng device: its queue's position and its rate limiter's buckets.
//! The device has no configuration space and no state between requests beyond those: each
//! request is answered at once with fresh bytes from the host (a request the limiter held
//! back is still in the ring, and is answered after the restore). Its configuration (the
//! limiter's buckets) is in the snapshot's resources.
//!
//! The bytes a restored guest already has in its entropy pool are the snapshotted guest's,
//! the same in every VM restored from one snapshot; what the device gives after the
//! restore is new in each (docs/api.md, "Snapshots").

use super::super::QueuePosition;
use super::Entropy;
use crate::devices::rate_limiter::RateLimiter;

impl Entropy {
    pub(super) fn positions(&self) -> Vec<QueuePosition> {
        self.active
            .iter()
            .map(|a| QueuePosition::of(&a.queue))
            .collect()
    }

    pub(super) fn limiters(&mut self) -> Vec<&mut RateLimiter> {
        self.limiter.iter_mut().collect()
    }
}
