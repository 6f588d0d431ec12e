//! virtio devices and their transports.
//!
//! - [`mmio`]: the transport every device shares by default: the virtio-mmio (version 2)
//!   register file as a [`crate::devices::bus::BusDevice`], run on the vCPU threads.
//! - [`pci`]: the virtio-pci transport (`--enable-pci`), one PCI function per device with
//!   MSI-X, driving the same register file from its common configuration.
//! - [`queue`]: queue mechanics around virtio-queue's `Queue`: popping available chains and
//!   walking them with explicit limits, writing used entries.
//! - [`events`]: how devices run on the VMM thread's event loop (queue notifications through
//!   ioeventfds, device file descriptors such as a tap).
//! - [`block`], [`net`], [`vsock`], [`rng`], [`balloon`], [`mem`], [`pmem`]: the devices;
//!   each knows nothing of MMIO; [`single_queue`]: what the one-queue ones hold while active.
//! - [`setup`]: building the devices from the resources and wiring them into the VM;
//!   [`handles`]: what the running VM keeps of them for runtime changes.
//!
//! The split between threads: a vCPU thread only touches the register file (and, on
//! `DRIVER_OK` or a reset, calls [`VirtioDevice::activate`] / [`VirtioDevice::reset`]); all
//! queue processing and device I/O happens on the VMM thread. Both sides share the device
//! through a `Mutex`, and the interrupt state through the atomics of [`Interrupt`].

pub mod balloon;
pub mod block;
pub mod events;
pub mod handles;
pub mod mem;
pub mod mmio;
pub mod net;
pub mod pci;
pub mod pmem;
pub mod queue;
pub mod rng;
pub mod setup;
pub mod single_queue;
pub mod vsock;

use crate::devices::rate_limiter::RateLimiter;
use crate::metrics::{Counter, METRICS};
use queue::QueueError;
use std::fmt::Display;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// Feature bit every Kiln device offers and requires: the device is a modern (virtio 1.x)
/// device, little-endian, any descriptor layout.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// Most bytes of a device's own saved state ([`VirtioDevice::save_device_state`]).
pub const MAX_DEVICE_STATE: usize = 256;

/// Why a device refused to start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivateError {
    #[error("the device needs {need} queues, the transport gave {got}")]
    QueueCount { need: usize, got: usize },
    #[error("queue {0} is required but the driver did not make it ready")]
    QueueNotReady(usize),
    #[error("queue {index} is invalid: {reason}")]
    BadQueue { index: usize, reason: String },
    #[error("the driver did not accept VIRTIO_F_VERSION_1")]
    NotModern,
    #[error("the driver did not accept {0}, which the device requires")]
    MissingFeature(&'static str),
}

/// What a device gets when the driver sets `DRIVER_OK`.
pub struct Activation {
    pub mem: GuestMemoryMmap,
    /// One per entry of [`VirtioDevice::queue_max_sizes`], configured by the driver; a queue
    /// the driver did not enable has `ready() == false`.
    pub queues: Vec<Queue>,
    /// The feature bits the driver accepted (a subset of [`VirtioDevice::features`]).
    pub features: u64,
    pub interrupt: std::sync::Arc<Interrupt>,
}

impl Activation {
    /// Takes the first `N` queues the driver configured (the device's queues), checking that
    /// each index in `required` is ready. A refusal is counted in `fails` (the device's
    /// `activate_fails`).
    pub fn take_queues<const N: usize>(
        queues: Vec<Queue>,
        required: &[usize],
        fails: &Counter,
    ) -> Result<[Queue; N], ActivateError> {
        let got = queues.len();
        let first = Self::take_queue_vec(queues, N, required, fails)?;
        <[Queue; N]>::try_from(first).map_err(|_| {
            fails.inc();
            ActivateError::QueueCount { need: N, got }
        })
    }

