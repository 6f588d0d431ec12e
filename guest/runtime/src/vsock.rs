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
//! vCPU sleeps in [`crate::arch::wait_for_interrupt`] until the host sends something, or the
//! LAPIC timer fires for the waits that have a deadline.

// Header fields and lengths are cut to their on-wire widths; every value is in range.
#![allow(clippy::cast_possible_truncation)]

use crate::arch::{rdtsc, wait_for_interrupt};
use crate::irq;
use crate::virtio::{self, DeviceShared, Mmio, Queue, RingMem, DESC_F_NEXT, DESC_F_WRITE};
use core::alloc::Layout;
use core::fmt;

pub use crate::virtio::QUEUE_SIZE;

/// Size of the packet header.
pub const HDR_LEN: usize = 44;
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
/// The guest's port of its connection (any free port: the host keys the connection on it).
pub const LOCAL_PORT: u32 = 49152;
/// The guest's receive window: all receive buffers.
const BUF_ALLOC: u32 = (RX_SLOTS * RX_BUF) as u32;

const TYPE_STREAM: u16 = 1;
const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_SHUTDOWN: u16 = 4;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
const OP_CREDIT_REQUEST: u16 = 7;
/// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.
const EVENT_TRANSPORT_RESET: u32 = 0;

/// About one second of TSC cycles on the hosts Kiln runs on (2-3.5 GHz).
pub const ONE_SECOND_CYCLES: u64 = 3_000_000_000;
/// How often a timed wait wakes up to look at the clock (ns).
const TIMED_WAIT_TICK_NS: u32 = 5_000_000;

static RX_RING: DeviceShared<RingMem> = DeviceShared::new(virtio::EMPTY_RING);
static TX_RING: DeviceShared<RingMem> = DeviceShared::new(virtio::EMPTY_RING);
static EV_RING: DeviceShared<RingMem> = DeviceShared::new(virtio::EMPTY_RING);
static EV_BUFS: DeviceShared<[u64; EVENT_SLOTS]> = DeviceShared::new([0; EVENT_SLOTS]);

/// Why the vsock stream could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VsockError {
    /// No `virtio_mmio.device=` entry answers as a virtio-vsock device.
    NoDevice,
    /// The device's IRQ is not an IOAPIC pin.
    BadIrq(u32),
    /// The heap could not hold the buffers.
    NoMemory,
    /// The device refused VIRTIO_F_VERSION_1 (status read back).
    FeaturesRefused(u32),
    /// DRIVER_OK did not stick (status read back).
    DeviceFailed(u32),
    /// The host refused the connection (RST): nobody listens on the port.
    Refused { port: u32 },
    /// No answer from the host in time.
    Timeout,
    /// The host closed the connection (SHUTDOWN or RST) or the transport was reset.
    Closed,
}

impl fmt::Display for VsockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VsockError::NoDevice => write!(f, "no virtio-vsock device on the command line"),
            VsockError::BadIrq(irq) => write!(f, "virtio-vsock irq {irq} is not an IOAPIC pin"),
            VsockError::NoMemory => write!(f, "no memory for the vsock buffers"),
            VsockError::FeaturesRefused(s) => {
                write!(f, "virtio-vsock refused VERSION_1 (status {s:#x})")
            }
            VsockError::DeviceFailed(s) => write!(
                f,
                "virtio-vsock did not start (status {s:#x}; its queues must hold {QUEUE_SIZE} entries)"
            ),
            VsockError::Refused { port } => {
                write!(f, "the host refused the connection to port {port}")
            }
            VsockError::Timeout => write!(f, "no answer from the host"),
            VsockError::Closed => write!(f, "the host closed the connection"),
        }
    }
}

/// The packet header, as on the wire (little endian, packed).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct Hdr {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    kind: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

const _: () = assert!(core::mem::size_of::<Hdr>() == HDR_LEN);

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Connecting,
    Connected,
    Refused,
    Closed,
}

