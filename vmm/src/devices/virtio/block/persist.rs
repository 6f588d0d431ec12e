//! Snapshots of a virtio-blk device: its queue's position and its rate limiter's buckets.
//! Everything else the guest sees is the transport's (saved there) or the drive's
//! configuration, saved with the snapshot's resources (the limiter's configuration too,
//! as `PATCH` left it): the restored device reopens the drive at the same path, and the
//! transport refuses it if its capacity differs. Requests are served synchronously, so none
//! is in flight while the VM is paused; one the limiter held back is still in the ring.

use super::super::QueuePosition;
use super::Block;
use crate::devices::rate_limiter::RateLimiter;

impl Block {
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
