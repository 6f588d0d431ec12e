//! virtio-mem (`memory-hotplug`, `PUT`/`PATCH`/`GET /hotplug/memory`): memory the guest
//! plugs and unplugs in blocks at run time, as the host's `requested_size` asks.
//!
//! The device owns a region of guest-physical space past the 64-bit MMIO window
//! ([`crate::arch::x86_64::layout::DEVICE_MEMORY_START`]), reserved in the VMM's address
//! space but unplugged at boot ([`region`]: the blocks, the KVM slots, giving memory back).
//! The host raises or lowers `requested_size` (`PATCH`), which raises a configuration-change
//! interrupt; the driver then sends requests on the device's one queue ([`request`]):
//!
//! - PLUG a range: ACK when every block is inside the usable region, block-aligned and
//!   unplugged, and the plugged size stays within `requested_size`; NACK when it would not
//!   (the spec lets the device refuse for now); BUSY when KVM refused a slot; ERROR for an
//!   invalid range or a block already plugged;
//! - UNPLUG a range: ACK when every block is plugged (its pages go back to the host); ERROR
//!   otherwise;
//! - UNPLUG_ALL: ACK, everything unplugged and given back;
//! - STATE of a range: ACK with PLUGGED, UNPLUGGED or MIXED; ERROR for an invalid range.
//!
//! A chain that is not a request (shorter than 24 readable bytes, no 10-byte writable
//! response buffer, an unknown type) is answered ERROR when it has room for the answer,
//! else returned empty, and counted (`memory_hotplug.invalid_requests`). A broken ring sets
//! `DEVICE_NEEDS_RESET`. Work per queue event is bounded ([`REQUESTS_PER_EVENT`]).
//!
//! The usable region starts empty and grows, in whole slots, to cover `requested_size`
//! (as Firecracker does); UNPLUG_ALL shrinks it back to what `requested_size` needs. The
//! device offers and requires `VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE`: the driver must not
//! touch unplugged memory, and the host does not map it for the guest (Linux 5.16 or later).
//! A device reset keeps the blocks' state (virtio 1.2, 5.15.5.2).
//!
//! Snapshots ([`persist`]): the device's geometry, request, usable region and plugged-block
//! bitmap in the state file's own section; the plugged blocks' contents in the memory file
//! after the RAM (unplugged blocks are holes); a restore registers exactly the slots that
//! hold plugged blocks and leaves unplugged memory unbacked ([`crate::persist`]).

pub mod persist;
pub mod region;
pub mod request;

use super::queue::{self, add_used, pop_head, read_stream, total_len, walk_chain, write_stream};
use super::single_queue::SingleQueue;
use super::{
    queue_broken, ActivateError, Activation, EventCtx, LogBudget, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::metrics::METRICS;
use region::{HotplugRegion, RegionError};
use request::{Geometry, Request, Response, REQUEST_SIZE, RESPONSE_SIZE};
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;

/// virtio device ID of virtio-mem.
pub const DEVICE_TYPE: u32 = 24;
/// The device's id (logs), Firecracker's.
pub const ID: &str = "mem";
pub const QUEUE_SIZE: u16 = 128;
/// `VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE`: the driver does not touch unplugged memory.
pub const F_UNPLUGGED_INACCESSIBLE: u64 = 1 << 1;
/// Requests served per queue event before the queue waits for its next turn.
pub const REQUESTS_PER_EVENT: usize = 64;
/// Bytes of the configuration space (`struct virtio_mem_config`).
pub const CONFIG_SIZE: usize = 56;

/// Why a host request (`PATCH /hotplug/memory`) was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VirtioMemError {
    #[error("the guest has not started its virtio-mem driver yet (the device is not active)")]
    NotActive,
    #[error("requested_size_mib {requested} is not a multiple of block_size_mib ({block} MiB)")]
    NotBlockMultiple { requested: u32, block: u64 },
    #[error("requested_size_mib {requested} is more than total_size_mib ({total} MiB)")]
    TooLarge { requested: u32, total: u64 },
}

/// `GET /hotplug/memory` (Firecracker's `MemoryHotplugStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct VirtioMemStatus {
    pub total_size_mib: u64,
    pub slot_size_mib: u64,
    pub block_size_mib: u64,
    pub plugged_size_mib: u64,
    pub requested_size_mib: u64,
}

pub struct VirtioMem {
    region: HotplugRegion,
    requested: u64,
    usable: u64,
    active: Option<SingleQueue>,
    warnings: LogBudget,
}

