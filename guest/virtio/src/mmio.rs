//! One virtio-mmio device's register window (virtio 1.2, section 4.2.2).
//!
//! Every register access is one volatile access to the window, which the guests' page tables
//! map uncached; under KVM each one is an exit to the VMM, the dominant cost of bringing a
//! device up. So the transport offers both the complete hand-shake ([`Mmio::negotiate`],
//! [`Mmio::setup_queue`]) and the short one for a device fresh from the VMM
//! ([`Mmio::negotiate_fresh`], [`Mmio::setup_queue_fresh`]), which writes only what differs
//! from the reset values, recorded into a [`Batch`] that the guest performs in one go.

// Register values are deliberately cut to the 32, 16 or 8 bits the register has.
#![allow(clippy::cast_possible_truncation)]

use crate::batch::{Batch, OpIndex};
use crate::ring::Queue;
use core::ptr::{read_volatile, write_volatile};

/// "virt", the value of the magic register.
pub const MAGIC: u32 = 0x7472_6976;
pub const DEVICE_NET: u32 = 1;
pub const DEVICE_BLK: u32 = 2;
pub const DEVICE_RNG: u32 = 4;
pub const DEVICE_BALLOON: u32 = 5;
pub const DEVICE_VSOCK: u32 = 19;

pub const REG_MAGIC: u32 = 0x000;
pub const REG_VERSION: u32 = 0x004;
pub const REG_DEVICE_ID: u32 = 0x008;
pub const REG_DEVICE_FEATURES: u32 = 0x010;
pub const REG_DEVICE_FEATURES_SEL: u32 = 0x014;
pub const REG_DRIVER_FEATURES: u32 = 0x020;
pub const REG_DRIVER_FEATURES_SEL: u32 = 0x024;
pub const REG_QUEUE_SEL: u32 = 0x030;
pub const REG_QUEUE_NUM_MAX: u32 = 0x034;
pub const REG_QUEUE_NUM: u32 = 0x038;
pub const REG_QUEUE_READY: u32 = 0x044;
pub const REG_QUEUE_NOTIFY: u32 = 0x050;
pub const REG_INTERRUPT_STATUS: u32 = 0x060;
pub const REG_INTERRUPT_ACK: u32 = 0x064;
pub const REG_STATUS: u32 = 0x070;
pub const REG_QUEUE_DESC_LOW: u32 = 0x080;
pub const REG_QUEUE_DESC_HIGH: u32 = 0x084;
pub const REG_QUEUE_AVAIL_LOW: u32 = 0x090;
pub const REG_QUEUE_AVAIL_HIGH: u32 = 0x094;
pub const REG_QUEUE_USED_LOW: u32 = 0x0a0;
pub const REG_QUEUE_USED_HIGH: u32 = 0x0a4;
pub const REG_CONFIG_GENERATION: u32 = 0x0fc;
pub const REG_CONFIG: u32 = 0x100;
/// Size of the register file up to the configuration space.
pub const REGISTERS_SIZE: u64 = 0x200;
/// The window every register offset falls in: offsets are taken modulo its size.
pub const WINDOW_SIZE: u64 = 0x1000;

pub const STATUS_ACK: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;

/// VIRTIO_F_VERSION_1 (bit 32: bit 0 of the second feature word).
pub const F_VERSION_1: u64 = 1 << 32;

/// One device's register window.
#[derive(Clone, Copy)]
pub struct Mmio {
    base: u64,
    irq: u32,
}

impl Mmio {
    /// The device whose registers are at `base`, interrupting on `irq`.
    ///
    /// # Safety
    /// `[base, base + WINDOW_SIZE)` holds no Rust object or other memory the program uses:
    /// it is a device window the guest's page tables map (uncached), or unmapped (an access
    /// then faults), for as long as the `Mmio` (or a copy) is used.
    pub const unsafe fn new(base: u64, irq: u32) -> Mmio {
        Mmio { base, irq }
    }

    /// Physical address of the window.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The device's interrupt line (from the command line).
    pub fn irq(&self) -> u32 {
        self.irq
    }

