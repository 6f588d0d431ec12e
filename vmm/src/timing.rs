//! Boot timing: the VMM's milestones on CLOCK_MONOTONIC, logged so benchmarks can read them.
//!
//! - process start: [`record_process_start`] at the top of `main` (or the jailer's
//!   `--start-time-us`, the monotonic time at which it began, so the jail set-up counts);
//! - API ready: [`record_api_ready`] once the API socket listens;
//! - InstanceStart: [`record_instance_start`] when the build of the microVM begins (the
//!   `InstanceStart` action, or the config file's boot);
//! - the guest's first serial byte: [`record_guest_output`], called by the serial device on
//!   every byte the guest writes (one relaxed atomic load after the first).
//!
//! Each milestone logs one line at `Info` (level shown or not, the text is the same):
//!
//! ```text
//! boot-time: api_ready process_start_to_api_ready_us=1234
//! boot-time: first_serial_byte instance_start_to_first_serial_byte_us=5678 process_start_to_first_serial_byte_us=9012
//! ```
//!
//! and is kept in the metrics' `boot_timing_us` group.
//!
//! `--boot-timer` adds a [`StartupTrace`]: the end of each start-up phase, printed on stderr.

use crate::metrics::METRICS;
use crate::sync::lock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static PROCESS_START_US: AtomicU64 = AtomicU64::new(0);
static PROCESS_START_CPU_US: AtomicU64 = AtomicU64::new(0);
static INSTANCE_START_US: AtomicU64 = AtomicU64::new(0);
static FIRST_SERIAL_SEEN: AtomicBool = AtomicBool::new(false);

fn clock_us(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes to it. The
    // clocks used here (MONOTONIC, PROCESS_CPUTIME_ID) always exist on Linux.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000).saturating_add(nanos / 1000)
}

/// Microseconds on CLOCK_MONOTONIC (the clock the jailer's `--start-time-us` uses).
pub fn monotonic_us() -> u64 {
    clock_us(libc::CLOCK_MONOTONIC)
}

/// CPU time used by the process so far, in microseconds.
pub fn process_cpu_us() -> u64 {
    clock_us(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// Records process start: `start_time_us` (and `start_time_cpu_us`) from the jailer when
/// given, else now.
pub fn record_process_start(start_time_us: Option<u64>, start_time_cpu_us: Option<u64>) {
    PROCESS_START_US.store(
        start_time_us.unwrap_or_else(monotonic_us),
        Ordering::Relaxed,
    );
    PROCESS_START_CPU_US.store(start_time_cpu_us.unwrap_or(0), Ordering::Relaxed);
}

fn since_process_start(now: u64) -> u64 {
    let start = PROCESS_START_US.load(Ordering::Relaxed);
    if start == 0 {
        return 0;
    }
    now.saturating_sub(start)
}

/// Records that the API socket accepts connections, and logs the start-up time.
pub fn record_api_ready() {
    let d = since_process_start(monotonic_us());
    METRICS.api_server.process_startup_time_us.set(d);
    let cpu = process_cpu_us().saturating_sub(PROCESS_START_CPU_US.load(Ordering::Relaxed));
    METRICS.api_server.process_startup_time_cpu_us.set(cpu);
    METRICS.boot_timing_us.api_ready.set(d);
    crate::log_info!("boot-time: api_ready process_start_to_api_ready_us={d}");
}

/// Records that building the microVM begins (`InstanceStart`, or a config file's boot).
pub fn record_instance_start() {
    let now = monotonic_us();
    INSTANCE_START_US.store(now, Ordering::Relaxed);
    let d = since_process_start(now);
    METRICS.boot_timing_us.instance_start.set(d);
    crate::log_info!("boot-time: instance_start process_start_to_instance_start_us={d}");
}

/// Records that the guest wrote a byte to the serial port. The first call logs the boot
/// time; the others cost one relaxed load.
#[inline]
pub fn record_guest_output() {
    if FIRST_SERIAL_SEEN.load(Ordering::Relaxed) {
        return;
    }
    if FIRST_SERIAL_SEEN.swap(true, Ordering::Relaxed) {
        return;
    }
    first_serial_byte(monotonic_us());
}

#[cold]
fn first_serial_byte(now: u64) {
    let since_start = since_process_start(now);
    let since_instance = match INSTANCE_START_US.load(Ordering::Relaxed) {
        0 => 0,
        t => now.saturating_sub(t),
    };
    METRICS.boot_timing_us.first_serial_byte.set(since_start);
    crate::log_info!(
        "boot-time: first_serial_byte instance_start_to_first_serial_byte_us={since_instance} process_start_to_first_serial_byte_us={since_start}"
    );
}

/// Start-up phases and when they ended, relative to process start.
#[derive(Debug, Clone)]
pub struct StartupTrace {
    origin: Instant,
    marks: Arc<Mutex<Vec<(&'static str, Duration)>>>,
}

impl StartupTrace {
    /// `origin` is when the process started (see `--start-time-us`).
    pub fn new(origin: Instant) -> Self {
        StartupTrace {
            origin,
            marks: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn mark(&self, phase: &'static str) {
        let at = self.origin.elapsed();
        lock(&self.marks).push((phase, at));
    }

    pub fn origin(&self) -> Instant {
        self.origin
    }

    /// One line per phase: `phase: at X.XXX ms` (durations say `took`).
    pub fn report(&self) -> String {
        lock(&self.marks)
            .iter()
            .map(|(p, d)| format!("boot-timer: {p}: {:.3} ms", d.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_clock_advances() {
        let a = monotonic_us();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = monotonic_us();
        assert!(b >= a + 1000, "{a} {b}");
    }

    #[test]
    fn durations_are_relative_to_process_start() {
        record_process_start(Some(monotonic_us().saturating_sub(5_000)), None);
        record_api_ready();
        assert!(METRICS.boot_timing_us.api_ready.get() >= 5_000);
    }
}
