//! The KVM VM: `/dev/kvm`, the VM file descriptor, guest RAM registered as memory slots,
//! KVM's TSS and identity-map pages, and the in-kernel irqchip (PIC + IOAPIC + LAPICs) and,
//! unless the machine configuration says `"pit": false`, the in-kernel PIT.
//!
//! The PIT is also what makes a VM slow to destroy: closing the VM's descriptor frees it
//! (`kvm_free_pit`), which waits for SRCU grace periods (unregistering its ports and its
//! IRQ ack and mask notifiers) and stops its kernel thread (`kvm-pit/<pid>`); measured on
//! the development hosts, ~13 ms of a ~16 ms teardown (docs/benchmarks.md). A VM without
//! one is destroyed in ~1-2 ms.
//!
//! Order matters for start-up time: memory slots, irqchip and PIT creation each wait for an
//! SRCU grace period in the kernel, and on the development hosts registering the memory
//! slots *first* (on a VM with no irqchip yet) made the whole sequence ~5x faster (median
//! 1.5 ms instead of 7.9 ms for create VM + slot + irqchip + PIT + vCPU, 25 runs each).

use super::host_cpuid::{self, HostCpuidError};
use super::vm_state::SnapshotCaps;
use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

/// The KVM API version every kernel since 2.6.22 reports.
const KVM_API_VERSION: i32 = 12;

