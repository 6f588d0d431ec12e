//! Routing: an HTTP request's verb, path and body become a typed [`ApiRequest`], with
//! Firecracker's paths and verbs. Bodies are parsed into the [`crate::resources`] types with
//! the same parser the config file uses; their validation happens in the resource setters,
//! on the VMM thread.
//!
//! Refusals are all 400, as Firecracker answers them: an unknown path, a wrong verb (with an
//! `Allow` header listing the right ones), a path of Firecracker's API for a feature Kiln
//! does not have yet (the message names the feature), a missing or unreadable body.

use super::request::{Action, ApiRequest, VmStateChange};
use crate::metrics::{Counter, METRICS};
use crate::resources::{
    parse_json, BalloonConfig, BalloonStatsUpdate, BalloonUpdate, BootSourceConfig, CpuConfig,
    DriveConfig, DriveUpdate, EntropyConfig, HintingStart, LoggerConfig, MachineConfig,
    MachineConfigUpdate, MemoryHotplugConfig, MemoryHotplugSizeUpdate, MetricsConfig, MmdsConfig,
    NetworkInterfaceConfig, NetworkInterfaceUpdate, PmemConfig, PmemUpdate, SerialConfig,
    SnapshotCreateParams, SnapshotLoadParams, VsockConfig,
};
use kiln_http::{Method, Request};
use serde::Deserialize;

/// A path of the API (its first segments), before the verb is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    InstanceInfo,
    Version,
    MachineConfig,
    BootSource,
    Drives,
    NetworkInterfaces,
    Pmem,
    Vsock,
    Entropy,
    Serial,
    CpuConfig,
    Actions,
    Logger,
    Metrics,
    Vm,
    VmConfig,
    SnapshotCreate,
    SnapshotLoad,
    Mmds,
    MmdsConfig,
    Balloon,
    BalloonStatistics,
    BalloonHintingStart,
    BalloonHintingStatus,
    BalloonHintingStop,
    HotplugMemory,
}

impl Endpoint {
    /// The verbs the path accepts, as the `Allow` header lists them.
    fn allow(self) -> &'static str {
        match self {
            Endpoint::InstanceInfo | Endpoint::Version | Endpoint::VmConfig => "GET",
            Endpoint::MachineConfig => "GET, PUT, PATCH",
            Endpoint::Drives | Endpoint::NetworkInterfaces | Endpoint::Pmem => "PUT, PATCH",
            Endpoint::BootSource
            | Endpoint::Vsock
            | Endpoint::Entropy
            | Endpoint::Serial
            | Endpoint::CpuConfig
            | Endpoint::Actions
            | Endpoint::Logger
            | Endpoint::Metrics
            | Endpoint::SnapshotCreate
            | Endpoint::SnapshotLoad => "PUT",
            Endpoint::Vm => "PATCH",
            Endpoint::Mmds => "GET, PUT, PATCH",
            Endpoint::MmdsConfig => "PUT",
            Endpoint::Balloon => "GET, PUT, PATCH",
            Endpoint::BalloonStatistics => "GET, PATCH",
            Endpoint::BalloonHintingStart | Endpoint::BalloonHintingStop => "PATCH",
            Endpoint::BalloonHintingStatus => "GET",
            Endpoint::HotplugMemory => "GET, PUT, PATCH",
        }
    }

    fn accepts(self, method: &Method) -> bool {
        let m = method.as_str();
        self.allow().split(", ").any(|a| a == m)
    }
}

/// The status of every refusal decided here (Firecracker answers 400 to each).
pub const REFUSED: u16 = 400;

/// A refusal decided without the VMM thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    pub status: u16,
    pub message: String,
    /// For a wrong verb: the verbs the path accepts (the `Allow` header).
    pub allow: Option<&'static str>,
    /// The path or verb is not one Kiln serves (counted in `api_server.unknown_requests`).
    pub unknown: bool,
}

impl RouteError {
    fn bad_request(message: String) -> Self {
        RouteError {
            status: REFUSED,
            message,
            allow: None,
            unknown: false,
        }
    }

    /// A path or verb Kiln does not serve.
    fn unknown(message: String, allow: Option<&'static str>) -> Self {
        RouteError {
            allow,
            unknown: true,
            ..RouteError::bad_request(message)
        }
    }
}