impl VirtioMem {
    /// The device over the region `[addr, addr + total)` of `mem` (see
    /// [`HotplugRegion::new`]), everything unplugged.
    pub fn new(
        mem: &GuestMemoryMmap,
        addr: u64,
        total: u64,
        block: u64,
        slot: u64,
    ) -> Result<VirtioMem, RegionError> {
        Ok(VirtioMem {
            region: HotplugRegion::new(mem, addr, total, block, slot)?,
            requested: 0,
            usable: 0,
            active: None,
            warnings: LogBudget::new(),
        })
    }

    pub fn region(&self) -> &HotplugRegion {
        &self.region
    }

    pub fn region_mut(&mut self) -> &mut HotplugRegion {
        &mut self.region
    }

    pub fn usable_size(&self) -> u64 {
        self.usable
    }

    pub fn status(&self) -> VirtioMemStatus {
        VirtioMemStatus {
            total_size_mib: self.region.size() >> 20,
            slot_size_mib: self.region.slot_size() >> 20,
            block_size_mib: self.region.block_size() >> 20,
            plugged_size_mib: self.region.plugged_bytes() >> 20,
            requested_size_mib: self.requested >> 20,
        }
    }

    /// `PATCH /hotplug/memory`: the size the driver should plug, a multiple of the block
    /// size within the region; the usable region grows (in whole slots) to cover it, and the
    /// driver gets a configuration-change interrupt.
    pub fn update_requested_size(&mut self, requested_mib: u32) -> Result<(), VirtioMemError> {
        let Some(a) = self.active.as_ref() else {
            return Err(VirtioMemError::NotActive);
        };
        let bytes = u64::from(requested_mib) << 20;
        if bytes % self.region.block_size() != 0 {
            return Err(VirtioMemError::NotBlockMultiple {
                requested: requested_mib,
                block: self.region.block_size() >> 20,
            });
        }
        if bytes > self.region.size() {
            return Err(VirtioMemError::TooLarge {
                requested: requested_mib,
                total: self.region.size() >> 20,
            });
        }
        self.requested = bytes;
        self.usable = self.usable.max(self.usable_for(bytes));
        a.interrupt.signal_config_change();
        Ok(())
    }

    /// The usable size `requested` needs: whole slots.
    fn usable_for(&self, requested: u64) -> u64 {
        requested
            .div_ceil(self.region.slot_size())
            .saturating_mul(self.region.slot_size())
            .min(self.region.size())
    }

