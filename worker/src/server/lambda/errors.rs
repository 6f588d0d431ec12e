//! How the Invoke API answers a failure, in Lambda's shapes (the one place these statuses
//! are decided; the matches are exhaustive):
//!
//! - **Function errors** (the function ran and failed: its error, a crash, a timeout, a
//!   response too large): `200`, `X-Amz-Function-Error: Unhandled`, and a Lambda error object
//!   `{"errorMessage", "errorType"}` as the body ([`FunctionFailure`]); a Lambda function's
//!   own error object (`ErrorCode::Function`) is passed through as its runtime posted it.
//! - **Service errors** (the request or the service failed): a 4xx/5xx status, the
//!   `x-amzn-ErrorType` header naming the exception, and `{"Type": "User"|"Service",
//!   "message": ...}` (plus `Reason` for throttling) ([`ServiceError`]) — what botocore reads
//!   into `ClientError.response["Error"]`.

use super::sigv4::SigV4Error;
use crate::function::FunctionError;
use crate::instance::{InstanceError, InvokeError};
use crate::pool::PoolError;
use kiln_protocol::ErrorCode;

/// The Lambda limit on a synchronous request's payload (and the worker's).
pub const MAX_SYNC_PAYLOAD: usize = kiln_protocol::DEFAULT_MAX_PAYLOAD as usize;

/// A service error: status, exception name, and body fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    pub status: u16,
    /// The exception (`x-amzn-ErrorType`), e.g. `ResourceNotFoundException`.
    pub kind: &'static str,
    /// `User` (the caller's fault) or `Service`.
    pub fault: &'static str,
    pub message: String,
    /// `Reason` of a `TooManyRequestsException`.
    pub reason: Option<&'static str>,
}

impl ServiceError {
    fn user(status: u16, kind: &'static str, message: String) -> ServiceError {
        ServiceError {
            status,
            kind,
            fault: "User",
            message,
            reason: None,
        }
    }

    fn service(status: u16, kind: &'static str, message: String) -> ServiceError {
        ServiceError {
            status,
            kind,
            fault: "Service",
            message,
            reason: None,
        }
    }

    /// 404 for function `arn`.
    pub fn not_found(arn: &str) -> ServiceError {
        ServiceError::user(
            404,
            "ResourceNotFoundException",
            format!("Function not found: {arn}"),
        )
    }

    /// 413 for a payload over `limit` bytes.
    pub fn too_large(limit: usize, operation: &str) -> ServiceError {
        ServiceError::user(
            413,
            "RequestTooLargeException",
            format!("Request must be smaller than {limit} bytes for the {operation} operation"),
        )
    }

    /// 400 for a header value outside its set (`field` as Lambda names it).
    pub fn invalid_value(field: &str, value: &str, allowed: &str) -> ServiceError {
        ServiceError::user(
            400,
            "ValidationException",
            format!(
                "1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: Member must satisfy enum value set: [{allowed}]"
            ),
        )
    }

    /// 400 for a body or client context that is not what Lambda accepts.
    pub fn bad_content(message: String) -> ServiceError {
        ServiceError::user(400, "InvalidRequestContentException", message)
    }

    /// 429 with `reason`.
    pub fn throttled(reason: &'static str, message: String) -> ServiceError {
        ServiceError {
            reason: Some(reason),
            ..ServiceError::user(429, "TooManyRequestsException", message)
        }
    }

    /// 404 for a path the Invoke API does not serve.
    pub fn unknown_operation(method: &str, path: &str) -> ServiceError {
        ServiceError::user(
            404,
            "UnknownOperationException",
            format!("{method} {path} is not an operation Kiln serves: only Invoke (POST /2015-03-31/functions/NAME/invocations)"),
        )
    }

    /// 403 for a request whose signature is refused.
    pub fn of_signature(e: &SigV4Error) -> ServiceError {
        let kind = match e {
            SigV4Error::Missing => "MissingAuthenticationTokenException",
            SigV4Error::Malformed(_) | SigV4Error::BadDate(_) => "IncompleteSignatureException",
            SigV4Error::UnknownKey(_) => "UnrecognizedClientException",
            SigV4Error::Expired { .. } | SigV4Error::Mismatch(_) => "InvalidSignatureException",
        };
        ServiceError::user(403, kind, e.to_string())
    }

    /// The body: `{"Type", "message"}` (+ `Reason`).
    pub fn body(&self) -> String {
        let mut v = serde_json::json!({ "Type": self.fault, "message": self.message });
        if let Some(r) = self.reason {
            v["Reason"] = r.into();
        }
        v.to_string()
    }
}

/// A function error: the error object of a `200` with `X-Amz-Function-Error: Unhandled`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionFailure {
    /// The error object (JSON).
    pub body: String,
}

impl FunctionFailure {
    fn new(error_type: &str, message: String) -> FunctionFailure {
        FunctionFailure {
            body: serde_json::json!({ "errorMessage": message, "errorType": error_type })
                .to_string(),
        }
    }

