//! virtio-net: a transmit buffer and [`RX_BUFS`] receive buffers in static memory inside the
//! image; receive queue 0 on ring 1, transmit queue 1 on ring 2. Every frame starts with the
//! 12-byte `virtio_net_hdr_v1`.

// Lengths and indices are cut to the width of their ring or register field; each is in range.
#![allow(clippy::cast_possible_truncation)]

use super::ring::{ring, Ring, RingExt, DESC_F_WRITE, QUEUE_SIZE};
use super::{Mmio, DEVICE_NET, STATUS_DRIVER_OK, STATUS_NEEDS_RESET};
use core::ptr::{addr_of, addr_of_mut};
use kiln_guest_virtio::{DeviceShared, UsedElem};

pub const F_MTU: u64 = 1 << 3;
pub const F_MAC: u64 = 1 << 5;
pub const F_MRG_RXBUF: u64 = 1 << 15;
pub const HDR: usize = 12;
pub const RX_BUFS: usize = 4;
pub const RX_BUF_LEN: usize = 1536;
pub const TX_BUF_LEN: usize = 256;

#[repr(C, align(16))]
struct Buffers {
    tx: [u8; TX_BUF_LEN],
    rx: [[u8; RX_BUF_LEN]; RX_BUFS],
}

static BUFFERS: DeviceShared<Buffers> = DeviceShared::new(Buffers {
    tx: [0; TX_BUF_LEN],
    rx: [[0; RX_BUF_LEN]; RX_BUFS],
});

pub struct Net {
    pub mmio: Mmio,
    rx: Ring,
    tx: Ring,
    pub features: u64,
}

impl Net {
    /// Finds the `index`-th virtio-net device and starts it, asking for merged receive
    /// buffers when `mergeable`. Err: the status register (0 when there is no device).
    pub fn open(cmdline: &[u8], index: u32, mergeable: bool) -> Result<Net, u32> {
        let mmio = super::find(cmdline, DEVICE_NET, index).ok_or(0u32)?;
        let wanted = F_MAC | F_MTU | if mergeable { F_MRG_RXBUF } else { 0 };
        let features = mmio.negotiate(wanted)?;
        let (rx, tx) = (ring(1), ring(2));
        mmio.setup_queue(0, QUEUE_SIZE as u32, &rx);
        mmio.setup_queue(1, QUEUE_SIZE as u32, &tx);
        let status = mmio.driver_ok();
        if status & STATUS_DRIVER_OK == 0 || status & STATUS_NEEDS_RESET != 0 {
            return Err(status);
        }
        Ok(Net {
            mmio,
            rx,
            tx,
            features,
        })
    }

    /// The MAC address in config space (zeros when the device offers none).
    pub fn mac(&self) -> [u8; 6] {
        let mut mac = [0u8; 6];
        if self.features & F_MAC != 0 {
            for (i, b) in mac.iter_mut().enumerate() {
                *b = self.mmio.config_u8(i as u32);
            }
        }
        mac
    }

    /// The MTU in config space (offset 10), when the device offers one.
    pub fn mtu(&self) -> Option<u16> {
        (self.features & F_MTU != 0)
            .then(|| u16::from_le_bytes([self.mmio.config_u8(10), self.mmio.config_u8(11)]))
    }

    /// Sends `frame` (without header; at most TX_BUF_LEN - HDR bytes) and waits (at most
    /// `cycles` TSC cycles) until the device has taken it.
    pub fn send_wait(&mut self, frame: &[u8], cycles: u64) -> Option<UsedElem> {
        // SAFETY: the transmit buffer is not in use by the device (one frame at a time).
        let buf = unsafe { &mut *addr_of_mut!((*BUFFERS.ptr()).tx) };
        let len = frame.len().min(TX_BUF_LEN - HDR);
        buf[..HDR].fill(0);
        buf[HDR..HDR + len].copy_from_slice(&frame[..len]);
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
        self.tx
            .set_desc(0, buf.as_ptr() as u64, (HDR + len) as u32, 0, 0);
        self.tx.push(0);
        self.mmio.notify(1);
        self.tx.wait_used(cycles)
    }

    /// Makes receive buffer `i` (of `len` bytes) available to the device.
    pub fn post(&mut self, i: usize, len: u32) {
        let i = i % RX_BUFS;
        self.rx
            .set_desc(i, rx_addr(i), len.min(RX_BUF_LEN as u32), DESC_F_WRITE, 0);
        self.rx.push(i as u16);
    }

    pub fn kick_rx(&self) {
        self.mmio.notify(0);
    }

    /// Waits up to `cycles` TSC cycles for a used receive buffer.
    pub fn recv(&mut self, cycles: u64) -> Option<UsedElem> {
        self.rx.wait_used(cycles)
    }

    /// Receive buffer `i`, once the device has returned it.
    pub fn rx_buf(i: usize) -> &'static [u8; RX_BUF_LEN] {
        // SAFETY: the device writes a receive buffer only while it is available; callers
        // read it after its used entry, on one vCPU.
        unsafe { &*addr_of!((*BUFFERS.ptr()).rx[i % RX_BUFS]) }
    }
}

fn rx_addr(i: usize) -> u64 {
    // SAFETY: only the address is computed.
    unsafe { addr_of!((*BUFFERS.ptr()).rx[i % RX_BUFS]) as u64 }
}