/// Counters of what the driver did (for measurements).
#[derive(Clone, Copy, Default, Debug)]
pub struct Stats {
    /// Times the vCPU slept in `wait_for_interrupt`.
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
    rx: Queue,
    tx: Queue,
    ev: Queue,
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
    peer_port: u32,
    fwd_cnt: u32,
    fwd_sent: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    pub stats: Stats,
}

impl Vsock {
    /// Finds the device on the command line, routes its interrupt, negotiates, sets up the
    /// three queues and posts every receive and event buffer.
    pub fn init(cmdline: &[u8]) -> Result<Vsock, VsockError> {
        let mmio = virtio::find(cmdline, virtio::DEVICE_VSOCK).ok_or(VsockError::NoDevice)?;
        if !irq::route(mmio.irq) {
            return Err(VsockError::BadIrq(mmio.irq));
        }
        let rx_mem = alloc_slots(RX_SLOTS, RX_BUF)?;
        let tx_mem = alloc_slots(TX_SLOTS, TX_BUF)?;
        let status = mmio.negotiate();
        if status & virtio::STATUS_FEATURES_OK == 0 {
            return Err(VsockError::FeaturesRefused(status));
        }
        let mut v = Vsock {
            mmio,
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
            peer_port: 0,
            fwd_cnt: 0,
            fwd_sent: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            stats: Stats::default(),
        };
        for (index, q) in [(0u32, &v.rx), (1, &v.tx), (2, &v.ev)] {
            mmio.setup_queue(index, q);
        }
        v.guest_cid = u64::from(mmio.config_u32(0)) | u64::from(mmio.config_u32(4)) << 32;
        for slot in 0..RX_SLOTS {
            v.post_rx(slot);
        }
        let ev_base = EV_BUFS.ptr() as u64;
        for slot in 0..EVENT_SLOTS {
            v.ev.set_desc(slot, ev_base + 8 * slot as u64, 8, DESC_F_WRITE, 0);
            v.ev.push(slot as u16);
        }
        v.tx.set_no_interrupt(true);
        mmio.set_status(
            virtio::STATUS_ACK
                | virtio::STATUS_DRIVER
                | virtio::STATUS_FEATURES_OK
                | virtio::STATUS_DRIVER_OK,
        );
        let status = mmio.status();
        if status & virtio::STATUS_DRIVER_OK == 0 || status & virtio::STATUS_NEEDS_RESET != 0 {
            return Err(VsockError::DeviceFailed(status));
        }
        v.notify(0);
        v.rx_notify = false;
        Ok(v)
    }

    fn slot_addr(base: *mut u8, buf: usize, slot: usize) -> *mut u8 {
        base.wrapping_add(slot * (SLOT_HDR + buf))
    }

