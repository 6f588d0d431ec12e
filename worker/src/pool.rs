//! Per-function pools of warm instances.
//!
//! - An instance serves one function only, for its whole life: pools are keyed by function
//!   name, and an instance of an older build of the function is retired, not reused.
//! - At most `concurrency` instances of a function exist at once (the manifest's limit):
//!   an invocation takes an idle instance, or starts one below the limit, or waits in a
//!   bounded queue (at most `max_queue` waiters, each for at most `queue_timeout`), or is
//!   refused with `concurrency_limit`.
//! - An instance that timed out, crashed, panicked or broke the protocol is stopped and its
//!   jail removed before the answer goes out; the next invocation starts a fresh one.
//! - A request that finds a dead idle instance (its VMM killed from outside) stops it and
//!   frees its slot before it decides whether to wait: it then takes another idle one, starts
//!   a new one, or queues for a slot that a live instance holds.
//! - The reaper thread stops instances idle for longer than `idle_timeout`, and idle
//!   instances whose VMM has died; every few seconds it also sweeps the instance records
//!   whose jails a stop could not remove (`instance::sweep`), and so does the shutdown.
//! - A cold start takes a blank instance of the function's memory size when the blank pool
//!   ([`crate::blank_pool`], off unless configured) has one ready; the instance then belongs
//!   to this function's pool for life, like one it started itself.

use crate::blank_pool::{Assigning, BlankPool, BlankPoolConfig, BlankSizeInfo};
use crate::context::InvocationContext;
use crate::function::{Function, FunctionError, Registry};
use crate::instance::{
    self, BlankInstance, Instance, InstanceConfig, InstanceError, InstanceInfo, InvokeError,
};
use crate::sync::{lock, wait_timeout};
use crate::sys;
use crate::timing::InvocationTimings;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How often the reaper sweeps instance records left for it.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How long a sweep's `jailer cleanup` waits for a jail's processes to exit.
const SWEEP_WAIT: Duration = Duration::from_secs(1);

/// How pools behave.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Idle instances older than this are stopped (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// How long an invocation waits for a free instance at the concurrency limit.
    pub queue_timeout: Duration,
    /// How many invocations of one function may wait at once.
    pub max_queue: usize,
}

/// Why an invocation failed, with the code the worker reports (`kiln serve` decides the
/// HTTP status in `server::status`).
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Function(#[from] FunctionError),
    #[error("event of {len} bytes is over the limit of {max} bytes of function {function:?} (max_event_bytes in its kiln.json)")]
    EventTooLarge {
        function: String,
        len: usize,
        max: usize,
    },
    #[error("function {function:?} is at its concurrency limit of {limit} instances{reason}")]
    ConcurrencyLimit {
        function: String,
        limit: usize,
        reason: String,
    },
    #[error("cannot start an instance of {function:?}: {source}")]
    Start {
        function: String,
        source: InstanceError,
    },
    #[error("{source}")]
    Invoke {
        function: String,
        vm_id: String,
        source: InvokeError,
        /// What the guest logged before it failed (at most `instance::MAX_LOG_BYTES`).
        logs: Vec<u8>,
    },
    #[error("the worker is shutting down")]
    ShuttingDown,
}

impl PoolError {
    /// The `code` of the error answer (docs/worker.md).
    pub fn code(&self) -> &'static str {
        match self {
            PoolError::Function(e) => e.code(),
            PoolError::EventTooLarge { .. } => "event_too_large",
            PoolError::ConcurrencyLimit { .. } => "concurrency_limit",
            PoolError::Start { source, .. } => source.code(),
            PoolError::Invoke { source, .. } => source.code(),
            PoolError::ShuttingDown => "shutting_down",
        }
    }

    /// The id of the VM that failed, if one did.
    pub fn vm_id(&self) -> Option<&str> {
        match self {
            PoolError::Invoke { vm_id, .. } => Some(vm_id),
            _ => None,
        }
    }
}

/// A successful invocation.
#[derive(Debug)]
pub struct Invocation {
    /// The function's response.
    pub body: Vec<u8>,
    /// What the guest logged meanwhile (at most `instance::MAX_LOG_BYTES`).
    pub logs: Vec<u8>,
    pub logs_dropped: u64,
    pub vm_id: String,
    pub cold: bool,
    pub timings: InvocationTimings,
}

/// An instance serving an invocation (owned by that invocation's thread meanwhile).
struct Busy {
    supervisor_pid: Option<i32>,
    info: InstanceInfo,
}

impl Busy {
    fn of(i: &Instance) -> Busy {
        Busy {
            supervisor_pid: i.supervisor_pid(),
            info: i.info("busy"),
        }
    }
}

