//! Building the virtio devices from the resources and wiring them into the VM.
//!
//! Three steps, as the builder gets there:
//!
//! 1. [`attach_devices`], before the kernel command line is written (the KVM VM may not
//!    exist yet): one virtio-blk per drive (the root device first, so it is `/dev/vda`) and
//!    one virtio-net per network interface, each in its own virtio-mmio window with its IRQ,
//!    so that it gets a `virtio_mmio.device=` entry; each with its rate limiters.
//!    [`with_root_arg`] adds `root=` for a root drive. Devices built elsewhere (vsock) go in
//!    the next windows with [`VirtioSetup::attach`], the entropy device after them with
//!    [`VirtioSetup::attach_entropy`], then the balloon ([`VirtioSetup::attach_balloon`])
//!    and virtio-mem ([`VirtioSetup::attach_virtio_mem`]).
//! 2. [`VirtioSetup::wire`], once the VM exists: each device's irqfd, and an ioeventfd per
//!    queue on QueueNotify; virtio-mem gets the VM's memory slots for its region.
//! 3. [`VirtioSetup::start`], once the VMM thread's event loop exists: the queue eventfds
//!    join it.
//!
//! The [`VirtioHandles`] stay with the running VM for runtime changes (`PATCH /drives/{id}`).

use super::balloon::{Balloon, BalloonParams};
use super::block::{Block, BlockError};
use super::events::DeviceEvents;
use super::handles::{BlockHandle, VirtioHandles};
use super::mem::region::{MemorySlots, RegionError};
use super::mem::VirtioMem;
use super::mmio::{MmioTransport, NOTIFY_OFFSET};
use super::net::{Net, NetError};
use super::pci::setup::{PciSetupError, PciTransports};
use super::pmem::mapping::{MappingError, PmemMapping};
use super::pmem::Pmem;
use super::rng::Entropy;
use super::{Interrupt, VirtioDevice};
use crate::arch::x86_64::layout::{DEVICE_MEMORY_START, PMEM_ALIGNMENT};
use crate::devices::manager::{DeviceError, DeviceManager};
use crate::devices::rate_limiter::RateLimiter;
use crate::devices::timer::TimerError;
use crate::event_loop::{EventLoopError, Sources};
use crate::resources::{
    BalloonConfig, DriveConfig, EntropyConfig, MemoryHotplugConfig, PmemConfig, RateLimiterConfig,
    ResourceError, VmResources,
};
use crate::sync::lock;
use crate::vstate::vm::{SlotHandle, SlotMemory, Vm, VmError, FIRST_DEVICE_SLOT};
use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, thiserror::Error)]
pub enum VirtioSetupError {
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Devices(#[from] DeviceError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("cannot create an eventfd for virtio device {id}: {source}")]
    EventFd { id: String, source: std::io::Error },
    #[error("virtio device {0} has too many queues")]
    TooManyQueues(String),
    #[error("cannot add a virtio device to the event loop: {0}")]
    EventLoop(EventLoopError),
    #[error("virtio device {id}: cannot create its rate limiter: {source}")]
    RateLimiter { id: String, source: TimerError },
    #[error(transparent)]
    Pci(#[from] PciSetupError),
    #[error("the balloon device: cannot create its statistics timer: {0}")]
    BalloonTimer(TimerError),
    #[error("memory-hotplug: {0}")]
    VirtioMem(#[from] RegionError),
    #[error("memory-hotplug: the region needs {needed} KVM memory slots from slot {FIRST_DEVICE_SLOT}, and the host's KVM has {max} (use a larger slot_size_mib)")]
    TooManySlots { needed: usize, max: usize },
    #[error(transparent)]
    PmemFile(#[from] ResourceError),
    #[error("pmem {id}: {source}")]
    PmemMapping { id: String, source: MappingError },
    #[error(
        "pmem {id}: its memory does not fit below the end of the guest-physical address space"
    )]
    PmemAddress { id: String },
}

/// The VM's memory slots, for the virtio-mem device's region.
struct KvmSlots(SlotHandle);

impl MemorySlots for KvmSlots {
    unsafe fn set_slot(
        &self,
        slot: u32,
        guest_addr: u64,
        size: u64,
        host_addr: u64,
    ) -> Result<(), String> {
        // SAFETY: the caller's contract (MemorySlots::set_slot) is SlotHandle::set's.
        unsafe { self.0.set(slot, guest_addr, size, host_addr) }.map_err(|e| e.to_string())
    }
}

/// A device's rate limiter (always created, so that `PATCH` can set buckets later).
fn limiter(id: &str, cfg: Option<&RateLimiterConfig>) -> Result<RateLimiter, VirtioSetupError> {
    RateLimiter::new(cfg).map_err(|source| VirtioSetupError::RateLimiter {
        id: id.to_string(),
        source,
    })
}

/// `boot_args` with `root=/dev/vda` (or `root=PARTUUID=...`, or `root=/dev/pmem<N>` for
/// the N-th pmem device) and `ro`/`rw` added in front when a root drive or pmem device is
/// configured and the arguments name no `root=` themselves.
pub fn with_root_arg<'a>(
    boot_args: &'a str,
    drives: &[DriveConfig],
    pmem: &[PmemConfig],
) -> Cow<'a, str> {
    let root = match drives.iter().find(|d| d.is_root_device) {
        Some(d) => Some((
            match &d.partuuid {
                Some(u) => format!("root=PARTUUID={u}"),
                None => "root=/dev/vda".to_string(),
            },
            d.is_read_only,
        )),
        None => pmem
            .iter()
            .position(|p| p.root_device)
            .map(|i| (format!("root=/dev/pmem{i}"), pmem[i].read_only)),
    };
    let Some((dev, read_only)) = root else {
        return Cow::Borrowed(boot_args);
    };
    let kernel_part = boot_args.split(" -- ").next().unwrap_or("");
    if kernel_part
        .split_whitespace()
        .any(|w| w.starts_with("root="))
    {
        return Cow::Borrowed(boot_args);
    }
    let mode = if read_only { "ro" } else { "rw" };
    Cow::Owned(format!("{dev} {mode} {boot_args}").trim_end().to_string())
}

