//! virtio-vsock (device type 19) with Firecracker's host side: Unix sockets.
//!
//! - [`packet`]: the 44-byte header and the validation of every packet the guest sends.
//! - [`connection`]: one connection's state machine and credit accounting.
//! - [`muxer`]: the host side: the listening socket at `uds_path` (`CONNECT <port>\n`,
//!   answered `OK <host port>\n`), guest connections to `<uds_path>_<port>`, the connection
//!   table and its limits.
//! - [`unix`]: the nonblocking socket and timer system calls.
//!
//! Three queues of [`QUEUE_SIZE`]: receive (0, host → guest), transmit (1, guest → host) and
//! event (2; its one event, a transport reset, is sent when the device is restored from a
//! snapshot: the guest's connections did not survive the move, see [`persist`]). Feature
//! offered: `VERSION_1` only (stream sockets). Configuration space: `guest_cid` (le64).
//!
//! Work per event is bounded: at most [`PACKETS_PER_EVENT`] packets or [`BYTES_PER_EVENT`]
//! payload bytes per direction; a transmit queue with more gets another turn
//! ([`EventCtx::again`]), a receive side with more asks the muxer for one
//! ([`muxer::Muxer::request_turn`]). A malformed chain (see [`super::queue::walk_chain`]; a
//! transmit chain with device-writable buffers or fewer than 44 bytes; a receive chain with
//! device-readable buffers or fewer than 44 writable bytes) is returned with length 0 and
//! counted; a broken available ring sets `DEVICE_NEEDS_RESET`.

pub mod connection;
pub mod muxer;
pub mod packet;
mod persist;
pub mod unix;

use super::queue::{
    add_used, has_available, pop_head, read_stream, total_len, unpop, walk_chain, write_stream,
    Chain, QueueError,
};
use super::{
    queue_broken, read_config_bytes, ActivateError, Activation, EventCtx, Interrupt, LogBudget,
    VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::metrics::METRICS;
use crate::resources::VsockConfig;
use muxer::{Muxer, MuxerError};
use packet::{check_tx, PacketError, Verdict, HDR_LEN, MAX_PAYLOAD};
use std::sync::Arc;
use std::time::Instant;
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

pub const QUEUE_SIZE: u16 = 256;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;
/// Packets moved per event and direction before other event sources get a turn.
pub const PACKETS_PER_EVENT: usize = 64;
/// Payload bytes moved per event and direction before other event sources get a turn.
pub const BYTES_PER_EVENT: u64 = 1 << 20;
/// The event-loop token of the muxer's epoll descriptor.
const MUXER_TOKEN: u64 = 1;
/// The device's id in logs (one vsock device per VM, as in Firecracker).
const ID: &str = "vsock";

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("vsock (uds_path {path:?}): {source}")]
    Muxer { path: String, source: MuxerError },
}

struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    event: Queue,
    interrupt: Arc<Interrupt>,
    broken: bool,
}

pub struct Vsock {
    cid: u64,
    muxer: Muxer,
    active: Option<Active>,
    /// The muxer's epoll descriptor is (as far as the device asked) in the event loop.
    watched: bool,
    /// A reset happened on a vCPU thread: the connections are dropped on the VMM thread.
    cleanup: bool,
    /// One packet's payload either way ([`MAX_PAYLOAD`]); allocated on first use.
    scratch: Vec<u8>,
    warnings: LogBudget,
}