    /// [`Self::take_queues`] for a device whose number of queues depends on the negotiated
    /// features: the first `n`.
    pub fn take_queue_vec(
        queues: Vec<Queue>,
        n: usize,
        required: &[usize],
        fails: &Counter,
    ) -> Result<Vec<Queue>, ActivateError> {
        let got = queues.len();
        if got < n {
            fails.inc();
            return Err(ActivateError::QueueCount { need: n, got });
        }
        let queues: Vec<Queue> = queues.into_iter().take(n).collect();
        let not_ready = required
            .iter()
            .find(|&&i| queues.get(i).is_some_and(|q| !q.ready()));
        if let Some(&index) = not_ready {
            fails.inc();
            return Err(ActivateError::QueueNotReady(index));
        }
        Ok(queues)
    }
}

/// A virtio device, independent of the transport.
///
/// The transport calls the configuration methods on a vCPU thread; the event loop calls
/// [`Self::process_queue`] and [`Self::process_fd`] on the VMM thread. No method may panic on
/// anything the guest controls, and every method bounds its work.
pub trait VirtioDevice: Send {
    /// virtio device ID (1 net, 2 block, 4 rng, 5 balloon, 19 vsock, 24 mem).
    fn device_type(&self) -> u32;
    /// A name for logs (the drive or interface id).
    fn id(&self) -> &str;
    /// Maximum size of each queue (a power of two, at most 32768); the number of queues is
    /// the slice's length.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered to the driver, [`VIRTIO_F_VERSION_1`] included.
    fn features(&self) -> u64;
    /// Reads device configuration space at `offset`; bytes beyond its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// A driver write to configuration space; returns false when it was refused (the
    /// transport counts it). The default refuses every write.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) -> bool {
        false
    }
    /// Starts the device (the driver set `DRIVER_OK`). On error the transport sets
    /// `DEVICE_NEEDS_RESET`.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Returns to the state before activation, dropping the queues, guest memory and any
    /// in-flight work (the driver wrote 0 to the status register).
    fn reset(&mut self);
    fn is_activated(&self) -> bool;
    /// The guest notified queue `index`. Runs on the VMM thread; the queue's eventfd has been
    /// drained. Call [`EventCtx::again`] when work was left for later.
    fn process_queue(&mut self, index: usize, ctx: &mut EventCtx);
    /// A file descriptor the device asked to watch (with [`EventCtx::watch`]) is readable or
    /// hung up. The default stops watching it.
    fn process_fd(&mut self, token: u64, _events: EventSet, ctx: &mut EventCtx) {
        ctx.unwatch(token);
    }
    /// Snapshots: where the started device is in each of its queues, in queue order (the
    /// transport saves them with its registers and restarts the device there). `None`: the
    /// device cannot be snapshotted once started, which is the default: a device opts in
    /// (in its `persist` module) once everything the guest can observe of it is restored.
    fn queue_positions(&self) -> Option<Vec<QueuePosition>> {
        None
    }
    /// Snapshots: the restored device takes what the driver wrote into its configuration
    /// space (`saved`, as the snapshot has it) before the transport compares the two. The
    /// default: the driver writes nothing there.
    fn restore_config(&mut self, _saved: &[u8]) {}
    /// Snapshots: state of the device the guest cannot read from its queues or its
    /// configuration space (bytes the device defines, at most [`MAX_DEVICE_STATE`]; saved
    /// from format v1.1 on). The default: none.
    fn save_device_state(&self) -> Vec<u8> {
        Vec::new()
    }
    /// Snapshots: takes what [`Self::save_device_state`] gave (empty from a snapshot of
    /// format v1.0), before the transport compares the configuration space. The default
    /// takes nothing, and refuses anything else.
    fn restore_device_state(&mut self, saved: &[u8]) -> Result<(), String> {
        if saved.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} bytes of device state, where this device keeps none",
                saved.len()
            ))
        }
    }
    /// Snapshots: the device's rate limiters, always in the same order (a network
    /// interface's receive then transmit limiter), whose buckets the transport saves and
    /// restores with the queues. The default: none.
    fn rate_limiters_mut(&mut self) -> Vec<&mut RateLimiter> {
        Vec::new()
    }
}

/// Snapshots: a started queue's position, the device's next available and used indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueuePosition {
    pub next_avail: u16,
    pub next_used: u16,
}

