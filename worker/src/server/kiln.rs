//! Kiln's own API on `kiln serve`:
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /functions/NAME/invocations` with the event as body | 200 with the function's response as body, `X-Kiln-Vm-Id`, `X-Kiln-Cold-Start`, `X-Kiln-Timings` |
//! | `GET /functions` | 200, `{"functions": [{"name", "instances": [{"id", "uid", "vmm_pid", "state", ...}]}]}` |
//! | `GET /blank-pool` | 200, `{"sizes": [{"memory_mib", "target", "ready": [{"id", "uid", "vmm_pid", "supervisor_pid", "memory_mib", "age_ms"}], "counts": {"started", "failed", "taken", "expired", "died"}}]}` (no sizes without `--blank-pool`) |
//!
//! Every error is `{"error": {"code": "...", "message": "..."}}` with a 4xx/5xx status (see
//! docs/worker.md for the codes), decided in [`super::status`].

use super::response::{error_response, json_response, method_not_allowed, response};
use super::status;
use crate::context::{Identity, InvocationContext};
use crate::pool::{Invocation, PoolError, Pools};
use kiln_http::{Method, Request};

/// Routes one request; returns the bytes of the answer.
pub fn route(req: &Request, pools: &Pools, identity: &Identity, close: bool) -> Vec<u8> {
    let segments: Vec<&str> = req.path.trim_end_matches('/').split('/').skip(1).collect();
    match segments.as_slice() {
        ["functions"] => match req.method {
            Method::Get => json_response(200, &list(pools), close),
            _ => method_not_allowed("GET", &req.path, close),
        },
        ["blank-pool"] => match req.method {
            Method::Get => json_response(
                200,
                &serde_json::json!({ "sizes": pools.blank_list() }),
                close,
            ),
            _ => method_not_allowed("GET", &req.path, close),
        },
        ["functions", name, "invocations"] => match &req.method {
            Method::Other(m) if m == "POST" => {
                let event = req.body.as_deref().unwrap_or_default();
                let ctx = InvocationContext::new(identity, name);
                match pools.invoke(name, event, &ctx) {
                    Ok(inv) => success(&inv, close),
                    Err(e) => {
                        eprintln!("kiln: {name}: {} ({})", e, e.code());
                        if let PoolError::Invoke { logs, vm_id, .. } = &e {
                            print_logs(vm_id, logs);
                        }
                        pool_error(&e, close)
                    }
                }
            }
            _ => method_not_allowed("POST", &req.path, close),
        },
        _ => error_response(
            404,
            "not_found",
            &format!(
                "no such path {:?}: use POST /functions/NAME/invocations, GET /functions, GET /blank-pool, or Lambda's POST /2015-03-31/functions/NAME/invocations",
                req.path
            ),
            None,
            close,
        ),
    }
}

fn list(pools: &Pools) -> serde_json::Value {
    let mut instances: std::collections::HashMap<String, serde_json::Value> = pools
        .list()
        .into_iter()
        .map(|(name, infos)| (name, serde_json::to_value(infos).unwrap_or_default()))
        .collect();
    let names = pools.registry().names().unwrap_or_default();
    let mut functions: Vec<serde_json::Value> = names
        .iter()
        .map(|n| {
            serde_json::json!({
                "name": n,
                "instances": instances.remove(n).unwrap_or_else(|| serde_json::json!([])),
            })
        })
        .collect();
    // Pools of functions whose directory has gone meanwhile.
    for (n, i) in instances {
        functions.push(serde_json::json!({ "name": n, "instances": i }));
    }
    serde_json::json!({ "functions": functions })
}

fn print_logs(vm_id: &str, logs: &[u8]) {
    if !logs.is_empty() {
        eprintln!(
            "kiln: [{vm_id}] {}",
            String::from_utf8_lossy(logs).trim_end()
        );
    }
}

fn success(inv: &Invocation, close: bool) -> Vec<u8> {
    print_logs(&inv.vm_id, &inv.logs);
    let headers = [
        ("X-Kiln-Vm-Id", inv.vm_id.clone()),
        ("X-Kiln-Cold-Start", inv.cold.to_string()),
        ("X-Kiln-Timings", inv.timings.header()),
    ];
    response(200, &headers, "application/octet-stream", &inv.body, close)
}

fn pool_error(e: &PoolError, close: bool) -> Vec<u8> {
    let (status, code) = status::of_pool_error(e);
    error_response(status, code, &e.to_string(), e.vm_id(), close)
}
