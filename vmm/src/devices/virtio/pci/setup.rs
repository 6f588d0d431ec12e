//! Putting virtio devices on the PCI bus (`--enable-pci`): the bus itself on the device
//! manager's buses, then for each device a function in the next slot with its BAR in the
//! next [`BAR_SIZE`] of the PCI window (where Linux keeps it: it assigns nothing itself
//! when the firmware's placement is valid) and one MSI-X vector per queue plus one for
//! configuration changes, each with a GSI of its own.

use super::{PciHandles, VirtioPciFunction, BAR_SIZE};
use crate::arch::x86_64::layout::{PCI_MMIO_END, PCI_MMIO_START};
use crate::devices::manager::{DeviceError, DeviceManager};
use crate::devices::pci::config::ConfigError;
use crate::devices::pci::msix::MsixVectors;
use crate::devices::pci::platform::{KvmPlatform, PlatformError, MSI_GSI_END, MSI_GSI_START};
use crate::devices::pci::root::PciRoot;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::sync::lock;
use crate::vstate::vm::{Vm, VmError};
use std::sync::{Arc, Mutex};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, thiserror::Error)]
pub enum PciSetupError {
    #[error("no PCI slot left for virtio device {0} (bus 0 has 31)")]
    NoSlot(String),
    #[error("no room left in the PCI window {PCI_MMIO_START:#x}..{PCI_MMIO_END:#x} for the BAR of virtio device {0}")]
    NoBarSpace(String),
    #[error("no GSI left for the MSI-X vectors of virtio device {0}")]
    NoGsi(String),
    #[error("virtio device {id}: cannot create an eventfd: {source}")]
    EventFd { id: String, source: std::io::Error },
    #[error("virtio device {id}: its PCI configuration space: {source}")]
    Config { id: String, source: ConfigError },
    #[error(transparent)]
    Devices(#[from] DeviceError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Platform(#[from] PlatformError),
}

/// The PCI bus being filled.
pub struct PciTransports {
    bus: PciHandles,
    platform: Arc<KvmPlatform>,
    next_bar: u64,
    next_gsi: u32,
    /// Every function's vectors, for their irqfds.
    vectors: Vec<Arc<MsixVectors>>,
}

/// What a device on PCI hands back to the common setup.
pub struct Attached {
    pub interrupt: Arc<Interrupt>,
}

impl PciTransports {
    /// An empty bus 0, put on `dm`'s buses.
    pub fn new(dm: &mut DeviceManager) -> Result<Self, PciSetupError> {
        let root = Arc::new(Mutex::new(PciRoot::new(PCI_MMIO_START, PCI_MMIO_END)));
        dm.attach_pci_bus(root.clone(), PCI_MMIO_START, PCI_MMIO_END)?;
        Ok(PciTransports {
            bus: PciHandles::new(root),
            platform: Arc::new(KvmPlatform::default()),
            next_bar: PCI_MMIO_START,
            next_gsi: MSI_GSI_START,
            vectors: Vec::new(),
        })
    }

    /// Puts `device` in the next slot; `queue_evts` are clones of its queue eventfds (the
    /// notification addresses' ioeventfds).
    pub fn attach(
        &mut self,
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: &GuestMemoryMmap,
        core_evts: Vec<EventFd>,
        notify_evts: Vec<EventFd>,
    ) -> Result<Attached, PciSetupError> {
        let (id, device_type) = {
            let d = lock(&device);
            (d.id().to_string(), d.device_type())
        };
        let queues = notify_evts.len();
        let bar = self.next_bar;
        if bar.checked_add(BAR_SIZE).is_none_or(|e| e > PCI_MMIO_END) {
            return Err(PciSetupError::NoBarSpace(id));
        }
        let bar32 = u32::try_from(bar).map_err(|_| PciSetupError::NoBarSpace(id.clone()))?;
        let nvec = u32::try_from(queues + 1).map_err(|_| PciSetupError::NoGsi(id.clone()))?;
        let first = self.next_gsi;
        if first.checked_add(nvec).is_none_or(|e| e > MSI_GSI_END) {
            return Err(PciSetupError::NoGsi(id));
        }
        let evt = || {
            EventFd::new(libc::EFD_NONBLOCK).map_err(|source| PciSetupError::EventFd {
                id: id.clone(),
                source,
            })
        };
        let irqfds = (0..nvec).map(|_| evt()).collect::<Result<Vec<_>, _>>()?;
        let gsis = (first..first + nvec).collect();
        let msix = Arc::new(MsixVectors::new(irqfds, gsis, self.platform.clone()));
        let vectors = VirtioPciFunction::vectors_for(queues, msix.clone());
        let interrupt = Arc::new(Interrupt::with_vectors(vectors.clone()));
        let core = MmioTransport::new(device, mem.clone(), interrupt.clone(), core_evts);
        let function = VirtioPciFunction::new(
            core,
            vectors,
            notify_evts,
            self.platform.clone(),
            device_type,
            bar32,
        )
        .map_err(|source| PciSetupError::Config {
            id: id.clone(),
            source,
        })?;
        self.bus.add(function).ok_or(PciSetupError::NoSlot(id))?;
        self.next_bar = bar + BAR_SIZE;
        self.next_gsi = first + nvec;
        self.vectors.push(msix);
        Ok(Attached { interrupt })
    }

    /// The bus and the functions attached so far.
    pub fn handles(&self) -> PciHandles {
        self.bus.clone()
    }

    /// Registers every vector's irqfd with the VM and hands the platform its own
    /// descriptor of the VM (for routes and moved ioeventfds while the guest runs).
    pub fn wire(&self, vm: &Vm) -> Result<(), PciSetupError> {
        for v in &self.vectors {
            for (fd, gsi) in v.irqfds() {
                vm.register_irqfd(fd, gsi)?;
            }
        }
        self.platform.connect(vm.duplicate_fd()?)?;
        Ok(())
    }
}