#[derive(Default)]
struct PoolState {
    idle: Vec<Instance>,
    busy: HashMap<String, Busy>,
    /// Slots held by instances being started or stopped (in nobody's list meanwhile).
    reserved: usize,
    waiting: usize,
}

impl PoolState {
    fn live(&self) -> usize {
        self.idle.len() + self.busy.len() + self.reserved
    }
}

struct FunctionPool {
    state: Mutex<PoolState>,
    freed: Condvar,
}

/// Every function's pool, the registry they are built from, and the reaper.
pub struct Pools {
    registry: Arc<Registry>,
    instance_cfg: Arc<InstanceConfig>,
    cfg: PoolConfig,
    pools: Mutex<HashMap<String, Arc<FunctionPool>>>,
    /// Blank instances for cold starts, if `kiln serve --blank-pool` asked for them.
    blank: OnceLock<Arc<BlankPool>>,
    shutting_down: AtomicBool,
}

/// What an invocation got from its pool.
enum Lease {
    Warm(Box<Instance>),
    /// A slot to start a new instance in.
    Cold,
}

impl Pools {
    pub fn new(
        registry: Arc<Registry>,
        instance_cfg: Arc<InstanceConfig>,
        cfg: PoolConfig,
    ) -> Arc<Pools> {
        Arc::new(Pools {
            registry,
            instance_cfg,
            cfg,
            pools: Mutex::new(HashMap::new()),
            blank: OnceLock::new(),
            shutting_down: AtomicBool::new(false),
        })
    }

    /// Starts the pool of blank instances that cold starts take from (once).
    pub fn start_blank_pool(&self, cfg: BlankPoolConfig) -> std::io::Result<()> {
        let pool = BlankPool::start(cfg, self.instance_cfg.clone())?;
        if let Err(extra) = self.blank.set(pool) {
            extra.shutdown();
        }
        Ok(())
    }

    /// The blank pool's sizes, ready instances and counts (empty without one).
    pub fn blank_list(&self) -> Vec<BlankSizeInfo> {
        self.blank.get().map(|b| b.list()).unwrap_or_default()
    }

