//! virtio over PCI, polled or with MSI-X: configuration mechanism #1 (0xCF8/0xCFC), the
//! capability walk, BAR sizing, and a modern virtio device's regions (common
//! configuration, notifications, ISR, device configuration, MSI-X table and pending
//! bits), all in the BAR the VMM placed in the uncached 3-4 GiB range.

// Register values are cut to the width of their field.
#![allow(clippy::cast_possible_truncation)]

use super::ring::Ring;
use super::{F_VERSION_1, STATUS_ACK, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK};
use crate::arch::{inb, inl, inw, outl, outw};
use core::ptr::{read_volatile, write_volatile};
use kiln_guest_boot::{IDENTITY_MAP_END, MMIO_GAP_START};

pub const CONFIG_ADDRESS: u16 = 0xcf8;
pub const CONFIG_DATA: u16 = 0xcfc;
pub const VENDOR_VIRTIO: u16 = 0x1af4;
pub const DEVICE_BASE: u16 = 0x1040;
pub const CAP_VENDOR: u8 = 0x09;
pub const CAP_MSIX: u8 = 0x11;
pub const COMMAND_MEMORY: u16 = 2;
/// `VIRTIO_MSI_NO_VECTOR`: the queue or configuration raises no MSI-X vector.
pub const NO_VECTOR: u16 = 0xffff;

/// Common configuration offsets.
pub const C_DFSELECT: u64 = 0x00;
pub const C_DF: u64 = 0x04;
pub const C_GFSELECT: u64 = 0x08;
pub const C_GF: u64 = 0x0c;
pub const C_MSIX_CONFIG: u64 = 0x10;
pub const C_NUM_QUEUES: u64 = 0x12;
pub const C_STATUS: u64 = 0x14;
pub const C_Q_SELECT: u64 = 0x16;
pub const C_Q_SIZE: u64 = 0x18;
pub const C_Q_MSIX: u64 = 0x1a;
pub const C_Q_ENABLE: u64 = 0x1c;
pub const C_Q_NOFF: u64 = 0x1e;
pub const C_Q_DESC: u64 = 0x20;
pub const C_Q_DRIVER: u64 = 0x28;
pub const C_Q_DEVICE: u64 = 0x30;

/// The configuration address of register `off` of slot `slot` on bus 0.
pub fn address(slot: u8, off: u8) -> u32 {
    0x8000_0000 | u32::from(slot) << 11 | u32::from(off & 0xfc)
}

pub fn cfg_read32(slot: u8, off: u8) -> u32 {
    outl(CONFIG_ADDRESS, address(slot, off));
    inl(CONFIG_DATA)
}

pub fn cfg_read16(slot: u8, off: u8) -> u16 {
    outl(CONFIG_ADDRESS, address(slot, off));
    inw(CONFIG_DATA + u16::from(off & 2))
}

pub fn cfg_read8(slot: u8, off: u8) -> u8 {
    outl(CONFIG_ADDRESS, address(slot, off));
    inb(CONFIG_DATA + u16::from(off & 3))
}

pub fn cfg_write32(slot: u8, off: u8, v: u32) {
    outl(CONFIG_ADDRESS, address(slot, off));
    outl(CONFIG_DATA, v);
}

pub fn cfg_write16(slot: u8, off: u8, v: u16) {
    outl(CONFIG_ADDRESS, address(slot, off));
    outw(CONFIG_DATA + u16::from(off & 2), v);
}

/// Whether the address register reads back (a configuration mechanism #1 is there).
pub fn conf1_present() -> bool {
    outl(CONFIG_ADDRESS, 0x8000_0000);
    inl(CONFIG_ADDRESS) == 0x8000_0000
}

/// A virtio device found on bus 0, its BAR sized and its capabilities read.
#[derive(Clone, Copy, Default)]
pub struct PciDev {
    pub slot: u8,
    pub device_id: u16,
    pub bar: u64,
    pub bar_size: u64,
    /// Region offsets in the BAR (`None`: no such capability).
    pub common: Option<u64>,
    pub notify: Option<u64>,
    pub isr: Option<u64>,
    pub device: Option<u64>,
    pub notify_mult: u32,
    pub msix_cap: u8,
    pub msix_size: u16,
    pub msix_table: u64,
    pub msix_pba: u64,
    /// Capabilities seen (a walk stops after 16: a looping list must not hang the guest).
    pub caps: u32,
}