/// The virtio devices being built: attached to the MMIO bus (so the command line lists them)
/// but not yet wired to KVM, whose VM may still be in creation.
pub struct VirtioSetup {
    pub handles: VirtioHandles,
    events: Vec<DeviceEvents>,
    wiring: Vec<KvmWiring>,
    /// With `--enable-pci`: the PCI bus the devices go on instead of MMIO windows.
    pci: Option<PciTransports>,
    /// The pmem devices' memory, for KVM slots: (guest address, mapping, read-only).
    device_memory: Vec<(u64, Arc<PmemMapping>, bool)>,
}

/// What KVM must know about one device: its irqfd and its queue ioeventfds.
struct KvmWiring {
    id: String,
    irq: u32,
    irqfd: EventFd,
    notify_addr: u64,
    queue_evts: Vec<EventFd>,
}

/// Which transport carries the virtio devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// virtio-mmio windows announced on the kernel command line (the default).
    #[default]
    Mmio,
    /// Functions on PCI bus 0 with MSI-X (`--enable-pci`).
    Pci,
}

/// Creates every drive (root first, as `VmResources` keeps them) and network interface of
/// `res` and puts each in the next virtio-mmio window of `dm` (or, with
/// [`Transport::Pci`], the next PCI slot). Nothing here needs the KVM VM;
/// [`VirtioSetup::wire`] does that part.
pub fn attach_devices(
    dm: &mut DeviceManager,
    mem: &GuestMemoryMmap,
    res: &VmResources,
    transport: Transport,
) -> Result<VirtioSetup, VirtioSetupError> {
    let pci = match transport {
        Transport::Mmio => {
            dm.attach_no_pci_bus()?;
            None
        }
        Transport::Pci => Some(PciTransports::new(dm)?),
    };
    let mut setup = VirtioSetup {
        handles: VirtioHandles {
            pci: pci.as_ref().map(PciTransports::handles),
            ..VirtioHandles::default()
        },
        events: Vec::new(),
        wiring: Vec::new(),
        pci,
        device_memory: Vec::new(),
    };
    for cfg in &res.drives {
        let block =
            Block::new(cfg)?.with_rate_limiter(limiter(&cfg.drive_id, cfg.rate_limiter.as_ref())?);
        let dev = Arc::new(Mutex::new(block));
        let interrupt = setup.attach(dm, mem, dev.clone())?;
        let handle = BlockHandle::new(cfg.drive_id.clone(), dev, interrupt);
        setup.handles.blocks.push(handle);
    }
    for cfg in &res.network_interfaces {
        let id = &cfg.iface_id;
        let net = Net::new(cfg)?.with_rate_limiters(
            limiter(id, cfg.rx_rate_limiter.as_ref())?,
            limiter(id, cfg.tx_rate_limiter.as_ref())?,
        );
        let dev = Arc::new(Mutex::new(net));
        setup.attach(dm, mem, dev.clone())?;
        setup.handles.nets.push((cfg.iface_id.clone(), dev));
    }
    setup.attach_pmem(dm, mem, &res.pmem, res.memory_hotplug.as_ref())?;
    Ok(setup)
}

