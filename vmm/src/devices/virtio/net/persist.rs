//! Snapshots of a virtio-net device: the positions of its receive and transmit queues, and
//! the buckets of its receive and transmit limiters. The interface (its MAC, MTU and the
//! limiters' configuration) comes from the snapshot's resources, its tap from them or from
//! `network_overrides`. A frame read from the tap and not yet delivered is not saved: on
//! the restored VM it is a lost packet, as it would be on a real network (so are the
//! tokens it took, if the receive limiter had let it through).

use super::super::QueuePosition;
use super::Net;
use crate::devices::rate_limiter::RateLimiter;

impl Net {
    pub(super) fn positions(&self) -> Vec<QueuePosition> {
        self.active
            .iter()
            .flat_map(|a| [QueuePosition::of(&a.rx), QueuePosition::of(&a.tx)])
            .collect()
    }

    /// The receive limiter, then the transmit one.
    pub(super) fn rx_tx_limiters(&mut self) -> Vec<&mut RateLimiter> {
        self.limiters
            .iter_mut()
            .flat_map(|l| [&mut l.rx, &mut l.tx])
            .collect()
    }
}
