//! Asynchronous invocations (`X-Amz-Invocation-Type: Event`): the Invoke API answers `202`
//! once the event is queued, and a few dispatcher threads run the queue through the pools.
//!
//! - The queue is bounded (`--max-async-events` events, and [`MAX_QUEUED_BYTES`] of them); a
//!   full queue refuses the event with 429.
//! - An event that meets the function's concurrency limit (or a worker out of uids) is
//!   retried after a pause that doubles from 100 ms to 5 s, for at most [`MAX_RETRY_AGE`]
//!   since it was queued; then it is dropped. Lambda retries throttled events for up to 6
//!   hours; a single worker keeps them for a minute.
//! - A function error is not retried (Lambda retries twice by default). Every outcome is one
//!   line on the worker's stderr, with the request id and the function's log.
//! - At shutdown, queued events are dropped (and counted on stderr).

use crate::context::InvocationContext;
use crate::instance::InstanceError;
use crate::pool::{PoolError, Pools};
use crate::sync::{lock, wait_timeout};
use crate::timing::ms;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a throttled event keeps being retried.
pub const MAX_RETRY_AGE: Duration = Duration::from_secs(60);
/// Dispatcher threads: at most this many events run at once.
pub const DISPATCHERS: usize = 4;
/// Most bytes of events waiting at once.
pub const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LONGEST_PAUSE: Duration = Duration::from_secs(5);

/// The queue refused an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the worker's queue of asynchronous invocations is full ({events} events of {bytes} bytes waiting; at most {max} events (--max-async-events) of {MAX_QUEUED_BYTES} bytes)")]
pub struct QueueFull {
    pub events: usize,
    pub bytes: usize,
    pub max: usize,
}

struct Queued {
    function: String,
    event: Vec<u8>,
    ctx: InvocationContext,
    queued: Instant,
    not_before: Instant,
    pause: Duration,
}

struct Inner {
    queue: Mutex<VecDeque<Queued>>,
    ready: Condvar,
    max: usize,
    pools: Arc<Pools>,
}

/// The queue and its dispatchers.
pub struct Events {
    inner: Arc<Inner>,
}

impl Events {
    /// A queue of at most `max` events, and its dispatcher threads (which end when the pools
    /// shut down).
    pub fn start(pools: Arc<Pools>, max: usize) -> std::io::Result<Events> {
        let inner = Arc::new(Inner {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            max,
            pools,
        });
        for n in 0..DISPATCHERS {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name(format!("kiln-events-{n}"))
                .spawn(move || dispatch(&inner))?;
        }
        Ok(Events { inner })
    }

    /// Queues an invocation of `function`.
    pub fn push(
        &self,
        function: &str,
        event: Vec<u8>,
        ctx: InvocationContext,
    ) -> Result<(), QueueFull> {
        let mut q = lock(&self.inner.queue);
        let bytes: usize = q.iter().map(|e| e.event.len()).sum();
        if q.len() >= self.inner.max || bytes + event.len() > MAX_QUEUED_BYTES {
            return Err(QueueFull {
                events: q.len(),
                bytes,
                max: self.inner.max,
            });
        }
        let now = Instant::now();
        q.push_back(Queued {
            function: function.to_string(),
            event,
            ctx,
            queued: now,
            not_before: now,
            pause: FIRST_PAUSE,
        });
        drop(q);
        self.inner.ready.notify_one();
        Ok(())
    }

    /// Drops what is still queued (at shutdown) and says how much that was.
    pub fn drain(&self) {
        let dropped = std::mem::take(&mut *lock(&self.inner.queue)).len();
        self.inner.ready.notify_all();
        if dropped > 0 {
            eprintln!("kiln: {dropped} queued asynchronous invocation(s) dropped at shutdown");
        }
    }
}

/// Whether `e` means "no room now, try later".
fn is_throttle(e: &PoolError) -> bool {
    matches!(
        e,
        PoolError::ConcurrencyLimit { .. }
            | PoolError::Start {
                source: InstanceError::NoFreeUid { .. },
                ..
            }
    )
}

fn next_due(q: &mut VecDeque<Queued>, now: Instant) -> Option<Queued> {
    let i = q.iter().position(|e| e.not_before <= now)?;
    q.remove(i)
}

fn dispatch(inner: &Inner) {
    loop {
        let job = {
            let mut q = lock(&inner.queue);
            loop {
                if inner.pools.is_shutting_down() {
                    return;
                }
                let now = Instant::now();
                if let Some(job) = next_due(&mut q, now) {
                    break job;
                }
                let wait = q
                    .iter()
                    .map(|e| e.not_before.saturating_duration_since(now))
                    .min()
                    .unwrap_or(Duration::from_millis(200))
                    .clamp(Duration::from_millis(1), Duration::from_millis(200));
                q = wait_timeout(&inner.ready, q, wait);
            }
        };
        run(inner, job);
    }
}

fn run(inner: &Inner, mut job: Queued) {
    let id = job.ctx.request_id.clone();
    let tag = format!("kiln: [event {id}] {}", job.function);
    match inner.pools.invoke(&job.function, &job.event, &job.ctx) {
        Ok(inv) => {
            eprintln!(
                "{tag}: done in {} on {}{}",
                ms(inv.timings.total),
                inv.vm_id,
                log_suffix(&inv.logs)
            );
        }
        Err(e) if is_throttle(&e) && job.queued.elapsed() + job.pause < MAX_RETRY_AGE => {
            job.not_before = Instant::now() + job.pause;
            job.pause = (job.pause * 2).min(LONGEST_PAUSE);
            let mut q = lock(&inner.queue);
            if q.len() < inner.max {
                q.push_back(job);
                drop(q);
                inner.ready.notify_one();
            } else {
                eprintln!("{tag}: dropped: throttled ({e}) and the queue is full");
            }
        }
        Err(e) => {
            let logs = match &e {
                PoolError::Invoke { logs, .. } => log_suffix(logs),
                _ => String::new(),
            };
            eprintln!("{tag}: failed: {e} [{}]{logs}", e.code());
        }
    }
}

fn log_suffix(logs: &[u8]) -> String {
    if logs.is_empty() {
        String::new()
    } else {
        format!("; log: {}", String::from_utf8_lossy(logs).trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(after_ms: u64) -> Queued {
        let now = Instant::now();
        Queued {
            function: "f".into(),
            event: Vec::new(),
            ctx: InvocationContext::new(&Default::default(), "f"),
            queued: now,
            not_before: now + Duration::from_millis(after_ms),
            pause: FIRST_PAUSE,
        }
    }

    #[test]
    fn the_first_due_event_runs_first() {
        let mut q: VecDeque<Queued> = [queued(10_000), queued(0), queued(0)].into();
        let second = q[1].ctx.request_id.clone();
        let got = next_due(&mut q, Instant::now()).unwrap();
        assert_eq!(got.ctx.request_id, second);
        assert_eq!(q.len(), 2);
        next_due(&mut q, Instant::now()).unwrap();
        assert!(next_due(&mut q, Instant::now()).is_none(), "not due yet");
    }

    #[test]
    fn throttles_are_retried_other_errors_not() {
        assert!(is_throttle(&PoolError::ConcurrencyLimit {
            function: "f".into(),
            limit: 1,
            reason: String::new()
        }));
        assert!(is_throttle(&PoolError::Start {
            function: "f".into(),
            source: InstanceError::NoFreeUid { base: 1, end: 2 }
        }));
        assert!(!is_throttle(&PoolError::ShuttingDown));
    }
}
