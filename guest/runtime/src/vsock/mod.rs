//! A virtio-vsock driver for one stream connection from the guest to the host (virtio 1.2,
//! section 5.10), polled from ring 3.
//!
//! Queues: 0 receive, 1 transmit, 2 event, [`QUEUE_SIZE`] entries each, in static memory.
//! Every chain is two descriptors, the 44-byte packet header then the data, the layout every
//! device implementation accepts (older Firecracker and rust-vmm's virtio-vsock among them).
//! Receive buffers are [`RX_SLOTS`] × [`RX_BUF`] bytes and transmit bounce buffers
//! [`TX_SLOTS`] × [`TX_BUF`], both taken from the heap at start; data is copied out of a
//! receive buffer as it is read and into a transmit buffer as it is written (natively at
//! CPL 3, cheap), so buffers go back to the device at once.
//!
//! Credit (5.10.6.3): the guest advertises `buf_alloc` = all its receive buffers and its
//! `fwd_cnt` (bytes consumed) in every packet, and sends a CREDIT_UPDATE when more than half
//! of it has been consumed unreported or when the host asks; it never sends more than the
//! host's advertised space.
//!
//! Waiting: transmit-queue interrupts are suppressed (buffers are reclaimed lazily), so the
//! vCPU sleeps (`Vsock::sleep`, a ring-0 wait) until the host sends something, or the
//! LAPIC timer fires for the waits that have a deadline.
//!
//! Modules: [`connection`] (connecting, taking what the device returned, control packets,
//! waiting), [`stream`] (reading and writing the stream), [`error`]; this one sets the device
//! up. The packet header is kiln-guest-virtio's.

// Header fields and lengths are cut to their on-wire widths; every value is in range.
#![allow(clippy::cast_possible_truncation)]

mod connection;
mod error;
mod stream;

pub use error::VsockError;

use crate::{irq, virtio};
use core::alloc::Layout;
use kiln_guest_virtio::mmio::{DEVICE_VSOCK, REG_CONFIG, REG_DEVICE_ID, REG_QUEUE_NOTIFY};
use kiln_guest_virtio::ring::{DESC_F_NEXT, DESC_F_WRITE};
use kiln_guest_virtio::vsock::HDR_LEN;
use kiln_guest_virtio::{Batch, DeviceShared, Mmio, Queue, RingMem, Stopped};

/// The start-up's register accesses, performed in one ring-0 batch: the device id's check,
/// the LAPIC's 4 (irq.rs), the IOAPIC's 2, the device's 28 (6 to negotiate, 6 per queue,
/// the CID, DRIVER_OK and its read-back, the first notification), with room to spare.
pub type StartBatch = Batch<40>;

/// Entries of every virtqueue.
pub const QUEUE_SIZE: usize = 32;
/// Room reserved for the header at the start of each buffer slot (keeps data aligned).
const SLOT_HDR: usize = 64;
/// Receive buffers, and the bytes each holds after its header.
pub const RX_SLOTS: usize = 16;
pub const RX_BUF: usize = 64 * 1024;
/// Transmit bounce buffers; one packet carries at most [`TX_BUF`] bytes (Firecracker's and
/// Linux's 64 KiB limit).
pub const TX_SLOTS: usize = 8;
pub const TX_BUF: usize = 64 * 1024;
const EVENT_SLOTS: usize = 4;
/// The guest's port of its first connection (any free port: the host keys the connection
/// on it); each connection made again after a transport reset takes the next one, so that
/// late packets of the old connection are not taken for the new one's.
pub const LOCAL_PORT: u32 = 49152;
/// The guest's receive window: all receive buffers.
const BUF_ALLOC: u32 = (RX_SLOTS * RX_BUF) as u32;

/// About one second of TSC cycles on the hosts Kiln runs on (2-3.5 GHz).
pub const ONE_SECOND_CYCLES: u64 = 3_000_000_000;
/// How often a timed wait wakes up to look at the clock (ns).
const TIMED_WAIT_TICK_NS: u32 = 5_000_000;

static RX_RING: DeviceShared<RingMem<QUEUE_SIZE>> = DeviceShared::new(RingMem::EMPTY);
static TX_RING: DeviceShared<RingMem<QUEUE_SIZE>> = DeviceShared::new(RingMem::EMPTY);
static EV_RING: DeviceShared<RingMem<QUEUE_SIZE>> = DeviceShared::new(RingMem::EMPTY);
static EV_BUFS: DeviceShared<[u64; EVENT_SLOTS]> = DeviceShared::new([0; EVENT_SLOTS]);

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Connecting,
    Connected,
    Refused,
    Closed,
    /// The device reset the transport (the VM was restored from a snapshot): the
    /// connection is gone, and a new one may be made ([`Vsock::reconnect`]).
    Reset,
}

