//! The stream: reading received bytes (copied out of the receive buffers, which go back to
//! the device at once, with a credit update when half the window was consumed), and writing
//! within the host's credit, in packets of at most [`TX_BUF`] bytes, one notification per
//! batch.

// Lengths are cut to their on-wire widths; every value is in range.
#![allow(clippy::cast_possible_truncation)]

use super::{
    State, Vsock, VsockError, BUF_ALLOC, ONE_SECOND_CYCLES, RX_BUF, RX_SLOTS, SLOT_HDR, TX_BUF,
    TX_SLOTS,
};
use crate::arch::rdtsc;
use kiln_guest_virtio::vsock::{OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_RW};

impl Vsock {
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
            self.sleep(true);
        }
        self.tx.set_no_interrupt(true);
    }
}
