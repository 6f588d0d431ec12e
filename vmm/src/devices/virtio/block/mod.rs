//! virtio-blk: a drive backed by a raw image file.
//!
//! - [`request`]: parsing a descriptor chain into a request and checking its range.
//! - [`disk`]: the backing file (read-only drives are opened `O_RDONLY`).
//!
//! One queue of [`QUEUE_SIZE`]. Requests: `IN`, `OUT`, `FLUSH`, `GET_ID` (the drive id, at
//! most 20 bytes); anything else is answered `UNSUPP`. Offered features: `VERSION_1`,
//! `SEG_MAX` ([`SEG_MAX`]), `SIZE_MAX` ([`SIZE_MAX`]), `RO` for read-only drives, `FLUSH`
//! when the cache type is `Writeback` (a flush then `fdatasync`s the file; with `Unsafe` it
//! is acknowledged without syncing). A request's data is at most [`MAX_REQUEST_BYTES`] in
//! whole sectors inside the disk; anything else, and any write to a read-only drive, is
//! answered `IOERR` (counted in `block.*`). A chain that is not a request (see
//! [`super::queue::walk_chain`], or no status byte) is returned with length 0 and counted; a
//! broken available ring sets `DEVICE_NEEDS_RESET`.
//!
//! Work per event is bounded: at most [`REQUESTS_PER_EVENT`] requests or
//! [`BYTES_PER_EVENT`] bytes, then the queue waits for its next turn.
//!
//! Rate limiting (`rate_limiter`, changed by `PATCH /drives/{id}`): every request takes one
//! op, a read or write also its data bytes. One that does not fit stays in the ring and the
//! queue waits for the limiter's timer, which the device has the event loop watch.

pub mod disk;
mod persist;
pub mod request;

use super::queue::{self, add_used, pop_head, segments, walk_chain, write_stream, Chain};
use super::single_queue::{limiter_event, SingleQueue, LIMITER_TOKEN};
use super::{
    queue_broken, read_config_bytes, ActivateError, Activation, EventCtx, LogBudget, VirtioDevice,
    VIRTIO_F_VERSION_1,
};
use crate::devices::rate_limiter::RateLimiter;
use crate::metrics::METRICS;
use crate::resources::{CacheType, DriveConfig, RateLimiterConfig, ResourceError};
use disk::{Disk, DiskError};
use request::{Request, RequestError, RequestType, ID_LEN};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

pub const QUEUE_SIZE: u16 = 256;
/// Data segments per request (the queue minus the header and status descriptors).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest data segment the driver should make.
pub const SIZE_MAX: u32 = 64 << 10;
/// Largest request the device serves: what `SEG_MAX` and `SIZE_MAX` allow (~15.9 MiB).
pub const MAX_REQUEST_BYTES: u64 = SEG_MAX as u64 * SIZE_MAX as u64;
pub const REQUESTS_PER_EVENT: usize = 64;
pub const BYTES_PER_EVENT: u64 = 8 << 20;
/// Bytes of configuration space served: capacity, size_max, seg_max, geometry, blk_size.
const CONFIG_LEN: usize = 24;
/// Request statuses (VIRTIO_BLK_S_*), as the byte the device writes.
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("drive {drive_id}: {source}")]
    Disk { drive_id: String, source: DiskError },
    #[error("drive {drive_id}: {source}")]
    Backing {
        drive_id: String,
        source: ResourceError,
    },
    #[error("drive {0}: the device has no rate limiter to update")]
    NoRateLimiter(String),
}

pub struct Block {
    drive_id: String,
    id_bytes: [u8; ID_LEN],
    disk: Disk,
    cache: CacheType,
    active: Option<SingleQueue>,
    warnings: LogBudget,
    /// `None`: nothing is limited and nothing can be (the fuzz target, unit tests).
    limiter: Option<RateLimiter>,
}

impl Block {
    /// A drive on the backing file its configuration opened when it was accepted
    /// (read-only drives `O_RDONLY`).
    pub fn new(cfg: &DriveConfig) -> Result<Block, BlockError> {
        let file = cfg.backing_file().map_err(|source| BlockError::Backing {
            drive_id: cfg.drive_id.clone(),
            source,
        })?;
        let disk =
            Disk::from_file(file, &cfg.path_on_host, cfg.is_read_only).map_err(|source| {
                BlockError::Disk {
                    drive_id: cfg.drive_id.clone(),
                    source,
                }
            })?;
        let mut id_bytes = [0u8; ID_LEN];
        for (d, s) in id_bytes.iter_mut().zip(cfg.drive_id.bytes()) {
            *d = s;
        }
        Ok(Block {
            drive_id: cfg.drive_id.clone(),
            id_bytes,
            disk,
            cache: cfg.cache_type,
            active: None,
            warnings: LogBudget::new(),
            limiter: None,
        })
    }