/// Counters of what the driver did (for measurements).
#[derive(Clone, Copy, Default, Debug)]
pub struct Stats {
    /// Times the vCPU slept (`Vsock::sleep`).
    pub waits: u64,
    /// Queue notifications (each an exit).
    pub notifies: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

/// The device and the one connection.
pub struct Vsock {
    mmio: Mmio,
    pub guest_cid: u64,
    rx: Queue<QUEUE_SIZE>,
    tx: Queue<QUEUE_SIZE>,
    ev: Queue<QUEUE_SIZE>,
    rx_mem: *mut u8,
    tx_mem: *mut u8,
    /// Bit i set: transmit slot i is free.
    tx_free: u32,
    rx_notify: bool,
    /// Received data slots not yet fully read, in order: (slot, length).
    pending: [(u16, u32); RX_SLOTS],
    pending_head: usize,
    pending_len: usize,
    /// Bytes already read from the first pending slot.
    read_off: usize,
    state: State,
    local_port: u32,
    peer_port: u32,
    fwd_cnt: u32,
    fwd_sent: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    pub stats: Stats,
}

impl Vsock {
    /// Brings up the command line's virtio-vsock device with its receive and event buffers
    /// posted, in one ring-0 batch per candidate window ([`crate::arch::perform_in_ring0`]):
    /// the device id checked first (a window whose device is not virtio-vsock stops its
    /// batch before anything is written: the next one is tried), then what `prelude`
    /// records (the LAPIC's set-up), the device's interrupt routed, the short hand-shake,
    /// the three queues, the CID, DRIVER_OK, and the receive queue's first notification.
    pub fn init(cmdline: &[u8], prelude: impl Fn(&mut StartBatch)) -> Result<Vsock, VsockError> {
        let mut candidates = virtio::candidates(cmdline);
        let first = candidates.next().ok_or(VsockError::NoDevice)?;
        let rx_mem = alloc_slots(RX_SLOTS, RX_BUF)?;
        let tx_mem = alloc_slots(TX_SLOTS, TX_BUF)?;
        let mut v = Vsock {
            mmio: first,
            guest_cid: 0,
            rx: Queue::new(&RX_RING),
            tx: Queue::new(&TX_RING),
            ev: Queue::new(&EV_RING),
            rx_mem,
            tx_mem,
            tx_free: (1u32 << TX_SLOTS) - 1,
            rx_notify: false,
            pending: [(0, 0); RX_SLOTS],
            pending_head: 0,
            pending_len: 0,
            read_off: 0,
            state: State::Idle,
            local_port: LOCAL_PORT,
            peer_port: 0,
            fwd_cnt: 0,
            fwd_sent: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            stats: Stats::default(),
        };
        // Buffers posted before DRIVER_OK (virtio 1.2, 3.1.1 step 7): ring memory only.
        for slot in 0..RX_SLOTS {
            v.post_rx(slot);
        }
        let ev_base = EV_BUFS.ptr() as u64;
        for slot in 0..EVENT_SLOTS {
            v.ev.set_desc(slot, ev_base + 8 * slot as u64, 8, DESC_F_WRITE, 0);
            v.ev.push(slot as u16);
        }
        v.tx.set_no_interrupt(true);

        for mmio in core::iter::once(first).chain(candidates) {
            let mut start = StartBatch::new();
            let is_vsock = start.check(mmio.register(REG_DEVICE_ID), !0, DEVICE_VSOCK);
            prelude(&mut start);
            let routed = irq::route(&mut start, mmio.irq());
            let mut features_ok = None;
            let mut cid = None;
            if routed {
                features_ok = Some(mmio.negotiate_fresh(&mut start));
                for (index, q) in [(0u32, &v.rx), (1, &v.tx), (2, &v.ev)] {
                    mmio.setup_queue_fresh(&mut start, index, q);
                }
                // The CID's upper 32 bits are reserved and zero (virtio 1.2, 5.10.4).
                cid = Some(start.read(mmio.register(REG_CONFIG)));
                mmio.driver_ok_fresh(&mut start);
                start.write(mmio.register(REG_QUEUE_NOTIFY), 0);
            }
            // SAFETY: every address recorded is a device register: the LAPIC's and IOAPIC's
            // (irq.rs, KVM's in-kernel devices) and the window's, which `virtio::candidates`
            // took from the MMIO gap that entry.rs maps uncached and where no RAM lies.
            match start.run(|ops| unsafe { crate::arch::perform_in_ring0(ops) }) {
                Err(Stopped::Check(at, _)) if at == is_vsock => continue,
                Ok(()) if !routed => return Err(VsockError::BadIrq(mmio.irq())),
                Ok(()) => {}
                Err(Stopped::Check(at, status)) if Some(at) == features_ok => {
                    return Err(VsockError::FeaturesRefused(status));
                }
                Err(Stopped::Check(_, status)) => return Err(VsockError::DeviceFailed(status)),
                Err(Stopped::Overflow | Stopped::Short(_)) => return Err(VsockError::StartUp),
            }
            v.mmio = mmio;
            v.guest_cid = cid.and_then(|c| start.value(c)).map_or(0, u64::from);
            v.stats.notifies += 1;
            v.rx_notify = false;
            return Ok(v);
        }
        Err(VsockError::NoDevice)
    }

    pub(super) fn slot_addr(base: *mut u8, buf: usize, slot: usize) -> *mut u8 {
        base.wrapping_add(slot * (SLOT_HDR + buf))
    }

    pub(super) fn post_rx(&mut self, slot: usize) {
        let at = Self::slot_addr(self.rx_mem, RX_BUF, slot) as u64;
        let head = 2 * slot;
        self.rx.set_desc(
            head,
            at,
            HDR_LEN as u32,
            DESC_F_WRITE | DESC_F_NEXT,
            (head + 1) as u16,
        );
        self.rx.set_desc(
            head + 1,
            at + SLOT_HDR as u64,
            RX_BUF as u32,
            DESC_F_WRITE,
            0,
        );
        self.rx.push(head as u16);
        self.rx_notify = true;
    }

    pub(super) fn notify(&mut self, queue: u32) {
        self.stats.notifies += 1;
        self.mmio.notify(queue);
    }
}

/// `slots` buffer slots of a header area and `buf` data bytes each, from the heap.
fn alloc_slots(slots: usize, buf: usize) -> Result<*mut u8, VsockError> {
    let layout = Layout::from_size_align(slots * (SLOT_HDR + buf), 4096)
        .map_err(|_| VsockError::NoMemory)?;
    // SAFETY: the layout has a non-zero size.
    let p = unsafe { alloc::alloc::alloc(layout) };
    if p.is_null() {
        return Err(VsockError::NoMemory);
    }
    Ok(p)
}
