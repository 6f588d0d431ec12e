//! `PUT /snapshot/create`: a paused microVM into a state file and a memory file.
//!
//! Runs on the VMM thread, in the run loop (under its seccomp filter): each vCPU thread
//! reads its own state, the VM's irqchip, PIT and clock are read, then every device's (on
//! PCI, with the bus's configuration spaces and MSI-X tables);
//! then the memory file is written (full or diff, with its digests when there is a key:
//! the RAM, then with virtio-mem the hot-plug region, its unplugged blocks left holes)
//! and last the state file, sealed with the key's MAC (or a checksum). The microVM stays
//! paused and may be resumed or snapshotted again.

use super::memory_file::{self, Image, MemoryFileError};
use super::state::{MemoryState, MicrovmState};
use crate::arch::x86_64::layout::ram_ranges;
use crate::devices::virtio::mmio::persist::TransportStateError;
use crate::devices::virtio::pci::persist::save_bus;
use crate::resources::{SnapshotCreate, SnapshotType, VmConfig, VmResources};
use crate::snapshot::digest::{CHUNK, MAX_CHUNKS};
use crate::snapshot::{format, Encoder, SnapshotKey};
use crate::sync::lock;
use crate::vmm::{VmState as RunState, Vmm, VmmError};
use crate::vstate::dirty;
use crate::vstate::vm_state::{take_dirty_log, VmState, VmStateError};
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("the microVM must be paused first (PATCH /vm with {{\"state\": \"Paused\"}})")]
    NotPaused,
    #[error("snapshot_type Diff needs dirty-page tracking: set track_dirty_pages in machine-config (or in the snapshot/load that restored this microVM)")]
    NoDirtyTracking,
    #[error("this host's vCPU XSAVE state is {0} bytes (AMX?), more than the 4096 Kiln saves: snapshots are not supported on it yet")]
    Xsave(usize),
    #[error("snapshot_type Diff: this microVM has a virtio-mem device (memory-hotplug), whose plugged memory Kiln does not track for diffs yet: take a Full snapshot")]
    VirtioMemDiff,
    #[error("an authenticated snapshot hashes at most {max} bytes of memory, and this microVM's RAM and memory hot-plug region are {size} bytes")]
    DigestTooLarge { size: u64, max: u64 },
    #[error("saving the vCPUs: {0}")]
    Vcpus(#[from] VmmError),
    #[error("saving the VM: {0}")]
    Vm(#[from] VmStateError),
    #[error(transparent)]
    Device(#[from] TransportStateError),
    #[error(transparent)]
    Memory(#[from] MemoryFileError),
    #[error("{field} {path:?}: cannot open it for writing: {source}")]
    Open {
        field: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("snapshot_path {path:?}: writing the state: {source}")]
    WriteState {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot encode the configuration: {0}")]
    Config(String),
}

/// What a snapshot creation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub snapshot_type: SnapshotType,
    /// Bytes of the state file.
    pub state_bytes: usize,
    /// Pages a diff wrote (`None` for a full snapshot).
    pub diff_pages: Option<u64>,
    pub authenticated: bool,
    pub took: Duration,
}

fn open_for_writing(field: &'static str, path: &str, truncate: bool) -> Result<File, CreateError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(truncate)
        .mode(0o600)
        .open(path)
        .map_err(|source| CreateError::Open {
            field,
            path: path.to_string(),
            source,
        })
}

/// The configuration a snapshot keeps: what rebuilds the microVM's devices (not the
/// logger and metrics, which belong to the VMM process, as in Firecracker).
fn saved_config(res: &VmResources) -> Result<String, CreateError> {
    let c = VmConfig {
        logger: None,
        metrics: None,
        ..res.to_config()
    };
    serde_json::to_string(&c).map_err(|e| CreateError::Config(e.to_string()))
}

/// Snapshots the paused `vmm` (configured by `res`) as `req` says, with `key`'s MAC.
pub fn create_snapshot(
    vmm: &mut Vmm,
    res: &VmResources,
    req: &SnapshotCreate,
    key: Option<&SnapshotKey>,
) -> Result<Created, CreateError> {
    let began = Instant::now();
    if vmm.state() != RunState::Paused {
        return Err(CreateError::NotPaused);
    }
    if req.snapshot_type == SnapshotType::Diff && vmm.devices().virtio.mem.is_some() {
        return Err(CreateError::VirtioMemDiff);
    }
    let caps = vmm.vm().snapshot_caps().clone();
    if req.snapshot_type == SnapshotType::Diff && !caps.track_dirty_pages {
        return Err(CreateError::NoDirtyTracking);
    }
    if !caps.xsave_fits() {
        return Err(CreateError::Xsave(caps.xsave_size));
    }
    let config = saved_config(res)?;
    let vcpus = vmm.save_vcpu_states()?;
    let vm = VmState::save(vmm.vm().fd(), vmm.vm().has_pit())?;
    let devices = vmm.devices();
    let serial = devices.serial.as_ref().map(|s| lock(s).save_state());
    let i8042 = devices.i8042.as_ref().map(|k| lock(k).save_state());
    let (virtio, pci) = match &devices.virtio.pci {
        Some(bus) => {
            let (pci, virtio) = save_bus(bus)?;
            (virtio, Some(pci))
        }
        None => {
            let virtio = devices
                .virtio
                .transports
                .iter()
                .map(|t| lock(t).save_state())
                .collect::<Result<Vec<_>, _>>()?;
            (virtio, None)
        }
    };

    let virtio_mem = devices.virtio.mem.as_ref().map(|m| lock(m).save_state());

    let mem_size = res.machine_config.mem_size_bytes();
    let regions = ram_ranges(mem_size);
    // The image: the RAM, then the hot-plug region with its unplugged blocks as holes.
    let mut image_regions = regions.clone();
    let mut holes = Vec::new();
    if let Some(m) = &virtio_mem {
        image_regions.push((m.addr, m.total));
        holes = m
            .runs(false)
            .into_iter()
            .map(|(first, n)| (mem_size + first * m.block, n * m.block))
            .collect();
    }
    let image = Image {
        mem: vmm.guest_memory(),
        regions: &image_regions,
        holes: &holes,
    };
    let max = MAX_CHUNKS as u64 * CHUNK;
    if key.is_some() && image.size() > max {
        return Err(CreateError::DigestTooLarge {
            size: image.size(),
            max,
        });
    }
    // Both logs are read (and so cleared) by every snapshot: the next diff has the pages
    // written after this one.
    let dirty = if caps.track_dirty_pages {
        let mut kvm = take_dirty_log(vmm.vm().fd(), &regions)?;
        for (k, v) in kvm.iter_mut().zip(dirty::take()) {
            for (a, b) in k.iter_mut().zip(v) {
                *a |= b;
            }
        }
        Some(kvm)
    } else {
        None
    };
    let mem_file = open_for_writing(
        "mem_file_path",
        &req.mem_file_path,
        req.snapshot_type == SnapshotType::Full,
    )?;
    let (digest, diff_pages) = match (req.snapshot_type, &dirty) {
        (SnapshotType::Diff, Some(dirty)) => {
            let mut digest = match (key, vmm.memory_digest()) {
                (None, _) => None,
                (Some(_), Some(d)) => Some(d.clone()),
                // No earlier authenticated snapshot: the whole image's digests.
                (Some(_), None) => Some(memory_file::digest_guest(&image, 1)?),
            };
            let pages = memory_file::write_diff(
                &image,
                &mem_file,
                &req.mem_file_path,
                dirty,
                digest.as_mut(),
            )?;
            (digest, Some(pages))
        }
        _ => (
            memory_file::write_full(&image, &mem_file, &req.mem_file_path, key.is_some())?,
            None,
        ),
    };
    drop(mem_file);
    let state = MicrovmState {
        config,
        memory: MemoryState {
            regions,
            digest: digest.clone(),
        },
        vm,
        vcpus,
        serial,
        i8042,
        virtio,
        pci,
        virtio_mem,
    };
    let mut e = Encoder::new();
    e.put(&state);
    let sealed = format::seal(&e.into_bytes(), key);
    let state_file = open_for_writing("snapshot_path", &req.snapshot_path, true)?;
    std::io::Write::write_all(&mut &state_file, &sealed).map_err(|source| {
        CreateError::WriteState {
            path: req.snapshot_path.clone(),
            source,
        }
    })?;
    vmm.set_memory_digest(digest);
    Ok(Created {
        snapshot_type: req.snapshot_type,
        state_bytes: sealed.len(),
        diff_pages,
        authenticated: key.is_some(),
        took: began.elapsed(),
    })
}
