//! Snapshots of the balloon. Its configuration (target, `deflate_on_oom`, the polling
//! interval) is in the snapshot's resources; the queues' positions and the configuration
//! space go with the transport. Two things the device adds:
//!
//! - `actual` is the driver's, written into the configuration space: the restored device
//!   takes it from the saved configuration before the transport compares the rest;
//! - the stats buffer the device holds is saved as not yet taken (the stats queue's
//!   position one step back), so the restored device reads it again and keeps it, and the
//!   driver's statistics keep flowing (the guest's buffer is in the saved memory);
//! - the host's hinting id is in the configuration space too (taken like `actual`); the
//!   rest of the hinting state is the device's own saved state (`hinting.rs`), absent from
//!   snapshots of format v1.0 (nothing was going on then). The restored, started device
//!   then says DONE to the driver, as Firecracker's does.
//!
//! The memory file holds what the mapping read at inflated pages (zeros for anonymous
//! memory); the restored guest's driver still counts them as given, and may deflate them.

use super::super::QueuePosition;
use super::{Balloon, ACTUAL_OFFSET, HINT_CMD_OFFSET};

impl Balloon {
    pub(super) fn positions(&self) -> Vec<QueuePosition> {
        let Some(a) = &self.active else {
            return Vec::new();
        };
        let stats = a.layout.stats;
        a.queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let mut p = QueuePosition::of(q);
                if Some(i) == stats && self.held_stats.is_some() {
                    p.next_avail = p.next_avail.wrapping_sub(1);
                }
                p
            })
            .collect()
    }

    /// Takes `actual` and the host's hinting id from a saved configuration space (the rest
    /// is compared by the transport); the next activation is the restored device's.
    pub(super) fn take_saved_config(&mut self, saved: &[u8]) {
        self.restored = true;
        let u32_at = |at: usize| {
            saved
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        if let Some(actual) = usize::try_from(ACTUAL_OFFSET).ok().and_then(u32_at) {
            self.actual_pages = actual;
        }
        if let Some(id) = u32_at(HINT_CMD_OFFSET) {
            self.take_saved_hint_cmd(id);
        }
    }
}