/// The request counter and failure counter of a verb on an endpoint (Firecracker's
/// `get_api_requests` / `put_api_requests` / `patch_api_requests` groups).
pub fn counters(
    endpoint: Endpoint,
    method: &Method,
) -> Option<(&'static Counter, Option<&'static Counter>)> {
    let (g, p, pa) = (
        &METRICS.get_api_requests,
        &METRICS.put_api_requests,
        &METRICS.patch_api_requests,
    );
    Some(match (method, endpoint) {
        (Method::Get, Endpoint::InstanceInfo) => (&g.instance_info_count, None),
        (Method::Get, Endpoint::Version) => (&g.vmm_version_count, None),
        (Method::Get, Endpoint::MachineConfig) => (&g.machine_cfg_count, None),
        (Method::Get, Endpoint::VmConfig) => (&g.vm_config_count, None),
        (Method::Get, Endpoint::Mmds) => (&g.mmds_count, None),
        (Method::Put, Endpoint::Mmds | Endpoint::MmdsConfig) => {
            (&p.mmds_count, Some(&p.mmds_fails))
        }
        (Method::Patch, Endpoint::Mmds) => (&pa.mmds_count, Some(&pa.mmds_fails)),
        (Method::Put, Endpoint::Actions) => (&p.actions_count, Some(&p.actions_fails)),
        (Method::Put, Endpoint::BootSource) => (&p.boot_source_count, Some(&p.boot_source_fails)),
        (Method::Put, Endpoint::Drives) => (&p.drive_count, Some(&p.drive_fails)),
        (Method::Put, Endpoint::Logger) => (&p.logger_count, Some(&p.logger_fails)),
        (Method::Put, Endpoint::MachineConfig) => {
            (&p.machine_cfg_count, Some(&p.machine_cfg_fails))
        }
        (Method::Put, Endpoint::Metrics) => (&p.metrics_count, Some(&p.metrics_fails)),
        (Method::Put, Endpoint::NetworkInterfaces) => (&p.network_count, Some(&p.network_fails)),
        (Method::Put, Endpoint::Vsock) => (&p.vsock_count, Some(&p.vsock_fails)),
        (Method::Put, Endpoint::Pmem) => (&p.pmem_count, Some(&p.pmem_fails)),
        (Method::Patch, Endpoint::Pmem) => (&pa.pmem_count, Some(&pa.pmem_fails)),
        (Method::Put, Endpoint::Entropy) => (&p.entropy_count, Some(&p.entropy_fails)),
        (Method::Put, Endpoint::Serial) => (&p.serial_count, Some(&p.serial_fails)),
        (Method::Put, Endpoint::CpuConfig) => (&p.cpu_cfg_count, Some(&p.cpu_cfg_fails)),
        (Method::Patch, Endpoint::Drives) => (&pa.drive_count, Some(&pa.drive_fails)),
        (Method::Patch, Endpoint::MachineConfig) => {
            (&pa.machine_cfg_count, Some(&pa.machine_cfg_fails))
        }
        (Method::Patch, Endpoint::NetworkInterfaces) => {
            (&pa.network_count, Some(&pa.network_fails))
        }
        (Method::Patch, Endpoint::Vm) => (&pa.vm_state_count, Some(&pa.vm_state_fails)),
        (Method::Put, Endpoint::Balloon) => (&p.balloon_count, Some(&p.balloon_fails)),
        // The hinting commands are not counted (Firecracker has no counter for them).
        (Method::Patch, Endpoint::Balloon | Endpoint::BalloonStatistics) => {
            (&pa.balloon_count, Some(&pa.balloon_fails))
        }
        (Method::Get, Endpoint::HotplugMemory) => (&g.hotplug_memory_count, None),
        (Method::Put, Endpoint::HotplugMemory) => {
            (&p.hotplug_memory_count, Some(&p.hotplug_memory_fails))
        }
        (Method::Patch, Endpoint::HotplugMemory) => {
            (&pa.hotplug_memory_count, Some(&pa.hotplug_memory_fails))
        }
        _ => return None,
    })
}