impl PciDev {
    /// The virtio device in `slot`, if there is one. Sizes its BAR (writing all ones and
    /// restoring it) and walks its capability list.
    pub fn probe(slot: u8) -> Option<PciDev> {
        let id = cfg_read32(slot, 0);
        let (vendor, device) = (id as u16, (id >> 16) as u16);
        if vendor != VENDOR_VIRTIO || device < DEVICE_BASE {
            return None;
        }
        let mut d = PciDev {
            slot,
            device_id: device,
            ..PciDev::default()
        };
        let bar = cfg_read32(slot, 0x10);
        cfg_write32(slot, 0x10, u32::MAX);
        let mask = cfg_read32(slot, 0x10) & !0xf;
        cfg_write32(slot, 0x10, bar);
        d.bar = u64::from(bar & !0xf);
        d.bar_size = u64::from((!mask).wrapping_add(1));
        let mut at = cfg_read8(slot, 0x34);
        while at != 0 && d.caps < 16 {
            d.caps += 1;
            match cfg_read8(slot, at) {
                CAP_VENDOR => {
                    let off = u64::from(cfg_read32(slot, at + 8));
                    match cfg_read8(slot, at + 3) {
                        1 => d.common = Some(off),
                        2 => {
                            d.notify = Some(off);
                            d.notify_mult = cfg_read32(slot, at + 16);
                        }
                        3 => d.isr = Some(off),
                        4 => d.device = Some(off),
                        _ => {}
                    }
                }
                CAP_MSIX => {
                    d.msix_cap = at;
                    d.msix_size = (cfg_read16(slot, at + 2) & 0x7ff) + 1;
                    d.msix_table = u64::from(cfg_read32(slot, at + 4) & !7);
                    d.msix_pba = u64::from(cfg_read32(slot, at + 8) & !7);
                }
                _ => {}
            }
            at = cfg_read8(slot, at + 1);
        }
        Some(d)
    }

    /// Whether the BAR lies where the guest's page tables map device memory uncached, and
    /// every region the driver needs was found.
    pub fn usable(&self) -> bool {
        self.bar >= MMIO_GAP_START
            && self.bar.saturating_add(self.bar_size) <= IDENTITY_MAP_END
            && self.common.is_some()
            && self.notify.is_some()
            && self.msix_cap != 0
    }

    /// Turns memory decoding on.
    pub fn enable(&self) {
        let cmd = cfg_read16(self.slot, 0x04);
        cfg_write16(self.slot, 0x04, cmd | COMMAND_MEMORY);
    }

    /// MSI-X on (and the function unmasked) or off.
    pub fn msix_enable(&self, on: bool) {
        cfg_write16(self.slot, self.msix_cap + 2, if on { 0x8000 } else { 0 });
    }

    fn ptr(&self, off: u64) -> u64 {
        self.bar + off
    }

    /// A `width`-byte read at `off` in the BAR.
    pub fn read(&self, off: u64, width: u32) -> u64 {
        let p = self.ptr(off);
        // SAFETY: the BAR lies in [3 GiB, 4 GiB) (checked by `usable` before a driver uses
        // it), mapped uncached by entry.rs's page tables; no Rust object lives there.
        unsafe {
            match width {
                1 => u64::from(read_volatile(p as *const u8)),
                2 => u64::from(read_volatile(p as *const u16)),
                4 => u64::from(read_volatile(p as *const u32)),
                _ => read_volatile(p as *const u64),
            }
        }
    }

    /// A `width`-byte write at `off` in the BAR.
    pub fn write(&self, off: u64, width: u32, v: u64) {
        let p = self.ptr(off);
        // SAFETY: as for `read`.
        unsafe {
            match width {
                1 => write_volatile(p as *mut u8, v as u8),
                2 => write_volatile(p as *mut u16, v as u16),
                4 => write_volatile(p as *mut u32, v as u32),
                _ => write_volatile(p as *mut u64, v),
            }
        }
    }

    fn common(&self) -> u64 {
        self.common.unwrap_or(0)
    }

    pub fn cread(&self, field: u64, width: u32) -> u64 {
        self.read(self.common() + field, width)
    }

    pub fn cwrite(&self, field: u64, width: u32, v: u64) {
        self.write(self.common() + field, width, v);
    }