impl QueuePosition {
    pub fn of(q: &Queue) -> Self {
        QueuePosition {
            next_avail: q.next_avail(),
            next_used: q.next_used(),
        }
    }
}

/// What a device asks of the event loop after handling an event: file descriptors to start
/// or stop watching (by the device's own token), and whether the queue it was handling
/// needs another turn. Later requests for the same token replace earlier ones; watching a
/// watched token or unwatching an unwatched one does nothing.
#[derive(Debug, Default)]
pub struct EventCtx {
    changes: Vec<(u64, Option<RawFd>)>,
    again: bool,
}

impl EventCtx {
    /// Starts watching `fd` for readability; events come back as `process_fd(token, ..)`.
    pub fn watch(&mut self, token: u64, fd: RawFd) {
        self.set(token, Some(fd));
    }

    /// Stops watching the descriptor registered under `token`.
    pub fn unwatch(&mut self, token: u64) {
        self.set(token, None);
    }

    /// The device stopped at its per-event work limit: the queue being processed gets
    /// another turn after the other event sources had theirs.
    pub fn again(&mut self) {
        self.again = true;
    }

    fn set(&mut self, token: u64, fd: Option<RawFd>) {
        match self.changes.iter_mut().find(|(t, _)| *t == token) {
            Some(c) => c.1 = fd,
            None => self.changes.push((token, fd)),
        }
    }

    pub(crate) fn take_changes(&mut self) -> Vec<(u64, Option<RawFd>)> {
        std::mem::take(&mut self.changes)
    }

    pub(crate) fn wants_again(&self) -> bool {
        self.again
    }
}

/// Where a device's interrupts go, as its transport decides: one line for every cause
/// (virtio-mmio: an irqfd on an IOAPIC pin), or a vector per queue and one for
/// configuration changes (virtio-pci with MSI-X: see [`VectorSink`]).
enum Delivery {
    Line(EventFd),
    Vectors(std::sync::Arc<dyn VectorSink>),
}

/// A transport that signals each queue and the configuration change separately (MSI-X
/// vectors the driver assigned). Called from the VMM thread; must not block on the guest.
pub trait VectorSink: Send + Sync {
    /// Queue `index` has new used entries.
    fn queue(&self, index: usize);
    /// The configuration changed (or the device needs a reset).
    fn config(&self);
}

/// A device's interrupts and the state the guest reads through the transport:
/// InterruptStatus (the ISR), ConfigGeneration and `DEVICE_NEEDS_RESET`. Shared between the
/// transport (vCPU threads) and the device (VMM thread); lock-free.
pub struct Interrupt {
    status: AtomicU32,
    generation: AtomicU32,
    needs_reset: AtomicBool,
    delivery: Delivery,
}

impl Interrupt {
    /// One line for every cause: `irqfd` is registered with KVM for the device's IRQ.
    pub fn new(irqfd: EventFd) -> Self {
        Self::with(Delivery::Line(irqfd))
    }

    /// A vector per cause, raised through `sink`.
    pub fn with_vectors(sink: std::sync::Arc<dyn VectorSink>) -> Self {
        Self::with(Delivery::Vectors(sink))
    }

