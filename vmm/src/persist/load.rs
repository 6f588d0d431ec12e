//! `PUT /snapshot/load`: a new microVM from a snapshot, on a VMM not configured yet.
//!
//! The order makes sure nothing of an unverified snapshot reaches KVM or a device, and that
//! a refused snapshot leaves nothing behind:
//!
//! 1. the state file is read (bounded) and its MAC (or checksum) verified, then decoded
//!    (bounded) and its parts checked against each other and against this VMM's transport
//!    (a snapshot of PCI devices needs `--enable-pci`, one of virtio-mmio devices not);
//! 2. the configuration it holds is applied through the same setters as the API (with the
//!    request's `network_overrides` and `vsock_override`), which opens the drives;
//! 3. guest memory: the `File` backend maps the memory file's RAM privately (its size
//!    checked; with a key, its chunk digests compared with the authenticated ones first) and,
//!    with virtio-mem, copies the plugged blocks of the hot-plug region from the file into a
//!    fresh region (unplugged blocks stay unbacked); the `Uffd`
//!    backend maps anonymous memory and hands it to the page-fault handler (with a key, the
//!    memory is then hashed through the mapping: every page is fetched from the handler
//!    and checked before the guest runs);
//! 4. the KVM VM with that memory; the vCPUs (their CPU features and TSC frequency checked
//!    against this host) get their saved state, then the irqchip, PIT and clock;
//! 5. the devices are built from the configuration, their vCPU threads start paused, and
//!    every device gets its saved state (virtio-mem first: its plugged blocks and exactly
//!    the KVM slots that hold them; on PCI: configuration spaces, MSI-X tables and
//!    routes, BARs and their ioeventfds where the guest left them) (the vsock device then tells the guest that its
//!    connections are gone).
//!
//! Without a key the snapshot is trusted input, as in Firecracker; a warning says so.

use super::memory_file::{self, Image, MemoryFileError};
use super::state::{MicrovmState, StateError};
use super::uffd::{self, UffdError};
use crate::arch::x86_64::cpuid::{self, CpuidError, Topology};
use crate::builder::{self, BuildError, BuildOptions, Parts};
use crate::devices::legacy::serial::persist::SerialStateError;
use crate::devices::manager::DeviceManager;
use crate::devices::virtio::mem::persist::{VirtioMemState, VirtioMemStateError};
use crate::devices::virtio::mmio::persist::TransportStateError;
use crate::devices::virtio::pci::persist::{restore_bus, PciFunctionStateError};
use crate::devices::virtio::setup::Transport;
use crate::event_loop::EventLoop;
use crate::exit::ExitNotifier;
use crate::resources::{
    BackendType, CpuConfigSource, CpuTemplate, ResourceError, SerialConfig, SnapshotLoad, VmConfig,
    VmResources,
};
use crate::signals;
use crate::snapshot::digest::MemoryDigest;
use crate::snapshot::format::{self, FormatError, MAX_FILE};
use crate::snapshot::{CodecError, Decoder, SnapshotKey};
use crate::sync::lock;
use crate::vmm::Vmm;
use crate::vstate::memory::{self, MemoryError};
use crate::vstate::vcpu::{Vcpu, VcpuError};
use crate::vstate::vcpu_state::VcpuStateError;
use crate::vstate::vm::{Vm, VmError};
use crate::vstate::vm_state::VmStateError;
use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

