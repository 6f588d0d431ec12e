//! The device manager: puts devices on the port-I/O and MMIO buses, wires their interrupts
//! to the in-kernel irqchip, and hands out virtio-mmio windows and IRQs.
//!
//! Legacy devices have fixed ports and IRQs (COM1 at 0x3f8/IRQ 4, i8042 at 0x60–0x64/IRQ
//! 1). Each virtio-mmio device gets the next [`MMIO_SLOT_SIZE`] window from
//! [`MMIO_DEVICES_START`] and the next IRQ from [`IRQ_DEVICES_START`]; the kernel learns about
//! it from a `virtio_mmio.device=<size>@<base>:<irq>` command-line entry, which
//! [`DeviceManager::add_cmdline_entries`] appends in attachment order.

use super::bus::{Bus, BusDevice, BusError};
use super::legacy::i8042::{self, I8042};
use super::legacy::serial::{SerialDevice, SerialOutput};
use super::legacy::IrqLine;
use crate::arch::x86_64::layout::{
    COM1_PORT, I8042_DATA_PORT, IRQ_COM1, IRQ_DEVICES_END, IRQ_DEVICES_START, IRQ_I8042,
    MMIO_DEVICES_END, MMIO_DEVICES_START, MMIO_SLOT_SIZE,
};
use crate::vstate::vm::{Vm, VmError};
use linux_loader::cmdline::Cmdline;
use std::sync::{Arc, Mutex};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

