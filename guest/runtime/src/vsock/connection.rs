//! The one connection: connecting to the host, taking what the device returned (freed
//! transmit slots, events, received packets), answering control packets, queueing packets
//! for transmission, and sleeping until there is something to do.

// Header fields and lengths are cut to their on-wire widths; every value is in range.
#![allow(clippy::cast_possible_truncation)]

use super::{
    State, Vsock, VsockError, BUF_ALLOC, EVENT_SLOTS, EV_BUFS, LOCAL_PORT, ONE_SECOND_CYCLES,
    RX_BUF, RX_SLOTS, SLOT_HDR, TIMED_WAIT_TICK_NS, TX_BUF, TX_SLOTS,
};
use crate::arch::{perform_in_ring0, rdtsc};
use crate::irq;
use kiln_guest_virtio::mmio::REG_QUEUE_NOTIFY;
use kiln_guest_virtio::ring::{UsedElem, DESC_F_NEXT};
use kiln_guest_virtio::vsock::{
    Hdr, EVENT_TRANSPORT_RESET, HDR_LEN, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST,
    OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, TYPE_STREAM,
};
use kiln_guest_virtio::Batch;

impl Vsock {
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
                    return Err(VsockError::Timeout);
                }
                self.wait(true);
            }
            match self.state {
                State::Connected => return Ok(()),
                State::Refused if rdtsc() < deadline => {
                    // Nobody listens yet: try again in a few milliseconds.
                    self.state = State::Idle;
                    let retry = rdtsc().wrapping_add(ONE_SECOND_CYCLES / 100);
                    while rdtsc() < retry {
                        self.wait(true);
                    }
                }
                _ => return Err(VsockError::Refused { port }),
            }
        }
    }

    /// True once the device reset the transport: the VM was restored from a snapshot, and
    /// the host side of the connection is gone.
    pub fn was_reset(&self) -> bool {
        self.state == State::Reset
    }

    /// After a transport reset: forgets the old connection (its unread data, its credit)
    /// and connects to `port` again.
    pub fn reconnect(&mut self, port: u32, seconds: u64) -> Result<(), VsockError> {
        while self.pending_len > 0 {
            let slot = usize::from(self.pending[self.pending_head].0);
            self.pending_head = (self.pending_head + 1) % RX_SLOTS;
            self.pending_len -= 1;
            self.post_rx(slot);
        }
        self.read_off = 0;
        self.fwd_cnt = 0;
        self.fwd_sent = 0;
        self.tx_cnt = 0;
        self.peer_buf_alloc = 0;
        self.peer_fwd_cnt = 0;
        // A new local port: the old connection's late packets (an RST for a packet it sent
        // before the reset) are not this one's.
        self.local_port = if self.local_port >= u32::from(u16::MAX) {
            LOCAL_PORT
        } else {
            self.local_port + 1
        };
        self.connect(port, seconds)
    }

    /// Takes every chain the device returned: transmit slots are freed, event buffers
    /// reposted, received packets handled (data queued for the reader, control answered).
    pub fn poll(&mut self) {
        while let Some(UsedElem { id, .. }) = self.tx.pop_used() {
            let slot = id as usize / 2;
            if id % 2 == 0 && slot < TX_SLOTS {
                self.tx_free |= 1 << slot;
            }
        }
        while let Some(UsedElem { id, .. }) = self.ev.pop_used() {
            let slot = id as usize;
            if slot < EVENT_SLOTS {
                // SAFETY: in bounds of the static event buffers, which the device wrote.
                let event = unsafe { (EV_BUFS.ptr() as *const u64).add(slot).read_volatile() };
                if event as u32 == EVENT_TRANSPORT_RESET {
                    self.state = State::Reset;
                }
                self.ev.push(slot as u16);
                self.notify(2);
            }
        }
        while self.pending_len < RX_SLOTS {
            let Some(UsedElem { id, len: used_len }) = self.rx.pop_used() else {
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
            && dst_port == self.local_port;
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

    pub(super) fn header(&self, op: u16, len: u32) -> Hdr {
        Hdr {
            src_cid: self.guest_cid,
            dst_cid: kiln_protocol::HOST_CID,
            src_port: self.local_port,
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
    pub(super) fn take_tx_slot(&mut self, wait: bool) -> Option<usize> {
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
            if !wait || matches!(self.state, State::Closed | State::Reset) {
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

    pub(super) fn queue_tx(&mut self, slot: usize, h: Hdr, len: usize) {
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

    pub(super) fn send_control(&mut self, op: u16) -> Result<(), VsockError> {
        let slot = self.take_tx_slot(true).ok_or(VsockError::Closed)?;
        let h = self.header(op, 0);
        self.queue_tx(slot, h, 0);
        self.notify(1);
        Ok(())
    }

    /// Sleeps until the device has something for the driver (after telling it about new
    /// receive buffers). With `timed`, the LAPIC timer also wakes it every few ms.
    pub(super) fn wait(&mut self, timed: bool) {
        self.poll();
        if self.pending_len > 0
            || matches!(self.state, State::Closed | State::Refused | State::Reset)
        {
            if self.rx_notify {
                self.rx_notify = false;
                self.notify(0);
            }
            return;
        }
        self.sleep(timed);
        self.poll();
    }

    /// Sleeps until an interrupt: the device's, or with `timed` the LAPIC timer's after
    /// [`TIMED_WAIT_TICK_NS`]. One ring-0 batch ([`crate::arch::perform_in_ring0`]): the
    /// receive queue's notification if buffers were posted since the last one, the timer
    /// armed, the wait, the timer disarmed — one trap where each was an exit from ring 3.
    pub(super) fn sleep(&mut self, timed: bool) {
        let mut batch = Batch::<4>::new();
        if self.rx_notify {
            self.rx_notify = false;
            self.stats.notifies += 1;
            batch.write(self.mmio.register(REG_QUEUE_NOTIFY), 0);
        }
        if timed {
            irq::timer(&mut batch, TIMED_WAIT_TICK_NS);
        }
        batch.wait();
        if timed {
            irq::timer(&mut batch, 0);
        }
        self.stats.waits += 1;
        // SAFETY: the addresses are device registers: the vsock window's (in the MMIO gap,
        // see `virtio::candidates`) and the LAPIC's. The batch holds at most 4 operations and
        // has no check, so it always runs to its end.
        let _ = batch.run(|ops| unsafe { perform_in_ring0(ops) });
    }
}
