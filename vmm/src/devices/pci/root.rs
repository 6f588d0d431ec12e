//! PCI bus 0: a host bridge at 00:00.0 and one function per device in the next slots,
//! reached through configuration mechanism #1 (the address register at 0xCF8, the data
//! window at 0xCFC-0xCFF: [`ConfigPorts`]) and, for their BARs, through one window of the
//! MMIO bus ([`BarWindow`]) that dispatches by where each function's BAR is now.
//!
//! Linux finds the bus without ACPI: it checks that 0xCF8 reads back what it wrote and
//! that some function on bus 0 is a host bridge, then scans. Only bus 0 and function 0 of
//! each slot exist; everything else reads all ones. A BAR the guest placed outside the
//! window decodes nothing (it may lie over RAM, which the guest then still reaches as
//! RAM); where two BARs overlap, accesses are refused: neither function gets them.

use super::config::{self, ConfigSpace, Identity};
use super::persist::{PciStateError, RootState};
use crate::devices::bus::BusDevice;
use crate::metrics::METRICS;
use crate::sync::lock;
use std::sync::{Arc, Mutex};

/// The configuration address register and data window.
pub const CONFIG_PORT: u16 = 0xcf8;
/// Ports from [`CONFIG_PORT`]: address (4) and data (4).
pub const CONFIG_PORTS_LEN: u64 = 8;
/// Offset of the data window from [`CONFIG_PORT`].
const DATA_OFFSET: u64 = 4;
/// Address register: the enable bit.
const ADDRESS_ENABLE: u32 = 1 << 31;
/// Slots on bus 0 (device numbers 0-31).
pub const SLOTS: usize = 32;

/// The host bridge's identity: Red Hat's "QEMU PCIe host bridge" ID, which Linux knows no
/// quirk for; class 0x0600 (host bridge) is what Linux's conf1 probe looks for.
const HOST_BRIDGE: Identity = Identity {
    vendor: 0x1b36,
    device: 0x0008,
    class: 0x06_00_00,
    revision: 0,
    subsystem_vendor: 0x1b36,
    subsystem: 0x0008,
};

/// Why a configuration access reaches no function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Miss {
    /// Address register not enabled, or the access unaligned or of another width.
    Malformed,
    /// No such bus, function or slot.
    Absent,
}

/// A function on the bus. Configuration accesses arrive checked by
/// [`config::access_ok`]; BAR accesses at an offset from the BAR's start, inside it.
pub trait PciFunction: Send {
    fn config_read(&mut self, offset: u64, data: &mut [u8]);
    fn config_write(&mut self, offset: u64, data: &[u8]);
    /// Where the function's BAR decodes now (address, size), if it is enabled.
    fn bar(&self) -> Option<(u64, u64)>;
    fn bar_read(&mut self, offset: u64, data: &mut [u8]);
    fn bar_write(&mut self, offset: u64, data: &[u8]);
    /// The guest enabled a BAR (`Some`) or disabled it (`None`) where the bus cannot let it
    /// decode (outside the window, over another BAR): the function stops or starts what it
    /// has there (ioeventfds).
    fn bar_accepted(&mut self, at: Option<u64>);
}

/// Bus 0.
pub struct PciRoot {
    bridge: ConfigSpace,
    /// Slot 1 onwards.
    functions: Vec<Box<dyn PciFunction>>,
    /// The last value written to 0xCF8.
    address: u32,
    /// The MMIO window BARs must lie in.
    window: (u64, u64),
}

impl PciRoot {
    /// A bus whose BARs must lie in `[start, end)`.
    pub fn new(start: u64, end: u64) -> Self {
        PciRoot {
            bridge: ConfigSpace::new(HOST_BRIDGE),
            functions: Vec::new(),
            address: 0,
            window: (start, end),
        }
    }

    /// Puts `f` in the next slot; returns its device number, or `None` when the bus is
    /// full.
    pub fn add(&mut self, f: Box<dyn PciFunction>) -> Option<u8> {
        if self.functions.len() + 1 >= SLOTS {
            return None;
        }
        self.functions.push(f);
        u8::try_from(self.functions.len()).ok()
    }

    /// The function the address register selects and the register offset, for an access
    /// of `len` bytes at data port offset `port` (0-3). `None` for the host bridge.
    fn target(&self, port: u64, len: usize) -> Result<(Option<usize>, u64), Miss> {
        let a = self.address;
        let offset = u64::from(a & 0xfc) + port;
        if a & ADDRESS_ENABLE == 0 || config::access_ok(offset, len).is_none() {
            return Err(Miss::Malformed);
        }
        let bus = (a >> 16) & 0xff;
        let slot = (a >> 11) & 0x1f;
        let func = (a >> 8) & 0x7;
        if bus != 0 || func != 0 {
            return Err(Miss::Absent);
        }
        match slot {
            0 => Ok((None, offset)),
            n => {
                let i = usize::try_from(n - 1).map_err(|_| Miss::Absent)?;
                (i < self.functions.len())
                    .then_some((Some(i), offset))
                    .ok_or(Miss::Absent)
            }
        }
    }

    fn config_read(&mut self, port: u64, data: &mut [u8]) {
        match self.target(port, data.len()) {
            Ok((None, off)) => {
                self.bridge.read(off, data);
            }
            Ok((Some(i), off)) => {
                if let Some(f) = self.functions.get_mut(i) {
                    f.config_read(off, data);
                }
            }
            Err(miss) => {
                // An absent function reads all ones (how a scan sees an empty slot): not
                // an error of the guest's, unlike a malformed access.
                data.fill(0xff);
                if miss == Miss::Malformed {
                    METRICS.pci.invalid_config_accesses.inc();
                }
            }
        }
    }