impl VirtioSetup {
    /// Puts one device in the next virtio-mmio window (for devices built elsewhere, such as
    /// vsock); returns its interrupt.
    pub fn attach(
        &mut self,
        dm: &mut DeviceManager,
        mem: &GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<Arc<Interrupt>, VirtioSetupError> {
        let (id, queues) = {
            let d = lock(&device);
            (d.id().to_string(), d.queue_max_sizes().len())
        };
        let evt_err = |source| VirtioSetupError::EventFd {
            id: id.clone(),
            source,
        };
        if let Some(pci) = self.pci.as_mut() {
            let mut core_evts = Vec::with_capacity(queues);
            let mut notify_evts = Vec::with_capacity(queues);
            let mut loop_evts = Vec::with_capacity(queues);
            for _ in 0..queues {
                let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(evt_err)?;
                loop_evts.push(evt.try_clone().map_err(evt_err)?);
                notify_evts.push(evt.try_clone().map_err(evt_err)?);
                core_evts.push(evt);
            }
            let attached = pci.attach(device.clone(), mem, core_evts, notify_evts)?;
            self.handles.pci = Some(pci.handles());
            self.events.push(DeviceEvents {
                device,
                queue_evts: loop_evts,
            });
            return Ok(attached.interrupt);
        }
        let slot = dm.allocate_mmio_slot()?;
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(evt_err)?;
        let interrupt = Arc::new(Interrupt::new(irqfd.try_clone().map_err(evt_err)?));
        let mut transport_evts = Vec::with_capacity(queues);
        let mut loop_evts = Vec::with_capacity(queues);
        let mut kvm_evts = Vec::with_capacity(queues);
        for _ in 0..queues {
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(evt_err)?;
            loop_evts.push(evt.try_clone().map_err(evt_err)?);
            kvm_evts.push(evt.try_clone().map_err(evt_err)?);
            transport_evts.push(evt);
        }
        let transport = MmioTransport::new(
            device.clone(),
            mem.clone(),
            interrupt.clone(),
            transport_evts,
        );
        let transport = Arc::new(Mutex::new(transport));
        dm.attach_mmio_device(slot, transport.clone())?;
        self.handles.transports.push(transport);
        self.events.push(DeviceEvents {
            device,
            queue_evts: loop_evts,
        });
        self.wiring.push(KvmWiring {
            id,
            irq: slot.irq,
            irqfd,
            notify_addr: slot.base + NOTIFY_OFFSET,
            queue_evts: kvm_evts,
        });
        Ok(interrupt)
    }

    /// The entropy device (`entropy`), in the next virtio-mmio window.
    pub fn attach_entropy(
        &mut self,
        dm: &mut DeviceManager,
        mem: &GuestMemoryMmap,
        cfg: &EntropyConfig,
    ) -> Result<(), VirtioSetupError> {
        let rng =
            Entropy::new().with_rate_limiter(limiter(super::rng::ID, cfg.rate_limiter.as_ref())?);
        self.attach(dm, mem, Arc::new(Mutex::new(rng)))?;
        Ok(())
    }

    /// The balloon (`balloon`), in the next virtio-mmio window; kept in the handles for
    /// the runtime requests.
    pub fn attach_balloon(
        &mut self,
        dm: &mut DeviceManager,
        mem: &GuestMemoryMmap,
        cfg: &BalloonConfig,
    ) -> Result<(), VirtioSetupError> {
        let balloon = Balloon::new(BalloonParams {
            amount_mib: cfg.amount_mib,
            deflate_on_oom: cfg.deflate_on_oom,
            stats_polling_interval_s: cfg.stats_polling_interval_s,
            free_page_hinting: cfg.free_page_hinting,
            free_page_reporting: cfg.free_page_reporting,
        })
        .map_err(VirtioSetupError::BalloonTimer)?;
        let dev = Arc::new(Mutex::new(balloon));
        self.attach(dm, mem, dev.clone())?;
        self.handles.balloon = Some(dev);
        Ok(())
    }

    /// virtio-mem (`memory-hotplug`) over the hot-plug region of `mem` (mapped by the
    /// builder at [`DEVICE_MEMORY_START`]), in the next virtio-mmio window; kept in the
    /// handles for the runtime requests.
    pub fn attach_virtio_mem(
        &mut self,
        dm: &mut DeviceManager,
        mem: &GuestMemoryMmap,
        cfg: &MemoryHotplugConfig,
    ) -> Result<(), VirtioSetupError> {
        let dev = VirtioMem::new(
            mem,
            DEVICE_MEMORY_START,
            cfg.total_bytes(),
            cfg.block_bytes(),
            cfg.slot_bytes(),
        )?;
        let dev = Arc::new(Mutex::new(dev));
        self.attach(dm, mem, dev.clone())?;
        self.handles.mem = Some(dev);
        Ok(())
    }

    /// The pmem devices (`pmem`, in configuration order, so the guest names them
    /// `/dev/pmem0`, ...): each backing file mapped, its memory placed after the previous
    /// one's from [`DEVICE_MEMORY_START`], or from the end of the virtio-mem hot-plug region
    /// (`hotplug`) that starts there (the KVM slots follow in [`Self::wire`]).
    fn attach_pmem(
        &mut self,
        dm: &mut DeviceManager,
        mem: &GuestMemoryMmap,
        configs: &[PmemConfig],
        hotplug: Option<&MemoryHotplugConfig>,
    ) -> Result<(), VirtioSetupError> {
        let first = hotplug.map_or(Some(DEVICE_MEMORY_START), |h| {
            DEVICE_MEMORY_START
                .checked_add(h.total_bytes())
                .and_then(|end| end.checked_next_multiple_of(PMEM_ALIGNMENT))
        });
        let mut next = match (first, configs.first()) {
            (Some(a), _) => a,
            (None, Some(cfg)) => return Err(VirtioSetupError::PmemAddress { id: cfg.id.clone() }),
            (None, None) => return Ok(()),
        };
        for cfg in configs {
            let mapping =
                PmemMapping::new(&cfg.backing_file()?, cfg.read_only).map_err(|source| {
                    VirtioSetupError::PmemMapping {
                        id: cfg.id.clone(),
                        source,
                    }
                })?;
            let mapping = Arc::new(mapping);
            let start = next;
            next = start
                .checked_add(SlotMemory::size(mapping.as_ref()))
                .and_then(|end| end.checked_next_multiple_of(PMEM_ALIGNMENT))
                .ok_or_else(|| VirtioSetupError::PmemAddress { id: cfg.id.clone() })?;
            let pmem = Pmem::new(&cfg.id, mapping.clone(), start)
                .with_rate_limiter(limiter(&cfg.id, cfg.rate_limiter.as_ref())?);
            let dev = Arc::new(Mutex::new(pmem));
            self.attach(dm, mem, dev.clone())?;
            self.handles.pmem.push((cfg.id.clone(), dev));
            self.device_memory.push((start, mapping, cfg.read_only));
        }
        Ok(())
    }

    /// Registers each device's irqfd and its queues' ioeventfds (datamatch: the queue index)
    /// with the VM, gives virtio-mem the VM's memory slots, and registers each pmem
    /// device's memory slot. With `coalesce`, each virtio-mmio window's set-up registers
    /// are coalesced ([`crate::vstate::coalesced`]); returns whether any were.
    pub fn wire(&mut self, vm: &Vm, coalesce: bool) -> Result<bool, VirtioSetupError> {
        let mut coalesced = false;
        if let Some(dev) = &self.handles.mem {
            let mut dev = lock(dev);
            let needed = dev.region().slot_count();
            let max = vm.max_memslots();
            if FIRST_DEVICE_SLOT as usize + needed > max {
                return Err(VirtioSetupError::TooManySlots { needed, max });
            }
            let slots = KvmSlots(vm.slot_handle()?);
            dev.region_mut()
                .set_slots(Box::new(slots), FIRST_DEVICE_SLOT);
        }
        for (start, mapping, read_only) in self.device_memory.drain(..) {
            vm.add_device_memory(start, mapping, read_only)?;
        }
        if let Some(pci) = &self.pci {
            pci.wire(vm)?;
        }
        for w in self.wiring.drain(..) {
            if coalesce {
                let base = w.notify_addr - NOTIFY_OFFSET;
                for (offset, len) in crate::vstate::coalesced::VIRTIO_MMIO_ZONES {
                    vm.register_coalesced_mmio(base + offset, len)?;
                }
                coalesced = true;
            }
            vm.register_irqfd(&w.irqfd, w.irq)?;
            for (index, evt) in w.queue_evts.iter().enumerate() {
                let index = u32::try_from(index)
                    .map_err(|_| VirtioSetupError::TooManyQueues(w.id.clone()))?;
                vm.register_ioevent(evt, w.notify_addr, index)?;
            }
        }
        Ok(coalesced)
    }

    /// Puts every device's queue eventfds in the VMM thread's event loop.
    pub fn start<C>(self, sources: &mut Sources<C>) -> Result<(), VirtioSetupError> {
        for ev in self.events {
            ev.register(sources).map_err(VirtioSetupError::EventLoop)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive(root: bool, ro: bool, partuuid: Option<&str>) -> DriveConfig {
        DriveConfig {
            drive_id: "d".into(),
            path_on_host: "/x".into(),
            is_root_device: root,
            is_read_only: ro,
            partuuid: partuuid.map(str::to_string),
            cache_type: Default::default(),
            io_engine: Default::default(),
            ..Default::default()
        }
    }

    #[test]
    fn root_argument() {
        assert_eq!(with_root_arg("console=ttyS0", &[], &[]), "console=ttyS0");
        assert_eq!(
            with_root_arg("console=ttyS0", &[drive(false, false, None)], &[]),
            "console=ttyS0"
        );
        assert_eq!(
            with_root_arg("console=ttyS0", &[drive(true, false, None)], &[]),
            "root=/dev/vda rw console=ttyS0"
        );
        assert_eq!(
            with_root_arg("a -- b", &[drive(true, true, None)], &[]),
            "root=/dev/vda ro a -- b"
        );
        assert_eq!(
            with_root_arg("", &[drive(true, true, Some("ab-01"))], &[]),
            "root=PARTUUID=ab-01 ro"
        );
        assert_eq!(
            with_root_arg("root=/dev/vdb", &[drive(true, false, None)], &[]),
            "root=/dev/vdb"
        );
        assert_eq!(
            with_root_arg("a -- root=x", &[drive(true, false, None)], &[]),
            "root=/dev/vda rw a -- root=x"
        );
    }
}
