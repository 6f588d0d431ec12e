//! AWS Lambda's Invoke API on `kiln serve`, so that the AWS SDKs and CLI work against the
//! worker (`aws lambda invoke --endpoint-url http://127.0.0.1:3001 --function-name echo`):
//!
//! `POST /2015-03-31/functions/{FunctionName}/invocations[?Qualifier=$LATEST]`, the event as
//! body, with
//! - `FunctionName`: a name, `name:$LATEST`, a partial ARN `ACCOUNT:function:NAME` or a full
//!   ARN `arn:aws:lambda:REGION:ACCOUNT:function:NAME` (of the worker's `--region` and
//!   `--account-id`); Kiln has no versions or aliases, so the only qualifier is `$LATEST`;
//! - `X-Amz-Invocation-Type`: `RequestResponse` (default: `200` and the function's response),
//!   `Event` (`202` once queued, run by [`events`]), `DryRun` (`204` if it could run);
//! - `X-Amz-Log-Type: Tail`: the last 4 KB of the log in `X-Amz-Log-Result` ([`tail`]);
//! - `X-Amz-Client-Context`: base64 JSON, handed to the function;
//! - `X-Amzn-Trace-Id`: handed to the function.
//!
//! Every answer has `x-amzn-RequestId` (the function sees the same id); a response or a
//! function error also `X-Amz-Executed-Version: $LATEST`. Failures are answered in Lambda's
//! shapes ([`errors`]); signatures are checked by [`sigv4`] against [`credentials`].

pub mod credentials;
mod errors;
mod events;
pub mod sigv4;
mod tail;

pub use credentials::{Credentials, CredentialsError};
pub use errors::MAX_SYNC_PAYLOAD;

use crate::context::{self, Identity, InvocationContext};
use crate::pool::{Invocation, PoolError, Pools};
use errors::{Failure, ServiceError};
use events::Events;
use kiln_http::{Method, Request};
use sigv4::{percent_decode, Signer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// The path prefix of the Invoke API (its version).
pub const PREFIX: &str = "/2015-03-31/";
/// Largest event of an asynchronous invocation.
pub const MAX_ASYNC_PAYLOAD: usize = 1024 * 1024;
/// Largest decoded `X-Amz-Client-Context`.
const MAX_CLIENT_CONTEXT: usize = 3583;

/// How the Invoke API is set up.
#[derive(Debug, Clone)]
pub struct LambdaConfig {
    pub identity: Identity,
    /// `None`: signatures are not verified.
    pub credentials: Option<Credentials>,
    /// At most this many asynchronous invocations wait.
    pub max_async_events: usize,
}

/// The Invoke API's state: its configuration and the queue of asynchronous invocations.
pub struct LambdaApi {
    identity: Identity,
    credentials: Option<Credentials>,
    events: Events,
    warned: AtomicBool,
}

/// How a request asks to be run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InvocationType {
    RequestResponse,
    Event,
    DryRun,
}

impl LambdaApi {
    /// Starts the dispatchers of asynchronous invocations.
    pub fn start(cfg: LambdaConfig, pools: Arc<Pools>) -> std::io::Result<LambdaApi> {
        Ok(LambdaApi {
            identity: cfg.identity,
            credentials: cfg.credentials,
            events: Events::start(pools, cfg.max_async_events)?,
            warned: AtomicBool::new(false),
        })
    }

    /// The identity the function ARNs use.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// At shutdown: drops what is still queued.
    pub fn stop(&self) {
        self.events.drain();
    }

    /// Whether `path` is one of the Invoke API's.
    pub fn serves(path: &str) -> bool {
        path.starts_with(PREFIX)
    }

    /// The answer to a request body over the worker's limit (refused by the HTTP layer).
    pub fn too_large(&self, close: bool) -> Vec<u8> {
        let id = context::request_id();
        service(
            &ServiceError::too_large(MAX_SYNC_PAYLOAD, "InvokeFunction"),
            &id,
            close,
        )
    }

    /// Answers one request on an Invoke API path.
    pub fn route(&self, req: &Request, pools: &Pools, close: bool) -> Vec<u8> {
        let request_id = context::request_id();
        let raw_name = req
            .path
            .strip_prefix(PREFIX)
            .and_then(|p| p.strip_prefix("functions/"))
            .and_then(|p| p.strip_suffix("/invocations"))
            .filter(|n| !n.is_empty() && !n.contains('/'));
        let post = matches!(&req.method, Method::Other(m) if m == "POST");
        let Some(raw_name) = raw_name.filter(|_| post) else {
            let e = ServiceError::unknown_operation(req.method.as_str(), &req.path);
            return service(&e, &request_id, close);
        };
        match self.invoke(req, raw_name, &request_id, pools, close) {
            Ok(answer) => answer,
            Err(e) => service(&e, &request_id, close),
        }
    }

