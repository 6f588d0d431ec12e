//! The one place where an error becomes an HTTP status: the worker's domain errors carry a
//! `code` (which `kiln invoke` prints too) and no status; `kiln serve` answers each with the
//! status docs/worker.md documents for it. The matches are exhaustive, so a new error
//! variant cannot reach a client without a status decided here.

use crate::function::FunctionError;
use crate::instance::{InstanceError, InvokeError};
use crate::pool::PoolError;
use kiln_http::HttpError;
use kiln_protocol::ErrorCode;

/// The status and code of the answer to a failed invocation.
pub fn of_pool_error(e: &PoolError) -> (u16, &'static str) {
    let status = match e {
        PoolError::Function(e) => function_status(e),
        PoolError::EventTooLarge { .. } => 413,
        PoolError::ConcurrencyLimit { .. } => 429,
        PoolError::Start { source, .. } => start_status(source),
        PoolError::Invoke { source, .. } => invoke_status(source),
        PoolError::ShuttingDown => 503,
    };
    (status, e.code())
}

/// The status and code of the answer to a request the HTTP layer refused (its status is
/// the parser's: 400, 408, 413, 431, 505, ...).
pub fn of_http_error(e: &HttpError) -> (u16, &'static str) {
    let status = e.status();
    let code = match status {
        413 => "event_too_large",
        408 => "request_timeout",
        _ => "bad_request",
    };
    (status, code)
}

/// Unknown functions are not found; a function that cannot be built is the server's fault.
fn function_status(e: &FunctionError) -> u16 {
    match e {
        FunctionError::BadName(_) | FunctionError::Unknown { .. } => 404,
        FunctionError::Build { .. }
        | FunctionError::BadManifest { .. }
        | FunctionError::ListDir { .. }
        | FunctionError::CacheDir { .. }
        | FunctionError::Lock { .. } => 500,
    }
}

/// No capacity and shutting down are temporary (503); a host that cannot run the guest is
/// 501; anything else that kept an instance from starting is 500.
fn start_status(e: &InstanceError) -> u16 {
    match e {
        InstanceError::NoFreeUid { .. } | InstanceError::ShuttingDown => 503,
        InstanceError::UserSpaceUnsupported { .. } => 501,
        InstanceError::UidLock { .. }
        | InstanceError::HostDir { .. }
        | InstanceError::SocketPathTooLong { .. }
        | InstanceError::Profile { .. }
        | InstanceError::Spawn { .. }
        | InstanceError::Watch(_)
        | InstanceError::Exited(_)
        | InstanceError::StartTimeout { .. }
        | InstanceError::Hello(_)
        | InstanceError::Snapshot(_)
        | InstanceError::Api(_)
        | InstanceError::BlankUnfit { .. }
        | InstanceError::NoKernel { .. } => 500,
    }
}

/// The guest (the upstream) failed: 502, but 504 when it did not answer in time, and 413
/// when it refused the event as too large.
fn invoke_status(e: &InvokeError) -> u16 {
    match e {
        InvokeError::Function {
            code: ErrorCode::EventTooLarge,
            ..
        } => 413,
        InvokeError::Timeout { .. } => 504,
        InvokeError::Function { .. }
        | InvokeError::VmExited(_)
        | InvokeError::IoViolation(_)
        | InvokeError::ResponseTooLarge { .. }
        | InvokeError::Protocol(_) => 502,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    fn start(source: InstanceError) -> PoolError {
        PoolError::Start {
            function: "f".into(),
            source,
        }
    }

    fn invoke(source: InvokeError) -> PoolError {
        PoolError::Invoke {
            function: "f".into(),
            vm_id: "f-1-1".into(),
            source,
            logs: Vec::new(),
        }
    }

    fn guest(code: ErrorCode) -> PoolError {
        invoke(InvokeError::Function {
            code,
            message: "m".into(),
        })
    }

    /// Every row of docs/worker.md's error table that an invocation can answer.
    #[test]
    fn errors_answer_with_the_documented_status_and_code() {
        let name = || "f".to_string();
        let cases: Vec<(PoolError, u16, &str)> = vec![
            (
                PoolError::Function(FunctionError::Unknown {
                    name: name(),
                    manifest: PathBuf::from("/f/kiln.json"),
                }),
                404,
                "unknown_function",
            ),
            (
                PoolError::Function(FunctionError::BadName("../x".into())),
                404,
                "unknown_function",
            ),
            (
                PoolError::EventTooLarge {
                    function: name(),
                    len: 2,
                    max: 1,
                },
                413,
                "event_too_large",
            ),
            (
                PoolError::ConcurrencyLimit {
                    function: name(),
                    limit: 1,
                    reason: String::new(),
                },
                429,
                "concurrency_limit",
            ),
            (
                PoolError::Function(FunctionError::BadManifest {
                    name: name(),
                    manifest: PathBuf::from("/f/kiln.json"),
                    message: "m".into(),
                }),
                500,
                "bad_manifest",
            ),
            (
                PoolError::Function(FunctionError::Build {
                    name: name(),
                    message: "m".into(),
                }),
                500,
                "build_failed",
            ),
            (
                start(InstanceError::NoKernel {
                    path: PathBuf::from("/k"),
                }),
                500,
                "no_kernel",
            ),
            (
                start(InstanceError::UserSpaceUnsupported { detail: "d".into() }),
                501,
                "host_unsupported",
            ),
            (
                start(InstanceError::Exited("x".into())),
                500,
                "start_failed",
            ),
            (start(InstanceError::Hello("x".into())), 500, "start_failed"),
            (
                start(InstanceError::StartTimeout {
                    after: Duration::from_secs(1),
                    detail: String::new(),
                }),
                500,
                "start_timeout",
            ),
            (guest(ErrorCode::Handler), 502, "handler_error"),
            (guest(ErrorCode::Panic), 502, "panic"),
            (guest(ErrorCode::OutOfMemory), 502, "out_of_memory"),
            (guest(ErrorCode::Protocol), 502, "protocol_error"),
            (guest(ErrorCode::Function), 502, "function_error"),
            (guest(ErrorCode::EventTooLarge), 413, "event_too_large"),
            (invoke(InvokeError::VmExited("x".into())), 502, "vm_exited"),
            (
                invoke(InvokeError::IoViolation("x".into())),
                502,
                "io_violation",
            ),
            (
                invoke(InvokeError::ResponseTooLarge { len: 2, max: 1 }),
                502,
                "response_too_large",
            ),
            (
                invoke(InvokeError::Protocol("x".into())),
                502,
                "protocol_error",
            ),
            (
                start(InstanceError::NoFreeUid { base: 1, end: 2 }),
                503,
                "no_capacity",
            ),
            (start(InstanceError::ShuttingDown), 503, "shutting_down"),
            (PoolError::ShuttingDown, 503, "shutting_down"),
            (
                invoke(InvokeError::Timeout {
                    function: name(),
                    after: Duration::from_millis(100),
                }),
                504,
                "timeout",
            ),
        ];
        for (e, status, code) in cases {
            assert_eq!(of_pool_error(&e), (status, code), "{e}");
        }
    }

    #[test]
    fn refused_requests_keep_the_parser_status() {
        let e = HttpError::Timeout(30_000);
        assert_eq!(of_http_error(&e), (e.status(), "request_timeout"));
        assert_eq!(e.status(), 408);
        let e = HttpError::PayloadTooLarge {
            len: 2,
            limit: 1,
            path: "/functions/f/invocations".into(),
        };
        assert_eq!(of_http_error(&e), (413, "event_too_large"));
    }
}
