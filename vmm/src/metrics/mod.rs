//! Metrics: atomic counters shared by every thread, written as one JSON line per flush.
//!
//! [`METRICS`] is a process-wide static. Any thread — vCPU threads included — records an event
//! with one relaxed atomic increment (`METRICS.vcpu.exit_io_out.inc()`): no lock, no
//! allocation, no I/O. Only [`flush`] (called by the VMM thread on `FlushMetrics`, by the
//! `vmm` binary's periodic flusher thread every [`FLUSH_INTERVAL`], and at exit) serialises and writes.
//!
//! A line looks like Firecracker's: `{"utc_timestamp_ms":…,"api_server":{…},"vcpu":{…},…}`,
//! with the microVM's `"id"` (metrics `emit_id`) and the caller's `"properties"` after the
//! timestamp when configured.
//! A [`Counter`] reports how much it grew since the previous flush; a [`Gauge`] reports its
//! current value. Nothing is consumed while no destination is configured (`PUT /metrics` or
//! the config file's `metrics`), so the first line after configuration covers everything
//! since process start.

mod groups;

pub use groups::{
    ApiServerMetrics, BalloonMetrics, BlockMetrics, BootTimingMetrics, EntropyMetrics,
    GetRequestsMetrics, I8042Metrics, LatenciesMetrics, LoggerSystemMetrics, MemoryHotplugMetrics,
    MmdsMetrics, NetMetrics, PatchRequestsMetrics, PciMetrics, PmemMetrics, PutRequestsMetrics,
    SeccompMetrics, SerialMetrics, VcpuMetrics, VirtioMetrics, VmmMetrics, VsockMetrics,
};

use crate::output::open_output;
use crate::resources::MetricsConfig;
use crate::sync::lock;
use serde::ser::{Serialize, SerializeMap, Serializer};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often the `vmm` binary's periodic flusher writes a line (Firecracker's period).
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics: cannot open {path:?}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("metrics: cannot serialise the metrics: {0}")]
    Serialize(String),
    #[error("metrics: writing a line to the metrics file failed: {0}")]
    Write(std::io::Error),
    #[error("metrics: the metrics file would block; the line was dropped")]
    WouldBlock,
}

/// A monotonically increasing count; serialised as the increase since the last flush.
#[derive(Debug)]
pub struct Counter {
    total: AtomicU64,
    flushed: AtomicU64,
}

impl Counter {
    pub const fn new() -> Self {
        Counter {
            total: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
        }
    }

    /// Adds one. Lock-free; safe on any thread, including vCPU threads.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    #[inline]
    pub fn add(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    /// Everything counted since process start.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}

impl Serialize for Counter {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let now = self.total.load(Ordering::Relaxed);
        let before = self.flushed.swap(now, Ordering::Relaxed);
        s.serialize_u64(now.wrapping_sub(before))
    }
}

/// A value that is set rather than accumulated (a duration, a size); serialised as is.
#[derive(Debug)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub const fn new() -> Self {
        Gauge(AtomicU64::new(0))
    }

    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Gauge {
    fn default() -> Self {
        Self::new()
    }
}

impl Serialize for Gauge {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.get())
    }
}

/// Serialises as the wall-clock time of the flush, in milliseconds since the Unix epoch.
#[derive(Debug, Default)]
pub struct UtcTimestampMs;

impl Serialize for UtcTimestampMs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        s.serialize_u64(u64::try_from(ms).unwrap_or(u64::MAX))
    }
}

/// The optional top-level fields of a line: `"id"` (with `emit_id`) and `"properties"`.
#[derive(Debug, Default)]
struct LabelValues {
    id: Option<String>,
    properties: Option<BTreeMap<String, String>>,
}

/// [`LabelValues`] as the metrics configuration set them; only flushers read them.
#[derive(Debug)]
pub struct Labels(Mutex<LabelValues>);

impl Labels {
    const fn new() -> Self {
        Labels(Mutex::new(LabelValues {
            id: None,
            properties: None,
        }))
    }

    /// `id`: the microVM's id when `emit_id` asks for it; `properties` as configured.
    pub fn set(&self, id: Option<&str>, properties: Option<BTreeMap<String, String>>) {
        let mut v = lock(&self.0);
        v.id = id.map(str::to_string);
        v.properties = properties;
    }
}

impl Serialize for Labels {
    /// Flattened into the line: nothing, `"id"`, `"properties"` or both.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = lock(&self.0);
        let mut map = s.serialize_map(None)?;
        if let Some(id) = &v.id {
            map.serialize_entry("id", id)?;
        }
        if let Some(p) = &v.properties {
            map.serialize_entry("properties", p)?;
        }
        map.end()
    }
}

/// Every metric of the process, in the order its JSON line lists them.
#[derive(Debug, serde::Serialize)]
pub struct Metrics {
    pub utc_timestamp_ms: UtcTimestampMs,
    #[serde(flatten)]
    pub labels: Labels,
    pub api_server: ApiServerMetrics,
    pub get_api_requests: GetRequestsMetrics,
    pub put_api_requests: PutRequestsMetrics,
    pub patch_api_requests: PatchRequestsMetrics,
    pub logger: LoggerSystemMetrics,
    pub vcpu: VcpuMetrics,
    pub vmm: VmmMetrics,
    pub uart: SerialMetrics,
    pub i8042: I8042Metrics,
    pub block: BlockMetrics,
    pub net: NetMetrics,
    pub mmds: MmdsMetrics,
    pub vsock: VsockMetrics,
    pub entropy: EntropyMetrics,
    pub pmem: PmemMetrics,
    pub balloon: BalloonMetrics,
    pub memory_hotplug: MemoryHotplugMetrics,
    pub virtio: VirtioMetrics,
    pub pci: PciMetrics,
    pub seccomp: SeccompMetrics,
    pub latencies_us: LatenciesMetrics,
    pub boot_timing_us: BootTimingMetrics,
}

