//! What a snapshot's state file holds: [`MicrovmState`], and its checks before a restore.
//!
//! Body layout (the [`crate::snapshot::codec`] encoding, in this order): the configuration
//! (the config file's JSON: `boot-source`, `machine-config`, `cpu-config`, `drives`,
//! `network-interfaces`, `pmem`, `vsock`, `entropy`, `serial`, `balloon`, with the rate limiters as they are
//! in force), the guest memory (its regions, and with a key the 2 MiB chunk digests of the
//! memory file), the VM (irqchip, PIT if it has one, kvmclock), every vCPU, COM1 (with its output
//! bucket's tokens), the i8042, and every virtio-mmio transport in window order (with its
//! device's queue positions and rate limiters' tokens), the PCI bus (v1.3 on: a presence
//! byte, then the bus), and the virtio-mem device's own section (v1.4 on: a presence byte,
//! then its geometry, request, usable size and plugged-block bitmap,
//! `devices::virtio::mem::persist`).

use crate::arch::x86_64::layout::ram_ranges;
use crate::arch::x86_64::layout::DEVICE_MEMORY_START;
use crate::devices::legacy::i8042::persist::I8042State;
use crate::devices::legacy::serial::persist::SerialSnapshot;
use crate::devices::virtio::mem::persist::{VirtioMemState, VirtioMemStateError};
use crate::devices::virtio::mmio::persist::TransportState;
use crate::devices::virtio::pci::persist::PciBusState;
use crate::resources::VmConfig;
use crate::snapshot::digest::MemoryDigest;
use crate::snapshot::{CodecError, Decoder, Encoder, Persist};
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm_state::VmState;

/// Largest configuration text (the config file's limit).
const MAX_CONFIG: usize = 1 << 20;
/// Most memory regions (below and above the MMIO gap).
const MAX_REGIONS: usize = 4;
/// Most vCPUs (the machine configuration's limit).
const MAX_VCPUS: usize = 32;
/// Most virtio devices (one per IRQ 5 to 23).
const MAX_TRANSPORTS: usize = 32;
/// The format minor version that added the PCI bus.
pub const PCI_SINCE: u16 = 3;
/// The format minor version that added the virtio-mem device's section.
pub const VIRTIO_MEM_SINCE: u16 = 4;

/// Guest memory as saved: its RAM regions (guest address, length), laid out one after the
/// other in the memory file (followed by the virtio-mem hot-plug region when the microVM
/// has one: [`MicrovmState::memory_file_size`]), and (authenticated snapshots) the file's
/// digests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemoryState {
    pub regions: Vec<(u64, u64)>,
    pub digest: Option<MemoryDigest>,
}

impl MemoryState {
    /// Bytes of guest RAM.
    pub fn size(&self) -> u64 {
        self.regions
            .iter()
            .fold(0u64, |a, (_, len)| a.saturating_add(*len))
    }
}

/// Everything a snapshot's state file holds.
#[derive(Debug)]
pub struct MicrovmState {
    pub config: String,
    pub memory: MemoryState,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub serial: Option<SerialSnapshot>,
    pub i8042: Option<I8042State>,
    pub virtio: Vec<TransportState>,
    /// The PCI bus (`--enable-pci`): its functions are the `virtio` transports'.
    pub pci: Option<PciBusState>,
    /// The virtio-mem device (`memory-hotplug`): its hot-plug region follows the RAM in the
    /// memory file.
    pub virtio_mem: Option<VirtioMemState>,
}

/// Why a decoded state cannot be the state of a microVM.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("the snapshot's configuration is invalid: {0}")]
    Config(String),
    #[error(
        "the snapshot's configuration has {configured} vCPUs, and it holds the state of {saved}"
    )]
    VcpuCount { configured: u8, saved: usize },
    #[error("the snapshot holds the state of vCPU {found} where vCPU {expected} belongs")]
    VcpuIndex { expected: usize, found: u8 },
    #[error("the snapshot's memory regions {saved:x?} are not those of {size} bytes of guest memory ({expected:x?})")]
    Regions {
        saved: Vec<(u64, u64)>,
        expected: Vec<(u64, u64)>,
        size: u64,
    },
    #[error("the snapshot's configuration has {configured} virtio devices, and it holds the state of {saved}")]
    DeviceCount { configured: usize, saved: usize },
    #[error("the snapshot has no state for the {0}")]
    MissingDevice(&'static str),
    #[error(
        "the snapshot's PCI bus has {functions} functions for its {transports} virtio devices"
    )]
    PciFunctions { functions: usize, transports: usize },
    #[error("{}", if *.saved { "the snapshot's virtio devices are on PCI, and this VMM was started without --enable-pci: start it with --enable-pci to load this snapshot" } else { "the snapshot's virtio devices are on virtio-mmio, and this VMM was started with --enable-pci: start it without --enable-pci to load this snapshot" })]
    Transport { saved: bool },
    #[error("the snapshot's configuration {} memory-hotplug, and it {} the state of a virtio-mem device", if *.configured { "has" } else { "has no" }, if *.saved { "holds" } else { "does not hold" })]
    VirtioMem { configured: bool, saved: bool },
    #[error(transparent)]
    VirtioMemState(#[from] VirtioMemStateError),
    #[error("the snapshot's configuration says \"pit\": {configured}, and it {} the state of an in-kernel PIT", if *.saved { "holds" } else { "does not hold" })]
    Pit { configured: bool, saved: bool },
}

