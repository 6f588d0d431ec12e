//! The guest's driver for a [`Machine`], as structured fuzz input: what a virtio driver does
//! through the virtio-mmio registers and in its own memory, with every value (ring addresses
//! and sizes, features, descriptors, indices) chosen by the input, and raw register accesses
//! and memory writes for what no well-behaved driver does.
//!
//! [`Op`] is one guest action; a target runs a sequence of them (plus its host-side ones)
//! through [`Driver::apply`].

use crate::guest::{MEM_END, REGION1, REGION_LEN};
use crate::machine::Machine;
use arbitrary::Arbitrary;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_mmio as reg;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};

/// A guest-physical address, packed in 32 bits so that most inputs are usable ones: bits
/// 0-11 an offset and bits 12-16 one of the 32 pages of the fuzz guest's memory (16 per
/// region; the offset rounded down to the alignment asked); when the top four bits are all
/// set (1 in 16), a wild address instead: bit 27 set, that far below 2^64 (wrapping ranges),
/// else the low 27 bits as a page number anywhere (the hole, past the end of memory).
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct Addr(pub u32);

impl Addr {
    /// The address in guest memory at `at` (which must be in it).
    pub fn at(at: u64) -> Addr {
        let page = if at >= REGION1 {
            ((at - REGION1) >> 12) * 2 + 1
        } else {
            (at >> 12) * 2
        };
        Addr(((page as u32) << 12) | (at & 0xfff) as u32)
    }

    pub fn get(self, align: u64) -> u64 {
        let v = self.0;
        if v >> 28 == 0xf {
            let low = u64::from(v & 0x7ff_ffff);
            return if v & (1 << 27) != 0 {
                u64::MAX - low
            } else {
                low << 12
            };
        }
        let page = u64::from((v >> 12) & 31);
        let region = if page & 1 == 0 { 0 } else { REGION1 };
        let at = region + (page >> 1) * 0x1000 + u64::from(v & 0xfff);
        at & !(align - 1)
    }
}

/// Where the driver puts one queue, and its size.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct QueueLayout {
    /// `1 << (size_log2 % 9)`, at most the device's maximum.
    pub size_log2: u8,
    /// Mostly (12 in 16, by the top four bits) the rings one after the other from `desc`
    /// (the descriptor table, the available ring, the used ring; `gap` bytes apart, as
    /// aligned as each must be), as drivers lay them out. Else: 1 in 16 each, the three rings
    /// where `desc`, `avail` and `used` say (anywhere, overlapping); the queue left disabled
    /// (QueueReady 0); `raw` as its size (anything a driver may write to QueueNum); or the
    /// rings one after the other with `raw` as the size.
    pub quirk: u8,
    pub gap: u8,
    pub desc: Addr,
    pub avail: Addr,
    pub used: Addr,
    pub raw: u32,
}

impl QueueLayout {
    /// (size, desc, avail, used, ready) for a device whose queue holds at most `max`.
    pub fn resolve(&self, max: u32) -> (u32, u64, u64, u64, bool) {
        let mut size = (1u32 << (self.size_log2 % 9)).min(max.max(1));
        let quirk = self.quirk >> 4;
        if quirk >= 0xe {
            size = self.raw;
        }
        let (desc, avail, used) = if quirk == 0xc {
            (self.desc.get(16), self.avail.get(2), self.used.get(4))
        } else {
            let n = u64::from(size.min(0x8000));
            let gap = u64::from(self.gap);
            let desc = self.desc.get(16);
            let avail = desc.saturating_add(16 * n + gap + 1) & !1;
            let used = avail.saturating_add(6 + 2 * n + gap + 3) & !3;
            (desc, avail, used)
        };
        (size, desc, avail, used, quirk != 0xd)
    }
}

/// One buffer of a chain the driver posts.
#[derive(Debug, Clone, Arbitrary)]
pub struct Buf {
    pub addr: Addr,
    /// Its length: `len % 0x2000` (up to two pages) below 0xe000; above, `(len - 0xe000) <<
    /// 16` (up to 512 MiB: larger than memory).
    pub len: u16,
    pub writable: bool,
    /// Written at `addr` first (what the driver puts in a device-readable buffer).
    pub data: Vec<u8>,
    /// The length instead of `len`, for buffers a target builds itself.
    #[arbitrary(default)]
    pub exact: Option<u32>,
}

impl Buf {
    /// A buffer of exactly `len` bytes at `at` (inside memory), holding `data`.
    pub fn new(at: u64, len: u32, writable: bool, data: Vec<u8>) -> Buf {
        Buf {
            addr: Addr::at(at),
            len: 0,
            writable,
            data,
            exact: Some(len),
        }
    }

    fn len(&self) -> u32 {
        if let Some(len) = self.exact {
            len
        } else if self.len < 0xe000 {
            u32::from(self.len % 0x2000)
        } else {
            u32::from(self.len - 0xe000) << 16
        }
    }
}

/// Register access widths.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Width {
    W1,
    W2,
    W4,
    W8,
    Odd(u8),
}

