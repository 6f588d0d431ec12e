//! The metric groups: one struct of [`Counter`]s and [`Gauge`]s per part of the VMM, each
//! serialised as one object of the JSON line under the name [`super::Metrics`] gives it
//! (Firecracker's group names).

use super::{Counter, Gauge};

/// Declares a group of metrics with a `const fn new()`, so that [`super::METRICS`] can be a plain
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
        mmds_count: Counter,
        hotplug_memory_count: Counter,
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
        cpu_cfg_count: Counter,
        cpu_cfg_fails: Counter,
        serial_count: Counter,
        serial_fails: Counter,
        /// Kiln: `PUT /entropy` (Firecracker does not count it).
        entropy_count: Counter,
        entropy_fails: Counter,
        /// `PUT /mmds` and `PUT /mmds/config` (one counter, as Firecracker counts them).
        mmds_count: Counter,
        mmds_fails: Counter,
        balloon_count: Counter,
        balloon_fails: Counter,
        hotplug_memory_count: Counter,
        hotplug_memory_fails: Counter,
        pmem_count: Counter,
        pmem_fails: Counter,
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
        mmds_count: Counter,
        mmds_fails: Counter,
        balloon_count: Counter,
        balloon_fails: Counter,
        hotplug_memory_count: Counter,
        hotplug_memory_fails: Counter,
        pmem_count: Counter,
        pmem_fails: Counter,
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
        /// Output bytes dropped by the serial output's token bucket (`PUT /serial`).
        rate_limiter_dropped_bytes: Counter,
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
        /// `PATCH /drives/{id}` applied to a running drive, and those that failed.
        update_count: Counter,
        update_fails: Counter,
        /// Rate limiter timers that fired (the device went on with its queue).
        rate_limiter_event_count: Counter,
        /// Times a request did not fit the rate limiter: the queue waits for the refill.
        rate_limiter_throttled_events: Counter,
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
        /// Receive rate limiter timers that fired, and frames that had to wait for one.
        rx_event_rate_limiter_count: Counter,
        rx_rate_limiter_throttled: Counter,
        /// Transmit rate limiter timers that fired, and frames that had to wait for one.
        tx_rate_limiter_event_count: Counter,
        tx_rate_limiter_throttled: Counter,
    }
}

