//! virtio-net on a tap device.
//!
//! - [`tap`]: opening the tap by name (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`,
//!   no offloads).
//!
//! Two queues of [`QUEUE_SIZE`]: receive (0) and transmit (1). Offered features:
//! `VERSION_1`, `MAC` when the config gives one, `MTU` when it gives one (config space:
//! `mac` at 0, `mtu` at 10, as `virtio_net_config` lays them out), `MRG_RXBUF`. No
//! checksum or segmentation offloads: frames are whole and checksummed both ways, at most
//! [`MAX_FRAME`] bytes with the 12-byte header. Every frame carries the 12-byte
//! `virtio_net_hdr_v1`; on receive `num_buffers` is 1, or the number of buffers used when
//! `MRG_RXBUF` was negotiated; on transmit the driver's header is cleared before the frame
//! reaches the tap (nothing was negotiated that it could ask for).
//!
//! Hostile drivers: a malformed chain (see [`super::queue::walk_chain`]; a transmit chain with
//! device-writable buffers, or a frame shorter than the header or larger than
//! [`MAX_FRAME`]) is returned with length 0 and counted; a receive buffer too small for the
//! frame (without `MRG_RXBUF`) drops the frame; a broken available ring sets
//! `DEVICE_NEEDS_RESET`. At most [`FRAMES_PER_EVENT`] frames move per event and direction;
//! when the guest has no receive buffers the tap is no longer watched (frames wait in the
//! host's tap queue) until the guest posts some.
//!
//! MMDS: on an interface `mmds-config` names, each frame the guest sends is first offered
//! to the interface's [`MmdsStack`]; the frames it takes (ARP for the MMDS address, TCP to
//! its port 80) never reach the tap, and its replies are delivered before frames from the
//! tap, through the same receive path (and receive limiter).
//!
//! Rate limiting (`rx_rate_limiter`, `tx_rate_limiter`; `PATCH` changes them): each frame
//! takes one op and its bytes (without the virtio-net header). A received frame that does
//! not fit waits (the tap is not watched meanwhile, so further frames wait in the host's
//! queue); a transmitted one stays in the ring. Each side's timer brings it back.

mod deliver;
mod persist;
pub mod tap;

use super::queue::{
    self, add_used, pop_head, read_stream, total_len, unpop, walk_chain, Chain, QueueError,
};
use super::{
    queue_broken, read_config_bytes, ActivateError, Activation, EventCtx, Interrupt, LogBudget,
    VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::devices::rate_limiter::RateLimiter;
use crate::metrics::METRICS;
use crate::mmds::MmdsStack;
use crate::resources::{MacAddr, NetworkInterfaceConfig, RateLimiterConfig};
use deliver::{deliver, Delivery};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use tap::{Tap, TapError, VNET_HDR_LEN};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

pub const QUEUE_SIZE: u16 = 256;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
/// Frames moved per event and direction before other event sources get a turn.
pub const FRAMES_PER_EVENT: usize = 64;
/// Largest frame with its header: what a tap can carry (64 KiB) plus the header.
pub const MAX_FRAME: usize = 65536 + VNET_HDR_LEN;
/// The event-loop tokens of the tap's descriptor and of the rate limiters' timers.
const TAP_TOKEN: u64 = 1;
const RX_LIMITER_TOKEN: u64 = 2;
const TX_LIMITER_TOKEN: u64 = 3;
/// Offset of `mtu` in the configuration space, and the space's length with it.
const MTU_OFFSET: usize = 10;
const CONFIG_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_OFFSET: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network interface {iface_id}: {source}")]
    Tap { iface_id: String, source: TapError },
    #[error("network interface {0}: the device has no rate limiters to update")]
    NoRateLimiter(String),
}

struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<Interrupt>,
    mergeable: bool,
    broken: bool,
}

pub struct Net {
    iface_id: String,
    tap: Tap,
    mac: Option<MacAddr>,
    mtu: Option<u16>,
    active: Option<Active>,
    /// The frame read from the tap and not yet delivered (`rx_len` bytes; 0 = none).
    rx_frame: Vec<u8>,
    rx_len: usize,
    /// Whether the waiting frame has taken its tokens from the receive limiter.
    rx_paid: bool,
    tx_frame: Vec<u8>,
    /// Whether the tap is (as far as the device asked) in the event loop.
    tap_watched: bool,
    warnings: LogBudget,
    /// `None`: nothing is limited and nothing can be (unit tests).
    limiters: Option<Limiters>,
    /// The MMDS endpoint, on an interface `mmds-config` names.
    mmds: Option<MmdsStack>,
}

/// A network interface's rate limiters.
struct Limiters {
    rx: RateLimiter,
    tx: RateLimiter,
}