impl Width {
    pub fn bytes(self) -> usize {
        match self {
            Width::W1 => 1,
            Width::W2 => 2,
            Width::W4 => 4,
            Width::W8 => 8,
            Width::Odd(n) => usize::from(n % 17),
        }
    }
}

/// One thing the guest does.
#[derive(Debug, Clone, Arbitrary)]
pub enum Op {
    /// The driver's whole initialisation (virtio 1.2, 3.1.1): reset, ACKNOWLEDGE, DRIVER,
    /// the offered features masked with `accept` (VERSION_1 kept unless `legacy` is 0x5a),
    /// FEATURES_OK, each queue's registers, DRIVER_OK.
    Init {
        accept: u64,
        legacy: u8,
        queues: Vec<QueueLayout>,
    },
    /// A chain on `queue`: buffers linked from a free descriptor index (`first`, or the
    /// driver's next), its head put in the available ring, the available index published
    /// and the queue notified; with `hold`, neither (the driver publishes several at once
    /// later, with `Publish` and `Notify`).
    Post {
        queue: u8,
        first: Option<u16>,
        bufs: Vec<Buf>,
        hold: bool,
    },
    /// Publishes the available index the driver has reached (after unpublished posts), or
    /// moves it by `jump` (a driver lying about it).
    Publish { queue: u8, jump: Option<u16> },
    /// QueueNotify with the queue's index (or any value).
    Notify { queue: u8, raw: Option<u32> },
    /// The VMM thread's turn: `waits % 8 + 1` event-loop waits.
    Run { waits: u8 },
    /// A write into guest memory, anywhere.
    Poke { addr: Addr, bytes: Vec<u8> },
    /// Register or configuration-space access at any offset of the window (and beyond it).
    Read { offset: u16, width: Width },
    Write {
        offset: u16,
        width: Width,
        value: u64,
    },
    /// Status 0: the device is reset.
    Reset,
    /// InterruptACK of what InterruptStatus shows.
    Ack,
}

/// One queue as the driver set it up.
#[derive(Debug, Clone, Copy)]
pub struct Ring {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// The driver's next available index (published or not).
    pub avail_idx: u16,
    /// Next free descriptor (the driver hands them out in turn).
    pub next_desc: u16,
}

/// The driver's state.
#[derive(Debug, Default)]
pub struct Driver {
    pub rings: Vec<Ring>,
    pub features: u64,
}

const STATUS: u32 = reg::VIRTIO_MMIO_STATUS;

impl Driver {
    /// Applies one guest action; `Run` turns the event loop and returns the new used entries.
    pub fn apply(&mut self, m: &mut Machine, op: &Op) -> Vec<Vec<(u32, u32)>> {
        match op {
            Op::Init {
                accept,
                legacy,
                queues,
            } => self.init(m, *accept, *legacy == 0x5a, queues),
            Op::Post {
                queue,
                first,
                bufs,
                hold,
            } => {
                if let Some(q) = self.post(m, usize::from(*queue), *first, bufs, !*hold) {
                    if !*hold {
                        m.write32(reg::VIRTIO_MMIO_QUEUE_NOTIFY, q as u32);
                    }
                }
            }
            Op::Publish { queue, jump } => {
                if let Some(r) = self.ring_mut(usize::from(*queue)) {
                    if let Some(j) = jump {
                        r.avail_idx = r.avail_idx.wrapping_add(*j);
                    }
                    let (avail, idx) = (r.avail, r.avail_idx);
                    let _ = m
                        .mem
                        .write_obj(idx.to_le(), GuestAddress(avail.wrapping_add(2)));
                }
            }
            Op::Notify { queue, raw } => {
                m.write32(
                    reg::VIRTIO_MMIO_QUEUE_NOTIFY,
                    raw.unwrap_or(u32::from(*queue)),
                );
            }
            Op::Run { waits } => return m.run(u32::from(waits % 8) + 1),
            Op::Poke { addr, bytes } => {
                let at = addr.get(1);
                let room = MEM_END.saturating_sub(at) as usize;
                let _ = m
                    .mem
                    .write_slice(&bytes[..bytes.len().min(room)], GuestAddress(at));
            }
            Op::Read { offset, width } => {
                let mut data = vec![0u8; width.bytes()];
                m.read(u64::from(offset % 0x1100), &mut data);
            }
            Op::Write {
                offset,
                width,
                value,
            } => {
                let n = width.bytes();
                let mut data = value.to_le_bytes().to_vec();
                data.resize(n, 0);
                m.write(u64::from(offset % 0x1100), &data);
            }
            Op::Reset => {
                m.write32(STATUS, 0);
                self.rings.clear();
                assert_eq!(m.status(), 0, "the status after a reset");
                m.check_status();
            }
            Op::Ack => {
                let pending = m.read32(reg::VIRTIO_MMIO_INTERRUPT_STATUS);
                m.write32(reg::VIRTIO_MMIO_INTERRUPT_ACK, pending);
            }
        }
        Vec::new()
    }

