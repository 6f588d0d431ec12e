//! Metrics: atomic counters shared by every thread, written as one JSON line per flush.
//!
//! [`METRICS`] is a process-wide static. Any thread — vCPU threads included — records an event
//! with one relaxed atomic increment (`METRICS.vcpu.exit_io_out.inc()`): no lock, no
//! allocation, no I/O. Only [`flush`] (called by the VMM thread on `FlushMetrics`, by the
//! periodic flusher thread every [`FLUSH_INTERVAL`], and at exit) serialises and writes.
//!
//! A line looks like Firecracker's: `{"utc_timestamp_ms":…,"api_server":{…},"vcpu":{…},…}`.
//! A [`Counter`] reports how much it grew since the previous flush; a [`Gauge`] reports its
//! current value. Nothing is consumed while no destination is configured (`PUT /metrics` or
//! the config file's `metrics`), so the first line after configuration covers everything
//! since process start.

use serde::ser::{Serialize, Serializer};
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often the periodic flusher writes a line (Firecracker's period).
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
    #[error("metrics: cannot start the periodic flusher thread: {0}")]
    Thread(std::io::Error),
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

/// Declares a group of metrics with a `const fn new()`, so that [`METRICS`] can be a plain
/// static (no lazy initialisation on the vCPU path).
macro_rules! metrics_group {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident: $ty:ident,)* }) => {
        $(#[$meta])*
        #[derive(Debug, serde::Serialize)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl $name {
            pub const fn new() -> Self {
                $name { $($field: $ty::new(),)* }
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }
    };
}

metrics_group! {
    /// The API server: its start-up time and HTTP-level events.
    ApiServerMetrics {
        /// Microseconds from process start (or the jailer's `--start-time-us`) to the API
        /// socket accepting connections.
        process_startup_time_us: Gauge,
        /// Process CPU time used until the API socket was ready, in microseconds.
        process_startup_time_cpu_us: Gauge,
        connections_accepted: Counter,
        /// Connections closed to stay within the connection limit, or refused outright.
        connections_dropped: Counter,
        /// Requests answered by the API thread (every status).
        requests: Counter,
        /// Malformed HTTP (syntax, headers, Content-Length): answered and the connection closed.
        bad_requests: Counter,
        /// Bodies over `--http-api-max-payload-size`.
        oversized_requests: Counter,
        /// Requests not completed within the per-request deadline.
        request_timeouts: Counter,
        /// Requests to a path that does not exist (404) or with the wrong verb (405).
        unknown_requests: Counter,
        /// The VMM thread could not be reached or did not answer.
        sync_response_fails: Counter,
    }
}

metrics_group! {
    GetRequestsMetrics {
        instance_info_count: Counter,
        machine_cfg_count: Counter,
        vmm_version_count: Counter,
        vm_config_count: Counter,
    }
}

metrics_group! {
    PutRequestsMetrics {
        actions_count: Counter,
        actions_fails: Counter,
        boot_source_count: Counter,
        boot_source_fails: Counter,
        drive_count: Counter,
        drive_fails: Counter,
        logger_count: Counter,
        logger_fails: Counter,
        machine_cfg_count: Counter,
        machine_cfg_fails: Counter,
        metrics_count: Counter,
        metrics_fails: Counter,
        network_count: Counter,
        network_fails: Counter,
        vsock_count: Counter,
        vsock_fails: Counter,
    }
}

metrics_group! {
    PatchRequestsMetrics {
        drive_count: Counter,
        drive_fails: Counter,
        machine_cfg_count: Counter,
        machine_cfg_fails: Counter,
        network_count: Counter,
        network_fails: Counter,
        vm_state_count: Counter,
        vm_state_fails: Counter,
    }
}

metrics_group! {
    /// The logger and the metrics system themselves.
    LoggerSystemMetrics {
        /// Metrics lines dropped because the destination would have blocked.
        missed_metrics_count: Counter,
        /// Metrics lines that failed to serialise or write.
        metrics_fails: Counter,
        /// Log lines dropped because the destination would have blocked or was busy.
        missed_log_count: Counter,
        /// Log lines that failed to write.
        log_fails: Counter,
    }
}