/// TSC frequencies within 250 parts per million are the same (calibration differs a little
/// between boots of the same host), as Firecracker accepts.
const TSC_TOLERANCE_PPM: u64 = 250;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("snapshot_path {path:?}: cannot read it: {reason}")]
    ReadState { path: String, reason: String },
    #[error("snapshot_path {path:?}: {source}")]
    Format { path: String, source: FormatError },
    #[error("snapshot_path {path:?}: the state cannot be decoded: {source}")]
    Decode { path: String, source: CodecError },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the snapshot's configuration cannot be restored: {0}")]
    Resource(#[from] ResourceError),
    #[error("{0}")]
    Override(String),
    #[error("mem_backend.backend_path {path:?}: {reason}")]
    MemoryFile { path: String, reason: String },
    #[error("mem_backend Uffd: this snapshot has a virtio-mem device (memory-hotplug), whose hot-plug region Kiln restores only from a memory file: use the File backend")]
    UffdVirtioMem,
    #[error("restoring the virtio-mem device: {0}")]
    VirtioMem(#[from] VirtioMemStateError),
    #[error("mem_backend.backend_path {path:?}: the memory file does not match the snapshot's MAC: its 2 MiB chunk at offset {offset:#x} differs (it was modified, or belongs to another snapshot)")]
    MemoryMac { path: String, offset: u64 },
    #[error("the memory the page-fault handler at {path:?} serves does not match the snapshot's MAC: its 2 MiB chunk at offset {offset:#x} differs")]
    UffdMac { path: String, offset: u64 },
    #[error(transparent)]
    MemoryRead(#[from] MemoryFileError),
    #[error("guest memory: {0}")]
    Memory(#[from] MemoryError),
    #[error("mem_backend Uffd: {0}")]
    Uffd(#[from] UffdError),
    #[error("cannot build the microVM: {0}")]
    Build(#[from] BuildError),
    #[error("cannot create the KVM VM: {0}")]
    Vm(#[from] VmError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("restoring a vCPU: {0}")]
    VcpuState(#[from] VcpuStateError),
    #[error("the snapshot's guest TSC runs at {saved} kHz, this host's at {here} kHz, and this host's KVM cannot scale the TSC (no KVM_CAP_TSC_CONTROL)")]
    Tsc { saved: u32, here: u32 },
    #[error("vCPU {index}: cannot set the TSC frequency to the snapshot's {khz} kHz: {source}")]
    SetTsc {
        index: u8,
        khz: u32,
        source: kvm_ioctls::Error,
    },
    #[error("this host's vCPU XSAVE state is {0} bytes (AMX?), more than the 4096 Kiln restores")]
    Xsave(usize),
    #[error("restoring the VM: {0}")]
    VmState(#[from] VmStateError),
    #[error(transparent)]
    Device(#[from] TransportStateError),
    #[error(transparent)]
    Serial(#[from] SerialStateError),
    #[error(transparent)]
    Pci(#[from] PciFunctionStateError),
}

/// A microVM restored (paused) from a snapshot.
pub struct Loaded {
    pub vmm: Vmm,
    pub events: EventLoop<Vmm>,
    /// The configuration it was restored with (`GET /vm/config`).
    pub resources: VmResources,
    pub authenticated: bool,
}

/// Reads, verifies and decodes the state file at `path`.
fn read_state(path: &str, key: Option<&SnapshotKey>) -> Result<(MicrovmState, bool), LoadError> {
    let bytes = kiln_hostfs::read_bytes(Path::new(path), MAX_FILE as u64).map_err(|e| {
        LoadError::ReadState {
            path: path.to_string(),
            reason: e.to_string(),
        }
    })?;
    let opened = format::open(&bytes, key).map_err(|source| LoadError::Format {
        path: path.to_string(),
        source,
    })?;
    let state = Decoder::with_minor(opened.body, opened.header.version.minor)
        .get::<MicrovmState>()
        .map_err(|source| LoadError::Decode {
            path: path.to_string(),
            source,
        })?;
    Ok((state, opened.header.authenticated))
}

/// The saved configuration applied as the API would, with the request's overrides.
fn resources(config: VmConfig, req: &SnapshotLoad) -> Result<VmResources, LoadError> {
    let mut res = VmResources::default();
    let mut mc = config
        .machine_config
        .ok_or_else(|| StateError::Config("machine-config is missing".into()))?;
    mc.track_dirty_pages = req.track_dirty_pages;
    mc.huge_pages = req.huge_pages.resolve(mc.huge_pages);
    res.set_machine_config(mc)?;
    match config.cpu_config {
        Some(CpuConfigSource::Template(t)) => res.set_cpu_config(t)?,
        // A snapshot holds the template itself; a path would be a host file read on the
        // snapshot's say.
        Some(CpuConfigSource::Path(p)) => {
            return Err(StateError::Config(format!(
                "cpu-config names a file ({p:?}) instead of holding the template"
            ))
            .into())
        }
        None => {}
    }
    // Kept for `GET /vm/config`; the kernel is not needed (nor opened) by a restore.
    res.boot_source = config.boot_source;
    for d in config.drives {
        res.put_drive(None, d)?;
    }
    let mut nets = config.network_interfaces;
    for o in &req.network_overrides {
        let n = nets
            .iter_mut()
            .find(|n| n.iface_id == o.iface_id)
            .ok_or_else(|| {
                LoadError::Override(format!(
                    "network_overrides: the snapshot has no network interface {:?}",
                    o.iface_id
                ))
            })?;
        n.host_dev_name = o.host_dev_name.clone();
    }
    for n in nets {
        res.put_network_interface(None, n)?;
    }
    // The backing files are mapped again from their paths (Firecracker's rule: they must be
    // where they were); what the guest wrote is in them.
    for p in config.pmem {
        res.put_pmem(None, p)?;
    }
    // MMDS's configuration is in the snapshot, its data store is not (as in Firecracker).
    if let Some(m) = config.mmds_config {
        res.set_mmds_config(m)?;
    }
    let mut vsock = config.vsock;
    if let Some(o) = &req.vsock_override {
        let v = vsock.as_mut().ok_or_else(|| {
            LoadError::Override("vsock_override: the snapshot has no vsock device".into())
        })?;
        v.uds_path = o.uds_path.clone();
    }
    if let Some(v) = vsock {
        res.set_vsock(v)?;
    }
    if let Some(e) = config.entropy {
        res.set_entropy(e)?;
    }
    if let Some(b) = config.balloon {
        res.set_balloon(b)?;
    }
    if let Some(m) = config.memory_hotplug {
        res.set_memory_hotplug(m)?;
    }
    if let Some(s) = serial_config(config.serial, req) {
        res.set_serial(s)?;
    }
    Ok(res)
}

/// The restored serial console's configuration: the loading VMM's `PUT /serial` if it had
/// one (its path and bucket, as Firecracker); else the snapshot's bucket, writing where
/// this VMM's `--serial-out` says (the snapshot's path is another VMM's).
fn serial_config(saved: Option<SerialConfig>, req: &SnapshotLoad) -> Option<SerialConfig> {
    if req.serial.is_some() {
        return req.serial.clone();
    }
    let rate_limiter = saved?.rate_limiter?;
    Some(SerialConfig {
        serial_out_path: None,
        rate_limiter: Some(rate_limiter),
    })
}

/// How many threads hash memory (load runs before any seccomp filter).
fn hash_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// Guest RAM from the backend, checked against `digest` when the snapshot has one.
/// Returns the memory, what must stay open with it (the userfaultfd and its socket), and
/// the memory file (`File` backend: the hot-plug region's blocks are read from it).
fn guest_memory(
    req: &SnapshotLoad,
    state: &MicrovmState,
    res: &VmResources,
) -> Result<(vm_memory::GuestMemoryMmap, Vec<OwnedFd>, Option<File>), LoadError> {
    let size = state.memory_file_size();
    let huge = res.machine_config.huge_pages;
    let path = &req.backend.backend_path;
    let digest = state.memory.digest.as_ref();
    let mismatch = |found: &MemoryDigest, want: &MemoryDigest| {
        found
            .first_difference(want)
            .map(|i| i as u64 * crate::snapshot::digest::CHUNK)
    };
    match req.backend.backend_type {
        BackendType::File => {
            let bad = |reason: String| LoadError::MemoryFile {
                path: path.clone(),
                reason,
            };
            let file = kiln_hostfs::open_regular(Path::new(path), false)
                .map_err(|e| bad(format!("cannot open the memory file: {e}")))?;
            let len = file
                .metadata()
                .map_err(|e| bad(format!("cannot stat it: {e}")))?
                .len();
            if len != size {
                return Err(bad(format!(
                    "the memory file is {len} bytes, the snapshot's guest memory {size} bytes"
                )));
            }
            if let Some(want) = digest {
                let found = memory_file::digest_file(&file, path, size, hash_threads())?;
                if let Some(offset) = mismatch(&found, want) {
                    return Err(LoadError::MemoryMac {
                        path: path.clone(),
                        offset,
                    });
                }
            }
            let ram = memory::map_snapshot_file(&file, state.memory.size(), huge)?;
            Ok((ram, Vec::new(), Some(file)))
        }
        BackendType::Uffd => {
            if state.virtio_mem.is_some() {
                return Err(LoadError::UffdVirtioMem);
            }
            let mem = memory::create_guest_memory(size, huge)?;
            let (uffd, stream) = uffd::hand_over(&mem, Path::new(path))?;
            if let Some(want) = digest {
                let image = Image {
                    mem: &mem,
                    regions: &state.memory.regions,
                    holes: &[],
                };
                let found = memory_file::digest_guest(&image, hash_threads())?;
                if let Some(offset) = mismatch(&found, want) {
                    return Err(LoadError::UffdMac {
                        path: path.clone(),
                        offset,
                    });
                }
            }
            Ok((mem, vec![uffd.into(), stream.into()], None))
        }
    }
}

/// Restores the microVM of the snapshot `req` names, paused; `key` verifies it.
pub fn load_snapshot(
    req: &SnapshotLoad,
    opts: &BuildOptions,
    key: Option<&SnapshotKey>,
) -> Result<Loaded, LoadError> {
    let (state, authenticated) = read_state(&req.snapshot_path, key)?;
    if !authenticated {
        crate::log_warn!(
            "snapshot {:?} is not authenticated: its contents are trusted input (start the VMM with --snapshot-key-file to load only snapshots made with a key)",
            req.snapshot_path
        );
    }
    let config = state.parse_config()?;
    state.check(&config)?;
    state.check_transport(opts.pci)?;
    let res = resources(config, req)?;
    let vsock_path = res.vsock.as_ref().map(|v| v.uds_path.clone());
    let result = restore(req, opts, state, &res);
    if result.is_err() {
        // The socket a failed restore bound must not stop a retry.
        if let Some(p) = vsock_path {
            let _ = std::fs::remove_file(p);
        }
    }
    let (vmm, events) = result?;
    Ok(Loaded {
        vmm,
        events,
        resources: res,
        authenticated,
    })
}

fn restore(
    req: &SnapshotLoad,
    opts: &BuildOptions,
    state: MicrovmState,
    res: &VmResources,
) -> Result<(Vmm, EventLoop<Vmm>), LoadError> {
    let mc = &res.machine_config;
    let (ram, held, file) = guest_memory(req, &state, res)?;
    // The hot-plug region (fresh, unbacked), its plugged blocks from the memory file.
    let mem = builder::with_hotplug_region(ram.clone(), res)?;
    if let (Some(saved), Some(file)) = (&state.virtio_mem, &file) {
        fill_plugged(
            &mem,
            file,
            &req.backend.backend_path,
            state.memory.size(),
            saved,
        )?;
    }
    signals::install_kick_handler().map_err(BuildError::from)?;
    let serial_out = builder::serial_output(opts, res.serial.as_ref())?;
    let exits = Arc::new(ExitNotifier::new().map_err(BuildError::ExitEventFd)?);
    // KVM gets the RAM; the hot-plug region's slots are its device's.
    let mut vm = Vm::new(mc.vcpu_count, &ram, mc.track_dirty_pages, mc.pit, &|_| {})?;
    builder::track_vmm_writes(mc.track_dirty_pages, state.memory.size());
    // With a custom CPU template, the CPUID this host gives the template.
    let supported = vm.supported_cpuid()?;
    let base_cpuid = builder::templated_cpuid(&mut vm, &supported, res)?;
    let caps = vm.snapshot_caps();
    if !caps.xsave_fits() {
        return Err(LoadError::Xsave(caps.xsave_size));
    }
    let topology = Topology {
        vcpu_count: mc.vcpu_count,
        smt: mc.smt,
    };
    let mut vcpus = Vec::with_capacity(state.vcpus.len());
    for saved in &state.vcpus {
        let v = Vcpu::new(&vm, saved.index)?;
        saved.check_cpuid(&host_cpuid(&base_cpuid, &v, topology, mc.cpu_template)?)?;
        match_tsc(&v, saved.tsc_khz, caps.tsc_control)?;
        saved.restore(&v.fd)?;
        vcpus.push(v);
    }
    state.vm.restore(vm.fd(), req.clock_realtime)?;
    let mut dm = DeviceManager::new();
    // The snapshot's transport (checked against --enable-pci): the restored guest finds its
    // devices where it left them.
    let transport = if state.pci.is_some() {
        Transport::Pci
    } else {
        Transport::Mmio
    };
    let mut virtio = builder::attach_virtio(&mut dm, &mem, res, transport)?;
    // A restored microVM's devices are set up already: nothing to coalesce.
    virtio.wire(&vm, false).map_err(BuildError::from)?;
    builder::attach_legacy(&mut dm, &vm, serial_out, &exits)?;
    let (mut vmm, events) = builder::start(Parts {
        vm,
        mem,
        dm,
        virtio,
        vcpus,
        exits,
        strict_io: opts.strict_io,
        paused: true,
        coalesced: None,
        parked: Vec::new(),
    })?;
    vmm.hold(held);
    restore_devices(&vmm, &state, req)?;
    vmm.set_memory_digest(state.memory.digest);
    Ok((vmm, events))
}

/// The CPUID this host's KVM reports for vCPU `v` configured as a boot would configure it
/// (from `base`: KVM's supported CPUID, or a custom template's result): what the snapshot's
/// vCPU state (read back from KVM the same way) is compared with. Read back rather than
/// computed: some hosts' KVM reports bits other than those set (the instruction emulator's,
/// see docs/vmm.md), and the saved CPUID was read back too.
fn host_cpuid(
    base: &CpuId,
    v: &Vcpu,
    topology: Topology,
    template: CpuTemplate,
) -> Result<Vec<kvm_cpuid_entry2>, LoadError> {
    let index = v.index;
    let cpuid = cpuid::vcpu_cpuid(base, index, topology, template)
        .map_err(|source| VcpuError::Cpuid { index, source })?;
    let err = |source| VcpuError::Cpuid {
        index,
        source: CpuidError::Set { index, source },
    };
    v.fd.set_cpuid2(&cpuid).map_err(err)?;
    let back = v.fd.get_cpuid2(KVM_MAX_CPUID_ENTRIES).map_err(err)?;
    Ok(back.as_slice().to_vec())
}

/// Every device's saved state into the restored (paused) microVM's devices. The serial
/// output's bucket gets the snapshot's tokens unless the loading VMM's `PUT /serial` gave
/// the output its own configuration.
fn restore_devices(vmm: &Vmm, state: &MicrovmState, req: &SnapshotLoad) -> Result<(), LoadError> {
    let d = vmm.devices();
    if let (Some(s), Some(saved)) = (&d.serial, &state.serial) {
        let bucket = saved.bucket.as_ref().filter(|_| req.serial.is_none());
        lock(s).restore_state(saved, bucket)?;
    }
    if let (Some(k), Some(saved)) = (&d.i8042, &state.i8042) {
        lock(k).restore_state(saved);
    }
    // Before its transport, which compares the configuration space (plugged, usable and
    // requested sizes) with the snapshot's.
    if let (Some(m), Some(saved)) = (&d.virtio.mem, &state.virtio_mem) {
        lock(m).restore_state(saved)?;
    }
    match (&d.virtio.pci, &state.pci) {
        (Some(bus), Some(saved)) => restore_bus(bus, saved, &state.virtio)?,
        (None, None) => {
            for (t, saved) in d.virtio.transports.iter().zip(&state.virtio) {
                lock(t).restore_state(saved)?;
            }
        }
        // `check_transport` refused the snapshot before anything was built.
        _ => {
            return Err(StateError::Transport {
                saved: state.pci.is_some(),
            }
            .into())
        }
    }
    if let Some(v) = &d.virtio.vsock {
        lock(v).send_transport_reset();
    }
    Ok(())
}

/// Copies the plugged blocks of the snapshot's hot-plug region (in the memory file after
/// the `ram` bytes of RAM) into the fresh region of `mem`; unplugged blocks are not touched.
fn fill_plugged(
    mem: &vm_memory::GuestMemoryMmap,
    file: &File,
    path: &str,
    ram: u64,
    saved: &VirtioMemState,
) -> Result<(), LoadError> {
    let ranges: Vec<(u64, u64, u64)> = saved
        .runs(true)
        .into_iter()
        .map(|(first, n)| {
            let at = first * saved.block;
            (ram + at, saved.addr + at, n * saved.block)
        })
        .collect();
    Ok(memory_file::fill_guest(file, path, mem, &ranges)?)
}

/// Runs the new vCPU's TSC at the snapshot's frequency: the same within tolerance, or
/// scaled when KVM can.
fn match_tsc(v: &Vcpu, saved: Option<u32>, tsc_control: bool) -> Result<(), LoadError> {
    let (Some(saved), Ok(here)) = (saved, v.fd.get_tsc_khz()) else {
        return Ok(());
    };
    let diff = u64::from(saved.abs_diff(here));
    if diff * 1_000_000 <= u64::from(saved) * TSC_TOLERANCE_PPM {
        return Ok(());
    }
    if !tsc_control {
        return Err(LoadError::Tsc { saved, here });
    }
    v.fd.set_tsc_khz(saved).map_err(|source| LoadError::SetTsc {
        index: v.index,
        khz: saved,
        source,
    })
}
