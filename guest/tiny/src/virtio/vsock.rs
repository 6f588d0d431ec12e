//! virtio-vsock (device 19): receive queue 0 on ring 0, transmit queue 1 on ring 1, event
//! queue 2 on ring 2; [`RX_BUFS`] receive buffers of [`RX_BUF_LEN`] bytes (the 44-byte header
//! and up to [`MAX_DATA`] bytes of payload), one transmit buffer and one event buffer, all
//! static inside the image. Packets travel in one descriptor each (header and payload
//! together), which any virtio 1.x device accepts.
//!
//! A model for freestanding guest code talking to the host over vsock: open the device, post
//! receive buffers, then exchange 44-byte headers (kiln-guest-virtio's [`Hdr`], `struct
//! virtio_vsock_hdr`) with payloads. The host is CID 2; the guest's CID is in configuration
//! space. Every
//! packet carries the sender's credit (`buf_alloc`, `fwd_cnt`): here `buf_alloc` is
//! [`BUF_ALLOC`] and `fwd_cnt` counts the payload bytes taken out of receive buffers, which
//! are posted again at once.

// Lengths and indices are cut to the width of their ring or header field; each is in range.
#![allow(clippy::cast_possible_truncation)]

use super::ring::{ring, Ring, RingExt, DESC_F_WRITE, QUEUE_SIZE};
use super::{Mmio, DEVICE_VSOCK, STATUS_DRIVER_OK, STATUS_NEEDS_RESET, WAIT_CYCLES};
use core::ptr::{addr_of, addr_of_mut};
use core::sync::atomic::{compiler_fence, Ordering};
use kiln_guest_virtio::vsock::{HOST_CID, OP_RW, TYPE_STREAM};
use kiln_guest_virtio::{DeviceShared, UsedElem};

pub use kiln_guest_virtio::vsock::{Hdr, HDR_LEN as HDR};

pub const RX_BUFS: usize = 4;
pub const MAX_DATA: usize = 256;
pub const RX_BUF_LEN: usize = HDR + MAX_DATA;
pub const TX_BUF_LEN: usize = HDR + MAX_DATA;
/// Receive space the guest advertises per connection (what its buffers hold).
pub const BUF_ALLOC: u32 = (RX_BUFS * MAX_DATA) as u32;

#[repr(C, align(16))]
struct Buffers {
    tx: [u8; TX_BUF_LEN],
    rx: [[u8; RX_BUF_LEN]; RX_BUFS],
    event: [u8; 8],
}

static BUFFERS: DeviceShared<Buffers> = DeviceShared::new(Buffers {
    tx: [0; TX_BUF_LEN],
    rx: [[0; RX_BUF_LEN]; RX_BUFS],
    event: [0; 8],
});

/// A packet in a receive buffer: its header and where its payload is. The buffer stays the
/// driver's until the next [`Vsock::recv`], which posts it again.
pub struct Packet {
    pub hdr: Hdr,
    buf: usize,
    pub len: usize,
}

impl Packet {
    /// The payload (at most [`MAX_DATA`] bytes).
    pub fn data(&self) -> &'static [u8] {
        // SAFETY: the device wrote this buffer before its used entry and does not use it
        // again until `recv` posts it, after the caller is done with the packet (one vCPU,
        // one packet at a time).
        let buf = unsafe { &*addr_of!((*BUFFERS.ptr()).rx[self.buf % RX_BUFS]) };
        &buf[HDR..HDR + self.len.min(MAX_DATA)]
    }
}

pub struct Vsock {
    pub mmio: Mmio,
    rx: Ring,
    tx: Ring,
    _event: Ring,
    pub cid: u64,
    /// Payload bytes taken out of receive buffers (our `fwd_cnt`).
    pub fwd_cnt: u32,
    /// The receive buffer of the last packet returned, posted again by the next `recv`.
    held: Option<usize>,
}

fn rx_addr(i: usize) -> u64 {
    // SAFETY: only the address is computed.
    unsafe { addr_of!((*BUFFERS.ptr()).rx[i % RX_BUFS]) as u64 }
}

fn tx_buf() -> &'static mut [u8; TX_BUF_LEN] {
    // SAFETY: the device reads the transmit buffer only between a kick and its used entry,
    // and the driver sends one packet at a time on one vCPU.
    unsafe { &mut *addr_of_mut!((*BUFFERS.ptr()).tx) }
}

