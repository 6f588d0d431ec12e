//! The microVM's configuration as typed resources, shared by the config file and the API.
//!
//! Both entry points apply their input through the same setters of [`VmResources`], so a
//! value that the API refuses is refused from `--config-file` with the same message. The
//! JSON shapes are Firecracker's, as its API spec has them: every section and field of the
//! spec is parsed (explicit `null` for an optional field means absent, an empty list asks
//! for nothing); one for a feature Kiln does not have yet is refused naming the feature
//! ([`spec`]); fields in no version of the spec are rejected with the field's name. Files
//! the configuration names are opened or checked when it is accepted ([`host_file`]).
//! Kiln adds one section, `serial` (the body of Firecracker's `PUT /serial`, which its
//! config file has no section for).

mod balloon;
mod boot_source;
mod cpu_config;
mod drive;
mod entropy;
mod host_file;
mod logger;
mod machine_config;
mod memory_hotplug;
mod mmds;
mod net;
mod pmem;
mod rate_limiter;
mod serial;
mod snapshot;
pub mod spec;
mod vsock;

#[cfg(test)]
mod machine_config_tests;
#[cfg(test)]
mod pmem_tests;
#[cfg(test)]
mod tests;

pub use balloon::{BalloonConfig, BalloonStatsUpdate, BalloonUpdate, HintingStart};
pub use boot_source::BootSourceConfig;
pub use cpu_config::{
    Bitmap, CpuConfig, CpuConfigSource, CpuidLeafModifier, CpuidRegister, CpuidRegisterModifier,
    KvmCapability, MsrModifier,
};
pub use drive::{CacheType, DriveConfig, DriveUpdate, IoEngine};
pub use entropy::EntropyConfig;
pub use host_file::Opened;
pub use logger::{LogLevel, LoggerConfig, MetricsConfig};
pub use machine_config::{CpuTemplate, HugePages, MachineConfig, MachineConfigUpdate};
pub use memory_hotplug::{
    MemoryHotplugConfig, MemoryHotplugSizeUpdate, MIN_BLOCK_SIZE_MIB, MIN_SLOT_SIZE_MIB,
};
pub use mmds::{MmdsConfig, DEFAULT_MMDS_ADDRESS};
pub use net::{MacAddr, NetworkInterfaceConfig, NetworkInterfaceUpdate};
pub use pmem::{PmemConfig, PmemUpdate};
pub use rate_limiter::{RateLimiterConfig, TokenBucketConfig};
pub use serial::SerialConfig;
pub use snapshot::{
    BackendType, LoadHugePages, MemBackend, NetworkOverride, SnapshotCreate, SnapshotCreateParams,
    SnapshotLoad, SnapshotLoadParams, SnapshotType, VsockOverride,
};
pub use vsock::VsockConfig;

use serde::{Deserialize, Serialize};
use spec::null_as_default;

/// The microVM's id when `--id` is not given (Firecracker's).
pub const DEFAULT_INSTANCE_ID: &str = "anonymous-instance";

