//! What a device with one queue (block, entropy, pmem, virtio-mem) holds while its driver has
//! it activated, and how it takes it from the transport's [`Activation`]; and the one rate
//! limiter timer of block, entropy and pmem ([`LIMITER_TOKEN`], [`limiter_event`]).

use super::{ActivateError, Activation, EventCtx, Interrupt};
use crate::devices::rate_limiter::RateLimiter;
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

/// The event-loop token of a one-queue device's rate limiter timer.
pub const LIMITER_TOKEN: u64 = 1;

/// A one-queue device's `process_fd` for `token`: its limiter's timer fired (counted in
/// `fired`). Whether the device should now serve its queue: only when it is `active`. A
/// token that is not its limiter's, and the timer of an inactive device, are unwatched.
pub fn limiter_event(
    limiter: Option<&mut RateLimiter>,
    token: u64,
    active: bool,
    ctx: &mut EventCtx,
    fired: &Counter,
) -> bool {
    match limiter {
        Some(l) if token == LIMITER_TOKEN => {
            l.on_timer();
            fired.inc();
        }
        _ => {
            ctx.unwatch(token);
            return false;
        }
    }
    if !active {
        ctx.unwatch(token);
    }
    active
}