    /// Gives the drive its rate limiter (the builder always does, so that `PATCH` can set
    /// buckets later).
    pub fn with_rate_limiter(mut self, limiter: RateLimiter) -> Block {
        self.limiter = Some(limiter);
        self
    }

    /// `PATCH /drives/{id}`: replaces the buckets `update` gives.
    pub fn update_rate_limiter(&mut self, update: &RateLimiterConfig) -> Result<(), BlockError> {
        let limiter = self
            .limiter
            .as_mut()
            .ok_or_else(|| BlockError::NoRateLimiter(self.drive_id.clone()))?;
        limiter.update(update);
        crate::log_info!(
            "drive {}: rate limiter now {:?}",
            self.drive_id,
            limiter.config()
        );
        Ok(())
    }

    /// The running rate limiter's buckets.
    pub fn rate_limiter(&self) -> Option<RateLimiterConfig> {
        self.limiter.as_ref().map(RateLimiter::config)
    }

    pub fn drive_id(&self) -> &str {
        &self.drive_id
    }

    /// Capacity in sectors, as the guest sees it.
    pub fn capacity(&self) -> u64 {
        self.disk.sectors()
    }

    /// Points the drive at another file (same read-only mode). The caller tells the driver
    /// (configuration-change interrupt): the capacity may differ.
    pub fn swap_backing(&mut self, path: &str) -> Result<(), BlockError> {
        let disk = Disk::open(path, self.disk.read_only()).map_err(|source| BlockError::Disk {
            drive_id: self.drive_id.clone(),
            source,
        })?;
        crate::log_info!(
            "drive {}: backing file {} replaced by {} ({} sectors)",
            self.drive_id,
            self.disk.path(),
            path,
            disk.sectors()
        );
        self.disk = disk;
        METRICS.block.backing_swaps.inc();
        Ok(())
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[0..8].copy_from_slice(&self.disk.sectors().to_le_bytes());
        c[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        c[20..24].copy_from_slice(&512u32.to_le_bytes());
        c
    }

    /// Serves up to the per-event limits.
    fn process(&mut self, ctx: &mut EventCtx) {
        let Block {
            disk,
            cache,
            id_bytes,
            active,
            drive_id,
            warnings,
            limiter,
        } = self;
        let Some(a) = active.as_mut() else { return };
        if a.broken {
            return;
        }
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
                    break_queue(drive_id, warnings, a, &e);
                    break;
                }
            };
            let len = match walk_chain(&a.queue, &a.mem, head) {
                Ok(chain) => {
                    let parsed = request::parse(&a.mem, &chain);
                    if let Some(l) = limiter.as_mut() {
                        if !l.consume(limited_bytes(&parsed)) {
                            // Not now: the request stays in the ring until the timer.
                            queue::unpop(&mut a.queue, 1);
                            METRICS.block.rate_limiter_throttled_events.inc();
                            break;
                        }
                    }
                    let (len, io) = execute(disk, *cache, id_bytes, &a.mem, &chain, parsed);
                    bytes += io;
                    len
                }
                Err(e) => {
                    METRICS.virtio.invalid_chains.inc();
                    crate::log_debug!("drive {drive_id}: descriptor chain {head} refused: {e}");
                    0
                }
            };
            if let Err(e) = add_used(&mut a.queue, &a.mem, head, len) {
                break_queue(drive_id, warnings, a, &e);
                break;
            }
            used = true;
            served += 1;
        }
        if used && a.queue.needs_notification(&a.mem).unwrap_or(true) {
            a.interrupt.signal_used_queue(0);
        }
        // Blocked (a request did not fit, or one larger than the bucket left a debt): the
        // timer brings the device back.
        if let Some(l) = limiter.as_ref().filter(|l| l.is_blocked()) {
            ctx.watch(LIMITER_TOKEN, l.timer_fd());
        }
    }
}

/// The bytes a request takes from the limiter's bandwidth bucket: its data for a read or a
/// write, nothing for the others (they still take an op).
fn limited_bytes(parsed: &Result<Request, RequestError>) -> u64 {
    match parsed {
        Ok(r) if matches!(r.kind, RequestType::In | RequestType::Out) => r.data_len,
        _ => 0,
    }
}