metrics_group! {
    /// vCPU exits by reason, and vCPU failures.
    VcpuMetrics {
        exit_io_in: Counter,
        exit_io_out: Counter,
        exit_mmio_read: Counter,
        exit_mmio_write: Counter,
        exit_hlt: Counter,
        exit_shutdown: Counter,
        exit_system_event: Counter,
        exit_internal_error: Counter,
        exit_fail_entry: Counter,
        exit_other: Counter,
        /// KVM_RUN or exit handling failed.
        failures: Counter,
        /// Port I/O that no device handled (ignored; reads see all ones).
        unhandled_io: Counter,
        /// MMIO that no device handled: no device there, or an access straddling a
        /// device's range (ignored; reads see all ones).
        unhandled_mmio: Counter,
    }
}

metrics_group! {
    /// The VMM thread.
    VmmMetrics {
        /// Events handled by the VMM thread's event loop (devices, API, timers).
        device_events: Counter,
        pauses: Counter,
        resumes: Counter,
        panic_count: Gauge,
    }
}

metrics_group! {
    /// The 16550A serial port.
    SerialMetrics {
        error_count: Counter,
        flush_count: Counter,
        missed_read_count: Counter,
        missed_write_count: Counter,
        read_count: Counter,
        write_count: Counter,
    }
}

metrics_group! {
    /// The i8042 controller (Ctrl+Alt+Del, reset).
    I8042Metrics {
        error_count: Counter,
        missed_read_count: Counter,
        missed_write_count: Counter,
        read_count: Counter,
        reset_count: Counter,
        write_count: Counter,
    }
}

metrics_group! {
    /// All virtio-blk devices together.
    BlockMetrics {
        activate_fails: Counter,
        cfg_fails: Counter,
        event_fails: Counter,
        flush_count: Counter,
        invalid_reqs_count: Counter,
        queue_event_count: Counter,
        read_bytes: Counter,
        read_count: Counter,
        write_bytes: Counter,
        write_count: Counter,
        /// Requests whose sectors lie (partly) past the end of the disk, or that are too
        /// large or not sector-sized: answered VIRTIO_BLK_S_IOERR.
        out_of_range_count: Counter,
        /// Writes to a read-only drive: answered VIRTIO_BLK_S_IOERR.
        read_only_write_count: Counter,
        /// Request types the device does not implement: answered VIRTIO_BLK_S_UNSUPP.
        unsupported_count: Counter,
        /// Host I/O on the backing file failed: answered VIRTIO_BLK_S_IOERR.
        io_errors: Counter,
        /// Backing files swapped after boot (`PATCH /drives/{id}`).
        backing_swaps: Counter,
    }
}

metrics_group! {
    /// All virtio-net devices together.
    NetMetrics {
        activate_fails: Counter,
        event_fails: Counter,
        rx_bytes_count: Counter,
        rx_packets_count: Counter,
        rx_fails: Counter,
        tx_bytes_count: Counter,
        tx_packets_count: Counter,
        tx_fails: Counter,
        /// Frames from the tap dropped: larger than the guest's buffers, or the tap failed.
        rx_dropped: Counter,
        /// Times the guest had no receive buffers while frames were waiting on the tap.
        rx_no_buffers: Counter,
        /// Frames from the guest dropped: malformed, oversized, or the tap was full.
        tx_dropped: Counter,
    }
}