/// Capabilities the VMM cannot work without (and `KVM_CAP_PIT2` for a VM with a PIT).
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::SetIdentityMapAddr, "KVM_CAP_SET_IDENTITY_MAP_ADDR"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(kvm_ioctls::Error),
    #[error("/dev/kvm reports KVM API version {0}, expected {KVM_API_VERSION}")]
    ApiVersion(i32),
    #[error("the host's KVM lacks {0}")]
    MissingCap(&'static str),
    #[error("the host's KVM allows {max} vCPUs, the config asks for {wanted}")]
    TooManyVcpus { wanted: u8, max: usize },
    #[error("KVM_CREATE_VM failed: {0}")]
    CreateVm(kvm_ioctls::Error),
    #[error("KVM_SET_IDENTITY_MAP_ADDR failed: {0}")]
    IdentityMap(kvm_ioctls::Error),
    #[error("KVM_SET_TSS_ADDR failed: {0}")]
    Tss(kvm_ioctls::Error),
    #[error("KVM_CREATE_IRQCHIP failed: {0}")]
    Irqchip(kvm_ioctls::Error),
    #[error("KVM_CREATE_PIT2 failed: {0}")]
    Pit(kvm_ioctls::Error),
    #[error(transparent)]
    HostCpuid(#[from] HostCpuidError),
    #[error("KVM_SET_USER_MEMORY_REGION failed for slot {slot} ({guest_addr:#x}, {size} bytes): {source}")]
    MemorySlot {
        slot: u32,
        guest_addr: u64,
        size: u64,
        source: kvm_ioctls::Error,
    },
    #[error("the host's KVM has {max} memory slots, guest memory needs {wanted}")]
    TooManySlots { wanted: usize, max: usize },
    #[error("too many pmem devices: their memory slots would reach slot {FIRST_DEVICE_SLOT}, where the virtio-mem region's slots begin")]
    TooManyPmemSlots,
    #[error("device memory at {guest_addr:#x} ({size} bytes) overlaps guest RAM or another device's memory")]
    DeviceMemoryOverlap { guest_addr: u64, size: u64 },
    #[error("cannot duplicate the VM's descriptor: {0}")]
    Duplicate(std::io::Error),
    #[error("KVM_IRQFD failed for GSI {gsi}: {source}")]
    Irqfd { gsi: u32, source: kvm_ioctls::Error },
    #[error("KVM_IOEVENTFD failed for MMIO address {addr:#x} (value {datamatch}): {source}")]
    Ioeventfd {
        addr: u64,
        datamatch: u32,
        source: kvm_ioctls::Error,
    },
    #[error("KVM_REGISTER_COALESCED_MMIO failed for {len} bytes at {addr:#x}: {source}")]
    CoalescedMmio {
        addr: u64,
        len: u32,
        source: kvm_ioctls::Error,
    },
}

/// KVM slot number of the first slot of device memory (the virtio-mem hot-plug region):
/// well above guest RAM's (one slot per RAM range, at most two), so that RAM and device
/// memory never share a number.
pub const FIRST_DEVICE_SLOT: u32 = 32;

/// Host memory that backs a memory slot outside guest RAM (a pmem device's file mapping).
///
/// # Safety
///
/// An implementor guarantees that `[host_addr(), host_addr() + size())` is one live mapping,
/// readable (and writable unless the slot is registered read-only), for as long as the
/// value exists, that `size()` is a non-zero multiple of the page size, and that no Rust
/// reference points into it (the guest writes it at any time).
pub unsafe trait SlotMemory: Send + Sync {
    fn host_addr(&self) -> u64;
    fn size(&self) -> u64;
}

/// The memory slots registered after guest RAM, with the memory that backs them.
#[derive(Default)]
struct DeviceSlots {
    next_slot: u32,
    /// (guest address, size) of each.
    ranges: Vec<(u64, u64)>,
    /// Kept alive as long as the VM (dropped after `fd`, see [`Vm`]).
    backing: Vec<Arc<dyn SlotMemory>>,
}

/// A KVM VM with its irqchip (and PIT, if asked for), ready for memory slots and vCPUs.
pub struct Vm {
    fd: VmFd,
    /// KVM_CAP_NR_MEMSLOTS of the host.
    max_memslots: usize,
    /// The VM has KVM's in-kernel PIT.
    pit: bool,
    /// What snapshots need to know of the host's KVM.
    snapshot_caps: SnapshotCaps,
    /// End of guest RAM (no device memory below it).
    ram_end: u64,
    // Declared after `fd`: the memory the VM's slots point at outlives the VM.
    device_slots: Mutex<DeviceSlots>,
    // Kept last: /dev/kvm outlives the VM file descriptor.
    _kvm: Kvm,
}

impl Vm {
    /// Opens `/dev/kvm`, checks it, creates the VM, registers `mem` as its memory slots,
    /// then creates its TSS/identity-map pages, irqchip and (`pit`) PIT. `vcpu_count` is
    /// checked against the host's limit. `mark` is told when each step is done (start-up
    /// tracing).
    ///
    /// `mem` must stay mapped for as long as the VM exists: the caller keeps both in the
    /// same owner ([`crate::vmm::Vmm`]), which drops the VM first.
    pub fn new(
        vcpu_count: u8,
        mem: &GuestMemoryMmap,
        track_dirty_pages: bool,
        pit: bool,
        mark: &dyn Fn(&'static str),
    ) -> Result<Vm, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != KVM_API_VERSION {
            return Err(VmError::ApiVersion(version));
        }
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(*cap) {
                return Err(VmError::MissingCap(name));
            }
        }
        if pit && !kvm.check_extension(Cap::Pit2) {
            return Err(VmError::MissingCap("KVM_CAP_PIT2"));
        }
        let max = kvm.get_max_vcpus();
        if usize::from(vcpu_count) > max {
            return Err(VmError::TooManyVcpus {
                wanted: vcpu_count,
                max,
            });
        }
        let max_memslots = kvm.get_nr_memslots();
        let snapshot_caps = SnapshotCaps::query(&kvm, track_dirty_pages);
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        mark("KVM VM created");
        register_memory(&fd, max_memslots, mem, track_dirty_pages)?;
        mark("memory slots registered");
        // Both pages lie in the MMIO gap, where no RAM is; the identity map must be placed
        // before any vCPU exists.
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
            .map_err(VmError::IdentityMap)?;
        let tss = usize::try_from(KVM_TSS_ADDR)
            .map_err(|_| VmError::Tss(kvm_ioctls::Error::new(libc::EINVAL)))?;
        fd.set_tss_address(tss).map_err(VmError::Tss)?;
        fd.create_irq_chip().map_err(VmError::Irqchip)?;
        if pit {
            let config = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            fd.create_pit2(config).map_err(VmError::Pit)?;
            mark("irqchip and PIT created");
        } else {
            mark("irqchip created (no PIT)");
        }
        let ram_end = mem
            .iter()
            .map(|r| r.start_addr().0 + r.len())
            .max()
            .unwrap_or(0);
        let first_device_slot = u32::try_from(mem.num_regions()).unwrap_or(u32::MAX);
        Ok(Vm {
            fd,
            pit,
            snapshot_caps,
            max_memslots,
            ram_end,
            device_slots: Mutex::new(DeviceSlots {
                next_slot: first_device_slot,
                ..DeviceSlots::default()
            }),
            _kvm: kvm,
        })
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The host's supported CPUID: the answer asked for ahead (the jailer's, or API mode's
    /// prefetch: host_cpuid.rs) if nobody took it yet, else queried through this VM's
    /// `/dev/kvm` handle.
    pub fn supported_cpuid(&self) -> Result<CpuId, VmError> {
        Ok(host_cpuid::supported_cpuid_through(&self._kvm)?)
    }

    /// Whether the VM has KVM's in-kernel PIT.
    pub fn has_pit(&self) -> bool {
        self.pit
    }

    /// Whether the host's KVM has capability `cap` (`KVM_CHECK_EXTENSION`).
    pub fn has_capability(&self, cap: u32) -> bool {
        self._kvm.check_extension_raw(libc::c_ulong::from(cap)) > 0
    }

    /// What snapshots need to know of the host's KVM (queried when the VM was created,
    /// before any seccomp filter).
    pub fn snapshot_caps(&self) -> &SnapshotCaps {
        &self.snapshot_caps
    }

    /// Snapshots also save (and restore) the MSRs `extra`: those a custom CPU template sets,
    /// which KVM's list may lack.
    pub fn save_msrs_too(&mut self, extra: impl IntoIterator<Item = u32>) {
        self.snapshot_caps.add_msrs(extra);
    }

    /// A second descriptor of the VM (for the PCI devices, which change MSI routes and
    /// ioeventfds from the vCPU threads while the guest runs).
    pub fn duplicate_fd(&self) -> Result<VmFd, VmError> {
        // SAFETY: F_DUPFD_CLOEXEC only reads the descriptor number, which `self.fd` owns.
        let fd = unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
        if fd < 0 {
            return Err(VmError::Duplicate(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a new descriptor of this KVM VM that nothing else owns; the VmFd
        // takes it over (and closes it when dropped).
        unsafe { self._kvm.create_vmfd_from_rawfd(fd) }
            .map_err(|e| VmError::Duplicate(std::io::Error::from_raw_os_error(e.errno())))
    }

    /// How many memory slots the host's KVM gives a VM.
    pub fn max_memslots(&self) -> usize {
        self.max_memslots
    }

    /// A handle that registers and removes memory slots of device memory from another
    /// thread (the virtio-mem device, on the VMM thread), on a descriptor of its own.
    pub fn slot_handle(&self) -> Result<SlotHandle, VmError> {
        Ok(SlotHandle(self.duplicate_fd()?))
    }

    /// Registers `backing` as the next memory slot, at guest address `guest_addr` (above
    /// guest RAM, not overlapping another device's slot), read-only for the guest when
    /// `read_only` (its writes then exit to the VMM as MMIO). The VM keeps `backing` alive
    /// for as long as it exists. Returns the slot number.
    pub fn add_device_memory(
        &self,
        guest_addr: u64,
        backing: Arc<dyn SlotMemory>,
        read_only: bool,
    ) -> Result<u32, VmError> {
        let size = backing.size();
        let overlap = VmError::DeviceMemoryOverlap { guest_addr, size };
        let end = guest_addr
            .checked_add(size)
            .ok_or(VmError::DeviceMemoryOverlap { guest_addr, size })?;
        let mut slots = crate::sync::lock(&self.device_slots);
        if guest_addr < self.ram_end
            || slots
                .ranges
                .iter()
                .any(|&(a, l)| guest_addr < a.saturating_add(l) && a < end)
        {
            return Err(overlap);
        }
        let slot = slots.next_slot;
        // Slots from FIRST_DEVICE_SLOT on are virtio-mem's (registered as blocks are plugged).
        if slot >= FIRST_DEVICE_SLOT {
            return Err(VmError::TooManyPmemSlots);
        }
        if usize::try_from(slot).map_or(true, |s| s >= self.max_memslots) {
            return Err(VmError::TooManySlots {
                wanted: usize::try_from(slot)
                    .unwrap_or(usize::MAX)
                    .saturating_add(1),
                max: self.max_memslots,
            });
        }
        let r = kvm_userspace_memory_region {
            slot,
            flags: if read_only { KVM_MEM_READONLY } else { 0 },
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: backing.host_addr(),
        };
        // SAFETY: `SlotMemory` guarantees that the host range is one live mapping of `size`
        // bytes, writable unless the slot is read-only, into which no Rust reference points;
        // the VM keeps `backing` (in `device_slots`, dropped after `fd`) so the mapping
        // outlives the slot; the guest range was checked above to overlap neither RAM nor
        // another device slot.
        unsafe { self.fd.set_user_memory_region(r) }.map_err(|source| VmError::MemorySlot {
            slot,
            guest_addr,
            size,
            source,
        })?;
        slots.next_slot = slot + 1;
        slots.ranges.push((guest_addr, size));
        slots.backing.push(backing);
        Ok(slot)
    }

    /// Makes `evt` raise `gsi` on the in-kernel irqchip each time it is written.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|source| VmError::Irqfd { gsi, source })
    }

    /// Makes KVM signal `evt`, without leaving the kernel, when the guest writes the 4-byte
    /// value `datamatch` to the MMIO address `addr` (virtio QueueNotify).
    pub fn register_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), VmError> {
        self.fd
            .register_ioevent(evt, &kvm_ioctls::IoEventAddress::Mmio(addr), datamatch)
            .map_err(|source| VmError::Ioeventfd {
                addr,
                datamatch,
                source,
            })
    }

    /// Whether KVM can coalesce MMIO writes ([`crate::vstate::coalesced`]).
    pub fn has_coalesced_mmio(&self) -> bool {
        self.has_capability(kvm_bindings::KVM_CAP_COALESCED_MMIO)
    }

    /// Has KVM queue guest writes to `[addr, addr + len)` in the coalesced MMIO ring instead
    /// of leaving `KVM_RUN` ([`crate::vstate::coalesced`]).
    pub fn register_coalesced_mmio(&self, addr: u64, len: u32) -> Result<(), VmError> {
        self.fd
            .register_coalesced_mmio(kvm_ioctls::IoEventAddress::Mmio(addr), len)
            .map_err(|source| VmError::CoalescedMmio { addr, len, source })
    }
}

/// Registers and removes KVM memory slots of device memory ([`Vm::slot_handle`]).
pub struct SlotHandle(VmFd);

impl SlotHandle {
    /// `KVM_SET_USER_MEMORY_REGION` for slot `slot`: `size` bytes at `guest_addr` backed by
    /// the host's `host_addr`, or (`size` 0) the slot removed.
    ///
    /// # Safety
    /// `[host_addr, host_addr + size)` must stay mapped, readable and writable, for as long
    /// as the slot is registered or the VM exists, and nothing may hold a Rust reference
    /// into it.
    pub unsafe fn set(
        &self,
        slot: u32,
        guest_addr: u64,
        size: u64,
        host_addr: u64,
    ) -> Result<(), VmError> {
        let r = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: host_addr,
        };
        // SAFETY: the caller guarantees the host range stays a live mapping for as long as
        // KVM may use it (see above); a removal (size 0) maps nothing.
        unsafe { self.0.set_user_memory_region(r) }.map_err(|source| VmError::MemorySlot {
            slot,
            guest_addr,
            size,
            source,
        })
    }
}

/// Registers every region of `mem` as a KVM memory slot (slot i = region i).
fn register_memory(
    fd: &VmFd,
    max_memslots: usize,
    mem: &GuestMemoryMmap,
    track_dirty_pages: bool,
) -> Result<(), VmError> {
    let count = mem.num_regions();
    if count > max_memslots {
        return Err(VmError::TooManySlots {
            wanted: count,
            max: max_memslots,
        });
    }
    let flags = if track_dirty_pages {
        KVM_MEM_LOG_DIRTY_PAGES
    } else {
        0
    };
    for (slot, region) in (0u32..).zip(mem.iter()) {
        let r = kvm_userspace_memory_region {
            slot,
            flags,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the host range [as_ptr, as_ptr + len) is a live anonymous mapping owned by
        // `mem`, which the owner of this VM keeps mapped until the VM fd is closed (see
        // `Vm::new`); the guest may write anywhere in it, and Rust code only accesses it
        // through vm-memory's volatile accessors.
        unsafe { fd.set_user_memory_region(r) }.map_err(|source| VmError::MemorySlot {
            slot,
            guest_addr: r.guest_phys_addr,
            size: r.memory_size,
            source,
        })?;
    }
    Ok(())
}