fn break_queue(
    drive_id: &str,
    warnings: &mut LogBudget,
    a: &mut SingleQueue,
    e: &queue::QueueError,
) {
    a.broken = true;
    queue_broken(&format_args!("drive {drive_id}"), warnings, &a.interrupt, e);
}

/// Executes one request; returns the used length (bytes written to the chain) and the
/// bytes of disk I/O done.
fn execute(
    disk: &mut Disk,
    cache: CacheType,
    id: &[u8; ID_LEN],
    mem: &GuestMemoryMmap,
    chain: &Chain,
    parsed: Result<Request, RequestError>,
) -> (u32, u64) {
    let req = match parsed {
        Ok(r) => r,
        Err(RequestError::NoStatus) => {
            METRICS.block.invalid_reqs_count.inc();
            return (0, 0);
        }
        Err(RequestError::ShortHeader(_)) => {
            METRICS.block.invalid_reqs_count.inc();
            let at = queue::total_len(&chain.writable).saturating_sub(1);
            let n = write_stream(mem, &chain.writable, at, &[S_IOERR]);
            return (u32::try_from(n).unwrap_or(0), 0);
        }
    };
    let capacity = disk.sectors();
    let mut written: u64 = 0;
    let mut io: u64 = 0;
    let status = match req.kind {
        RequestType::In | RequestType::Out => match req.check_range(capacity, MAX_REQUEST_BYTES) {
            Err(_) => {
                METRICS.block.out_of_range_count.inc();
                S_IOERR
            }
            Ok(_) if req.kind == RequestType::Out && disk.read_only() => {
                METRICS.block.read_only_write_count.inc();
                S_IOERR
            }
            Ok(offset) => {
                let result = if req.kind == RequestType::In {
                    disk.read_into(mem, offset, segments(&chain.writable, 0, req.data_len))
                } else {
                    disk.write_from(
                        mem,
                        offset,
                        segments(&chain.readable, request::HEADER_LEN, req.data_len),
                    )
                };
                match result {
                    Ok(()) => {
                        io = req.data_len;
                        if req.kind == RequestType::In {
                            written = req.data_len;
                            METRICS.block.read_count.inc();
                            METRICS.block.read_bytes.add(req.data_len);
                        } else {
                            METRICS.block.write_count.inc();
                            METRICS.block.write_bytes.add(req.data_len);
                        }
                        S_OK
                    }
                    Err(e) => {
                        METRICS.block.io_errors.inc();
                        crate::log_warn!("drive {}: I/O error at byte {offset}: {e}", disk.path());
                        S_IOERR
                    }
                }
            }
        },
        RequestType::Flush => {
            METRICS.block.flush_count.inc();
            let synced = if cache == CacheType::Writeback && !disk.read_only() {
                disk.sync()
            } else {
                Ok(())
            };
            match synced {
                Ok(()) => S_OK,
                Err(e) => {
                    METRICS.block.io_errors.inc();
                    crate::log_warn!("drive {}: flush failed: {e}", disk.path());
                    S_IOERR
                }
            }
        }
        RequestType::GetId => {
            let n = usize::try_from(req.data_len)
                .unwrap_or(usize::MAX)
                .min(ID_LEN);
            written = write_stream(mem, &chain.writable, 0, id.get(..n).unwrap_or(&[])) as u64;
            S_OK
        }
        RequestType::Unsupported(_) => {
            METRICS.block.unsupported_count.inc();
            S_UNSUPP
        }
    };
    if status != S_OK {
        written = 0;
    }
    let status_written = write_stream(mem, &chain.writable, req.status_offset, &[status]) as u64;
    // At most MAX_REQUEST_BYTES + 1.
    (
        u32::try_from(written + status_written).unwrap_or(u32::MAX),
        io,
    )
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn id(&self) -> &str {
        &self.drive_id
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1 | 1 << VIRTIO_BLK_F_SEG_MAX | 1 << VIRTIO_BLK_F_SIZE_MAX;
        if self.disk.read_only() {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        if self.cache == CacheType::Writeback {
            f |= 1 << VIRTIO_BLK_F_FLUSH;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.active = Some(SingleQueue::activate(
            activation,
            &METRICS.block.activate_fails,
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
        METRICS.block.queue_event_count.inc();
        self.process(ctx);
    }

    fn process_fd(&mut self, token: u64, _events: EventSet, ctx: &mut EventCtx) {
        let active = self.active.is_some();
        let fired = &METRICS.block.rate_limiter_event_count;
        if limiter_event(self.limiter.as_mut(), token, active, ctx, fired) {
            self.process(ctx);
        }
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests;