    /// The address of the register at `offset` (taken modulo the window's size), for a
    /// [`Batch`] or a direct access.
    pub fn register(&self, offset: u32) -> u64 {
        self.base + (u64::from(offset) % WINDOW_SIZE)
    }

    /// The 32-bit register at `offset`.
    pub fn read(&self, offset: u32) -> u32 {
        // SAFETY: inside the window (offset modulo its size), which holds nothing the program
        // uses (the contract of `new`); an aligned 32-bit access there is an MMIO exit.
        unsafe { read_volatile(self.register(offset) as *const u32) }
    }

    /// Writes the 32-bit register at `offset`.
    pub fn write(&self, offset: u32, value: u32) {
        // SAFETY: as for `read`.
        unsafe { write_volatile(self.register(offset) as *mut u32, value) }
    }

    /// A read of `width` bytes (1, 2 or 8; anything else reads 4), zero-extended. Drivers
    /// read 32-bit registers and configuration bytes; tests of a device's checks read other
    /// widths.
    pub fn read_width(&self, offset: u32, width: u32) -> u64 {
        let p = self.register(offset);
        // SAFETY: as for `read`: the VMM sees an access of this width at this address.
        unsafe {
            match width {
                1 => u64::from(read_volatile(p as *const u8)),
                2 => u64::from(read_volatile(p as *const u16)),
                8 => read_volatile(p as *const u64),
                _ => u64::from(read_volatile(p as *const u32)),
            }
        }
    }

    /// A write of the low `width` bytes of `value` (1, 2 or 8; anything else writes 4), for
    /// tests of a device's checks.
    pub fn write_width(&self, offset: u32, width: u32, value: u64) {
        let p = self.register(offset);
        // SAFETY: as for `read`: the VMM sees an access of this width at this address.
        unsafe {
            match width {
                1 => write_volatile(p as *mut u8, value as u8),
                2 => write_volatile(p as *mut u16, value as u16),
                8 => write_volatile(p as *mut u64, value),
                _ => write_volatile(p as *mut u32, value as u32),
            }
        }
    }

    pub fn device_id(&self) -> u32 {
        self.read(REG_DEVICE_ID)
    }

    pub fn status(&self) -> u32 {
        self.read(REG_STATUS)
    }

    pub fn set_status(&self, status: u32) {
        self.write(REG_STATUS, status);
    }

    /// Status 0: the device forgets everything.
    pub fn reset(&self) {
        self.set_status(0);
    }

    /// The device's feature bits.
    pub fn features(&self) -> u64 {
        self.write(REG_DEVICE_FEATURES_SEL, 1);
        let high = self.read(REG_DEVICE_FEATURES);
        self.write(REG_DEVICE_FEATURES_SEL, 0);
        u64::from(high) << 32 | u64::from(self.read(REG_DEVICE_FEATURES))
    }

    /// Reset, ACKNOWLEDGE, DRIVER, the driver's features (`wanted` & offered, plus
    /// VERSION_1), FEATURES_OK. Returns the accepted features, or the status read back when
    /// the device refused them.
    pub fn negotiate(&self, wanted: u64) -> Result<u64, u32> {
        self.reset();
        self.set_status(STATUS_ACK);
        self.set_status(STATUS_ACK | STATUS_DRIVER);
        let features = (self.features() & wanted) | F_VERSION_1;
        self.write(REG_DRIVER_FEATURES_SEL, 0);
        self.write(REG_DRIVER_FEATURES, features as u32);
        self.write(REG_DRIVER_FEATURES_SEL, 1);
        self.write(REG_DRIVER_FEATURES, (features >> 32) as u32);
        self.set_status(STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK);
        let status = self.status();
        if status & STATUS_FEATURES_OK == 0 {
            return Err(status);
        }
        Ok(features)
    }

