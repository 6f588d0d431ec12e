//! What a device with one queue (block, entropy, pmem, virtio-mem) holds while its driver has
//! it activated, and how it takes it from the transport's [`Activation`].

use super::{ActivateError, Activation, Interrupt};
use crate::metrics::Counter;
use std::sync::Arc;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

/// An activated one-queue device's state: guest memory, its queue, its interrupt, and
/// whether the queue broke (the device then ignores it until a reset).
pub struct SingleQueue {
    pub mem: GuestMemoryMmap,
    pub queue: Queue,
    pub interrupt: Arc<Interrupt>,
    pub broken: bool,
}

impl SingleQueue {
    /// Takes queue 0 of `activation`, which the driver must have made ready; a refusal is
    /// counted in `fails` (the device's `activate_fails`).
    pub fn activate(activation: Activation, fails: &Counter) -> Result<Self, ActivateError> {
        let Activation {
            mem,
            queues,
            interrupt,
            ..
        } = activation;
        let [queue] = Activation::take_queues(queues, &[0], fails)?;
        Ok(SingleQueue {
            mem,
            queue,
            interrupt,
            broken: false,
        })
    }
}
