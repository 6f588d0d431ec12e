//! From [`VmResources`] to a running [`Vmm`]: `build_microvm` creates the KVM VM, guest
//! memory, devices and vCPUs, loads the kernel, initrd and command line, then starts the
//! vCPU threads (Firecracker's `InstanceStart`).
//!
//! Start-up latency matters: creating the VM's memory slots, irqchip and PIT waits in the
//! kernel (milliseconds on some hosts, see [`crate::vstate::vm`]), so a helper thread does it
//! while this one loads the kernel; or it was done before `InstanceStart`, as soon as the
//! machine configuration was known ([`prepare_platform`], `--prepare-vm`): a [`Prepared`]
//! VM whose memory no one has touched yet, with its vCPUs created and their CPU configured
//! (CPUID, MSRs, LAPIC; not their registers, which the boot entry sets) but no vCPU thread:
//! nothing has run them. The vCPU threads are started first, each installing its seccomp
//! filter and then waiting for its vCPU, so that their start overlaps the build.
//! `--boot-timer` prints where the time went.

use crate::arch::x86_64::cpuid::Topology;
use crate::arch::x86_64::custom_template::{self, CustomTemplateError};
use crate::devices::legacy::serial::{SerialError, SerialOutput, SerialSink};
use crate::devices::manager::{DeviceError, DeviceManager};
use crate::devices::rate_limiter::TokenBucket;
use crate::devices::virtio::setup::{
    self as virtio_setup, Transport, VirtioSetup, VirtioSetupError,
};
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::event_loop::{EventLoop, EventLoopError};
use crate::exit::{ExitNotifier, VmExit};
use crate::loader::{self, EntryPreference, LoadError};
use crate::resources::{MachineConfig, ResourceError, SerialConfig, VmResources};
use crate::signals::{self, SignalError};
use crate::timing::StartupTrace;
use crate::vmm::{self as running, Vmm, VmmError};
use crate::vstate::coalesced::{CoalescedError, CoalescedRing};
use crate::vstate::host_cpuid::host_supported_cpuid;
use crate::vstate::memory::{self, MemoryError};
use crate::vstate::vcpu::{CpuSetup, Vcpu, VcpuConfig, VcpuError};
use crate::vstate::vcpu_thread::{self, VcpuShared};
use crate::vstate::vm::{Vm, VmError};
use kvm_bindings::CpuId;
use std::sync::{Arc, Mutex};
use vm_memory::GuestMemoryMmap;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("boot-source is missing: the microVM has no kernel to boot")]
    MissingBootSource,
    #[error(transparent)]
    Virtio(#[from] VirtioSetupError),
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error(transparent)]
    Signals(#[from] SignalError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A file of the configuration (kernel, initrd) could not be had.
    #[error(transparent)]
    Resource(#[from] ResourceError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    CpuTemplate(#[from] CustomTemplateError),
    #[error(transparent)]
    Devices(#[from] DeviceError),
    #[error(transparent)]
    Serial(#[from] SerialError),
    #[error("cannot create the exit eventfd: {0}")]
    ExitEventFd(std::io::Error),
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
    #[error("cannot start the thread of vCPU {index}: {source}")]
    SpawnVcpu { index: u8, source: std::io::Error },
    #[error(transparent)]
    Coalesced(#[from] CoalescedError),
    #[error("the thread creating the KVM VM panicked")]
    PlatformThread,
    #[error("the restored vCPUs did not start paused: {0}")]
    Paused(VmmError),
    #[error("memory-hotplug: total_size_mib {total_mib} does not fit the guest-physical address space (the region from {start:#x} would end past {end:#x})")]
    HotplugTooLarge {
        total_mib: u32,
        start: u64,
        end: u64,
    },
}

/// How to build the microVM beyond what [`VmResources`] says.
#[derive(Default, Clone)]
pub struct BuildOptions {
    /// Where the guest's serial output goes.
    pub serial: SerialSink,
    /// Which kernel entry to use.
    pub entry: EntryPreference,
    /// Records start-up phases and prints the guest's first serial byte time (`--boot-timer`).
    pub trace: Option<StartupTrace>,
    /// `--strict-io`: stop the VM on a port or MMIO access no device handles.
    pub strict_io: bool,
    /// `--enable-pci`: the virtio devices on PCI instead of MMIO windows.
    pub pci: bool,
    /// `--coalesce-mmio`: a booted microVM's virtio-mmio set-up registers are KVM coalesced
    /// MMIO ([`crate::vstate::coalesced`]), when KVM can.
    pub coalesce_mmio: bool,
}

/// What a KVM VM made ahead of `InstanceStart` was made for: the machine configuration
/// (the VM, its memory and its vCPUs' CPU model) and whether a custom CPU template was set.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PlatformKey {
    machine: MachineConfig,
    custom_cpu: bool,
}

impl PlatformKey {
    fn of(res: &VmResources) -> Self {
        PlatformKey {
            machine: res.machine_config.clone(),
            custom_cpu: res.cpu_config.is_some(),
        }
    }
}

/// A KVM VM with its guest memory mapped and registered, made before `InstanceStart` for a
/// machine configuration: nothing was written to the memory (fresh anonymous pages, zero
/// until the build loads the kernel); its vCPUs (unless a custom CPU template is set) are
/// created with their CPU configured, and no thread runs them.
pub struct Prepared {
    key: PlatformKey,
    mem: GuestMemoryMmap,
    vm: Vm,
    /// KVM's supported CPUID, queried ahead too.
    supported_cpuid: CpuId,
    /// Empty with a custom CPU template (its vCPUs are made at the start).
    vcpus: Vec<Vcpu>,
}

impl Prepared {
    /// Whether it was made for `res`'s machine configuration and CPU template (a
    /// configuration changed since is built afresh).
    pub fn fits(&self, res: &VmResources) -> bool {
        self.key == PlatformKey::of(res)
    }
}

/// Makes the KVM VM and its guest memory for `res`'s machine configuration now (the slow
/// kernel waits of a start), and its vCPUs with their CPU configured (without a custom CPU
/// template), for [`build_prepared`] to use later.
pub fn prepare_platform(res: &VmResources) -> Result<Prepared, BuildError> {
    let mc = &res.machine_config;
    let mem = memory::create_guest_memory(mc.mem_size_bytes(), mc.huge_pages)?;
    let vm = Vm::new(mc.vcpu_count, &mem, mc.track_dirty_pages, mc.pit, &|_| {})?;
    let supported_cpuid = vm.supported_cpuid()?;
    let mut vcpus = Vec::new();
    if res.cpu_config.is_none() {
        let cpu = CpuSetup {
            topology: topology(mc),
            cpuid: &supported_cpuid,
            template: mc.cpu_template,
            msr_modifiers: &[],
        };
        vcpus = create_vcpus(&vm, mc.vcpu_count, &cpu)?;
    }
    Ok(Prepared {
        key: PlatformKey::of(res),
        mem,
        vm,
        supported_cpuid,
        vcpus,
    })
}

fn topology(mc: &MachineConfig) -> Topology {
    Topology {
        vcpu_count: mc.vcpu_count,
        smt: mc.smt,
    }
}

/// Creates `count` vCPUs of `vm` and configures their CPU.
fn create_vcpus(vm: &Vm, count: u8, cpu: &CpuSetup<'_>) -> Result<Vec<Vcpu>, BuildError> {
    let mut vcpus = Vec::with_capacity(usize::from(count));
    for index in 0..count {
        let v = Vcpu::new(vm, index)?;
        v.configure_cpu(cpu)?;
        vcpus.push(v);
    }
    Ok(vcpus)
}

/// Builds the microVM described by `res` and starts its vCPUs. Returns it with the event
/// loop that serves its devices and ends when it stops ([`Vmm::run`]).
///
/// Two threads share the work: a helper creates the KVM VM (memory slots, irqchip, PIT;
/// mostly waiting in the kernel) while this thread loads the kernel, initrd and boot
/// information into the already mapped guest memory. vCPUs and devices follow, once both
/// are done.
pub fn build_microvm(
    res: &VmResources,
    opts: BuildOptions,
) -> Result<(Vmm, EventLoop<Vmm>), BuildError> {
    build_prepared(res, opts, None)
}

/// [`build_microvm`] with the VM and memory `prepared` ahead, when they fit the machine
/// configuration (else they are dropped and made as usual).
pub fn build_prepared(
    res: &VmResources,
    opts: BuildOptions,
    prepared: Option<Prepared>,
) -> Result<(Vmm, EventLoop<Vmm>), BuildError> {
    let trace = opts.trace.clone();
    let mark = |p: &'static str| {
        if let Some(t) = &trace {
            t.mark(p);
        }
    };
    let boot = res
        .boot_source
        .as_ref()
        .ok_or(BuildError::MissingBootSource)?;
    let mc = &res.machine_config;
    let mem_size = mc.mem_size_bytes();
    signals::install_kick_handler()?;
    let prepared = prepared.filter(|p| p.fits(res));
    // With the VM prepared ahead, the vCPU threads start now and wait for their vCPUs: their
    // creation and seccomp filters overlap the kernel load (on the other CPU). Not when the
    // VM is made now: a VM thread already takes that CPU, and on two CPUs a third thread
    // delayed the first guest byte (2.5 → 3.4 ms from spawn here); they start at the end.
    let parked = match prepared {
        Some(_) => (0..mc.vcpu_count)
            .map(|index| {
                vcpu_thread::park(index, false)
                    .map_err(|source| BuildError::SpawnVcpu { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let serial_out = serial_output(&opts, res.serial.as_ref())?;
    let exits = Arc::new(ExitNotifier::new().map_err(BuildError::ExitEventFd)?);
    // The KVM VM registers guest RAM only; the hot-plug region (in `mem`, sharing RAM's
    // mappings) is registered slot by slot by its device.
    let (ram, ready_vm, ready_cpuid, ready_vcpus) = match prepared {
        Some(p) => {
            mark("VM and guest memory prepared ahead");
            (p.mem, Some(p.vm), Some(p.supported_cpuid), p.vcpus)
        }
        None => {
            let ram = memory::create_guest_memory(mem_size, mc.huge_pages)?;
            mark("guest memory mapped");
            (ram, None, None, Vec::new())
        }
    };
    let mem = with_hotplug_region(ram.clone(), res)?;
    track_vmm_writes(mc.track_dirty_pages, mem_size);

    let (vm, supported_cpuid, kernel, dm, tables, virtio) =
        std::thread::scope(|s| -> Result<_, BuildError> {
            let platform =
                match ready_vm {
                    Some(vm) => Ok(vm),
                    None => Err(s.spawn(|| {
                        Vm::new(mc.vcpu_count, &ram, mc.track_dirty_pages, mc.pit, &mark)
                    })),
                };
            let load = || -> Result<_, BuildError> {
                // The files opened when the configuration was accepted.
                let kernel = loader::load_kernel(
                    &mem,
                    boot.kernel_file()?,
                    &boot.kernel_image_path,
                    mem_size,
                    opts.entry,
                )?;
                mark("kernel loaded");
                let initrd = match (boot.initrd_file(), &boot.initrd_path) {
                    (Some(file), Some(p)) => {
                        let rd = loader::load_initrd(&mem, file?, p, &kernel, mem_size)?;
                        mark("initrd loaded");
                        Some(rd)
                    }
                    _ => None,
                };
                // virtio-mmio devices first: the command line lists them.
                let mut dm = DeviceManager::new();
                let transport = if opts.pci {
                    Transport::Pci
                } else {
                    Transport::Mmio
                };
                let virtio = attach_virtio(&mut dm, &mem, res, transport)?;
                let boot_args = virtio_setup::with_root_arg(
                    boot.boot_args_or_default(),
                    &res.drives,
                    &res.pmem,
                );
                let cmdline = loader::build_cmdline(&boot_args, dm.mmio_slots())?;
                let tables = loader::write_boot_info(
                    &mem,
                    &kernel,
                    &cmdline,
                    initrd,
                    mem_size,
                    mc.vcpu_count,
                )?;
                mark("command line and boot information written");
                Ok((kernel, dm, tables, virtio))
            };
            let loaded = load();
            // The host's CPUID for the vCPUs: the jailer's answer, or in API mode asked for
            // ahead once the API answered its first requests (host_cpuid.rs); else queried
            // now, beside the VM's creation (on the development hosts the two wait for each
            // other).
            let cpuid = match ready_cpuid {
                Some(cpuid) => Ok(cpuid),
                None => host_supported_cpuid()
                    .map_err(VmError::from)
                    .inspect(|_| mark("host CPUID ready")),
            };
            let vm = match platform {
                Ok(vm) => Ok(vm),
                Err(thread) => thread.join().map_err(|_| BuildError::PlatformThread)?,
            };
            let (kernel, dm, tables, virtio) = loaded?;
            Ok((vm?, cpuid?, kernel, dm, tables, virtio))
        })?;
    mark("VM and guest memory ready");

    let mut dm = dm;
    let mut virtio = virtio;
    let coalesced = virtio.wire(&vm, opts.coalesce_mmio && vm.has_coalesced_mmio())?;
    attach_legacy(&mut dm, &vm, serial_out, &exits)?;
    let (vm, vcpus) = if ready_vcpus.is_empty() {
        let mut vm = vm;
        let base_cpuid = templated_cpuid(&mut vm, &supported_cpuid, res)?;
        let msr_modifiers = res
            .cpu_config
            .as_ref()
            .map(|t| t.msr_modifiers())
            .unwrap_or_default();
        let cfg = VcpuConfig {
            cpu: CpuSetup {
                topology: topology(mc),
                cpuid: &base_cpuid,
                template: mc.cpu_template,
                msr_modifiers,
            },
            entry: kernel.entry,
            tables: &tables,
        };
        let mut vcpus = Vec::with_capacity(usize::from(mc.vcpu_count));
        for index in 0..mc.vcpu_count {
            let v = Vcpu::new(&vm, index)?;
            v.configure(&cfg)?;
            vcpus.push(v);
        }
        mark("devices and vCPUs created and configured");
        (vm, vcpus)
    } else {
        for v in &ready_vcpus {
            v.set_boot_regs(kernel.entry, &tables)?;
        }
        mark("devices made; the vCPUs prepared ahead given their boot registers");
        (vm, ready_vcpus)
    };
    let ring = match vcpus.first() {
        Some(v) if coalesced => Some(Arc::new(CoalescedRing::map(&v.fd)?)),
        _ => None,
    };
    let parts = Parts {
        vm,
        mem,
        dm,
        virtio,
        vcpus,
        exits,
        strict_io: opts.strict_io,
        paused: false,
        coalesced: ring,
        parked,
    };
    let (vmm, events) = start(parts)?;
    mark("vCPU threads started");
    Ok((vmm, events))
}

/// `mem` with the virtio-mem hot-plug region (`memory-hotplug`) added at
/// [`DEVICE_MEMORY_START`](crate::arch::x86_64::layout::DEVICE_MEMORY_START), if configured.
/// The region must end below 2^46 (64 TiB), the most physical memory a 4-level-paging Linux
/// guest addresses.
pub(crate) fn with_hotplug_region(
    mem: GuestMemoryMmap,
    res: &VmResources,
) -> Result<GuestMemoryMmap, BuildError> {
    use crate::arch::x86_64::layout::DEVICE_MEMORY_START;
    const END: u64 = 1 << 46;
    let Some(cfg) = &res.memory_hotplug else {
        return Ok(mem);
    };
    if DEVICE_MEMORY_START + cfg.total_bytes() > END {
        return Err(BuildError::HotplugTooLarge {
            total_mib: cfg.total_size_mib,
            start: DEVICE_MEMORY_START,
            end: END,
        });
    }
    Ok(memory::add_hotplug_region(
        &mem,
        DEVICE_MEMORY_START,
        cfg.total_bytes(),
    )?)
}

/// Diff snapshots: with `track_dirty_pages`, the VMM's own writes to guest memory are
/// tracked from now on (KVM logs the guest's), else not at all.
pub(crate) fn track_vmm_writes(track_dirty_pages: bool, mem_size: u64) {
    if track_dirty_pages {
        crate::vstate::dirty::track(&crate::arch::x86_64::layout::ram_ranges(mem_size));
    } else {
        crate::vstate::dirty::stop();
    }
}

/// The serial console's output, with the first-byte hook of the boot timer and the
/// metrics: where `serial` (`PUT /serial`, or the config file's `serial`) says, else the
/// `--serial-out` flag's destination (or stdout), with `serial`'s bucket if it limits
/// something.
pub(crate) fn serial_output(
    opts: &BuildOptions,
    serial: Option<&SerialConfig>,
) -> Result<SerialOutput, BuildError> {
    let sink = match serial.and_then(|s| s.serial_out_path.clone()) {
        Some(path) => SerialSink::Path(path),
        None => opts.serial.clone(),
    };
    let mut serial_out = SerialOutput::open(&sink)?;
    if let Some(bucket) = serial
        .and_then(|s| s.rate_limiter)
        .and_then(|cfg| TokenBucket::new(&cfg, std::time::Instant::now()))
    {
        serial_out.set_rate_limiter(bucket);
    }
    let origin = opts.trace.as_ref().map(StartupTrace::origin);
    serial_out.on_first_byte(Box::new(move || {
        // The boot-time line of docs/api.md (and the metrics' boot_timing_us).
        crate::timing::record_guest_output();
        if let Some(origin) = origin {
            eprintln!(
                "boot-timer: first guest serial byte: {:.3} ms",
                origin.elapsed().as_secs_f64() * 1e3
            );
        }
    }));
    Ok(serial_out)
}

/// The CPUID every vCPU's is normalised from: KVM's supported one, or with a custom CPU
/// template (`PUT /cpu-config`) its result, once the VM's capabilities are checked; the
/// template's MSRs join those snapshots save. A restore computes it the same way, to
/// compare the snapshot's CPU features with what this host gives the same template.
pub(crate) fn templated_cpuid(
    vm: &mut Vm,
    supported: &CpuId,
    res: &VmResources,
) -> Result<CpuId, BuildError> {
    Ok(match &res.cpu_config {
        Some(t) => {
            custom_template::check_capabilities(t, |cap| vm.has_capability(cap))?;
            vm.save_msrs_too(t.msr_modifiers().iter().map(|m| m.addr));
            custom_template::templated_cpuid(supported, t)?
        }
        None => supported.clone(),
    })
}

/// Creates every virtio device of `res` (drives, interfaces, vsock, entropy, the balloon,
/// then virtio-mem) in its virtio-mmio window (or PCI slot) of `dm`.
pub(crate) fn attach_virtio(
    dm: &mut DeviceManager,
    mem: &GuestMemoryMmap,
    res: &VmResources,
    transport: Transport,
) -> Result<VirtioSetup, BuildError> {
    let mut virtio = virtio_setup::attach_devices(dm, mem, res, transport)?;
    if let Some(cfg) = &res.vsock {
        // After the drives and interfaces: the next virtio-mmio window and IRQ.
        let vsock = Arc::new(Mutex::new(Vsock::new(cfg)?));
        virtio.attach(dm, mem, vsock.clone())?;
        virtio.handles.vsock = Some(vsock);
    }
    if let Some(cfg) = &res.entropy {
        virtio.attach_entropy(dm, mem, cfg)?;
    }
    if let Some(cfg) = &res.balloon {
        virtio.attach_balloon(dm, mem, cfg)?;
    }
    if let Some(cfg) = &res.memory_hotplug {
        virtio.attach_virtio_mem(dm, mem, cfg)?;
    }
    Ok(virtio)
}

/// COM1 and the i8042, whose CPU reset ends the VM through `exits`.
pub(crate) fn attach_legacy(
    dm: &mut DeviceManager,
    vm: &Vm,
    serial_out: SerialOutput,
    exits: &Arc<ExitNotifier>,
) -> Result<(), BuildError> {
    let reset_exits = exits.clone();
    dm.attach_legacy_devices(
        vm,
        serial_out,
        Box::new(move || {
            reset_exits.notify(VmExit::GuestReset {
                how: "i8042 CPU reset",
            })
        }),
    )?;
    Ok(())
}

/// A microVM whose VM, memory, devices and vCPUs are ready, to be started.
pub(crate) struct Parts {
    pub vm: Vm,
    pub mem: GuestMemoryMmap,
    pub dm: DeviceManager,
    pub virtio: VirtioSetup,
    pub vcpus: Vec<Vcpu>,
    pub exits: Arc<ExitNotifier>,
    pub strict_io: bool,
    /// Start the vCPU threads paused (a restored microVM).
    pub paused: bool,
    /// The VM's coalesced MMIO ring, when writes are coalesced (a booted microVM).
    pub coalesced: Option<Arc<CoalescedRing>>,
    /// Threads started ahead for the vCPUs, in order (empty: each vCPU gets a new one).
    pub parked: Vec<vcpu_thread::Parked>,
}

/// Starts the vCPU threads and makes the event loop that serves the devices.
pub(crate) fn start(p: Parts) -> Result<(Vmm, EventLoop<Vmm>), BuildError> {
    let Parts {
        vm,
        mem,
        dm,
        mut virtio,
        vcpus,
        exits,
        strict_io,
        paused,
        coalesced,
        parked,
    } = p;
    let mut devices = dm.finish();
    devices.virtio = std::mem::take(&mut virtio.handles);
    let (ack_tx, ack_rx) = std::sync::mpsc::channel();
    let shared = VcpuShared {
        pio: devices.pio.clone(),
        mmio: devices.mmio.clone(),
        exits: exits.clone(),
        acks: ack_tx,
        mem: mem.clone(),
        strict_io,
        snapshot_msrs: vm.snapshot_caps().msrs.clone().into(),
        coalesced,
    };
    let mut handles = Vec::with_capacity(vcpus.len());
    let mut parked = parked.into_iter();
    for v in vcpus {
        let index = v.index;
        let started = match parked.next() {
            Some(thread) => thread.start(v, shared.clone()),
            None => vcpu_thread::spawn(v, shared.clone(), paused),
        };
        match started {
            Ok(h) => handles.push(h),
            Err(source) => {
                // Stop the vCPUs already running before reporting.
                drop(Vmm::new(handles, ack_rx, exits, devices, vm, mem));
                return Err(BuildError::SpawnVcpu { index, source });
            }
        }
    }
    let mut vmm = Vmm::new(handles, ack_rx, exits.clone(), devices, vm, mem);
    if paused {
        vmm.started_paused().map_err(BuildError::Paused)?;
    }
    let mut events = EventLoop::new()?;
    running::watch_exits(&mut events, exits)?;
    virtio.start(events.sources())?;
    Ok((vmm, events))
}