    /// Records the short hand-shake for a device fresh from the VMM (status 0, never driven,
    /// so no reset is written): ACKNOWLEDGE, DRIVER, VERSION_1 as the only feature (the
    /// offered features are not read and feature word 0 stays at its reset value 0),
    /// FEATURES_OK, and its read-back as a check: the batch stops there when the device
    /// refused. Six register accesses instead of twelve.
    pub fn negotiate_fresh<const B: usize>(&self, batch: &mut Batch<B>) -> OpIndex {
        let status = self.register(REG_STATUS);
        batch.write(status, STATUS_ACK);
        batch.write(status, STATUS_ACK | STATUS_DRIVER);
        batch.write(self.register(REG_DRIVER_FEATURES_SEL), 1);
        batch.write(
            self.register(REG_DRIVER_FEATURES),
            (F_VERSION_1 >> 32) as u32,
        );
        batch.write(status, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK);
        batch.check(status, STATUS_FEATURES_OK, STATUS_FEATURES_OK)
    }

    /// Configures queue `index` with `size` entries on `q`'s memory (all six address
    /// halves) and enables it.
    pub fn setup_queue<const N: usize>(&self, index: u32, size: u32, q: &Queue<N>) {
        self.write(REG_QUEUE_SEL, index);
        self.write(REG_QUEUE_NUM, size);
        let (desc, avail, used) = q.addresses();
        self.write(REG_QUEUE_DESC_LOW, desc as u32);
        self.write(REG_QUEUE_DESC_HIGH, (desc >> 32) as u32);
        self.write(REG_QUEUE_AVAIL_LOW, avail as u32);
        self.write(REG_QUEUE_AVAIL_HIGH, (avail >> 32) as u32);
        self.write(REG_QUEUE_USED_LOW, used as u32);
        self.write(REG_QUEUE_USED_HIGH, (used >> 32) as u32);
        self.write(REG_QUEUE_READY, 1);
    }

    /// Records the set-up of queue `index` of a device fresh from the VMM with `N` entries on
    /// `q`'s memory, and its enabling. The address registers' high halves are written only
    /// when not 0 (their reset value), and the queue's maximum size is not read: a device
    /// whose queue is smaller than `N` refuses DRIVER_OK, which the driver reports. Three
    /// register accesses fewer per queue than [`Mmio::setup_queue`] for rings below 4 GiB.
    pub fn setup_queue_fresh<const N: usize, const B: usize>(
        &self,
        batch: &mut Batch<B>,
        index: u32,
        q: &Queue<N>,
    ) {
        batch.write(self.register(REG_QUEUE_SEL), index);
        let (desc, avail, used) = q.addresses();
        batch.write(self.register(REG_QUEUE_NUM), N as u32);
        for (low, addr) in [
            (REG_QUEUE_DESC_LOW, desc),
            (REG_QUEUE_AVAIL_LOW, avail),
            (REG_QUEUE_USED_LOW, used),
        ] {
            batch.write(self.register(low), addr as u32);
            if addr >> 32 != 0 {
                batch.write(self.register(low + 4), (addr >> 32) as u32);
            }
        }
        batch.write(self.register(REG_QUEUE_READY), 1);
    }

    /// Sets DRIVER_OK (with ACKNOWLEDGE, DRIVER, FEATURES_OK); returns the status read back.
    pub fn driver_ok(&self) -> u32 {
        self.set_status(STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        self.status()
    }

    /// Records DRIVER_OK (with ACKNOWLEDGE, DRIVER, FEATURES_OK) and its read-back as a
    /// check: the batch stops there unless DRIVER_OK is set and NEEDS_RESET is not.
    pub fn driver_ok_fresh<const B: usize>(&self, batch: &mut Batch<B>) -> OpIndex {
        let status = self.register(REG_STATUS);
        batch.write(
            status,
            STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        batch.check(
            status,
            STATUS_DRIVER_OK | STATUS_NEEDS_RESET,
            STATUS_DRIVER_OK,
        )
    }

    pub fn config_u8(&self, offset: u32) -> u8 {
        self.read_width(REG_CONFIG + offset, 1) as u8
    }

    pub fn config_u32(&self, offset: u32) -> u32 {
        self.read(REG_CONFIG + offset)
    }

    /// The 64-bit configuration field at `offset` (high half read first).
    pub fn config_u64(&self, offset: u32) -> u64 {
        u64::from(self.config_u32(offset + 4)) << 32 | u64::from(self.config_u32(offset))
    }

    /// Tells the device that queue `queue` has new buffers.
    pub fn notify(&self, queue: u32) {
        self.write(REG_QUEUE_NOTIFY, queue);
    }
}