/// COM1's eight registers.
const COM_PORT_LEN: u64 = 8;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot create an eventfd for IRQ {irq}: {source}")]
    EventFd { irq: u32, source: std::io::Error },
    #[error(transparent)]
    Irq(#[from] VmError),
    #[error("cannot place a device on the bus: {0}")]
    Bus(#[from] BusError),
    #[error("no virtio-mmio window left (the MMIO device area {MMIO_DEVICES_START:#x}..{MMIO_DEVICES_END:#x} is full)")]
    NoMmioWindow,
    #[error("no IRQ left for a virtio-mmio device (IRQs {IRQ_DEVICES_START} to {IRQ_DEVICES_END} are taken)")]
    NoIrq,
    #[error("the kernel command line has no room for the device entry {entry:?}: {reason}")]
    Cmdline { entry: String, reason: String },
}

/// A virtio-mmio device's window and IRQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

/// The devices of a built VM, as the vCPUs and the run loop use them.
pub struct Devices {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub serial: Option<Arc<Mutex<SerialDevice>>>,
    pub i8042: Option<Arc<Mutex<I8042>>>,
    /// The virtio devices, for runtime changes (set by the builder).
    pub virtio: super::virtio::setup::VirtioHandles,
}

pub struct DeviceManager {
    pio: Bus,
    mmio: Bus,
    serial: Option<Arc<Mutex<SerialDevice>>>,
    i8042: Option<Arc<Mutex<I8042>>>,
    next_mmio_base: u64,
    next_irq: u32,
    mmio_devices: Vec<MmioSlot>,
}

impl Default for DeviceManager {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceManager {
    pub fn new() -> Self {
        DeviceManager {
            pio: Bus::new(),
            mmio: Bus::new(),
            serial: None,
            i8042: None,
            next_mmio_base: MMIO_DEVICES_START,
            next_irq: IRQ_DEVICES_START,
            mmio_devices: Vec::new(),
        }
    }

    fn irq_line(vm: &Vm, irq: u32) -> Result<IrqLine, DeviceError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|source| DeviceError::EventFd { irq, source })?;
        vm.register_irqfd(&evt, irq)?;
        Ok(IrqLine(evt))
    }

    /// Attaches COM1 (writing to `serial_out`) and the i8042 (calling `on_reset` when the
    /// guest resets the CPU).
    pub fn attach_legacy_devices(
        &mut self,
        vm: &Vm,
        serial_out: SerialOutput,
        on_reset: Box<dyn Fn() + Send>,
    ) -> Result<(), DeviceError> {
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            Self::irq_line(vm, IRQ_COM1)?,
            serial_out,
        )));
        self.pio
            .insert(u64::from(COM1_PORT), COM_PORT_LEN, serial.clone())?;
        self.serial = Some(serial);
        let kbd = Arc::new(Mutex::new(I8042::new(
            Self::irq_line(vm, IRQ_I8042)?,
            on_reset,
        )));
        self.pio
            .insert(u64::from(I8042_DATA_PORT), i8042::RANGE_LEN, kbd.clone())?;
        self.i8042 = Some(kbd);
        Ok(())
    }

    /// Reserves the next virtio-mmio window and IRQ.
    pub fn allocate_mmio_slot(&mut self) -> Result<MmioSlot, DeviceError> {
        let base = self.next_mmio_base;
        if base
            .checked_add(MMIO_SLOT_SIZE)
            .is_none_or(|end| end > MMIO_DEVICES_END)
        {
            return Err(DeviceError::NoMmioWindow);
        }
        if self.next_irq > IRQ_DEVICES_END {
            return Err(DeviceError::NoIrq);
        }
        let slot = MmioSlot {
            base,
            size: MMIO_SLOT_SIZE,
            irq: self.next_irq,
        };
        self.next_mmio_base += MMIO_SLOT_SIZE;
        self.next_irq += 1;
        Ok(slot)
    }

    /// Puts a virtio-mmio device in `slot` (from [`Self::allocate_mmio_slot`]); the kernel
    /// will be told about it by [`Self::add_cmdline_entries`].
    pub fn attach_mmio_device(
        &mut self,
        slot: MmioSlot,
        dev: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), DeviceError> {
        self.mmio.insert(slot.base, slot.size, dev)?;
        self.mmio_devices.push(slot);
        Ok(())
    }

    /// Appends a `virtio_mmio.device=` entry per attached virtio-mmio device.
    pub fn add_cmdline_entries(&self, cmdline: &mut Cmdline) -> Result<(), DeviceError> {
        for s in &self.mmio_devices {
            cmdline
                .add_virtio_mmio_device(s.size, GuestAddress(s.base), s.irq, None)
                .map_err(|e| DeviceError::Cmdline {
                    entry: format!(
                        "virtio_mmio.device={}K@{:#x}:{}",
                        s.size >> 10,
                        s.base,
                        s.irq
                    ),
                    reason: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// The buses and devices, frozen for the running VM.
    pub fn finish(self) -> Devices {
        Devices {
            pio: Arc::new(self.pio),
            mmio: Arc::new(self.mmio),
            serial: self.serial,
            i8042: self.i8042,
            virtio: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dummy;
    impl BusDevice for Dummy {
        fn read(&mut self, _: u64, _: &mut [u8]) {}
        fn write(&mut self, _: u64, _: &[u8]) {}
    }

    #[test]
    fn slots_are_consecutive_and_reach_the_cmdline() {
        let mut dm = DeviceManager::new();
        let a = dm.allocate_mmio_slot().unwrap();
        let b = dm.allocate_mmio_slot().unwrap();
        assert_eq!(
            a,
            MmioSlot {
                base: 0xd000_0000,
                size: 0x1000,
                irq: 5
            }
        );
        assert_eq!(
            b,
            MmioSlot {
                base: 0xd000_1000,
                size: 0x1000,
                irq: 6
            }
        );
        dm.attach_mmio_device(a, Arc::new(Mutex::new(Dummy)))
            .unwrap();
        dm.attach_mmio_device(b, Arc::new(Mutex::new(Dummy)))
            .unwrap();
        let mut cl = Cmdline::new(256).unwrap();
        cl.insert_str("console=ttyS0").unwrap();
        dm.add_cmdline_entries(&mut cl).unwrap();
        assert_eq!(
            cl.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
    }

    #[test]
    fn irqs_run_out_cleanly() {
        let mut dm = DeviceManager::new();
        let n = IRQ_DEVICES_END - IRQ_DEVICES_START + 1;
        for _ in 0..n {
            dm.allocate_mmio_slot().unwrap();
        }
        assert!(matches!(dm.allocate_mmio_slot(), Err(DeviceError::NoIrq)));
    }

    #[test]
    fn a_full_cmdline_is_an_error_naming_the_entry() {
        let mut dm = DeviceManager::new();
        let s = dm.allocate_mmio_slot().unwrap();
        dm.attach_mmio_device(s, Arc::new(Mutex::new(Dummy)))
            .unwrap();
        let mut cl = Cmdline::new(16).unwrap();
        let err = dm.add_cmdline_entries(&mut cl).unwrap_err();
        assert!(
            err.to_string()
                .contains("virtio_mmio.device=4K@0xd0000000:5"),
            "{err}"
        );
    }
}