impl Net {
    /// Opens the interface's tap device.
    pub fn new(cfg: &NetworkInterfaceConfig) -> Result<Net, NetError> {
        let tap = Tap::open(&cfg.host_dev_name).map_err(|source| NetError::Tap {
            iface_id: cfg.iface_id.clone(),
            source,
        })?;
        Ok(Net::with_tap(cfg, tap))
    }

    /// The interface on a tap already open (`Tap::from_file` in the fuzz targets).
    #[doc(hidden)]
    pub fn with_tap(cfg: &NetworkInterfaceConfig, tap: Tap) -> Net {
        Net {
            iface_id: cfg.iface_id.clone(),
            tap,
            mac: cfg.guest_mac,
            // Validated to 68..=65535.
            mtu: cfg.mtu.and_then(|m| u16::try_from(m).ok()),
            active: None,
            rx_frame: vec![0; MAX_FRAME],
            rx_len: 0,
            rx_paid: false,
            tx_frame: vec![0; MAX_FRAME],
            tap_watched: false,
            warnings: LogBudget::new(),
            limiters: None,
            mmds: None,
        }
    }

    /// Gives the interface its receive and transmit limiters (the builder always does, so
    /// that `PATCH` can set buckets later).
    pub fn with_rate_limiters(mut self, rx: RateLimiter, tx: RateLimiter) -> Net {
        self.limiters = Some(Limiters { rx, tx });
        self
    }

    /// Answers the guest's MMDS frames with `stack` (`None`: every frame goes to the tap).
    pub fn set_mmds(&mut self, stack: Option<MmdsStack>) {
        self.mmds = stack;
    }

    /// `PATCH /network-interfaces/{id}`: replaces the buckets each update gives.
    pub fn update_rate_limiters(
        &mut self,
        rx: Option<&RateLimiterConfig>,
        tx: Option<&RateLimiterConfig>,
    ) -> Result<(), NetError> {
        let l = self
            .limiters
            .as_mut()
            .ok_or_else(|| NetError::NoRateLimiter(self.iface_id.clone()))?;
        if let Some(u) = rx {
            l.rx.update(u);
        }
        if let Some(u) = tx {
            l.tx.update(u);
        }
        crate::log_info!(
            "network interface {}: rate limiters now rx {:?}, tx {:?}",
            self.iface_id,
            l.rx.config(),
            l.tx.config()
        );
        Ok(())
    }

    /// The running limiters' buckets (receive, transmit).
    pub fn rate_limiters(&self) -> Option<(RateLimiterConfig, RateLimiterConfig)> {
        self.limiters
            .as_ref()
            .map(|l| (l.rx.config(), l.tx.config()))
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        if let Some(mac) = self.mac {
            c[..6].copy_from_slice(&mac.0);
        }
        if let Some(mtu) = self.mtu {
            c[MTU_OFFSET..].copy_from_slice(&mtu.to_le_bytes());
        }
        c
    }

    fn break_device(iface: &str, warnings: &mut LogBudget, a: &mut Active, e: &QueueError) {
        a.broken = true;
        let device = format_args!("network interface {iface}");
        queue_broken(&device, warnings, &a.interrupt, e);
    }

    fn unwatch_tap(&mut self, ctx: &mut EventCtx) {
        if self.tap_watched {
            ctx.unwatch(TAP_TOKEN);
            self.tap_watched = false;
        }
    }