/// Why a resource was refused. The message names the field and the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResourceError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("{field}: {path:?} cannot be used: {reason}")]
    BadPath {
        field: &'static str,
        path: String,
        reason: String,
    },
    /// A file the configuration names could not be opened (`what` says which one:
    /// "boot-source: the kernel file").
    #[error("{what} {path:?} cannot be opened: {reason}")]
    Open {
        what: &'static str,
        path: String,
        reason: String,
    },
    /// A section or field of Firecracker's spec for a feature Kiln does not have yet.
    #[error("{section}: {feature} is not supported by Kiln yet")]
    NotYet {
        section: &'static str,
        feature: &'static str,
    },
    #[error("machine-config: vcpu_count {0} is out of range (1 to {max})", max = machine_config::MAX_VCPUS)]
    VcpuCount(u64),
    #[error("machine-config: vcpu_count {0} must be 1 or even when smt is true")]
    SmtVcpuCount(u64),
    #[error(
        "machine-config: mem_size_mib {0} is out of range ({min} to {max})",
        min = machine_config::MIN_MEM_MIB,
        max = machine_config::MAX_MEM_MIB
    )]
    MemSize(u64),
    #[error("machine-config: mem_size_mib {0} must be a multiple of 2 with huge_pages \"2M\" (2 MiB pages)")]
    HugePagesMemSize(u64),
    #[error("{kind} id {id:?} is invalid: use 1 to 64 characters from [A-Za-z0-9_-]")]
    BadId { kind: &'static str, id: String },
    #[error("{kind} id in the path ({path_id:?}) differs from the id in the body ({body_id:?})")]
    IdMismatch {
        kind: &'static str,
        path_id: String,
        body_id: String,
    },
    #[error("drives: {existing:?} is already the root device; only one drive can have is_root_device true")]
    SecondRootDevice { existing: String },
    /// A root device is asked for while the other kind (drive or pmem device) has one.
    #[error("{section}: {existing} is already the root device; only one drive or pmem device can be the root device")]
    RootElsewhere {
        section: &'static str,
        existing: String,
    },
    #[error("pmem: {existing:?} is already the root device; only one pmem device can have root_device true")]
    SecondRootPmem { existing: String },
    #[error("pmem: no device with id {0:?}")]
    UnknownPmem(String),
    #[error("pmem: the backing file {0:?} is empty (a pmem device maps at least one byte)")]
    EmptyPmemFile(String),
    #[error("drives: no drive with drive_id {0:?}")]
    UnknownDrive(String),
    #[error("drives: drive {0:?} has no path_on_host (Kiln's drives are backed by a file)")]
    MissingDrivePath(String),
    #[error("network-interfaces: no interface with iface_id {0:?}")]
    UnknownInterface(String),
    #[error("network-interfaces: {field} {value:?} is already used by interface {other:?}")]
    DuplicateNet {
        field: &'static str,
        value: String,
        other: String,
    },
    #[error("network-interfaces: guest_mac {0:?} is not a MAC address (expected six hex pairs separated by ':')")]
    BadMac(String),
    #[error("network-interfaces: host_dev_name {0:?} is invalid: use 1 to 15 characters, no '/', no whitespace")]
    BadTapName(String),
    #[error("vsock: guest_cid {0} is invalid: CIDs 0, 1 and 2 are reserved, use 3 or more")]
    BadCid(u32),
    #[error("boot-source is missing: the microVM has no kernel to boot")]
    MissingBootSource,
    #[error("{field}: refill_time {value} ms is too long (at most {max} ms)", max = rate_limiter::MAX_REFILL_TIME_MS)]
    RefillTime { field: String, value: u64 },
    #[error("network-interfaces: mtu {0} is out of range (68 to 65535)")]
    Mtu(u64),
    #[error("cpu-config: {0} are for aarch64 hosts; this is an x86_64 host (leave the list out or empty)")]
    CpuConfigArch(&'static str),
    #[error("cpu-config: {count} {field}, at most {max} are accepted")]
    CpuConfigLimit {
        field: &'static str,
        count: usize,
        max: usize,
    },
    #[error("cpu-config: the template file {path:?} is invalid: {reason}")]
    CpuConfigFile { path: String, reason: String },
    #[error("snapshot/load: {0}")]
    SnapshotLoad(String),
    #[error("mmds-config: ipv4_address {0} is not a usable link-local address (169.254.1.0 to 169.254.254.255)")]
    MmdsAddress(std::net::Ipv4Addr),
    #[error("mmds-config: network_interfaces is empty; name at least one interface to answer MMDS requests on")]
    MmdsNoInterfaces,
    #[error("mmds-config: network interface {0:?} is not configured (PUT /network-interfaces/{{id}} first)")]
    MmdsUnknownInterface(String),
    #[error("balloon: amount_mib {amount_mib} is more than the guest's memory (mem_size_mib {mem_size_mib})")]
    BalloonTooLarge { amount_mib: u32, mem_size_mib: u64 },
    /// A limit of the hot-plug region (the reason names the field and the limit).
    #[error("memory-hotplug: {0}")]
    MemoryHotplug(String),
}

/// The config file's top level, in Firecracker's shape (its spec's `FullVmConfiguration`).
/// Also the body of `GET /vm/config`, which writes every section, `null` or `[]` when
/// unset, as Firecracker does.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    #[serde(rename = "boot-source", default)]
    pub boot_source: Option<BootSourceConfig>,
    #[serde(rename = "machine-config", default)]
    pub machine_config: Option<MachineConfig>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub drives: Vec<DriveConfig>,
    #[serde(
        rename = "network-interfaces",
        default,
        deserialize_with = "null_as_default"
    )]
    pub network_interfaces: Vec<NetworkInterfaceConfig>,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    #[serde(default)]
    pub logger: Option<LoggerConfig>,
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    #[serde(rename = "cpu-config", default)]
    pub cpu_config: Option<CpuConfigSource>,
    #[serde(default)]
    pub entropy: Option<EntropyConfig>,
    /// Kiln's addition: the body of Firecracker's `PUT /serial` (Firecracker's config file
    /// has no such section). Written by `GET /vm/config` only when set, so that the output
    /// of a microVM that does not use it stays a configuration Firecracker reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialConfig>,
    #[serde(default)]
    pub balloon: Option<BalloonConfig>,
    #[serde(rename = "mmds-config", default)]
    pub mmds_config: Option<MmdsConfig>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub pmem: Vec<PmemConfig>,
    #[serde(rename = "memory-hotplug", default)]
    pub memory_hotplug: Option<MemoryHotplugConfig>,
}

