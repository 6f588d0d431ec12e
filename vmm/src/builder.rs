//! From [`VmResources`] to a running [`Vmm`]: `build_microvm` creates the KVM VM, guest
//! memory, devices and vCPUs, loads the kernel, initrd and command line, then starts the
//! vCPU threads (Firecracker's `InstanceStart`).
//!
//! Start-up latency matters: creating the VM's memory slots, irqchip and PIT waits in the
//! kernel (milliseconds on some hosts, see [`crate::vstate::vm`]), so a helper thread does it
//! while this one loads the kernel. `--boot-timer` prints where the time went.

use crate::arch::x86_64::cpuid::Topology;
use crate::arch::x86_64::custom_template::{self, CustomTemplateError};
use crate::devices::legacy::serial::{SerialError, SerialOutput, SerialSink};
use crate::devices::manager::{DeviceError, DeviceManager};
use crate::devices::rate_limiter::TokenBucket;
use crate::devices::virtio::setup::{self as virtio_setup, VirtioSetupError};
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::event_loop::{EventLoop, EventLoopError};
use crate::exit::{ExitNotifier, VmExit};
use crate::loader::{self, EntryPreference, LoadError};
use crate::resources::{ResourceError, VmResources};
use crate::signals::{self, SignalError};
use crate::timing::StartupTrace;
use crate::vmm::{self as running, Vmm};
use crate::vstate::memory::{self, MemoryError};
use crate::vstate::vcpu::{Vcpu, VcpuConfig, VcpuError};
use crate::vstate::vcpu_thread::{self, VcpuShared};
use crate::vstate::vm::{Vm, VmError};
use std::sync::{Arc, Mutex};

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
    #[error("the thread creating the KVM VM panicked")]
    PlatformThread,
}

/// How to build the microVM beyond what [`VmResources`] says.
#[derive(Default)]
pub struct BuildOptions {
    /// Where the guest's serial output goes.
    pub serial: SerialSink,
    /// Which kernel entry to use.
    pub entry: EntryPreference,
    /// Records start-up phases and prints the guest's first serial byte time (`--boot-timer`).
    pub trace: Option<StartupTrace>,
    /// `--strict-io`: stop the VM on a port or MMIO access no device handles.
    pub strict_io: bool,
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
    let trace = opts.trace;
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

    let mut serial_out = SerialOutput::open(&serial_sink(res, &opts.serial))?;
    if let Some(bucket) = serial_bucket(res) {
        serial_out.set_rate_limiter(bucket);
    }
    let origin = trace.as_ref().map(StartupTrace::origin);
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
    let exits = Arc::new(ExitNotifier::new().map_err(BuildError::ExitEventFd)?);
    let mem = memory::create_guest_memory(mem_size, mc.huge_pages)?;
    mark("guest memory mapped");

    let (vm, kernel, dm, tables, mut virtio) = std::thread::scope(|s| -> Result<_, BuildError> {
        let platform = s.spawn(|| Vm::new(mc.vcpu_count, &mem, mc.track_dirty_pages, &mark));
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
            let mut virtio = virtio_setup::attach_devices(&mut dm, &mem, res)?;
            if let Some(cfg) = &res.vsock {
                // After the drives and interfaces: the next virtio-mmio window and IRQ.
                let vsock = Arc::new(Mutex::new(Vsock::new(cfg)?));
                virtio.attach(&mut dm, &mem, vsock)?;
            }
            if let Some(cfg) = &res.entropy {
                virtio.attach_entropy(&mut dm, &mem, cfg)?;
            }
            let boot_args = virtio_setup::with_root_arg(boot.boot_args_or_default(), &res.drives);
            let cmdline = loader::build_cmdline(&boot_args, dm.mmio_slots())?;
            let tables =
                loader::write_boot_info(&mem, &kernel, &cmdline, initrd, mem_size, mc.vcpu_count)?;
            mark("command line and boot information written");
            Ok((kernel, dm, tables, virtio))
        };
        let loaded = load();
        let vm = platform.join().map_err(|_| BuildError::PlatformThread)?;
        let (kernel, dm, tables, virtio) = loaded?;
        Ok((vm?, kernel, dm, tables, virtio))
    })?;
    mark("VM and guest memory ready");

    let mut dm = dm;
    virtio.wire(&vm)?;
    let reset_exits = exits.clone();
    dm.attach_legacy_devices(
        &vm,
        serial_out,
        Box::new(move || {
            reset_exits.notify(VmExit::GuestReset {
                how: "i8042 CPU reset",
            })
        }),
    )?;
    let base_cpuid = match &res.cpu_config {
        Some(t) => {
            custom_template::check_capabilities(t, |cap| vm.has_capability(cap))?;
            custom_template::templated_cpuid(vm.supported_cpuid(), t)?
        }
        None => vm.supported_cpuid().clone(),
    };
    let cfg = VcpuConfig {
        topology: Topology {
            vcpu_count: mc.vcpu_count,
            smt: mc.smt,
        },
        cpuid: &base_cpuid,
        template: mc.cpu_template,
        msr_modifiers: res
            .cpu_config
            .as_ref()
            .map(|t| t.msr_modifiers())
            .unwrap_or_default(),
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

    let mut devices = dm.finish();
    devices.virtio = std::mem::take(&mut virtio.handles);
    let (ack_tx, ack_rx) = std::sync::mpsc::channel();
    let shared = VcpuShared {
        pio: devices.pio.clone(),
        mmio: devices.mmio.clone(),
        exits: exits.clone(),
        acks: ack_tx,
        mem: mem.clone(),
        strict_io: opts.strict_io,
    };
    let mut handles = Vec::with_capacity(vcpus.len());
    for v in vcpus {
        let index = v.index;
        match vcpu_thread::spawn(v, shared.clone()) {
            Ok(h) => handles.push(h),
            Err(source) => {
                // Stop the vCPUs already running before reporting.
                drop(Vmm::new(handles, ack_rx, exits, devices, vm, mem));
                return Err(BuildError::SpawnVcpu { index, source });
            }
        }
    }
    mark("vCPU threads started");
    let vmm = Vmm::new(handles, ack_rx, exits.clone(), devices, vm, mem);
    let mut events = EventLoop::new()?;
    running::watch_exits(&mut events, exits)?;
    virtio.start(events.sources())?;
    Ok((vmm, events))
}

/// Where the serial output goes: `PUT /serial`'s (or the config file's `serial`) path, else
/// the `--serial-out` flag's destination (or stdout).
fn serial_sink(res: &VmResources, flag: &SerialSink) -> SerialSink {
    match res.serial.as_ref().and_then(|s| s.serial_out_path.clone()) {
        Some(path) => SerialSink::Path(path),
        None => flag.clone(),
    }
}

/// The serial output's bucket, when one limits something.
fn serial_bucket(res: &VmResources) -> Option<TokenBucket> {
    let cfg = res.serial.as_ref()?.rate_limiter?;
    TokenBucket::new(&cfg, std::time::Instant::now())
}
