//! Offering a frame to the receive queue: as many of the guest's buffers as it needs (one
//! without `MRG_RXBUF`), `num_buffers` set in its header.

use super::super::queue::{
    add_used, add_used_batch, pop_head, total_len, unpop, walk_chain, write_stream, Chain,
    QueueError,
};
use super::{Active, NUM_BUFFERS_OFFSET, VNET_HDR_LEN};
use crate::metrics::METRICS;
use virtio_queue::QueueT;

/// What became of a frame offered to the receive queue.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Delivery {
    Delivered,
    /// Not enough receive buffers yet: the frame waits.
    NoBuffers,
    /// The frame can never fit the guest's buffers: dropped.
    Dropped,
}

/// Offers `frame` (header included) to the receive queue.
pub(super) fn deliver(a: &mut Active, frame: &mut [u8]) -> Result<Delivery, QueueError> {
    let size = a.rx.size();
    let mut chains: Vec<Chain> = Vec::new();
    let mut capacity: u64 = 0;
    // Chains refused on the way were already returned: what was taken is no longer a
    // contiguous run of the available ring, so it cannot be put back.
    let mut refused = false;
    let needed = frame.len() as u64;
    while capacity < needed {
        if chains.len() >= usize::from(size) || (!a.mergeable && !chains.is_empty()) {
            // Even every buffer the ring can hold (or one, without MRG_RXBUF) is too small.
            let empty: Vec<(u16, u32)> = chains.iter().map(|c| (c.head, 0)).collect();
            add_used_batch(&mut a.rx, &a.mem, &empty)?;
            return Ok(Delivery::Dropped);
        }
        let Some(head) = pop_head(&mut a.rx, &a.mem)? else {
            if refused {
                let empty: Vec<(u16, u32)> = chains.iter().map(|c| (c.head, 0)).collect();
                add_used_batch(&mut a.rx, &a.mem, &empty)?;
            } else {
                unpop(&mut a.rx, u16::try_from(chains.len()).unwrap_or(u16::MAX));
            }
            return Ok(Delivery::NoBuffers);
        };
        match walk_chain(&a.rx, &a.mem, head) {
            Ok(chain) => {
                capacity += total_len(&chain.writable);
                chains.push(chain);
            }
            Err(e) => {
                METRICS.virtio.invalid_chains.inc();
                METRICS.net.rx_fails.inc();
                crate::log_debug!("receive chain {head} refused: {e}");
                add_used(&mut a.rx, &a.mem, head, 0)?;
                refused = true;
            }
        }
    }
    let count = u16::try_from(chains.len()).unwrap_or(u16::MAX);
    if let Some(nb) = frame.get_mut(NUM_BUFFERS_OFFSET..VNET_HDR_LEN) {
        nb.copy_from_slice(&count.to_le_bytes());
    }
    let mut entries = Vec::with_capacity(chains.len());
    let mut offset = 0usize;
    for chain in &chains {
        let part = frame.get(offset..).unwrap_or(&[]);
        let n = write_stream(&a.mem, &chain.writable, 0, part);
        offset += n;
        entries.push((chain.head, u32::try_from(n).unwrap_or(u32::MAX)));
    }
    add_used_batch(&mut a.rx, &a.mem, &entries)?;
    Ok(Delivery::Delivered)
}