/// Finds the endpoint of a path, and the id segment of `/drives/{id}` and
/// `/network-interfaces/{id}`. A trailing `/` is ignored.
pub fn endpoint(path: &str) -> Result<(Endpoint, Option<&str>), RouteError> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    let segments: Vec<&str> = if trimmed.is_empty() {
        Vec::new()
    } else {
        trimmed.split('/').collect()
    };
    let found = match segments.as_slice() {
        [] => (Endpoint::InstanceInfo, None),
        ["version"] => (Endpoint::Version, None),
        ["machine-config"] => (Endpoint::MachineConfig, None),
        ["boot-source"] => (Endpoint::BootSource, None),
        ["drives"] => (Endpoint::Drives, None),
        ["drives", id] => (Endpoint::Drives, Some(*id)),
        ["network-interfaces"] => (Endpoint::NetworkInterfaces, None),
        ["network-interfaces", id] => (Endpoint::NetworkInterfaces, Some(*id)),
        ["pmem"] => (Endpoint::Pmem, None),
        ["pmem", id] => (Endpoint::Pmem, Some(*id)),
        ["vsock"] => (Endpoint::Vsock, None),
        ["entropy"] => (Endpoint::Entropy, None),
        ["serial"] => (Endpoint::Serial, None),
        ["cpu-config"] => (Endpoint::CpuConfig, None),
        ["actions"] => (Endpoint::Actions, None),
        ["logger"] => (Endpoint::Logger, None),
        ["metrics"] => (Endpoint::Metrics, None),
        ["vm"] => (Endpoint::Vm, None),
        ["vm", "config"] => (Endpoint::VmConfig, None),
        ["snapshot", "create"] => (Endpoint::SnapshotCreate, None),
        ["snapshot", "load"] => (Endpoint::SnapshotLoad, None),
        ["mmds"] => (Endpoint::Mmds, None),
        ["mmds", "config"] => (Endpoint::MmdsConfig, None),
        ["balloon"] => (Endpoint::Balloon, None),
        ["balloon", "statistics"] => (Endpoint::BalloonStatistics, None),
        ["balloon", "hinting", "start"] => (Endpoint::BalloonHintingStart, None),
        ["balloon", "hinting", "status"] => (Endpoint::BalloonHintingStatus, None),
        ["balloon", "hinting", "stop"] => (Endpoint::BalloonHintingStop, None),
        ["hotplug", "memory"] => (Endpoint::HotplugMemory, None),
        _ => return Err(RouteError::unknown(no_such_path(path), None)),
    };
    Ok(found)
}

