//! The pool of pre-jailed blank instances (`kiln serve --blank-pool MEM_MIB:COUNT`).
//!
//! - **What is kept ready.** For each configured memory size, up to `COUNT` blank instances
//!   (`instance::BlankInstance`: jail, cgroups with that size's memory limit, network
//!   namespace with its firewall, VMM with its API up and told the memory size) under the
//!   worker's tenant profile (`--profile`). None has ever been assigned to a function.
//! - **Taking one.** A cold start of a function image whose `memory_mib` is a configured size
//!   takes a ready blank instance of that size ([`BlankPool::take`]); the instance is
//!   assigned to the function for life (it goes to that function's pool, and is stopped
//!   there like any instance: never back here). No ready one: the cold start makes its own
//!   jail as without the pool.
//! - **Refill, within a CPU budget.** One background thread starts at most one blank
//!   instance at a time, for the size furthest below its count, and waits `refill_gap`
//!   between starts so that a refill never takes more than one of the host's CPUs, and leaves
//!   room for cold starts that find the pool empty. It starts none while a blank instance
//!   taken is being assigned and its first invocation runs ([`Assigning`], held until that
//!   invocation is answered): the refill never competes with the cold invocation it refills
//!   after (a jail made meanwhile took that invocation ~1 ms more on two CPUs).
//! - **Replacement.** The same thread stops blank instances older than `max_age` (one per
//!   round, so that a whole pool is not recreated at once) and any whose VMM or jailer died,
//!   and the refill replaces them.
//! - **Shutdown.** The thread ends, then every blank instance is stopped and its jail
//!   removed like any instance's; their records (marked `blank`) are swept by a restarted
//!   worker like any other if the worker was killed.

use crate::instance::{BlankInfo, BlankInstance, InstanceConfig};
use crate::sync::{lock, wait_timeout};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the refill thread checks the pool when nothing wakes it.
const TICK: Duration = Duration::from_millis(200);

/// How blank pools are sized and kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlankPoolConfig {
    /// How many blank instances to keep ready, by guest memory size (MiB).
    pub sizes: BTreeMap<u32, usize>,
    /// Blank instances older than this are stopped and replaced.
    pub max_age: Duration,
    /// At least this long between two blank starts of the refill.
    pub refill_gap: Duration,
}

/// Counts since the worker started, by memory size.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct BlankCounts {
    /// Blank instances started (ready).
    pub started: u64,
    /// Blank starts that failed.
    pub failed: u64,
    /// Taken by a cold start (assigned to a function).
    pub taken: u64,
    /// Stopped for their age.
    pub expired: u64,
    /// Found dead (VMM or jailer gone) and removed.
    pub died: u64,
}

/// One memory size's pool, for listings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BlankSizeInfo {
    pub memory_mib: u32,
    pub target: usize,
    pub ready: Vec<BlankInfo>,
    pub counts: BlankCounts,
}

#[derive(Default)]
struct Size {
    ready: Vec<BlankInstance>,
    counts: BlankCounts,
}

/// The blank instances of every configured size and their refill thread.
pub struct BlankPool {
    cfg: BlankPoolConfig,
    instance_cfg: Arc<InstanceConfig>,
    sizes: Mutex<BTreeMap<u32, Size>>,
    wake: Condvar,
    stopping: AtomicBool,
    /// Blank instances taken whose cold starts (assignment and first invocation) still run.
    assigning: AtomicUsize,
    refill: Mutex<Option<JoinHandle<()>>>,
}

/// A blank instance taken by a cold start, and the refill held back until that cold start
/// is over — its assignment and its first invocation (the guard dropped).
pub struct Assigning<'a> {
    pool: &'a BlankPool,
}

impl Drop for Assigning<'_> {
    fn drop(&mut self) {
        self.pool.assigning.fetch_sub(1, Ordering::AcqRel);
        self.pool.wake.notify_all();
    }
}

impl BlankPool {
    /// The pool, its refill thread started (it fills the pool at once).
    pub fn start(
        cfg: BlankPoolConfig,
        instance_cfg: Arc<InstanceConfig>,
    ) -> std::io::Result<Arc<BlankPool>> {
        let sizes = cfg.sizes.keys().map(|&m| (m, Size::default())).collect();
        let pool = Arc::new(BlankPool {
            cfg,
            instance_cfg,
            sizes: Mutex::new(sizes),
            wake: Condvar::new(),
            stopping: AtomicBool::new(false),
            assigning: AtomicUsize::new(0),
            refill: Mutex::new(None),
        });
        let worker = pool.clone();
        let handle = std::thread::Builder::new()
            .name("kiln-blank-pool".into())
            .spawn(move || worker.refill_loop())?;
        *lock(&pool.refill) = Some(handle);
        Ok(pool)
    }