    fn ring_mut(&mut self, q: usize) -> Option<&mut Ring> {
        let n = self.rings.len();
        if n == 0 {
            return None;
        }
        self.rings.get_mut(q % n)
    }

    /// The driver's initialisation through the registers.
    pub fn init(
        &mut self,
        m: &mut Machine,
        accept: u64,
        drop_version: bool,
        queues: &[QueueLayout],
    ) {
        m.write32(STATUS, 0);
        self.rings.clear();
        m.write32(STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        m.write32(STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
        let mut offered = 0u64;
        for sel in 0..2u32 {
            m.write32(reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, sel);
            offered |= u64::from(m.read32(reg::VIRTIO_MMIO_DEVICE_FEATURES)) << (32 * sel);
        }
        let version = 1u64 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
        let mut features = offered & accept | (offered & version);
        if drop_version {
            features &= !version;
        }
        for sel in 0..2u32 {
            m.write32(reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
            m.write32(
                reg::VIRTIO_MMIO_DRIVER_FEATURES,
                (features >> (32 * sel)) as u32,
            );
        }
        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        m.write32(STATUS, s);
        if m.status() & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            // The device refused the features: a driver gives up here.
            return;
        }
        self.features = features;
        for (i, l) in queues.iter().enumerate().take(4) {
            m.write32(reg::VIRTIO_MMIO_QUEUE_SEL, i as u32);
            let max = m.read32(reg::VIRTIO_MMIO_QUEUE_NUM_MAX);
            let (size, desc, avail, used, ready) = l.resolve(max);
            m.write32(reg::VIRTIO_MMIO_QUEUE_NUM, size);
            for (low, value) in [
                (reg::VIRTIO_MMIO_QUEUE_DESC_LOW, desc),
                (reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW, avail),
                (reg::VIRTIO_MMIO_QUEUE_USED_LOW, used),
            ] {
                m.write32(low, value as u32);
                m.write32(low + 4, (value >> 32) as u32);
            }
            // A fresh ring: indices and flags zero.
            for at in [avail, used] {
                let _ = m.mem.write_obj(0u32, GuestAddress(at));
            }
            m.write32(reg::VIRTIO_MMIO_QUEUE_READY, u32::from(ready));
            self.rings.push(Ring {
                size: u16::try_from(size).unwrap_or(0),
                desc,
                avail,
                used,
                avail_idx: 0,
                next_desc: 0,
            });
        }
        m.write32(STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
        m.check_status();
    }

    /// Posts one chain (see [`Op::Post`]); returns the queue's index.
    pub fn post(
        &mut self,
        m: &Machine,
        q: usize,
        first: Option<u16>,
        bufs: &[Buf],
        publish: bool,
    ) -> Option<usize> {
        let n = self.rings.len();
        let index = q % n.max(1);
        let r = self.ring_mut(q)?;
        if r.size == 0 || bufs.is_empty() {
            return None;
        }
        let size = r.size;
        let head = first.unwrap_or(r.next_desc) % size;
        let n = bufs.len().min(usize::from(size));
        for (k, b) in bufs.iter().take(n).enumerate() {
            let index = (head + k as u16) % size;
            let addr = b.addr.get(1);
            if !b.data.is_empty() && addr < MEM_END {
                let room = region_room(addr);
                let data = &b.data[..b.data.len().min(room)];
                let _ = m.mem.write_slice(data, GuestAddress(addr));
            }
            let mut flags = 0u16;
            if b.writable {
                flags |= VRING_DESC_F_WRITE as u16;
            }
            let last = k + 1 == n;
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let next = (index + 1) % size;
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&b.len().to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
            let at = r.desc.wrapping_add(16 * u64::from(index));
            let _ = m.mem.write_slice(&d, GuestAddress(at));
        }
        r.next_desc = (head + n as u16) % size;
        let slot = u64::from(r.avail_idx % size);
        let _ = m.mem.write_obj(
            head.to_le(),
            GuestAddress(r.avail.wrapping_add(4 + 2 * slot)),
        );
        r.avail_idx = r.avail_idx.wrapping_add(1);
        if publish {
            let _ = m
                .mem
                .write_obj(r.avail_idx.to_le(), GuestAddress(r.avail.wrapping_add(2)));
        }
        Some(index)
    }
}

/// Bytes from `addr` to the end of its region (0 in the hole or beyond memory).
pub fn region_room(addr: u64) -> usize {
    let len = REGION_LEN as u64;
    let end = if addr < len {
        len
    } else if (REGION1..REGION1 + len).contains(&addr) {
        REGION1 + len
    } else {
        addr
    };
    (end - addr) as usize
}

/// Reads `n` bytes of the stream over `buffers` (as the device wrote them).
pub fn read_buffers(m: &Machine, buffers: &[(u64, u32)], n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    for &(addr, len) in buffers {
        if out.len() >= n {
            break;
        }
        let take = (len as usize).min(n - out.len());
        let mut part = vec![0u8; take];
        if m.mem.read_slice(&mut part, GuestAddress(addr)).is_err() {
            break;
        }
        out.extend_from_slice(&part);
    }
    out
}