    /// Moves frames from the tap to the receive queue, up to the per-event limit. Returns
    /// true when it stopped for lack of receive buffers or of rate-limiter tokens.
    fn receive(&mut self, ctx: &mut EventCtx) -> bool {
        let mut starved = false;
        let mut used = false;
        for _ in 0..FRAMES_PER_EVENT {
            if let Some(l) = self.limiters.as_mut().filter(|l| l.rx.is_blocked()) {
                ctx.watch(RX_LIMITER_TOKEN, l.rx.timer_fd());
                starved = true;
                break;
            }
            let Some(a) = self.active.as_mut().filter(|a| !a.broken) else {
                break;
            };
            if self.rx_len == 0 {
                // MMDS's replies first: they answer what the guest just sent.
                let reply = match (self.mmds.as_mut(), self.rx_frame.get_mut(VNET_HDR_LEN..)) {
                    (Some(m), Some(buf)) => m.next_frame(buf),
                    _ => None,
                };
                if let Some(n) = reply {
                    if let Some(hdr) = self.rx_frame.get_mut(..VNET_HDR_LEN) {
                        hdr.fill(0);
                    }
                    self.rx_len = VNET_HDR_LEN + n;
                }
            }
            if self.rx_len == 0 {
                match self.tap.read(&mut self.rx_frame) {
                    Ok(n) if n >= VNET_HDR_LEN => self.rx_len = n,
                    Ok(_) => {
                        METRICS.net.rx_dropped.inc();
                        continue;
                    }
                    Err(e) if Tap::is_transient(&e) => break,
                    Err(e) => {
                        METRICS.net.rx_fails.inc();
                        if self.warnings.take() {
                            crate::log_warn!(
                                "network interface {}: reading tap {}: {e}",
                                self.iface_id,
                                self.tap.name()
                            );
                        }
                        break;
                    }
                }
            }
            let Some(frame) = self.rx_frame.get_mut(..self.rx_len) else {
                self.rx_len = 0;
                continue;
            };
            if let Some(l) = self.limiters.as_mut().filter(|_| !self.rx_paid) {
                if !l.rx.consume((self.rx_len - VNET_HDR_LEN) as u64) {
                    METRICS.net.rx_rate_limiter_throttled.inc();
                    ctx.watch(RX_LIMITER_TOKEN, l.rx.timer_fd());
                    starved = true;
                    break;
                }
                self.rx_paid = true;
            }
            match deliver(a, frame) {
                Ok(Delivery::Delivered) => {
                    used = true;
                    METRICS.net.rx_packets_count.inc();
                    METRICS
                        .net
                        .rx_bytes_count
                        .add((self.rx_len - VNET_HDR_LEN) as u64);
                    self.rx_len = 0;
                    self.rx_paid = false;
                }
                Ok(Delivery::Dropped) => {
                    used = true;
                    METRICS.net.rx_dropped.inc();
                    self.rx_len = 0;
                    self.rx_paid = false;
                }
                Ok(Delivery::NoBuffers) => {
                    METRICS.net.rx_no_buffers.inc();
                    starved = true;
                    break;
                }
                Err(e) => {
                    used = true;
                    Self::break_device(&self.iface_id, &mut self.warnings, a, &e);
                    break;
                }
            }
        }
        if let Some(a) = self.active.as_mut() {
            if used && a.rx.needs_notification(&a.mem).unwrap_or(true) {
                a.interrupt.signal_used_queue(RX_QUEUE);
            }
        }
        if starved || self.active.as_ref().is_none_or(|a| a.broken) {
            self.unwatch_tap(ctx);
        }
        starved
    }

    /// Sends the guest's frames to the tap (or MMDS), up to the per-event limit; then
    /// delivers MMDS's replies, if it has some.
    fn transmit(&mut self, ctx: &mut EventCtx) {
        self.transmit_frames(ctx);
        if self.mmds.as_ref().is_some_and(MmdsStack::has_frames) {
            self.receive(ctx);
        }
    }

    fn transmit_frames(&mut self, ctx: &mut EventCtx) {
        let Some(a) = self.active.as_mut().filter(|a| !a.broken) else {
            return;
        };
        let mut used = false;
        for n in 0..=FRAMES_PER_EVENT {
            if self.limiters.as_ref().is_some_and(|l| l.tx.is_blocked()) {
                break;
            }
            if n == FRAMES_PER_EVENT {
                if queue::has_available(&a.tx, &a.mem) {
                    ctx.again();
                }
                break;
            }
            let head = match pop_head(&mut a.tx, &a.mem) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    Self::break_device(&self.iface_id, &mut self.warnings, a, &e);
                    break;
                }
            };
            match walk_chain(&a.tx, &a.mem, head) {
                Ok(chain) => {
                    if let Some(l) = self.limiters.as_mut() {
                        let len = total_len(&chain.readable);
                        if !l.tx.consume(len.saturating_sub(VNET_HDR_LEN as u64)) {
                            // Not now: the frame stays in the ring until the timer.
                            unpop(&mut a.tx, 1);
                            METRICS.net.tx_rate_limiter_throttled.inc();
                            break;
                        }
                    }
                    send(
                        &self.tap,
                        self.mmds.as_mut(),
                        &mut self.tx_frame,
                        &a.mem,
                        &chain,
                    )
                }
                Err(e) => {
                    METRICS.virtio.invalid_chains.inc();
                    METRICS.net.tx_dropped.inc();
                    crate::log_debug!(
                        "network interface {}: transmit chain {head} refused: {e}",
                        self.iface_id
                    );
                }
            }
            if let Err(e) = add_used(&mut a.tx, &a.mem, head, 0) {
                Self::break_device(&self.iface_id, &mut self.warnings, a, &e);
                break;
            }
            used = true;
        }
        if used && a.tx.needs_notification(&a.mem).unwrap_or(true) {
            a.interrupt.signal_used_queue(TX_QUEUE);
        }
        if let Some(l) = self.limiters.as_ref().filter(|l| l.tx.is_blocked()) {
            ctx.watch(TX_LIMITER_TOKEN, l.tx.timer_fd());
        }
    }

    /// Delivers what waits, then listens to the tap again unless the guest has no receive
    /// buffers or the receive limiter is blocked.
    fn receive_and_listen(&mut self, ctx: &mut EventCtx) {
        let stalled = self.receive(ctx);
        if !stalled && !self.tap_watched && self.active.as_ref().is_some_and(|a| !a.broken) {
            ctx.watch(TAP_TOKEN, self.tap.as_raw_fd());
            self.tap_watched = true;
        }
    }
}