metrics_group! {
    /// The virtio-mmio transport and the virtqueues of every virtio device.
    VirtioMetrics {
        /// Guest accesses to undefined registers, with the wrong width, to read-only or
        /// write-only registers, or in a device state that does not allow them (ignored).
        invalid_mmio_accesses: Counter,
        /// Device status writes that break the initialisation order (ignored).
        invalid_status_writes: Counter,
        /// Feature sets the device refused at FEATURES_OK.
        feature_negotiation_fails: Counter,
        /// Device resets by the driver (status 0).
        resets: Counter,
        /// DRIVER_OK refused: invalid queue configuration or the device could not start.
        activate_fails: Counter,
        /// Devices marked DEVICE_NEEDS_RESET.
        needs_reset: Counter,
        /// Descriptor chains refused: loops, longer than the queue, outside guest memory,
        /// indirect, readable after writable.
        invalid_chains: Counter,
        /// Available-ring indices more than the queue size ahead, or head indices outside
        /// the queue.
        avail_ring_errors: Counter,
        /// Used-ring writes that failed.
        used_ring_errors: Counter,
        /// Events whose work was cut at the per-event limit and rescheduled.
        work_deferred: Counter,
        /// Interrupts that could not be raised (irqfd write failed).
        interrupt_fails: Counter,
        /// Device file descriptors the event loop could not watch.
        watch_fails: Counter,
        /// QueueNotify writes that reached the VMM instead of an ioeventfd (another width or
        /// value than the queue index); forwarded when they name a queue.
        notify_exits: Counter,
    }
}

metrics_group! {
    /// The virtio-vsock device.
    VsockMetrics {
        activate_fails: Counter,
        conns_added: Counter,
        conns_removed: Counter,
        /// The muxer's epoll set, eventfd or timer failed, or an event named an unknown
        /// descriptor.
        conn_event_fails: Counter,
        /// Host → guest payload bytes and packets (every packet put in a receive buffer).
        rx_bytes_count: Counter,
        rx_packets_count: Counter,
        /// Guest → host payload bytes written to host sockets, and packets the guest sent.
        tx_bytes_count: Counter,
        tx_packets_count: Counter,
        /// Guest packets with a src_cid other than the guest's or a dst_cid other than the
        /// host (2): dropped.
        bad_cid_packets: Counter,
        /// Guest packets answered with an RST: not STREAM, unknown op, len over 64 KiB or
        /// over the chain.
        bad_packets: Counter,
        /// Chains too short for a header, transmit chains with writable buffers, receive
        /// chains with readable buffers: returned with length 0.
        malformed_packets: Counter,
        /// Guest packets for a connection that does not exist: answered with an RST.
        unknown_conn_packets: Counter,
        /// Packets a connection's state does not allow (RW before the handshake, a second
        /// REQUEST, data after SHUTDOWN): the connection is reset.
        protocol_errors: Counter,
        /// The guest sent more than its credit: the connection is reset.
        credit_violations: Counter,
        /// RSTs sent to the guest, and RSTs dropped because too many waited for receive
        /// buffers.
        rst_sent: Counter,
        rst_dropped: Counter,
        /// Guest connections refused: nobody listening on `<uds_path>_<port>`, or the
        /// connection limit.
        conns_refused: Counter,
        /// Host connections closed before becoming vsock connections: a bad or missing
        /// `CONNECT <port>` line, a timeout, a limit.
        host_connects_rejected: Counter,
        /// Connections reset because a REQUEST or SHUTDOWN was not answered in time.
        conn_timeouts: Counter,
        /// Times packets waited because the guest had no receive buffers.
        rx_no_buffers: Counter,
        /// Reading or writing a host socket failed: the connection is reset.
        rx_read_fails: Counter,
        tx_write_fails: Counter,
    }
}

metrics_group! {
    SeccompMetrics {
        /// Seccomp violations seen (SIGSYS) before the process was killed.
        num_faults: Gauge,
    }
}

metrics_group! {
    /// Latest duration of each operation, in microseconds.
    LatenciesMetrics {
        instance_start: Gauge,
        pause_vm: Gauge,
        resume_vm: Gauge,
    }
}

metrics_group! {
    /// Boot milestones in microseconds after process start (0 while not reached); see
    /// [`crate::timing`].
    BootTimingMetrics {
        api_ready: Gauge,
        instance_start: Gauge,
        first_serial_byte: Gauge,
    }
}