    /// A Lambda function's own error object: passed through if it is a JSON object, else
    /// wrapped.
    fn reported(object: &str) -> FunctionFailure {
        match serde_json::from_str::<serde_json::Value>(object) {
            Ok(serde_json::Value::Object(_)) => FunctionFailure {
                body: object.to_string(),
            },
            _ => FunctionFailure::new("Runtime.Unknown", object.to_string()),
        }
    }
}

/// What a failed invocation is answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Function(FunctionFailure),
    Service(ServiceError),
}

/// The Lambda answer to a failed invocation of request `request_id` of function `arn`.
pub fn of_pool_error(e: &PoolError, request_id: &str, arn: &str) -> Failure {
    let service = |s: ServiceError| Failure::Service(s);
    match e {
        PoolError::Function(f) => service(function_error(f, arn)),
        PoolError::EventTooLarge { max, .. } => {
            service(ServiceError::too_large(*max, "InvokeFunction"))
        }
        PoolError::ConcurrencyLimit { .. } => service(ServiceError::throttled(
            "ReservedFunctionConcurrentInvocationLimitExceeded",
            format!("Rate Exceeded. ({e})"),
        )),
        PoolError::Start { source, .. } => service(start_error(source, e)),
        PoolError::ShuttingDown => service(ServiceError::service(
            503,
            "ServiceException",
            e.to_string(),
        )),
        PoolError::Invoke { source, .. } => invoke_error(source, request_id),
    }
}

fn function_error(e: &FunctionError, arn: &str) -> ServiceError {
    match e {
        FunctionError::BadName(_) | FunctionError::Unknown { .. } => ServiceError::not_found(arn),
        FunctionError::Build { .. }
        | FunctionError::BadManifest { .. }
        | FunctionError::ListDir { .. }
        | FunctionError::CacheDir { .. }
        | FunctionError::Lock { .. } => {
            ServiceError::service(500, "ServiceException", e.to_string())
        }
    }
}

fn start_error(source: &InstanceError, e: &PoolError) -> ServiceError {
    match source {
        InstanceError::NoFreeUid { .. } => ServiceError::throttled(
            "ConcurrentInvocationLimitExceeded",
            format!("Rate Exceeded. ({e})"),
        ),
        InstanceError::ShuttingDown => {
            ServiceError::service(503, "ServiceException", e.to_string())
        }
        InstanceError::UserSpaceUnsupported { .. } => {
            ServiceError::service(502, "InvalidRuntimeException", e.to_string())
        }
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
        | InstanceError::NoKernel { .. } => {
            ServiceError::service(500, "ServiceException", e.to_string())
        }
    }
}

