//! Snapshots of the balloon. Its configuration (target, `deflate_on_oom`, the polling
//! interval) is in the snapshot's resources; the queues' positions and the configuration
//! space go with the transport. Two things the device adds:
//!
//! - `actual` is the driver's, written into the configuration space: the restored device
//!   takes it from the saved configuration before the transport compares the rest;
//! - the stats buffer the device holds is saved as not yet taken (the stats queue's
//!   position one step back), so the restored device reads it again and keeps it, and the
//!   driver's statistics keep flowing (the guest's buffer is in the saved memory).
//!
//! The memory file holds what the mapping read at inflated pages (zeros for anonymous
//! memory); the restored guest's driver still counts them as given, and may deflate them.

use super::super::QueuePosition;
use super::{Balloon, ACTUAL_OFFSET, STATS};

impl Balloon {
    pub(super) fn positions(&self) -> Vec<QueuePosition> {
        let Some(a) = &self.active else {
            return Vec::new();
        };
        a.queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let mut p = QueuePosition::of(q);
                if i == STATS && self.held_stats.is_some() {
                    p.next_avail = p.next_avail.wrapping_sub(1);
                }
                p
            })
            .collect()
    }

    /// Takes `actual` from a saved configuration space (the rest is compared by the
    /// transport).
    pub(super) fn take_saved_config(&mut self, saved: &[u8]) {
        let Ok(at) = usize::try_from(ACTUAL_OFFSET) else {
            return;
        };
        if let Some(b) = saved.get(at..at + 4) {
            let mut a = [0u8; 4];
            a.copy_from_slice(b);
            self.actual_pages = u32::from_le_bytes(a);
        }
    }
}