impl Metrics {
    pub const fn new() -> Self {
        Metrics {
            utc_timestamp_ms: UtcTimestampMs,
            labels: Labels::new(),
            api_server: ApiServerMetrics::new(),
            get_api_requests: GetRequestsMetrics::new(),
            put_api_requests: PutRequestsMetrics::new(),
            patch_api_requests: PatchRequestsMetrics::new(),
            logger: LoggerSystemMetrics::new(),
            vcpu: VcpuMetrics::new(),
            vmm: VmmMetrics::new(),
            uart: SerialMetrics::new(),
            i8042: I8042Metrics::new(),
            block: BlockMetrics::new(),
            net: NetMetrics::new(),
            mmds: MmdsMetrics::new(),
            vsock: VsockMetrics::new(),
            entropy: EntropyMetrics::new(),
            pmem: PmemMetrics::new(),
            balloon: BalloonMetrics::new(),
            memory_hotplug: MemoryHotplugMetrics::new(),
            virtio: VirtioMetrics::new(),
            pci: PciMetrics::new(),
            seccomp: SeccompMetrics::new(),
            latencies_us: LatenciesMetrics::new(),
            boot_timing_us: BootTimingMetrics::new(),
        }
    }

    /// One JSON line (with its newline); counters restart from zero for the next line.
    pub fn to_line(&self) -> Result<String, MetricsError> {
        let mut line =
            serde_json::to_string(self).map_err(|e| MetricsError::Serialize(e.to_string()))?;
        line.push('\n');
        Ok(line)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The process's metrics.
pub static METRICS: Metrics = Metrics::new();

/// Counts one `KVM_RUN` return by exit reason (called by the vCPU threads: relaxed atomic
/// adds only).
#[inline]
pub fn count_vcpu_exit(result: &Result<kvm_ioctls::VcpuExit<'_>, kvm_ioctls::Error>) {
    use kvm_ioctls::VcpuExit;
    let v = &METRICS.vcpu;
    match result {
        Ok(VcpuExit::IoIn(..)) => v.exit_io_in.inc(),
        Ok(VcpuExit::IoOut(..)) => v.exit_io_out.inc(),
        Ok(VcpuExit::MmioRead(..)) => v.exit_mmio_read.inc(),
        Ok(VcpuExit::MmioWrite(..)) => v.exit_mmio_write.inc(),
        Ok(VcpuExit::Hlt) => v.exit_hlt.inc(),
        Ok(VcpuExit::Shutdown) => v.exit_shutdown.inc(),
        Ok(VcpuExit::SystemEvent(..)) => v.exit_system_event.inc(),
        Ok(VcpuExit::InternalError) => v.exit_internal_error.inc(),
        Ok(VcpuExit::FailEntry(..)) => v.exit_fail_entry.inc(),
        // Signals (kicks) are not exits of the guest.
        Ok(VcpuExit::Intr) => {}
        Ok(_) => v.exit_other.inc(),
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
        Err(_) => v.failures.inc(),
    }
}

/// Where lines go; `None` until configured. Only flushers take this lock (never a vCPU).
static DESTINATION: Mutex<Option<File>> = Mutex::new(None);

/// Opens `cfg.metrics_path` (a file or FIFO; created if missing) as the metrics
/// destination, replacing any previous one, and sets the line's labels (`instance_id` is
/// written when `cfg.emit_id` asks for it).
pub fn init(cfg: &MetricsConfig, instance_id: &str) -> Result<(), MetricsError> {
    let path = &cfg.metrics_path;
    let file = open_output(path).map_err(|source| MetricsError::Open {
        path: path.to_string(),
        source,
    })?;
    let mut dest = lock(&DESTINATION);
    METRICS
        .labels
        .set(cfg.emit_id.then_some(instance_id), cfg.properties.clone());
    *dest = Some(file);
    Ok(())
}

/// True once a destination is configured.
pub fn is_configured() -> bool {
    lock(&DESTINATION).is_some()
}

/// Writes one line to the destination. Without a destination this does nothing (and
/// consumes nothing). A write that would block drops the line and counts it in
/// `logger.missed_metrics_count`.
pub fn flush() -> Result<(), MetricsError> {
    let mut dest = lock(&DESTINATION);
    let Some(file) = dest.as_mut() else {
        return Ok(());
    };
    let line = METRICS
        .to_line()
        .inspect_err(|_| METRICS.logger.metrics_fails.inc())?;
    match file.write(line.as_bytes()) {
        Ok(n) if n == line.len() => Ok(()),
        Ok(_) => {
            // A FIFO whose reader is slow took part of the line; the rest is lost.
            METRICS.logger.missed_metrics_count.inc();
            Err(MetricsError::WouldBlock)
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            METRICS.logger.missed_metrics_count.inc();
            Err(MetricsError::WouldBlock)
        }
        Err(e) => {
            METRICS.logger.metrics_fails.inc();
            Err(MetricsError::Write(e))
        }
    }
}

#[cfg(test)]
mod tests;