/// Everything known about the microVM to be built, accumulated from the config file or from
/// API requests before `InstanceStart`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmResources {
    pub boot_source: Option<BootSourceConfig>,
    pub machine_config: MachineConfig,
    pub drives: Vec<DriveConfig>,
    pub network_interfaces: Vec<NetworkInterfaceConfig>,
    pub vsock: Option<VsockConfig>,
    pub logger: Option<LoggerConfig>,
    pub metrics: Option<MetricsConfig>,
    /// A custom CPU template (`PUT /cpu-config`); it replaces `machine_config.cpu_template`.
    pub cpu_config: Option<CpuConfig>,
    pub entropy: Option<EntropyConfig>,
    pub serial: Option<SerialConfig>,
    /// `PUT /mmds/config` (the data store itself is not a resource: [`crate::mmds`]).
    pub mmds_config: Option<MmdsConfig>,
    /// The balloon as configured; `PATCH /balloon` and `PATCH /balloon/statistics` keep
    /// its target and interval current.
    pub balloon: Option<BalloonConfig>,
    /// `PUT /hotplug/memory`: the virtio-mem device's region.
    pub memory_hotplug: Option<MemoryHotplugConfig>,
    /// virtio-pmem devices, in the order they were first configured (`/dev/pmem0`, ...);
    /// `PATCH /pmem/{id}` keeps their rate limiters current.
    pub pmem: Vec<PmemConfig>,
}

impl VmResources {
    /// Parses a config file's text and applies every section through the same setters the
    /// API uses. A config without `boot-source` is refused: it could not boot.
    pub fn from_json(text: &str) -> Result<Self, ResourceError> {
        let file: VmConfig = parse_json(text)?;
        let mut res = VmResources::default();
        if let Some(mc) = file.machine_config {
            res.set_machine_config(mc)?;
        }
        if let Some(cpu) = file.cpu_config {
            res.set_cpu_config(cpu.load()?)?;
        }
        res.set_boot_source(file.boot_source.ok_or(ResourceError::MissingBootSource)?)?;
        for d in file.drives {
            res.put_drive(None, d)?;
        }
        for n in file.network_interfaces {
            res.put_network_interface(None, n)?;
        }
        for p in file.pmem {
            res.put_pmem(None, p)?;
        }
        if let Some(v) = file.vsock {
            res.set_vsock(v)?;
        }
        if let Some(e) = file.entropy {
            res.set_entropy(e)?;
        }
        if let Some(s) = file.serial {
            res.set_serial(s)?;
        }
        if let Some(m) = file.mmds_config {
            res.set_mmds_config(m)?;
        }
        if let Some(b) = file.balloon {
            res.set_balloon(b)?;
        }
        if let Some(m) = file.memory_hotplug {
            res.set_memory_hotplug(m)?;
        }
        res.logger = file.logger.map(LoggerConfig::validated).transpose()?;
        res.metrics = file.metrics.map(MetricsConfig::validated).transpose()?;
        Ok(res)
    }