/// The message for a path Kiln does not serve.
fn no_such_path(path: &str) -> String {
    format!(
        "no such path: {path} (Kiln serves /, /version, /machine-config, /boot-source, \
         /drives/{{id}}, /network-interfaces/{{id}}, /pmem/{{id}}, /vsock, /entropy, /serial, /cpu-config, \
         /actions, /logger, /metrics, /vm, /vm/config, /snapshot/create, /snapshot/load, /mmds, \
         /mmds/config, /balloon, /balloon/statistics, /balloon/hinting/start, \
         /balloon/hinting/status, /balloon/hinting/stop, /hotplug/memory)"
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: Action,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmStateBody {
    state: VmStateChange,
}

/// Routes one request. `Ok((endpoint, request))` goes to the VMM thread; `Err` is answered
/// directly. The endpoint is returned with errors too when known, for the metrics.
pub fn route(req: &Request) -> (Option<Endpoint>, Result<ApiRequest, RouteError>) {
    let (endpoint, id) = match endpoint(&req.path) {
        Ok(found) => found,
        Err(e) => return (None, Err(e)),
    };
    (Some(endpoint), route_endpoint(endpoint, id, req))
}

fn route_endpoint(
    endpoint: Endpoint,
    id: Option<&str>,
    req: &Request,
) -> Result<ApiRequest, RouteError> {
    let what = format!("{} {}", req.method.as_str(), req.path);
    if req.method.as_str() == "DELETE"
        && matches!(
            endpoint,
            Endpoint::Drives | Endpoint::NetworkInterfaces | Endpoint::Pmem
        )
    {
        return Err(RouteError::unknown(
            format!("{what}: hot-unplugging devices is not supported by Kiln yet"),
            None,
        ));
    }
    if !endpoint.accepts(&req.method) {
        return Err(RouteError::unknown(
            format!(
                "method {} is not allowed on {} (allowed: {})",
                req.method.as_str(),
                req.path,
                endpoint.allow()
            ),
            Some(endpoint.allow()),
        ));
    }
    let body = match (&req.method, req.body.as_deref()) {
        (Method::Get, None) => "",
        // Firecracker's hinting commands take an optional body.
        (_, None)
            if matches!(
                endpoint,
                Endpoint::BalloonHintingStart | Endpoint::BalloonHintingStop
            ) =>
        {
            ""
        }
        (Method::Get, Some(_)) => {
            return Err(RouteError::bad_request(format!(
                "{what}: a GET request cannot have a body"
            )))
        }
        (_, None) => {
            return Err(RouteError::bad_request(format!(
                "{what}: the request needs a JSON body, sent with a Content-Length header"
            )))
        }
        (_, Some(bytes)) => std::str::from_utf8(bytes).map_err(|_| {
            RouteError::bad_request(format!("{what}: the request body is not valid UTF-8"))
        })?,
    };
    let need_id = |kind: &str, name: &str| -> Result<String, RouteError> {
        match id {
            Some(id) => Ok(id.to_string()),
            None => Err(RouteError::bad_request(format!(
                "{what}: the path needs the {kind} id: /{name}/{{id}}"
            ))),
        }
    };
    let json = |e: crate::resources::ResourceError| RouteError::bad_request(e.to_string());
    let request = match (&req.method, endpoint) {
        (Method::Get, Endpoint::InstanceInfo) => ApiRequest::GetInstanceInfo,
        (Method::Get, Endpoint::Version) => ApiRequest::GetVersion,
        (Method::Get, Endpoint::MachineConfig) => ApiRequest::GetMachineConfig,
        (Method::Get, Endpoint::VmConfig) => ApiRequest::GetVmConfig,
        (Method::Put, Endpoint::MachineConfig) => {
            ApiRequest::PutMachineConfig(parse_json::<MachineConfig>(body).map_err(json)?)
        }
        (Method::Patch, Endpoint::MachineConfig) => {
            ApiRequest::PatchMachineConfig(parse_json::<MachineConfigUpdate>(body).map_err(json)?)
        }
        (Method::Put, Endpoint::BootSource) => {
            ApiRequest::PutBootSource(parse_json::<BootSourceConfig>(body).map_err(json)?)
        }
        (Method::Put, Endpoint::Drives) => {
            let path_id = need_id("drive", "drives")?;
            ApiRequest::PutDrive {
                path_id,
                config: parse_json::<DriveConfig>(body).map_err(json)?,
            }
        }
        (Method::Patch, Endpoint::Drives) => {
            let path_id = need_id("drive", "drives")?;
            ApiRequest::PatchDrive {
                path_id,
                update: parse_json::<DriveUpdate>(body).map_err(json)?,
            }
        }
        (Method::Put, Endpoint::NetworkInterfaces) => {
            let path_id = need_id("network interface", "network-interfaces")?;
            ApiRequest::PutNetworkInterface {
                path_id,
                config: parse_json::<NetworkInterfaceConfig>(body).map_err(json)?,
            }
        }
        (Method::Patch, Endpoint::NetworkInterfaces) => {
            let path_id = need_id("network interface", "network-interfaces")?;
            ApiRequest::PatchNetworkInterface {
                path_id,
                update: parse_json::<NetworkInterfaceUpdate>(body).map_err(json)?,
            }
        }
        (Method::Put, Endpoint::Pmem) => {
            let path_id = need_id("pmem device", "pmem")?;
            ApiRequest::PutPmem {
                path_id,
                config: parse_json::<PmemConfig>(body).map_err(json)?,
            }
        }
        (Method::Patch, Endpoint::Pmem) => {
            let path_id = need_id("pmem device", "pmem")?;
            ApiRequest::PatchPmem {
                path_id,
                update: parse_json::<PmemUpdate>(body).map_err(json)?,
            }
        }
        (Method::Put, Endpoint::Vsock) => {
            ApiRequest::PutVsock(parse_json::<VsockConfig>(body).map_err(json)?)
        }
        (Method::Put, Endpoint::Entropy) => {
            ApiRequest::PutEntropy(parse_json::<EntropyConfig>(body).map_err(json)?)
        }
        (Method::Put, Endpoint::Serial) => {
            ApiRequest::PutSerial(parse_json::<SerialConfig>(body).map_err(json)?)
        }
        (Method::Put, Endpoint::CpuConfig) => {
            ApiRequest::PutCpuConfig(parse_json::<CpuConfig>(body).map_err(json)?)
        }
        (Method::Put, Endpoint::Logger) => {
            ApiRequest::PutLogger(parse_json::<LoggerConfig>(body).map_err(json)?)
        }
        (Method::Put, Endpoint::Metrics) => {
            ApiRequest::PutMetrics(parse_json::<MetricsConfig>(body).map_err(json)?)
        }
        (Method::Put, Endpoint::Actions) => {
            ApiRequest::Action(parse_json::<ActionBody>(body).map_err(json)?.action_type)
        }
        (Method::Patch, Endpoint::Vm) => {
            ApiRequest::PatchVm(parse_json::<VmStateBody>(body).map_err(json)?.state)
        }
        (Method::Put, Endpoint::SnapshotCreate) => {
            ApiRequest::PutSnapshotCreate(parse_json::<SnapshotCreateParams>(body).map_err(json)?)
        }
        (Method::Put, Endpoint::SnapshotLoad) => {
            ApiRequest::PutSnapshotLoad(parse_json::<SnapshotLoadParams>(body).map_err(json)?)
        }
        (Method::Get, Endpoint::Mmds) => ApiRequest::GetMmds,
        (Method::Put, Endpoint::Mmds) => {
            ApiRequest::PutMmds(parse_json::<serde_json::Value>(body).map_err(json)?)
        }
        (Method::Patch, Endpoint::Mmds) => {
            ApiRequest::PatchMmds(parse_json::<serde_json::Value>(body).map_err(json)?)
        }
        (Method::Put, Endpoint::MmdsConfig) => {
            ApiRequest::PutMmdsConfig(parse_json::<MmdsConfig>(body).map_err(json)?)
        }
        (Method::Get, Endpoint::Balloon) => ApiRequest::GetBalloon,
        (Method::Put, Endpoint::Balloon) => {
            ApiRequest::PutBalloon(parse_json::<BalloonConfig>(body).map_err(json)?)
        }
        (Method::Patch, Endpoint::Balloon) => {
            ApiRequest::PatchBalloon(parse_json::<BalloonUpdate>(body).map_err(json)?)
        }
        (Method::Get, Endpoint::BalloonStatistics) => ApiRequest::GetBalloonStats,
        (Method::Patch, Endpoint::BalloonStatistics) => {
            ApiRequest::PatchBalloonStats(parse_json::<BalloonStatsUpdate>(body).map_err(json)?)
        }
        // An empty body starts a run with Firecracker's default (acknowledge on stop).
        (Method::Patch, Endpoint::BalloonHintingStart) if body.is_empty() => {
            ApiRequest::StartBalloonHinting(HintingStart::default())
        }
        (Method::Patch, Endpoint::BalloonHintingStart) => {
            ApiRequest::StartBalloonHinting(parse_json::<HintingStart>(body).map_err(json)?)
        }
        (Method::Get, Endpoint::BalloonHintingStatus) => ApiRequest::GetBalloonHintingStatus,
        // Firecracker ignores the stop command's body.
        (Method::Patch, Endpoint::BalloonHintingStop) => ApiRequest::StopBalloonHinting,
        (Method::Get, Endpoint::HotplugMemory) => ApiRequest::GetMemoryHotplug,
        (Method::Put, Endpoint::HotplugMemory) => {
            ApiRequest::PutMemoryHotplug(parse_json::<MemoryHotplugConfig>(body).map_err(json)?)
        }
        (Method::Patch, Endpoint::HotplugMemory) => ApiRequest::PatchMemoryHotplug(
            parse_json::<MemoryHotplugSizeUpdate>(body).map_err(json)?,
        ),
        // `accepts` let only the pairs above through; keep the compiler's exhaustiveness
        // without a panic.
        _ => {
            return Err(RouteError::unknown(
                format!(
                    "method {} is not allowed on {}",
                    req.method.as_str(),
                    req.path
                ),
                Some(endpoint.allow()),
            ))
        }
    };
    Ok(request)
}

#[cfg(test)]
mod tests;