    /// A ready blank instance for `memory_mib` MiB functions, if there is one alive, with the
    /// guard that holds the refill back until it is dropped (once the assignment is over).
    /// Dead ones found on the way are left for the refill thread to remove.
    pub fn take(&self, memory_mib: u32) -> Option<(BlankInstance, Assigning<'_>)> {
        if self.stopping.load(Ordering::Acquire) {
            return None;
        }
        let mut sizes = lock(&self.sizes);
        let size = sizes.get_mut(&memory_mib)?;
        // The oldest first: the youngest live longest before their replacement.
        let at = size.ready.iter_mut().position(BlankInstance::is_healthy)?;
        let blank = size.ready.remove(at);
        size.counts.taken += 1;
        self.assigning.fetch_add(1, Ordering::AcqRel);
        drop(sizes);
        Some((blank, Assigning { pool: self }))
    }

    /// Every size's ready instances and counts.
    pub fn list(&self) -> Vec<BlankSizeInfo> {
        lock(&self.sizes)
            .iter()
            .map(|(&memory_mib, s)| BlankSizeInfo {
                memory_mib,
                target: self.cfg.sizes.get(&memory_mib).copied().unwrap_or(0),
                ready: s.ready.iter().map(BlankInstance::info).collect(),
                counts: s.counts,
            })
            .collect()
    }

    fn refill_loop(&self) {
        let mut last_start: Option<Instant> = None;
        while !self.stopping.load(Ordering::Acquire) {
            self.remove_dead_and_expired();
            let gap_left = last_start
                .map(|t| self.cfg.refill_gap.saturating_sub(t.elapsed()))
                .unwrap_or_default();
            let wanted = self
                .most_wanted()
                .filter(|_| self.assigning.load(Ordering::Acquire) == 0);
            if let (Some(memory_mib), true) = (wanted, gap_left.is_zero()) {
                last_start = Some(Instant::now());
                self.start_one(memory_mib);
                continue;
            }
            let nap = if wanted.is_some() {
                gap_left.min(TICK)
            } else {
                TICK
            };
            let sizes = lock(&self.sizes);
            if !self.stopping.load(Ordering::Acquire) {
                drop(wait_timeout(&self.wake, sizes, nap));
            }
        }
    }

    /// The memory size furthest below its count, if any is below.
    fn most_wanted(&self) -> Option<u32> {
        let sizes = lock(&self.sizes);
        self.cfg
            .sizes
            .iter()
            .map(|(m, &target)| {
                let have = sizes.get(m).map_or(0, |s| s.ready.len());
                (target.saturating_sub(have), *m)
            })
            .filter(|(missing, _)| *missing > 0)
            .max()
            .map(|(_, m)| m)
    }

    fn start_one(&self, memory_mib: u32) {
        let t = Instant::now();
        match BlankInstance::start(&self.instance_cfg, memory_mib) {
            Ok(blank) => {
                eprintln!(
                    "kiln: blank pool: {} ready ({memory_mib} MiB) in {:.1} ms",
                    blank.id(),
                    t.elapsed().as_secs_f64() * 1e3
                );
                let mut sizes = lock(&self.sizes);
                if self.stopping.load(Ordering::Acquire) {
                    drop(sizes);
                    blank.stop();
                    return;
                }
                let size = sizes.entry(memory_mib).or_default();
                size.counts.started += 1;
                size.ready.push(blank);
            }
            Err(e) => {
                eprintln!(
                    "kiln: blank pool: cannot start a blank instance of {memory_mib} MiB: {e}"
                );
                lock(&self.sizes)
                    .entry(memory_mib)
                    .or_default()
                    .counts
                    .failed += 1;
                // A failing start (no free uid, a broken jailer) is not retried at once.
                let sizes = lock(&self.sizes);
                drop(wait_timeout(&self.wake, sizes, TICK * 5));
            }
        }
    }

    /// Stops blank instances whose VMM or jailer died, and the oldest one past its age.
    fn remove_dead_and_expired(&self) {
        let mut victims = Vec::new();
        {
            let mut sizes = lock(&self.sizes);
            for size in sizes.values_mut() {
                let ready = std::mem::take(&mut size.ready);
                for mut b in ready {
                    if !b.is_healthy() {
                        size.counts.died += 1;
                        victims.push((b, "its VMM or jailer is gone"));
                    } else {
                        size.ready.push(b);
                    }
                }
            }
            let oldest = sizes
                .iter()
                .flat_map(|(&m, s)| {
                    s.ready
                        .iter()
                        .enumerate()
                        .map(move |(i, b)| (b.age(), m, i))
                })
                .filter(|(age, _, _)| *age >= self.cfg.max_age)
                .max();
            if let Some((_, m, i)) = oldest {
                if let Some(size) = sizes.get_mut(&m) {
                    size.counts.expired += 1;
                    victims.push((size.ready.remove(i), "past its maximum age"));
                }
            }
        }
        for (b, why) in victims {
            eprintln!("kiln: blank pool: stopping {} ({why})", b.id());
            b.stop();
        }
    }

    /// Ends the refill thread and stops every blank instance.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        self.wake.notify_all();
        if let Some(handle) = lock(&self.refill).take() {
            let _ = handle.join();
        }
        let all: Vec<BlankInstance> = lock(&self.sizes)
            .values_mut()
            .flat_map(|s| std::mem::take(&mut s.ready))
            .collect();
        for b in all {
            b.stop();
        }
    }
}