    /// Programs MSI-X table entry `i` to send `vector` to the local APIC `apic_id`.
    pub fn msix_entry(&self, i: u64, apic_id: u32, vector: u8, masked: bool) {
        let e = self.msix_table + i * 16;
        self.write(e, 4, 0xfee0_0000 | u64::from(apic_id) << 12);
        self.write(e + 4, 4, 0);
        self.write(e + 8, 4, u64::from(vector));
        self.write(e + 12, 4, u64::from(masked));
    }

    pub fn msix_mask(&self, i: u64, masked: bool) {
        self.write(self.msix_table + i * 16 + 12, 4, u64::from(masked));
    }

    /// Pending bit of vector `i`.
    pub fn pending(&self, i: u64) -> bool {
        self.read(self.msix_pba + (i / 64) * 8, 8) & (1 << (i % 64)) != 0
    }

    /// Reset, ACKNOWLEDGE, DRIVER, VERSION_1 only, FEATURES_OK: the status read back
    /// (with FEATURES_OK when the device accepted).
    pub fn negotiate(&self) -> u32 {
        self.cwrite(C_STATUS, 1, 0);
        self.cwrite(C_STATUS, 1, u64::from(STATUS_ACK));
        self.cwrite(C_STATUS, 1, u64::from(STATUS_ACK | STATUS_DRIVER));
        self.cwrite(C_DFSELECT, 4, 1);
        let high = self.cread(C_DF, 4);
        self.cwrite(C_GFSELECT, 4, 1);
        self.cwrite(C_GF, 4, high & (F_VERSION_1 >> 32));
        self.cwrite(C_GFSELECT, 4, 0);
        self.cwrite(C_GF, 4, 0);
        self.cwrite(
            C_STATUS,
            1,
            u64::from(STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK),
        );
        self.cread(C_STATUS, 1) as u32
    }

    /// Sets up queue `index` on `ring` with MSI-X `vector`; returns the vector read back.
    pub fn setup_queue(&self, index: u16, ring: &Ring, size: u16, vector: u16) -> u16 {
        self.cwrite(C_Q_SELECT, 2, u64::from(index));
        self.cwrite(C_Q_SIZE, 2, u64::from(size));
        self.cwrite(C_Q_MSIX, 2, u64::from(vector));
        let (desc, avail, used) = ring.addresses();
        for (field, addr) in [(C_Q_DESC, desc), (C_Q_DRIVER, avail), (C_Q_DEVICE, used)] {
            self.cwrite(field, 4, addr & 0xffff_ffff);
            self.cwrite(field + 4, 4, addr >> 32);
        }
        let back = self.cread(C_Q_MSIX, 2) as u16;
        self.cwrite(C_Q_ENABLE, 2, 1);
        back
    }

    pub fn driver_ok(&self) -> u32 {
        let all = STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        self.cwrite(C_STATUS, 1, u64::from(all));
        self.cread(C_STATUS, 1) as u32
    }

    /// Notifies queue `index` (at its notify offset).
    pub fn notify(&self, index: u16) {
        self.cwrite(C_Q_SELECT, 2, u64::from(index));
        let off = self.cread(C_Q_NOFF, 2);
        let at = self.notify.unwrap_or(0) + off * u64::from(self.notify_mult);
        self.write(at, 2, u64::from(index));
    }
}

/// The local APIC (software-enabled here, interrupts stay off: an MSI lands in its IRR,
/// where the guest sees it without taking it).
pub mod lapic {
    use core::ptr::{read_volatile, write_volatile};

    const BASE: u64 = 0xfee0_0000;
    const ID: u64 = 0x20;
    const SVR: u64 = 0xf0;
    const IRR: u64 = 0x200;

    fn reg(off: u64) -> *mut u32 {
        (BASE + off) as *mut u32
    }

    /// Software-enables the APIC; returns its id.
    pub fn enable() -> u32 {
        // SAFETY: the local APIC page at its architectural address, mapped uncached by
        // entry.rs's page tables (3-4 GiB); no Rust object lives there.
        unsafe {
            write_volatile(reg(SVR), 0x1ff);
            read_volatile(reg(ID)) >> 24
        }
    }

    /// Whether `vector` is requested (in the IRR).
    pub fn requested(vector: u8) -> bool {
        let off = IRR + 0x10 * u64::from(vector / 32);
        // SAFETY: as for `enable`.
        let v = unsafe { read_volatile(reg(off)) };
        v & (1 << (vector % 32)) != 0
    }
}