    fn with(delivery: Delivery) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            generation: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            delivery,
        }
    }

    /// `queue`: the queue that has used entries, or `None` for a configuration change.
    fn raise(&self, bit: u32, queue: Option<usize>) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        match (&self.delivery, queue) {
            (Delivery::Line(irqfd), _) => {
                if irqfd.write(1).is_err() {
                    METRICS.virtio.interrupt_fails.inc();
                }
            }
            (Delivery::Vectors(sink), Some(index)) => sink.queue(index),
            (Delivery::Vectors(sink), None) => sink.config(),
        }
    }

    /// The device put buffers in queue `index`'s used ring.
    pub fn signal_used_queue(&self, index: usize) {
        self.raise(VIRTIO_MMIO_INT_VRING, Some(index));
    }

    /// The device's configuration changed (e.g. a drive's capacity): the generation moves and
    /// the driver is told.
    pub fn signal_config_change(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.raise(VIRTIO_MMIO_INT_CONFIG, None);
    }

    /// The guest broke the device (a corrupt ring, an invalid queue): the status register
    /// shows `DEVICE_NEEDS_RESET` until the driver resets the device, and the driver gets a
    /// configuration-change interrupt, as the virtio spec asks.
    pub fn signal_needs_reset(&self) {
        if !self.needs_reset.swap(true, Ordering::SeqCst) {
            METRICS.virtio.needs_reset.inc();
        }
        self.raise(VIRTIO_MMIO_INT_CONFIG, None);
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Reads and clears the status (virtio-pci's ISR: reading it acknowledges it).
    pub fn take_status(&self) -> u32 {
        self.status.swap(0, Ordering::SeqCst)
    }

    /// InterruptACK: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::SeqCst)
    }

    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// Device reset: no pending interrupt, no longer broken.
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}

/// How many warnings a device may log about what its guest did: a guest that breaks its
/// device over and over (each time resetting it) must not flood the log. The metrics keep
/// counting.
#[derive(Debug)]
pub struct LogBudget(u32);

impl LogBudget {
    pub const WARNINGS: u32 = 10;

    pub const fn new() -> Self {
        LogBudget(Self::WARNINGS)
    }

    /// True while warnings may still be logged; uses one.
    pub fn take(&mut self) -> bool {
        match self.0.checked_sub(1) {
            Some(left) => {
                self.0 = left;
                true
            }
            None => false,
        }
    }
}

impl Default for LogBudget {
    fn default() -> Self {
        Self::new()
    }
}

/// The driver broke one of a device's queues (an available index out of range, a used ring
/// that cannot be written): counts it, warns while `warnings` allows, and shows the driver
/// `DEVICE_NEEDS_RESET`. `device` names the device in the warning (`drive rootfs`); the
/// device stops using its queues until the driver resets it.
pub fn queue_broken(
    device: &dyn Display,
    warnings: &mut LogBudget,
    interrupt: &Interrupt,
    e: &QueueError,
) {
    match e {
        QueueError::AvailIndex { .. } | QueueError::HeadIndex { .. } => {
            METRICS.virtio.avail_ring_errors.inc()
        }
        QueueError::UsedWrite { .. } => METRICS.virtio.used_ring_errors.inc(),
        QueueError::AvailRead { .. } | QueueError::NotReady => {}
    }
    if warnings.take() {
        crate::log_warn!("{device}: the driver broke a queue ({e}); the device needs a reset");
    }
    interrupt.signal_needs_reset();
}

/// Copies the bytes of `config` at `offset` into `data`, zero-filling past its end.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        if let (Some(d), Some(s)) = (data.get_mut(..n), src.get(..n)) {
            d.copy_from_slice(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded() {
        let cfg = [1u8, 2, 3, 4];
        let mut d = [0xffu8; 4];
        read_config_bytes(&cfg, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&cfg, 100, &mut d);
        assert_eq!(d, [0; 4]);
        read_config_bytes(&cfg, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }

    #[test]
    fn event_requests_keep_the_last_word_per_token() {
        let mut ctx = EventCtx::default();
        ctx.watch(1, 10);
        ctx.unwatch(2);
        ctx.unwatch(1);
        assert_eq!(ctx.take_changes(), vec![(1, None), (2, None)]);
        assert!(!ctx.wants_again());
    }

    #[test]
    fn interrupt_state() {
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        irq.signal_used_queue(0);
        irq.signal_config_change();
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(irq.generation(), 1);
        irq.ack(VIRTIO_MMIO_INT_VRING);
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_CONFIG);
        irq.signal_needs_reset();
        assert!(irq.needs_reset());
        irq.reset();
        assert!(!irq.needs_reset());
        assert_eq!(irq.status(), 0);
        let Delivery::Line(irqfd) = &irq.delivery else {
            panic!("a line interrupt");
        };
        assert_eq!(irqfd.read().unwrap(), 3);
    }
}