impl MicrovmState {
    /// Bytes of the memory file: the RAM, then the hot-plug region if there is one.
    pub fn memory_file_size(&self) -> u64 {
        self.memory
            .size()
            .saturating_add(self.virtio_mem.as_ref().map_or(0, |m| m.total))
    }

    /// The saved configuration, parsed (not yet validated: see `persist::load`).
    pub fn parse_config(&self) -> Result<VmConfig, StateError> {
        crate::resources::parse_json::<VmConfig>(&self.config)
            .map_err(|e| StateError::Config(e.to_string()))
    }

    /// Checks that the snapshot's devices are on the transport of this VMM (`pci`: started
    /// with `--enable-pci`): a guest's drivers find them only where they left them.
    pub fn check_transport(&self, pci: bool) -> Result<(), StateError> {
        let saved = self.pci.is_some();
        if saved == pci {
            Ok(())
        } else {
            Err(StateError::Transport { saved })
        }
    }

    /// Checks that the parts agree with each other and with `config`: one state per vCPU
    /// in order, the memory regions of the configured size, one transport per virtio
    /// device, the legacy devices present, a PIT's state if and only if the VM has a PIT.
    pub fn check(&self, config: &VmConfig) -> Result<(), StateError> {
        let mc = config
            .machine_config
            .as_ref()
            .ok_or_else(|| StateError::Config("machine-config is missing".into()))?;
        if self.vcpus.len() != usize::from(mc.vcpu_count) {
            return Err(StateError::VcpuCount {
                configured: mc.vcpu_count,
                saved: self.vcpus.len(),
            });
        }
        for (expected, v) in self.vcpus.iter().enumerate() {
            if usize::from(v.index) != expected {
                return Err(StateError::VcpuIndex {
                    expected,
                    found: v.index,
                });
            }
        }
        if self.vm.pit.is_some() != mc.pit {
            return Err(StateError::Pit {
                configured: mc.pit,
                saved: self.vm.pit.is_some(),
            });
        }
        let size = mc.mem_size_mib.saturating_mul(1 << 20);
        let expected = ram_ranges(size);
        if self.memory.regions != expected {
            return Err(StateError::Regions {
                saved: self.memory.regions.clone(),
                expected,
                size,
            });
        }
        match (&config.memory_hotplug, &self.virtio_mem) {
            (None, None) => {}
            (Some(cfg), Some(saved)) => saved.check(
                DEVICE_MEMORY_START,
                cfg.total_bytes(),
                cfg.block_bytes(),
                cfg.slot_bytes(),
            )?,
            (configured, saved) => {
                return Err(StateError::VirtioMem {
                    configured: configured.is_some(),
                    saved: saved.is_some(),
                })
            }
        }
        let configured = config.drives.len()
            + config.network_interfaces.len()
            + config.pmem.len()
            + usize::from(config.vsock.is_some())
            + usize::from(config.entropy.is_some())
            + usize::from(config.balloon.is_some())
            + usize::from(config.memory_hotplug.is_some());
        if self.virtio.len() != configured {
            return Err(StateError::DeviceCount {
                configured,
                saved: self.virtio.len(),
            });
        }
        if let Some(bus) = &self.pci {
            if bus.functions.len() != self.virtio.len() {
                return Err(StateError::PciFunctions {
                    functions: bus.functions.len(),
                    transports: self.virtio.len(),
                });
            }
        }
        if self.serial.is_none() {
            return Err(StateError::MissingDevice("serial console"));
        }
        if self.i8042.is_none() {
            return Err(StateError::MissingDevice("i8042"));
        }
        Ok(())
    }
}

struct Region(u64, u64);

impl Persist for Region {
    fn encode(&self, e: &mut Encoder) {
        e.u64(self.0);
        e.u64(self.1);
    }
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        Ok(Region(
            d.u64("memory region address")?,
            d.u64("memory region length")?,
        ))
    }
}

impl Persist for MemoryState {
    fn encode(&self, e: &mut Encoder) {
        let regions: Vec<Region> = self.regions.iter().map(|&(a, l)| Region(a, l)).collect();
        e.list(&regions);
        e.option(self.digest.as_ref());
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        let regions: Vec<Region> = d.list("memory regions", MAX_REGIONS, 16)?;
        Ok(MemoryState {
            regions: regions.into_iter().map(|r| (r.0, r.1)).collect(),
            digest: d.option("memory digest")?,
        })
    }
}

impl Persist for MicrovmState {
    fn encode(&self, e: &mut Encoder) {
        e.str(&self.config);
        e.put(&self.memory);
        e.put(&self.vm);
        e.list(&self.vcpus);
        e.option(self.serial.as_ref());
        e.option(self.i8042.as_ref());
        e.list(&self.virtio);
        e.option(self.pci.as_ref());
        e.option(self.virtio_mem.as_ref());
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        let state = MicrovmState {
            config: d.str("configuration", MAX_CONFIG)?,
            memory: d.get()?,
            vm: d.get()?,
            vcpus: d.list("vCPU states", MAX_VCPUS, 4096)?,
            serial: d.option("serial console")?,
            i8042: d.option("i8042")?,
            virtio: d.list("virtio devices", MAX_TRANSPORTS, 32)?,
            pci: if d.minor() >= PCI_SINCE {
                d.option("PCI bus")?
            } else {
                None
            },
            virtio_mem: if d.minor() >= VIRTIO_MEM_SINCE {
                d.option("virtio-mem device")?
            } else {
                None
            },
        };
        d.finish()?;
        Ok(state)
    }
}