/// Every metric of the process, in the order its JSON line lists them.
#[derive(Debug, serde::Serialize)]
pub struct Metrics {
    pub utc_timestamp_ms: UtcTimestampMs,
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
    pub vsock: VsockMetrics,
    pub virtio: VirtioMetrics,
    pub seccomp: SeccompMetrics,
    pub latencies_us: LatenciesMetrics,
    pub boot_timing_us: BootTimingMetrics,
}

impl Metrics {
    pub const fn new() -> Self {
        Metrics {
            utc_timestamp_ms: UtcTimestampMs,
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
            vsock: VsockMetrics::new(),
            virtio: VirtioMetrics::new(),
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

/// Opens `path` (a file or FIFO; created if missing) as the metrics destination, replacing
/// any previous one.
pub fn init(path: &str) -> Result<(), MetricsError> {
    let file = crate::logger::open_output(path).map_err(|source| MetricsError::Open {
        path: path.to_string(),
        source,
    })?;
    let mut dest = DESTINATION.lock().unwrap_or_else(|p| p.into_inner());
    *dest = Some(file);
    Ok(())
}

/// True once a destination is configured.
pub fn is_configured() -> bool {
    DESTINATION.lock().map(|d| d.is_some()).unwrap_or(false)
}

/// Writes one line to the destination. Without a destination this does nothing (and
/// consumes nothing). A write that would block drops the line and counts it in
/// `logger.missed_metrics_count`.
pub fn flush() -> Result<(), MetricsError> {
    let mut dest = DESTINATION.lock().unwrap_or_else(|p| p.into_inner());
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

/// Starts the thread that flushes every `interval` for the rest of the process's life.
pub fn spawn_periodic_flush(interval: Duration) -> Result<(), MetricsError> {
    std::thread::Builder::new()
        .name("kiln_metrics".into())
        .spawn(move || {
            crate::seccomp::install(crate::seccomp::ThreadKind::Vmm);
            loop {
                std::thread::sleep(interval);
                if let Err(e) = flush() {
                    crate::log_warn!("periodic metrics flush: {e}");
                }
            }
        })
        .map(|_| ())
        .map_err(MetricsError::Thread)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_report_the_increase_since_the_last_line() {
        let m = Metrics::new();
        m.vcpu.exit_io_out.add(3);
        m.put_api_requests.drive_count.inc();
        m.latencies_us.pause_vm.set(42);
        let first: serde_json::Value = serde_json::from_str(&m.to_line().unwrap()).unwrap();
        assert_eq!(first["vcpu"]["exit_io_out"], 3);
        assert_eq!(first["put_api_requests"]["drive_count"], 1);
        assert_eq!(first["latencies_us"]["pause_vm"], 42);
        assert!(first["utc_timestamp_ms"].as_u64().unwrap() > 1_600_000_000_000);
        m.vcpu.exit_io_out.inc();
        let second: serde_json::Value = serde_json::from_str(&m.to_line().unwrap()).unwrap();
        assert_eq!(second["vcpu"]["exit_io_out"], 1);
        assert_eq!(second["put_api_requests"]["drive_count"], 0);
        assert_eq!(
            second["latencies_us"]["pause_vm"], 42,
            "gauges keep their value"
        );
        assert_eq!(m.vcpu.exit_io_out.total(), 4);
    }

    #[test]
    fn a_line_is_one_json_object_with_firecracker_group_names() {
        let line = Metrics::new().to_line().unwrap();
        assert!(line.ends_with('\n'));
        assert_eq!(line.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        for group in [
            "utc_timestamp_ms",
            "api_server",
            "get_api_requests",
            "put_api_requests",
            "patch_api_requests",
            "logger",
            "vcpu",
            "vmm",
            "uart",
            "i8042",
            "block",
            "net",
            "vsock",
            "seccomp",
            "latencies_us",
        ] {
            assert!(v.get(group).is_some(), "missing group {group}");
        }
    }
}
