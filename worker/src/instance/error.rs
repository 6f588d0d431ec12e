//! Why an instance could not start ([`InstanceError`]) and why an invocation failed
//! ([`InvokeError`]), each with the stable `code` that `kiln invoke` prints and `kiln serve`
//! answers with. The HTTP status of each is decided at the HTTP edge (`server::status`).

use crate::sys::SysError;
use kiln_protocol::ErrorCode;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("no free uid in [{base}, {end}): every one is used by a running instance (--uid-base, --uid-count)")]
    NoFreeUid { base: u32, end: u32 },
    #[error("cannot lock uid {uid}: {source}")]
    UidLock { uid: u32, source: SysError },
    #[error("cannot prepare the instance directory {path}: {source}")]
    HostDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the vsock socket path {path} is longer than {max} bytes: use a shorter --state-dir")]
    SocketPathTooLong { path: PathBuf, max: usize },
    #[error("tenant profile {path}: {message}")]
    Profile { path: PathBuf, message: String },
    #[error("cannot start the jailer {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot watch the jailer process: {0}")]
    Watch(SysError),
    #[error("the microVM stopped before its guest was ready: {0}")]
    Exited(String),
    #[error("the guest was not ready within {} ms{}", .after.as_millis(), tail_suffix(.detail))]
    StartTimeout { after: Duration, detail: String },
    #[error("the guest's hello failed: {0}")]
    Hello(String),
    #[error("the worker is shutting down")]
    ShuttingDown,
    #[error("Linux functions need a guest kernel: {path} does not exist (build it with scripts/assets.sh, or use --kernel PATH)")]
    NoKernel { path: PathBuf },
    #[error("the VMM's API: {0}")]
    Api(#[from] super::api::ApiError),
    #[error("blank instance {id} (for {memory_mib} MiB functions) cannot be assigned to function {function:?}")]
    BlankUnfit {
        id: String,
        memory_mib: u32,
        function: String,
    },
    #[error("snapshot start: {0}")]
    Snapshot(String),
    #[error("guest user space cannot run on this host (its KVM is kvm_pvm, /sys/module/kvm_pvm: guest ring 3 code faults at its first syscall): the guest kernel reached `Run /init` and then {detail}; Linux functions need a host with hardware virtualization (VMX/SVM)")]
    UserSpaceUnsupported { detail: String },
}

fn tail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    }
}

impl InstanceError {
    /// The `code` of the error answer (docs/worker.md).
    pub fn code(&self) -> &'static str {
        match self {
            InstanceError::NoFreeUid { .. } => "no_capacity",
            InstanceError::Exited(_) => "start_failed",
            InstanceError::StartTimeout { .. } => "start_timeout",
            InstanceError::Hello(_) => "start_failed",
            InstanceError::ShuttingDown => "shutting_down",
            InstanceError::UserSpaceUnsupported { .. } => "host_unsupported",
            InstanceError::NoKernel { .. } => "no_kernel",
            _ => "start_failed",
        }
    }
}

/// Why an invocation failed.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The guest answered with an `Error` frame.
    #[error("{}", function_failure(*.code, .message))]
    Function { code: ErrorCode, message: String },
    #[error("function {function:?} did not answer within {} ms; its microVM was killed", .after.as_millis())]
    Timeout { function: String, after: Duration },
    #[error("the microVM stopped during the invocation: {0}")]
    VmExited(String),
    #[error("the microVM stopped during the invocation: {0}")]
    IoViolation(String),
    #[error("the function's response is over the limit of {max} bytes ({len} bytes announced); its microVM was stopped")]
    ResponseTooLarge { len: u32, max: u32 },
    #[error("the guest broke the invocation protocol: {0}; its microVM was stopped")]
    Protocol(String),
}

fn function_failure(code: ErrorCode, message: &str) -> String {
    match code {
        ErrorCode::Handler => format!("the handler failed: {message}"),
        ErrorCode::Panic => format!("the function panicked: {message}; its microVM was stopped"),
        ErrorCode::EventTooLarge => format!("the guest refused the event: {message}"),
        ErrorCode::OutOfMemory => {
            format!("the function ran out of memory: {message}; its microVM was stopped")
        }
        ErrorCode::Protocol => {
            format!("the guest reported a protocol error: {message}; its microVM was stopped")
        }
        ErrorCode::Function => format!("the function failed: {message}"),
    }
}

impl InvokeError {
    /// The `code` of the error answer (docs/worker.md).
    pub fn code(&self) -> &'static str {
        match self {
            InvokeError::Function { code, .. } => code.as_str(),
            InvokeError::Timeout { .. } => "timeout",
            InvokeError::VmExited(_) => "vm_exited",
            InvokeError::IoViolation(_) => "io_violation",
            InvokeError::ResponseTooLarge { .. } => "response_too_large",
            InvokeError::Protocol(_) => "protocol_error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoke_errors_have_codes_and_clear_messages() {
        let e = InvokeError::Function {
            code: ErrorCode::Panic,
            message: "boom".into(),
        };
        assert_eq!(e.code(), "panic");
        let e = InvokeError::Timeout {
            function: "spin".into(),
            after: Duration::from_millis(100),
        };
        assert_eq!(e.code(), "timeout");
        assert!(e.to_string().contains("within 100 ms"));
    }

    #[test]
    fn linux_errors_are_clear() {
        let e = InstanceError::UserSpaceUnsupported {
            detail: "init faulted: x".into(),
        };
        assert_eq!(e.code(), "host_unsupported");
        let m = e.to_string();
        assert!(
            m.starts_with("guest user space cannot run on this host")
                && m.contains("reached `Run /init` and then init faulted: x"),
            "{m}"
        );
        let e = InstanceError::NoKernel {
            path: "/k/vmlinux".into(),
        };
        assert_eq!(e.code(), "no_kernel");
        assert!(
            e.to_string().contains("/k/vmlinux") && e.to_string().contains("scripts/assets.sh")
        );
    }

    #[test]
    fn a_long_socket_path_names_the_limit() {
        let e = InstanceError::SocketPathTooLong {
            path: "/x".into(),
            max: 107,
        };
        assert_eq!(
            e.to_string(),
            "the vsock socket path /x is longer than 107 bytes: use a shorter --state-dir"
        );
    }
}