    fn post_rx(&mut self, slot: usize) {
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

    fn notify(&mut self, queue: u32) {
        self.stats.notifies += 1;
        self.mmio.notify(queue);
    }

    /// Connects to `port` on the host (CID 2), retrying while nobody listens, for about
    /// `seconds` seconds.
    pub fn connect(&mut self, port: u32, seconds: u64) -> Result<(), VsockError> {
        let deadline = rdtsc().wrapping_add(seconds * ONE_SECOND_CYCLES);
        self.peer_port = port;
        loop {
            self.state = State::Connecting;
            self.send_control(OP_REQUEST)?;
            while self.state == State::Connecting {
                if rdtsc() > deadline {
                    irq::timer(0);
                    return Err(VsockError::Timeout);
                }
                self.wait(true);
            }
            match self.state {
                State::Connected => {
                    irq::timer(0);
                    return Ok(());
                }
                State::Refused if rdtsc() < deadline => {
                    // Nobody listens yet: try again in a few milliseconds.
                    self.state = State::Idle;
                    let retry = rdtsc().wrapping_add(ONE_SECOND_CYCLES / 100);
                    while rdtsc() < retry {
                        self.wait(true);
                    }
                }
                _ => {
                    irq::timer(0);
                    return Err(VsockError::Refused { port });
                }
            }
        }
    }

    /// Takes every chain the device returned: transmit slots are freed, event buffers
    /// reposted, received packets handled (data queued for the reader, control answered).
    pub fn poll(&mut self) {
        while let Some((id, _)) = self.tx.pop_used() {
            let slot = id as usize / 2;
            if id % 2 == 0 && slot < TX_SLOTS {
                self.tx_free |= 1 << slot;
            }
        }
        while let Some((id, _)) = self.ev.pop_used() {
            let slot = id as usize;
            if slot < EVENT_SLOTS {
                // SAFETY: in bounds of the static event buffers, which the device wrote.
                let event = unsafe { (EV_BUFS.ptr() as *const u64).add(slot).read_volatile() };
                if event as u32 == EVENT_TRANSPORT_RESET {
                    self.state = State::Closed;
                }
                self.ev.push(slot as u16);
                self.notify(2);
            }
        }
        while self.pending_len < RX_SLOTS {
            let Some((id, used_len)) = self.rx.pop_used() else {
                break;
            };
            let slot = id as usize / 2;
            if id % 2 != 0 || slot >= RX_SLOTS {
                continue;
            }
            self.stats.rx_packets += 1;
            let at = Self::slot_addr(self.rx_mem, RX_BUF, slot);
            // SAFETY: the slot's header area is ours and the device has returned it.
            let h = unsafe { at.cast::<Hdr>().read_unaligned() };
            let data_len = (h.len as usize)
                .min(RX_BUF)
                .min((used_len as usize).saturating_sub(HDR_LEN));
            if !self.handle_packet(&h) || data_len == 0 {
                self.post_rx(slot);
                continue;
            }
            let tail = (self.pending_head + self.pending_len) % RX_SLOTS;
            self.pending[tail] = (slot as u16, data_len as u32);
            self.pending_len += 1;
        }
    }

    /// Handles a received header; true when it carries stream data for the reader.
    fn handle_packet(&mut self, h: &Hdr) -> bool {
        let (src_port, dst_port, op, kind) = (h.src_port, h.dst_port, h.op, h.kind);
        let ours = kind == TYPE_STREAM
            && h.src_cid == kiln_protocol::HOST_CID
            && src_port == self.peer_port
            && dst_port == LOCAL_PORT;
        if !ours {
            if op == OP_REQUEST {
                self.send_rst(h);
            }
            return false;
        }
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = h.fwd_cnt;
        match (self.state, op) {
            (State::Connecting, OP_RESPONSE) => self.state = State::Connected,
            (State::Connecting, OP_RST) => self.state = State::Refused,
            (State::Connected, OP_RW) => return true,
            (State::Connected, OP_CREDIT_REQUEST) => {
                let _ = self.send_control(OP_CREDIT_UPDATE);
            }
            (State::Connected, OP_SHUTDOWN | OP_RST) => self.state = State::Closed,
            _ => {}
        }
        false
    }

    fn send_rst(&mut self, to: &Hdr) {
        let h = Hdr {
            src_cid: self.guest_cid,
            dst_cid: to.src_cid,
            src_port: to.dst_port,
            dst_port: to.src_port,
            kind: TYPE_STREAM,
            op: OP_RST,
            ..Hdr::default()
        };
        if let Some(slot) = self.take_tx_slot(false) {
            self.queue_tx(slot, h, 0);
            self.notify(1);
        }
    }

    fn header(&self, op: u16, len: u32) -> Hdr {
        Hdr {
            src_cid: self.guest_cid,
            dst_cid: kiln_protocol::HOST_CID,
            src_port: LOCAL_PORT,
            dst_port: self.peer_port,
            len,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// A free transmit slot, waiting for one when `wait` (the device returns them in order).
    fn take_tx_slot(&mut self, wait: bool) -> Option<usize> {
        loop {
            if self.tx_free != 0 {
                let slot = self.tx_free.trailing_zeros() as usize;
                self.tx_free &= !(1 << slot);
                return Some(slot);
            }
            self.poll();
            if self.tx_free != 0 {
                continue;
            }
            if !wait || matches!(self.state, State::Closed) {
                return None;
            }
            // Ask for the transmit interrupt while waiting for a slot.
            self.tx.set_no_interrupt(false);
            self.poll();
            if self.tx_free == 0 {
                self.wait(false);
            }
            self.tx.set_no_interrupt(true);
        }
    }

    fn queue_tx(&mut self, slot: usize, h: Hdr, len: usize) {
        let at = Self::slot_addr(self.tx_mem, TX_BUF, slot);
        // SAFETY: the slot is free (taken from `tx_free`), so neither the device nor another
        // packet uses its header area.
        unsafe { at.cast::<Hdr>().write_unaligned(h) };
        self.fwd_sent = h.fwd_cnt;
        let head = 2 * slot;
        if len == 0 {
            self.tx.set_desc(head, at as u64, HDR_LEN as u32, 0, 0);
        } else {
            self.tx.set_desc(
                head,
                at as u64,
                HDR_LEN as u32,
                DESC_F_NEXT,
                (head + 1) as u16,
            );
            self.tx
                .set_desc(head + 1, at as u64 + SLOT_HDR as u64, len as u32, 0, 0);
        }
        self.tx.push(head as u16);
        self.stats.tx_packets += 1;
    }

    fn send_control(&mut self, op: u16) -> Result<(), VsockError> {
        let slot = self.take_tx_slot(true).ok_or(VsockError::Closed)?;
        let h = self.header(op, 0);
        self.queue_tx(slot, h, 0);
        self.notify(1);
        Ok(())
    }

    /// Sleeps until the device has something for the driver (after telling it about new
    /// receive buffers). With `timed`, the LAPIC timer also wakes it every few ms.
    fn wait(&mut self, timed: bool) {
        if self.rx_notify {
            self.rx_notify = false;
            self.notify(0);
        }
        self.poll();
        if self.pending_len > 0 || matches!(self.state, State::Closed | State::Refused) {
            return;
        }
        if timed {
            irq::timer(TIMED_WAIT_TICK_NS);
        }
        self.stats.waits += 1;
        wait_for_interrupt();
        self.poll();
    }

    /// Bytes the host can still take.
    fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// Copies up to `dst.len()` received bytes into `dst`; 0 when none are pending.
    fn take(&mut self, dst: &mut [u8]) -> usize {
        if self.pending_len == 0 || dst.is_empty() {
            return 0;
        }
        let (slot, len) = self.pending[self.pending_head];
        let (slot, len) = (usize::from(slot), len as usize);
        let n = dst.len().min(len - self.read_off);
        let src = Self::slot_addr(self.rx_mem, RX_BUF, slot).wrapping_add(SLOT_HDR + self.read_off);
        // SAFETY: `src` is inside the slot's data buffer (`read_off + n <= len <= RX_BUF`),
        // which the device has returned and does not touch until it is posted again.
        unsafe { core::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), n) };
        self.consumed(n, len);
        n
    }

    /// Discards up to `max` received bytes; 0 when none are pending.
    fn drop_bytes(&mut self, max: usize) -> usize {
        if self.pending_len == 0 || max == 0 {
            return 0;
        }
        let len = self.pending[self.pending_head].1 as usize;
        let n = max.min(len - self.read_off);
        self.consumed(n, len);
        n
    }

    fn consumed(&mut self, n: usize, len: usize) {
        self.read_off += n;
        if self.read_off < len {
            return;
        }
        let slot = usize::from(self.pending[self.pending_head].0);
        self.pending_head = (self.pending_head + 1) % RX_SLOTS;
        self.pending_len -= 1;
        self.read_off = 0;
        self.post_rx(slot);
        self.fwd_cnt = self.fwd_cnt.wrapping_add(len as u32);
        if self.fwd_cnt.wrapping_sub(self.fwd_sent) > BUF_ALLOC / 2 {
            let _ = self.send_control(OP_CREDIT_UPDATE);
        }
    }

    fn check_open(&self) -> Result<(), VsockError> {
        match self.state {
            State::Connected => Ok(()),
            _ => Err(VsockError::Closed),
        }
    }

    /// Fills `dst` from the stream, sleeping as needed.
    pub fn read_exact(&mut self, mut dst: &mut [u8]) -> Result<(), VsockError> {
        while !dst.is_empty() {
            let n = self.take(dst);
            if n == 0 {
                self.check_open()?;
                self.wait(false);
                continue;
            }
            dst = &mut dst[n..];
        }
        Ok(())
    }

    /// Appends `n` bytes from the stream to `out`, whose spare capacity must hold them.
    pub fn read_into(&mut self, out: &mut alloc::vec::Vec<u8>, n: usize) -> Result<(), VsockError> {
        let start = out.len();
        let spare = &mut out.spare_capacity_mut()[..n];
        // SAFETY: `u8` has no invalid bit patterns; the bytes are only exposed through
        // `set_len` below once `read_exact` has written every one of them.
        let dst = unsafe { core::slice::from_raw_parts_mut(spare.as_mut_ptr().cast::<u8>(), n) };
        self.read_exact(dst)?;
        // SAFETY: the `n` bytes after `start` were just written and fit in the capacity.
        unsafe { out.set_len(start + n) };
        Ok(())
    }

    /// Reads and throws away `n` bytes from the stream.
    pub fn skip(&mut self, mut n: usize) -> Result<(), VsockError> {
        while n > 0 {
            let got = self.drop_bytes(n);
            if got == 0 {
                self.check_open()?;
                self.wait(false);
            }
            n -= got;
        }
        Ok(())
    }

    /// Sends the concatenation of `parts` as stream data, in packets of at most [`TX_BUF`]
    /// bytes and within the host's credit; one notification per batch of packets.
    pub fn write_all(&mut self, parts: &[&[u8]]) -> Result<(), VsockError> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let (mut part, mut off, mut sent) = (0usize, 0usize, 0usize);
        let mut queued = false;
        while sent < total {
            self.check_open()?;
            let credit = self.peer_credit() as usize;
            if credit == 0 || self.tx_free == 0 {
                if queued {
                    self.notify(1);
                    queued = false;
                }
                if credit == 0 {
                    let _ = self.send_control(OP_CREDIT_REQUEST);
                    self.wait(false);
                    continue;
                }
            }
            let slot = self.take_tx_slot(true).ok_or(VsockError::Closed)?;
            let n = (total - sent).min(TX_BUF).min(credit);
            let buf = Self::slot_addr(self.tx_mem, TX_BUF, slot).wrapping_add(SLOT_HDR);
            let mut filled = 0;
            while filled < n {
                let Some(p) = parts.get(part) else { break };
                let k = (p.len() - off).min(n - filled);
                // SAFETY: `buf[filled..filled + k]` lies in the free slot's data buffer
                // (`n <= TX_BUF`); the source is `k` bytes of `p` from `off`.
                unsafe { core::ptr::copy_nonoverlapping(p.as_ptr().add(off), buf.add(filled), k) };
                filled += k;
                off += k;
                if off == p.len() {
                    part += 1;
                    off = 0;
                }
            }
            let h = self.header(OP_RW, n as u32);
            self.queue_tx(slot, h, n);
            self.tx_cnt = self.tx_cnt.wrapping_add(n as u32);
            sent += n;
            queued = true;
        }
        if queued {
            self.notify(1);
        }
        Ok(())
    }

    /// Waits (about `seconds` at most) until the device has taken every packet sent.
    pub fn flush(&mut self, seconds: u64) {
        let deadline = rdtsc().wrapping_add(seconds * ONE_SECOND_CYCLES);
        self.tx.set_no_interrupt(false);
        loop {
            self.poll();
            if self.tx_free == (1u32 << TX_SLOTS) - 1 || rdtsc() > deadline {
                break;
            }
            irq::timer(TIMED_WAIT_TICK_NS);
            self.stats.waits += 1;
            wait_for_interrupt();
        }
        irq::timer(0);
        self.tx.set_no_interrupt(true);
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