    fn invoke(
        &self,
        req: &Request,
        raw_name: &str,
        request_id: &str,
        pools: &Pools,
        close: bool,
    ) -> Result<Vec<u8>, ServiceError> {
        match sigv4::check(req, self.credentials.as_ref(), SystemTime::now()) {
            Ok(Signer::Verified(_)) => {}
            Ok(Signer::Unverified(key)) => {
                if !self.warned.swap(true, Ordering::AcqRel) {
                    eprintln!(
                        "kiln: warning: Lambda Invoke API: request signatures are not verified (no --credentials); accepting requests signed with {}",
                        key.as_deref()
                            .map_or("no signature".to_string(), |k| format!("access key {k:?}"))
                    );
                }
            }
            Err(e) => return Err(ServiceError::of_signature(&e)),
        }
        let (name, arn) = function_of(&self.identity, raw_name, &req.query)?;
        let invocation = match req
            .header("x-amz-invocation-type")
            .unwrap_or("RequestResponse")
        {
            "RequestResponse" => InvocationType::RequestResponse,
            "Event" => InvocationType::Event,
            "DryRun" => InvocationType::DryRun,
            other => {
                return Err(ServiceError::invalid_value(
                    "invocationType",
                    other,
                    "Event, RequestResponse, DryRun",
                ))
            }
        };
        let tail = match req.header("x-amz-log-type").unwrap_or("None") {
            "None" => false,
            "Tail" => true,
            other => return Err(ServiceError::invalid_value("logType", other, "None, Tail")),
        };
        let client_context = req
            .header("x-amz-client-context")
            .map(client_context)
            .transpose()?;
        let event = match req.body.as_deref() {
            None | Some([]) => b"{}".to_vec(),
            Some(b) => b.to_vec(),
        };
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&event) {
            return Err(ServiceError::bad_content(format!(
                "Could not parse request body into json: {e}"
            )));
        }
        let ctx = InvocationContext {
            request_id: request_id.to_string(),
            function_arn: arn.clone(),
            trace_id: req.header("x-amzn-trace-id").map(str::to_string),
            client_context,
            cognito_identity: None,
        };
        let function = pools.registry().get(&name).map_err(|e| {
            match errors::of_pool_error(&PoolError::from(e), request_id, &arn) {
                Failure::Service(s) => s,
                Failure::Function(f) => ServiceError::bad_content(f.body),
            }
        })?;
        let too_large = |limit: usize| {
            let limit = limit.min(function.max_event_bytes);
            (event.len() > limit).then(|| ServiceError::too_large(limit, "InvokeFunction"))
        };
        match invocation {
            InvocationType::DryRun => Ok(answer(204, request_id, &[], None, close)),
            InvocationType::Event => {
                if let Some(e) = too_large(MAX_ASYNC_PAYLOAD) {
                    return Err(e);
                }
                self.events.push(&name, event, ctx).map_err(|e| {
                    ServiceError::throttled("EventQueueFull", format!("Rate Exceeded. ({e})"))
                })?;
                Ok(answer(202, request_id, &[], None, close))
            }
            InvocationType::RequestResponse => {
                if let Some(e) = too_large(MAX_SYNC_PAYLOAD) {
                    return Err(e);
                }
                let started = Instant::now();
                let result = pools.invoke(&name, &event, &ctx);
                let memory_mib = function.memory_mib;
                Ok(respond(
                    result, request_id, &arn, tail, memory_mib, started, close,
                ))
            }
        }
    }
}

