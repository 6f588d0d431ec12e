//! Snapshots of the vsock device: the positions of its three queues, and the transport
//! reset a restored device sends.
//!
//! The host side of a connection (a Unix socket of the VMM that took the snapshot) cannot
//! move to the new VMM, so a restored guest must forget its connections: as Firecracker
//! does, the device puts a `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` event in the guest's event
//! queue once it is restored, and the driver resets every connection (its listening
//! sockets stay, and accept new connections). Firecracker sends the event when it takes
//! the snapshot, so its source VM loses its connections too; Kiln sends it to the restored
//! VM only.

use super::super::queue::{add_used, pop_head, walk_chain, write_stream};
use super::super::QueuePosition;
use super::Vsock;
use crate::metrics::METRICS;

/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`.
const EVENT_TRANSPORT_RESET: u32 = 0;

impl Vsock {
    pub(super) fn positions(&self) -> Vec<QueuePosition> {
        self.active
            .iter()
            .flat_map(|a| {
                [
                    QueuePosition::of(&a.rx),
                    QueuePosition::of(&a.tx),
                    QueuePosition::of(&a.event),
                ]
            })
            .collect()
    }

    /// Tells the restored guest that its connections are gone: one transport reset event
    /// in the event queue, with an interrupt. False when the device is not started or the
    /// driver left no event buffer (then its connections fail at their next packet).
    pub fn send_transport_reset(&mut self) -> bool {
        self.muxer.reset();
        let Some(a) = self.active.as_mut().filter(|a| !a.broken) else {
            return false;
        };
        let head = match pop_head(&mut a.event, &a.mem) {
            Ok(Some(h)) => h,
            Ok(None) | Err(_) => {
                crate::log_warn!(
                    "vsock: no event buffer for the transport reset of the restore; the guest's old connections are not told"
                );
                return false;
            }
        };
        let event = EVENT_TRANSPORT_RESET.to_le_bytes();
        let written = match walk_chain(&a.event, &a.mem, head) {
            Ok(chain) if chain.readable.is_empty() => {
                write_stream(&a.mem, &chain.writable, 0, &event)
            }
            _ => {
                METRICS.vsock.malformed_packets.inc();
                0
            }
        };
        let used = u32::try_from(written).unwrap_or(0);
        if add_used(&mut a.event, &a.mem, head, used).is_err() {
            return false;
        }
        a.interrupt.signal_used_queue(super::EVENT_QUEUE);
        written == event.len()
    }
}
