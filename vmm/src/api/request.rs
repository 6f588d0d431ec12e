//! What crosses from the API thread to the VMM thread and back: a routed request
//! ([`ApiRequest`], its body parsed into the shared resource types) and its answer
//! ([`ApiReply`]: data, or the API layer's [`RequestError`]).

use crate::resources::{
    BalloonConfig, BalloonStatsUpdate, BalloonUpdate, BootSourceConfig, CpuConfig, DriveConfig,
    DriveUpdate, EntropyConfig, HintingStart, LoggerConfig, MachineConfig, MachineConfigUpdate,
    MemoryHotplugConfig, MemoryHotplugSizeUpdate, MetricsConfig, MmdsConfig,
    NetworkInterfaceConfig, NetworkInterfaceUpdate, PmemConfig, PmemUpdate, SerialConfig,
    SnapshotCreateParams, SnapshotLoadParams, VsockConfig,
};

/// `PUT /actions` `action_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum Action {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
}

/// `PATCH /vm` `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum VmStateChange {
    Paused,
    Resumed,
}

/// A request for the VMM thread, with its body parsed into the shared resource types (not
/// yet validated: the resource setters do that, as for the config file).
#[derive(Debug, Clone, PartialEq)]
pub enum ApiRequest {
    GetInstanceInfo,
    GetVersion,
    GetMachineConfig,
    GetVmConfig,
    PutMachineConfig(MachineConfig),
    PatchMachineConfig(MachineConfigUpdate),
    PutBootSource(BootSourceConfig),
    PutDrive {
        path_id: String,
        config: DriveConfig,
    },
    PatchDrive {
        path_id: String,
        update: DriveUpdate,
    },
    PutNetworkInterface {
        path_id: String,
        config: NetworkInterfaceConfig,
    },
    PatchNetworkInterface {
        path_id: String,
        update: NetworkInterfaceUpdate,
    },
    PutPmem {
        path_id: String,
        config: PmemConfig,
    },
    PatchPmem {
        path_id: String,
        update: PmemUpdate,
    },
    PutVsock(VsockConfig),
    PutEntropy(EntropyConfig),
    PutSerial(SerialConfig),
    PutCpuConfig(CpuConfig),
    PutLogger(LoggerConfig),
    PutMetrics(MetricsConfig),
    Action(Action),
    PatchVm(VmStateChange),
    PutSnapshotCreate(SnapshotCreateParams),
    PutSnapshotLoad(SnapshotLoadParams),
    GetMmds,
    PutMmds(serde_json::Value),
    PatchMmds(serde_json::Value),
    PutMmdsConfig(MmdsConfig),
    GetBalloon,
    PutBalloon(BalloonConfig),
    PatchBalloon(BalloonUpdate),
    GetBalloonStats,
    PatchBalloonStats(BalloonStatsUpdate),
    StartBalloonHinting(HintingStart),
    GetBalloonHintingStatus,
    StopBalloonHinting,
    /// `GET /hotplug/memory`: the virtio-mem device's status.
    GetMemoryHotplug,
    /// `PUT /hotplug/memory` (before `InstanceStart`).
    PutMemoryHotplug(MemoryHotplugConfig),
    /// `PATCH /hotplug/memory` (on the running microVM).
    PatchMemoryHotplug(MemoryHotplugSizeUpdate),
}

impl ApiRequest {
    /// The verb and path, for messages (`PUT /drives`).
    pub fn describe(&self) -> &'static str {
        match self {
            ApiRequest::GetInstanceInfo => "GET /",
            ApiRequest::GetVersion => "GET /version",
            ApiRequest::GetMachineConfig => "GET /machine-config",
            ApiRequest::GetVmConfig => "GET /vm/config",
            ApiRequest::PutMachineConfig(_) => "PUT /machine-config",
            ApiRequest::PatchMachineConfig(_) => "PATCH /machine-config",
            ApiRequest::PutBootSource(_) => "PUT /boot-source",
            ApiRequest::PutDrive { .. } => "PUT /drives",
            ApiRequest::PatchDrive { .. } => "PATCH /drives",
            ApiRequest::PutNetworkInterface { .. } => "PUT /network-interfaces",
            ApiRequest::PatchNetworkInterface { .. } => "PATCH /network-interfaces",
            ApiRequest::PutPmem { .. } => "PUT /pmem",
            ApiRequest::PatchPmem { .. } => "PATCH /pmem",
            ApiRequest::PutVsock(_) => "PUT /vsock",
            ApiRequest::PutEntropy(_) => "PUT /entropy",
            ApiRequest::PutSerial(_) => "PUT /serial",
            ApiRequest::PutCpuConfig(_) => "PUT /cpu-config",
            ApiRequest::PutLogger(_) => "PUT /logger",
            ApiRequest::PutMetrics(_) => "PUT /metrics",
            ApiRequest::Action(Action::InstanceStart) => "InstanceStart",
            ApiRequest::Action(Action::SendCtrlAltDel) => "SendCtrlAltDel",
            ApiRequest::Action(Action::FlushMetrics) => "FlushMetrics",
            ApiRequest::PatchVm(_) => "PATCH /vm",
            ApiRequest::PutSnapshotCreate(_) => "PUT /snapshot/create",
            ApiRequest::PutSnapshotLoad(_) => "PUT /snapshot/load",
            ApiRequest::GetMmds => "GET /mmds",
            ApiRequest::PutMmds(_) => "PUT /mmds",
            ApiRequest::PatchMmds(_) => "PATCH /mmds",
            ApiRequest::PutMmdsConfig(_) => "PUT /mmds/config",
            ApiRequest::GetBalloon => "GET /balloon",
            ApiRequest::PutBalloon(_) => "PUT /balloon",
            ApiRequest::PatchBalloon(_) => "PATCH /balloon",
            ApiRequest::GetBalloonStats => "GET /balloon/statistics",
            ApiRequest::PatchBalloonStats(_) => "PATCH /balloon/statistics",
            ApiRequest::StartBalloonHinting(_) => "PATCH /balloon/hinting/start",
            ApiRequest::GetBalloonHintingStatus => "GET /balloon/hinting/status",
            ApiRequest::StopBalloonHinting => "PATCH /balloon/hinting/stop",
            ApiRequest::GetMemoryHotplug => "GET /hotplug/memory",
            ApiRequest::PutMemoryHotplug(_) => "PUT /hotplug/memory",
            ApiRequest::PatchMemoryHotplug(_) => "PATCH /hotplug/memory",
        }
    }
}

/// What a successful request returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmData {
    /// 204 No Content.
    Empty,
    /// 200 OK with this JSON body.
    Json(String),
}

/// Why the VMM thread did not carry out a request: the API layer's own error, which the HTTP
/// edge answers with a status code ([`RequestError::status`]) and the message as the fault
/// body. The VMM thread's code turns its domain errors into one of these kinds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The request is invalid, or not allowed in the microVM's state.
    #[error("{0}")]
    Refused(String),
    /// The request was valid, but carrying it out failed.
    #[error("{0}")]
    Failed(String),
    /// The request would make something larger than its limit (the MMDS data store).
    #[error("{0}")]
    TooLarge(String),
}

impl RequestError {
    /// The HTTP status of the answer: 400 for refused and failed requests, as Firecracker
    /// answers every refused or failed action, and 413 (Payload Too Large) for a document
    /// over the MMDS data store's limit, as Firecracker answers that one.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::Refused(_) | RequestError::Failed(_) => 400,
            RequestError::TooLarge(_) => 413,
        }
    }
}

/// The VMM thread's answer to one [`ApiRequest`].
pub type ApiReply = Result<VmmData, RequestError>;