impl Vsock {
    /// Binds the host socket at `cfg.uds_path` (which must not exist).
    pub fn new(cfg: &VsockConfig) -> Result<Vsock, VsockError> {
        let cid = u64::from(cfg.guest_cid);
        let muxer = Muxer::new(cid, &cfg.uds_path).map_err(|source| VsockError::Muxer {
            path: cfg.uds_path.clone(),
            source,
        })?;
        Ok(Vsock {
            cid,
            muxer,
            active: None,
            watched: false,
            cleanup: false,
            scratch: Vec::new(),
            warnings: LogBudget::new(),
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.cid
    }

    pub fn uds_path(&self) -> &str {
        self.muxer.uds_path()
    }

    fn break_device(warnings: &mut LogBudget, a: &mut Active, e: &QueueError) {
        a.broken = true;
        queue_broken(&ID, warnings, &a.interrupt, e);
    }

    /// Work the VMM thread owes since the last call: a reset's cleanup, the scratch buffer.
    fn prepare(&mut self) {
        if self.cleanup {
            self.cleanup = false;
            self.muxer.reset();
        }
        if self.scratch.is_empty() && self.active.is_some() {
            self.scratch = vec![0; MAX_PAYLOAD as usize];
        }
    }

    /// Takes the guest's packets, up to the per-event limits.
    fn transmit(&mut self, ctx: &mut EventCtx) {
        let Some(a) = self.active.as_mut().filter(|a| !a.broken) else {
            return;
        };
        let now = Instant::now();
        let mut used = false;
        let mut bytes = 0u64;
        for n in 0..=PACKETS_PER_EVENT {
            if n == PACKETS_PER_EVENT || bytes >= BYTES_PER_EVENT {
                if has_available(&a.tx, &a.mem) {
                    ctx.again();
                }
                break;
            }
            let head = match pop_head(&mut a.tx, &a.mem) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    Self::break_device(&mut self.warnings, a, &e);
                    break;
                }
            };
            match walk_chain(&a.tx, &a.mem, head) {
                Ok(chain) => {
                    bytes +=
                        send_packet(&mut self.muxer, &mut self.scratch, a, &chain, self.cid, now);
                }
                Err(e) => {
                    METRICS.virtio.invalid_chains.inc();
                    METRICS.vsock.malformed_packets.inc();
                    crate::log_debug!("vsock: transmit chain {head} refused: {e}");
                }
            }
            if let Err(e) = add_used(&mut a.tx, &a.mem, head, 0) {
                Self::break_device(&mut self.warnings, a, &e);
                break;
            }
            used = true;
        }
        if used && a.tx.needs_notification(&a.mem).unwrap_or(true) {
            a.interrupt.signal_used_queue(TX_QUEUE);
        }
    }

    /// Fills the guest's receive buffers with what the muxer has for it, up to the per-event
    /// limits.
    fn receive(&mut self) {
        let Some(a) = self.active.as_mut().filter(|a| !a.broken) else {
            return;
        };
        let now = Instant::now();
        let mut used = false;
        let mut packets = 0usize;
        let mut bytes = 0u64;
        while self.muxer.has_rx_work() {
            if packets >= PACKETS_PER_EVENT || bytes >= BYTES_PER_EVENT {
                METRICS.virtio.work_deferred.inc();
                self.muxer.request_turn();
                break;
            }
            let head = match pop_head(&mut a.rx, &a.mem) {
                Ok(Some(h)) => h,
                Ok(None) => {
                    METRICS.vsock.rx_no_buffers.inc();
                    break;
                }
                Err(e) => {
                    Self::break_device(&mut self.warnings, a, &e);
                    break;
                }
            };
            let chain = match walk_chain(&a.rx, &a.mem, head) {
                Ok(c) if c.readable.is_empty() && total_len(&c.writable) >= HDR_LEN as u64 => c,
                other => {
                    if let Err(e) = other {
                        METRICS.virtio.invalid_chains.inc();
                        crate::log_debug!("vsock: receive chain {head} refused: {e}");
                    }
                    METRICS.vsock.malformed_packets.inc();
                    if let Err(e) = add_used(&mut a.rx, &a.mem, head, 0) {
                        Self::break_device(&mut self.warnings, a, &e);
                        break;
                    }
                    used = true;
                    // Counted against the limit too: refusing chains is work.
                    packets += 1;
                    continue;
                }
            };
            let room = total_len(&chain.writable).saturating_sub(HDR_LEN as u64);
            let room = usize::try_from(room.min(u64::from(MAX_PAYLOAD))).unwrap_or(0);
            let Some(buf) = self.scratch.get_mut(..room) else {
                unpop(&mut a.rx, 1);
                break;
            };
            let Some(hdr) = self.muxer.next_rx_packet(buf, now) else {
                unpop(&mut a.rx, 1);
                break;
            };
            let len = (hdr.len as usize).min(room);
            let payload = self.scratch.get(..len).unwrap_or(&[]);
            let written = write_stream(&a.mem, &chain.writable, 0, &hdr.to_bytes())
                + write_stream(&a.mem, &chain.writable, HDR_LEN as u64, payload);
            if let Err(e) = add_used(&mut a.rx, &a.mem, head, u32::try_from(written).unwrap_or(0)) {
                Self::break_device(&mut self.warnings, a, &e);
                break;
            }
            used = true;
            packets += 1;
            bytes += len as u64;
            METRICS.vsock.rx_packets_count.inc();
        }
        if used && a.rx.needs_notification(&a.mem).unwrap_or(true) {
            a.interrupt.signal_used_queue(RX_QUEUE);
        }
    }