    fn config_write(&mut self, port: u64, data: &[u8]) {
        match self.target(port, data.len()) {
            Ok((None, off)) => {
                self.bridge.write(off, data);
            }
            Ok((Some(i), off)) => {
                if let Some(f) = self.functions.get_mut(i) {
                    f.config_write(off, data);
                }
                self.check_bars();
            }
            Err(_) => METRICS.pci.invalid_config_accesses.inc(),
        }
    }

    /// Tells each function whether its BAR may decode where the guest put it.
    fn check_bars(&mut self) {
        let bars: Vec<Option<(u64, u64)>> = self.functions.iter().map(|f| f.bar()).collect();
        let (start, end) = self.window;
        for (i, f) in self.functions.iter_mut().enumerate() {
            let Some(Some((base, size))) = bars.get(i).copied() else {
                f.bar_accepted(None);
                continue;
            };
            let inside = base >= start && base.checked_add(size).is_some_and(|e| e <= end);
            let overlaps = bars.iter().enumerate().any(|(j, other)| {
                j != i && other.is_some_and(|(b, s)| base < b.saturating_add(s) && b < base + size)
            });
            if inside && !overlaps {
                f.bar_accepted(Some(base));
            } else {
                METRICS.pci.bars_refused.inc();
                f.bar_accepted(None);
            }
        }
    }

    /// The one function whose accepted BAR covers `[addr, addr + len)`.
    fn bar_target(&mut self, addr: u64, len: usize) -> Option<(&mut Box<dyn PciFunction>, u64)> {
        let end = addr.checked_add(u64::try_from(len).ok()?)?;
        let (start, wend) = self.window;
        let mut found = None;
        for (i, f) in self.functions.iter().enumerate() {
            let Some((base, size)) = f.bar() else {
                continue;
            };
            if base < start || base.saturating_add(size) > wend {
                continue;
            }
            if addr >= base && end <= base + size {
                if found.is_some() {
                    return None;
                }
                found = Some((i, addr - base));
            } else if addr < base.saturating_add(size) && base < end {
                // Straddles a BAR's edge, or the BARs overlap.
                return None;
            }
        }
        let (i, off) = found?;
        self.functions.get_mut(i).map(|f| (f, off))
    }
}

impl PciRoot {
    /// The address register and the host bridge (a snapshot; the functions save their own).
    pub fn save_state(&self) -> RootState {
        RootState {
            address: self.address,
            bridge: self.bridge.save_state(),
        }
    }

    /// Loads `s` into this freshly built bus.
    pub fn restore_state(&mut self, s: &RootState) -> Result<(), PciStateError> {
        self.bridge.restore_state(&s.bridge)?;
        self.address = s.address;
        Ok(())
    }

    /// Once every function has its saved state: lets each function decode where the guest
    /// left its BAR (registering its ioeventfds there), as after a guest write; a BAR the
    /// guest had left outside the window or over another decodes nothing, as it did before
    /// the snapshot.
    pub fn accept_restored_bars(&mut self) {
        self.check_bars();
    }
}

/// 0xCF8-0xCFF on the port I/O bus.
pub struct ConfigPorts(pub Arc<Mutex<PciRoot>>);

impl BusDevice for ConfigPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut root = lock(&self.0);
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&root.address.to_le_bytes()),
            (o, _) if o >= DATA_OFFSET => root.config_read(o - DATA_OFFSET, data),
            _ => {
                // Byte and word accesses to 0xCF8-0xCFB are not configuration mechanism
                // #1 (Linux probes with one).
                data.fill(0xff);
                METRICS.pci.invalid_config_accesses.inc();
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut root = lock(&self.0);
        match (offset, <[u8; 4]>::try_from(data)) {
            (0, Ok(v)) => root.address = u32::from_le_bytes(v),
            (o, _) if o >= DATA_OFFSET => root.config_write(o - DATA_OFFSET, data),
            _ => METRICS.pci.invalid_config_accesses.inc(),
        }
    }
}

/// 0xCF8-0xCFF of a microVM without a PCI bus (no `--enable-pci`): nothing latches the
/// address and every read is all ones, as on a PC without PCI, but the ports are not "no
/// device" for `--strict-io`: a Linux kernel built with PCI support reads configuration
/// space before it parses `pci=off` (its Sandy Bridge graphics check), and that probe must
/// not stop the VM. The accesses are counted.
pub struct NoBus;

impl BusDevice for NoBus {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        METRICS.pci.absent_bus_accesses.inc();
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {
        METRICS.pci.absent_bus_accesses.inc();
    }
}

/// The BAR window on the MMIO bus.
pub struct BarWindow {
    pub root: Arc<Mutex<PciRoot>>,
    /// The window's base address (the bus hands offsets from it).
    pub base: u64,
}

impl BusDevice for BarWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut root = lock(&self.root);
        let addr = self.base.saturating_add(offset);
        match root.bar_target(addr, data.len()) {
            Some((f, off)) => f.bar_read(off, data),
            None => {
                data.fill(0xff);
                METRICS.pci.invalid_bar_accesses.inc();
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut root = lock(&self.root);
        let addr = self.base.saturating_add(offset);
        match root.bar_target(addr, data.len()) {
            Some((f, off)) => f.bar_write(off, data),
            None => METRICS.pci.invalid_bar_accesses.inc(),
        }
    }
}

#[cfg(test)]
mod tests;