metrics_group! {
    /// MMDS as the guest reaches it (Firecracker's `mmds` group).
    MmdsMetrics {
        /// Frames from the guest taken by MMDS instead of the tap.
        rx_accepted: Counter,
        /// Frames taken by MMDS but malformed (bad lengths, checksums, options): dropped.
        rx_accepted_err: Counter,
        /// Unusual events: segments out of sequence, for no connection, connections evicted.
        rx_accepted_unusual: Counter,
        /// Frames too short to be Ethernet (passed to the tap as they are).
        rx_bad_eth: Counter,
        /// GETs with an invalid token, and with none.
        rx_invalid_token: Counter,
        rx_no_token: Counter,
        /// HTTP requests served.
        rx_count: Counter,
        /// Bytes and frames MMDS sent to the guest, and HTTP responses.
        tx_bytes: Counter,
        tx_count: Counter,
        /// Replies that could not be sent (no room in the reply queue).
        tx_errors: Counter,
        tx_frames: Counter,
        connections_created: Counter,
        connections_destroyed: Counter,
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
    /// The virtio-pmem devices (`pmem`), all together (Firecracker's aggregate `pmem`).
    PmemMetrics {
        activate_fails: Counter,
        /// Driver writes to the read-only configuration space.
        cfg_fails: Counter,
        /// Requests refused (a malformed chain) or a used entry that could not be written.
        event_fails: Counter,
        /// Queue notifications.
        queue_event_count: Counter,
        /// Rate limiter timers that fired.
        rate_limiter_event_count: Counter,
        /// Notifications whose flush did not fit the rate limiter: the queue waits.
        rate_limiter_throttled_events: Counter,
        /// Kiln: msync calls (one per notification with a valid flush request).
        flush_count: Counter,
        /// Kiln: msync calls that failed (the guest gets a failure status).
        flush_fails: Counter,
    }
}

metrics_group! {
    /// The virtio-rng device (`entropy`).
    EntropyMetrics {
        activate_fails: Counter,
        /// Requests that could not be served: a chain that is not one device-writable
        /// buffer list, the host's random source failed, the used ring could not be written.
        entropy_event_fails: Counter,
        /// Requests (descriptor chains) served.
        entropy_event_count: Counter,
        /// Random bytes written to the guest.
        entropy_bytes: Counter,
        /// The host's random source (getrandom) failed.
        host_rng_fails: Counter,
        /// Requests that did not fit the rate limiter: the queue waits for the refill.
        entropy_rate_limiter_throttled: Counter,
        /// Rate limiter timers that fired.
        rate_limiter_event_count: Counter,
    }
}

metrics_group! {
    /// The virtio-mem device (`memory-hotplug`): Firecracker's fields, then Kiln's.
    MemoryHotplugMetrics {
        activate_fails: Counter,
        /// Queue events that could not be served (a broken ring).
        queue_event_fails: Counter,
        queue_event_count: Counter,
        /// PLUG requests, bytes plugged, and those refused (NACK or ERROR).
        plug_count: Counter,
        plug_bytes: Counter,
        plug_fails: Counter,
        /// UNPLUG requests, bytes unplugged, and those refused (ERROR).
        unplug_count: Counter,
        unplug_bytes: Counter,
        unplug_fails: Counter,
        /// `madvise(MADV_DONTNEED)` of unplugged blocks that failed (the blocks stay
        /// unplugged; the host memory is not given back).
        unplug_discard_fails: Counter,
        unplug_all_count: Counter,
        unplug_all_fails: Counter,
        /// STATE requests, and those refused (ERROR).
        state_count: Counter,
        state_fails: Counter,
        /// Kiln: PLUG requests answered NACK (plugging would pass requested_size).
        plug_nacks: Counter,
        /// Kiln: chains that are not a request (too short, wrong directions, an unknown
        /// type): answered ERROR when a response buffer exists, else returned empty.
        invalid_requests: Counter,
        /// Kiln: KVM memory slots registered and removed as blocks were plugged and
        /// unplugged, and registrations KVM refused.
        slots_added: Counter,
        slots_removed: Counter,
        slot_fails: Counter,
    }
}

metrics_group! {
    /// The virtio-balloon device (`balloon`): Firecracker's fields, then Kiln's.
    BalloonMetrics {
        activate_fails: Counter,
        /// Inflate queue events.
        inflate_count: Counter,
        /// Stats buffers the driver posted.
        stats_updates_count: Counter,
        /// Statistics not taken: an unknown tag, a malformed buffer, an extra buffer.
        stats_update_fails: Counter,
        /// Deflate queue events.
        deflate_count: Counter,
        /// Inflate or deflate chains refused (malformed, not whole frame numbers, too long).
        event_fails: Counter,
        /// Free page reporting: ranges reported, bytes given back, ranges or chains refused.
        free_page_report_count: Counter,
        free_page_report_freed: Counter,
        free_page_report_fails: Counter,
        /// Free page hinting: ranges hinted in the current run, bytes given back, ranges
        /// or chains refused.
        free_page_hint_count: Counter,
        free_page_hint_freed: Counter,
        free_page_hint_fails: Counter,
        /// Kiln: 4 KiB pages given back to the host (madvise).
        inflated_pages: Counter,
        /// Kiln: pages the driver took back.
        deflated_pages: Counter,
        /// Kiln: frame numbers outside guest RAM.
        invalid_pfns: Counter,
        /// Kiln: frame numbers given twice in one chain.
        duplicate_pfns: Counter,
        /// Kiln: runs not (wholly) given back because the backing's pages are larger
        /// (hugetlbfs), or reported/hinted ranges cut to their whole 4 KiB pages.
        unaligned_ranges: Counter,
        /// Kiln: reported or hinted ranges refused: empty once page-aligned, overflowing,
        /// or not wholly guest RAM.
        invalid_ranges: Counter,
        /// Kiln: madvise calls that failed.
        discard_fails: Counter,
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
        /// `PUT /snapshot/create` (Firecracker's names).
        full_create_snapshot: Gauge,
        diff_create_snapshot: Gauge,
        /// `PUT /snapshot/load`, from the request to the microVM ready (paused or resumed).
        load_snapshot: Gauge,
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

metrics_group! {
    /// The PCI transport (`--enable-pci`): what the guest did to configuration space, BARs
    /// and MSI-X tables that was refused, and what the VMM could not set up.
    PciMetrics {
        /// Configuration space accesses refused: unaligned, of another width than 1, 2 or
        /// 4 bytes, outside the 256 bytes, through a malformed 0xCF8 address, or to a
        /// function that does not exist.
        invalid_config_accesses: Counter,
        /// BAR accesses refused: no register at that offset, the wrong width, or an
        /// address two BARs the guest overlapped both cover.
        invalid_bar_accesses: Counter,
        /// BARs the guest placed (with decoding on) outside the PCI window or over another
        /// function's BAR: they decode nothing until moved back.
        bars_refused: Counter,
        /// MSI-X entries the guest pointed at an address outside the local APICs'
        /// (0xfee00000-0xfeefffff): their interrupts are dropped.
        msix_bad_addresses: Counter,
        /// Interrupts held back in the pending bit array because their vector (or the
        /// function) was masked.
        msix_pending: Counter,
        /// Interrupts dropped: MSI-X disabled, no vector assigned, or a bad entry.
        msix_dropped: Counter,
        /// KVM refused an MSI route or an ioeventfd of a moved BAR.
        kvm_fails: Counter,
        /// Accesses to 0xCF8-0xCFF of a microVM without a PCI bus (answered all ones).
        absent_bus_accesses: Counter,
    }
}
