//! The device manager: puts devices on the port-I/O and MMIO buses, wires their interrupts
//! to the in-kernel irqchip, and hands out virtio-mmio windows and IRQs.
//!
//! Legacy devices have fixed ports and IRQs (COM1 at 0x3f8/IRQ 4, i8042 at 0x60–0x64/IRQ
//! 1). Each virtio-mmio device gets the next [`MMIO_SLOT_SIZE`] window from
//! [`MMIO_DEVICES_START`] and the next IRQ from [`IRQ_DEVICES_START`]; the kernel learns about
//! it from a `virtio_mmio.device=<size>@<base>:<irq>` command-line entry, which the loader
//! writes for each of [`DeviceManager::mmio_slots`] in attachment order.

use super::bus::{Bus, BusDevice, BusError};
use super::legacy::i8042::{self, I8042};
use super::legacy::serial::{SerialDevice, SerialOutput};
use super::legacy::IrqLine;
use super::pci::root::{self, BarWindow, ConfigPorts, NoBus, PciRoot};
use crate::arch::x86_64::layout::{
    MmioSlot, COM1_PORT, I8042_DATA_PORT, IRQ_COM1, IRQ_DEVICES_END, IRQ_DEVICES_START, IRQ_I8042,
    MMIO_DEVICES_END, MMIO_DEVICES_START, MMIO_SLOT_SIZE,
};
use crate::vstate::vm::{Vm, VmError};
use std::sync::{Arc, Mutex};
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
}

/// The devices of a built VM, as the vCPUs and the run loop use them.
pub struct Devices {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub serial: Option<Arc<Mutex<SerialDevice>>>,
    pub i8042: Option<Arc<Mutex<I8042>>>,
    /// The virtio devices, for runtime changes (set by the builder).
    pub virtio: super::virtio::handles::VirtioHandles,
    /// The virtio devices are on PCI (`--enable-pci`), not in the MMIO windows.
    pub pci: bool,
}

pub struct DeviceManager {
    pio: Bus,
    mmio: Bus,
    serial: Option<Arc<Mutex<SerialDevice>>>,
    i8042: Option<Arc<Mutex<I8042>>>,
    next_mmio_base: u64,
    next_irq: u32,
    mmio_devices: Vec<MmioSlot>,
    pci: bool,
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
            pci: false,
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
    /// will be told about it from [`Self::mmio_slots`].
    pub fn attach_mmio_device(
        &mut self,
        slot: MmioSlot,
        dev: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), DeviceError> {
        self.mmio.insert(slot.base, slot.size, dev)?;
        self.mmio_devices.push(slot);
        Ok(())
    }

    /// Puts PCI bus 0 on the buses: its configuration ports (0xCF8-0xCFF) and its BAR
    /// window `[start, end)`.
    pub fn attach_pci_bus(
        &mut self,
        root: Arc<Mutex<PciRoot>>,
        start: u64,
        end: u64,
    ) -> Result<(), DeviceError> {
        self.pio.insert(
            u64::from(root::CONFIG_PORT),
            root::CONFIG_PORTS_LEN,
            Arc::new(Mutex::new(ConfigPorts(root.clone()))),
        )?;
        let len = end.saturating_sub(start);
        self.mmio.insert(
            start,
            len,
            Arc::new(Mutex::new(BarWindow { root, base: start })),
        )?;
        self.pci = true;
        Ok(())
    }

    /// Without a PCI bus: 0xCF8-0xCFF answer all ones ([`NoBus`]), so that a kernel's PCI
    /// probe is not an access to "no device" under `--strict-io`.
    pub fn attach_no_pci_bus(&mut self) -> Result<(), DeviceError> {
        self.pio.insert(
            u64::from(root::CONFIG_PORT),
            root::CONFIG_PORTS_LEN,
            Arc::new(Mutex::new(NoBus)),
        )?;
        Ok(())
    }

    /// The windows of the attached virtio-mmio devices, in attachment order.
    pub fn mmio_slots(&self) -> &[MmioSlot] {
        &self.mmio_devices
    }

    /// The buses and devices, frozen for the running VM.
    pub fn finish(self) -> Devices {
        Devices {
            pio: Arc::new(self.pio),
            mmio: Arc::new(self.mmio),
            serial: self.serial,
            i8042: self.i8042,
            virtio: Default::default(),
            pci: self.pci,
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
    fn slots_are_consecutive_and_listed_in_order() {
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
        assert_eq!(dm.mmio_slots(), [a, b]);
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
}