impl Vsock {
    /// Finds the first virtio-vsock device and starts it with every receive buffer and the
    /// event buffer posted. Err: the status register (0 when there is no device).
    pub fn open(cmdline: &[u8]) -> Result<Vsock, u32> {
        let mmio = super::find(cmdline, DEVICE_VSOCK, 0).ok_or(0u32)?;
        mmio.negotiate(0)?;
        let (mut rx, tx, mut event) = (ring(0), ring(1), ring(2));
        let size = QUEUE_SIZE as u32;
        mmio.setup_queue(0, size, &rx);
        mmio.setup_queue(1, size, &tx);
        mmio.setup_queue(2, size, &event);
        for i in 0..RX_BUFS {
            rx.set_desc(i, rx_addr(i), RX_BUF_LEN as u32, DESC_F_WRITE, 0);
            rx.push(i as u16);
        }
        // SAFETY: only the address is computed.
        let ev = unsafe { addr_of!((*BUFFERS.ptr()).event) as u64 };
        event.set_desc(0, ev, 8, DESC_F_WRITE, 0);
        event.push(0);
        let status = mmio.driver_ok();
        if status & STATUS_DRIVER_OK == 0 || status & STATUS_NEEDS_RESET != 0 {
            return Err(status);
        }
        mmio.notify(0);
        mmio.notify(2);
        let cid = mmio.config_u64(0);
        Ok(Vsock {
            mmio,
            rx,
            tx,
            _event: event,
            cid,
            fwd_cnt: 0,
            held: None,
        })
    }

    /// A header from this guest to the host with our credit filled in.
    pub fn hdr(&self, op: u16, src_port: u32, dst_port: u32) -> Hdr {
        Hdr {
            src_cid: self.cid,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len: 0,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Sends `hdr` (its `len` set to the payload's) with `data` and waits until the device has
    /// taken it.
    pub fn send(&mut self, hdr: &Hdr, data: &[u8]) -> Option<UsedElem> {
        let n = data.len().min(MAX_DATA);
        let mut h = *hdr;
        h.len = n as u32;
        let buf = tx_buf();
        buf[..HDR].copy_from_slice(&h.to_bytes());
        buf[HDR..HDR + n].copy_from_slice(&data[..n]);
        self.send_raw((HDR + n) as u32)
    }

    /// Sends whatever the transmit buffer holds as one descriptor of `len` bytes (hostile
    /// scenarios write the buffer themselves, see [`Vsock::tx_buffer`]).
    pub fn send_raw(&mut self, len: u32) -> Option<UsedElem> {
        compiler_fence(Ordering::SeqCst);
        let addr = tx_buf().as_ptr() as u64;
        self.tx.set_desc(0, addr, len.min(TX_BUF_LEN as u32), 0, 0);
        self.tx.push(0);
        self.mmio.notify(1);
        self.tx.wait_used(WAIT_CYCLES)
    }

    /// The transmit buffer, to build hostile packets in.
    pub fn tx_buffer(&mut self) -> &'static mut [u8; TX_BUF_LEN] {
        tx_buf()
    }

    /// Waits up to `cycles` TSC cycles for the next packet from the device. The buffer of
    /// the packet returned before is posted again first.
    pub fn recv(&mut self, cycles: u64) -> Option<Packet> {
        if let Some(id) = self.held.take() {
            compiler_fence(Ordering::SeqCst);
            self.rx.push(id as u16);
            self.mmio.notify(0);
        }
        let used = self.rx.wait_used(cycles)?;
        compiler_fence(Ordering::SeqCst);
        let id = used.id as usize % RX_BUFS;
        self.held = Some(id);
        // SAFETY: as in `Packet::data`: the device is done with this buffer.
        let buf = unsafe { &*addr_of!((*BUFFERS.ptr()).rx[id]) };
        let used_len = (used.len as usize).min(RX_BUF_LEN);
        let (Some(bytes), true) = (buf.first_chunk::<HDR>(), used_len >= HDR) else {
            return Some(Packet {
                hdr: Hdr::default(),
                buf: id,
                len: 0,
            });
        };
        let hdr = Hdr::from_bytes(bytes);
        let len = (used_len - HDR).min(hdr.len as usize);
        if hdr.op == OP_RW {
            self.fwd_cnt = self.fwd_cnt.wrapping_add(len as u32);
        }
        Some(Packet { hdr, buf: id, len })
    }
}