    /// A new instance of `function`: on a blank instance of its memory size if the blank
    /// pool has one ready (assigned to it for life), else in a jail of its own made now.
    /// With a blank instance, also the guard that holds the blank pool's refill back: the
    /// caller keeps it until the cold start's first invocation is answered, so that the
    /// refill (a whole jail made) never competes with that invocation for the CPUs.
    fn start_cold(
        &self,
        function: &Arc<Function>,
    ) -> Result<(Instance, Option<Assigning<'_>>), InstanceError> {
        let blank = self
            .blank
            .get()
            .filter(|_| BlankInstance::fits_kind(function))
            .and_then(|b| b.take(function.memory_mib));
        if let Some((blank, assigning)) = blank {
            let id = blank.id().to_string();
            match Instance::start_on_blank(&self.instance_cfg, function, blank) {
                Ok(i) => {
                    eprintln!(
                        "kiln: {}: cold start on blank instance {id}",
                        function.name
                    );
                    return Ok((i, Some(assigning)));
                }
                Err(e) => eprintln!(
                    "kiln: {}: blank instance {id} failed its assignment ({e}); starting a new instance",
                    function.name
                ),
            }
        }
        Instance::start(&self.instance_cfg, function).map(|i| (i, None))
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn pool(&self, name: &str) -> Arc<FunctionPool> {
        lock(&self.pools)
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(FunctionPool {
                    state: Mutex::new(PoolState::default()),
                    freed: Condvar::new(),
                })
            })
            .clone()
    }

    /// Invokes function `name` with `event` (and its Lambda context `ctx`) on a warm instance
    /// of it, or a new one.
    pub fn invoke(
        &self,
        name: &str,
        event: &[u8],
        ctx: &InvocationContext,
    ) -> Result<Invocation, PoolError> {
        let t0 = Instant::now();
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(PoolError::ShuttingDown);
        }
        let function = self.registry.get(name)?;
        if event.len() > function.max_event_bytes {
            return Err(PoolError::EventTooLarge {
                function: function.name.clone(),
                len: event.len(),
                max: function.max_event_bytes,
            });
        }
        let pool = self.pool(name);
        let waiting = Instant::now();
        let (lease, waited) = self.acquire(&pool, &function)?;
        let queued = if waited {
            waiting.elapsed()
        } else {
            Duration::ZERO
        };
        // On a blank instance: the refill held back until this invocation is answered.
        let (mut instance, cold, refill_held) = match lease {
            Lease::Warm(i) => (*i, false, None),
            Lease::Cold => match self.start_cold(&function) {
                Ok((i, refill_held)) => {
                    let mut st = lock(&pool.state);
                    st.reserved -= 1;
                    st.busy.insert(i.id().to_string(), Busy::of(&i));
                    drop(st);
                    if self.shutting_down.load(Ordering::Acquire) {
                        self.release(&pool, i);
                        return Err(PoolError::ShuttingDown);
                    }
                    (i, true, refill_held)
                }
                Err(source) => {
                    lock(&pool.state).reserved -= 1;
                    pool.freed.notify_one();
                    return Err(PoolError::Start {
                        function: function.name.clone(),
                        source,
                    });
                }
            },
        };
        let invoked = instance.invoke(event, ctx);
        drop(refill_held);
        let vm_id = instance.id().to_string();
        let start = cold.then_some(instance.started);
        self.release(&pool, instance);
        match invoked.result {
            Ok(body) => Ok(Invocation {
                body,
                logs: invoked.logs,
                logs_dropped: invoked.logs_dropped,
                vm_id,
                cold,
                timings: InvocationTimings {
                    queued,
                    start,
                    handler: invoked.handler,
                    total: t0.elapsed(),
                },
            }),
            Err(source) => Err(PoolError::Invoke {
                function: function.name.clone(),
                vm_id,
                source,
                logs: invoked.logs,
            }),
        }
    }

    /// An idle healthy instance of the current build, or a slot to start one, or a wait;
    /// and whether it had to wait.
    fn acquire(
        &self,
        pool: &FunctionPool,
        function: &Arc<Function>,
    ) -> Result<(Lease, bool), PoolError> {
        let limit = function.concurrency.max(1);
        let deadline = Instant::now() + self.cfg.queue_timeout;
        let mut st = lock(&pool.state);
        let mut queued = false;
        let lease = loop {
            if self.shutting_down.load(Ordering::Acquire) {
                break Err(PoolError::ShuttingDown);
            }
            // Most recently used first: it is the warmest.
            let mut found = None;
            let mut retired = Vec::new();
            while let Some(mut i) = st.idle.pop() {
                if i.function().generation == function.generation && i.is_healthy() {
                    found = Some(i);
                    break;
                }
                // Its slot stays reserved until it is stopped (below, unlocked).
                st.reserved += 1;
                retired.push(i);
            }
            if let Some(i) = found {
                st.busy.insert(i.id().to_string(), Busy::of(&i));
                // The others found on the way are stopped by this request's thread, after
                // it let go of the pool.
                drop(st);
                self.retire(pool, retired);
                st = lock(&pool.state);
                break Ok(Lease::Warm(Box::new(i)));
            }
            if !retired.is_empty() {
                // Dead or outdated instances hold slots only they release: stop them now,
                // then decide again (start one, take another, or wait for a live one).
                drop(st);
                self.retire(pool, retired);
                st = lock(&pool.state);
                continue;
            }
            if st.live() < limit {
                st.reserved += 1;
                break Ok(Lease::Cold);
            }
            let now = Instant::now();
            if !queued && (st.waiting >= self.cfg.max_queue || self.cfg.queue_timeout.is_zero()) {
                break Err(PoolError::ConcurrencyLimit {
                    function: function.name.clone(),
                    limit,
                    reason: format!(
                        " ({} busy, {} waiting, at most {} may wait): try again later",
                        st.busy.len() + st.reserved,
                        st.waiting,
                        self.cfg.max_queue
                    ),
                });
            }
            if now >= deadline {
                break Err(PoolError::ConcurrencyLimit {
                    function: function.name.clone(),
                    limit,
                    reason: format!(
                        ": no instance became free within {} ms",
                        self.cfg.queue_timeout.as_millis()
                    ),
                });
            }
            if !queued {
                st.waiting += 1;
                queued = true;
            }
            st = wait_timeout(&pool.freed, st, deadline - now);
        };
        if queued {
            st.waiting -= 1;
        }
        drop(st);
        lease.map(|l| (l, queued))
    }

    /// Stops instances taken out of the idle list (their slots reserved meanwhile) and frees
    /// their slots.
    fn retire(&self, pool: &FunctionPool, retired: Vec<Instance>) {
        for i in retired {
            i.stop();
            lock(&pool.state).reserved -= 1;
            pool.freed.notify_one();
        }
    }

    /// Takes an instance back after an invocation: idle again if it is healthy and of the
    /// current build, else stopped (its jail removed) before returning.
    fn release(&self, pool: &FunctionPool, mut instance: Instance) {
        let current = self
            .registry
            .current_generation(&instance.function().name)
            .is_none_or(|g| g == instance.function().generation);
        let keep = current && !self.shutting_down.load(Ordering::Acquire) && instance.is_healthy();
        let mut st = lock(&pool.state);
        st.busy.remove(instance.id());
        if keep {
            instance.last_used = Instant::now();
            st.idle.push(instance);
            drop(st);
            pool.freed.notify_one();
        } else {
            // The slot is freed only once the instance is gone.
            st.reserved += 1;
            drop(st);
            instance.stop();
            lock(&pool.state).reserved -= 1;
            pool.freed.notify_one();
        }
    }

    /// Every instance, by function.
    pub fn list(&self) -> Vec<(String, Vec<InstanceInfo>)> {
        let pools: Vec<(String, Arc<FunctionPool>)> = lock(&self.pools)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut out = Vec::new();
        for (name, pool) in pools {
            let st = lock(&pool.state);
            let mut infos: Vec<InstanceInfo> = st.idle.iter().map(|i| i.info("idle")).collect();
            infos.extend(st.busy.values().map(|b| b.info.clone()));
            out.push((name, infos));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Stops idle instances past the idle timeout and idle instances that died. Returns how
    /// many were stopped.
    pub fn reap(&self) -> usize {
        let pools: Vec<(String, Arc<FunctionPool>)> = lock(&self.pools)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut stopped = 0;
        for (name, pool) in pools {
            let mut victims = Vec::new();
            {
                let mut st = lock(&pool.state);
                let idle = std::mem::take(&mut st.idle);
                for mut i in idle {
                    let expired = self
                        .cfg
                        .idle_timeout
                        .is_some_and(|t| i.last_used.elapsed() >= t);
                    if expired || !i.is_healthy() {
                        victims.push((i, expired));
                    } else {
                        st.idle.push(i);
                    }
                }
                // Slots stay taken until the instances are gone.
                st.reserved += victims.len();
            }
            for (i, expired) in victims {
                let why = if expired {
                    format!("idle for {} ms", i.last_used.elapsed().as_millis())
                } else {
                    i.broken().unwrap_or("not healthy").to_string()
                };
                eprintln!("kiln: {name}: stopping instance {} ({why})", i.id());
                i.stop();
                stopped += 1;
                lock(&pool.state).reserved -= 1;
                pool.freed.notify_one();
            }
        }
        stopped
    }

    /// Starts the reaper thread (every `interval`) until shutdown.
    pub fn spawn_reaper(self: &Arc<Self>, interval: Duration) -> std::io::Result<()> {
        let pools = self.clone();
        std::thread::Builder::new()
            .name("kiln-reaper".into())
            .spawn(move || {
                let mut swept = Instant::now();
                while !pools.shutting_down.load(Ordering::Acquire) {
                    std::thread::sleep(interval);
                    pools.reap();
                    if swept.elapsed() >= SWEEP_EVERY {
                        instance::sweep(&pools.instance_cfg, SWEEP_WAIT);
                        swept = Instant::now();
                    }
                }
            })
            .map(|_| ())
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Refuses new invocations, stops every idle instance, asks busy ones to stop (their
    /// invocations fail), and waits up to `timeout` for them to be gone.
    pub fn shutdown(&self, timeout: Duration) {
        self.shutting_down.store(true, Ordering::Release);
        if let Some(blank) = self.blank.get() {
            blank.shutdown();
        }
        let pools: Vec<Arc<FunctionPool>> = lock(&self.pools).values().cloned().collect();
        for pool in &pools {
            let idle = std::mem::take(&mut lock(&pool.state).idle);
            for i in idle {
                i.stop();
            }
            let busy: Vec<i32> = lock(&pool.state)
                .busy
                .values()
                .filter_map(|b| b.supervisor_pid)
                .collect();
            for pid in busy {
                // The supervisor forwards SIGTERM to its VMM; the invocation then fails and
                // its thread stops and removes the instance.
                let _ = sys::kill(pid, sys::Signal::SIGTERM);
            }
            pool.freed.notify_all();
        }
        let deadline = Instant::now() + timeout;
        for pool in &pools {
            let mut st = lock(&pool.state);
            while st.busy.len() + st.reserved > 0 {
                let now = Instant::now();
                if now >= deadline {
                    eprintln!(
                        "kiln: {} instance(s) still busy at shutdown",
                        st.busy.len() + st.reserved
                    );
                    break;
                }
                st = wait_timeout(
                    &pool.freed,
                    st,
                    (deadline - now).min(Duration::from_millis(50)),
                );
            }
        }
        // The jails that stops could not remove at once get their last chance here.
        instance::sweep(&self.instance_cfg, SWEEP_WAIT);
        instance::release(&self.instance_cfg);
    }
}