/// The function's name and the ARN it was invoked by, from the path's `FunctionName`
/// (percent-encoded) and the query's `Qualifier`.
fn function_of(id: &Identity, raw: &str, query: &str) -> Result<(String, String), ServiceError> {
    let decoded = percent_decode(raw).unwrap_or_else(|| raw.to_string());
    let parts: Vec<&str> = decoded.split(':').collect();
    let (region, account, name, qualifier) = match parts.as_slice() {
        [name] => (None, None, *name, None),
        [name, q] => (None, None, *name, Some(*q)),
        [acct, "function", name] => (None, Some(*acct), *name, None),
        [acct, "function", name, q] => (None, Some(*acct), *name, Some(*q)),
        ["arn", _, "lambda", region, acct, "function", name] => {
            (Some(*region), Some(*acct), *name, None)
        }
        ["arn", _, "lambda", region, acct, "function", name, q] => {
            (Some(*region), Some(*acct), *name, Some(*q))
        }
        _ => return Err(ServiceError::not_found(&decoded)),
    };
    let query_qualifier = query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == "Qualifier")
        .map(|(_, v)| percent_decode(v).unwrap_or_else(|| v.to_string()));
    let qualifier = match (qualifier, query_qualifier.as_deref()) {
            (Some(a), Some(b)) if a != b => {
                return Err(ServiceError::bad_content(format!(
                    "The derived qualifier from the function name ({a}) does not match the specified qualifier ({b})"
                )))
            }
            (a, b) => a.or(b),
        };
    let arn = id.function_arn(name);
    let qualified = match qualifier {
        Some(q) => format!("{arn}:{q}"),
        None => arn.clone(),
    };
    let elsewhere =
        region.is_some_and(|r| r != id.region) || account.is_some_and(|a| a != id.account_id);
    if elsewhere || qualifier.is_some_and(|q| q != "$LATEST") {
        let asked = if elsewhere {
            decoded.clone()
        } else {
            qualified
        };
        return Err(ServiceError::not_found(&asked));
    }
    if crate::function::check_name(name).is_err() {
        return Err(ServiceError::not_found(&arn));
    }
    Ok((name.to_string(), qualified))
}

/// `X-Amz-Client-Context`: base64 of a JSON object, decoded.
fn client_context(value: &str) -> Result<String, ServiceError> {
    let bad = || {
        ServiceError::bad_content(
            "Client context must be a valid Base64-encoded JSON object (at most 3583 bytes)".into(),
        )
    };
    let bytes = tail::decode(value).ok_or_else(bad)?;
    if bytes.len() > MAX_CLIENT_CONTEXT {
        return Err(bad());
    }
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(_)) => String::from_utf8(bytes).map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// The answer to a synchronous invocation.
fn respond(
    result: Result<Invocation, PoolError>,
    request_id: &str,
    arn: &str,
    tail: bool,
    memory_mib: u32,
    started: Instant,
    close: bool,
) -> Vec<u8> {
    let (logs, report, body, function_error) = match &result {
        Ok(inv) => (
            inv.logs.as_slice(),
            tail::Report {
                duration: inv.timings.handler,
                memory_mib,
                init: inv.timings.start.map(|s| s.total),
            },
            inv.body.clone(),
            false,
        ),
        Err(e) => match errors::of_pool_error(e, request_id, arn) {
            Failure::Service(s) => {
                eprintln!("kiln: [{request_id}] {arn}: {e} ({})", s.kind);
                return service(&s, request_id, close);
            }
            Failure::Function(f) => {
                let logs = match e {
                    PoolError::Invoke { logs, .. } => logs.as_slice(),
                    _ => &[],
                };
                eprintln!("kiln: [{request_id}] {arn}: {e} [{}]", e.code());
                let report = tail::Report {
                    duration: started.elapsed(),
                    memory_mib,
                    init: None,
                };
                (logs, report, f.body.into_bytes(), true)
            }
        },
    };
    if !logs.is_empty() {
        eprintln!(
            "kiln: [{request_id}] {}",
            String::from_utf8_lossy(logs).trim_end()
        );
    }
    let mut headers: Vec<(&str, String)> = vec![("X-Amz-Executed-Version", "$LATEST".into())];
    if function_error {
        headers.push(("X-Amz-Function-Error", "Unhandled".into()));
    }
    if tail {
        let log = tail::log(request_id, logs, &report);
        headers.push(("X-Amz-Log-Result", tail::log_result(&log)));
    }
    if let Ok(inv) = &result {
        headers.push(("X-Kiln-Vm-Id", inv.vm_id.clone()));
        headers.push(("X-Kiln-Cold-Start", inv.cold.to_string()));
    }
    answer(200, request_id, &headers, Some(&body), close)
}

/// A service error's answer.
fn service(e: &ServiceError, request_id: &str, close: bool) -> Vec<u8> {
    let mut headers = vec![("x-amzn-ErrorType", e.kind.to_string())];
    if e.status == 429 {
        headers.push(("Retry-After", "1".into()));
    }
    answer(
        e.status,
        request_id,
        &headers,
        Some(e.body().as_bytes()),
        close,
    )
}

/// An answer with `x-amzn-RequestId` and `headers`; a body is JSON.
fn answer(
    status: u16,
    request_id: &str,
    headers: &[(&str, String)],
    body: Option<&[u8]>,
    close: bool,
) -> Vec<u8> {
    let mut all: Vec<(&str, &str)> = vec![("x-amzn-RequestId", request_id)];
    all.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
    kiln_http::encode_response(status, &all, body.map(|b| ("application/json", b)), close)
}

#[cfg(test)]
mod tests;