/// Sends one transmit chain's frame to the tap, or gives it to MMDS when it is for MMDS
/// (or drops and counts it).
fn send(
    tap: &Tap,
    mmds: Option<&mut MmdsStack>,
    buf: &mut [u8],
    mem: &GuestMemoryMmap,
    chain: &Chain,
) {
    let len = total_len(&chain.readable);
    let Some(frame) = usize::try_from(len)
        .ok()
        .filter(|&l| (VNET_HDR_LEN..=MAX_FRAME).contains(&l))
        .and_then(|l| buf.get_mut(..l))
    else {
        METRICS.net.tx_dropped.inc();
        return;
    };
    if !chain.writable.is_empty() || read_stream(mem, &chain.readable, 0, frame) != frame.len() {
        METRICS.net.tx_dropped.inc();
        return;
    }
    if let Some(hdr) = frame.get_mut(..VNET_HDR_LEN) {
        hdr.fill(0);
    }
    if let (Some(m), Some(eth)) = (mmds, frame.get(VNET_HDR_LEN..)) {
        if m.detour(eth) {
            METRICS.net.tx_packets_count.inc();
            METRICS.net.tx_bytes_count.add(len - VNET_HDR_LEN as u64);
            return;
        }
    }
    match tap.write(frame) {
        Ok(_) => {
            METRICS.net.tx_packets_count.inc();
            METRICS.net.tx_bytes_count.add(len - VNET_HDR_LEN as u64);
        }
        Err(e) if Tap::is_transient(&e) => METRICS.net.tx_dropped.inc(),
        Err(_) => METRICS.net.tx_fails.inc(),
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn id(&self) -> &str {
        &self.iface_id
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MRG_RXBUF;
        if self.mac.is_some() {
            f |= 1 << VIRTIO_NET_F_MAC;
        }
        if self.mtu.is_some() {
            f |= 1 << VIRTIO_NET_F_MTU;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let Activation {
            mem,
            queues,
            features,
            interrupt,
        } = activation;
        let [rx, tx] =
            Activation::take_queues(queues, &[RX_QUEUE, TX_QUEUE], &METRICS.net.activate_fails)?;
        let mergeable = features & 1 << VIRTIO_NET_F_MRG_RXBUF != 0;
        self.active = Some(Active {
            mem,
            rx,
            tx,
            interrupt,
            mergeable,
            broken: false,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.rx_len = 0;
        self.rx_paid = false;
        if let Some(m) = self.mmds.as_mut() {
            m.reset();
        }
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn queue_positions(&self) -> Option<Vec<super::QueuePosition>> {
        Some(self.positions())
    }

    fn rate_limiters_mut(&mut self) -> Vec<&mut RateLimiter> {
        self.rx_tx_limiters()
    }

    fn process_queue(&mut self, index: usize, ctx: &mut EventCtx) {
        if self.active.as_ref().is_none_or(|a| a.broken) {
            self.unwatch_tap(ctx);
            return;
        }
        match index {
            // New receive buffers: deliver what waits, then listen to the tap again.
            RX_QUEUE => self.receive_and_listen(ctx),
            TX_QUEUE => self.transmit(ctx),
            _ => {}
        }
    }

    fn process_fd(&mut self, token: u64, _events: EventSet, ctx: &mut EventCtx) {
        let limiter = match (token, self.limiters.as_mut()) {
            (RX_LIMITER_TOKEN, Some(l)) => Some(&mut l.rx),
            (TX_LIMITER_TOKEN, Some(l)) => Some(&mut l.tx),
            _ => None,
        };
        if let Some(l) = limiter {
            l.on_timer();
        }
        let known = matches!(token, TAP_TOKEN | RX_LIMITER_TOKEN | TX_LIMITER_TOKEN);
        if !known || self.active.as_ref().is_none_or(|a| a.broken) {
            if token == TAP_TOKEN {
                self.tap_watched = false;
            }
            ctx.unwatch(token);
            return;
        }
        match token {
            RX_LIMITER_TOKEN => {
                METRICS.net.rx_event_rate_limiter_count.inc();
                self.receive_and_listen(ctx);
            }
            TX_LIMITER_TOKEN => {
                METRICS.net.tx_rate_limiter_event_count.inc();
                self.transmit(ctx);
            }
            _ => {
                self.receive(ctx);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests;
