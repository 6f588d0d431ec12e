//! virtio-rng (`entropy`, `PUT /entropy`): random bytes from the host's kernel for the
//! guest's entropy pool.
//!
//! One queue of [`QUEUE_SIZE`]; only `VERSION_1` is offered; no configuration space. The
//! driver posts device-writable buffers; the device fills each chain with up to
//! [`MAX_REQUEST_BYTES`] bytes from `getrandom(2)` (non-blocking: the host's pool is never
//! waited for) and returns it with the length written. A chain with a device-readable
//! buffer is not a request: it is returned with length 0 and counted
//! (`entropy.entropy_event_fails`), as a malformed chain (`virtio.invalid_chains`) or a
//! failure of the host's source (`entropy.host_rng_fails`) is; a broken available ring sets
//! `DEVICE_NEEDS_RESET`.
//!
//! Rate limiting (`rate_limiter`): each request takes one op and its bytes; one that does
//! not fit stays in the ring until the limiter's timer fires. Work per event is bounded:
//! [`REQUESTS_PER_EVENT`] requests or [`BYTES_PER_EVENT`] bytes, then the queue waits for
//! its next turn.
//!
//! Snapshots save the queue's position and the limiter's buckets (`persist.rs`).

use super::queue::{self, add_used, pop_head, total_len, unpop, walk_chain, write_stream};
use super::single_queue::{limiter_event, SingleQueue, LIMITER_TOKEN};
use super::{
    queue_broken, ActivateError, Activation, EventCtx, LogBudget, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::devices::rate_limiter::RateLimiter;
use crate::metrics::METRICS;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::QueueT;
use vmm_sys_util::epoll::EventSet;

mod persist;

pub const QUEUE_SIZE: u16 = 256;
/// Largest answer to one request (Firecracker's).
pub const MAX_REQUEST_BYTES: usize = 64 << 10;
pub const REQUESTS_PER_EVENT: usize = 64;
pub const BYTES_PER_EVENT: u64 = 1 << 20;
/// The device's id (logs), Firecracker's.
pub const ID: &str = "rng";

/// The host's random bytes (also used by MMDS's session tokens, hence its own module).
pub use crate::random::fill_random;

pub struct Entropy {
    active: Option<SingleQueue>,
    /// `None`: nothing is limited (unit tests, the fuzz target).
    limiter: Option<RateLimiter>,
    /// The random bytes of one request, before they go into guest memory.
    scratch: Vec<u8>,
    warnings: LogBudget,
}

impl Default for Entropy {
    fn default() -> Self {
        Self::new()
    }
}

impl Entropy {
    pub fn new() -> Entropy {
        Entropy {
            active: None,
            limiter: None,
            scratch: vec![0; MAX_REQUEST_BYTES],
            warnings: LogBudget::new(),
        }
    }

    pub fn with_rate_limiter(mut self, limiter: RateLimiter) -> Entropy {
        self.limiter = Some(limiter);
        self
    }

    /// Serves up to the per-event limits.
    fn process(&mut self, ctx: &mut EventCtx) {
        let Entropy {
            active,
            limiter,
            scratch,
            warnings,
        } = self;
        let Some(a) = active.as_mut().filter(|a| !a.broken) else {
            return;
        };
        let (mut served, mut bytes, mut used) = (0usize, 0u64, false);
        loop {
            if limiter.as_ref().is_some_and(RateLimiter::is_blocked) {
                break;
            }
            if served >= REQUESTS_PER_EVENT || bytes >= BYTES_PER_EVENT {
                if queue::has_available(&a.queue, &a.mem) {
                    ctx.again();
                }
                break;
            }
            let head = match pop_head(&mut a.queue, &a.mem) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    a.broken = true;
                    queue_broken(&"the entropy device", warnings, &a.interrupt, &e);
                    break;
                }
            };
            let len = match walk_chain(&a.queue, &a.mem, head) {
                Ok(chain) if !chain.readable.is_empty() => {
                    METRICS.entropy.entropy_event_fails.inc();
                    0
                }
                Ok(chain) => {
                    // At most MAX_REQUEST_BYTES: fits usize and u32.
                    let want = usize::try_from(total_len(&chain.writable))
                        .unwrap_or(usize::MAX)
                        .min(MAX_REQUEST_BYTES);
                    if let Some(l) = limiter.as_mut() {
                        if !l.consume(want as u64) {
                            // Not now: the request stays in the ring until the timer.
                            unpop(&mut a.queue, 1);
                            METRICS.entropy.entropy_rate_limiter_throttled.inc();
                            break;
                        }
                    }
                    METRICS.entropy.entropy_event_count.inc();
                    let buf = scratch.get_mut(..want).unwrap_or_default();
                    match fill_random(buf) {
                        Ok(()) => {
                            let n = write_stream(&a.mem, &chain.writable, 0, buf);
                            METRICS.entropy.entropy_bytes.add(n as u64);
                            bytes += n as u64;
                            n
                        }
                        Err(e) => {
                            METRICS.entropy.host_rng_fails.inc();
                            METRICS.entropy.entropy_event_fails.inc();
                            if warnings.take() {
                                crate::log_warn!("entropy: the host's random source failed: {e}");
                            }
                            0
                        }
                    }
                }
                Err(e) => {
                    METRICS.virtio.invalid_chains.inc();
                    METRICS.entropy.entropy_event_fails.inc();
                    crate::log_debug!("entropy: descriptor chain {head} refused: {e}");
                    0
                }
            };
            if let Err(e) = add_used(&mut a.queue, &a.mem, head, u32::try_from(len).unwrap_or(0)) {
                METRICS.entropy.entropy_event_fails.inc();
                a.broken = true;
                queue_broken(&"the entropy device", warnings, &a.interrupt, &e);
                break;
            }
            used = true;
            served += 1;
        }
        if used && a.queue.needs_notification(&a.mem).unwrap_or(true) {
            a.interrupt.signal_used_queue(0);
        }
        if let Some(l) = limiter.as_ref().filter(|l| l.is_blocked()) {
            ctx.watch(LIMITER_TOKEN, l.timer_fd());
        }
    }
}

impl VirtioDevice for Entropy {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn id(&self) -> &str {
        ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.active = Some(SingleQueue::activate(
            activation,
            &METRICS.entropy.activate_fails,
        )?);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn queue_positions(&self) -> Option<Vec<super::QueuePosition>> {
        Some(self.positions())
    }

    fn rate_limiters_mut(&mut self) -> Vec<&mut RateLimiter> {
        self.limiters()
    }

    fn process_queue(&mut self, _index: usize, ctx: &mut EventCtx) {
        self.process(ctx);
    }

    fn process_fd(&mut self, token: u64, _events: EventSet, ctx: &mut EventCtx) {
        let active = self.active.is_some();
        let fired = &METRICS.entropy.rate_limiter_event_count;
        if limiter_event(self.limiter.as_mut(), token, active, ctx, fired) {
            self.process(ctx);
        }
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests;