    fn watch(&mut self, ctx: &mut EventCtx) {
        if !self.watched {
            ctx.watch(MUXER_TOKEN, self.muxer.epoll_fd());
            self.watched = true;
        }
    }
}

/// Validates one transmit chain's packet and hands it to the muxer; returns its payload size.
fn send_packet(
    muxer: &mut Muxer,
    scratch: &mut [u8],
    a: &Active,
    chain: &Chain,
    cid: u64,
    now: Instant,
) -> u64 {
    if !chain.writable.is_empty() {
        METRICS.vsock.malformed_packets.inc();
        return 0;
    }
    let mut hdr = [0u8; HDR_LEN];
    let got = read_stream(&a.mem, &chain.readable, 0, &mut hdr);
    let available = total_len(&chain.readable).saturating_sub(HDR_LEN as u64);
    match check_tx(hdr.get(..got).unwrap_or(&[]), available, cid) {
        Verdict::Accept(pkt) => {
            METRICS.vsock.tx_packets_count.inc();
            let len = usize::try_from(pkt.hdr.len).unwrap_or(0);
            let payload = match scratch.get_mut(..len) {
                Some(buf) if pkt.op == packet::Op::Rw => {
                    if read_stream(&a.mem, &chain.readable, HDR_LEN as u64, buf) != len {
                        METRICS.vsock.malformed_packets.inc();
                        return 0;
                    }
                    &buf[..]
                }
                _ => &[][..],
            };
            muxer.on_guest_packet(&pkt, payload, now);
            payload.len() as u64
        }
        Verdict::Drop(e) => {
            match e {
                PacketError::WrongSrcCid { .. } | PacketError::WrongDstCid { .. } => {
                    METRICS.vsock.bad_cid_packets.inc()
                }
                _ => METRICS.vsock.malformed_packets.inc(),
            }
            crate::log_debug!("vsock: guest packet dropped: {e}");
            0
        }
        Verdict::Reset { hdr, error } => {
            METRICS.vsock.bad_packets.inc();
            crate::log_debug!("vsock: guest packet answered with RST: {error}");
            muxer.reject(&hdr);
            0
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn id(&self) -> &str {
        ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let Activation {
            mem,
            queues,
            features: _,
            interrupt,
        } = activation;
        let [rx, tx, event] =
            Activation::take_queues(queues, &[RX_QUEUE, TX_QUEUE], &METRICS.vsock.activate_fails)?;
        self.active = Some(Active {
            mem,
            rx,
            tx,
            event,
            interrupt,
            broken: false,
        });
        Ok(())
    }

    fn reset(&mut self) {
        // Runs on a vCPU thread: the host sockets are closed on the VMM thread, which the
        // muxer's eventfd wakes (one write, as an interrupt is).
        self.active = None;
        self.cleanup = true;
        self.muxer.request_turn();
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn queue_positions(&self) -> Option<Vec<super::QueuePosition>> {
        Some(self.positions())
    }

    fn process_queue(&mut self, index: usize, ctx: &mut EventCtx) {
        self.prepare();
        if self.active.as_ref().is_none_or(|a| a.broken) {
            return;
        }
        self.watch(ctx);
        match index {
            TX_QUEUE => {
                self.transmit(ctx);
                // Answers (RESPONSE, RST, credit) go out in the same turn.
                self.receive();
            }
            RX_QUEUE => self.receive(),
            // Event buffers are kept for the transport reset of a restore.
            _ => {}
        }
    }

    fn process_fd(&mut self, token: u64, _events: EventSet, ctx: &mut EventCtx) {
        self.prepare();
        if token != MUXER_TOKEN || self.active.as_ref().is_none_or(|a| a.broken) {
            if token == MUXER_TOKEN {
                self.watched = false;
            }
            ctx.unwatch(token);
            return;
        }
        self.muxer.process_events(Instant::now());
        self.receive();
    }
}

#[cfg(test)]
mod tests;
