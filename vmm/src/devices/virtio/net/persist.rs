//! Snapshots of a virtio-net device: the positions of its receive and transmit queues.
//! The interface (its MAC) comes from the snapshot's resources, its tap from them or from
//! `network_overrides`. A frame read from the tap and not yet delivered is not saved: on
//! the restored VM it is a lost packet, as it would be on a real network.

use super::super::QueuePosition;
use super::Net;

impl Net {
    pub(super) fn positions(&self) -> Vec<QueuePosition> {
        self.active
            .iter()
            .flat_map(|a| [QueuePosition::of(&a.rx), QueuePosition::of(&a.tx)])
            .collect()
    }
}