fn invoke_error(e: &InvokeError, request_id: &str) -> Failure {
    let failure = |kind: &str| {
        Failure::Function(FunctionFailure::new(
            kind,
            format!("RequestId: {request_id} Error: {e}"),
        ))
    };
    match e {
        InvokeError::Function { code, message } => match code {
            ErrorCode::Function => Failure::Function(FunctionFailure::reported(message)),
            ErrorCode::Handler => {
                Failure::Function(FunctionFailure::new("HandlerError", message.clone()))
            }
            ErrorCode::EventTooLarge => Failure::Service(ServiceError::user(
                413,
                "RequestTooLargeException",
                e.to_string(),
            )),
            ErrorCode::Panic => failure("Runtime.ExitError"),
            ErrorCode::OutOfMemory => failure("Runtime.OutOfMemory"),
            ErrorCode::Protocol => failure("Runtime.Unknown"),
        },
        InvokeError::Timeout { after, .. } => Failure::Function(FunctionFailure::new(
            "Sandbox.Timedout",
            format!(
                "RequestId: {request_id} Error: Task timed out after {:.2} seconds",
                after.as_secs_f64()
            ),
        )),
        InvokeError::VmExited(_) | InvokeError::IoViolation(_) => failure("Runtime.ExitError"),
        InvokeError::ResponseTooLarge { .. } => failure("Function.ResponseSizeTooLarge"),
        InvokeError::Protocol(_) => failure("Runtime.Unknown"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    const ARN: &str = "arn:aws:lambda:us-east-1:000000000000:function:f";

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

    fn guest(code: ErrorCode, message: &str) -> PoolError {
        invoke(InvokeError::Function {
            code,
            message: message.into(),
        })
    }

    fn service(e: &PoolError) -> (u16, &'static str, &'static str) {
        match of_pool_error(e, "r-1", ARN) {
            Failure::Service(s) => (s.status, s.kind, s.fault),
            Failure::Function(f) => panic!("{e}: a function error {f:?}"),
        }
    }

    fn function(e: &PoolError) -> serde_json::Value {
        match of_pool_error(e, "r-1", ARN) {
            Failure::Function(f) => serde_json::from_str(&f.body).unwrap(),
            Failure::Service(s) => panic!("{e}: a service error {s:?}"),
        }
    }

    #[test]
    fn service_errors_have_lambdas_statuses_and_exceptions() {
        let cases: Vec<(PoolError, u16, &str, &str)> = vec![
            (
                PoolError::Function(FunctionError::Unknown {
                    name: "f".into(),
                    manifest: PathBuf::from("/f/kiln.json"),
                }),
                404,
                "ResourceNotFoundException",
                "User",
            ),
            (
                PoolError::Function(FunctionError::BadName("..".into())),
                404,
                "ResourceNotFoundException",
                "User",
            ),
            (
                PoolError::Function(FunctionError::Build {
                    name: "f".into(),
                    message: "m".into(),
                }),
                500,
                "ServiceException",
                "Service",
            ),
            (
                PoolError::EventTooLarge {
                    function: "f".into(),
                    len: 2,
                    max: 1,
                },
                413,
                "RequestTooLargeException",
                "User",
            ),
            (
                PoolError::ConcurrencyLimit {
                    function: "f".into(),
                    limit: 1,
                    reason: String::new(),
                },
                429,
                "TooManyRequestsException",
                "User",
            ),
            (
                start(InstanceError::NoFreeUid { base: 1, end: 2 }),
                429,
                "TooManyRequestsException",
                "User",
            ),
            (
                start(InstanceError::UserSpaceUnsupported { detail: "d".into() }),
                502,
                "InvalidRuntimeException",
                "Service",
            ),
            (
                start(InstanceError::Exited("x".into())),
                500,
                "ServiceException",
                "Service",
            ),
            (
                start(InstanceError::ShuttingDown),
                503,
                "ServiceException",
                "Service",
            ),
            (PoolError::ShuttingDown, 503, "ServiceException", "Service"),
            (
                guest(ErrorCode::EventTooLarge, "m"),
                413,
                "RequestTooLargeException",
                "User",
            ),
        ];
        for (e, status, kind, fault) in cases {
            assert_eq!(service(&e), (status, kind, fault), "{e}");
        }
        let Failure::Service(s) = of_pool_error(
            &PoolError::ConcurrencyLimit {
                function: "f".into(),
                limit: 1,
                reason: String::new(),
            },
            "r",
            ARN,
        ) else {
            panic!()
        };
        let body: serde_json::Value = serde_json::from_str(&s.body()).unwrap();
        assert_eq!(
            body["Reason"],
            "ReservedFunctionConcurrentInvocationLimitExceeded"
        );
        assert_eq!(body["Type"], "User");
        assert!(body["message"]
            .as_str()
            .unwrap()
            .starts_with("Rate Exceeded."));
        let nf = ServiceError::not_found(ARN);
        assert_eq!(nf.message, format!("Function not found: {ARN}"));
    }

    #[test]
    fn function_errors_are_lambda_error_objects() {
        let cases: Vec<(PoolError, &str)> = vec![
            (guest(ErrorCode::Handler, "bad input"), "HandlerError"),
            (guest(ErrorCode::Panic, "boom"), "Runtime.ExitError"),
            (guest(ErrorCode::OutOfMemory, "oom"), "Runtime.OutOfMemory"),
            (guest(ErrorCode::Protocol, "p"), "Runtime.Unknown"),
            (
                invoke(InvokeError::VmExited("x".into())),
                "Runtime.ExitError",
            ),
            (
                invoke(InvokeError::IoViolation("x".into())),
                "Runtime.ExitError",
            ),
            (
                invoke(InvokeError::ResponseTooLarge { len: 2, max: 1 }),
                "Function.ResponseSizeTooLarge",
            ),
            (invoke(InvokeError::Protocol("x".into())), "Runtime.Unknown"),
            (
                invoke(InvokeError::Timeout {
                    function: "f".into(),
                    after: Duration::from_millis(1500),
                }),
                "Sandbox.Timedout",
            ),
            (guest(ErrorCode::Function, "not json"), "Runtime.Unknown"),
        ];
        for (e, kind) in cases {
            let v = function(&e);
            assert_eq!(v["errorType"], kind, "{e}");
            assert!(v["errorMessage"].is_string(), "{e}");
        }
        let t = function(&invoke(InvokeError::Timeout {
            function: "f".into(),
            after: Duration::from_millis(1500),
        }));
        assert_eq!(
            t["errorMessage"],
            "RequestId: r-1 Error: Task timed out after 1.50 seconds"
        );
        assert_eq!(
            function(&guest(ErrorCode::Handler, "bad input"))["errorMessage"],
            "bad input"
        );
        // A Lambda runtime's own object is passed through untouched.
        let object = r#"{"errorMessage":"x","errorType":"ValueError","stackTrace":["a"]}"#;
        match of_pool_error(&guest(ErrorCode::Function, object), "r", ARN) {
            Failure::Function(f) => assert_eq!(f.body, object),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refused_signatures_are_403_by_kind() {
        for (e, kind) in [
            (SigV4Error::Missing, "MissingAuthenticationTokenException"),
            (
                SigV4Error::Malformed("m".into()),
                "IncompleteSignatureException",
            ),
            (
                SigV4Error::UnknownKey("k".into()),
                "UnrecognizedClientException",
            ),
            (
                SigV4Error::Mismatch("k".into()),
                "InvalidSignatureException",
            ),
            (
                SigV4Error::Expired { signed: "d".into() },
                "InvalidSignatureException",
            ),
        ] {
            let s = ServiceError::of_signature(&e);
            assert_eq!((s.status, s.kind), (403, kind), "{e}");
        }
    }
}