    /// The current configuration in the config file's shape (`GET /vm/config`).
    pub fn to_config(&self) -> VmConfig {
        VmConfig {
            boot_source: self.boot_source.clone(),
            machine_config: Some(self.machine_config.clone()),
            drives: self.drives.clone(),
            network_interfaces: self.network_interfaces.clone(),
            vsock: self.vsock.clone(),
            logger: self.logger.clone(),
            metrics: self.metrics.clone(),
            cpu_config: self.cpu_config.clone().map(CpuConfigSource::Template),
            entropy: self.entropy,
            serial: self.serial.clone(),
            mmds_config: self.mmds_config.clone(),
            balloon: self.balloon,
            memory_hotplug: self.memory_hotplug,
            pmem: self.pmem.clone(),
        }
    }

    pub fn set_boot_source(&mut self, cfg: BootSourceConfig) -> Result<(), ResourceError> {
        self.boot_source = Some(cfg.validated()?);
        Ok(())
    }

    /// `PUT /machine-config`: replaces the whole machine configuration. A static CPU
    /// template replaces a custom one (Firecracker keeps one template).
    pub fn set_machine_config(&mut self, cfg: MachineConfig) -> Result<(), ResourceError> {
        self.machine_config = cfg.validated()?;
        if self.machine_config.cpu_template != CpuTemplate::None {
            self.cpu_config = None;
        }
        Ok(())
    }

    /// `PATCH /machine-config`: changes only the fields given. A `cpu_template` given
    /// (`"None"` too) replaces a custom CPU template.
    pub fn update_machine_config(&mut self, upd: MachineConfigUpdate) -> Result<(), ResourceError> {
        let template_given = upd.cpu_template.is_some();
        self.machine_config = self.machine_config.clone().apply(upd).validated()?;
        if template_given {
            self.cpu_config = None;
        }
        Ok(())
    }

    /// `PUT /cpu-config`: a custom CPU template, replacing the static one
    /// (`machine_config.cpu_template` becomes `None`), as in Firecracker.
    pub fn set_cpu_config(&mut self, cfg: CpuConfig) -> Result<(), ResourceError> {
        self.cpu_config = Some(cfg.validated()?);
        self.machine_config.cpu_template = CpuTemplate::None;
        Ok(())
    }

    /// `PUT /entropy`: the virtio-rng device (a second `PUT` replaces the first).
    pub fn set_entropy(&mut self, cfg: EntropyConfig) -> Result<(), ResourceError> {
        self.entropy = Some(cfg.validated()?);
        Ok(())
    }

    /// `PUT /balloon`: the balloon device (a second `PUT` replaces the first). Its target
    /// must fit the guest's memory as configured now.
    pub fn set_balloon(&mut self, cfg: BalloonConfig) -> Result<(), ResourceError> {
        self.balloon = Some(cfg.validated(self.machine_config.mem_size_mib)?);
        Ok(())
    }

    /// `PUT /hotplug/memory`: the virtio-mem device's region (a second `PUT` replaces the
    /// first).
    pub fn set_memory_hotplug(&mut self, cfg: MemoryHotplugConfig) -> Result<(), ResourceError> {
        self.memory_hotplug = Some(cfg.validated()?);
        Ok(())
    }

    /// `PUT /serial`: the serial output's destination and bucket.
    pub fn set_serial(&mut self, cfg: SerialConfig) -> Result<(), ResourceError> {
        self.serial = Some(cfg.validated()?);
        Ok(())
    }

    /// `PUT /mmds/config`: the interfaces it names must be configured already.
    pub fn set_mmds_config(&mut self, cfg: MmdsConfig) -> Result<(), ResourceError> {
        self.mmds_config = Some(cfg.validated(&self.network_interfaces)?);
        Ok(())
    }