    fn config(&self) -> [u8; CONFIG_SIZE] {
        let mut c = [0u8; CONFIG_SIZE];
        let fields: [(usize, u64); 6] = [
            (0, self.region.block_size()),
            (16, self.region.addr()),
            (24, self.region.size()),
            (32, self.usable),
            (40, self.region.plugged_bytes()),
            (48, self.requested),
        ];
        for (at, v) in fields {
            c[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        c
    }

    fn geometry(&self) -> Geometry {
        Geometry {
            addr: self.region.addr(),
            block: self.region.block_size(),
            usable: self.usable,
        }
    }

    /// Decides one request (and carries out what it asks).
    pub fn handle(&mut self, req: Request) -> Response {
        let m = &METRICS.memory_hotplug;
        let block = self.region.block_size();
        let refused = |what: &str, e: &dyn std::fmt::Display, warnings: &mut LogBudget| {
            if warnings.take() {
                crate::log_warn!("virtio-mem: {what} refused: {e}");
            }
        };
        match req {
            Request::Plug(range) => {
                m.plug_count.inc();
                let (first, n) = match self.geometry().blocks(range) {
                    Ok(b) => b,
                    Err(e) => {
                        m.plug_fails.inc();
                        refused("PLUG", &e, &mut self.warnings);
                        return Response::Error;
                    }
                };
                if self.region.state(first, n) != request::BlockState::Unplugged {
                    m.plug_fails.inc();
                    refused("PLUG", &"a block is already plugged", &mut self.warnings);
                    return Response::Error;
                }
                if self.region.plugged_bytes() + n * block > self.requested {
                    m.plug_fails.inc();
                    m.plug_nacks.inc();
                    return Response::Nack;
                }
                match self.region.plug(first, n) {
                    Ok(()) => {
                        m.plug_bytes.add(n * block);
                        Response::Ack
                    }
                    Err(e) => {
                        m.plug_fails.inc();
                        refused("PLUG", &e, &mut self.warnings);
                        Response::Busy
                    }
                }
            }
            Request::Unplug(range) => {
                m.unplug_count.inc();
                let (first, n) = match self.geometry().blocks(range) {
                    Ok(b) => b,
                    Err(e) => {
                        m.unplug_fails.inc();
                        refused("UNPLUG", &e, &mut self.warnings);
                        return Response::Error;
                    }
                };
                if self.region.state(first, n) != request::BlockState::Plugged {
                    m.unplug_fails.inc();
                    refused("UNPLUG", &"a block is not plugged", &mut self.warnings);
                    return Response::Error;
                }
                self.region.unplug(first, n);
                m.unplug_bytes.add(n * block);
                Response::Ack
            }
            Request::UnplugAll => {
                m.unplug_all_count.inc();
                self.region.unplug_all();
                self.usable = self.usable_for(self.requested);
                Response::Ack
            }
            Request::State(range) => {
                m.state_count.inc();
                match self.geometry().blocks(range) {
                    Ok((first, n)) => Response::State(self.region.state(first, n)),
                    Err(e) => {
                        m.state_fails.inc();
                        refused("STATE", &e, &mut self.warnings);
                        Response::Error
                    }
                }
            }
        }
    }

    /// One chain: its request read, decided and answered; returns the bytes written.
    fn serve(&mut self, mem: &GuestMemoryMmap, chain: &queue::Chain) -> u32 {
        let mut bytes = [0u8; REQUEST_SIZE];
        let has_room = total_len(&chain.writable) >= RESPONSE_SIZE as u64;
        let read = read_stream(mem, &chain.readable, 0, &mut bytes);
        let response = if read < REQUEST_SIZE || !has_room {
            METRICS.memory_hotplug.invalid_requests.inc();
            Response::Error
        } else {
            match Request::decode(&bytes) {
                Ok(req) => self.handle(req),
                Err(e) => {
                    METRICS.memory_hotplug.invalid_requests.inc();
                    crate::log_debug!("virtio-mem: {e}");
                    Response::Error
                }
            }
        };
        if !has_room {
            return 0;
        }
        let n = write_stream(mem, &chain.writable, 0, &response.encode());
        u32::try_from(n).unwrap_or(0)
    }

    /// Serves up to [`REQUESTS_PER_EVENT`] requests.
    fn process(&mut self, ctx: &mut EventCtx) {
        let Some(mut a) = self.active.take() else {
            return;
        };
        if !a.broken {
            self.process_active(&mut a, ctx);
        }
        self.active = Some(a);
    }

    fn process_active(&mut self, a: &mut SingleQueue, ctx: &mut EventCtx) {
        METRICS.memory_hotplug.queue_event_count.inc();
        let mut used = false;
        for served in 0.. {
            if served >= REQUESTS_PER_EVENT {
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
                    METRICS.memory_hotplug.queue_event_fails.inc();
                    queue_broken(
                        &"the virtio-mem device",
                        &mut self.warnings,
                        &a.interrupt,
                        &e,
                    );
                    break;
                }
            };
            let len = match walk_chain(&a.queue, &a.mem, head) {
                Ok(chain) => self.serve(&a.mem, &chain),
                Err(e) => {
                    METRICS.virtio.invalid_chains.inc();
                    METRICS.memory_hotplug.invalid_requests.inc();
                    crate::log_debug!("virtio-mem: descriptor chain {head} refused: {e}");
                    0
                }
            };
            if let Err(e) = add_used(&mut a.queue, &a.mem, head, len) {
                a.broken = true;
                METRICS.memory_hotplug.queue_event_fails.inc();
                queue_broken(
                    &"the virtio-mem device",
                    &mut self.warnings,
                    &a.interrupt,
                    &e,
                );
                break;
            }
            used = true;
        }
        if used && a.queue.needs_notification(&a.mem).unwrap_or(true) {
            a.interrupt.signal_used_queue(0);
        }
    }
}

impl VirtioDevice for VirtioMem {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn id(&self) -> &str {
        ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | F_UNPLUGGED_INACCESSIBLE
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let config = self.config();
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = config.get(start..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if activation.features & F_UNPLUGGED_INACCESSIBLE == 0 {
            METRICS.memory_hotplug.activate_fails.inc();
            return Err(ActivateError::MissingFeature(
                "VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE",
            ));
        }
        self.active = Some(SingleQueue::activate(
            activation,
            &METRICS.memory_hotplug.activate_fails,
        )?);
        Ok(())
    }

    fn reset(&mut self) {
        // The blocks keep their state across a reset (virtio 1.2, 5.15.5.2).
        self.active = None;
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn queue_positions(&self) -> Option<Vec<super::QueuePosition>> {
        Some(self.positions())
    }

    fn process_queue(&mut self, _index: usize, ctx: &mut EventCtx) {
        self.process(ctx);
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests;