    /// `PUT /drives/{id}` (and a config file's `drives` entry): adds or replaces a drive.
    pub fn put_drive(
        &mut self,
        path_id: Option<&str>,
        cfg: DriveConfig,
    ) -> Result<(), ResourceError> {
        let cfg = cfg.validated(path_id)?;
        if cfg.is_root_device {
            if let Some(root) = self.pmem.iter().find(|p| p.root_device) {
                return Err(ResourceError::RootElsewhere {
                    section: "drives",
                    existing: format!("pmem device {:?}", root.id),
                });
            }
            if let Some(root) = self
                .drives
                .iter()
                .find(|d| d.is_root_device && d.drive_id != cfg.drive_id)
            {
                return Err(ResourceError::SecondRootDevice {
                    existing: root.drive_id.clone(),
                });
            }
        }
        match self.drives.iter_mut().find(|d| d.drive_id == cfg.drive_id) {
            Some(slot) => *slot = cfg,
            None => self.drives.push(cfg),
        }
        // The root device is the first virtio-blk device, so the guest sees it as /dev/vda.
        self.drives.sort_by_key(|d| !d.is_root_device);
        Ok(())
    }

    /// `PUT /pmem/{id}` (and a config file's `pmem` entry): adds a virtio-pmem device, or
    /// replaces the one with the same id in its place.
    pub fn put_pmem(
        &mut self,
        path_id: Option<&str>,
        cfg: PmemConfig,
    ) -> Result<(), ResourceError> {
        let cfg = cfg.validated(path_id)?;
        if cfg.root_device {
            if let Some(root) = self.drives.iter().find(|d| d.is_root_device) {
                return Err(ResourceError::RootElsewhere {
                    section: "pmem",
                    existing: format!("drive {:?}", root.drive_id),
                });
            }
            if let Some(root) = self.pmem.iter().find(|p| p.root_device && p.id != cfg.id) {
                return Err(ResourceError::SecondRootPmem {
                    existing: root.id.clone(),
                });
            }
        }
        match self.pmem.iter_mut().find(|p| p.id == cfg.id) {
            Some(slot) => *slot = cfg,
            None => self.pmem.push(cfg),
        }
        Ok(())
    }

    /// `PUT /network-interfaces/{id}`: adds or replaces an interface.
    pub fn put_network_interface(
        &mut self,
        path_id: Option<&str>,
        cfg: NetworkInterfaceConfig,
    ) -> Result<(), ResourceError> {
        let cfg = cfg.validated(path_id)?;
        for other in self
            .network_interfaces
            .iter()
            .filter(|n| n.iface_id != cfg.iface_id)
        {
            if other.host_dev_name == cfg.host_dev_name {
                return Err(ResourceError::DuplicateNet {
                    field: "host_dev_name",
                    value: cfg.host_dev_name.clone(),
                    other: other.iface_id.clone(),
                });
            }
            if cfg.guest_mac.is_some() && other.guest_mac == cfg.guest_mac {
                return Err(ResourceError::DuplicateNet {
                    field: "guest_mac",
                    value: cfg.guest_mac.map(|m| m.to_string()).unwrap_or_default(),
                    other: other.iface_id.clone(),
                });
            }
        }
        match self
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == cfg.iface_id)
        {
            Some(slot) => *slot = cfg,
            None => self.network_interfaces.push(cfg),
        }
        Ok(())
    }

    pub fn set_vsock(&mut self, cfg: VsockConfig) -> Result<(), ResourceError> {
        self.vsock = Some(cfg.validated()?);
        Ok(())
    }
}

/// Deserialises a JSON body or file, turning serde's message (which names unknown fields,
/// missing fields and wrong types) into a [`ResourceError`].
pub fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ResourceError> {
    serde_json::from_str(text).map_err(|e| ResourceError::Json(e.to_string()))
}

/// Ids of drives and interfaces: 1 to 64 characters from `[A-Za-z0-9_-]` (they appear in
/// URLs, metrics and logs).
fn check_id(kind: &'static str, id: &str, path_id: Option<&str>) -> Result<(), ResourceError> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        return Err(ResourceError::BadId {
            kind,
            id: id.to_string(),
        });
    }
    match path_id {
        Some(p) if p != id => Err(ResourceError::IdMismatch {
            kind,
            path_id: p.to_string(),
            body_id: id.to_string(),
        }),
        _ => Ok(()),
    }
}
